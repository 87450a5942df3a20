/* decode.c — incremental decoding with a key/value cache, model side.
 *
 * Choice: the decode path lives here, at the model level, reusing the training ops with T = the
 * new tokens (projections, LoRA, RMSNorm, RoPE, GLU, residual add, embedding), plus ONE new
 * backend op, attn_cached: attention of the new queries over the cache. Keys and values are
 * projected straight into their rows of the per-layer cache and rotated there, so appending
 * costs nothing extra. A backend without attn_cached still decodes: the attention then runs on
 * the host over f32 copies (slow on a GPU, but correct) — so every backend generates, and the
 * CPU one is the fast reference. The prefill of a prompt is the same code with T = prompt length
 * (chunked to the scratch size). Only the last row goes through the final norm and the LM head.
 *
 * Sampling (temperature, top-k, top-p) runs on the host over f32 logits with counter-based
 * random numbers, so a seed reproduces a generation on every backend. */
#include "model/decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 256 /* tokens per prefill call */

struct us_decoder {
    us_model *m;
    int max_ctx, len;
    void **kc, **vc;           /* [layers] -> [max_ctx, kv*hd] act */
    void *x, *h, *q, *att, *g, *up, *a, *logits_act;
    float *rstd, *u, *logits_f32;
    int32_t *ids, *pos;        /* device [CHUNK] */
    float *hq, *hk, *hv, *ho;  /* host fallback for attention (NULL when the backend has attn_cached) */
};

us_status us_model_load_inference(us_model **out, us_backend *be, const char *model_dir, const char *adapter_dir,
                                  us_err *e) {
    us_model *m;
    us_status st = us_model_load(&m, be, model_dir, false, 0, 0, e);
    if (st) return st;
    if (adapter_dir) {
        us_adapter *a;
        us_train_spec spec = {0};
        st = us_adapter_open(adapter_dir, &a, e);
        if (!st) {
            spec.lora = *us_adapter_config(a);
            us_adapter_close(a);
            st = us_model_setup_training(m, &spec, 0, e);
        }
        if (!st) st = us_model_load_adapter(m, adapter_dir, e);
        if (st) {
            us_model_free(m);
            return st;
        }
    }
    *out = m;
    return US_OK;
}

void us_decoder_free(us_decoder *d) {
    if (!d) return;
    us_backend *be = d->m->be;
    for (int l = 0; l < d->m->cfg.layers; l++) {
        if (d->kc) be->free(be, d->kc[l]);
        if (d->vc) be->free(be, d->vc[l]);
    }
    free(d->kc);
    free(d->vc);
    void *bufs[] = {d->x, d->h, d->q, d->att, d->g, d->up, d->a, d->logits_act, d->rstd, d->u, d->logits_f32, d->ids, d->pos};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
    free(d->hq);
    free(d->hk);
    free(d->hv);
    free(d->ho);
    free(d);
}

us_status us_decoder_create(us_model *m, int max_ctx, us_decoder **out, us_err *e) {
    *out = NULL;
    const us_config *c = &m->cfg;
    if (max_ctx < 1) return us_fail(e, US_EINVAL, "decoder: context of %d tokens", max_ctx);
    if (max_ctx > c->max_pos)
        return us_fail(e, US_EINVAL, "%d tokens exceed the model's max_position_embeddings %d", max_ctx, c->max_pos);
    us_decoder *d = calloc(1, sizeof *d);
    if (!d) return us_fail(e, US_ENOMEM, "out of memory");
    d->m = m;
    d->max_ctx = max_ctx;
    us_backend *be = m->be;
    size_t A = be->act_bytes, D = (size_t)c->hidden, F = (size_t)c->inter;
    size_t QD = (size_t)c->heads * c->head_dim, KVD = (size_t)c->kv_heads * c->head_dim;
    int r = (!m->spec.full && m->slot) ? m->spec.lora.r : 1;
    bool ok = (d->kc = calloc((size_t)c->layers, sizeof *d->kc)) && (d->vc = calloc((size_t)c->layers, sizeof *d->vc));
    for (int l = 0; ok && l < c->layers; l++)
        ok = (d->kc[l] = be->alloc(be, (size_t)max_ctx * KVD * A)) && (d->vc[l] = be->alloc(be, (size_t)max_ctx * KVD * A));
    ok = ok && (d->x = be->alloc(be, CHUNK * D * A)) && (d->h = be->alloc(be, CHUNK * D * A)) &&
         (d->q = be->alloc(be, CHUNK * QD * A)) && (d->att = be->alloc(be, CHUNK * QD * A)) &&
         (d->g = be->alloc(be, CHUNK * F * A)) && (d->up = be->alloc(be, CHUNK * F * A)) &&
         (d->a = be->alloc(be, CHUNK * F * A)) && (d->logits_act = be->alloc(be, (size_t)c->vocab * A)) &&
         (d->rstd = be->alloc(be, CHUNK * 4)) && (d->u = be->alloc(be, CHUNK * (size_t)r * 4)) &&
         (d->logits_f32 = be->alloc(be, (size_t)c->vocab * 4)) && (d->ids = be->alloc(be, CHUNK * 4)) &&
         (d->pos = be->alloc(be, CHUNK * 4));
    if (ok && !be->attn_cached)
        ok = (d->hq = malloc(CHUNK * QD * 4)) && (d->ho = malloc(CHUNK * QD * 4)) &&
             (d->hk = malloc((size_t)max_ctx * KVD * 4)) && (d->hv = malloc((size_t)max_ctx * KVD * 4));
    if (!ok) {
        us_decoder_free(d);
        return us_fail(e, US_ENOMEM, "out of %s memory for a %d-token key/value cache", be->name, max_ctx);
    }
    *out = d;
    return US_OK;
}

void us_decoder_reset(us_decoder *d) { d->len = 0; }
int us_decoder_len(const us_decoder *d) { return d->len; }

/* y = x W^T + b (+ LoRA), acc adds into y */
static void project(us_decoder *d, int l, int t, void *y, bool acc, const void *x, int T) {
    us_model *m = d->m;
    int in, out;
    us_target_dims(&m->cfg, t, &in, &out);
    m->be->linear_fwd(m->be, y, acc ? y : NULL, x, in, m->L[l].w[t], m->wld[t], m->L[l].b[t], T, in, out);
    if (!m->spec.full && m->slot && m->slot[l][t].on) {
        const us_lora_slot *s = &m->slot[l][t];
        int r = m->spec.lora.r;
        m->be->lora_down(m->be, d->u, r, x, in, m->params + s->off_A, T, in, r, false);
        m->be->lora_up(m->be, y, y, d->u, r, m->params + s->off_B, m->lora_scale, T, out, r);
    }
}

/* attention over the cache on the host, for backends without attn_cached */
static void host_attn(us_decoder *d, int l, int T, int start, const us_attn_shape *sh) {
    us_backend *be = d->m->be;
    const us_config *c = &d->m->cfg;
    size_t QD = (size_t)c->heads * c->head_dim, KVD = (size_t)c->kv_heads * c->head_dim, n = (size_t)(start + T);
    float *tmp = be->alloc(be, US_MAX(n * KVD, (size_t)T * QD) * 4);
    if (!tmp) return;
    be->act_to_f32(be, tmp, d->q, (size_t)T * QD);
    be->download(be, d->hq, tmp, (size_t)T * QD * 4);
    be->act_to_f32(be, tmp, d->kc[l], n * KVD);
    be->download(be, d->hk, tmp, n * KVD * 4);
    be->act_to_f32(be, tmp, d->vc[l], n * KVD);
    be->download(be, d->hv, tmp, n * KVD * 4);
    int H = c->heads, KV = c->kv_heads, hd = c->head_dim, grp = H / KV;
    float *p = malloc(n * sizeof *p);
    for (int i = 0; p && i < T; i++)
        for (int h = 0; h < H; h++) {
            int kh = h / grp, last = start + i;
            const float *qi = d->hq + ((size_t)i * H + h) * hd;
            float mx = -INFINITY;
            for (int j = 0; j <= last; j++) {
                float s = 0;
                for (int k = 0; k < hd; k++) s += qi[k] * d->hk[((size_t)j * KV + kh) * hd + k];
                p[j] = sh->scale * s;
                mx = p[j] > mx ? p[j] : mx;
            }
            double sum = 0;
            for (int j = 0; j <= last; j++) sum += (p[j] = expf(p[j] - mx));
            float *oi = d->ho + ((size_t)i * H + h) * hd;
            memset(oi, 0, (size_t)hd * 4);
            for (int j = 0; j <= last; j++)
                for (int k = 0; k < hd; k++) oi[k] += (float)(p[j] / sum) * d->hv[((size_t)j * KV + kh) * hd + k];
        }
    free(p);
    be->upload(be, tmp, d->ho, (size_t)T * QD * 4);
    be->act_from_f32(be, d->att, tmp, (size_t)T * QD);
    be->sync(be);
    be->free(be, tmp);
}

/* runs T (<= CHUNK) tokens at positions d->len.. through the layers into d->x */
static void run_chunk(us_decoder *d, const int32_t *ids, int T, bool want_logits, float *logits) {
    us_model *m = d->m;
    us_backend *be = m->be;
    const us_config *c = &m->cfg;
    int D = c->hidden, F = c->inter, start = d->len;
    size_t A = be->act_bytes, KVD = (size_t)c->kv_heads * c->head_dim;
    int32_t pos[CHUNK];
    for (int i = 0; i < T; i++) pos[i] = start + i;
    be->upload(be, d->ids, ids, (size_t)T * 4);
    be->upload(be, d->pos, pos, (size_t)T * 4);
    be->embed_fwd(be, d->x, m->embed, d->ids, T, D);
    us_attn_shape sh = {1, start + T, c->heads, c->kv_heads, c->head_dim, 1.0f / sqrtf((float)c->head_dim), 0};
    int act = c->act == US_ACT_RELU ? US_GLU_RELU : US_GLU_SILU;
    for (int l = 0; l < c->layers; l++) {
        const us_layer_weights *L = &m->L[l];
        void *kl = (char *)d->kc[l] + (size_t)start * KVD * A, *vl = (char *)d->vc[l] + (size_t)start * KVD * A;
        be->rmsnorm_fwd(be, d->h, D, d->rstd, d->x, L->ln1, T, D, (float)c->rms_eps);
        project(d, l, US_T_Q, d->q, false, d->h, T);
        project(d, l, US_T_K, kl, false, d->h, T);
        project(d, l, US_T_V, vl, false, d->h, T);
        be->rope(be, d->q, d->pos, m->inv_freq, T, c->heads, c->head_dim, false);
        be->rope(be, kl, d->pos, m->inv_freq, T, c->kv_heads, c->head_dim, false);
        if (be->attn_cached)
            be->attn_cached(be, d->att, d->q, d->kc[l], d->vc[l], T, start, &sh);
        else
            host_attn(d, l, T, start, &sh);
        project(d, l, US_T_O, d->x, true, d->att, T);
        be->rmsnorm_fwd(be, d->h, D, d->rstd, d->x, L->ln2, T, D, (float)c->rms_eps);
        project(d, l, US_T_GATE, d->g, false, d->h, T);
        project(d, l, US_T_UP, d->up, false, d->h, T);
        be->glu_fwd(be, act, d->a, F, d->g, d->up, NULL, T, F, NULL, 0, NULL, 0, false);
        project(d, l, US_T_DOWN, d->x, true, d->a, T);
    }
    d->len += T;
    if (!want_logits) return;
    const char *last = (const char *)d->x + (size_t)(T - 1) * D * A;
    be->rmsnorm_fwd(be, d->h, D, d->rstd, last, m->norm_f, 1, D, (float)c->rms_eps);
    be->linear_fwd(be, d->logits_act, NULL, d->h, D, m->lm_head, D, NULL, 1, D, c->vocab);
    be->act_to_f32(be, d->logits_f32, d->logits_act, (size_t)c->vocab);
    be->download(be, logits, d->logits_f32, (size_t)c->vocab * 4);
}

us_status us_decoder_feed(us_decoder *d, const int32_t *ids, int n, float *logits, us_err *e) {
    if (n <= 0) return us_fail(e, US_EINVAL, "decoder: nothing to feed");
    if (d->len + n > d->max_ctx)
        return us_fail(e, US_EINVAL, "sequence of %d tokens exceeds the decoder's context of %d", d->len + n, d->max_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= d->m->cfg.vocab)
            return us_fail(e, US_EINVAL, "token id %d is outside the vocabulary (0..%d)", ids[i], d->m->cfg.vocab - 1);
    for (int i = 0; i < n; i += CHUNK) {
        int T = US_MIN(CHUNK, n - i);
        run_chunk(d, ids + i, T, logits && i + T == n, logits);
    }
    return US_OK;
}

/* ---- sampling ---- */

int32_t us_argmax(const float *logits, int vocab) {
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

typedef struct cand {
    float p;
    int32_t id;
} cand;

static int cand_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

int32_t us_sample(us_sampler *s, float *logits, int vocab) {
    if (!(s->temperature > 0)) return us_argmax(logits, vocab);
    cand *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return us_argmax(logits, vocab);
    float mx = logits[us_argmax(logits, vocab)];
    for (int i = 0; i < vocab; i++) c[i] = (cand){expf((logits[i] - mx) / s->temperature), i};
    qsort(c, (size_t)vocab, sizeof *c, cand_desc);
    int n = (s->top_k > 0 && s->top_k < vocab) ? s->top_k : vocab;
    double total = 0;
    for (int i = 0; i < n; i++) total += c[i].p;
    if (s->top_p > 0 && s->top_p < 1) { /* smallest prefix whose mass reaches top_p */
        double acc = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += c[i].p / total;
            if (acc >= s->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        total = 0;
        for (int i = 0; i < n; i++) total += c[i].p;
    }
    double u = us_rand_uniform(s->seed, 0x5a3b1e, s->counter++) * total, acc = 0;
    int32_t id = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) {
            id = c[i].id;
            break;
        }
    }
    free(c);
    return id;
}
