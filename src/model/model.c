/* model.c — building a model on a backend: weights from a Hugging Face directory (or random),
 * the rotary frequencies, the flat buffer of trainable parameters (LoRA or full), and moving
 * adapters and checkpoints in and out.
 *
 * Frozen matrices go to the backend in its weight format straight from the memory-mapped
 * safetensors, one tensor at a time (host memory never holds a second copy of the model).
 * Trainable parameters live in one f32 buffer so that the optimizer, clipping and the
 * non-finite check are each a single pass; us_param names each tensor inside it. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/safetensors.h"

void us_target_dims(const us_config *c, int t, int *in, int *out) {
    int qd = c->heads * c->head_dim, kvd = c->kv_heads * c->head_dim;
    switch (t) {
    case US_T_Q: *in = c->hidden; *out = qd; break;
    case US_T_K:
    case US_T_V: *in = c->hidden; *out = kvd; break;
    case US_T_O: *in = qd; *out = c->hidden; break;
    case US_T_GATE:
    case US_T_UP: *in = c->hidden; *out = c->inter; break;
    default: *in = c->inter; *out = c->hidden; break;
    }
}

static bool target_has_bias(const us_config *c, int t) {
    if (t <= US_T_V) return c->qkv_bias;
    if (t == US_T_O) return c->o_bias;
    return c->mlp_bias;
}

static void weight_name(char *buf, size_t cap, int layer, int t, const char *what) {
    snprintf(buf, cap, "model.layers.%d.%s.%s.%s", layer, t <= US_T_O ? "self_attn" : "mlp", us_target_name(t), what);
}

/* rotary inverse frequencies as transformers computes them, incl. linear and llama3 scaling */
static void rope_inv_freq(const us_config *c, float *f) {
    int hd = c->head_dim;
    for (int i = 0; i < hd / 2; i++) {
        float base = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / hd));
        if (c->rope_type == US_ROPE_LINEAR) {
            base = (float)(base / c->rope_factor);
        } else if (c->rope_type == US_ROPE_LLAMA3) {
            double wavelen = 2 * M_PI / base;
            double low_wl = c->rope_orig_max_pos / c->rope_low_freq, high_wl = c->rope_orig_max_pos / c->rope_high_freq;
            double v = base;
            if (wavelen > low_wl) {
                v = base / c->rope_factor;
            } else if (wavelen >= high_wl) {
                double smooth = (c->rope_orig_max_pos / wavelen - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
                v = (1 - smooth) * base / c->rope_factor + smooth * base;
            }
            base = (float)v;
        }
        f[i] = base;
    }
}

static float *upload_f32(us_backend *be, const float *host, size_t n) {
    float *d = be->alloc(be, n * 4);
    if (d) be->upload(be, d, host, n * 4);
    return d;
}

typedef struct loader {
    us_model *m;
    us_st_model *st;
    bool random;
    float std;
    uint64_t seed, stream;
    us_err *e;
} loader;

/* a frozen matrix [rows, cols] in weight format */
static us_status load_matrix(loader *ld, const char *name, int64_t rows, int64_t cols, void **out) {
    us_backend *be = ld->m->be;
    size_t n = (size_t)rows * (size_t)cols;
    uint64_t stream = ld->stream++;
    if (ld->random) {
        *out = be->alloc(be, n * be->weight_bytes);
        if (!*out) return us_fail(ld->e, US_ENOMEM, "out of device memory for %s (%zu elements)", name, n);
        be->weight_fill_normal(be, *out, n, ld->std, ld->seed, stream);
        ld->m->weight_bytes += n * be->weight_bytes;
        return US_OK;
    }
    const us_st_tensor *t;
    int64_t shape[2] = {rows, cols};
    us_status st = us_st_model_get(ld->st, name, 2, shape, &t, ld->e);
    if (st) return st;
    if (t->dtype != US_DT_F32 && t->dtype != US_DT_BF16 && t->dtype != US_DT_F16) {
        const char *file = "model";
        us_st_model_find(ld->st, name, &file);
        return us_fail(ld->e, US_EUNSUPPORTED, "%s: tensor %s: dtype %s is not supported (F32, BF16, F16)", file, name,
                       us_dtype_name(t->dtype));
    }
    *out = be->weight_upload(be, t->data, t->dtype, n);
    if (!*out) return us_fail(ld->e, US_ENOMEM, "out of device memory for %s", name);
    ld->m->weight_bytes += n * be->weight_bytes;
    return US_OK;
}

/* an f32 vector: norm weights (random init: ones) and biases (random init: zeros) */
static us_status load_vector(loader *ld, const char *name, int64_t n, float fill, float **out) {
    us_backend *be = ld->m->be;
    float *h = us_malloc((size_t)n * 4, ld->e, name);
    if (!h) return US_ENOMEM;
    us_status st = US_OK;
    if (ld->random) {
        for (int64_t i = 0; i < n; i++) h[i] = fill;
    } else {
        st = us_st_model_read_f32(ld->st, name, 1, &n, h, ld->e);
    }
    if (!st) {
        *out = upload_f32(be, h, (size_t)n);
        if (!*out) st = us_fail(ld->e, US_ENOMEM, "out of device memory for %s", name);
    }
    free(h);
    return st;
}

static us_status check_config(const us_config *c, const char *dir, us_err *e) {
    if (c->head_dim % 2 || c->head_dim > 1024)
        return us_fail(e, US_EUNSUPPORTED, "%s/config.json: head_dim %d must be even and at most 1024", dir, c->head_dim);
    return US_OK;
}

us_status us_model_load(us_model **out, us_backend *be, const char *dir, bool random_init, float init_std,
                        uint64_t seed, us_err *e) {
    *out = NULL;
    us_model *m = calloc(1, sizeof *m);
    if (!m) return us_fail(e, US_ENOMEM, "out of memory");
    m->be = be;
    us_status st = us_config_load(dir, &m->cfg, e);
    if (!st) st = check_config(&m->cfg, dir, e);
    if (st) {
        free(m);
        return st;
    }
    const us_config *c = &m->cfg;
    loader ld = {.m = m, .random = random_init, .std = init_std, .seed = seed, .e = e};
    if (!random_init && (st = us_st_model_open(dir, &ld.st, e))) {
        free(m);
        return st;
    }
    m->L = calloc((size_t)c->layers, sizeof *m->L);
    if (!m->L) st = us_fail(e, US_ENOMEM, "out of memory");
    char name[256];
    if (!st) st = load_matrix(&ld, "model.embed_tokens.weight", c->vocab, c->hidden, &m->embed);
    for (int t = 0; t < US_T_COUNT; t++) {
        int in, o;
        us_target_dims(c, t, &in, &o);
        m->wld[t] = in;
    }
    m->dres_ld = c->hidden;
    for (int l = 0; l < c->layers && !st; l++) {
        us_layer_weights *L = &m->L[l];
        for (int t = 0; t < US_T_COUNT && !st; t++) {
            int in, o;
            us_target_dims(c, t, &in, &o);
            weight_name(name, sizeof name, l, t, "weight");
            st = load_matrix(&ld, name, o, in, &L->w[t]);
            if (!st && target_has_bias(c, t)) {
                weight_name(name, sizeof name, l, t, "bias");
                st = load_vector(&ld, name, o, 0.0f, &L->b[t]);
            }
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if (!st) st = load_vector(&ld, name, c->hidden, 1.0f, &L->ln1);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if (!st) st = load_vector(&ld, name, c->hidden, 1.0f, &L->ln2);
    }
    if (!st) st = load_vector(&ld, "model.norm.weight", c->hidden, 1.0f, &m->norm_f);
    if (!st) {
        if (c->tie_embeddings)
            m->lm_head = m->embed;
        else
            st = load_matrix(&ld, "lm_head.weight", c->vocab, c->hidden, &m->lm_head);
    }
    if (!st) {
        float f[512];
        rope_inv_freq(c, f);
        m->inv_freq = upload_f32(be, f, (size_t)c->head_dim / 2);
        if (!m->inv_freq) st = us_fail(e, US_ENOMEM, "out of device memory");
    }
    if (ld.st) us_st_model_close(ld.st);
    if (st) {
        us_model_free(m);
        return st;
    }
    *out = m;
    return US_OK;
}

void us_model_free(us_model *m) {
    if (!m) return;
    us_backend *be = m->be;
    bool full = m->spec.full; /* vectors then live inside m->params */
    if (m->L) {
        for (int l = 0; l < m->cfg.layers; l++) {
            us_layer_weights *L = &m->L[l];
            for (int t = 0; t < US_T_COUNT; t++) {
                if (!(l < m->qkv_joint_layers && (t == US_T_K || t == US_T_V))) be->free(be, L->w[t]); /* in q's block */
                if (!full) be->free(be, L->b[t]);
            }
            if (!full) {
                be->free(be, L->ln1);
                be->free(be, L->ln2);
            }
        }
        free(m->L);
    }
    if (m->lm_head != m->embed) be->free(be, m->lm_head);
    if (m->embed_on_host) be->host_free(be, m->embed);
    else be->free(be, m->embed);
    if (!full) be->free(be, m->norm_f);
    be->free(be, m->inv_freq);
    be->free(be, m->fold_list);
    be->free(be, m->params);
    be->free(be, m->grads);
    be->free(be, m->arena);
    void **host[] = {m->host_xin, m->host_mlp, m->host_att}; /* per-layer pinned buffers (plan.c) */
    for (int i = 0; i < 3; i++) {
        for (int l = 0; host[i] && l < m->cfg.layers; l++) be->host_free(be, host[i][l]);
        free(host[i]);
    }
    free(m->plist);
    free(m->slot);
    free(m->acts);
    free(m->mlp_prev); /* mlp_ticket lies in the same block */
    free(m->plan.layer);
    free(m);
}

/* ---- trainable parameters ---- */

/* Appends a tensor at *off; packed: directly after the previous one (a LoRA group's A block),
 * else 64-byte aligned. */
static us_param *add_param_at(us_model *m, const char *name, int64_t rows, int64_t cols, size_t *off, bool packed) {
    us_param *p = &m->plist[m->n_plist++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->numel = (size_t)rows * (size_t)(cols ? cols : 1);
    p->off = packed ? *off : (*off + 15) / 16 * 16;
    *off = p->off + p->numel;
    return p;
}

static us_param *add_param(us_model *m, const char *name, int64_t rows, int64_t cols, size_t *off) {
    return add_param_at(m, name, rows, cols, off, false);
}

int us_target_group(int t) {
    static const int g[US_T_COUNT] = {0, 0, 0, 1, 2, 2, 3};
    return t >= 0 && t < US_T_COUNT ? g[t] : -1;
}

/* rows of the joint q/k/v block: q's, k's and v's outputs */
static int qkv_out(const us_config *c) { return (c->heads + 2 * c->kv_heads) * c->head_dim; }

/* The list of blocks us_model_fold_refresh copies from the masters, in backend memory (built
 * once: the matrices and the masters stay where they are): s*B beside W for the forward-folded
 * targets, A below W for the backward-folded ones. */
static us_status fold_list(us_model *m, us_err *e) {
    us_backend *be = m->be;
    us_put *h = calloc((size_t)m->cfg.layers * (2 * US_T_COUNT + 1), sizeof *h); /* s*B and A of each, qkv's A */
    if (!h) return us_fail(e, US_ENOMEM, "out of memory");
    int n = 0, r = m->spec.lora.r;
    size_t wb = be->weight_bytes;
    for (int l = 0; l < m->cfg.layers; l++)
        for (int t = 0; t < US_T_COUNT; t++) {
            const us_lora_slot *s = &m->slot[l][t];
            if (!s->on) continue;
            char *w = m->L[l].w[t];
            if (m->fold[t])
                h[n++] = (us_put){w + (size_t)(s->in + m->lora_col[t]) * wb, m->params + s->off_B, m->wld[t], s->out, r,
                                  m->lora_scale};
            if (m->fold_rows[t])
                h[n++] = (us_put){w + (size_t)s->out * m->wld[t] * wb, m->params + s->off_A, m->wld[t], r, s->in, 1.0f};
            if (m->qkv_fold && t == m->lora_lead[US_T_Q]) /* the group's A below the joint q/k/v block */
                h[n++] = (us_put){(char *)m->L[l].w[US_T_Q] + (size_t)qkv_out(&m->cfg) * m->wld[US_T_Q] * wb,
                                  m->params + s->off_A, m->wld[US_T_Q], m->qkv_fold, s->in, 1.0f};
        }
    if (n) {
        m->fold_list = be->alloc(be, (size_t)n * sizeof *h);
        if (m->fold_list) be->upload(be, m->fold_list, h, (size_t)n * sizeof *h);
    }
    free(h);
    if (n && !m->fold_list) return us_fail(e, US_ENOMEM, "out of %s memory", be->name);
    m->n_fold = n;
    return US_OK;
}

/* a comparison knob of the folds: the environment variable set to 0 */
static bool knob_off(const char *name) {
    const char *v = getenv(name);
    return v && !strcmp(v, "0");
}

/* Re-lays the frozen matrices for folding (model.h): q/k/v and gate/up as [out, in + R] (the
 * extra columns start at zero), o and down as [out + r, in + r], folded both ways (US_O_FOLD=0,
 * US_DOWN_FOLD=0: backward only, [out + r, in]). US_LORA_FOLD=0 keeps the
 * separate LoRA products (for comparison); widths not a multiple of 8 do too (16-byte rows for
 * the GPU's products). */
static us_status fold_setup(us_model *m, us_err *e) {
    if (knob_off("US_LORA_FOLD")) return US_OK;
    for (int t = 0; t < US_T_COUNT; t++)
        if (m->fold[t] || m->fold_rows[t]) return US_OK; /* already folded */
    const us_config *c = &m->cfg;
    us_backend *be = m->be;
    const int r = m->spec.lora.r;
    size_t most = 0;
    for (int t = 0; t < US_T_COUNT; t++) {
        int lead = m->lora_lead[t], g = us_target_group(t), in, out;
        us_target_dims(c, t, &in, &out);
        bool normed_input = g == us_target_group(US_T_Q) || g == us_target_group(US_T_GATE);
        if (lead < 0) continue;
        if (normed_input && m->lora_ld[lead] % 8 == 0) {
            m->fold[t] = m->lora_ld[lead];
            m->wld[t] = in + m->fold[t];
        } else if ((t == US_T_O || t == US_T_DOWN) && lead == t && r % 8 == 0 && c->hidden % 8 == 0) {
            m->fold_rows[t] = r;
            m->dres_ld = c->hidden + r;
            /* forward too: u beside the GLU product / the attention output (US_DOWN_FOLD=0, US_O_FOLD=0: not) */
            if (in % 8 == 0 && !knob_off(t == US_T_DOWN ? "US_DOWN_FOLD" : "US_O_FOLD")) {
                m->fold[t] = r;
                m->wld[t] = in + r;
            }
        } else {
            continue;
        }
        most = US_MAX(most, (size_t)in * out);
    }
    if (!most) return US_OK;
    /* q, k and v folded alike: one block of rows, so that backward forms dx from [dq | dk | dv] in
     * one product (step.c); US_QKV_JOINT=0 keeps three blocks */
    m->qkv_joint = m->fold[US_T_Q] && m->fold[US_T_K] && m->fold[US_T_V] && m->wld[US_T_Q] == m->wld[US_T_K] &&
                   m->wld[US_T_K] == m->wld[US_T_V] && !knob_off("US_QKV_JOINT");
    /* ... with the group's A in R rows below it (backward folding; US_QKV_FOLD=0: none) */
    m->qkv_fold = m->qkv_joint && !knob_off("US_QKV_FOLD") ? m->fold[US_T_Q] : 0;
    int qkv_rows[3] = {0};
    for (int t = US_T_Q; t <= US_T_V; t++) {
        int in, out;
        us_target_dims(c, t, &in, &out);
        qkv_rows[t - US_T_Q] = out;
    }
    float *tmp = be->alloc(be, most * 4);
    if (!tmp) return us_fail(e, US_ENOMEM, "out of %s memory for %zu floats", be->name, most);
    us_status st = US_OK;
    for (int l = 0; l < c->layers && !st; l++)
        for (int t = 0; t < US_T_COUNT && !st; t++) {
            if (!m->fold[t] && !m->fold_rows[t]) continue;
            int in, out;
            us_target_dims(c, t, &in, &out);
            size_t extra = (size_t)(out + m->fold_rows[t]) * m->wld[t] - (size_t)out * in;
            void *w;
            if (m->qkv_joint && (t == US_T_K || t == US_T_V)) /* rows of q's block (q comes first) */
                w = (char *)m->L[l].w[US_T_Q] +
                    (size_t)(qkv_rows[0] + (t == US_T_V ? qkv_rows[1] : 0)) * m->wld[t] * be->weight_bytes;
            else if (m->qkv_joint && t == US_T_Q)
                w = be->alloc(be, (size_t)(qkv_out(c) + m->qkv_fold) * m->wld[t] * be->weight_bytes);
            else
                w = be->alloc(be, ((size_t)out * in + extra) * be->weight_bytes);
            if (!w) {
                st = us_fail(e, US_ENOMEM, "out of %s memory for layer %d's %s weights", be->name, l, us_target_name(t));
                break;
            }
            be->weight_to_f32(be, tmp, m->L[l].w[t], (size_t)out * in);
            be->weight_put(be, w, m->wld[t], tmp, out, in, 1.0f);
            if (m->fold[t])
                be->weight_put(be, (char *)w + (size_t)in * be->weight_bytes, m->wld[t], NULL, out, m->fold[t], 0.0f);
            if (m->fold_rows[t])
                be->weight_put(be, (char *)w + (size_t)out * m->wld[t] * be->weight_bytes, m->wld[t], NULL,
                               m->fold_rows[t], m->wld[t], 0.0f);
            if (m->qkv_fold && t == US_T_Q) { /* the A rows start at zero */
                be->weight_put(be, (char *)w + (size_t)qkv_out(c) * m->wld[t] * be->weight_bytes, m->wld[t], NULL,
                               m->qkv_fold, m->wld[t], 0.0f);
                extra += (size_t)m->qkv_fold * m->wld[t];
            }
            be->free(be, m->L[l].w[t]);
            m->L[l].w[t] = w;
            m->weight_bytes += extra * be->weight_bytes;
            if (m->qkv_joint && t == US_T_V) m->qkv_joint_layers = l + 1;
        }
    be->free(be, tmp);
    return st ? st : fold_list(m, e);
}

void us_model_fold_refresh(us_model *m) {
    if (m->n_fold) m->be->weight_put_list(m->be, m->fold_list, m->n_fold);
}

static us_status setup_lora(us_model *m, uint64_t seed, us_err *e) {
    const us_config *c = &m->cfg;
    const us_lora_config *lc = &m->spec.lora;
    if (lc->r <= 0 || lc->r > 4096) return us_fail(e, US_EINVAL, "--lora-r %d: must be in 1..4096", lc->r);
    if (!lc->targets) return us_fail(e, US_EINVAL, "--lora-targets: no target modules");
    m->lora_scale = (float)us_lora_scaling(lc);
    m->slot = calloc((size_t)c->layers, sizeof *m->slot);
    m->plist = calloc((size_t)c->layers * US_T_COUNT * 2, sizeof *m->plist);
    if (!m->slot || !m->plist) return us_fail(e, US_ENOMEM, "out of memory");
    /* groups: lead, column and width of every adapted target (targets are the same in every layer) */
    for (int t = 0; t < US_T_COUNT; t++) m->lora_lead[t] = -1, m->lora_col[t] = m->lora_ld[t] = 0;
    for (int t = 0; t < US_T_COUNT; t++) { /* every target of a group with an adapted member gets the lead */
        int n = 0, lead = -1;
        for (int u = 0; u < US_T_COUNT; u++)
            if (us_target_group(u) == us_target_group(t) && (lc->targets & (1u << u))) {
                if (lead < 0) lead = u;
                if (u < t) m->lora_col[t] += lc->r;
                n++;
            }
        m->lora_lead[t] = lead;
        m->lora_ld[t] = n * lc->r;
    }
    size_t off = 0;
    char name[200];
    for (int l = 0; l < c->layers; l++) {
        /* each group's A matrices back to back (one [n*r, in] block), then the B matrices */
        for (int t = 0; t < US_T_COUNT; t++) {
            if (!(lc->targets & (1u << t))) continue;
            us_lora_slot *s = &m->slot[l][t];
            s->on = true;
            us_target_dims(c, t, &s->in, &s->out);
            us_adapter_tensor_name(name, sizeof name, l, t, 0);
            s->off_A = add_param_at(m, name, lc->r, s->in, &off, m->lora_lead[t] != t)->off;
        }
        for (int t = 0; t < US_T_COUNT; t++) {
            if (!(lc->targets & (1u << t))) continue;
            us_lora_slot *s = &m->slot[l][t];
            us_adapter_tensor_name(name, sizeof name, l, t, 1);
            s->off_B = add_param(m, name, s->out, lc->r, &off)->off;
        }
    }
    off = (off + 15) / 16 * 16;
    m->n_params = off;
    float *h = calloc(off ? off : 1, sizeof(float));
    if (!h) return us_fail(e, US_ENOMEM, "out of memory");
    /* A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform with a = sqrt(5), as PEFT), B = 0 */
    for (int l = 0; l < c->layers; l++)
        for (int t = 0; t < US_T_COUNT; t++) {
            us_lora_slot *s = &m->slot[l][t];
            if (!s->on) continue;
            float bound = 1.0f / sqrtf((float)s->in);
            size_t n = (size_t)lc->r * s->in;
            for (size_t i = 0; i < n; i++)
                h[s->off_A + i] = bound * (2.0f * us_rand_uniform(seed, 1000u + (uint64_t)l * US_T_COUNT + t, i) - 1.0f);
        }
    m->params = upload_f32(m->be, h, off);
    free(h);
    if (!m->params) return us_fail(e, US_ENOMEM, "out of device memory for %zu LoRA parameters", off);
    return fold_setup(m, e);
}

/* Full fine-tuning: every weight gets an f32 master in the flat buffer. Vectors are used from
 * there directly (they are f32 on every backend); matrices keep their weight-format copy, which
 * the trainer refreshes after each update (us_model_sync_weights). */
static us_status setup_full(us_model *m, us_err *e) {
    const us_config *c = &m->cfg;
    us_backend *be = m->be;
    size_t cap = 4 + (size_t)c->layers * (2 * US_T_COUNT + 2);
    m->plist = calloc(cap, sizeof *m->plist);
    if (!m->plist) return us_fail(e, US_ENOMEM, "out of memory");
    size_t off = 0;
    char name[256];
    /* pass 1: layout */
    add_param(m, "model.embed_tokens.weight", c->vocab, c->hidden, &off)->weight = m->embed;
    for (int l = 0; l < c->layers; l++) {
        us_layer_weights *L = &m->L[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_param(m, name, c->hidden, 0, &off);
        for (int t = 0; t < US_T_COUNT; t++) {
            int in, o;
            us_target_dims(c, t, &in, &o);
            weight_name(name, sizeof name, l, t, "weight");
            add_param(m, name, o, in, &off)->weight = L->w[t];
            if (L->b[t]) {
                weight_name(name, sizeof name, l, t, "bias");
                add_param(m, name, o, 0, &off);
            }
        }
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_param(m, name, c->hidden, 0, &off);
    }
    add_param(m, "model.norm.weight", c->hidden, 0, &off);
    if (m->lm_head != m->embed) add_param(m, "lm_head.weight", c->vocab, c->hidden, &off)->weight = m->lm_head;
    m->n_params = off;
    m->params = be->alloc(be, off * 4);
    m->grads = be->alloc(be, off * 4);
    if (!m->params || !m->grads) return us_fail(e, US_ENOMEM, "out of device memory for %zu parameters", off);
    /* pass 2: fill masters, point vectors and gradients into the flat buffers */
    size_t i = 0;
#define NEXT_P (&m->plist[i++])
    us_param *p = NEXT_P;
    be->weight_to_f32(be, m->params + p->off, m->embed, p->numel);
    m->g_embed = m->grads + p->off;
    for (int l = 0; l < c->layers; l++) {
        us_layer_weights *L = &m->L[l];
        p = NEXT_P;
        be->copy(be, m->params + p->off, L->ln1, p->numel * 4);
        be->free(be, L->ln1);
        L->ln1 = m->params + p->off;
        L->gln1 = m->grads + p->off;
        for (int t = 0; t < US_T_COUNT; t++) {
            p = NEXT_P;
            be->weight_to_f32(be, m->params + p->off, L->w[t], p->numel);
            L->gw[t] = m->grads + p->off;
            if (L->b[t]) {
                p = NEXT_P;
                be->copy(be, m->params + p->off, L->b[t], p->numel * 4);
                be->free(be, L->b[t]);
                L->b[t] = m->params + p->off;
                L->gb[t] = m->grads + p->off;
            }
        }
        p = NEXT_P;
        be->copy(be, m->params + p->off, L->ln2, p->numel * 4);
        be->free(be, L->ln2);
        L->ln2 = m->params + p->off;
        L->gln2 = m->grads + p->off;
    }
    p = NEXT_P;
    be->copy(be, m->params + p->off, m->norm_f, p->numel * 4);
    be->free(be, m->norm_f);
    m->norm_f = m->params + p->off;
    m->g_norm_f = m->grads + p->off;
    if (m->lm_head != m->embed) {
        p = NEXT_P;
        be->weight_to_f32(be, m->params + p->off, m->lm_head, p->numel);
        m->g_lm_head = m->grads + p->off;
    } else {
        m->g_lm_head = m->g_embed;
    }
#undef NEXT_P
    be->zero(be, m->grads, off * 4);
    return US_OK;
}

us_status us_model_setup_training(us_model *m, const us_train_spec *spec, uint64_t seed, us_err *e) {
    m->spec = *spec;
    us_status st = spec->full ? setup_full(m, e) : setup_lora(m, seed, e);
    if (st) return st;
    if (!m->grads) {
        m->grads = m->be->alloc(m->be, m->n_params * 4);
        if (!m->grads) return us_fail(e, US_ENOMEM, "out of device memory for gradients");
        m->be->zero(m->be, m->grads, m->n_params * 4);
    }
    return US_OK;
}

void us_model_sync_weights(us_model *m) {
    for (size_t i = 0; i < m->n_plist; i++)
        if (m->plist[i].weight) m->be->weight_from_f32(m->be, m->plist[i].weight, m->params + m->plist[i].off, m->plist[i].numel);
}

us_status us_model_load_adapter(us_model *m, const char *dir, us_err *e) {
    us_adapter *a;
    us_status st = us_adapter_open(dir, &a, e);
    if (st) return st;
    const us_lora_config *ac = us_adapter_config(a);
    if (m->spec.full || ac->r != m->spec.lora.r || ac->targets != m->spec.lora.targets) {
        us_adapter_close(a);
        return us_fail(e, US_EINVAL, "%s: adapter (r=%d) does not match the training setup (r=%d)", dir, ac->r,
                       m->spec.lora.r);
    }
    float *h = malloc(m->n_params * 4 + 4);
    if (!h) st = us_fail(e, US_ENOMEM, "out of memory");
    else memset(h, 0, m->n_params * 4);
    for (int l = 0; l < m->cfg.layers && !st; l++)
        for (int t = 0; t < US_T_COUNT && !st; t++) {
            us_lora_slot *s = &m->slot[l][t];
            if (!s->on) continue;
            st = us_adapter_read(a, l, t, 0, ac->r, s->in, h + s->off_A, e);
            if (!st) st = us_adapter_read(a, l, t, 1, s->out, ac->r, h + s->off_B, e);
        }
    if (!st) m->be->upload(m->be, m->params, h, m->n_params * 4);
    free(h);
    us_adapter_close(a);
    return st;
}

us_status us_model_save_adapter(us_model *m, const char *dir, const char *base_model, us_err *e) {
    float *h = malloc(m->n_params * 4 + 4);
    us_adapter_pair *pairs = calloc((size_t)m->cfg.layers * US_T_COUNT, sizeof *pairs);
    us_status st = US_OK;
    if (!h || !pairs) {
        st = us_fail(e, US_ENOMEM, "out of memory");
    } else {
        m->be->download(m->be, h, m->params, m->n_params * 4);
        size_t n = 0;
        for (int l = 0; l < m->cfg.layers; l++)
            for (int t = 0; t < US_T_COUNT; t++) {
                us_lora_slot *s = &m->slot[l][t];
                if (s->on)
                    pairs[n++] = (us_adapter_pair){l, t, s->in, s->out, h + s->off_A, h + s->off_B};
            }
        st = us_adapter_save(dir, &m->spec.lora, base_model, pairs, n, e);
    }
    free(h);
    free(pairs);
    return st;
}

us_status us_model_save_full(us_model *m, const char *dir, const char *src_dir, us_err *e) {
    if (mkdir(dir, 0777) != 0) {
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return us_fail(e, US_EIO, "%s: cannot create directory", dir);
    }
    float *h = malloc(m->n_params * 4 + 4);
    us_st_write_tensor *ts = calloc(m->n_plist, sizeof *ts);
    us_status st = US_OK;
    if (!h || !ts) {
        st = us_fail(e, US_ENOMEM, "out of memory");
        goto done;
    }
    m->be->download(m->be, h, m->params, m->n_params * 4);
    for (size_t i = 0; i < m->n_plist; i++) {
        us_param *p = &m->plist[i];
        ts[i] = (us_st_write_tensor){.name = p->name, .dtype = US_DT_F32, .ndim = p->ndim, .data = h + p->off};
        ts[i].shape[0] = p->shape[0];
        ts[i].shape[1] = p->shape[1];
    }
    char path[4096];
    const char *meta[] = {"format", "pt"};
    if (!us_path_join(path, sizeof path, dir, "model.safetensors")) {
        st = us_fail(e, US_EINVAL, "%s: path too long", dir);
        goto done;
    }
    st = us_st_write(path, ts, m->n_plist, meta, 1, e);
    char src[4096];
    if (!st && src_dir && us_path_join(src, sizeof src, src_dir, "config.json") && us_path_join(path, sizeof path, dir, "config.json"))
        st = us_copy_file_atomic(src, path, e);
done:
    free(h);
    free(ts);
    return st;
}
