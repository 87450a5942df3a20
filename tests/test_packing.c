/* test_packing.c — packed rows (train/batch.h) give exactly what one example per row gives, and
 * --epochs / --val-split size the run and the eval set.
 *
 * The strong check: on llama_silu_gqa_tied with its non-zero adapter, four short examples of
 * different lengths are packed into two rows of 12. For each example, the packed batch with only
 * that example's targets kept must give the same loss and the same LoRA gradients as the example
 * alone in a padded row (within 1e-5 of the gradients' scale): attention does not cross
 * examples, and nothing of the neighbours leaks in. A control runs the same packed batch without
 * seg_start and must differ, so the comparison has teeth. The layout itself (positions restart,
 * seg_start, the -100 at each example's end, carrying an example that does not fit to the next
 * row) is checked entry by entry. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "data/tokens.h"
#include "io/adapter.h"
#include "model/model.h"
#include "test.h"
#include "train/batch.h"
#include "train/trainer.h"

#define FX FIXTURES "/llama_silu_gqa_tied"
enum { SEQ = 12, NEX = 4, T2 = 2 * SEQ };

typedef struct packing_env {
    us_backend *be;
    us_model *m;
    us_batch b;
    float *g;
} packing_env;

static void env_free(packing_env *v) {
    if (!v->be) return;
    v->be->free(v->be, v->b.ids);
    v->be->free(v->be, v->b.targets);
    v->be->free(v->be, v->b.pos);
    v->be->free(v->be, v->b.seg_start);
    us_model_free(v->m);
    v->be->destroy(v->be);
    free(v->g);
}

static us_status env_open(packing_env *v, us_err *e) {
    memset(v, 0, sizeof *v);
    us_status st = us_backend_create("cpu", 1, &v->be, e);
    if (!st) st = us_model_load(&v->m, v->be, FX "/model", false, 0, 0, e);
    us_adapter *ad;
    us_train_spec spec = {0};
    if (!st && !(st = us_adapter_open(FX "/adapter_init", &ad, e))) {
        spec.lora = *us_adapter_config(ad);
        us_adapter_close(ad);
    }
    if (!st) st = us_model_setup_training(v->m, &spec, 0, e);
    if (!st) st = us_model_load_adapter(v->m, FX "/adapter_init", e);
    if (!st) st = us_model_prepare(v->m, T2, e);
    if (st) return st;
    us_backend *be = v->be;
    v->b = (us_batch){.ids = be->alloc(be, T2 * 4), .targets = be->alloc(be, T2 * 4), .pos = be->alloc(be, T2 * 4),
                      .seg_start = be->alloc(be, T2 * 4)};
    v->g = malloc(v->m->n_params * 4);
    return v->g ? US_OK : us_fail(e, US_ENOMEM, "out of memory");
}

/* One step over rows x SEQ tokens (grad scale 1: summed loss); grads into v->g. */
static us_status env_step(packing_env *v, const us_host_batch *hb, int rows, bool use_seg, double *loss, us_err *e) {
    us_backend *be = v->be;
    size_t bytes = (size_t)rows * SEQ * 4;
    be->upload(be, v->b.ids, hb->ids, bytes);
    be->upload(be, v->b.targets, hb->targets, bytes);
    be->upload(be, v->b.pos, hb->pos, bytes);
    if (use_seg) be->upload(be, v->b.seg_start, hb->seg, bytes);
    us_batch b = v->b;
    b.batch = rows, b.seq = SEQ;
    if (!use_seg) b.seg_start = NULL;
    be->zero(be, v->m->grads, v->m->n_params * 4);
    us_status st = us_model_step(v->m, &b, 1.0f, loss, e);
    be->download(be, v->g, v->m->grads, v->m->n_params * 4);
    return st;
}

static const int LENS[NEX] = {5, 3, 7, 4};

static void make_examples(us_token_dataset *ds, us_err *e) {
    memset(ds, 0, sizeof *ds);
    for (int k = 0; k < NEX; k++) {
        int32_t ids[SEQ], lab[SEQ];
        for (int j = 0; j < LENS[k]; j++) ids[j] = lab[j] = (int32_t)((37 * k + 11 * j + 5) % 256);
        lab[1] = -100; /* a masked label inside each example must stay masked */
        us_token_dataset_push(ds, ids, lab, LENS[k], e);
    }
}

TEST(packing_layout) {
    us_err e = {{0}};
    us_token_dataset ds;
    make_examples(&ds, &e);
    CHECK(ds.n == NEX, "%s", e.msg);
    int32_t ids[T2], tg[T2], pos[T2], seg[T2];
    us_host_batch hb = {ids, tg, pos, seg, 0, 0};
    us_sampler s = {.n = ds.n};
    us_fill_batch(&hb, &ds, &s, 2, SEQ, true);
    /* row 0: ex0 (5) + ex1 (3), ex2 (7) does not fit in 4 -> row 1: ex2 + ex3 (4), 1 pad */
    static const int want_seg[T2] = {0, 0, 0, 0, 0, 5, 5, 5, 8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 7, 11};
    static const int want_pos[T2] = {0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0};
    static const int owner[T2] = {0, 0, 0, 0, 0, 1, 1, 1, -1, -1, -1, -1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, -1};
    int starts[NEX] = {0, 5, 12, 19};
    for (int i = 0; i < T2; i++) {
        CHECK(seg[i] == want_seg[i] && pos[i] == want_pos[i], "token %d: seg %d pos %d, want %d %d", i, seg[i], pos[i],
              want_seg[i], want_pos[i]);
        int k = owner[i];
        if (k < 0) {
            CHECK(tg[i] == -100, "padding token %d has target %d", i, tg[i]);
            continue;
        }
        int j = i - starts[k];
        CHECK(ids[i] == ds.ex[k].ids[j], "token %d id", i);
        int32_t want = j + 1 < LENS[k] ? ds.ex[k].labels[j + 1] : -100;
        CHECK(tg[i] == want, "token %d (example %d, offset %d): target %d, want %d", i, k, j, tg[i], want);
    }
    /* all four drawn; the peek at the next (epoch 1's first) example did not draw it */
    CHECK(hb.examples == NEX && s.epoch == 1 && s.cursor == 0, "examples %d epoch %zu cursor %zu", hb.examples, s.epoch,
          s.cursor);
    /* an example longer than a row is cut to the row */
    int32_t big[20];
    for (int j = 0; j < 20; j++) big[j] = j;
    us_token_dataset one = {0};
    us_token_dataset_push(&one, big, NULL, 20, &e);
    us_sampler s1 = {.n = 1};
    us_fill_batch(&hb, &one, &s1, 1, SEQ, true);
    CHECK(seg[SEQ - 1] == 0 && pos[SEQ - 1] == SEQ - 1 && ids[SEQ - 1] == SEQ - 1 && tg[SEQ - 1] == -100 && tg[0] == 1,
          "long example cut");
    us_token_dataset_free(&one);
    us_token_dataset_free(&ds);
}

TEST(packing_equals_padding) {
    us_err e = {{0}};
    packing_env v;
    us_token_dataset ds;
    make_examples(&ds, &e);
    us_status st = env_open(&v, &e);
    if (st) {
        env_free(&v);
        us_token_dataset_free(&ds);
    }
    CHECK(!st, "%s", e.msg);
    size_t np = v.m->n_params;
    int32_t ids[T2], tg[T2], pos[T2], seg[T2], tk[T2];
    us_host_batch packed = {ids, tg, pos, seg, 0, 0};
    us_sampler s = {.n = ds.n};
    us_fill_batch(&packed, &ds, &s, 2, SEQ, true);
    int32_t owner_start[NEX] = {0, 5, 12, 19};
    float *sum_g = calloc(np, 4), *gk = malloc(np * 4);
    double sum_loss = 0, worst_g = 0, worst_l = 0, control = 0;
    for (int k = 0; k < NEX && !st; k++) {
        /* the example alone, one per row (padding mode) */
        us_token_dataset one = {.ex = &ds.ex[k], .n = 1, .shared = true};
        int32_t i1[SEQ], t1[SEQ], p1[SEQ];
        us_host_batch alone = {i1, t1, p1, NULL, 0, 0};
        us_sampler s1 = {.n = 1};
        us_fill_batch(&alone, &one, &s1, 1, SEQ, false);
        double lu, lp;
        if ((st = env_step(&v, &alone, 1, false, &lu, &e))) break;
        memcpy(gk, v.g, np * 4);
        /* the packed batch with only example k's targets */
        memcpy(tk, tg, sizeof tk);
        for (int i = 0; i < T2; i++)
            if (i < owner_start[k] || i >= owner_start[k] + LENS[k]) tk[i] = -100;
        us_host_batch pk = {ids, tk, pos, seg, 0, 0};
        if ((st = env_step(&v, &pk, 2, true, &lp, &e))) break;
        double gmax = 0, diff = 0;
        for (size_t i = 0; i < np; i++) {
            gmax = fmax(gmax, fabs(gk[i]));
            diff = fmax(diff, fabs((double)v.g[i] - gk[i]));
            sum_g[i] += gk[i];
        }
        sum_loss += lu;
        worst_g = fmax(worst_g, diff / gmax);
        worst_l = fmax(worst_l, fabs(lp - lu) / fabs(lu));
        fprintf(stderr, "  example %d (%d tokens): loss packed %.9g alone %.9g; gradients differ by %.2g of scale\n", k,
                LENS[k], lp, lu, diff / gmax);
        if (k == 1 || k == 3) { /* control: the same packed batch with attention across examples */
            double lc;
            if ((st = env_step(&v, &pk, 2, false, &lc, &e))) break;
            control = fmax(control, fabs(lc - lu) / fabs(lu));
        }
    }
    /* the whole packed batch equals the sum of the examples */
    double lall = 0, dall = 0, gmax = 0;
    if (!st) st = env_step(&v, &packed, 2, true, &lall, &e);
    for (size_t i = 0; !st && i < np; i++) {
        gmax = fmax(gmax, fabs(sum_g[i]));
        dall = fmax(dall, fabs((double)v.g[i] - sum_g[i]));
    }
    free(sum_g);
    free(gk);
    env_free(&v);
    us_token_dataset_free(&ds);
    CHECK(!st, "%s", e.msg);
    CHECK(worst_l <= 1e-5, "per-example loss packed vs alone differs by %.3g (relative)", worst_l);
    CHECK(worst_g <= 1e-5, "per-example LoRA gradients packed vs alone differ by %.3g of their scale", worst_g);
    CHECK(fabs(lall - sum_loss) <= 1e-5 * fabs(sum_loss), "packed batch loss %.9g vs sum of examples %.9g", lall, sum_loss);
    CHECK(dall <= 1e-5 * gmax, "packed batch gradients vs sum of examples: %.3g of scale", dall / gmax);
    CHECK(control > 1e-3, "control without seg_start matches too (%.3g): the comparison tests nothing", control);
}

/* ---- through us_train: --packing, --epochs, --val-split ---- */

static const char *write_rows(int n) {
    static char path[600];
    snprintf(path, sizeof path, "%s/rows%d.jsonl", us_test_tmpdir(), n);
    FILE *f = fopen(path, "w");
    for (int r = 0; f && r < n; r++) {
        fprintf(f, "{\"input_ids\": [");
        int len = 3 + (r * 5) % 7; /* 3..9 tokens */
        for (int j = 0; j < len; j++) fprintf(f, "%s%d", j ? ", " : "", (r * 31 + j * 7 + 1) % 256);
        fprintf(f, "]}\n");
    }
    if (f) fclose(f);
    return path;
}

/* Runs us_train; counts the metrics' step rows and eval rows; last eval loss/ppl/tokens. */
static int train_count(us_test_ctx *t, us_train_opts *o, const char *tag, int *steps, int *evals, double *el,
                       double *ppl, long *etok) {
    char out[600], metrics[600];
    snprintf(out, sizeof out, "%s/out_%s", us_test_tmpdir(), tag);
    snprintf(metrics, sizeof metrics, "%s/m_%s.jsonl", us_test_tmpdir(), tag);
    o->model_dir = FX "/model";
    o->out_dir = out;
    o->metrics_path = metrics;
    o->quiet = true;
    o->threads = 1;
    us_err e = {{0}};
    if (us_train(o, &e)) return snprintf(t->msg, sizeof t->msg, "%s: %s", tag, e.msg), t->failed = 1;
    char *txt;
    if (us_read_file(metrics, &txt, NULL, &e)) return snprintf(t->msg, sizeof t->msg, "%s", e.msg), t->failed = 1;
    *steps = *evals = 0;
    for (char *l = strtok(txt, "\n"); l; l = strtok(NULL, "\n")) {
        cJSON *row = cJSON_Parse(l);
        if (cJSON_GetObjectItem(row, "loss")) ++*steps;
        const cJSON *x = cJSON_GetObjectItem(row, "eval_loss");
        if (x) {
            ++*evals;
            *el = x->valuedouble;
            *ppl = cJSON_GetObjectItem(row, "eval_perplexity") ? cJSON_GetObjectItem(row, "eval_perplexity")->valuedouble : -1;
            *etok = (long)cJSON_GetObjectItem(row, "eval_tokens")->valuedouble;
        }
        cJSON_Delete(row);
    }
    free(txt);
    return 0;
}

TEST(train_epochs_packing_val_split) {
    const char *data = write_rows(8);
    us_train_opts o;
    int steps, evals;
    double el = 0, ppl = 0;
    long etok = 0;
    /* padding: 3 epochs of 8 rows, 2 rows a step -> 12 steps */
    us_train_opts_default(&o);
    o.data_path = data, o.random_init = true, o.batch = 2, o.epochs = 3, o.lora_r = 4;
    if (train_count(t, &o, "pad3", &steps, &evals, &el, &ppl, &etok)) return;
    CHECK(steps == 12 && evals == 0, "--epochs 3, batch 2, 8 rows: %d steps (want 12), %d evals", steps, evals);
    /* packing: lengths 3,8,6,4,9,7,5,3 into rows of 10 (no shuffle): [3] [8] [6,4] [9] [7] [5,3]
     * = 6 rows an epoch (epoch 2's first 3 does not fit beside [5,3]), 12 rows -> 6 steps of 2;
     * padding would take 8 steps */
    us_train_opts_default(&o);
    o.data_path = data, o.random_init = true, o.batch = 2, o.epochs = 2, o.packing = true, o.seq_len = 10;
    o.shuffle = false, o.lora_r = 4;
    if (train_count(t, &o, "pack2", &steps, &evals, &el, &ppl, &etok)) return;
    CHECK(steps == 6, "--packing --epochs 2: %d steps, want 6", steps);
    /* --val-split 0.25: 2 of 8 rows held out, 6 train; 2 epochs of batch 2 -> 6 steps; eval at
     * step 1, every 2 steps and at the end: steps 1, 2, 4, 6 */
    us_train_opts_default(&o);
    o.data_path = data, o.random_init = true, o.batch = 2, o.epochs = 2, o.val_split = 0.25, o.eval_every = 2;
    o.lora_r = 4;
    if (train_count(t, &o, "val", &steps, &evals, &el, &ppl, &etok)) return;
    CHECK(steps == 6 && evals == 4, "--val-split 0.25: %d steps (want 6), %d evals (want 4)", steps, evals);
    CHECK(el > 0 && fabs(ppl - exp(el)) <= 1e-6 * ppl, "eval loss %g perplexity %g", el, ppl);
    /* held-out tokens: two rows of 3..9 tokens count 2..8 targets each */
    CHECK(etok >= 4 && etok <= 16, "eval tokens %ld", etok);
    long etok1 = etok;
    double el1 = el;
    if (train_count(t, &o, "val_again", &steps, &evals, &el, &ppl, &etok)) return;
    CHECK(etok == etok1 && el == el1, "same seed, different eval set: %ld/%g vs %ld/%g", etok, el, etok1, el1);
    int differs = 0;
    for (uint64_t seed = 1; seed <= 6 && !differs; seed++) {
        o.seed = seed;
        if (train_count(t, &o, "val_seed", &steps, &evals, &el, &ppl, &etok)) return;
        differs = etok != etok1;
    }
    CHECK(differs, "the held-out set never changes with the seed");
    /* errors */
    us_err e = {{0}};
    o.val_split = 1.5;
    CHECK(us_train(&o, &e) == US_EINVAL && strstr(e.msg, "--val-split"), "%s", e.msg);
    o.val_split = 0.5;
    o.eval_data_path = data;
    CHECK(us_train(&o, &e) == US_EINVAL && strstr(e.msg, "--eval-data"), "%s", e.msg);
}
