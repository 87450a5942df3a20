/* plan.c — the saved-activation plan: what backward needs, given which weights train.
 *
 * Walk the blocks in forward order carrying one flag, "something before this point trains".
 * For an attention block the core backward (through softmax, RoPE, q/k/v) runs only if its
 * q/k/v adapters train or the flag is set; then it needs the rotated q, k, v, the output and the
 * log-sum-exp, plus the layer input and its 1/rms to rebuild the normed input. The attention
 * output alone is kept when only o_proj trains there. For the MLP, the gate/up backward runs
 * only when gate/up train or the flag is set; it needs the gate (for ReLU: relu(gate), with the
 * gate's derivative as 1-bit packed mask) and up projections, and the mid-layer residual with
 * its 1/rms. When only down_proj trains, just the down_proj input is kept. The normed inputs and
 * the MLP product are never stored: backward rebuilds them elementwise. Nothing of the LM head
 * is stored: its backward runs inside the forward, chunk by chunk.
 *
 * The same walk, given a token count, lays out the arena: per-layer slots for what is kept and
 * one set of scratch buffers shared by all layers for the rest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

const char *us_save_kind_name(int kind) {
    static const char *n[US_SAVE_KINDS] = {"residual stream", "norm 1/rms", "q, k, v (rotated)", "attention output",
                                           "attention lse", "LoRA x·A", "MLP gate, up", "ReLU mask bits",
                                           "down_proj input"};
    return kind >= 0 && kind < US_SAVE_KINDS ? n[kind] : "?";
}

static bool slot_on(const us_model *m, int l, int t) { return !m->spec.full && m->slot && m->slot[l][t].on; }

static void compute_flags(us_model *m) {
    const us_config *c = &m->cfg;
    bool full = m->spec.full;
    bool before = full; /* the embedding trains with full fine-tuning */
    m->plan.first_layer_bwd = c->layers;
    for (int l = 0; l < c->layers; l++) {
        us_layer_plan *p = &m->plan.layer[l];
        bool qkv = full || slot_on(m, l, US_T_Q) || slot_on(m, l, US_T_K) || slot_on(m, l, US_T_V);
        bool o = full || slot_on(m, l, US_T_O);
        p->prior_attn = before;
        p->attn_bwd = before || qkv;
        p->save_att = p->attn_bwd || o;
        before = before || qkv || o;
        bool gu = full || slot_on(m, l, US_T_GATE) || slot_on(m, l, US_T_UP);
        bool down = full || slot_on(m, l, US_T_DOWN);
        p->prior_mlp = before;
        p->glu_bwd = before || gu;
        p->save_a = !p->glu_bwd && down;
        before = before || gu || down;
        if ((p->save_att || p->glu_bwd || p->save_a) && m->plan.first_layer_bwd == c->layers) m->plan.first_layer_bwd = l;
    }
}

/* A bump allocator over the arena; with base == NULL it only measures. */
typedef struct bump {
    char *base;
    size_t off;
} bump;

static void *take(bump *b, size_t bytes) {
    size_t at = b->off;
    b->off += (bytes + 255) / 256 * 256;
    return b->base ? b->base + at : NULL;
}

/* Where one layer keeps its tensors (true: a per-layer slot, else shared scratch). */
typedef struct keep_flags {
    int mode; /* us_layer_mode, or US_RECOMPUTE_NONE when not training */
    int attk; /* us_layer_attn, or US_ATT_REBUILD when not training */
    bool attn, mlp, gate, up, xmid, small, xin, att, lse, a;
} keep_flags;

/* The memory mode of layer l. US_RECOMPUTE_LAYER applies to every layer; otherwise, from the
 * bottom, the first offload_mlp layers keep gate/up on the host, the next recompute_layers
 * rebuild their MLP (all the rest when 0, with US_RECOMPUTE_MLP), the next up_layers rebuild only
 * up, and the rest keep them. The offloaded layers lie lowest: their copies out start earliest in
 * the forward, they come back last in backward, and the most layers lie between them and the
 * keeping layers whose device slots they share (plan.c layout). */
int us_layer_mode(const us_model *m, int l) {
    if (m->recompute == US_RECOMPUTE_LAYER) return US_RECOMPUTE_LAYER;
    int L = m->cfg.layers, off = US_MIN(m->offload_mlp, L);
    /* rebuilding or offloading gate/up only matters where the gate/up backward runs */
    bool gu = m->plan.layer && m->plan.layer[l].glu_bwd;
    if (l < off) return gu ? US_OFFLOAD_MLP : US_RECOMPUTE_NONE;
    int kmlp = m->recompute != US_RECOMPUTE_MLP ? 0 : m->recompute_layers > 0 ? m->recompute_layers : L;
    if (l < off + kmlp) return US_RECOMPUTE_MLP;
    if (l < off + kmlp + m->up_layers) return gu ? US_RECOMPUTE_UP : US_RECOMPUTE_NONE;
    return US_RECOMPUTE_NONE;
}

/* a layer whose rebuild could take a kept attention output instead of re-running attention */
static bool attn_keepable(const us_model *m, int l) {
    return l >= m->plan.first_layer_bwd && m->plan.layer[l].save_att;
}

int us_layer_attn(const us_model *m, int l) {
    if (m->recompute != US_RECOMPUTE_LAYER || !m->plan.layer || !attn_keepable(m, l)) return US_ATT_REBUILD;
    int rank = 0; /* keepable layers above l */
    for (int j = m->cfg.layers - 1; j > l; j--) rank += attn_keepable(m, j);
    return rank < m->keep_attn ? US_ATT_DEVICE : rank < m->keep_attn + m->offload_attn ? US_ATT_HOST : US_ATT_REBUILD;
}

static keep_flags layer_keeps(const us_model *m, int l, bool train) {
    const us_layer_plan *p = &m->plan.layer[l];
    int mode = train ? us_layer_mode(m, l) : US_RECOMPUTE_NONE;
    bool layer_bwd = train && l >= m->plan.first_layer_bwd;
    keep_flags k;
    k.mode = mode;
    k.attn = train && p->attn_bwd && mode != US_RECOMPUTE_LAYER;
    /* gate, bits, 1/rms on the device; gate and up in this layer's slots (not the host's) */
    k.mlp = train && p->glu_bwd && (mode == US_RECOMPUTE_NONE || mode == US_RECOMPUTE_UP || mode == US_OFFLOAD_MLP);
    k.gate = k.mlp && mode != US_OFFLOAD_MLP;
    k.up = k.gate && mode != US_RECOMPUTE_UP;
    k.xmid = k.mlp || (train && (p->glu_bwd || p->save_a) && mode == US_RECOMPUTE_MLP);
    k.small = train && mode != US_RECOMPUTE_LAYER; /* LoRA x·A */
    k.xin = k.attn || (layer_bwd && mode == US_RECOMPUTE_LAYER && !m->offload);
    k.attk = train ? us_layer_attn(m, l) : US_ATT_REBUILD;
    k.att = train && p->save_att && (mode != US_RECOMPUTE_LAYER || k.attk == US_ATT_DEVICE);
    k.lse = k.attn || k.attk != US_ATT_REBUILD;
    k.a = train && p->save_a && mode == US_RECOMPUTE_NONE;
    return k;
}

/* Lays out saved slots (counted into per-token bytes) and scratch for T tokens.
 * Memory modes move tensors from slots to scratch: US_RECOMPUTE_MLP keeps the mid-layer
 * residual and rebuilds gate/up (in chunks of mlp_rows) in backward; US_RECOMPUTE_LAYER keeps
 * only each layer's input and re-runs the layer's forward (attention whole, MLP in chunks) just
 * before its backward; with offload even the layer inputs live in pinned host memory. A scratch
 * buffer exists only when some layer does not keep that tensor. */
static void layout(us_model *m, int T, bool train, bump *b, double per_tok[US_SAVE_KINDS]) {
    const us_config *c = &m->cfg;
    size_t A = m->be->act_bytes, D = (size_t)c->hidden, F = (size_t)c->inter, hd = (size_t)c->head_dim;
    size_t H = (size_t)c->heads, KV = (size_t)c->kv_heads, r = m->spec.full ? 0 : (size_t)m->spec.lora.r;
    size_t words = ((size_t)F + 31) / 32;
    size_t tt = (size_t)T, mr = (size_t)m->mlp_rows;
    /* rows of the attention output and of the GLU product: with o's / down's folded LoRA columns */
    size_t OA = (size_t)m->wld[US_T_O] * A, FA = (size_t)m->wld[US_T_DOWN] * A;
    struct us_scratch *s = &m->s;
    /* which scratch some layer needs: the final output's buffer always, the rest when not kept */
    bool need_res[2] = {false, false}, need_mid = false, need_attn = false, need_att = false, need_mlp = false;
    bool need_up = false;  /* a layer rebuilding only up: a whole [T, inter] buffer */
    bool need_att2 = false; /* attention outputs on the host: two device buffers, by layer parity */
    double host = 0;       /* bytes per token in pinned host memory */
    /* The gate/up pool (model.h mlp_prev): the layers that keep gate and up on the device or
     * offload them, in forward order, take P device slots round robin, P = the keeping layers
     * (at least 2 when some offload): a keeping layer's slot is its own saved pair, which the
     * offloaded layers below it used first (and get back, in backward, once it is done). */
    int users = 0, kept = 0, *user_layer = m->mlp_prev ? m->mlp_prev + 2 * c->layers : NULL; /* measure()'s block */
    for (int l = 0; m->mlp_prev && l < c->layers; l++) m->mlp_prev[l] = -1;
    bool need_u[US_T_COUNT] = {false};
    need_res[c->layers % 2] = true;
    size_t arows = mr; /* rows of the MLP product buffers: a layer that keeps its MLP runs it whole */
    for (int l = 0; l < c->layers; l++) {
        keep_flags k = layer_keeps(m, l, train);
        if (k.mode == US_RECOMPUTE_NONE || k.mode == US_RECOMPUTE_UP || k.mode == US_OFFLOAD_MLP) arows = tt;
        need_up |= k.mode == US_RECOMPUTE_UP;
        if (k.mode == US_OFFLOAD_MLP) host += 2.0 * (double)(F * A);
        if (k.mode == US_OFFLOAD_MLP || k.up) { /* k.up: both kept (a layer rebuilding up keeps only the gate) */
            if (user_layer) user_layer[users] = l;
            users++, kept += k.up;
        }
        if (train && m->offload) host += (double)(D * A);
        if (k.attk == US_ATT_HOST) host += (double)(OA), need_att2 = true;
        need_res[l % 2] |= !k.xin;
        need_mid |= !k.xmid;
        need_attn |= !k.attn;
        need_att |= !k.att;
        need_mlp |= !k.mlp;
        for (int t = 0; t < US_T_COUNT; t++) need_u[t] |= !k.small && !(train && t == US_T_DOWN);
    }
#define SCRATCH(need, bytes) ((need) ? take(b, (bytes)) : NULL)
    void *res[2] = {SCRATCH(need_res[0], tt * D * A), SCRATCH(need_res[1], tt * D * A)};
    void *mid = SCRATCH(need_mid, tt * D * A);
    void *sq = SCRATCH(need_attn, tt * H * hd * A), *sk = SCRATCH(need_attn, tt * KV * hd * A);
    void *sv = SCRATCH(need_attn, tt * KV * hd * A), *satt = SCRATCH(need_att, tt * OA);
    /* a host-kept output comes back into its parity's buffer while the layer above uses the other */
    void *satt2 = SCRATCH(need_att2, tt * OA);
    void *sg = SCRATCH(need_mlp, mr * F * A), *su = SCRATCH(need_mlp || need_up, (need_up ? tt : mr) * F * A);
    float *srstd1 = SCRATCH(need_attn, tt * 4), *srstd2 = SCRATCH(need_mlp, tt * 4), *slse = SCRATCH(need_attn, tt * H * 4);
    uint32_t *sbits = SCRATCH(need_mlp && c->act == US_ACT_RELU, mr * words * 4);
    int pool = users > kept ? US_MIN(users, US_MAX(kept, 2)) : kept; /* device slots of the gate/up pool */
    void *pool_g[2] = {NULL, NULL}, *pool_u[2] = {NULL, NULL}; /* slots no keeping layer owns (pool - kept <= 2) */
    for (int i = 0; i < pool - kept; i++) pool_g[i] = take(b, tt * F * A), pool_u[i] = take(b, tt * F * A);
    m->plan.host_per_token = host;
    float *su_lora[US_T_COUNT] = {0}; /* per LoRA group (at its lead target): u of all its members */
    size_t ldmax = 1;
    for (int t = 0; t < US_T_COUNT; t++)
        if (r && m->slot && m->slot[0][t].on && m->lora_lead[t] == t) {
            su_lora[t] = SCRATCH(need_u[t], tt * (size_t)m->lora_ld[t] * 4);
            ldmax = US_MAX(ldmax, (size_t)m->lora_ld[t]);
        }
#undef SCRATCH
    size_t hp = US_MAX(D, (size_t)US_MAX(m->wld[US_T_Q], m->wld[US_T_GATE])); /* + folded LoRA columns */
    s->h = take(b, tt * hp * A);
    s->rstd = take(b, tt * 4);
    if (train) {
        s->dres = take(b, tt * (size_t)m->dres_ld * A); /* + du of a folded o/down (model.h) */
        s->dh = take(b, tt * D * A);
    }
    /* the layer scratch below is dead while the LM head runs (after the last layer's forward,
     * before the first backward), so the logits chunk lies over it: a chunk of at least 64 MiB,
     * more rows when that scratch is larger (fewer, more efficient head products) */
    size_t group = b->off;
    s->a = take(b, arows * FA);
    m->qkv_merge = false, s->dqkv = NULL;
    if (train) {
        s->dq = take(b, tt * H * hd * A);
        s->dk = take(b, tt * KV * hd * A);
        s->dv = take(b, tt * KV * hd * A);
        size_t datt_at = b->off;
        s->datt = take(b, tt * H * hd * A);
        s->da = take(b, arows * F * A);
        /* [dq | dk | dv (| du)] rows for the one q/k/v input-gradient product (model.h qkv_joint,
         * qkv_fold): over datt and da, dead by then (attention's backward has read datt, the
         * MLP's is done), when they are large enough; else (da a rebuilt MLP's chunk) three
         * products, no more memory */
        size_t room = b->off - datt_at, qkvw = (size_t)(H + 2 * KV) * hd;
        m->qkv_ld = (int)qkvw + (room >= tt * (qkvw + (size_t)m->qkv_fold) * A ? m->qkv_fold : 0);
        m->qkv_merge = m->qkv_joint && room >= tt * (size_t)m->qkv_ld * A;
        s->dqkv = m->qkv_merge && b->base ? b->base + datt_at : NULL;
        s->lora = take(b, tt * ldmax * 4); /* du of one LoRA group */
    }
    size_t row = (size_t)c->vocab * A, room = US_MAX((size_t)64 << 20, b->off - group);
    size_t fit = US_MAX((size_t)1, US_MIN(tt, room / row)), parts = (tt + fit - 1) / fit;
    /* as many chunks as the room needs, of equal rows (no small last chunk: the head's products
     * over few rows run far below the GEMM rate) */
    m->head_chunk = (int)US_MAX((size_t)1, US_MIN(tt, m->head_chunk_rows ? (size_t)m->head_chunk_rows : (tt + parts - 1) / parts));
    s->logits = b->base ? b->base + group : NULL;
    b->off = US_MAX(b->off, group + ((size_t)m->head_chunk * row + 255) / 256 * 256);
    s->loss = take(b, 64);
    /* per-layer slots */
    for (int l = 0; l < c->layers; l++) {
        us_layer_acts *a = &m->acts[l];
        keep_flags k = layer_keeps(m, l, train);
#define SLOT(keep, kind, bytes_per_tok, scratch) \
    ((keep) ? (per_tok[kind] += (double)(bytes_per_tok), take(b, tt * (bytes_per_tok))) : (void *)(scratch))
        /* the layer input is where the previous layer (or the embedding) writes its output: a
         * saved slot, or one of two scratch buffers alternating by layer parity */
        a->xin = SLOT(k.xin, US_SAVE_RESIDUAL, D * A, res[l % 2]);
        a->rstd1 = SLOT(k.attn, US_SAVE_NORM_STATS, 4, srstd1);
        a->q = SLOT(k.attn, US_SAVE_QKV, H * hd * A, sq);
        a->k = SLOT(k.attn, US_SAVE_QKV, KV * hd * A, sk);
        a->v = SLOT(k.attn, US_SAVE_QKV, KV * hd * A, sv);
        a->lse = SLOT(k.lse, US_SAVE_ATTN_LSE, H * 4, slse);
        a->att = SLOT(k.att, US_SAVE_ATTN_OUT, OA, satt2 && l % 2 ? satt2 : satt);
        a->xmid = SLOT(k.xmid, US_SAVE_RESIDUAL, D * A, mid);
        a->rstd2 = SLOT(k.mlp, US_SAVE_NORM_STATS, 4, srstd2);
        a->g = SLOT(k.gate, US_SAVE_MLP, F * A, sg);
        a->up = SLOT(k.up, US_SAVE_MLP, F * A, su);
        a->bits = SLOT(k.mlp && c->act == US_ACT_RELU, US_SAVE_MLP_MASK, words * 4, sbits);
        a->a = SLOT(k.a, US_SAVE_MLP_DOWN_IN, FA, s->a);
        for (int t = 0; t < US_T_COUNT; t++) /* a group's block at its lead; members are column blocks of it */
            /* down_proj's x·A stays kept even when recomputing layers: the rebuilt MLP stops
             * before the down projection, which backward does not need to redo */
            a->u[t] = slot_on(m, l, t) && m->lora_lead[t] == t
                          ? SLOT(k.small || (train && t == US_T_DOWN), US_SAVE_LORA_U, (size_t)m->lora_ld[t] * 4, su_lora[t])
                          : NULL;
        for (int t = 0; t < US_T_COUNT; t++)
            if (slot_on(m, l, t) && m->lora_lead[t] != t && a->u[m->lora_lead[t]])
                a->u[t] = a->u[m->lora_lead[t]] + m->lora_col[t];
#undef SLOT
    }
    /* the pool: user i takes slot i % pool after user i - pool, the slot's last user owns it (the
     * last `pool` users: the keeping layers, then offloading ones on the two unowned slots) */
    for (int i = users - 1; user_layer && i >= 0; i--) {
        int l = user_layer[i], owner = i + (users - 1 - i) / pool * pool;
        us_layer_acts *a = &m->acts[l], *o = &m->acts[user_layer[owner]];
        m->mlp_prev[l] = i >= pool ? user_layer[i - pool] : -1;
        if (us_layer_mode(m, user_layer[owner]) == US_OFFLOAD_MLP) { /* an unowned slot */
            int spare = (users - 1 - owner) - kept;                  /* 0 or 1 */
            a->g = pool_g[spare], a->up = pool_u[spare];
        } else if (l != user_layer[owner]) {
            a->g = o->g, a->up = o->up;
        }
    }
    s->xfin = res[c->layers % 2];
}

/* every tensor the forward produces, once each (attention probabilities excluded, as a fused
 * attention kernel would not form them): the figure a framework that saves everything needs */
static double store_all_per_token(const us_model *m) {
    const us_config *c = &m->cfg;
    double A = (double)m->be->act_bytes, D = c->hidden, F = c->inter, hd = c->head_dim, H = c->heads,
           KV = c->kv_heads;
    double per_layer = D * A * 4                            /* x_in, normed x, x_mid, normed x_mid */
                       + 8                                  /* two 1/rms */
                       + (H + 2 * KV) * hd * A              /* q, k, v */
                       + (H + KV) * hd * A                  /* rotated q, k */
                       + H * hd * A + H * 4                 /* attention output, lse */
                       + F * A * 4;                         /* gate, act(gate), up, product */
    double lora = 0;
    if (!m->spec.full && m->slot)
        for (int t = 0; t < US_T_COUNT; t++)
            if (m->slot[0][t].on) lora += m->spec.lora.r * A;
    return c->layers * (per_layer + lora) + D * A * 2 + (double)c->vocab * (A + 4); /* final norm, logits */
}

/* Flags, chunk sizes and the measured layout for max_tokens; returns the arena's bytes. */
static us_status measure(us_model *m, int max_tokens, size_t *bytes, us_err *e) {
    const us_config *c = &m->cfg;
    us_backend *be = m->be;
    if (max_tokens <= 0) return us_fail(e, US_EINVAL, "no tokens per step");
    free(m->plan.layer);
    free(m->acts);
    free(m->mlp_prev);
    m->plan.layer = calloc((size_t)c->layers, sizeof *m->plan.layer);
    m->acts = calloc((size_t)c->layers, sizeof *m->acts);
    /* mlp_prev, mlp_ticket, layout's pool users, att_ticket */
    m->mlp_prev = calloc(4 * (size_t)c->layers, sizeof *m->mlp_prev);
    if (!m->plan.layer || !m->acts || !m->mlp_prev) return us_fail(e, US_ENOMEM, "out of memory");
    m->mlp_ticket = m->mlp_prev + c->layers;
    m->att_ticket = m->mlp_prev + 3 * c->layers;
    compute_flags(m);
    bool train = m->params != NULL;
    /* MLP chunk when rebuilding: its four [rows, inter] buffers (gate, up, product, its gradient)
     * within 256 MiB unless asked otherwise */
    size_t chunk = m->mlp_chunk_rows ? (size_t)m->mlp_chunk_rows
                                     : US_MAX((size_t)256, ((size_t)256 << 20) / (4 * (size_t)c->inter * be->act_bytes));
    m->mlp_rows = (train && m->recompute) ? (int)US_MIN((size_t)max_tokens, chunk) : max_tokens;
    if (m->recompute_layers >= c->layers) m->recompute_layers = 0; /* every layer */
    double per_tok[US_SAVE_KINDS] = {0};
    bump meas = {0};
    layout(m, max_tokens, train, &meas, per_tok);
    memcpy(m->plan.bytes_per_token, per_tok, sizeof per_tok);
    m->plan.total_per_token = 0;
    for (int k = 0; k < US_SAVE_KINDS; k++) m->plan.total_per_token += per_tok[k];
    m->plan.store_all_per_token = store_all_per_token(m);
    *bytes = meas.off;
    us_attn_shape sh = {1, max_tokens, c->heads, c->kv_heads, c->head_dim, 1.0f, 0};
    m->backend_scratch = be->scratch_bytes ? be->scratch_bytes(be, max_tokens, &sh) : 0;
    return US_OK;
}

us_status us_model_step_bytes(us_model *m, int tokens, size_t *bytes, us_err *e) {
    us_status st = measure(m, tokens, bytes, e);
    m->max_tokens = 0; /* the layout is not allocated: prepare again before a step */
    return st;
}

static size_t embed_bytes(const us_model *m) { return (size_t)m->cfg.vocab * m->cfg.hidden * m->be->weight_bytes; }

size_t us_model_device_weight_bytes(const us_model *m) {
    if (m->embed_host == m->embed_on_host) return m->weight_bytes;
    return m->embed_host ? m->weight_bytes - embed_bytes(m) : m->weight_bytes + embed_bytes(m);
}

/* Moves the embedding table to pinned host memory or back, as the memory mode wants. */
static us_status place_embedding(us_model *m, us_err *e) {
    us_backend *be = m->be;
    if (m->embed_host == m->embed_on_host) return US_OK;
    size_t n = embed_bytes(m);
    void *to = m->embed_host ? be->host_alloc(be, n) : be->alloc(be, n);
    if (!to)
        return us_fail(e, US_ENOMEM, "cannot move the embedding table (%.1f MiB) to %s memory", n / 1048576.0,
                       m->embed_host ? "pinned host" : be->name);
    if (m->embed_host) be->download(be, to, m->embed, n), be->free(be, m->embed);
    else be->upload(be, to, m->embed, n), be->host_free(be, m->embed);
    m->embed = to;
    m->embed_on_host = m->embed_host;
    m->weight_bytes = m->embed_host ? m->weight_bytes - n : m->weight_bytes + n;
    return US_OK;
}

/* Which layers keep a tensor in pinned host memory (training only). */
static bool xin_on_host(const us_model *m, int l) { return m->params && m->offload; }
static bool mlp_on_host(const us_model *m, int l) { return m->params && us_layer_mode(m, l) == US_OFFLOAD_MLP; }
static bool att_on_host(const us_model *m, int l) { return m->params && us_layer_attn(m, l) == US_ATT_HOST; }

/* Frees what the per-layer array *bufs holds, then pins `bytes` for each layer where on_host()
 * holds (the array made on first use). flag and what name the option and the tensor in errors. */
static us_status pin_layers(us_model *m, void ***bufs, bool (*on_host)(const us_model *, int), size_t bytes,
                            const char *flag, const char *what, int max_tokens, us_err *e) {
    us_backend *be = m->be;
    int L = m->cfg.layers, n = 0;
    for (int l = 0; *bufs && l < L; l++) be->host_free(be, (*bufs)[l]), (*bufs)[l] = NULL;
    for (int l = 0; l < L; l++) n += on_host(m, l);
    if (!n) return US_OK;
    if (!be->host_alloc) return us_fail(e, US_EUNSUPPORTED, "%s: the %s backend cannot offload", flag, be->name);
    if (!*bufs && !(*bufs = calloc((size_t)L, sizeof **bufs))) return us_fail(e, US_ENOMEM, "out of memory");
    for (int l = 0; l < L; l++)
        if (on_host(m, l) && !((*bufs)[l] = be->host_alloc(be, bytes)))
            return us_fail(e, US_ENOMEM,
                           "%s: cannot pin %.1f GiB of host memory for %s (the plan pins %.1f GiB in all: %.0f bytes "
                           "per token); lower --seq-len or --batch, or offload fewer layers",
                           flag, (double)n * bytes / (1 << 30), what, m->plan.host_per_token * max_tokens / (1 << 30),
                           m->plan.host_per_token);
    return US_OK;
}

us_status us_model_prepare(us_model *m, int max_tokens, us_err *e) {
    const us_config *c = &m->cfg;
    us_backend *be = m->be;
    bool train = m->params != NULL;
    size_t bytes;
    us_status st = place_embedding(m, e);
    if (!st) st = measure(m, max_tokens, &bytes, e);
    if (st) return st;
    bump meas = {.off = bytes};
    be->free(be, m->arena);
    m->arena = be->alloc(be, meas.off);
    if (!m->arena)
        return us_fail(e, US_ENOMEM, "out of %s memory: the step needs %.1f MiB (%d tokens x %.1f KiB saved per token, plus scratch)",
                       be->name, meas.off / 1048576.0, max_tokens, m->plan.total_per_token / 1024.0);
    m->arena_bytes = meas.off;
    size_t A = be->act_bytes, T = (size_t)max_tokens;
    if ((st = pin_layers(m, &m->host_xin, xin_on_host, T * c->hidden * A, "--offload", "layer inputs", max_tokens, e)) ||
        (st = pin_layers(m, &m->host_mlp, mlp_on_host, 2 * T * c->inter * A, "--offload-mlp", "MLP gate and up",
                         max_tokens, e)) ||
        (st = pin_layers(m, &m->host_att, att_on_host, T * (size_t)m->wld[US_T_O] * A, "--offload-attn",
                         "attention outputs", max_tokens, e)))
        return st;
    m->saved_bytes = (size_t)(m->plan.total_per_token * max_tokens);
    m->max_tokens = max_tokens;
    double dummy[US_SAVE_KINDS] = {0};
    bump real = {.base = m->arena};
    layout(m, max_tokens, train, &real, dummy);
    return US_OK;
}

const char *us_model_embed_host_refusal(const us_model *m) {
    return m->spec.full              ? "with --full the embedding trains"
           : m->lm_head == m->embed ? "the embedding is tied to the LM head, which reads all of it every step"
           : !m->be->host_alloc     ? "this backend has no host memory of its own"
                                    : NULL;
}

us_status us_model_set_memory_mode(us_model *m, const us_memory_mode *mm, us_err *e) {
    if (mm->mlp_chunk_rows < 0) return us_fail(e, US_EINVAL, "MLP chunk of %d rows", mm->mlp_chunk_rows);
    if (mm->head_chunk_rows < 0) return us_fail(e, US_EINVAL, "LM head chunk of %d rows", mm->head_chunk_rows);
    if (mm->mlp_layers < 0 || mm->up_layers < 0 || mm->offload_mlp < 0 || mm->keep_attn < 0 || mm->offload_attn < 0)
        return us_fail(e, US_EINVAL, "memory mode: negative layer count (%d, %d, %d, %d, %d)", mm->mlp_layers,
                       mm->up_layers, mm->offload_mlp, mm->keep_attn, mm->offload_attn);
    if (mm->recompute < 0 || mm->recompute > US_RECOMPUTE_LAYER)
        return us_fail(e, US_EINVAL, "unknown recompute mode %d", mm->recompute);
    const char *why = mm->embed_host ? us_model_embed_host_refusal(m) : NULL;
    if (why) return us_fail(e, US_EUNSUPPORTED, "the embedding table cannot stay in host memory: %s", why);
    m->embed_host = mm->embed_host;
    bool layers = mm->offload || mm->recompute == US_RECOMPUTE_LAYER;
    m->mlp_chunk_rows = mm->mlp_chunk_rows;
    m->head_chunk_rows = mm->head_chunk_rows;
    m->recompute = mm->offload ? US_RECOMPUTE_LAYER : mm->recompute;
    m->recompute_layers = mm->recompute == US_RECOMPUTE_MLP && !layers ? mm->mlp_layers : 0;
    m->up_layers = layers ? 0 : mm->up_layers;
    m->offload_mlp = layers ? 0 : mm->offload_mlp;
    m->offload = mm->offload;
    m->keep_attn = layers ? mm->keep_attn : 0;
    m->offload_attn = layers ? mm->offload_attn : 0;
    return US_OK;
}

bool us_recompute_parse(const char *name, int *out) {
    static const char *names[] = {"none", "mlp", "layer", "up"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *out = i;
            return true;
        }
    return false;
}

void us_memory_mode_describe(const us_model *m, char *buf, size_t n) {
    int L = m->cfg.layers, count[5] = {0};
    size_t at = 0;
    buf[0] = 0;
#define SAY(...)                                                          \
    do {                                                                  \
        int w_ = snprintf(buf + at, n > at ? n - at : 0, __VA_ARGS__);   \
        if (w_ > 0) at = US_MIN(n ? n - 1 : 0, at + (size_t)w_);          \
    } while (0)
    if (m->recompute == US_RECOMPUTE_LAYER) {
        SAY(m->offload ? "recompute layer, layer inputs offloaded to host" : "recompute layer");
        int kept[3] = {0};
        for (int l = 0; m->plan.layer && l < L; l++) kept[us_layer_attn(m, l)]++;
        if (kept[US_ATT_DEVICE]) SAY(", attention output kept in %d layers", kept[US_ATT_DEVICE]);
        if (kept[US_ATT_HOST]) SAY(", attention output on the host in %d layers", kept[US_ATT_HOST]);
    } else {
        for (int l = 0; l < L; l++) count[us_layer_mode(m, l)]++;
        static const char *what[5] = {NULL, "recompute mlp", NULL, "recompute up", "mlp offloaded to host"};
        for (int k = 1; k < 5; k++)
            if (what[k] && count[k]) SAY("%s%s in %d of %d layers", at ? ", " : "", what[k], count[k], L);
    }
    if (m->embed_host) SAY("%sembedding in host memory", at ? ", " : "");
    if (!at) SAY("keep the plan's set");
#undef SAY
}

void us_plan_print(const us_model *m, FILE *f) {
    const us_plan *p = &m->plan;
    char mode[256];
    us_memory_mode_describe(m, mode, sizeof mode);
    fprintf(f, "activation plan (%s, %zu-byte activations, %s): saved bytes per token\n", m->be->name,
            m->be->act_bytes, mode);
    for (int k = 0; k < US_SAVE_KINDS; k++)
        if (p->bytes_per_token[k] > 0) fprintf(f, "  %-22s %10.0f\n", us_save_kind_name(k), p->bytes_per_token[k]);
    fprintf(f, "  %-22s %10.0f   (store-everything: %.0f, %.1f%% of it)\n", "total", p->total_per_token,
            p->store_all_per_token, 100.0 * p->total_per_token / p->store_all_per_token);
    if (p->host_per_token > 0)
        fprintf(f, "  %-22s %10.0f   (pinned host memory)\n", "offloaded to host", p->host_per_token);
    double params = (double)m->n_params * 4 * 4; /* values, gradients, AdamW m and v */
    fprintf(f, "  step arena %.1f MiB for %d tokens (saved %.1f MiB + scratch)\n", m->arena_bytes / 1048576.0,
            m->max_tokens, m->saved_bytes / 1048576.0);
    if (m->embed_on_host) fprintf(f, "  embedding table %.1f MiB in pinned host memory\n", embed_bytes(m) / 1048576.0);
    fprintf(f, "  planned %s memory: weights %.1f + parameters, gradients, AdamW %.1f + arena %.1f + backend %.1f = %.1f MiB\n",
            m->be->name, m->weight_bytes / 1048576.0, params / 1048576.0, m->arena_bytes / 1048576.0,
            m->backend_scratch / 1048576.0,
            (m->weight_bytes + params + m->arena_bytes + m->backend_scratch) / 1048576.0);
}
