/* api.c — the public API of include/unswag.h over the internals.
 *
 * us_trainer keeps a us_train_opts plus copies of every string it was given (the options struct
 * only points), and maps option names to fields through one table, so the library accepts the
 * same names and value syntax as `unswag train` (the CLI parses its flags itself; both end in
 * us_train). us_session owns a backend, a model with its adapter, and a decoder sized for the
 * model's context, created on first use. Messages are kept in the handle (errors are values). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "data/load.h"
#include "io/adapter.h"
#include "model/decode.h"
#include "train/evaluate.h"
#include "train/trainer.h"

struct us_trainer {
    us_train_opts o;
    char *owned[32];
    int n_owned;
    us_err e;
};

us_trainer *us_trainer_new(void) {
    us_trainer *t = calloc(1, sizeof *t);
    if (t) us_train_opts_default(&t->o);
    return t;
}

void us_trainer_free(us_trainer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_owned; i++) free(t->owned[i]);
    free(t);
}

const char *us_trainer_error(const us_trainer *t) { return t ? t->e.msg : "no trainer"; }

enum kind { K_STR, K_INT, K_DOUBLE, K_U64, K_BOOL, K_NOBOOL, K_TARGETS, K_SCHED, K_FLOAT };
static const struct opt {
    const char *name;
    enum kind kind;
    size_t off;
    long lo, hi;
} OPTS[] = {
#define F(x) offsetof(us_train_opts, x)
    {"model", K_STR, F(model_dir), 0, 0},          {"data", K_STR, F(data_path), 0, 0},
    {"out", K_STR, F(out_dir), 0, 0},              {"adapter-init", K_STR, F(adapter_init), 0, 0},
    {"metrics", K_STR, F(metrics_path), 0, 0},     {"device", K_STR, F(device), 0, 0},
    {"report", K_STR, F(report_path), 0, 0},       {"eval-data", K_STR, F(eval_data_path), 0, 0},
    {"lora-r", K_INT, F(lora_r), 1, 4096},         {"lora-alpha", K_DOUBLE, F(lora_alpha), 0, 0},
    {"lora-targets", K_TARGETS, F(targets), 0, 0}, {"rslora", K_BOOL, F(rslora), 0, 0},
    {"lr", K_DOUBLE, F(lr), 0, 0},                 {"weight-decay", K_DOUBLE, F(weight_decay), 0, 0},
    {"beta1", K_DOUBLE, F(beta1), 0, 0},           {"beta2", K_DOUBLE, F(beta2), 0, 0},
    {"eps", K_DOUBLE, F(eps), 0, 0},               {"grad-clip", K_DOUBLE, F(grad_clip), 0, 0},
    {"schedule", K_SCHED, F(schedule), 0, 0},      {"warmup", K_INT, F(warmup), 0, 1L << 30},
    {"grad-accum", K_INT, F(grad_accum), 1, 1L << 20}, {"steps", K_INT, F(steps), 1, 1L << 30},
    {"batch", K_INT, F(batch), 1, 1L << 20},       {"seq-len", K_INT, F(seq_len), 1, 1L << 24},
    {"threads", K_INT, F(threads), 1, 4096},       {"seed", K_U64, F(seed), 0, 0},
    {"eval-every", K_INT, F(eval_every), 1, 1L << 30}, {"no-shuffle", K_NOBOOL, F(shuffle), 0, 0},
    {"random-init", K_BOOL, F(random_init), 0, 0}, {"full", K_BOOL, F(full), 0, 0},
    {"quiet", K_BOOL, F(quiet), 0, 0},             {"init-std", K_FLOAT, F(init_std), 0, 0},
    {"packing", K_BOOL, F(packing), 0, 0},         {"epochs", K_INT, F(epochs), 1, 1L << 20},
    {"val-split", K_DOUBLE, F(val_split), 0, 0},
#undef F
};

us_status us_trainer_set(us_trainer *t, const char *option, const char *value) {
    if (!t || !option) return US_EINVAL;
    const struct opt *o = NULL;
    for (size_t i = 0; i < sizeof OPTS / sizeof OPTS[0]; i++)
        if (!strcmp(OPTS[i].name, option)) o = &OPTS[i];
    if (!o) return us_fail(&t->e, US_EINVAL, "unknown option \"%s\"", option);
    char *field = (char *)&t->o + o->off;
    bool flag = o->kind == K_BOOL || o->kind == K_NOBOOL;
    if (!flag && !value) return us_fail(&t->e, US_EINVAL, "option %s needs a value", option);
    char *end = NULL;
    switch (o->kind) {
    case K_STR: {
        if (t->n_owned == (int)(sizeof t->owned / sizeof t->owned[0]))
            return us_fail(&t->e, US_EINVAL, "too many string options");
        char *c = strdup(value);
        if (!c) return us_fail(&t->e, US_ENOMEM, "out of memory");
        t->owned[t->n_owned++] = c;
        *(const char **)field = c;
        return US_OK;
    }
    case K_INT: {
        long v = strtol(value, &end, 10);
        if (end == value || *end || v < o->lo || v > o->hi)
            return us_fail(&t->e, US_EINVAL, "%s %s: expected an integer in [%ld, %ld]", option, value, o->lo, o->hi);
        *(int *)field = (int)v;
        return US_OK;
    }
    case K_DOUBLE:
    case K_FLOAT: {
        double v = strtod(value, &end);
        if (end == value || *end || !isfinite(v)) return us_fail(&t->e, US_EINVAL, "%s %s: expected a number", option, value);
        if (o->kind == K_FLOAT) *(float *)field = (float)v;
        else *(double *)field = v;
        return US_OK;
    }
    case K_U64: {
        unsigned long long v = strtoull(value, &end, 10);
        if (end == value || *end || *value == '-')
            return us_fail(&t->e, US_EINVAL, "%s %s: expected a non-negative integer", option, value);
        *(uint64_t *)field = v;
        return US_OK;
    }
    case K_BOOL:
    case K_NOBOOL: {
        bool on = !value || !strcmp(value, "true") || !strcmp(value, "1");
        if (value && !on && strcmp(value, "false") && strcmp(value, "0"))
            return us_fail(&t->e, US_EINVAL, "%s %s: expected true or false", option, value);
        *(bool *)field = o->kind == K_BOOL ? on : !on;
        return US_OK;
    }
    case K_TARGETS:
        return us_targets_parse(value, (unsigned *)field, &t->e);
    case K_SCHED:
        if (!us_schedule_parse(value, (us_schedule *)field))
            return us_fail(&t->e, US_EINVAL, "schedule %s: expected constant, linear or cosine", value);
        return US_OK;
    }
    return US_EINVAL;
}

us_status us_trainer_run(us_trainer *t) {
    if (!t) return US_EINVAL;
    return us_train(&t->o, &t->e);
}

struct us_session {
    us_backend *be;
    us_model *m;
    us_decoder *d;
    us_err e;
};

us_status us_session_open(us_session **out, const char *model_dir, const char *adapter_dir, const char *device,
                          char *err, size_t err_cap) {
    *out = NULL;
    us_session *s = calloc(1, sizeof *s);
    us_err e = {{0}};
    us_status st = s ? US_OK : us_fail(&e, US_ENOMEM, "out of memory");
    if (!st) st = us_backend_create(device ? device : "cpu", 0, &s->be, &e);
    if (!st) st = us_model_load_inference(&s->m, s->be, model_dir, adapter_dir, &e);
    if (st) {
        if (err && err_cap) snprintf(err, err_cap, "%s", e.msg);
        us_session_free(s);
        return st;
    }
    *out = s;
    return US_OK;
}

void us_session_free(us_session *s) {
    if (!s) return;
    us_decoder_free(s->d);
    us_model_free(s->m);
    if (s->be) s->be->destroy(s->be);
    free(s);
}

const char *us_session_error(const us_session *s) { return s ? s->e.msg : "no session"; }
int us_session_vocab(const us_session *s) { return s->m->cfg.vocab; }

us_status us_session_eval(us_session *s, const char *data_path, int batch, double *loss, long *tokens) {
    us_token_dataset ds = {0};
    us_data_source src = {.path = data_path, .vocab = s->m->cfg.vocab};
    us_status st = us_data_load(&src, &ds, &s->e);
    int seq = 0;
    for (size_t i = 0; !st && i < ds.n; i++) seq = (int)US_MAX((int64_t)seq, ds.ex[i].n);
    if (!st && seq > s->m->cfg.max_pos) seq = s->m->cfg.max_pos;
    if (batch < 1) batch = 8;
    if (!st) batch = (int)US_MIN((size_t)batch, ds.n);
    if (!st && s->m->max_tokens < batch * seq) st = us_model_prepare(s->m, batch * seq, &s->e);
    double sum = 0;
    long cnt = 0;
    if (!st) st = us_eval_dataset(s->m, &ds, batch, seq, NULL, &sum, &cnt, &s->e);
    us_token_dataset_free(&ds);
    if (st) return st;
    *loss = cnt ? sum / cnt : NAN;
    *tokens = cnt;
    return US_OK;
}

us_status us_session_generate(us_session *s, const int32_t *prompt, int n_prompt, int max_new, float temperature,
                              int top_k, float top_p, uint64_t seed, int32_t *out, int *n_out) {
    *n_out = 0;
    us_status st = US_OK;
    if (!s->d && (st = us_decoder_create(s->m, s->m->cfg.max_pos, &s->d, &s->e))) return st;
    if (n_prompt < 1 || max_new < 0) return us_fail(&s->e, US_EINVAL, "generate: empty prompt or negative max_new");
    us_decoder_reset(s->d);
    int V = s->m->cfg.vocab;
    float *logits = malloc((size_t)V * 4);
    if (!logits) return us_fail(&s->e, US_ENOMEM, "out of memory");
    us_sampler smp = {.temperature = temperature, .top_k = top_k, .top_p = top_p, .seed = seed};
    st = us_decoder_feed(s->d, prompt, n_prompt, logits, &s->e);
    for (int i = 0; i < max_new && !st; i++) {
        int32_t id = us_sample(&smp, logits, V);
        out[(*n_out)++] = id;
        if (id == s->m->cfg.eos_id || i + 1 == max_new || us_decoder_len(s->d) + 1 > s->m->cfg.max_pos) break;
        st = us_decoder_feed(s->d, &id, 1, logits, &s->e);
    }
    free(logits);
    return st;
}
