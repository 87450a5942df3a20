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
    *out = (double)m->weight_bytes + (double)m->n_params * 16 + (double)step + (double)m->backend_scratch;
    return US_OK;
}

/* Relative extra time of a plan, from a coarse model of a step on a GPU: matrix products at an
 * effective 400 TFLOP/s (fpt FLOPs per token: 4N + attention, as bench/gpu_bench.sh counts) and
 * about 50 kernel launches of 4 us per layer and micro-step. Splitting the batch repeats the
 * launches; rebuilding up repeats one [D -> F] product per token, the MLP two (at 0.65 of the
 * product rate: what the H100 measurements of --recompute up / mlp came to). An offloaded MLP
 * layer (--offload-mlp: gate and up over PCIe at ~50 GB/s each way, alternate layers) costs what
 * its copies cannot hide behind one layer's forward (a third of a layer's time) and backward (two
 * thirds), plus a quarter of an up rebuild: conservative against the H100 measurements (16 of 32
 * layers of the 8B shape cost 1.2% of the step; 8 of 16 layers of the 1B shape at 4 x 2048 tokens,
 * whose copies take longer than its layers, 18%). Only the order of the candidates matters. */
typedef struct cost_model {
    double base, launch, up_layer, mlp_layer, off_layer;
} cost_model;

static cost_model cost_model_for(const us_model *m, int tokens, int seq) {
    const us_config *c = &m->cfg;
    double D = c->hidden, F = c->inter, L = c->layers, H = c->heads, KV = c->kv_heads, hd = c->head_dim, V = c->vocab;
    double N = L * (D * H * hd + 2 * D * KV * hd + H * hd * D + 3 * D * F) + V * D;
    double fpt = 4 * N + 7.0 * seq * L * H * hd, rate = 4e14; /* attention: each token sees its row */
    cost_model k;
    k.launch = 50 * L * 4e-6;
    k.base = fpt * tokens / rate + k.launch;
    k.up_layer = 0.65 * 2 * D * F * tokens / rate;
    k.mlp_layer = 2 * k.up_layer;
    double copy = 2.0 * tokens * F * (double)m->be->act_bytes / 50e9, layer = k.base / L;
    k.off_layer = US_MAX(0.0, copy - layer / 3) + US_MAX(0.0, copy - 2 * layer / 3) + 0.25 * k.up_layer;
    return k;
}

/* Memory mode of candidate `mode` (0: up rebuilt in the first n layers; 1: the MLP in the first
 * n and up in the rest; 2: whole layers; 3: offload; 4: up rebuilt in the first n layers and
 * every other one of the rest offloaded from the top; 5: the same with the MLP rebuilt). */
static us_memory_mode candidate(int mode, int n, int L) {
    us_memory_mode mm = {0};
    if (mode == 0 || mode == 4) mm.up_layers = n, mm.offload_mlp = mode == 4 ? (L - n + 1) / 2 : 0;
    else if (mode == 5) mm.recompute = US_RECOMPUTE_MLP, mm.mlp_layers = n, mm.offload_mlp = (L - n + 1) / 2;
    else if (mode == 1) mm.recompute = US_RECOMPUTE_MLP, mm.mlp_layers = n, mm.up_layers = L - n;
    else mm.recompute = US_RECOMPUTE_LAYER, mm.offload = mode == 3;
    return mm;
}

us_status us_fit_memory(us_model *m, int seq, double budget, int *batch, int *grad_accum, double *planned, us_err *e) {
    const int L = m->cfg.layers;
    cost_model k = cost_model_for(m, *batch * seq, seq);
    double best_cost = 1e30, smallest = 1e300;
    int best_split = 0;
    us_memory_mode best = {0};
    for (int split = 1; split <= *batch; split++) {
        if (*batch % split) continue;
        int tokens = *batch / split * seq;
        double split_cost = (split - 1) * k.launch;
        /* host memory is the CPU backend's device memory: moving the MLP there saves nothing */
        int modes = strcmp(m->be->name, "cpu") ? 6 : 4;
        for (int mode = 0; mode < modes; mode++) {
            int n0 = mode == 1 || mode == 5 ? 1 : 0, n1 = mode < 2 || mode >= 4 ? L : 0;
            for (int n = n0; n <= n1; n++) {
                us_memory_mode mm = candidate(mode, n, L);
                double need = 0;
                us_status st = us_model_set_memory_mode(m, &mm, e);
                if (!st) st = planned_bytes(m, tokens, &need, e);
                if (st) return st;
                if (need < smallest) smallest = need;
                if (need > budget) continue;
                double extra = mode == 0   ? n * k.up_layer
                             : mode == 1 ? n * k.mlp_layer + (L - n) * k.up_layer
                             : mode == 2 ? 0.33 * k.base
                             : mode == 3 ? 0.40 * k.base
                             : mode == 4 ? n * k.up_layer + mm.offload_mlp * k.off_layer
                                         : n * k.mlp_layer + mm.offload_mlp * k.off_layer;
                double cost = split_cost + extra;
                if (cost < best_cost) best_cost = cost, best_split = split, best = mm, *planned = need;
                break; /* more rebuilt layers only cost more */
            }
        }
    }
    if (!best_split)
        return us_fail(e, US_ENOMEM,
                       "--max-memory %.4g GiB: no plan fits; the smallest (one row per micro-step, the least kept) "
                       "needs %.4g GiB (%.1f MiB). Lower --seq-len, --lora-r or the --lora-targets, or raise --max-memory.",
                       budget / (MIB * 1024), smallest / (MIB * 1024), smallest / MIB);
    us_status st = us_model_set_memory_mode(m, &best, e);
    if (st) return st;
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
