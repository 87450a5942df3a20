/* test_merge.c — `unswag merge`: the merged checkpoint against base + adapter.
 *
 * Three fixtures cover the dtypes and layouts: F16 sharded in four files (with index.json), BF16
 * (Qwen2, biases), F32 with tied embeddings. For each:
 *   - layout: the same shard files as the base, each holding the same tensor names, dtypes and
 *     shapes; index.json, config.json and generation_config.json copied byte for byte; every
 *     tensor the adapter does not touch copied byte for byte;
 *   - values: each adapted W' equals W + s * B A computed here in double with plain loops from
 *     the base and adapter files, rounded to the dtype (within one rounding step of the dtype);
 *   - behaviour: the merged model's forward (our loader, no adapter) gives the logits of the base
 *     with the adapter applied (LoRA forward), within the dtype's precision: 1e-4 of scale for F32,
 *     4e-3 for F16 (10-bit mantissa), 3e-2 for BF16 (7-bit mantissa).
 * Failure leaves nothing: a mismatched adapter is an error, --out is not created, and no
 * temporary directory is left beside it. A non-empty --out is refused. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/adapter.h"
#include "io/safetensors.h"
#include "model/decode.h"
#include "model/merge.h"
#include "model/model.h"
#include "test.h"

static bool same_file(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    us_err e;
    if (us_read_file(a, &x, &nx, &e)) return false;
    if (us_read_file(b, &y, &ny, &e)) {
        free(x);
        return false;
    }
    bool same = nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

/* forward logits of all rows of data.jsonl */
static float *logits_of(us_test_ctx *t, const char *model, const char *adapter, const char *data, size_t *n_out) {
    us_err e = {{0}};
    us_backend *be;
    us_model *m;
    if (us_backend_create("cpu", 0, &be, &e)) return NULL;
    if (us_model_load_inference(&m, be, model, adapter, &e)) {
        snprintf(t->msg, sizeof t->msg, "%s", e.msg);
        be->destroy(be);
        return NULL;
    }
    /* a fixed batch: 3 rows of 12 ids below the vocabulary, targets ignored */
    enum { B = 3, S = 12 };
    int32_t ids[B * S], tg[B * S], pos[B * S];
    for (int i = 0; i < B * S; i++) ids[i] = (i * 37 + 11) % m->cfg.vocab, tg[i] = -100, pos[i] = i % S;
    us_batch b = {.batch = B, .seq = S, .ids = be->alloc(be, sizeof ids), .targets = be->alloc(be, sizeof tg),
                  .pos = be->alloc(be, sizeof pos)};
    be->upload(be, b.ids, ids, sizeof ids);
    be->upload(be, b.targets, tg, sizeof tg);
    be->upload(be, b.pos, pos, sizeof pos);
    size_t n = (size_t)B * S * m->cfg.vocab;
    float *l = malloc(n * 4);
    double ls;
    (void)data;
    if (us_model_prepare(m, B * S, &e) || us_model_forward(m, &b, l, &ls, &e)) {
        free(l);
        l = NULL;
    }
    be->free(be, b.ids);
    be->free(be, b.targets);
    be->free(be, b.pos);
    us_model_free(m);
    be->destroy(be);
    *n_out = n;
    return l;
}

static int parse_proj(const char *name, int *layer, int *target) {
    for (int l = 0; l < 64; l++)
        for (int tg = 0; tg < US_T_COUNT; tg++) {
            char want[160];
            snprintf(want, sizeof want, "model.layers.%d.%s.%s.weight", l, tg <= US_T_O ? "self_attn" : "mlp",
                     us_target_name(tg));
            if (!strcmp(want, name)) {
                *layer = l, *target = tg;
                return 1;
            }
        }
    return 0;
}

static void merge_fixture(us_test_ctx *t, const char *fx, double fwd_tol) {
    char base[256], ad[256], out[600], data[256];
    snprintf(base, sizeof base, FIXTURES "/%s/model", fx);
    snprintf(ad, sizeof ad, FIXTURES "/%s/adapter_final", fx);
    snprintf(data, sizeof data, FIXTURES "/%s/data.jsonl", fx);
    snprintf(out, sizeof out, "%s/merged", us_test_tmpdir());
    us_err e = {{0}};
    CHECK(!us_merge_adapter(base, ad, out, &e), "%s", e.msg);

    /* layout: every file of the base is there; metadata files identical */
    DIR *d = opendir(base);
    CHECK(d, "opendir");
    struct dirent *de;
    int shards = 0;
    char pa[1024], pb[1024];
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        snprintf(pa, sizeof pa, "%s/%s", base, de->d_name);
        snprintf(pb, sizeof pb, "%s/%s", out, de->d_name);
        struct stat sb;
        bool is_st = strstr(de->d_name, ".safetensors") && !strstr(de->d_name, ".json");
        if (!is_st) {
            if (stat(pb, &sb) != 0 || !same_file(pa, pb)) {
                closedir(d);
                CHECK(0, "%s: %s not copied byte for byte", fx, de->d_name);
            }
            continue;
        }
        shards++;
        us_st_file *fa, *fb;
        if (us_st_open(pa, &fa, &e) || us_st_open(pb, &fb, &e)) {
            closedir(d);
            CHECK(0, "%s: %s", fx, e.msg);
        }
        CHECK(us_st_count(fa) == us_st_count(fb), "%s/%s: %zu tensors, merged %zu", fx, de->d_name, us_st_count(fa),
              us_st_count(fb));
        us_adapter *a;
        CHECK(!us_adapter_open(ad, &a, &e), "%s", e.msg);
        const us_lora_config *lc = us_adapter_config(a);
        double s = us_lora_scaling(lc);
        for (size_t i = 0; i < us_st_count(fa); i++) {
            const us_st_tensor *x = us_st_at(fa, i), *y = us_st_find(fb, x->name);
            CHECK(y && y->dtype == x->dtype && y->ndim == x->ndim && y->numel == x->numel, "%s: tensor %s differs in kind",
                  fx, x->name);
            for (int k = 0; k < x->ndim; k++) CHECK(x->shape[k] == y->shape[k], "%s: %s shape", fx, x->name);
            int l, tg;
            if (!parse_proj(x->name, &l, &tg) || !(lc->targets & (1u << tg))) {
                CHECK(!memcmp(x->data, y->data, x->nbytes), "%s: untouched tensor %s changed", fx, x->name);
                continue;
            }
            int64_t out_f = x->shape[0], in_f = x->shape[1], r = lc->r;
            float *A = malloc(r * in_f * 4), *Bm = malloc(out_f * r * 4), *w = malloc(x->numel * 4),
                  *wm = malloc(x->numel * 4);
            CHECK(!us_adapter_read(a, l, tg, 0, r, in_f, A, &e), "%s", e.msg);
            CHECK(!us_adapter_read(a, l, tg, 1, out_f, r, Bm, &e), "%s", e.msg);
            us_convert_to_f32(w, x->data, x->dtype, x->numel);
            us_convert_to_f32(wm, y->data, y->dtype, y->numel);
            double worst = 0, moved = 0;
            for (int64_t o = 0; o < out_f; o++)
                for (int64_t c = 0; c < in_f; c++) {
                    double acc = 0, mag = 0; /* mag: the size of the terms, for f32 summation error */
                    for (int64_t k = 0; k < r; k++) {
                        acc += (double)Bm[o * r + k] * A[k * in_f + c];
                        mag += fabs((double)Bm[o * r + k] * A[k * in_f + c]);
                    }
                    double want = w[o * in_f + c] + s * acc, got = wm[o * in_f + c];
                    /* one rounding step of the dtype around want */
                    double ulp = x->dtype == US_DT_F32 ? 1e-6 : x->dtype == US_DT_F16 ? 1.0 / 1024 : 1.0 / 128;
                    double tol = ulp * fabs(want) + (x->dtype == US_DT_F16 ? 6e-8 : 1e-30) + 1e-6 * fabs(s) * mag;
                    worst = fmax(worst, fabs(got - want) - tol);
                    moved = fmax(moved, fabs(s * acc));
                }
            free(A);
            free(Bm);
            free(w);
            free(wm);
            CHECK(worst <= 0, "%s: %s: merged value off by more than a rounding step (%.3g)", fx, x->name, worst);
            CHECK(moved > 0, "%s: %s: the adapter changes nothing here?", fx, x->name);
        }
        us_adapter_close(a);
        us_st_close(fa);
        us_st_close(fb);
    }
    closedir(d);
    CHECK(shards >= 1, "no shards");

    /* behaviour */
    size_t n1, n2;
    float *merged = logits_of(t, out, NULL, data, &n1);
    CHECK(merged, "merged forward: %.500s", t->msg);
    float *lora = logits_of(t, base, ad, data, &n2);
    CHECK(lora && n1 == n2, "lora forward: %.500s", t->msg);
    double mx = 0, diff = 0;
    for (size_t i = 0; i < n1; i++) {
        mx = fmax(mx, fabs(lora[i]));
        diff = fmax(diff, fabs((double)merged[i] - lora[i]));
    }
    free(merged);
    free(lora);
    CHECK(diff <= fwd_tol * mx, "%s: merged logits differ from base+adapter by %.3g of scale (tolerance %.1g)", fx,
          diff / mx, fwd_tol);
}

TEST(merge_f16_sharded) { merge_fixture(t, "llama_relu_f16_sharded", 4e-3); }
TEST(merge_bf16_qwen2) { merge_fixture(t, "qwen2_bias_bf16", 3e-2); }
TEST(merge_f32_tied) { merge_fixture(t, "llama_silu_gqa_tied", 1e-4); }

TEST(merge_failure_leaves_nothing) {
    char out[600], cmd[1200], buf[4096];
    snprintf(out, sizeof out, "%s/merged", us_test_tmpdir());
    us_err e = {{0}};
    /* an adapter of another model: shapes do not fit */
    us_status st = us_merge_adapter(FIXTURES "/mistral_mlp/model", FIXTURES "/llama_relu_f16_sharded/adapter_final",
                                    out, &e);
    CHECK(st != US_OK && strstr(e.msg, "shape"), "mismatched adapter accepted: %s", e.msg);
    struct stat sb;
    CHECK(stat(out, &sb) != 0, "--out was created by a failed merge");
    snprintf(cmd, sizeof cmd, "ls -A '%s'", us_test_tmpdir());
    us_test_run(cmd, buf, sizeof buf);
    CHECK(buf[0] == 0, "left behind: %.300s", buf);
    /* a non-empty --out is refused and left as it was */
    CHECK(mkdir(out, 0777) == 0, "mkdir");
    char keep[700];
    snprintf(keep, sizeof keep, "%s/mine.txt", out);
    CHECK(!us_test_write(keep, "x", 1), "write");
    st = us_merge_adapter(FIXTURES "/mistral_mlp/model", FIXTURES "/mistral_mlp/adapter_final", out, &e);
    CHECK(st == US_EINVAL && strstr(e.msg, "not empty"), "non-empty --out: %s", e.msg);
    CHECK(stat(keep, &sb) == 0, "the user's file vanished");
}
