/* test_generate.c — generation with the KV cache against an independent path.
 *
 * The decoder (src/model/decode.c: cached keys/values, one token per call, attn_cached) must
 * produce, at every step, the logits that the training forward (us_model_forward over the whole
 * sequence so far, no cache, the attention that is checked against PEFT in test_parity.c)
 * gives for the last position; greedy generation must therefore pick the same ids. Run on
 * fixtures with a trained LoRA adapter loaded (GQA + tied head; Qwen2 biases + BF16; ReLU + F16),
 * and `unswag generate --ids` must print those ids. Plus the sampler's filters (top-k, top-p,
 * temperature against the softmax frequencies, seeding) and the CLI's refusal of --prompt
 * without a tokenizer. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/adapter.h"
#include "model/decode.h"
#include "model/model.h"
#include "test.h"

static void greedy_vs_forward(us_test_ctx *t, const char *fx) {
    char model[256], adapter[256];
    snprintf(model, sizeof model, FIXTURES "/%s/model", fx);
    snprintf(adapter, sizeof adapter, FIXTURES "/%s/adapter_final", fx);
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    CHECK(!us_backend_create("cpu", 0, &be, &e), "%s", e.msg);
    CHECK(!us_model_load(&m, be, model, false, 0, 0, &e), "%s", e.msg);
    us_adapter *ad;
    CHECK(!us_adapter_open(adapter, &ad, &e), "%s", e.msg);
    us_train_spec spec = {.lora = *us_adapter_config(ad)};
    us_adapter_close(ad);
    CHECK(!us_model_setup_training(m, &spec, 0, &e), "%s", e.msg);
    CHECK(!us_model_load_adapter(m, adapter, &e), "%s", e.msg);
    enum { PROMPT = 5, NEW = 14, MAXLEN = PROMPT + NEW };
    CHECK(!us_model_prepare(m, MAXLEN, &e), "%s", e.msg);
    us_decoder *d;
    CHECK(!us_decoder_create(m, MAXLEN, &d, &e), "%s", e.msg);
    int V = m->cfg.vocab;
    int32_t seq[MAXLEN] = {17, 200, 3, 99, 42};
    float *lc = malloc((size_t)V * 4), *lf = malloc((size_t)MAXLEN * V * 4);
    int32_t *dids = be->alloc(be, MAXLEN * 4), *dtg = be->alloc(be, MAXLEN * 4), *dpos = be->alloc(be, MAXLEN * 4);
    int32_t tg[MAXLEN], pos[MAXLEN];
    for (int i = 0; i < MAXLEN; i++) tg[i] = -100, pos[i] = i;
    CHECK(!us_decoder_feed(d, seq, PROMPT, lc, &e), "%s", e.msg);
    int n = PROMPT;
    double worst = 0;
    while (n < MAXLEN) {
        /* independent: the full forward over seq[0..n) */
        us_batch b = {.batch = 1, .seq = n, .ids = dids, .targets = dtg, .pos = dpos};
        be->upload(be, dids, seq, (size_t)n * 4);
        be->upload(be, dtg, tg, (size_t)n * 4);
        be->upload(be, dpos, pos, (size_t)n * 4);
        double ls;
        CHECK(!us_model_forward(m, &b, lf, &ls, &e), "%s", e.msg);
        const float *ref = lf + (size_t)(n - 1) * V;
        double mx = 0, diff = 0;
        for (int v = 0; v < V; v++) {
            mx = fmax(mx, fabs(ref[v]));
            diff = fmax(diff, fabs((double)lc[v] - ref[v]));
        }
        worst = fmax(worst, diff / mx);
        CHECK(diff <= 1e-4 * mx, "%s: step %d: cached logits differ from the full forward by %.3g (scale %.3g)", fx,
              n, diff, mx);
        int32_t want = us_argmax(ref, V), got = us_argmax(lc, V);
        CHECK(got == want, "%s: step %d: cached greedy picks %d, full forward %d", fx, n, got, want);
        seq[n++] = got;
        if (n < MAXLEN) CHECK(!us_decoder_feed(d, &seq[n - 1], 1, lc, &e), "%s", e.msg);
    }
    /* the cache (MAXLEN - 1 tokens now) takes one more, then refuses, with a message */
    CHECK(us_decoder_len(d) == MAXLEN - 1, "cache holds %d", us_decoder_len(d));
    CHECK(us_decoder_feed(d, seq, 2, lc, &e) == US_EINVAL && strstr(e.msg, "exceeds"), "overflow: %s", e.msg);
    /* a fresh prefill of the whole sequence gives the logits the step-by-step path gave */
    us_decoder_reset(d);
    float *lp = malloc((size_t)V * 4);
    CHECK(!us_decoder_feed(d, seq, MAXLEN - 1, lp, &e), "%s", e.msg);
    for (int v = 0; v < V; v++) CHECK(fabs(lp[v] - lc[v]) <= 1e-4 * (1 + fabs(lc[v])), "prefill vs step at %d", v);
    free(lp);
    /* the CLI prints the same greedy ids (stopping early only at the model's EOS id) */
    char cmd[4096], out[4096], self[1500];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(sl > 0, "readlink");
    self[sl] = 0;
    *strrchr(self, '/') = 0;
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s/unswag generate --model %s --adapter %s --prompt-ids 17,200,3,99,42 "
             "--max-new-tokens %d --ids 2>/dev/null", self, model, adapter, NEW);
    CHECK(us_test_run(cmd, out, sizeof out) == 0, "generate failed: %.500s", out);
    char *p = out;
    for (int i = PROMPT; i < MAXLEN && seq[i] != m->cfg.eos_id; i++) {
        char *end;
        long id = strtol(p, &end, 10);
        CHECK(end != p && id == seq[i], "%s: CLI token %d is %.20s, want %d", fx, i - PROMPT, p, seq[i]);
        p = end;
    }
    free(lc);
    free(lf);
    be->free(be, dids);
    be->free(be, dtg);
    be->free(be, dpos);
    us_decoder_free(d);
    us_model_free(m);
    be->destroy(be);
}

TEST(generate_kv_cache_llama_gqa_tied) { greedy_vs_forward(t, "llama_silu_gqa_tied"); }
TEST(generate_kv_cache_qwen2_bias_bf16) { greedy_vs_forward(t, "qwen2_bias_bf16"); }
TEST(generate_kv_cache_llama_relu_f16) { greedy_vs_forward(t, "llama_relu_f16_sharded"); }

TEST(generate_sampler_filters) {
    /* probabilities ~ exp(l): id 2 dominates, then 0, then 3; id 1 is nearly impossible */
    float base[4] = {2.0f, -30.0f, 4.0f, 1.0f};
    float l[4];
    us_sampler s = {.temperature = 0};
    memcpy(l, base, sizeof l);
    CHECK(us_sample(&s, l, 4) == 2, "greedy");
    /* top-k 1 is greedy whatever the temperature */
    s = (us_sampler){.temperature = 5.0f, .top_k = 1, .seed = 1};
    for (int i = 0; i < 50; i++) {
        memcpy(l, base, sizeof l);
        CHECK(us_sample(&s, l, 4) == 2, "top-k 1 drew another id");
    }
    /* top-k 2 only ever draws 2 or 0; at high temperature both appear */
    s = (us_sampler){.temperature = 10.0f, .top_k = 2, .seed = 7};
    int seen[4] = {0};
    for (int i = 0; i < 400; i++) {
        memcpy(l, base, sizeof l);
        seen[us_sample(&s, l, 4)]++;
    }
    CHECK(seen[1] == 0 && seen[3] == 0 && seen[0] > 0 && seen[2] > 0, "top-k 2: %d %d %d %d", seen[0], seen[1],
          seen[2], seen[3]);
    /* top-p 0.5 at temperature 1: p(2) = e^4 / (e^4 + e^2 + e) ~ 0.84 > 0.5, so only id 2 */
    s = (us_sampler){.temperature = 1.0f, .top_p = 0.5f, .seed = 3};
    for (int i = 0; i < 100; i++) {
        memcpy(l, base, sizeof l);
        CHECK(us_sample(&s, l, 4) == 2, "top-p 0.5 drew another id");
    }
    /* plain sampling at temperature 1: frequencies follow the softmax (p(0) ~ 0.114) */
    s = (us_sampler){.temperature = 1.0f, .seed = 11};
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < 4000; i++) {
        memcpy(l, base, sizeof l);
        seen[us_sample(&s, l, 4)]++;
    }
    double p0 = exp(2.0) / (exp(2.0) + exp(-30.0) + exp(4.0) + exp(1.0));
    CHECK(fabs(seen[0] / 4000.0 - p0) < 0.02, "p(0) observed %.3f, expected %.3f", seen[0] / 4000.0, p0);
    /* the same seed draws the same sequence */
    us_sampler a = {.temperature = 1.0f, .seed = 5}, b = {.temperature = 1.0f, .seed = 5};
    for (int i = 0; i < 20; i++) {
        float x[4], y[4];
        memcpy(x, base, sizeof x);
        memcpy(y, base, sizeof y);
        CHECK(us_sample(&a, x, 4) == us_sample(&b, y, 4), "seeded draws differ");
    }
}

TEST(generate_cli_text_needs_tokenizer) {
    char cmd[4096], out[4096], self[1500];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(sl > 0, "readlink");
    self[sl] = 0;
    *strrchr(self, '/') = 0;
    snprintf(cmd, sizeof cmd, "%s/unswag generate --model " FIXTURES "/mistral_mlp/model --prompt hello", self);
    int rc = us_test_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "tokenizer.json") && strstr(out, "--prompt-ids"), "rc %d: %.300s", rc, out);
}
