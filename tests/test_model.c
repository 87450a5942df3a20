/* test_model.c — model-level checks on the CPU backend with the committed fixtures.
 *
 * (a) The activation plan drops only what backward does not need: LoRA gradients of a subset of
 *     targets, trained with the minimal plan, equal those of the same tensors in a run where all
 *     seven targets train but the others' B are zero (the forward is then the same). The plan's
 *     per-token bytes are checked against figures worked out here from the rules in plan.c.
 * (b) Full fine-tuning gradients of every parameter kind against central finite differences of
 *     the model loss, evaluated in float64 from the forward's logits (the f32 forward's own
 *     rounding makes small steps noisy: measured on these fixtures, a two-point difference with
 *     a step of 1% of the tensor's rms is off by up to ~2% on attention weights, so the test
 *     uses the four-point stencil with a step of 25% of the rms, accurate to ~1e-4).
 * (c) Gradient accumulation: batch 1 x 2 micro-batches equals batch 2 x 1.
 * (d) Learning-rate schedules against transformers' lr_lambda formulas, written here.
 * (e) A ReLU model saves the gate's derivative as 1 bit per MLP element. */
#include <cJSON.h>
#include <cblas.h>
#include <omp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokens.h"
#include "io/adapter.h"
#include "model/model.h"
#include "test.h"
#include "train/optim.h"
#include "train/trainer.h"

/* ---- helpers ---- */

/* Runs a model-level test body on one thread: these models are tiny, and with OMP_NUM_THREADS=2
 * on a loaded 2-core machine the spinning OpenMP and OpenBLAS pools make each forward ~30x
 * slower. The thread counts are restored afterwards (the backend sets them process-wide). */
#define ONE_THREAD(body)                                                                             \
    do {                                                                                             \
        int omp_ = omp_get_max_threads(), blas_ = openblas_get_num_threads();                        \
        omp_set_num_threads(1);                                                                      \
        openblas_set_num_threads(1);                                                                 \
        body;                                                                                        \
        omp_set_num_threads(omp_);                                                                   \
        openblas_set_num_threads(blas_);                                                             \
    } while (0)

typedef struct host_batch {
    int B, S, counted;
    int32_t *ids, *tg, *pos;
} host_batch;

/* every row of DIR/data.jsonl (equal lengths), labels shifted left as transformers does */
static us_status load_batch(const char *fx, int vocab, host_batch *hb, us_err *e) {
    char p[512];
    snprintf(p, sizeof p, FIXTURES "/%s/data.jsonl", fx);
    us_token_dataset ds = {0};
    us_status st = us_jsonl_tokens_load(p, vocab, &ds, e);
    if (st) return st;
    int B = (int)ds.n, S = (int)ds.ex[0].n, T = B * S;
    hb->B = B;
    hb->S = S;
    hb->counted = 0;
    hb->ids = malloc(T * 4);
    hb->tg = malloc(T * 4);
    hb->pos = malloc(T * 4);
    for (int r = 0; r < B; r++)
        for (int s = 0; s < S; s++) {
            int i = r * S + s;
            hb->ids[i] = s < ds.ex[r].n ? ds.ex[r].ids[s] : 0;
            hb->pos[i] = s;
            hb->tg[i] = s + 1 < ds.ex[r].n ? ds.ex[r].labels[s + 1] : -100;
            hb->counted += hb->tg[i] != -100;
        }
    us_token_dataset_free(&ds);
    return US_OK;
}
static void host_batch_free(host_batch *hb) {
    free(hb->ids);
    free(hb->tg);
    free(hb->pos);
}
static void upload_batch(us_backend *be, const host_batch *hb, us_batch *b) {
    size_t T = (size_t)hb->B * hb->S;
    *b = (us_batch){.batch = hb->B, .seq = hb->S, .ids = be->alloc(be, T * 4), .targets = be->alloc(be, T * 4),
                    .pos = be->alloc(be, T * 4)};
    be->upload(be, b->ids, hb->ids, T * 4);
    be->upload(be, b->targets, hb->tg, T * 4);
    be->upload(be, b->pos, hb->pos, T * 4);
}
static void batch_free(us_backend *be, us_batch *b) {
    be->free(be, b->ids);
    be->free(be, b->targets);
    be->free(be, b->pos);
}

static double scaled_err(const float *a, const float *ref, size_t n) {
    double mr = 0, md = 0;
    for (size_t i = 0; i < n; i++) {
        mr = fmax(mr, fabs(ref[i]));
        md = fmax(md, fabs((double)a[i] - ref[i]));
    }
    return md / (mr > 0 ? mr : 1e-30);
}

/* ==== (a) plan consistency ==== */

#define FX_TIED "llama_silu_gqa_tied"
#define ALL_TARGETS ((1u << US_T_COUNT) - 1)

/* A LoRA model of the fixture training `targets`, A and B from adapter_init (B zeroed for targets
 * outside live_b), after one step over the fixture's data: m->grads holds d(mean loss). */
static void lora_step(us_test_ctx *t, us_backend *be, const host_batch *hb, unsigned targets, unsigned live_b,
                      us_model **out, double *loss) {
    us_err e = {{0}};
    char p[512], q[512];
    *out = NULL;
    snprintf(p, sizeof p, FIXTURES "/%s/model", FX_TIED);
    snprintf(q, sizeof q, FIXTURES "/%s/adapter_init", FX_TIED);
    us_model *m;
    CHECK(!us_model_load(&m, be, p, false, 0, 0, &e), "%s", e.msg);
    *out = m;
    us_adapter *ad;
    CHECK(!us_adapter_open(q, &ad, &e), "%s", e.msg);
    us_train_spec spec = {.lora = *us_adapter_config(ad)};
    CHECK(spec.lora.targets == ALL_TARGETS, "fixture adapter does not cover all targets");
    spec.lora.targets = targets;
    us_status st = us_model_setup_training(m, &spec, 0, &e);
    float *h = calloc(m->n_params + 1, 4);
    double bsq = 0;
    for (int l = 0; l < m->cfg.layers && !st; l++)
        for (int tg = 0; tg < US_T_COUNT && !st; tg++) {
            const us_lora_slot *s = &m->slot[l][tg];
            if (!s->on) continue;
            st = us_adapter_read(ad, l, tg, 0, spec.lora.r, s->in, h + s->off_A, &e);
            if (!st) st = us_adapter_read(ad, l, tg, 1, s->out, spec.lora.r, h + s->off_B, &e);
            for (size_t i = 0; i < (size_t)s->out * spec.lora.r; i++) {
                bsq += (double)h[s->off_B + i] * h[s->off_B + i];
                if (!(live_b & (1u << tg))) h[s->off_B + i] = 0;
            }
        }
    us_adapter_close(ad);
    if (!st) be->upload(be, m->params, h, m->n_params * 4);
    free(h);
    CHECK(!st, "%s", e.msg);
    CHECK(bsq > 0, "adapter_init has B = 0: the forward would not depend on the adapters");
    us_batch b;
    upload_batch(be, hb, &b);
    st = us_model_prepare(m, hb->B * hb->S, &e);
    if (!st) {
        be->zero(be, m->grads, m->n_params * 4);
        st = us_model_step(m, &b, 1.0f / hb->counted, loss, &e);
    }
    batch_free(be, &b);
    CHECK(!st, "%s", e.msg);
}

/* Bytes per token by kind that the plan must report, worked out from the rules: a layer keeps
 * q,k,v, lse, its input and 1/rms when attention backward runs (q/k/v trains there or anything
 * below trains); the attention output when that runs or o_proj trains; gate, up, mid residual
 * and 1/rms when the gate/up backward runs (gate/up train or anything below); only the down_proj
 * input when just down_proj trains in an MLP with nothing below; one x·A per adapter. */
static void expected_plan(const us_config *c, unsigned targets, int r, double want[US_SAVE_KINDS]) {
    memset(want, 0, sizeof(double) * US_SAVE_KINDS);
    double D = c->hidden, F = c->inter, hd = c->head_dim, H = c->heads, KV = c->kv_heads;
    bool below = false;
    for (int l = 0; l < c->layers; l++) {
        bool qkv = targets & ((1u << US_T_Q) | (1u << US_T_K) | (1u << US_T_V)), o = targets & (1u << US_T_O);
        bool gu = targets & ((1u << US_T_GATE) | (1u << US_T_UP)), down = targets & (1u << US_T_DOWN);
        if (below || qkv) {
            want[US_SAVE_RESIDUAL] += D * 4;
            want[US_SAVE_NORM_STATS] += 4;
            want[US_SAVE_QKV] += (H + 2 * KV) * hd * 4;
            want[US_SAVE_ATTN_LSE] += H * 4;
        }
        if (below || qkv || o) { /* with room for o_proj's folded LoRA columns (model.c fold_setup) */
            bool o_folded = (targets & (1u << US_T_O)) && r % 8 == 0 && c->hidden % 8 == 0 && (int)(H * hd) % 8 == 0;
            want[US_SAVE_ATTN_OUT] += (H * hd + (o_folded ? r : 0)) * 4;
        }
        below = below || qkv || o;
        if (below || gu) {
            want[US_SAVE_RESIDUAL] += D * 4;
            want[US_SAVE_NORM_STATS] += 4;
            want[US_SAVE_MLP] += 2 * F * 4;
            if (c->act == US_ACT_RELU) want[US_SAVE_MLP_MASK] += ceil(F / 32) * 4;
        } else if (down) { /* the product, with room for down's folded LoRA columns (model.c fold_setup) */
            bool folded = r % 8 == 0 && c->hidden % 8 == 0 && c->inter % 8 == 0;
            want[US_SAVE_MLP_DOWN_IN] += (F + (folded ? r : 0)) * 4;
        }
        below = below || gu || down;
        for (int tg = 0; tg < US_T_COUNT; tg++)
            if (targets & (1u << tg)) want[US_SAVE_LORA_U] += r * 4;
    }
}

static void plan_subset_run(us_test_ctx *t, unsigned subset, const char *what) {
    us_err e = {{0}};
    us_backend *be;
    CHECK(!us_backend_create("cpu", 0, &be, &e), "%s", e.msg);
    us_config cfg;
    CHECK(!us_config_load(FIXTURES "/" FX_TIED "/model", &cfg, &e), "%s", e.msg);
    host_batch hb;
    CHECK(!load_batch(FX_TIED, cfg.vocab, &hb, &e), "%s", e.msg);
    us_model *all = NULL, *sub = NULL;
    double loss_all = 0, loss_sub = 0;
    lora_step(t, be, &hb, ALL_TARGETS, subset, &all, &loss_all);
    if (!t->failed) lora_step(t, be, &hb, subset, ALL_TARGETS, &sub, &loss_sub);
    if (!t->failed) {
        float *ga = malloc(all->n_params * 4 + 4), *gs = malloc(sub->n_params * 4 + 4);
        be->download(be, ga, all->grads, all->n_params * 4);
        be->download(be, gs, sub->grads, sub->n_params * 4);
        int r = sub->spec.lora.r;
        double worst = 0, gsq = 0;
        const char *wname = "";
        for (int l = 0; l < cfg.layers; l++)
            for (int tg = 0; tg < US_T_COUNT; tg++) {
                if (!(subset & (1u << tg))) continue;
                const us_lora_slot *sa = &all->slot[l][tg], *ss = &sub->slot[l][tg];
                size_t nA = (size_t)r * ss->in, nB = (size_t)ss->out * r;
                double eA = scaled_err(gs + ss->off_A, ga + sa->off_A, nA);
                double eB = scaled_err(gs + ss->off_B, ga + sa->off_B, nB);
                for (size_t i = 0; i < nA; i++) gsq += (double)ga[sa->off_A + i] * ga[sa->off_A + i];
                if (fmax(eA, eB) > worst) worst = fmax(eA, eB), wname = us_target_name(tg);
            }
        free(ga);
        free(gs);
        CHECK(us_close(loss_all, loss_sub, 1e-6, 0), "%s: forward differs: loss %.9g vs %.9g", what, loss_all,
              loss_sub);
        CHECK(gsq > 0, "%s: zero gradients: nothing checked", what);
        CHECK(worst <= 1e-5, "%s: minimal-plan gradient of %s differs from the all-target run by %.3g", what, wname,
              worst);
        /* bytes per token: what the rules give, and less than training everything */
        double want[US_SAVE_KINDS];
        expected_plan(&cfg, subset, r, want);
        for (int k = 0; k < US_SAVE_KINDS; k++)
            CHECK(sub->plan.bytes_per_token[k] == want[k], "%s: plan keeps %.0f bytes/token of %s, want %.0f", what,
                  sub->plan.bytes_per_token[k], us_save_kind_name(k), want[k]);
        expected_plan(&cfg, ALL_TARGETS, r, want);
        for (int k = 0; k < US_SAVE_KINDS; k++)
            CHECK(all->plan.bytes_per_token[k] == want[k], "all targets: plan keeps %.0f bytes/token of %s, want %.0f",
                  all->plan.bytes_per_token[k], us_save_kind_name(k), want[k]);
        CHECK(sub->plan.total_per_token < all->plan.total_per_token, "%s: plan does not shrink (%.0f vs %.0f)", what,
              sub->plan.total_per_token, all->plan.total_per_token);
        CHECK(sub->plan.total_per_token < sub->plan.store_all_per_token, "%s: plan not below store-everything", what);
    }
    us_model_free(all);
    us_model_free(sub);
    host_batch_free(&hb);
    be->destroy(be);
}

static void plan_subset(us_test_ctx *t, unsigned subset, const char *what) {
    ONE_THREAD(plan_subset_run(t, subset, what));
}

TEST(model_plan_down_only) {
    plan_subset(t, 1u << US_T_DOWN, "down_proj");
    if (t->failed) return;
    /* layer 0: nothing below trains, so neither its attention nor its gate/up backward runs and it
     * keeps only the down_proj input; layer 1 must pass d(residual) down to layer 0's down_proj,
     * so it keeps its attention state. No q/k/v is kept for layer 0. */
    us_err e = {{0}};
    us_backend *be;
    CHECK(!us_backend_create("cpu", 0, &be, &e), "%s", e.msg);
    us_model *m;
    CHECK(!us_model_load(&m, be, FIXTURES "/" FX_TIED "/model", false, 0, 0, &e), "%s", e.msg);
    us_train_spec spec = {.lora = {.r = 8, .alpha = 16, .targets = 1u << US_T_DOWN}};
    CHECK(!us_model_setup_training(m, &spec, 1, &e), "%s", e.msg);
    CHECK(!us_model_prepare(m, 16, &e), "%s", e.msg);
    const us_layer_plan *p0 = &m->plan.layer[0];
    CHECK(!p0->attn_bwd && !p0->save_att && !p0->glu_bwd && p0->save_a, "layer 0 plan: attn_bwd %d save_att %d glu_bwd %d save_a %d",
          p0->attn_bwd, p0->save_att, p0->glu_bwd, p0->save_a);
    CHECK(m->plan.bytes_per_token[US_SAVE_QKV] == (m->cfg.heads + 2 * m->cfg.kv_heads) * m->cfg.head_dim * 4.0 *
                                                      (m->cfg.layers - 1),
          "q/k/v kept for %.0f bytes/token", m->plan.bytes_per_token[US_SAVE_QKV]);
    us_model_free(m);
    be->destroy(be);
}
TEST(model_plan_o_only) { plan_subset(t, 1u << US_T_O, "o_proj"); }
TEST(model_plan_q_only) { plan_subset(t, 1u << US_T_Q, "q_proj"); }
TEST(model_plan_v_up) { plan_subset(t, (1u << US_T_V) | (1u << US_T_UP), "v_proj+up_proj"); }
TEST(model_plan_gate_k) { plan_subset(t, (1u << US_T_GATE) | (1u << US_T_K), "gate_proj+k_proj"); }

/* ==== (b) full fine-tuning vs finite differences ==== */

/* sum over counted tokens of -log softmax(logits)[target], in float64 */
static double xent_f64(const float *logits, const int32_t *tg, int T, int V) {
    double L = 0;
    for (int i = 0; i < T; i++) {
        if (tg[i] == -100) continue;
        const float *z = logits + (size_t)i * V;
        double m = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) m = fmax(m, z[v]);
        for (int v = 0; v < V; v++) s += exp(z[v] - m);
        L += m + log(s) - z[tg[i]];
    }
    return L;
}

typedef struct fd_model {
    us_model *m;
    us_batch b;
    const host_batch *hb;
    float *logits;
} fd_model;

static double model_loss(fd_model *f, us_err *e) {
    double ls;
    us_model_sync_weights(f->m);
    if (us_model_forward(f->m, &f->b, f->logits, &ls, e)) return NAN;
    return xent_f64(f->logits, f->hb->tg, f->hb->B * f->hb->S, f->m->cfg.vocab);
}

/* kinds of parameter the test must have seen for a fixture */
enum { K_EMBED, K_NORM, K_W, K_BIAS, K_HEAD, K_COUNT };
static int param_kind(const char *name) {
    if (strstr(name, "embed_tokens")) return K_EMBED;
    if (strstr(name, "norm")) return K_NORM;
    if (strstr(name, "lm_head")) return K_HEAD;
    if (strstr(name, ".bias")) return K_BIAS;
    return K_W;
}

static void full_fd_run(us_test_ctx *t, const char *fx, unsigned need_kinds) {
    us_err e = {{0}};
    us_backend *be;
    CHECK(!us_backend_create("cpu", 0, &be, &e), "%s", e.msg);
    char p[512];
    snprintf(p, sizeof p, FIXTURES "/%s/model", fx);
    us_model *m;
    CHECK(!us_model_load(&m, be, p, false, 0, 0, &e), "%s", e.msg);
    us_train_spec spec = {.full = true};
    CHECK(!us_model_setup_training(m, &spec, 0, &e), "%s", e.msg);
    host_batch hb;
    CHECK(!load_batch(fx, m->cfg.vocab, &hb, &e), "%s", e.msg);
    if (hb.B > 2) hb.B = 2; /* two rows are enough */
    hb.counted = 0;
    for (int i = 0; i < hb.B * hb.S; i++) hb.counted += hb.tg[i] != -100;
    int T = hb.B * hb.S, V = m->cfg.vocab;
    fd_model f = {.m = m, .hb = &hb, .logits = malloc((size_t)T * V * 4)};
    upload_batch(be, &hb, &f.b);
    CHECK(!us_model_prepare(m, T, &e), "%s", e.msg);
    be->zero(be, m->grads, m->n_params * 4);
    double loss_step;
    CHECK(!us_model_step(m, &f.b, 1.0f, &loss_step, &e), "%s", e.msg); /* d(sum of token losses) */
    float *G = malloc(m->n_params * 4), *P = malloc(m->n_params * 4);
    be->download(be, G, m->grads, m->n_params * 4);
    be->download(be, P, m->params, m->n_params * 4);
    double L0 = model_loss(&f, &e);
    CHECK(us_close(L0, loss_step, 1e-5, 0), "%s: forward loss %.9g (f64 from logits) vs step loss %.9g", fx, L0,
          loss_step);

    uint64_t rs = 0x9e3779b97f4a7c15ull;
    unsigned seen = 0;
    int checked = 0;
    double worst = 0;
    char worst_name[300] = "";
    for (size_t pi = 0; pi < m->n_plist && !t->failed; pi++) {
        const us_param *pp = &m->plist[pi];
        const float *g = G + pp->off, *w = P + pp->off;
        double gmax = 0, ss = 0;
        size_t imax = 0;
        for (size_t i = 0; i < pp->numel; i++) {
            if (fabs(g[i]) > gmax) gmax = fabs(g[i]), imax = i;
            ss += (double)w[i] * w[i];
        }
        CHECK(gmax > 0, "%s: %s has an all-zero gradient", fx, pp->name);
        /* a quarter of the tensor's rms (norm weights, ~1: at most 0.05; zero biases: 0.025) */
        double h = fmin(0.25 * sqrt(ss / pp->numel), 0.05);
        if (h == 0) h = 0.025;
        int kind = param_kind(pp->name);
        /* coordinates: the largest gradient, then random ones whose gradient is not tiny; for the
         * embedding, rows of tokens in the batch (their gradient has the input-side part) */
        size_t coords[4] = {imax};
        int nc = 1;
        for (int tries = 0; nc < 4 && tries < 2000; tries++) {
            rs = rs * 6364136223846793005ull + 1442695040888963407ull;
            size_t i;
            if (kind == K_EMBED) {
                int tok = hb.ids[(rs >> 33) % (uint64_t)T];
                i = (size_t)tok * m->cfg.hidden + (size_t)((rs >> 13) % (uint64_t)m->cfg.hidden);
            } else {
                i = (size_t)((rs >> 20) % pp->numel);
            }
            if (fabs(g[i]) >= 0.05 * gmax) coords[nc++] = i;
        }
        for (int k = 0; k < nc; k++) {
            size_t i = coords[k];
            /* f(x+-h), f(x+-2h): fd = (8 (f1 - f-1) - (f2 - f-2)) / 12h */
            float orig = w[i], v[4] = {(float)(orig + 2 * h), (float)(orig + h), (float)(orig - h), (float)(orig - 2 * h)};
            double L[4];
            for (int s = 0; s < 4; s++) {
                be->upload(be, m->params + pp->off + i, &v[s], 4);
                L[s] = model_loss(&f, &e);
            }
            be->upload(be, m->params + pp->off + i, &orig, 4);
            double fd = (8 * (L[1] - L[2]) - (L[0] - L[3])) / (6 * ((double)v[1] - (double)v[2]));
            /* relative error, less an allowance for the f32 forward's rounding jitter in the loss
             * (measured up to ~2.5e-8 of |L|), which a difference quotient divides by the step */
            double jitter = 3e-8 * fabs(L0) / h;
            double raw = fabs(fd - g[i]) / fmax(fabs(fd), fabs(g[i]));
            double err = fmax(0.0, fabs(fd - g[i]) - jitter) / fmax(fabs(fd), fabs(g[i]));
            if (raw > worst) worst = raw, snprintf(worst_name, sizeof worst_name, "%s[%zu]", pp->name, i);
            CHECK(err <= 5e-3, "%s: %s[%zu]: gradient %.6g, finite differences %.6g (rel. error %.3g)", fx, pp->name, i,
                  g[i], fd, err);
            checked++;
        }
        seen |= 1u << kind;
    }
    us_model_sync_weights(m);
    free(G);
    free(P);
    free(f.logits);
    batch_free(be, &f.b);
    host_batch_free(&hb);
    us_model_free(m);
    be->destroy(be);
    if (t->failed) return;
    CHECK((seen & need_kinds) == need_kinds, "%s: parameter kinds seen %#x, want %#x", fx, seen, need_kinds);
    CHECK(checked > 20, "%s: only %d coordinates checked", fx, checked);
    if (getenv("US_TEST_VERBOSE"))
        fprintf(stderr, "%s: %d coordinates, worst raw rel. error %.3g at %s\n", fx, checked, worst, worst_name);
}

static void full_fd(us_test_ctx *t, const char *fx, unsigned need_kinds) {
    ONE_THREAD(full_fd_run(t, fx, need_kinds));
}

/* tied embedding (input and head gradients both land in it), GQA */
TEST(model_full_fd_llama_tied) { full_fd(t, "llama_silu_gqa_tied", 1u << K_EMBED | 1u << K_NORM | 1u << K_W); }
/* q/k/v biases, one kv head */
TEST(model_full_fd_qwen2_bias) {
    full_fd(t, "qwen2_bias_bf16", 1u << K_EMBED | 1u << K_NORM | 1u << K_W | 1u << K_BIAS | 1u << K_HEAD);
}
/* untied lm_head */
TEST(model_full_fd_mistral_untied) {
    full_fd(t, "mistral_mlp", 1u << K_EMBED | 1u << K_NORM | 1u << K_W | 1u << K_HEAD);
}

/* ==== (c) gradient accumulation ==== */

static void train_run(us_test_ctx *t, int batch, int accum, const char *tag, double *losses, int steps) {
    char out[600], metrics[600];
    snprintf(out, sizeof out, "%s/adapter_%s", us_test_tmpdir(), tag);
    snprintf(metrics, sizeof metrics, "%s/metrics_%s.jsonl", us_test_tmpdir(), tag);
    us_train_opts o;
    us_train_opts_default(&o);
    o.model_dir = FIXTURES "/" FX_TIED "/model";
    o.data_path = FIXTURES "/" FX_TIED "/data.jsonl";
    o.adapter_init = FIXTURES "/" FX_TIED "/adapter_init";
    o.out_dir = out;
    o.metrics_path = metrics;
    o.lr = 3e-3;
    o.weight_decay = 0.01;
    o.schedule = US_SCHED_LINEAR;
    o.warmup = 1;
    o.steps = steps;
    o.batch = batch;
    o.grad_accum = accum;
    o.shuffle = false;
    o.quiet = true;
    us_err e = {{0}};
    CHECK(!us_train(&o, &e), "%s", e.msg);
    char *txt;
    CHECK(!us_read_file(metrics, &txt, NULL, &e), "%s", e.msg);
    int n = 0;
    for (char *line = strtok(txt, "\n"); line && n < steps; line = strtok(NULL, "\n")) {
        cJSON *row = cJSON_Parse(line);
        cJSON *l = cJSON_GetObjectItem(row, "loss");
        losses[n++] = l ? l->valuedouble : NAN;
        cJSON_Delete(row);
    }
    free(txt);
    CHECK(n == steps, "%s: %d metric rows", tag, n);
}

TEST(model_grad_accum_equivalence) {
    enum { STEPS = 4 };
    double l1[STEPS], l2[STEPS];
    ONE_THREAD(train_run(t, 1, 2, "b1x2", l1, STEPS));
    if (t->failed) return;
    ONE_THREAD(train_run(t, 2, 1, "b2x1", l2, STEPS));
    if (t->failed) return;
    for (int i = 0; i < STEPS; i++)
        CHECK(us_close(l1[i], l2[i], 1e-5, 0), "step %d: loss %.9g (1 x 2) vs %.9g (2 x 1)", i + 1, l1[i], l2[i]);
    /* the rows differ in counted tokens: a per-micro-batch mean would not match */
    CHECK(l1[0] != l1[1], "losses do not move: nothing tested");
    us_err e = {{0}};
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/adapter_b1x2", us_test_tmpdir());
    snprintf(p2, sizeof p2, "%s/adapter_b2x1", us_test_tmpdir());
    us_adapter *a1, *a2, *a0;
    CHECK(!us_adapter_open(p1, &a1, &e), "%s", e.msg);
    CHECK(!us_adapter_open(p2, &a2, &e), "%s", e.msg);
    CHECK(!us_adapter_open(FIXTURES "/" FX_TIED "/adapter_init", &a0, &e), "%s", e.msg);
    us_config cfg;
    CHECK(!us_config_load(FIXTURES "/" FX_TIED "/model", &cfg, &e), "%s", e.msg);
    int r = us_adapter_config(a1)->r;
    double moved = 0;
    for (int l = 0; l < cfg.layers; l++)
        for (int tg = 0; tg < US_T_COUNT; tg++) {
            int in, out;
            us_target_dims(&cfg, tg, &in, &out);
            for (int isb = 0; isb < 2; isb++) {
                int64_t rows = isb ? out : r, cols = isb ? r : in;
                float *x = malloc(rows * cols * 4), *y = malloc(rows * cols * 4), *z = malloc(rows * cols * 4);
                us_status st = us_adapter_read(a1, l, tg, isb, rows, cols, x, &e);
                if (!st) st = us_adapter_read(a2, l, tg, isb, rows, cols, y, &e);
                if (!st) st = us_adapter_read(a0, l, tg, isb, rows, cols, z, &e);
                double err = scaled_err(x, y, (size_t)(rows * cols)), mv = scaled_err(y, z, (size_t)(rows * cols));
                moved = fmax(moved, mv);
                free(x), free(y), free(z);
                CHECK(!st, "%s", e.msg);
                CHECK(err <= 1e-5, "layer %d %s lora_%c: 1 x 2 vs 2 x 1 differ by %.3g", l, us_target_name(tg),
                      isb ? 'B' : 'A', err);
            }
        }
    us_adapter_close(a0);
    us_adapter_close(a1);
    us_adapter_close(a2);
    CHECK(moved > 1e-4, "training did not move the adapter (%.3g)", moved);
}

/* ==== (d) learning-rate schedules ==== */

/* transformers.optimization: get_{constant,linear,cosine}_schedule_with_warmup lr_lambda */
static double hf_lambda(us_schedule s, int step, int warmup, int total) {
    if (step < warmup) return (double)step / (double)(warmup > 1 ? warmup : 1);
    if (s == US_SCHED_CONSTANT) return 1.0;
    if (s == US_SCHED_LINEAR) return fmax(0.0, (double)(total - step) / (double)(total - warmup > 1 ? total - warmup : 1));
    double progress = (double)(step - warmup) / (double)(total - warmup > 1 ? total - warmup : 1);
    const double num_cycles = 0.5;
    return fmax(0.0, 0.5 * (1.0 + cos(M_PI * num_cycles * 2.0 * progress)));
}

TEST(model_lr_schedules) {
    const int totals[] = {1, 2, 7, 10, 100, 1000};
    const int warmups[] = {0, 1, 3, 10, 30};
    const us_schedule kinds[] = {US_SCHED_CONSTANT, US_SCHED_LINEAR, US_SCHED_COSINE};
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 5; b++)
            for (size_t k = 0; k < 3; k++) {
                int total = totals[a], warmup = warmups[b];
                for (int step = 0; step < total; step++) {
                    double got = us_lr_at(kinds[k], 2e-4, step, warmup, total), want = 2e-4 * hf_lambda(kinds[k], step, warmup, total);
                    CHECK(fabs(got - want) <= 1e-12 * 2e-4, "schedule %d total %d warmup %d step %d: lr %.12g, want %.12g",
                          (int)kinds[k], total, warmup, step, got, want);
                }
            }
    /* a few values by hand: cosine halfway is half, linear ends near 0, warmup ramps from 0 */
    CHECK(fabs(us_lr_at(US_SCHED_COSINE, 1.0, 55, 10, 100) - 0.5) < 1e-12, "cosine midpoint");
    CHECK(fabs(us_lr_at(US_SCHED_LINEAR, 1.0, 99, 0, 100) - 0.01) < 1e-12, "linear last step");
    CHECK(us_lr_at(US_SCHED_CONSTANT, 1.0, 0, 4, 100) == 0.0 && us_lr_at(US_SCHED_CONSTANT, 1.0, 2, 4, 100) == 0.5,
          "warmup ramp");
    us_schedule s;
    CHECK(us_schedule_parse("cosine", &s) && s == US_SCHED_COSINE, "parse cosine");
    CHECK(us_schedule_parse("linear", &s) && s == US_SCHED_LINEAR, "parse linear");
    CHECK(us_schedule_parse("constant", &s) && s == US_SCHED_CONSTANT, "parse constant");
    CHECK(!us_schedule_parse("cosine_with_restarts", &s) && !us_schedule_parse("", &s), "unknown names rejected");
}

/* ==== (e) ReLU: 1-bit mask ==== */

TEST(model_relu_plan_mask_bits) {
    us_err e = {{0}};
    us_backend *be;
    CHECK(!us_backend_create("cpu", 0, &be, &e), "%s", e.msg);
    us_model *m;
    const char *fx = "llama_relu_f16_sharded";
    CHECK(!us_model_load(&m, be, FIXTURES "/llama_relu_f16_sharded/model", false, 0, 0, &e), "%s", e.msg);
    CHECK(m->cfg.act == US_ACT_RELU, "fixture is not ReLU");
    us_adapter *ad;
    CHECK(!us_adapter_open(FIXTURES "/llama_relu_f16_sharded/adapter_init", &ad, &e), "%s", e.msg);
    us_train_spec spec = {.lora = *us_adapter_config(ad)};
    us_adapter_close(ad);
    CHECK(!us_model_setup_training(m, &spec, 0, &e), "%s", e.msg);
    CHECK(!us_model_load_adapter(m, FIXTURES "/llama_relu_f16_sharded/adapter_init", &e), "%s", e.msg);
    host_batch hb;
    CHECK(!load_batch(fx, m->cfg.vocab, &hb, &e), "%s", e.msg);
    int T = hb.B * hb.S, F = m->cfg.inter, W = (F + 31) / 32;
    CHECK(!us_model_prepare(m, T, &e), "%s", e.msg);
    /* one bit per MLP element, rows padded to 32 */
    double mask = m->plan.bytes_per_token[US_SAVE_MLP_MASK];
    CHECK(mask == (double)m->cfg.layers * W * 4, "mask bytes/token %.0f, want %d", mask, m->cfg.layers * W * 4);
    CHECK(mask * 8 < 2.0 * m->cfg.layers * F, "mask is not ~1 bit per element: %.0f bits for %d elements", mask * 8,
          m->cfg.layers * F);
    double want[US_SAVE_KINDS];
    expected_plan(&m->cfg, spec.lora.targets, spec.lora.r, want);
    for (int k = 0; k < US_SAVE_KINDS; k++)
        CHECK(m->plan.bytes_per_token[k] == want[k], "relu plan keeps %.0f bytes/token of %s, want %.0f",
              m->plan.bytes_per_token[k], us_save_kind_name(k), want[k]);
    /* the report names the mask kind */
    char *buf = NULL;
    size_t len = 0;
    FILE *mf = open_memstream(&buf, &len);
    us_plan_print(m, mf);
    fclose(mf);
    int named = buf && strstr(buf, us_save_kind_name(US_SAVE_MLP_MASK)) && strstr(buf, "ReLU");
    free(buf);
    CHECK(named, "plan report does not list the ReLU mask");
    /* after a forward the saved bits are (gate > 0) of the saved relu(gate), layer by layer */
    us_batch b;
    upload_batch(be, &hb, &b);
    double ls;
    CHECK(!us_model_forward(m, &b, NULL, &ls, &e), "%s", e.msg);
    size_t bad = 0, ones = 0, elems = (size_t)m->cfg.layers * T * F;
    for (int l = 0; l < m->cfg.layers; l++) {
        float *g = malloc((size_t)T * F * 4);
        uint32_t *bits = malloc((size_t)T * W * 4);
        be->download(be, g, m->acts[l].g, (size_t)T * F * 4);
        be->download(be, bits, m->acts[l].bits, (size_t)T * W * 4);
        for (int r = 0; r < T; r++)
            for (int c = 0; c < F; c++) {
                int bit = (bits[(size_t)r * W + c / 32] >> (c % 32)) & 1;
                bad += bit != (g[(size_t)r * F + c] > 0) || g[(size_t)r * F + c] < 0;
                ones += bit;
            }
        free(g);
        free(bits);
    }
    batch_free(be, &b);
    host_batch_free(&hb);
    us_model_free(m);
    be->destroy(be);
    CHECK(bad == 0, "%zu saved mask bits disagree with the saved relu(gate)", bad);
    CHECK(ones > 0 && ones < elems, "mask all zero or all one (%zu ones)", ones);

    /* a SiLU model keeps no mask */
    CHECK(!us_backend_create("cpu", 0, &be, &e), "%s", e.msg);
    CHECK(!us_model_load(&m, be, FIXTURES "/" FX_TIED "/model", false, 0, 0, &e), "%s", e.msg);
    spec.lora.targets = ALL_TARGETS;
    CHECK(!us_model_setup_training(m, &spec, 0, &e), "%s", e.msg);
    CHECK(!us_model_prepare(m, 16, &e), "%s", e.msg);
    double silu_mask = m->plan.bytes_per_token[US_SAVE_MLP_MASK];
    us_model_free(m);
    be->destroy(be);
    CHECK(silu_mask == 0, "SiLU model keeps %.0f mask bytes per token", silu_mask);
}
