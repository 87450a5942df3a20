/* test_memory_modes.c — recomputing and offloading change where tensors live, never the result.
 *
 * For every parity fixture, one step's loss and gradients with up rebuilt in the first layer,
 * one layer's MLP tensors offloaded to host memory (alone, then beside that), the MLP rebuilt
 * in the first layer and up in the second, --recompute mlp, --recompute layer and --offload (CPU: synchronous copies) must equal those of the default plan, with the
 * MLP processed in chunks of 5 tokens (so chunk boundaries fall inside rows). The same holds for
 * full fine-tuning. And the saved bytes per token must shrink in that order. The default plan
 * itself is pinned to PEFT by test_parity.c, so these are PEFT-exact too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokens.h"
#include "io/adapter.h"
#include "model/model.h"
#include "train/preflight.h"
#include "test.h"
#include "test_fixture.h"

typedef struct result {
    double loss;
    float *grads;
    size_t n;
    double per_token;
} result;

/* One step of m over every row of ds under memory mode mm: loss, gradients, bytes per token. */
static us_status step_once(us_model *m, const us_token_dataset *ds, const us_memory_mode *mm, result *out, us_err *e) {
    us_backend *be = m->be;
    us_status st = us_model_set_memory_mode(m, mm, e);
    if (!st) st = us_model_prepare(m, (int)(ds->n * ds->ex[0].n), e);
    if (st) return st;
    us_batch b;
    int counted = us_test_fixture_batch(be, ds, &b);
    be->zero(be, m->grads, m->n_params * 4);
    st = us_model_step(m, &b, 1.0f / counted, &out->loss, e);
    out->n = m->n_params;
    out->grads = malloc(m->n_params * 4);
    be->download(be, out->grads, m->grads, m->n_params * 4);
    out->per_token = m->plan.total_per_token;
    us_test_batch_free(be, &b);
    return st;
}

static int run_mode(us_test_ctx *t, const char *fx, bool full, const us_memory_mode *mm, result *out) {
    char p[512];
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    if (us_backend_create("cpu", 1, &be, &e)) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    snprintf(p, sizeof p, FIXTURES "/%s/model", fx);
    if (us_model_load(&m, be, p, false, 0, 0, &e)) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    us_train_spec spec = {.full = full};
    snprintf(p, sizeof p, FIXTURES "/%s/adapter_init", fx);
    if (!full) {
        us_adapter *ad;
        if (us_adapter_open(p, &ad, &e)) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
        spec.lora = *us_adapter_config(ad);
        us_adapter_close(ad);
    }
    us_status st = us_model_setup_training(m, &spec, 0, &e);
    if (!st && !full) st = us_model_load_adapter(m, p, &e);
    us_token_dataset ds = {0};
    snprintf(p, sizeof p, FIXTURES "/%s/data.jsonl", fx);
    if (!st) st = us_jsonl_tokens_load(p, m->cfg.vocab, &ds, &e);
    if (st) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    st = step_once(m, &ds, mm, out, &e);
    us_token_dataset_free(&ds);
    us_model_free(m);
    be->destroy(be);
    if (st) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    return 0;
}

/* Largest |r - ref| over the gradients, relative to the largest |ref| (r's gradients freed). */
static double grad_rel_diff(result *r, const result *ref) {
    double maxg = 0, diff = 0;
    for (size_t i = 0; i < ref->n; i++) {
        maxg = fmax(maxg, fabs(ref->grads[i]));
        diff = fmax(diff, fabs((double)r->grads[i] - ref->grads[i]));
    }
    free(r->grads);
    return maxg > 0 ? diff / maxg : INFINITY;
}

static void compare_modes(us_test_ctx *t, const char *fx, bool full, bool untied) {
    result ref, r;
    static const us_memory_mode none = {.mlp_chunk_rows = 5};
    if (run_mode(t, fx, full, &none, &ref)) return;
    double prev = ref.per_token;
    /* the ordered modes each keep fewer bytes per token on the device than the one before; the
     * others only train the same: the LM head in chunks of 3 rows (the default forms a fixture's
     * logits at once), and the MLP rebuilt in layer 1 above layer 0's offloaded (a plan
     * --max-memory may pick on a GPU) */
    static const struct { us_memory_mode mm; const char *name; bool ordered; } modes[] = {
        {{.up_layers = 1, .mlp_chunk_rows = 5}, "recompute up in layer 0", true},
        {{.offload_mlp = 1, .mlp_chunk_rows = 5}, "mlp offloaded in layer 0", true},
        {{.up_layers = 1, .offload_mlp = 1, .mlp_chunk_rows = 5}, "mlp offloaded in layer 0, recompute up in layer 1", true},
        {{.recompute = US_RECOMPUTE_MLP, .mlp_layers = 1, .up_layers = 1, .mlp_chunk_rows = 5},
         "recompute mlp in layer 0, up in layer 1", true},
        {{.recompute = US_RECOMPUTE_MLP, .mlp_chunk_rows = 5}, "recompute mlp", true},
        {{.recompute = US_RECOMPUTE_LAYER, .mlp_chunk_rows = 5}, "recompute layer", true},
        {{.recompute = US_RECOMPUTE_LAYER, .offload = true, .mlp_chunk_rows = 5}, "offload", true},
        /* rebuilt layers that take a kept attention output: on the device, on the host */
        {{.recompute = US_RECOMPUTE_LAYER, .keep_attn = 1, .mlp_chunk_rows = 5}, "recompute layer, attention kept in 1", false},
        {{.offload = true, .keep_attn = 1, .offload_attn = 1, .mlp_chunk_rows = 5}, "offload, attention kept in 1, on the host in 1", false},
        {{.recompute = US_RECOMPUTE_LAYER, .offload_attn = 2, .mlp_chunk_rows = 5}, "recompute layer, attention on the host in 2", false},
        {{.mlp_chunk_rows = 5, .head_chunk_rows = 3}, "head in 3-row chunks", false},
        {{.recompute = US_RECOMPUTE_MLP, .mlp_layers = 1, .offload_mlp = 1, .mlp_chunk_rows = 5},
         "mlp offloaded in layer 0, recompute mlp in layer 1", false},
        /* every layer offloaded: two device slots no layer keeps, each layer's own */
        {{.offload_mlp = 2, .mlp_chunk_rows = 5}, "mlp offloaded in layers 0 and 1", false},
        /* the embedding table in host memory (untied LoRA only), beside an offloaded MLP */
        {{.embed_host = true, .offload_mlp = 1, .mlp_chunk_rows = 5}, "embedding in host memory", false}};
    for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
        if (modes[k].mm.embed_host && (full || !untied)) continue; /* refused: memory_modes_embed_host_refused */
        if (run_mode(t, fx, full, &modes[k].mm, &r)) break;
        double d = grad_rel_diff(&r, &ref);
        CHECK(fabs(r.loss - ref.loss) <= 1e-6 * fabs(ref.loss), "%s %s: loss %.9g vs %.9g", fx, modes[k].name, r.loss,
              ref.loss);
        CHECK(d <= 1e-5, "%s %s: gradients differ by %.3g of their scale", fx, modes[k].name, d);
        if (!modes[k].ordered) continue;
        CHECK(r.per_token < prev, "%s %s: keeps %.0f bytes/token, not less than the previous mode's %.0f", fx,
              modes[k].name, r.per_token, prev);
        prev = r.per_token;
    }
    free(ref.grads);
}

TEST(memory_modes_llama_silu_gqa_tied) { compare_modes(t, "llama_silu_gqa_tied", false, false); }
TEST(memory_modes_qwen2_bias_bf16) { compare_modes(t, "qwen2_bias_bf16", false, true); }
TEST(memory_modes_llama_relu_f16_sharded) { compare_modes(t, "llama_relu_f16_sharded", false, true); }
TEST(memory_modes_mistral_mlp) { compare_modes(t, "mistral_mlp", false, true); }
TEST(memory_modes_full_finetuning) { compare_modes(t, "qwen2_bias_bf16", true, true); }

/* The gate/up pool over many layers (plan.c): offloaded layers from the bottom share device slots
 * with the keeping layers above them, round robin, and come back after those layers' backward. A
 * 7-layer random model (untied), LoRA on every projection with random A and B, one step: every
 * split between offloaded, up-rebuilt, MLP-rebuilt and kept layers — chains of two and three
 * layers per slot, one or two slots no layer keeps — must give the default plan's loss and
 * gradients, with the embedding in host memory too. */
/* deep_step's backend counts its attention forwards (memory_modes_kept_attention_deep) */
static int attn_fwd_calls;
static void (*attn_fwd_real)(us_backend *, void *, float *, const void *, const void *, const void *, const int32_t *,
                             const us_attn_shape *);
static void attn_fwd_counted(us_backend *be, void *o, float *lse, const void *q, const void *k, const void *v,
                             const int32_t *seg, const us_attn_shape *sh) {
    attn_fwd_calls++;
    attn_fwd_real(be, o, lse, q, k, v, seg, sh);
}

static int deep_step(us_test_ctx *t, const us_memory_mode *mm, result *out) {
    const char *dir = us_test_tmpdir();
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    if (us_backend_create("cpu", 1, &be, &e)) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    attn_fwd_real = be->attn_fwd, be->attn_fwd = attn_fwd_counted;
    us_status st = us_model_load(&m, be, dir, true, 0.05f, 7, &e);
    if (st) {
        be->destroy(be);
        return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    }
    us_train_spec spec = {.lora = {.r = 4, .alpha = 8, .targets = (1u << US_T_COUNT) - 1}};
    st = us_model_setup_training(m, &spec, 3, &e);
    if (!st) {
        float *p = malloc(m->n_params * 4);
        for (size_t i = 0; i < m->n_params; i++) p[i] = 0.1f * us_rand_normal(11, 0, i);
        be->upload(be, m->params, p, m->n_params * 4);
        free(p);
    }
    enum { B = 2, S = 12 };
    us_token_dataset ds = {0};
    us_example ex[B];
    int32_t ids[B][S];
    for (int r = 0; r < B; r++) {
        for (int i = 0; i < S; i++) ids[r][i] = (int32_t)((r * 37 + i * 11 + 5) % 64);
        ex[r] = (us_example){.ids = ids[r], .labels = ids[r], .n = S};
    }
    ds.ex = ex, ds.n = B;
    if (!st) st = step_once(m, &ds, mm, out, &e);
    us_model_free(m);
    be->destroy(be);
    if (st) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    return 0;
}

/* Writes the 7-layer untied random model's config.json into the test's directory. */
static void write_deep_config(int inter, int vocab) {
    char path[600], cfg[700];
    snprintf(path, sizeof path, "%s/config.json", us_test_tmpdir());
    int n = snprintf(cfg, sizeof cfg,
                     "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 32, \"intermediate_size\": %d,"
                     " \"num_hidden_layers\": 7, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 16,"
                     " \"vocab_size\": %d, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5,"
                     " \"hidden_act\": \"silu\", \"tie_word_embeddings\": false}",
                     inter, vocab);
    us_test_write(path, cfg, (size_t)n);
}

TEST(memory_modes_mlp_pool_deep) {
    write_deep_config(48, 64);
    result ref, r;
    us_memory_mode none = {0};
    if (deep_step(t, &none, &ref)) return;
    static const struct { int mlp, up, off; bool embed; } cases[] = {
        {0, 0, 1, false}, {0, 0, 2, false}, {0, 0, 3, false}, {0, 0, 4, false}, {0, 0, 5, true}, {0, 0, 6, false},
        {0, 0, 7, false}, {0, 2, 3, false}, {1, 1, 4, true}, {2, 0, 5, false}, {0, 0, 0, true}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        us_memory_mode mm = {.recompute = cases[k].mlp ? US_RECOMPUTE_MLP : US_RECOMPUTE_NONE, .mlp_layers = cases[k].mlp,
                             .up_layers = cases[k].up, .offload_mlp = cases[k].off, .embed_host = cases[k].embed};
        if (deep_step(t, &mm, &r)) break;
        double d = grad_rel_diff(&r, &ref);
        CHECK(fabs(r.loss - ref.loss) <= 1e-6 * fabs(ref.loss), "mlp %d up %d offload %d: loss %.9g vs %.9g",
              cases[k].mlp, cases[k].up, cases[k].off, r.loss, ref.loss);
        CHECK(d <= 1e-5, "mlp %d up %d offload %d: gradients differ by %.3g of their scale", cases[k].mlp, cases[k].up,
              cases[k].off, d);
    }
    free(ref.grads);
}

/* Rebuilt layers with kept attention outputs (us_layer_attn) on the 7-layer model: the top
 * keep_attn layers on the device, the next offload_attn in host memory (two device buffers by
 * layer parity), with and without offloaded layer inputs. Each split trains exactly as the
 * default plan, and backward re-runs the attention only in the other layers (attn_fwd counted). */

TEST(memory_modes_kept_attention_deep) {
    write_deep_config(48, 64);
    result ref, r;
    us_memory_mode none = {0};
    if (deep_step(t, &none, &ref)) return;
    static const struct { bool offload; int keep, host; } cases[] = {
        {true, 0, 0}, {true, 2, 3}, {true, 0, 7}, {true, 7, 0}, {true, 1, 1}, {false, 3, 0}, {false, 0, 2}, {false, 2, 9}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        us_memory_mode mm = {.recompute = US_RECOMPUTE_LAYER, .offload = cases[k].offload, .keep_attn = cases[k].keep,
                             .offload_attn = cases[k].host};
        attn_fwd_calls = 0;
        if (deep_step(t, &mm, &r)) break;
        int kept = US_MIN(7, cases[k].keep + cases[k].host);
        CHECK(attn_fwd_calls == 7 + (7 - kept), "offload %d keep %d host %d: %d attention forwards, expected %d",
              cases[k].offload, cases[k].keep, cases[k].host, attn_fwd_calls, 7 + 7 - kept);
        double d = grad_rel_diff(&r, &ref);
        CHECK(fabs(r.loss - ref.loss) <= 1e-6 * fabs(ref.loss), "offload %d keep %d host %d: loss %.9g vs %.9g",
              cases[k].offload, cases[k].keep, cases[k].host, r.loss, ref.loss);
        CHECK(d <= 1e-5, "offload %d keep %d host %d: gradients differ by %.3g of their scale", cases[k].offload,
              cases[k].keep, cases[k].host, d);
    }
    free(ref.grads);
}

/* --max-memory's search over the GPU candidates (host embedding, offloaded MLP layers, rebuilt
 * ones) on the 7-layer model: the CPU backend, renamed so us_fit_memory treats it as a device
 * with host memory apart (its host_alloc is ordinary memory, so the plans really run). For budgets
 * from just under the default plan down to where nothing fits: the chosen plan's bytes are within
 * the budget, and it trains exactly as the default plan; on the way down the host embedding is
 * chosen somewhere, and rebuilt layers with kept attention outputs (two on the host when
 * offloading). (Offloaded layers are costed 50 us each, rebuilding this model's layers
 * nanoseconds, so here rebuilds win; on the H100 the 8B shape's 19 GiB plan offloads 17 layers.) */
TEST(memory_modes_fit_gpu_candidates) {
    write_deep_config(96, 512);
    result ref;
    us_memory_mode none = {0};
    if (deep_step(t, &none, &ref)) return;
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    CHECK(!us_backend_create("cpu", 1, &be, &e), "%s", e.msg);
    const char *real_name = be->name;
    be->name = "cpu-as-gpu";
    CHECK(!us_model_load(&m, be, us_test_tmpdir(), true, 0.05f, 7, &e), "%s", e.msg);
    us_train_spec spec = {.lora = {.r = 4, .alpha = 8, .targets = (1u << US_T_COUNT) - 1}};
    CHECK(!us_model_setup_training(m, &spec, 3, &e), "%s", e.msg);
    enum { S = 12 };
    double full = 0;
    size_t step;
    CHECK(!us_model_step_bytes(m, 2 * S, &step, &e), "%s", e.msg);
    full = (double)m->weight_bytes + (double)m->n_params * 16 + (double)step + (double)m->backend_scratch;
    bool saw_embed = false, saw_layers = false, saw_keep = false, saw_host_attn = false;
    int fitted = 0;
    for (double f = 0.995; f > 0.3; f -= 0.02) {
        int batch = 2, accum = 1;
        double planned = 0;
        us_status st = us_fit_memory(m, S, full * f, 2, &batch, &accum, &planned, &e);
        if (st) {
            CHECK(st == US_ENOMEM && strstr(e.msg, "no plan fits"), "budget %.3f: %s", f, e.msg);
            break;
        }
        fitted++;
        CHECK(planned <= full * f, "budget %.0f bytes: planned %.0f", full * f, planned);
        if (batch != 2) continue; /* a split: covered by max_memory_fits_and_trains_the_same */
        us_memory_mode mm = {.recompute = m->recompute, .mlp_layers = m->recompute_layers, .up_layers = m->up_layers,
                             .offload_mlp = m->offload_mlp, .offload = m->offload, .embed_host = m->embed_host,
                             .keep_attn = m->keep_attn, .offload_attn = m->offload_attn};
        saw_embed |= mm.embed_host;
        saw_layers |= m->recompute == US_RECOMPUTE_LAYER;
        saw_keep |= m->recompute == US_RECOMPUTE_LAYER && m->keep_attn > 0;
        saw_host_attn |= m->offload && m->offload_attn > 0;
        result r;
        if (deep_step(t, &mm, &r)) break;
        double d = grad_rel_diff(&r, &ref);
        CHECK(fabs(r.loss - ref.loss) <= 1e-6 * fabs(ref.loss) && d <= 1e-5,
              "budget %.3f (embed %d, offload %d, mlp %d, up %d): loss %.9g vs %.9g, gradients %.3g", f, mm.embed_host,
              mm.offload_mlp, mm.recompute == US_RECOMPUTE_MLP ? mm.mlp_layers : 0, mm.up_layers, r.loss, ref.loss,
              d);
    }
    CHECK(fitted >= 3 && saw_embed, "%d budgets fitted; host embedding %s", fitted, saw_embed ? "seen" : "never");
    /* low budgets rebuild whole layers, keeping what attention outputs fit (and, offloading, the
     * asked two on the host) */
    CHECK(saw_layers && saw_keep && saw_host_attn, "layer plans %d, with kept attention %d, host attention %d",
          saw_layers, saw_keep, saw_host_attn);
    free(ref.grads);
    be->name = real_name;
    us_model_free(m);
    be->destroy(be);
}

/* The embedding table moves to host memory (the weights on the device shrink by exactly its
 * bytes) and back; a tied table (the LM head reads all of it) and a training one are refused with
 * the reason. */
TEST(memory_modes_embed_host_refused) {
    static const struct { const char *fx; bool full; const char *why; } cases[] = {
        {"llama_silu_gqa_tied", false, "tied to the LM head"},
        {"qwen2_bias_bf16", true, "with --full the embedding trains"},
        {"qwen2_bias_bf16", false, NULL}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char p[512];
        us_err e = {{0}};
        us_backend *be;
        us_model *m;
        CHECK(!us_backend_create("cpu", 1, &be, &e), "%s", e.msg);
        snprintf(p, sizeof p, FIXTURES "/%s/model", cases[i].fx);
        CHECK(!us_model_load(&m, be, p, false, 0, 0, &e), "%s", e.msg);
        us_train_spec spec = {.full = cases[i].full, .lora = {.r = 4, .alpha = 8, .targets = 1u << US_T_Q}};
        CHECK(!us_model_setup_training(m, &spec, 0, &e), "%s", e.msg);
        size_t w0 = m->weight_bytes, table = (size_t)m->cfg.vocab * m->cfg.hidden * be->weight_bytes;
        us_memory_mode mm = {.embed_host = true};
        us_status st = us_model_set_memory_mode(m, &mm, &e);
        if (cases[i].why) {
            CHECK(st == US_EUNSUPPORTED && strstr(e.msg, cases[i].why), "%s: %s", cases[i].fx, e.msg);
        } else {
            CHECK(!st, "%s", e.msg);
            CHECK(us_model_device_weight_bytes(m) == w0 - table, "planned %zu, want %zu", us_model_device_weight_bytes(m),
                  w0 - table);
            CHECK(!us_model_prepare(m, 8, &e) && m->embed_on_host && m->weight_bytes == w0 - table, "%s", e.msg);
            mm.embed_host = false; /* and back */
            CHECK(!us_model_set_memory_mode(m, &mm, &e) && !us_model_prepare(m, 8, &e), "%s", e.msg);
            CHECK(!m->embed_on_host && m->weight_bytes == w0, "weights %zu after moving back, want %zu", m->weight_bytes, w0);
        }
        us_model_free(m);
        be->destroy(be);
    }
}

/* ---- --max-memory: the fastest plan that fits, the same training ---- */

#include "io/safetensors.h"
#include "test_cli_util.h"

#define MM_FIX FIXTURES "/llama_silu_gqa_tied"

/* Runs train with EXTRA into TMP/NAME; returns the exit status, the "(planned X GiB)" figure of
 * the --max-memory line (or -1) and the output. */
static int mm_run(const char *name, const char *extra, double *planned, char *out, size_t cap) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/%s", us_test_tmpdir(), name);
    int rc = cu_run(out, cap, CU_ENV "%s train --model " MM_FIX "/model --data " MM_FIX "/data.jsonl --out %s --steps 3 "
                              "--seq-len 16 --no-shuffle %s", cu_cli(), dir, extra);
    const char *p = strstr(out, "(planned ");
    *planned = p ? atof(p + 9) : -1;
    return rc;
}

static int same_adapter(const char *a, const char *b) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/%s/adapter_model.safetensors", us_test_tmpdir(), a);
    snprintf(pb, sizeof pb, "%s/%s/adapter_model.safetensors", us_test_tmpdir(), b);
    return cu_same_file(pa, pb);
}

/* Largest |a - b| over every F32 tensor of two adapters, relative to the largest |b|; -1 when
 * they cannot be read or their tensors differ in name or size. */
static double adapter_rel_diff(const char *a, const char *b) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/%s/adapter_model.safetensors", us_test_tmpdir(), a);
    snprintf(pb, sizeof pb, "%s/%s/adapter_model.safetensors", us_test_tmpdir(), b);
    us_err e = {{0}};
    us_st_file *fa = NULL, *fb = NULL;
    double diff = -1, scale = 0, worst = 0;
    if (us_st_open(pa, &fa, &e) || us_st_open(pb, &fb, &e) || us_st_count(fa) != us_st_count(fb)) goto out;
    for (size_t i = 0; i < us_st_count(fa); i++) {
        const us_st_tensor *ta = us_st_at(fa, i), *tb = us_st_find(fb, ta->name);
        if (!tb || ta->dtype != US_DT_F32 || tb->dtype != US_DT_F32 || ta->numel != tb->numel) goto out;
        const float *x = ta->data, *y = tb->data;
        for (int64_t j = 0; j < ta->numel; j++) {
            worst = fmax(worst, fabs((double)x[j] - y[j]));
            scale = fmax(scale, fabs((double)y[j]));
        }
    }
    diff = scale > 0 ? worst / scale : worst;
out:
    if (fa) us_st_close(fa);
    if (fb) us_st_close(fb);
    return diff;
}

TEST(max_memory_fits_and_trains_the_same) {
    static char out[16384];
    double all, one;
    /* a generous budget keeps everything at the asked micro-batch */
    CHECK(mm_run("mm_all", "--batch 4 --max-memory 1", &all, out, sizeof out) == 0, "%s", cu_tail(out));
    CHECK(all > 0 && strstr(out, "micro-batch 4 x grad-accum 1, keep the plan's set"), "%s", cu_tail(out));
    /* tighter budgets: whatever plan is chosen fits and trains the same adapter (splits and
     * rebuilds change only where tensors live and the order of sums); at least one split and one
     * rebuild are seen on the way down */
    bool split_seen = false, rebuild_seen = false;
    int fitted = 0;
    static const double fracs[] = {0.999, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65};
    for (size_t i = 0; i < sizeof fracs / sizeof fracs[0]; i++) {
        char extra[200], name[32];
        double budget = all * fracs[i], planned;
        snprintf(extra, sizeof extra, "--batch 4 --max-memory %.9g", budget);
        snprintf(name, sizeof name, "mm_%zu", i);
        int rc = mm_run(name, extra, &planned, out, sizeof out);
        if (rc) { /* nothing fits: said so, and no smaller budget can fit either */
            CHECK(rc == 1 && strstr(out, "no plan fits"), "rc %d:\n%s", rc, cu_tail(out));
            break;
        }
        fitted++;
        CHECK(planned > 0 && planned <= budget, "planned %.9g GiB over the budget %.9g:\n%s", planned, budget, cu_tail(out));
        split_seen |= strstr(out, "micro-batch 4 x") == NULL;
        rebuild_seen |= strstr(out, ", recompute ") != NULL;
        double d = adapter_rel_diff(name, "mm_all");
        CHECK(d >= 0 && d <= 1e-4, "budget %.9g: the adapter differs from the unconstrained run by %.3g:\n%s", budget, d,
              cu_tail(out));
    }
    CHECK(fitted >= 3 && split_seen && rebuild_seen, "%d budgets fitted; split %d, rebuild %d", fitted, split_seen,
          rebuild_seen);
    /* a split is exactly the explicit accumulation run */
    double dummy;
    CHECK(mm_run("mm_split", "--batch 4 --max-memory 0.0013", &dummy, out, sizeof out) == 0, "%s", cu_tail(out));
    const char *mb = strstr(out, "micro-batch ");
    int b = 0, acc = 0;
    CHECK(mb && sscanf(mb, "micro-batch %d x grad-accum %d", &b, &acc) == 2, "%s", cu_tail(out));
    if (b < 4 && strstr(out, "keep the plan's set")) {
        char extra[100];
        snprintf(extra, sizeof extra, "--batch %d --grad-accum %d", b, acc);
        CHECK(mm_run("mm_explicit", extra, &dummy, out, sizeof out) == 0, "%s", cu_tail(out));
        CHECK(same_adapter("mm_split", "mm_explicit"), "the --max-memory run differs from %s", extra);
    }
    /* one row per step cannot split: just under its plan, something is rebuilt */
    CHECK(mm_run("mm_one", "--batch 1 --max-memory 1", &one, out, sizeof out) == 0, "%s", cu_tail(out));
    char extra[200];
    /* (0.1% under: the printed plan has 4 significant digits) */
    snprintf(extra, sizeof extra, "--batch 1 --max-memory %.9g", one * 0.999);
    double rebuilt;
    CHECK(mm_run("mm_rebuilt", extra, &rebuilt, out, sizeof out) == 0, "%s", cu_tail(out));
    CHECK(strstr(out, "micro-batch 1 x grad-accum 1, recompute"), "%s", cu_tail(out));
    CHECK(rebuilt > 0 && rebuilt <= one * 0.999, "planned %.9g GiB over the budget %.9g", rebuilt, one * 0.999);
}

/* ---- --extend-context: past max_position_embeddings, the same training as a model whose
 * window covers the sequence (RoPE needs no table; only the config's bound differs) ---- */

TEST(extend_context_trains_like_a_longer_window) {
    static char out[16384];
    const char *tmp = us_test_tmpdir();
    /* the fixture with a 12-token window, the weights shared by a link */
    CHECK(cu_run(out, sizeof out,
                 "mkdir -p %s/short && ln -sf \"$(cd " MM_FIX "/model && pwd)\"/model.safetensors %s/short/ && "
                 "sed 's/\"max_position_embeddings\": 512/\"max_position_embeddings\": 12/' " MM_FIX
                 "/model/config.json > %s/short/config.json && grep -q '\"max_position_embeddings\": 12' %s/short/config.json",
                 tmp, tmp, tmp, tmp) == 0, "%s", cu_tail(out));
#define EXT_TRAIN CU_ENV "%s train --model %s/short --data " MM_FIX "/data.jsonl --steps 3 --seq-len 16 --no-shuffle "
    CHECK(cu_run(out, sizeof out, EXT_TRAIN "--out %s/ext_no", cu_cli(), tmp, tmp) == 1, "%s", cu_tail(out));
    CHECK(strstr(out, "--seq-len 16 exceeds the model's max_position_embeddings 12") && strstr(out, "--extend-context"),
          "%s", cu_tail(out));
    char no[700];
    snprintf(no, sizeof no, "%s/ext_no", tmp);
    CHECK(access(no, F_OK) != 0, "a refused run left %s", no);
    CHECK(cu_run(out, sizeof out, EXT_TRAIN "--out %s/ext_yes --extend-context", cu_cli(), tmp, tmp) == 0, "%s",
          cu_tail(out));
#undef EXT_TRAIN
    CHECK(strstr(out, "past max_position_embeddings 12"), "%s", cu_tail(out));
    double dummy;
    CHECK(mm_run("ext_ref", "", &dummy, out, sizeof out) == 0, "%s", cu_tail(out));
    CHECK(same_adapter("ext_yes", "ext_ref"), "--extend-context trained a different adapter than the 512-token window");
}
