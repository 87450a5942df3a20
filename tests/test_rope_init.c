/* test_rope_init.c — rotary frequencies under rope scaling, and the fresh LoRA initialisation.
 *
 * RoPE: the inverse frequencies a model uploads are compared with a float64 transcription of
 * transformers' default, linear and llama3 rules (written here, independently of model.c), for
 * the real Llama-3.1 and Llama-3.2 settings. LoRA init: PEFT's default (A ~ U(-1/sqrt(in),
 * 1/sqrt(in)) from kaiming-uniform with a = sqrt(5), B = 0), checked by its statistics, by B being
 * zero, and by the first-step gradient of A vanishing (it is multiplied by B). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "test.h"

static void write_config(const char *dir, const char *rope_json) {
    char path[600], buf[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    int n = snprintf(buf, sizeof buf,
                     "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 96,"
                     " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
                     " \"head_dim\": 64, \"vocab_size\": 50, \"max_position_embeddings\": 131072,"
                     " \"rms_norm_eps\": 1e-5, \"hidden_act\": \"silu\", %s}",
                     rope_json);
    us_test_write(path, buf, (size_t)n);
}

/* transformers' rules in float64 */
static double ref_inv_freq(int i, int hd, double theta, int type, double factor, double lo, double hi, double old) {
    double f = 1.0 / pow(theta, (double)(2 * i) / hd);
    if (type == 1) return f / factor;
    if (type == 2) {
        double wl = 2 * M_PI / f, low_wl = old / lo, high_wl = old / hi;
        double llama = wl > low_wl ? f / factor : f;
        double smooth = (old / wl - lo) / (hi - lo);
        double smoothed = (1 - smooth) * llama / factor + smooth * llama;
        bool medium = !(wl < high_wl) && !(wl > low_wl);
        return medium ? smoothed : llama;
    }
    return f;
}

static void check_rope(us_test_ctx *t, const char *rope_json, int type, double theta, double factor, double lo,
                       double hi, double old) {
    const char *dir = us_test_tmpdir();
    write_config(dir, rope_json);
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    CHECK(!us_backend_create("cpu", 1, &be, &e), "%s", e.msg);
    CHECK(!us_model_load(&m, be, dir, true, 0.02f, 1, &e), "%s", e.msg);
    float f[32];
    be->download(be, f, m->inv_freq, sizeof f);
    for (int i = 0; i < 32; i++) {
        double want = ref_inv_freq(i, 64, theta, type, factor, lo, hi, old);
        CHECK(fabs(f[i] - want) <= 2e-6 * want, "%s: inv_freq[%d] = %.9g, transformers %.9g", rope_json, i, f[i], want);
    }
    us_model_free(m);
    be->destroy(be);
}

TEST(rope_default_theta) { check_rope(t, "\"rope_theta\": 500000.0", 0, 5e5, 1, 1, 1, 1); }
TEST(rope_linear) {
    check_rope(t, "\"rope_theta\": 10000.0, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}", 1, 1e4, 4, 1, 1, 1);
}
TEST(rope_llama3_v5_parameters) { /* transformers 5 style, Llama-3.2 values */
    check_rope(t,
               "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 32.0,"
               " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}",
               2, 5e5, 32, 1, 4, 8192);
}
TEST(rope_llama3_v4_scaling) { /* transformers 4 style, Llama-3.1 values */
    check_rope(t,
               "\"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
               " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}",
               2, 5e5, 8, 1, 4, 8192);
}

TEST(lora_fresh_init_is_peft_default) {
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    CHECK(!us_backend_create("cpu", 1, &be, &e), "%s", e.msg);
    CHECK(!us_model_load(&m, be, FIXTURES "/llama_silu_gqa_tied/model", false, 0, 0, &e), "%s", e.msg);
    us_train_spec spec = {.lora = {.r = 8, .alpha = 16, .targets = (1u << US_T_COUNT) - 1}};
    CHECK(!us_model_setup_training(m, &spec, 1234, &e), "%s", e.msg);
    float *p = malloc(m->n_params * 4);
    be->download(be, p, m->params, m->n_params * 4);
    for (int l = 0; l < m->cfg.layers; l++)
        for (int tg = 0; tg < US_T_COUNT; tg++) {
            us_lora_slot *s = &m->slot[l][tg];
            double bound = 1.0 / sqrt(s->in), sum = 0, sq = 0;
            size_t n = (size_t)8 * s->in;
            for (size_t i = 0; i < n; i++) {
                float a = p[s->off_A + i];
                CHECK(fabs(a) <= bound, "A outside the kaiming-uniform bound");
                sum += a;
                sq += (double)a * a;
            }
            double var = sq / n - (sum / n) * (sum / n), want = bound * bound / 3;
            CHECK(fabs(sum / n) < 4 * sqrt(want / n), "A mean %.3g", sum / n);
            CHECK(fabs(var - want) < 0.25 * want, "A variance %.3g, uniform gives %.3g", var, want);
            for (size_t i = 0; i < (size_t)s->out * 8; i++) CHECK(p[s->off_B + i] == 0.0f, "B must start at zero");
        }
    /* a different seed gives different A */
    us_model *m2;
    CHECK(!us_model_load(&m2, be, FIXTURES "/llama_silu_gqa_tied/model", false, 0, 0, &e), "%s", e.msg);
    CHECK(!us_model_setup_training(m2, &spec, 1235, &e), "%s", e.msg);
    float *p2 = malloc(m2->n_params * 4);
    be->download(be, p2, m2->params, m2->n_params * 4);
    CHECK(memcmp(p, p2, m->n_params * 4) != 0, "seed has no effect on the LoRA init");
    free(p);
    free(p2);
    us_model_free(m2);
    us_model_free(m);
    be->destroy(be);
}
