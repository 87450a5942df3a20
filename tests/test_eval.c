/* test_eval.c — `unswag eval` against the PEFT oracle's numbers.
 *
 * For each fixture, the CLI (the binary built beside this test runner) scores data.jsonl with the
 * base model + adapter_init: its loss must be the oracle's step-1 loss (reference.json, computed by
 * transformers + PEFT before any update) within 1e-4 relative, its perplexity exp(loss), and the
 * logits it writes with --logits-out must equal logits_step0.safetensors (max difference within
 * 1e-4 of the logits' scale). Batches smaller than the data (a padded last batch) must not change
 * the loss. Bad input is an error message, not a crash. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test.h"

/* the unswag binary beside the running test binary (build/ or build-asan/) */
static const char *cli(void) {
    static char path[4096];
    char self[3000];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return "build/unswag";
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(path, sizeof path, "%s/unswag", self);
    return path;
}

static double ref_loss0(const char *fx) {
    char p[512], *json;
    snprintf(p, sizeof p, FIXTURES "/%s/reference.json", fx);
    us_err e;
    if (us_read_file(p, &json, NULL, &e)) return NAN;
    cJSON *j = cJSON_Parse(json);
    free(json);
    double v = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "losses"), 0)->valuedouble;
    cJSON_Delete(j);
    return v;
}

static void eval_fixture(us_test_ctx *t, const char *fx) {
    char cmd[4096], out[8192], lg[600];
    snprintf(lg, sizeof lg, "%s/logits.safetensors", us_test_tmpdir());
    double want = ref_loss0(fx);
    CHECK(isfinite(want), "no reference loss for %s", fx);
    for (int batch = 64; batch >= 3; batch -= 61) { /* all rows at once, then batches of 3 (last one padded) */
        snprintf(cmd, sizeof cmd,
                 "OMP_NUM_THREADS=1 %s eval --model " FIXTURES "/%s/model --adapter " FIXTURES "/%s/adapter_init "
                 "--data " FIXTURES "/%s/data.jsonl --batch %d --logits-out %s",
                 cli(), fx, fx, fx, batch, lg);
        int rc = us_test_run(cmd, out, sizeof out);
        CHECK(rc == 0, "%s: eval failed (%d): %.1000s", fx, rc, out);
        const char *p = strstr(out, "loss ");
        const char *q = strstr(out, "perplexity ");
        CHECK(p && q, "%s: no loss in output: %.500s", fx, out);
        double loss = strtod(p + 5, NULL), ppl = strtod(q + 11, NULL);
        CHECK(us_close(loss, want, 1e-4, 0), "%s (batch %d): eval loss %.7f, PEFT step-1 loss %.7f", fx, batch, loss,
              want);
        CHECK(us_close(ppl, exp(want), 1e-3, 0), "%s: perplexity %.5f, exp(loss) %.5f", fx, ppl, exp(want));
        us_err e = {{0}};
        us_st_file *a, *b;
        char refp[512];
        snprintf(refp, sizeof refp, FIXTURES "/%s/logits_step0.safetensors", fx);
        CHECK(!us_st_open(lg, &a, &e), "%s", e.msg);
        CHECK(!us_st_open(refp, &b, &e), "%s", e.msg);
        const us_st_tensor *x = us_st_find(a, "logits"), *y = us_st_find(b, "logits");
        CHECK(x && y && x->dtype == US_DT_F32 && x->ndim == 3 && x->numel == y->numel, "%s: logits shape/dtype", fx);
        for (int d = 0; d < 3; d++) CHECK(x->shape[d] == y->shape[d], "%s: logits dim %d: %lld vs %lld", fx, d,
                                          (long long)x->shape[d], (long long)y->shape[d]);
        const float *xs = x->data, *ys = y->data;
        double mx = 0, diff = 0;
        for (int64_t i = 0; i < x->numel; i++) {
            mx = fmax(mx, fabs(ys[i]));
            diff = fmax(diff, fabs((double)xs[i] - ys[i]));
        }
        us_st_close(a);
        us_st_close(b);
        CHECK(diff <= 1e-4 * mx, "%s: logits differ from PEFT's by %.3g (scale %.3g)", fx, diff, mx);
    }
}

TEST(eval_llama_silu_gqa_tied) { eval_fixture(t, "llama_silu_gqa_tied"); }
TEST(eval_qwen2_bias_bf16) { eval_fixture(t, "qwen2_bias_bf16"); }
TEST(eval_llama_relu_f16_sharded) { eval_fixture(t, "llama_relu_f16_sharded"); }
TEST(eval_mistral_mlp) { eval_fixture(t, "mistral_mlp"); }

TEST(eval_errors_are_messages) {
    char cmd[4096], out[8192];
    snprintf(cmd, sizeof cmd, "%s eval --model " FIXTURES "/mistral_mlp/model", cli());
    CHECK(us_test_run(cmd, out, sizeof out) == 2 && strstr(out, "--data"), "missing --data: %.300s", out);
    snprintf(cmd, sizeof cmd, "%s eval --model " FIXTURES "/mistral_mlp/model --data /nonexistent.jsonl", cli());
    CHECK(us_test_run(cmd, out, sizeof out) == 1 && strstr(out, "/nonexistent.jsonl"), "missing file: %.300s", out);
    snprintf(cmd, sizeof cmd,
             "%s eval --model " FIXTURES "/mistral_mlp/model --adapter " FIXTURES "/qwen2_bias_bf16/adapter_init "
             "--data " FIXTURES "/mistral_mlp/data.jsonl",
             cli());
    int rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "error"), "mismatched adapter: rc %d: %.300s", rc, out);
}
