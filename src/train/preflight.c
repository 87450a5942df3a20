/* preflight.c — memory and output-directory checks before training (see preflight.h).
 *
 * The memory estimate prepares the model for k = min(tokens, 256) tokens to measure the arena per
 * token (saved activations plus scratch), scales it to the step's tokens and adds 64 MiB for the
 * chunked LM head; it never allocates the full arena, so an impossible plan is refused before
 * any large allocation. --max-memory (us_fit_memory) uses the same measurement on every candidate
 * plan — micro-batch splits and memory modes — and a coarse time model to pick among those that
 * fit. UNSWAG_TEST_MEM_TOTAL_MB and UNSWAG_TEST_DISK_FREE_MB (tests only, ignored unless set) stand
 * in for the device total and the free disk space. */
#include "train/preflight.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define MIB (1024.0 * 1024.0)

static double env_mb(const char *name) {
    const char *v = getenv(name);
    return v && *v ? atof(v) : -1;
}

us_status us_preflight_memory(us_model *m, int batch, int seq, int grad_accum, us_err *e) {
    us_backend *be = m->be;
    int64_t tokens = (int64_t)batch * seq;
    if (tokens > (1 << 30) || tokens * grad_accum > ((int64_t)1 << 34))
        return us_fail(e, US_EINVAL,
                       "--batch %d x --seq-len %d x --grad-accum %d = %lld tokens per step is too many; lower --batch "
                       "or --seq-len", batch, seq, grad_accum, (long long)(tokens * grad_accum));
    size_t loaded = 0, total = 0;
    be->mem_info(be, &loaded, NULL, &total); /* weights, parameters and gradients so far */
    loaded -= m->weight_bytes - US_MIN(m->weight_bytes, us_model_device_weight_bytes(m)); /* a table leaving */
    size_t step_bytes;
    us_status st = us_model_step_bytes(m, (int)tokens, &step_bytes, e);
    if (st) return st;
    double arena = (double)step_bytes + (double)m->backend_scratch + 64 * MIB;
    double optim = 2.0 * (double)m->n_params * 4;
    double batches = 3.0 * (double)tokens * 4 * grad_accum + 2.0 * (double)tokens * 4;
    double need = (double)loaded + arena + optim + batches;
    double have = (double)total;
    double fake = env_mb("UNSWAG_TEST_MEM_TOTAL_MB");
    if (fake >= 0) have = fake * MIB;
    if (have > 0 && need > have)
        return us_fail(e, US_ENOMEM,
                       "not enough %s memory for this run: it needs about %.1f MiB, the device has %.1f MiB.\n"
                       "  weights, trainable parameters and gradients  %10.1f MiB\n"
                       "  AdamW state (m, v)                           %10.1f MiB\n"
                       "  activations: %lld tokens x %.1f KiB/token     %10.1f MiB\n"
                       "  token batches                                %10.1f MiB\n"
                       "To fit: lower --batch or --seq-len (activations grow with batch x seq-len; --grad-accum keeps "
                       "the effective batch), train fewer --lora-targets or a lower --lora-r, or drop --full.",
                       be->name, need / MIB, have / MIB, loaded / MIB, optim / MIB, (long long)tokens,
                       m->plan.total_per_token / 1024.0, arena / MIB, batches / MIB);
    return US_OK;
}

/* The device bytes a step of `tokens` tokens plans for under the model's current memory mode. */
static us_status planned_bytes(us_model *m, int tokens, double *out, us_err *e) {
    size_t step;
    us_status st = us_model_step_bytes(m, tokens, &step, e);
    if (st) return st;
    *out = (double)us_model_device_weight_bytes(m) + (double)m->n_params * 16 + (double)step + (double)m->backend_scratch;
    return US_OK;
}

/* Extra time of a plan, from a coarse model of a step on a GPU: matrix products at an effective
 * 400 TFLOP/s (fpt FLOPs per token: 4N + attention, as bench/gpu_bench.sh counts) and about 50
 * kernel launches of 4 us per layer and micro-step. Splitting the batch repeats the launches;
 * rebuilding up repeats one [D -> F] product per token, the MLP two (at 0.65 of the product
 * rate: what the H100 measurements of --recompute up / mlp came to). Offloaded MLP layers
 * (gate and up over PCIe at ~50 GB/s each way) cost what their copies cannot hide behind the
 * forward (0.3 of the step) or the backward (0.6), plus 50 us each; the embedding table in host
 * memory costs reading the step's rows at ~25 GB/s. Only the order of the candidates matters. */
typedef struct cost_model {
    double base, launch, up_layer, mlp_layer, copy_layer, embed, attn_layer;
} cost_model;

static cost_model cost_model_for(const us_model *m, int tokens, int seq) {
    const us_config *c = &m->cfg;
    double D = c->hidden, F = c->inter, L = c->layers, H = c->heads, KV = c->kv_heads, hd = c->head_dim, V = c->vocab;
    double N = L * (D * H * hd + 2 * D * KV * hd + H * hd * D + 3 * D * F) + V * D;
    double fpt = 4 * N + 7.0 * seq * L * H * hd, rate = 4e14; /* attention: each token sees its row */
    double A = (double)m->be->act_bytes;
    cost_model k;
    k.launch = 50 * L * 4e-6;
    k.base = fpt * tokens / rate + k.launch;
    k.up_layer = 0.65 * 2 * D * F * tokens / rate;
    k.mlp_layer = 2 * k.up_layer;
    k.copy_layer = 2.0 * tokens * F * A / 50e9;
    k.embed = tokens * D * A / 25e9;
    k.attn_layer = 2.0 * seq * H * hd * tokens / rate; /* one layer's attention forward */
    return k;
}

static double offload_cost(const cost_model *k, int n) {
    double copies = n * k->copy_layer;
    return US_MAX(0.0, copies - 0.3 * k->base) + US_MAX(0.0, copies - 0.6 * k->base) + n * 50e-6;
}

/* One candidate: its planned bytes (need) for `tokens` a micro-step. */
static us_status try_mode(us_model *m, const us_memory_mode *mm, int tokens, double *need, us_err *e) {
    us_status st = us_model_set_memory_mode(m, mm, e);
    if (!st) st = planned_bytes(m, tokens, need, e);
    return st;
}

/* A binary search over one layer count of mm (*count, 0..hi) for the end that fits the budget:
 * the largest count when more layers need more memory (more_needs_more), else the smallest.
 * *fit: that count (-1 when none fits), *fit_need its bytes; *smallest: the least need seen. */
static us_status fit_count(us_model *m, us_memory_mode *mm, int *count, int hi, bool more_needs_more, int tokens,
                           double budget, int *fit, double *fit_need, double *smallest, us_err *e) {
    int lo = 0;
    *fit = -1;
    while (lo <= hi) {
        double need;
        *count = (lo + hi) / 2;
        us_status st = try_mode(m, mm, tokens, &need, e);
        if (st) return st;
        *smallest = US_MIN(*smallest, need);
        bool fits = need <= budget;
        if (fits) *fit = *count, *fit_need = need;
        if (fits == more_needs_more) lo = *count + 1;
        else hi = *count - 1;
    }
    return US_OK;
}

us_status us_fit_memory(us_model *m, int seq, double budget, int offload_attn, int *batch, int *grad_accum,
                        double *planned, us_err *e) {
    const int L = m->cfg.layers;
    cost_model k = cost_model_for(m, *batch * seq, seq);
    double best_cost = 1e30, smallest = 1e300;
    int best_split = 0;
    us_memory_mode best = {0};
    /* host memory is the CPU backend's device memory: moving tensors there saves nothing */
    bool gpu = strcmp(m->be->name, "cpu") != 0;
    bool embed_ok = gpu && !us_model_embed_host_refusal(m);
    us_status st;
    for (int split = 1; split <= *batch; split++) {
        if (*batch % split) continue;
        int tokens = *batch / split * seq;
        double split_cost = (split - 1) * k.launch;
        for (int eh = 0; eh <= embed_ok; eh++) {
            double fixed = split_cost + eh * k.embed;
            us_memory_mode mm = {.embed_host = eh};
            int fit;
            double fit_need = 0;
            /* whole layers rebuilt, or offloaded (with the asked attention outputs on the host),
             * keeping as many attention outputs on the device as fit (a binary search: more
             * kept only need more) */
            for (int off = 0; off <= gpu; off++) {
                mm.recompute = US_RECOMPUTE_LAYER, mm.offload = off, mm.offload_attn = off ? offload_attn : 0;
                if ((st = fit_count(m, &mm, &mm.keep_attn, gpu ? L : 0, true, tokens, budget, &fit, &fit_need,
                                    &smallest, e)))
                    return st;
                if (fit < 0) continue;
                double cost = fixed + (off ? 0.40 : 0.33) * k.base - US_MIN(fit, L - mm.offload_attn) * k.attn_layer;
                if (cost < best_cost) best_cost = cost, best_split = split, best = mm, best.keep_attn = fit, *planned = fit_need;
            }
            mm.offload = false, mm.keep_attn = mm.offload_attn = 0;
            /* from the bottom (plan.c us_layer_mode): gate and up offloaded in the fewest layers
             * that fit (a binary search: more offloaded layers only need less), then the MLP
             * rebuilt in nm layers, then up in nu */
            for (int nm = 0; nm <= L; nm++)
                for (int nu = 0; nm + nu <= L; nu++) {
                    mm.recompute = nm ? US_RECOMPUTE_MLP : US_RECOMPUTE_NONE, mm.mlp_layers = nm, mm.up_layers = nu;
                    double base_cost = fixed + nm * k.mlp_layer + nu * k.up_layer;
                    if (base_cost >= best_cost) continue;
                    if ((st = fit_count(m, &mm, &mm.offload_mlp, gpu ? L - nm - nu : 0, false, tokens, budget, &fit,
                                        &fit_need, &smallest, e)))
                        return st;
                    if (fit < 0) continue;
                    double cost = base_cost + offload_cost(&k, fit);
                    if (cost < best_cost)
                        best_cost = cost, best_split = split, best = mm, best.offload_mlp = fit, *planned = fit_need;
                }
        }
    }
    if (!best_split)
        return us_fail(e, US_ENOMEM,
                       "--max-memory %.4g GiB: no plan fits; the smallest (one row per micro-step, the least kept) "
                       "needs %.4g GiB (%.1f MiB). Lower --seq-len, --lora-r or the --lora-targets, or raise --max-memory.",
                       budget / (MIB * 1024), smallest / (MIB * 1024), smallest / MIB);
    if ((st = us_model_set_memory_mode(m, &best, e))) return st;
    *grad_accum *= best_split;
    *batch /= best_split;
    return US_OK;
}

us_status us_preflight_out_dir(const char *dir, uint64_t need_bytes, const char *why, us_err *e) {
    /* create it (and its parents) */
    size_t len = strlen(dir);
    if (len == 0 || len >= 4000) return us_fail(e, US_EINVAL, "--out: the path is empty or too long");
    char p[4096];
    memcpy(p, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return us_fail(e, US_EIO, "--out %s: cannot create directory %s: %s", dir, p, strerror(errno));
        p[i] = c;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return us_fail(e, US_EIO, "--out %s: exists and is not a directory", dir);
    /* prove it writable */
    snprintf(p, sizeof p, "%s/.unswag-probe-%ld", dir, (long)getpid());
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return us_fail(e, US_EIO, "--out %s: not writable: %s", dir, strerror(errno));
    bool ok = write(fd, "probe\n", 6) == 6 && fsync(fd) == 0;
    int err = errno;
    close(fd);
    unlink(p);
    if (!ok) return us_fail(e, US_EIO, "--out %s: writing a probe file failed: %s", dir, strerror(err));
    /* free space */
    struct statvfs vfs;
    double free_b = -1;
    if (statvfs(dir, &vfs) == 0) free_b = (double)vfs.f_bavail * (double)vfs.f_frsize;
    double fake = env_mb("UNSWAG_TEST_DISK_FREE_MB");
    if (fake >= 0) free_b = fake * MIB;
    if (free_b >= 0 && (double)need_bytes > free_b)
        return us_fail(e, US_EIO,
                       "--out %s: not enough free disk space: the run needs about %.1f MiB (%s), %.1f MiB are free; free "
                       "space, lower --keep, or choose another --out", dir, need_bytes / MIB, why, free_b / MIB);
    return US_OK;
}
