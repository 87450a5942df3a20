/* step.c — the decoder's forward and backward, layer by layer, side by side.
 *
 * forward_attn() and mlp_forward() compute one layer into the places the plan chose
 * (us_layer_acts); the LM head then forms logits a chunk of tokens at a time, turns each chunk
 * into its gradient at once (cross-entropy forward and backward fused) and pushes it through the
 * head and the final norm, so backward begins at the last layer's output with d(residual) in hand.
 * backward_layer() consumes what forward kept, rebuilding the normed inputs and the MLP product
 * elementwise, and stops at the first block below which nothing trains.
 *
 * Memory modes (plan.c) only change where tensors live and what backward re-runs: with
 * US_RECOMPUTE_MLP the MLP is rebuilt from the kept mid-layer residual, with US_RECOMPUTE_LAYER
 * the whole layer from its kept (or offloaded) input — but not the attention where its output was
 * kept, on the device or the host (us_layer_attn); US_RECOMPUTE_MLP may cover only the first
 * layers (us_layer_mode). A layer that rebuilds its MLP runs it in chunks of m->mlp_rows tokens,
 * so its [tokens x intermediate] tensors exist only a chunk at a time. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static bool lora_on(const us_model *m, int l, int t) { return !m->spec.full && m->slot && m->slot[l][t].on; }

/* row r0 of a [T, width] activation tensor */
static void *rows_at(const us_model *m, const void *base, size_t r0, size_t width) {
    return (char *)base + r0 * width * m->be->act_bytes;
}
/* row r0 of target t's x·A (a column block of its group's [T, n*r] tensor) */
static float *u_at(const us_model *m, int l, int t, size_t r0) {
    float *u = m->acts[l].u[t];
    return u ? u + r0 * (size_t)m->lora_ld[t] : NULL;
}

/* Row pitch of target t's input as step.c lays it out: in, plus the folded LoRA columns. */
static int in_pitch(const us_model *m, int t) { return m->wld[t]; }

/* One pass over x forms x·A for every adapted projection of target t's group (rows r0..r0+T);
 * in a folded group it also writes u beside x, for the frozen products. */
static void lora_down(us_model *m, int l, int t, const void *x, int T, size_t r0) {
    int lead = m->lora_lead[t];
    if (lead < 0 || !lora_on(m, l, lead)) return;
    const us_lora_slot *s = &m->slot[l][lead];
    m->be->lora_down(m->be, u_at(m, l, lead, r0), m->lora_ld[lead], x, in_pitch(m, lead), m->params + s->off_A, T,
                     s->in, m->lora_ld[lead], m->fold[lead] > 0);
}

/* y = res + x W^T + b (+ s u B^T, u from lora_down). res NULL: none; res == y: accumulate.
 * Folded: one product over [x | u] and [W | s B] from res. Otherwise the LoRA term (from res) is
 * written first and the frozen product adds on top. */
static void project(us_model *m, int l, int t, void *y, const void *res, const void *x, int T, size_t r0) {
    us_backend *be = m->be;
    int in, out, ld = in_pitch(m, t);
    us_target_dims(&m->cfg, t, &in, &out);
    if (!m->fold[t] && lora_on(m, l, t)) {
        be->lora_up(be, y, res, u_at(m, l, t, r0), m->lora_ld[t], m->params + m->slot[l][t].off_B, m->lora_scale, T,
                    out, m->spec.lora.r);
        res = y;
    }
    be->linear_fwd(be, y, res, x, ld, m->L[l].w[t], ld, m->L[l].b[t], T, m->fold[t] ? ld : in, out);
}

/* The input a group's backward reads: x as the projections saw it (rows ld apart), or, with rstd
 * and w set, an RMSNorm's input whose normed rows x * rstd * w the backend forms on the fly. */
typedef struct {
    const void *x;
    int ld;
    const float *rstd, *w;
} group_in;

/* Backward of the n projections ts[] of one group, which all read in.x: dx (+)= sum dy_t W_t and
 * the LoRA terms (dx NULL: not needed), LoRA and full-weight gradients (full weights need the
 * normed rows themselves). The group's du is formed once, its LoRA input gradient written into dx
 * first; the frozen products add on top. in.x NULL (LoRA only): dA is left for the caller, from du
 * still in m->s.lora (down_dA). */
static void group_bwd(us_model *m, int l, const int *ts, int n, void *const *dys, int ldy, void *dx, bool acc,
                      group_in in_, int T, size_t r0) {
    const void *x = in_.x;
    /* q/k/v merged (backward_layer): dys are column blocks of one [T, ldy] matrix, W their rows in
     * one block, and one product forms dx */
    bool joint = ts[0] == US_T_Q && m->qkv_merge;
    us_backend *be = m->be;
    const us_layer_weights *L = &m->L[l];
    int lead = m->lora_lead[ts[0]], in, out;
    /* o/down folded: du goes beside dy (row pitch ldy) and dy's product over [W; A] adds du A;
     * q/k/v merged and folded (ldy past [dq | dk | dv]): the group's du after the three */
    int qkvw = (m->cfg.heads + 2 * m->cfg.kv_heads) * m->cfg.head_dim;
    bool joint_fold = joint && ldy > qkvw;
    bool fold_dx = lead >= 0 && (m->fold_rows[lead] || joint_fold) && lora_on(m, l, lead);
    if (lead >= 0 && lora_on(m, l, lead)) {
        for (int i = 0, col = 0; i < n; i++, col += out) { /* col: dys[i]'s first column in dqkv */
            int t = ts[i];
            us_target_dims(&m->cfg, t, &in, &out);
            if (!lora_on(m, l, t)) continue;
            const us_lora_slot *s = &m->slot[l][t];
            int fold_at = !fold_dx ? 0 : joint_fold ? qkvw + m->lora_col[t] - col : out;
            be->lora_bwd_dy(be, m->s.lora + m->lora_col[t], m->lora_ld[t], m->grads + s->off_B, dys[i], ldy ? ldy : out,
                            u_at(m, l, t, r0), m->lora_ld[t], m->params + s->off_B, m->lora_scale, T, out, m->spec.lora.r,
                            fold_at);
        }
        const us_lora_slot *s = &m->slot[l][lead];
        if (x || !fold_dx) {
            be->lora_bwd_x(be, fold_dx ? NULL : dx, acc ? dx : NULL, x ? m->grads + s->off_A : NULL, m->s.lora,
                           m->lora_ld[lead], x, in_.ld, in_.rstd, in_.w, m->params + s->off_A, T, s->in, m->lora_ld[lead]);
            if (!fold_dx) acc = true;
        }
    }
    if (joint) {
        int rows = 0;
        for (int i = 0; i < n; i++) {
            us_target_dims(&m->cfg, ts[i], &in, &out);
            rows += out;
        }
        if (joint_fold && fold_dx) rows += m->qkv_fold;
        if (dx) be->linear_bwd_x(be, dx, acc, dys[0], ldy, L->w[ts[0]], m->wld[ts[0]], T, in, rows);
        return;
    }
    for (int i = 0; i < n; i++) {
        int t = ts[i];
        us_target_dims(&m->cfg, t, &in, &out);
        int rows = out + (fold_dx ? m->fold_rows[t] : 0);
        if (dx) be->linear_bwd_x(be, dx, acc, dys[i], ldy ? ldy : out, L->w[t], m->wld[t], T, in, rows);
        acc = true;
        if (L->gw[t]) be->linear_bwd_w(be, L->gw[t], L->gb[t], dys[i], x, T, in, out);
    }
}

static us_attn_shape attn_shape(const us_model *m, const us_batch *b) {
    const us_config *c = &m->cfg;
    /* the output's rows as o_proj reads them: with its folded LoRA columns beside */
    return (us_attn_shape){b->batch, b->seq, c->heads, c->kv_heads, c->head_dim, 1.0f / sqrtf((float)c->head_dim),
                           in_pitch(m, US_T_O)};
}

static int glu_act(const us_model *m) { return m->cfg.act == US_ACT_RELU ? US_GLU_RELU : US_GLU_SILU; }

/* attention block: xmid = xin + o(attn(rope(q(h1)), rope(k(h1)), v(h1))), h1 = rmsnorm(xin).
 * rebuild: backward's re-run, which takes a kept attention output and lse (us_layer_attn) as they
 * are and rebuilds only the rest (q, k, v for the attention backward, xmid for the MLP). */
static void forward_attn(us_model *m, int l, const us_batch *b, bool rebuild) {
    us_backend *be = m->be;
    const us_config *c = &m->cfg;
    us_layer_acts *a = &m->acts[l];
    int T = b->batch * b->seq, D = c->hidden;
    us_attn_shape sh = attn_shape(m, b);
    be->rmsnorm_fwd(be, m->s.h, in_pitch(m, US_T_Q), a->rstd1, a->xin, m->L[l].ln1, T, D, (float)c->rms_eps);
    lora_down(m, l, US_T_Q, m->s.h, T, 0);
    project(m, l, US_T_Q, a->q, NULL, m->s.h, T, 0);
    project(m, l, US_T_K, a->k, NULL, m->s.h, T, 0);
    project(m, l, US_T_V, a->v, NULL, m->s.h, T, 0);
    be->rope(be, a->q, b->pos, m->inv_freq, T, c->heads, c->head_dim, false);
    be->rope(be, a->k, b->pos, m->inv_freq, T, c->kv_heads, c->head_dim, false);
    if (!rebuild || us_layer_attn(m, l) == US_ATT_REBUILD)
        be->attn_fwd(be, a->att, a->lse, a->q, a->k, a->v, b->seg_start, &sh);
    lora_down(m, l, US_T_O, a->att, T, 0);
    project(m, l, US_T_O, a->xmid, a->xin, a->att, T, 0);
}

/* MLP rows [r0, r0+n): h2 = rmsnorm(xmid) into m->s.h, gate and up (+LoRA) into the chunk
 * buffers, the activation (ReLU: bits packed, relu in place), and the product into prod when
 * not NULL. down_u: the down projection's x·A formed by the activation on its way (glu_fwd's
 * ud) when down has an adapter; returns whether it did (else the caller's lora_down). */
static bool mlp_front(us_model *m, int l, size_t r0, int n, void *prod, bool down_u) {
    us_backend *be = m->be;
    const us_config *c = &m->cfg;
    us_layer_acts *a = &m->acts[l];
    size_t D = (size_t)c->hidden;
    int hp = in_pitch(m, US_T_GATE);
    void *h = rows_at(m, m->s.h, r0, (size_t)hp);
    be->rmsnorm_fwd(be, h, hp, a->rstd2 + r0, rows_at(m, a->xmid, r0, D), m->L[l].ln2, n, c->hidden, (float)c->rms_eps);
    lora_down(m, l, US_T_GATE, h, n, r0);
    project(m, l, US_T_GATE, a->g, NULL, h, n, r0);
    project(m, l, US_T_UP, a->up, NULL, h, n, r0);
    int lead = m->lora_lead[US_T_DOWN];
    bool fuse = down_u && prod && lead >= 0 && lora_on(m, l, lead);
    int R = fuse ? m->lora_ld[lead] : 0;
    be->glu_fwd(be, glu_act(m), prod, in_pitch(m, US_T_DOWN), a->g, a->up, a->bits, n, c->inter,
                fuse ? u_at(m, l, lead, r0) : NULL, R, fuse ? m->params + m->slot[l][lead].off_A : NULL, R,
                fuse && m->fold[lead] > 0);
    return fuse;
}

/* Rows of layer l's MLP processed at once: all of them where the layer keeps its MLP tensors,
 * m->mlp_rows where they are rebuilt (chunk buffers). */
static int mlp_chunk(const us_model *m, int l, int T) {
    int mode = us_layer_mode(m, l);
    return mode == US_RECOMPUTE_MLP || mode == US_RECOMPUTE_LAYER ? m->mlp_rows : T;
}

/* MLP block, forward: out = xmid + down(act(gate(h2)) * up(h2)), chunk by chunk */
static void mlp_forward(us_model *m, int l, int T, void *out) {
    us_layer_acts *a = &m->acts[l];
    size_t D = (size_t)m->cfg.hidden;
    int rows = mlp_chunk(m, l, T);
    for (int r0 = 0; r0 < T; r0 += rows) {
        int n = US_MIN(rows, T - r0);
        if (!mlp_front(m, l, (size_t)r0, n, a->a, true)) lora_down(m, l, US_T_DOWN, a->a, n, (size_t)r0);
        project(m, l, US_T_DOWN, rows_at(m, out, (size_t)r0, D), rows_at(m, a->xmid, (size_t)r0, D), a->a, n, (size_t)r0);
    }
}


/* MLP backward over rows [r0, r0+n). dres rows hold d(out); on return d(xmid) when prior_mlp. */
static void mlp_backward(us_model *m, int l, size_t r0, int n) {
    us_backend *be = m->be;
    const us_config *c = &m->cfg;
    const us_layer_weights *L = &m->L[l];
    const us_layer_plan *p = &m->plan.layer[l];
    us_layer_acts *a = &m->acts[l];
    size_t D = (size_t)c->hidden;
    int act = glu_act(m);
    bool down_trains = lora_on(m, l, US_T_DOWN) || L->gw[US_T_DOWN];
    bool gu_trains = lora_on(m, l, US_T_GATE) || lora_on(m, l, US_T_UP) || L->gw[US_T_GATE];
    int mode = us_layer_mode(m, l);
    bool dA_in_glu = false;
    /* gate/up (or the product) were kept: here, on the host (fetched back by run()), or gate only */
    bool kept = mode == US_RECOMPUTE_NONE || mode == US_OFFLOAD_MLP || mode == US_RECOMPUTE_UP;
    int hp = in_pitch(m, US_T_GATE);
    void *dres = rows_at(m, m->s.dres, r0, (size_t)m->dres_ld), *dh = rows_at(m, m->s.dh, r0, D), *h = rows_at(m, m->s.h, r0, (size_t)hp);
    void *prod = a->a;
    if (mode == US_RECOMPUTE_UP) { /* the gate was kept; rebuild h2 and the up projection (its x·A was kept) */
        be->rmsnorm_fwd(be, h, hp, m->s.rstd, rows_at(m, a->xmid, r0, D), L->ln2, n, c->hidden, (float)c->rms_eps);
        if (m->fold[US_T_UP]) lora_down(m, l, US_T_UP, h, n, r0); /* u beside h again (the same x·A) */
        project(m, l, US_T_UP, a->up, NULL, h, n, r0);
    }
    if (!kept) { /* rebuild this chunk: h2, gate, up, bits and (when down trains) the product */
        mlp_front(m, l, r0, n, down_trains ? m->s.a : NULL, false);
        prod = m->s.a;
    } else if (!p->save_a && down_trains) { /* rebuild the down_proj input; the bits stay untouched */
        prod = m->s.a;
        /* with LoRA alone on down_proj and gate/up's backward to run, the GLU backward forms it
         * on its way into down's dA (one pass over g and up instead of two, nothing written) */
        dA_in_glu = p->glu_bwd && !L->gw[US_T_DOWN];
        if (!dA_in_glu) be->glu_fwd(be, act, prod, in_pitch(m, US_T_DOWN), a->g, a->up, NULL, n, c->inter, NULL, 0, NULL, 0, false);
    }
    if (p->glu_bwd || down_trains) {
        static const int down[] = {US_T_DOWN};
        group_in in_down = {dA_in_glu ? NULL : prod, in_pitch(m, US_T_DOWN), NULL, NULL};
        group_bwd(m, l, down, 1, &dres, m->dres_ld, p->glu_bwd ? m->s.da : NULL, false, in_down, n, r0);
    }
    if (!p->glu_bwd) return;
    /* dg, du in place; dA_in_glu: down's dA from its du (still in m->s.lora) and the product
     * formed on the way, never written */
    float *dA_down = dA_in_glu ? m->grads + m->slot[l][US_T_DOWN].off_A : NULL;
    be->glu_bwd(be, act, a->g, a->up, dA_down, m->s.lora, m->lora_ld[US_T_DOWN], m->lora_ld[US_T_DOWN], m->s.da, a->g,
                a->up, a->bits, n, c->inter);
    /* gate/up's dA reads h2: rebuilt above in the rebuilding modes; else formed from xmid on the fly
     * (LoRA only; full weights need the rows themselves) */
    group_in in_gu = {h, hp, NULL, NULL};
    if ((mode == US_RECOMPUTE_NONE || mode == US_OFFLOAD_MLP) && gu_trains) {
        if (L->gw[US_T_GATE] || L->gw[US_T_UP])
            be->rmsnorm_fwd(be, h, hp, m->s.rstd, rows_at(m, a->xmid, r0, D), L->ln2, n, c->hidden, (float)c->rms_eps);
        else
            in_gu = (group_in){rows_at(m, a->xmid, r0, D), (int)D, a->rstd2 + r0, L->ln2};
    }
    static const int gate_up[] = {US_T_GATE, US_T_UP};
    void *dgu[] = {a->g, a->up};
    group_bwd(m, l, gate_up, 2, dgu, 0, p->prior_mlp ? dh : NULL, false, in_gu, n, r0);
    if (p->prior_mlp)
        be->rmsnorm_bwd(be, dres, m->dres_ld, true, L->gln2, dh, rows_at(m, a->xmid, r0, D), a->rstd2 + r0, L->ln2, n, c->hidden);
}

/* One copy between a device tensor and its pinned host buffer: out (offload) or back in
 * (prefetch); returns the copy's ticket (backend.h). */
static int host_move(us_backend *be, void *dev, void *host, size_t bytes, bool back) {
    return back ? be->prefetch(be, dev, host, bytes) : be->offload(be, host, dev, bytes);
}

/* An offloaded layer's gate and up, out to its pinned host buffer after its forward (back: in
 * again, into the device slot it shares); the ticket of the last copy goes to mlp_ticket[l]. */
static void mlp_move(us_model *m, int l, int T, bool back) {
    us_backend *be = m->be;
    size_t bytes = (size_t)T * m->cfg.inter * be->act_bytes;
    char *host = m->host_mlp[l];
    host_move(be, m->acts[l].g, host, bytes, back);
    m->mlp_ticket[l] = host_move(be, m->acts[l].up, host + bytes, bytes, back);
}

/* dres holds d(layer output); on return d(layer input). Returns false when nothing below needs it. */
static bool backward_layer(us_model *m, int l, const us_batch *b) {
    us_backend *be = m->be;
    const us_config *c = &m->cfg;
    const us_layer_weights *L = &m->L[l];
    const us_layer_plan *p = &m->plan.layer[l];
    us_layer_acts *a = &m->acts[l];
    int T = b->batch * b->seq, D = c->hidden;

    if (m->recompute == US_RECOMPUTE_LAYER) { /* rebuild attention and xmid */
        if (us_layer_attn(m, l) == US_ATT_HOST) be->copy_wait(be, m->att_ticket[l]); /* its output is back */
        forward_attn(m, l, b, true);
    }
    int rows = mlp_chunk(m, l, T);
    for (int r0 = 0; r0 < T; r0 += rows) mlp_backward(m, l, (size_t)r0, US_MIN(rows, T - r0));
    /* the gate/up slot is free now: bring back the offloaded layer that used it before this one
     * (a pool's length of layers below), overlapping the rest of the backward */
    if (m->mlp_prev[l] >= 0) mlp_move(m, m->mlp_prev[l], T, true);
    if (!p->prior_mlp) return false;

    /* attention block */
    us_attn_shape sh = attn_shape(m, b);
    static const int o_proj[] = {US_T_O}, qkv[] = {US_T_Q, US_T_K, US_T_V};
    group_in in_o = {a->att, in_pitch(m, US_T_O), NULL, NULL};
    if (p->save_att)
        group_bwd(m, l, o_proj, 1, &m->s.dres, m->dres_ld, p->attn_bwd ? m->s.datt : NULL, false, in_o, T, 0);
    if (p->attn_bwd) {
        int qd = c->heads * c->head_dim, kd = c->kv_heads * c->head_dim, ldqkv = m->qkv_merge ? m->qkv_ld : qd + 2 * kd;
        /* merged: [rope^-1(dq) | rope^-1(dk) | dv] rows for the one input-gradient product */
        us_qkv_merge_out mg = {m->s.dqkv, ldqkv, b->pos, m->inv_freq};
        be->attn_bwd(be, m->s.dq, m->s.dk, m->s.dv, m->s.datt, a->q, a->k, a->v, a->att, a->lse, b->seg_start, &sh,
                     m->qkv_merge ? &mg : NULL);
        void *dqkv[] = {m->s.dq, m->s.dk, m->s.dv};
        if (m->qkv_merge) {
            size_t ab = be->act_bytes;
            dqkv[0] = m->s.dqkv, dqkv[1] = (char *)m->s.dqkv + qd * ab, dqkv[2] = (char *)m->s.dqkv + (qd + kd) * ab;
        } else {
            be->rope(be, m->s.dq, b->pos, m->inv_freq, T, c->heads, c->head_dim, true);
            be->rope(be, m->s.dk, b->pos, m->inv_freq, T, c->kv_heads, c->head_dim, true);
        }
        /* q/k/v's dA reads h1, formed from the layer input on the fly; full weights need the rows */
        group_in in_qkv = {a->xin, D, a->rstd1, L->ln1};
        if (L->gw[US_T_Q]) {
            be->rmsnorm_fwd(be, m->s.h, in_pitch(m, US_T_Q), m->s.rstd, a->xin, L->ln1, T, D, (float)c->rms_eps);
            in_qkv = (group_in){m->s.h, in_pitch(m, US_T_Q), NULL, NULL};
        }
        group_bwd(m, l, qkv, 3, dqkv, m->qkv_merge ? ldqkv : 0, p->prior_attn ? m->s.dh : NULL, false, in_qkv, T, 0);
        if (p->prior_attn) be->rmsnorm_bwd(be, m->s.dres, m->dres_ld, true, L->gln1, m->s.dh, a->xin, a->rstd1, L->ln1, T, D);
    }
    return p->prior_attn;
}

/* Final norm, LM head and cross-entropy over chunks of tokens. Training: forms d(last residual)
 * in m->s.dres. logits_host: copies the logits out before they become gradients. */
static void head(us_model *m, const us_batch *b, bool train, float grad_scale, float *logits_host) {
    us_backend *be = m->be;
    const us_config *c = &m->cfg;
    int T = b->batch * b->seq, D = c->hidden, V = c->vocab, C = m->head_chunk;
    be->rmsnorm_fwd(be, m->s.h, D, m->s.rstd, m->s.xfin, m->norm_f, T, D, (float)c->rms_eps);
    float *tmp = logits_host ? be->alloc(be, (size_t)C * V * 4) : NULL;
    for (int r0 = 0; r0 < T; r0 += C) {
        int rows = US_MIN(C, T - r0);
        const void *hrow = rows_at(m, m->s.h, (size_t)r0, (size_t)D);
        be->linear_fwd(be, m->s.logits, NULL, hrow, D, m->lm_head, D, NULL, rows, D, V);
        if (tmp) {
            be->act_to_f32(be, tmp, m->s.logits, (size_t)rows * V);
            be->download(be, logits_host + (size_t)r0 * V, tmp, (size_t)rows * V * 4);
        }
        be->xent_fwd_bwd(be, m->s.logits, b->targets + r0, m->s.loss, grad_scale, rows, V);
        if (train) {
            be->linear_bwd_x(be, rows_at(m, m->s.dh, (size_t)r0, (size_t)D), false, m->s.logits, V, m->lm_head, D, rows,
                             D, V);
            if (m->g_lm_head) be->linear_bwd_w(be, m->g_lm_head, NULL, m->s.logits, hrow, rows, D, V);
        }
    }
    be->free(be, tmp);
    if (train) be->rmsnorm_bwd(be, m->s.dres, m->dres_ld, false, m->g_norm_f, m->s.dh, m->s.xfin, m->s.rstd, m->norm_f, T, D);
}

/* A host-kept attention output (us_layer_attn): out to its pinned buffer after the layer's
 * forward, back into the device buffer of its parity (plan.c) once the layer above has begun its
 * backward; the ticket goes to att_ticket[l]. */
static void att_move(us_model *m, int l, int T, bool back) {
    size_t bytes = (size_t)T * in_pitch(m, US_T_O) * m->be->act_bytes; /* rows with o_proj's folded columns */
    m->att_ticket[l] = host_move(m->be, m->acts[l].att, m->host_att[l], bytes, back);
}

/* Every op of one step, from zeroing the loss to the last layer's backward. */
static void issue(us_model *m, const us_batch *b, bool train, float grad_scale, float *logits_host) {
    us_backend *be = m->be;
    const us_config *c = &m->cfg;
    int T = b->batch * b->seq;
    size_t xin_bytes = (size_t)T * c->hidden * be->act_bytes;
    bool off = train && m->offload;
    bool att_host = train && m->offload_attn > 0;
    be->zero(be, m->s.loss, 4);
    us_model_fold_refresh(m);
    be->embed_fwd(be, m->acts[0].xin, m->embed, b->ids, T, c->hidden);
    for (int l = 0; l < c->layers; l++) {
        if (off) { /* the buffer this layer writes held the input of layer l-1: its copy must be done */
            be->copies_wait(be);
            be->offload(be, m->host_xin[l], m->acts[l].xin, xin_bytes);
        }
        /* attention output buffers alternate by parity: the host-kept output two layers down is out */
        if (att_host && l >= 2 && us_layer_attn(m, l - 2) == US_ATT_HOST) be->copy_wait(be, m->att_ticket[l - 2]);
        forward_attn(m, l, b, false);
        if (att_host && us_layer_attn(m, l) == US_ATT_HOST) att_move(m, l, T, false);
        /* gate/up pool (plan.c): the slot's last user has been copied out before this layer writes it */
        int prev = train ? m->mlp_prev[l] : -1;
        if (prev >= 0) be->copy_wait(be, m->mlp_ticket[prev]);
        mlp_forward(m, l, T, l + 1 < c->layers ? m->acts[l + 1].xin : m->s.xfin);
        if (train && us_layer_mode(m, l) == US_OFFLOAD_MLP) mlp_move(m, l, T, false);
    }
    head(m, b, train, grad_scale, logits_host);
    if (train) {
        bool more = true;
        int top = c->layers - 1;
        if (att_host && us_layer_attn(m, top) == US_ATT_HOST) att_move(m, top, T, true);
        for (int l = top; l >= m->plan.first_layer_bwd && more; l--) {
            if (off) { /* this layer's input arrived (prefetched one layer ahead); fetch the next */
                be->copies_wait(be);
                if (l - 1 >= m->plan.first_layer_bwd) be->prefetch(be, m->acts[l - 1].xin, m->host_xin[l - 1], xin_bytes);
            }
            /* the layer below's attention output into the buffer the layer above (done) used */
            if (att_host && l - 1 >= m->plan.first_layer_bwd && us_layer_attn(m, l - 1) == US_ATT_HOST)
                att_move(m, l - 1, T, true);
            if (us_layer_mode(m, l) == US_OFFLOAD_MLP) be->copy_wait(be, m->mlp_ticket[l]); /* fetched back */
            more = backward_layer(m, l, b);
        }
        if (more && m->g_embed) be->embed_bwd(be, m->g_embed, m->s.dres, b->ids, T, c->hidden);
    }
}

/* What a recorded training step depends on beyond the model's fixed buffers: the batch's shape,
 * its device buffers and the loss scale (FNV-1a over them). */
static uint64_t step_key(const us_batch *b, float grad_scale) {
    uint64_t h = 1469598103934665603ull;
    uint64_t v[7] = {(uint64_t)b->batch, (uint64_t)b->seq, (uint64_t)(uintptr_t)b->ids, (uint64_t)(uintptr_t)b->targets,
                     (uint64_t)(uintptr_t)b->pos, (uint64_t)(uintptr_t)b->seg_start, 0};
    memcpy(&v[6], &grad_scale, sizeof grad_scale);
    for (int i = 0; i < 7; i++)
        for (int k = 0; k < 8; k++) h = (h ^ ((v[i] >> (8 * k)) & 0xff)) * 1099511628211ull;
    return h | 1; /* never 0 ("none") */
}

/* A training step whose key repeats the previous step's is recorded once (backend graph_* ops)
 * and replayed after — offloading plans too: their copies and the waits on them are part of the
 * record. A backend without graphs runs op by op; a failed recording falls back to issuing the ops. */
static void issue_step(us_model *m, const us_batch *b, float grad_scale) {
    us_backend *be = m->be;
    if (!be->graph_begin) {
        issue(m, b, true, grad_scale, NULL);
        return;
    }
    uint64_t key = step_key(b, grad_scale), prev = m->step_key;
    m->step_key = key;
    if (key == prev && be->graph_launch(be, key)) return;
    if (key == prev && be->graph_begin(be)) { /* the second step of this shape: record it */
        issue(m, b, true, grad_scale, NULL);
        if (be->graph_end(be, key)) return;
    }
    issue(m, b, true, grad_scale, NULL);
}

static us_status run(us_model *m, const us_batch *b, bool train, float grad_scale, float *logits_host,
                     double *loss_sum, us_err *e) {
    us_backend *be = m->be;
    int T = b->batch * b->seq;
    if (T > m->max_tokens) return us_fail(e, US_EINVAL, "batch of %d tokens exceeds the planned %d", T, m->max_tokens);
    if (train) issue_step(m, b, grad_scale);
    else issue(m, b, false, 0.0f, logits_host);
    float loss;
    be->download(be, &loss, m->s.loss, 4);
    *loss_sum = loss;
    return US_OK;
}

us_status us_model_step(us_model *m, const us_batch *b, float grad_scale, double *loss_sum, us_err *e) {
    return run(m, b, true, grad_scale, NULL, loss_sum, e);
}

us_status us_model_forward(us_model *m, const us_batch *b, float *logits_host, double *loss_sum, us_err *e) {
    return run(m, b, false, 0.0f, logits_host, loss_sum, e);
}
