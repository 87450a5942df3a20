/* test_parity.c — UnSwag against transformers + PEFT, through the committed fixtures.
 *
 * tests/fixtures/<case>/ was written by the oracle (shared/reference/peft_reference.py, via
 * tests/fixtures/make_fixtures.sh): a random-weight HF checkpoint, data, the adapter training
 * starts from, the step-0 logits and LoRA gradients, 12 AdamW losses and the final adapter.
 * Here the same setup runs on the CPU backend. Tensors are compared relative to their scale:
 * max|ours - ref| <= 1e-3 * max|ref|; losses each within 1e-3 relative. */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokens.h"
#include "io/adapter.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"
#include "test_fixture.h"
#include "train/trainer.h"

typedef struct fixture {
    const char *name;
    double lr, wd;
} fixture;

static const fixture fixtures[] = {
    {"llama_silu_gqa_tied", 2e-3, 0.01},
    {"qwen2_bias_bf16", 1e-3, 0.0},
    {"llama_relu_f16_sharded", 1e-3, 0.1},
    {"mistral_mlp", 1e-3, 0.0},
};

/* relative-to-scale error of two float arrays */
static double scaled_err(const float *a, const float *ref, size_t n) {
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        maxref = fmax(maxref, fabs(ref[i]));
        maxdiff = fmax(maxdiff, fabs((double)a[i] - ref[i]));
    }
    return maxdiff / (maxref > 0 ? maxref : 1);
}

static void path(char *buf, const fixture *f, const char *rel) {
    snprintf(buf, 512, FIXTURES "/%s/%s", f->name, rel);
}

static void step0(us_test_ctx *t, const fixture *f) {
    char p[512], q[512];
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    CHECK(!us_backend_create("cpu", 0, &be, &e), "%s", e.msg);
    path(p, f, "model");
    CHECK(!us_model_load(&m, be, p, false, 0, 0, &e), "%s", e.msg);
    us_adapter *ad;
    path(q, f, "adapter_init");
    CHECK(!us_adapter_open(q, &ad, &e), "%s", e.msg);
    us_train_spec spec = {.lora = *us_adapter_config(ad)};
    us_adapter_close(ad);
    CHECK(!us_model_setup_training(m, &spec, 0, &e), "%s", e.msg);
    CHECK(!us_model_load_adapter(m, q, &e), "%s", e.msg);
    us_token_dataset ds = {0};
    path(p, f, "data.jsonl");
    CHECK(!us_jsonl_tokens_load(p, m->cfg.vocab, &ds, &e), "%s", e.msg);
    us_batch b;
    int counted = us_test_fixture_batch(be, &ds, &b);
    int T = b.batch * b.seq, V = m->cfg.vocab;
    CHECK(!us_model_prepare(m, T, &e), "%s", e.msg);

    /* logits of the first forward */
    float *logits = malloc((size_t)T * V * 4);
    double loss_sum;
    CHECK(!us_model_forward(m, &b, logits, &loss_sum, &e), "%s", e.msg);
    us_st_file *ref;
    path(p, f, "logits_step0.safetensors");
    CHECK(!us_st_open(p, &ref, &e), "%s", e.msg);
    const us_st_tensor *rl = us_st_find(ref, "logits");
    CHECK(rl && rl->numel == (int64_t)T * V, "logits shape");
    double err = scaled_err(logits, rl->data, (size_t)T * V);
    CHECK(err < 1e-3, "%s: step-0 logits differ from PEFT's: %.3g", f->name, err);
    us_st_close(ref);

    /* LoRA gradients of the first step */
    be->zero(be, m->grads, m->n_params * 4);
    CHECK(!us_model_step(m, &b, 1.0f / counted, &loss_sum, &e), "%s", e.msg);
    float *g = malloc(m->n_params * 4);
    be->download(be, g, m->grads, m->n_params * 4);
    path(p, f, "grads_step0.safetensors");
    CHECK(!us_st_open(p, &ref, &e), "%s", e.msg);
    CHECK(us_st_count(ref) == m->n_plist, "%s: %zu reference gradients, %zu parameters", f->name, us_st_count(ref),
          m->n_plist);
    for (size_t i = 0; i < m->n_plist; i++) {
        char name[300];
        snprintf(name, sizeof name, "%s.grad", m->plist[i].name);
        const us_st_tensor *rg = us_st_find(ref, name);
        CHECK(rg && (size_t)rg->numel == m->plist[i].numel, "%s: no reference gradient %s", f->name, name);
        err = scaled_err(g + m->plist[i].off, rg->data, m->plist[i].numel);
        CHECK(err < 1e-3, "%s: gradient %s differs from PEFT's: %.3g", f->name, name, err);
    }
    us_st_close(ref);
    free(g);
    free(logits);
    us_test_batch_free(be, &b);
    us_token_dataset_free(&ds);
    us_model_free(m);
    be->destroy(be);
}

static void training(us_test_ctx *t, const fixture *f) {
    char model[512], data[512], init[512], refp[512], out[600], metrics[600];
    path(model, f, "model");
    path(data, f, "data.jsonl");
    path(init, f, "adapter_init");
    path(refp, f, "reference.json");
    snprintf(out, sizeof out, "%s/adapter", us_test_tmpdir());
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", us_test_tmpdir());
    char *json;
    us_err e = {{0}};
    CHECK(!us_read_file(refp, &json, NULL, &e), "%s", e.msg);
    cJSON *ref = cJSON_Parse(json);
    free(json);
    cJSON *losses = cJSON_GetObjectItem(ref, "losses");
    int steps = cJSON_GetArraySize(losses);
    CHECK(steps >= 10, "reference has %d steps", steps);
    us_token_dataset ds = {0};
    CHECK(!us_jsonl_tokens_load(data, 1 << 30, &ds, &e), "%s", e.msg);

    us_train_opts o;
    us_train_opts_default(&o);
    o.model_dir = model;
    o.data_path = data;
    o.out_dir = out;
    o.adapter_init = init;
    o.metrics_path = metrics;
    o.lr = f->lr;
    o.weight_decay = f->wd;
    o.schedule = US_SCHED_CONSTANT;
    o.warmup = 0;
    o.grad_clip = 0;
    o.steps = steps;
    o.batch = (int)ds.n; /* the oracle's batch is every row, every step */
    o.shuffle = false;
    o.quiet = true;
    us_token_dataset_free(&ds);
    CHECK(!us_train(&o, &e), "%s", e.msg);

    FILE *mf = fopen(metrics, "r");
    CHECK(mf, "no metrics file");
    char line[1024];
    int i = 0;
    while (fgets(line, sizeof line, mf) && i < steps) {
        cJSON *row = cJSON_Parse(line);
        double ours = cJSON_GetObjectItem(row, "loss")->valuedouble;
        double theirs = cJSON_GetArrayItem(losses, i)->valuedouble;
        cJSON_Delete(row);
        if (!us_close(ours, theirs, 1e-3, 0)) {
            fclose(mf);
            cJSON_Delete(ref);
            CHECK(0, "%s: step %d loss %.6f, PEFT %.6f", f->name, i + 1, ours, theirs);
        }
        i++;
    }
    fclose(mf);
    cJSON_Delete(ref);
    CHECK(i == steps, "%s: metrics has %d steps, want %d", f->name, i, steps);

    /* the final adapter, tensor by tensor */
    us_adapter *mine, *theirs;
    char fin[512];
    path(fin, f, "adapter_final");
    CHECK(!us_adapter_open(out, &mine, &e), "%s", e.msg);
    CHECK(!us_adapter_open(fin, &theirs, &e), "%s", e.msg);
    const us_lora_config *c = us_adapter_config(theirs);
    CHECK(us_adapter_config(mine)->r == c->r && us_adapter_config(mine)->targets == c->targets &&
              us_adapter_config(mine)->rslora == c->rslora && us_adapter_config(mine)->alpha == c->alpha,
          "adapter config differs");
    us_config cfg;
    CHECK(!us_config_load(model, &cfg, &e), "%s", e.msg);
    for (int l = 0; l < cfg.layers; l++)
        for (int tg = 0; tg < US_T_COUNT; tg++) {
            if (!(c->targets & (1u << tg))) continue;
            int in, outd;
            us_target_dims(&cfg, tg, &in, &outd);
            for (int isb = 0; isb < 2; isb++) {
                int64_t rows = isb ? outd : c->r, cols = isb ? c->r : in;
                float *x = malloc(rows * cols * 4), *y = malloc(rows * cols * 4);
                CHECK(!us_adapter_read(mine, l, tg, isb, rows, cols, x, &e), "%s", e.msg);
                CHECK(!us_adapter_read(theirs, l, tg, isb, rows, cols, y, &e), "%s", e.msg);
                double err = scaled_err(x, y, rows * cols);
                free(x);
                free(y);
                CHECK(err < 1e-3, "%s: final layer %d %s lora_%c differs: %.3g", f->name, l, us_target_name(tg),
                      isb ? 'B' : 'A', err);
            }
        }
    us_adapter_close(mine);
    us_adapter_close(theirs);
}

TEST(parity_llama_silu_gqa_tied_step0) { step0(t, &fixtures[0]); }
TEST(parity_qwen2_bias_bf16_step0) { step0(t, &fixtures[1]); }
TEST(parity_llama_relu_f16_sharded_step0) { step0(t, &fixtures[2]); }
TEST(parity_mistral_mlp_step0) { step0(t, &fixtures[3]); }
TEST(parity_llama_silu_gqa_tied_training) { training(t, &fixtures[0]); }
TEST(parity_qwen2_bias_bf16_training) { training(t, &fixtures[1]); }
TEST(parity_llama_relu_f16_sharded_training) { training(t, &fixtures[2]); }
TEST(parity_mistral_mlp_training) { training(t, &fixtures[3]); }
