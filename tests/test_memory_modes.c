/* test_memory_modes.c — recomputing and offloading change where tensors live, never the result.
 *
 * For every parity fixture, one step's loss and gradients under --recompute mlp (in the first
 * layer only, then in all), --recompute layer and --offload (CPU: synchronous copies) must equal those of the default plan, with the
 * MLP processed in chunks of 5 tokens (so chunk boundaries fall inside rows). The same holds for
 * full fine-tuning. And the saved bytes per token must shrink in that order. The default plan
 * itself is pinned to PEFT by test_parity.c, so these are PEFT-exact too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokens.h"
#include "io/adapter.h"
#include "model/model.h"
#include "test.h"
#include "test_fixture.h"

typedef struct result {
    double loss;
    float *grads;
    size_t n;
    double per_token;
} result;

static int run_mode(us_test_ctx *t, const char *fx, bool full, int recompute, int layers, bool offload, result *out) {
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
    if (!st) st = us_model_set_memory_mode(m, recompute, layers, offload, 5, &e);
    int T = st ? 0 : (int)(ds.n * ds.ex[0].n);
    if (!st) st = us_model_prepare(m, T, &e);
    if (st) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    us_batch b;
    int counted = us_test_fixture_batch(be, &ds, &b);
    be->zero(be, m->grads, m->n_params * 4);
    st = us_model_step(m, &b, 1.0f / counted, &out->loss, &e);
    out->n = m->n_params;
    out->grads = malloc(m->n_params * 4);
    be->download(be, out->grads, m->grads, m->n_params * 4);
    out->per_token = m->plan.total_per_token;
    us_test_batch_free(be, &b);
    us_token_dataset_free(&ds);
    us_model_free(m);
    be->destroy(be);
    if (st) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    return 0;
}

static void compare_modes(us_test_ctx *t, const char *fx, bool full) {
    result ref, r;
    if (run_mode(t, fx, full, US_RECOMPUTE_NONE, 0, false, &ref)) return;
    double prev = ref.per_token;
    static const struct { int recompute, layers; bool offload; const char *name; } modes[] = {
        {US_RECOMPUTE_MLP, 1, false, "recompute mlp in layer 0"}, {US_RECOMPUTE_MLP, 0, false, "recompute mlp"},
        {US_RECOMPUTE_LAYER, 0, false, "recompute layer"}, {US_RECOMPUTE_LAYER, 0, true, "offload"}};
    for (int k = 0; k < 4; k++) {
        if (run_mode(t, fx, full, modes[k].recompute, modes[k].layers, modes[k].offload, &r)) return;
        double maxg = 0, diff = 0;
        for (size_t i = 0; i < ref.n; i++) {
            maxg = fmax(maxg, fabs(ref.grads[i]));
            diff = fmax(diff, fabs((double)r.grads[i] - ref.grads[i]));
        }
        free(r.grads);
        CHECK(fabs(r.loss - ref.loss) <= 1e-6 * fabs(ref.loss), "%s %s: loss %.9g vs %.9g", fx, modes[k].name, r.loss,
              ref.loss);
        CHECK(diff <= 1e-5 * maxg, "%s %s: gradients differ by %.3g of their scale", fx, modes[k].name, diff / maxg);
        CHECK(r.per_token < prev, "%s %s: keeps %.0f bytes/token, not less than the previous mode's %.0f", fx,
              modes[k].name, r.per_token, prev);
        prev = r.per_token;
    }
    free(ref.grads);
}

TEST(memory_modes_llama_silu_gqa_tied) { compare_modes(t, "llama_silu_gqa_tied", false); }
TEST(memory_modes_qwen2_bias_bf16) { compare_modes(t, "qwen2_bias_bf16", false); }
TEST(memory_modes_llama_relu_f16_sharded) { compare_modes(t, "llama_relu_f16_sharded", false); }
TEST(memory_modes_mistral_mlp) { compare_modes(t, "mistral_mlp", false); }
TEST(memory_modes_full_finetuning) { compare_modes(t, "qwen2_bias_bf16", true); }

/* ---- --max-memory: the fastest plan that fits, the same training ---- */

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

TEST(max_memory_splits_the_batch_then_rebuilds) {
    static char out[16384];
    double all, split, one;
    /* a generous budget keeps everything: micro-batch 4 */
    CHECK(mm_run("mm_all", "--batch 4 --max-memory 1", &all, out, sizeof out) == 0, "%s", cu_tail(out));
    CHECK(all > 0 && strstr(out, "micro-batch 4 x grad-accum 1, keep the plan's set"), "%s", cu_tail(out));
    /* just under that: half the micro-batch, twice the accumulation; the same update as asking for it */
    char extra[200];
    snprintf(extra, sizeof extra, "--batch 4 --max-memory %.9g", all * 0.999);
    CHECK(mm_run("mm_split", extra, &split, out, sizeof out) == 0, "%s", cu_tail(out));
    CHECK(strstr(out, "micro-batch 2 x grad-accum 2, keep the plan's set"), "%s", cu_tail(out));
    CHECK(split > 0 && split <= all * 0.999, "planned %.9g GiB over the budget %.9g", split, all * 0.999);
    double dummy;
    CHECK(mm_run("mm_explicit", "--batch 2 --grad-accum 2", &dummy, out, sizeof out) == 0, "%s", cu_tail(out));
    CHECK(same_adapter("mm_split", "mm_explicit"), "the --max-memory run differs from --batch 2 --grad-accum 2");
    /* one row per step cannot split: under its plan the MLP is rebuilt (in some or all layers) */
    CHECK(mm_run("mm_one", "--batch 1 --max-memory 1", &one, out, sizeof out) == 0, "%s", cu_tail(out));
    snprintf(extra, sizeof extra, "--batch 1 --max-memory %.9g", one * 0.9999);
    double rebuilt;
    CHECK(mm_run("mm_rebuilt", extra, &rebuilt, out, sizeof out) == 0, "%s", cu_tail(out));
    CHECK(strstr(out, "micro-batch 1 x grad-accum 1, recompute"), "%s", cu_tail(out));
    CHECK(rebuilt > 0 && rebuilt <= one * 0.9999, "planned %.9g GiB over the budget %.9g", rebuilt, one * 0.9999);
}
