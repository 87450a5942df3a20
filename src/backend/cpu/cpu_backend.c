/* cpu_backend.c — the reference backend: fp32 everywhere, matrix products through OpenBLAS
 * sgemm, everything else as plain loops parallelised with OpenMP.
 *
 * It is also the yardstick for every other backend: each GPU kernel's test compares with the op
 * of the same name here, so these loops favour clarity (and float64 accumulation where a sum is
 * long) over cleverness. Memory is ordinary host memory; "device pointers" are host pointers.
 * Allocations carry a small header so mem_info can report the bytes in use and the peak. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"

typedef struct cpu_state {
    size_t in_use, peak;
    float *scratch; /* attention blocks, grown on demand */
    size_t scratch_n;
} cpu_state;

#define HDR 64 /* keeps the user pointer 64-byte aligned */

static void *cpu_alloc(us_backend *be, size_t bytes) {
    cpu_state *st = be->impl;
    size_t total = HDR + (bytes + 63) / 64 * 64;
    char *p = aligned_alloc(64, total);
    if (!p) return NULL;
    *(size_t *)p = bytes;
    #pragma omp atomic
    st->in_use += bytes;
    if (st->in_use > st->peak) st->peak = st->in_use;
    return p + HDR;
}

static void cpu_free(us_backend *be, void *p) {
    if (!p) return;
    cpu_state *st = be->impl;
    char *base = (char *)p - HDR;
    #pragma omp atomic
    st->in_use -= *(size_t *)base;
    free(base);
}

static void cpu_copy(us_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}
static void cpu_zero(us_backend *be, void *p, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}
static void cpu_sync(us_backend *be) { (void)be; }

static void cpu_mem_info(us_backend *be, size_t *in_use, size_t *peak, size_t *total) {
    cpu_state *st = be->impl;
    if (in_use) *in_use = st->in_use;
    if (peak) *peak = st->peak;
    if (total) *total = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
}

static void *cpu_weight_upload(us_backend *be, const void *host, us_dtype dt, size_t n) {
    float *w = cpu_alloc(be, n * sizeof(float));
    if (!w) return NULL;
    if (dt == US_DT_F32) {
        memcpy(w, host, n * 4);
    } else {
        /* parallel conversion in blocks */
        size_t es = us_dtype_size(dt);
        #pragma omp parallel for schedule(static)
        for (size_t b = 0; b < (n + 65535) / 65536; b++) {
            size_t i0 = b * 65536, cnt = US_MIN((size_t)65536, n - i0);
            us_convert_to_f32(w + i0, (const char *)host + i0 * es, dt, cnt);
        }
    }
    return w;
}

static void cpu_weight_fill_normal(us_backend *be, void *w, size_t n, float std, uint64_t seed, uint64_t stream) {
    (void)be;
    float *x = w;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = std * us_rand_normal(seed, stream, i);
}

static void cpu_f32_copy(us_backend *be, void *dst, const void *src, size_t n) { cpu_copy(be, dst, src, n * 4); }
static void cpu_weight_from_f32(us_backend *be, void *w, const float *src, size_t n) { cpu_f32_copy(be, w, src, n); }
static void cpu_weight_to_f32(us_backend *be, float *dst, const void *w, size_t n) { cpu_f32_copy(be, dst, w, n); }
static void cpu_weight_put(us_backend *be, void *W, int ldw, const float *src, int rows, int cols, float s) {
    (void)be;
    float *w = W;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) w[(size_t)i * ldw + j] = src ? s * src[(size_t)i * cols + j] : 0.0f;
}
static void cpu_weight_put_list(us_backend *be, const us_put *list, int n) {
    for (int i = 0; i < n; i++) cpu_weight_put(be, list[i].W, list[i].ldw, list[i].src, list[i].rows, list[i].cols, list[i].s);
}
static void cpu_act_from_f32(us_backend *be, void *dst, const float *src, size_t n) { cpu_f32_copy(be, dst, src, n); }
static void cpu_act_to_f32(us_backend *be, float *dst, const void *src, size_t n) { cpu_f32_copy(be, dst, src, n); }

static void cpu_embed_fwd(us_backend *be, void *x, const void *E, const int32_t *ids, int T, int dim) {
    (void)be;
    float *out = x;
    const float *emb = E;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) memcpy(out + (size_t)t * dim, emb + (size_t)ids[t] * dim, (size_t)dim * 4);
}

static void cpu_embed_bwd(us_backend *be, float *dE, const void *dx, const int32_t *ids, int T, int dim) {
    (void)be;
    const float *g = dx;
    /* parallel over the feature dimension: no two threads touch the same element */
    #pragma omp parallel for schedule(static)
    for (int d = 0; d < dim; d++)
        for (int t = 0; t < T; t++) dE[(size_t)ids[t] * dim + d] += g[(size_t)t * dim + d];
}

static void cpu_rmsnorm_fwd(us_backend *be, void *y, int ldy, float *rstd, const void *x, const float *w, int T,
                            int dim, float eps) {
    (void)be;
    float *out = y;
    const float *in = x;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xr = in + (size_t)t * dim;
        float *yr = out + (size_t)t * ldy;
        double ss = 0;
        for (int d = 0; d < dim; d++) ss += (double)xr[d] * xr[d];
        float r = (float)(1.0 / sqrt(ss / dim + eps));
        rstd[t] = r;
        for (int d = 0; d < dim; d++) yr[d] = w[d] * (xr[d] * r);
    }
}

static void cpu_rmsnorm_bwd(us_backend *be, void *dx, int ldx, bool acc, float *dw, const void *dy, const void *x,
                            const float *rstd, const float *w, int T, int dim) {
    (void)be;
    float *gx = dx;
    const float *gy = dy, *in = x;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *xr = in + (size_t)t * dim, *gr = gy + (size_t)t * dim;
        float *dr = gx + (size_t)t * ldx;
        float r = rstd[t];
        double dot = 0; /* sum_d (dy*w)_d * xhat_d */
        for (int d = 0; d < dim; d++) dot += (double)gr[d] * w[d] * xr[d] * r;
        float mean = (float)(dot / dim);
        for (int d = 0; d < dim; d++) {
            float v = r * (gr[d] * w[d] - xr[d] * r * mean);
            dr[d] = acc ? dr[d] + v : v;
        }
    }
    if (dw) {
        #pragma omp parallel for schedule(static)
        for (int d = 0; d < dim; d++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += (double)gy[(size_t)t * dim + d] * in[(size_t)t * dim + d] * rstd[t];
            dw[d] += (float)s;
        }
    }
}

static void add_bias(float *y, const float *bias, int T, int out) {
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) y[(size_t)t * out + o] += bias[o];
}

static void cpu_linear_fwd(us_backend *be, void *y, const void *res, const void *x, int ldx, const void *W, int ldw,
                           const float *bias, int T, int in, int out) {
    (void)be;
    if (res && res != y) memcpy(y, res, (size_t)T * out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, x, ldx, W, ldw, res ? 1.0f : 0.0f, y, out);
    if (bias) add_bias(y, bias, T, out);
}

static void cpu_linear_bwd_x(us_backend *be, void *dx, bool acc, const void *dy, int lddy, const void *W, int ldw,
                             int T, int in, int out) {
    (void)be;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, out, 1.0f, dy, lddy, W, ldw, acc ? 1.0f : 0.0f, dx,
                in);
}

static void cpu_linear_bwd_w(us_backend *be, float *dW, float *dbias, const void *dy, const void *x, int T, int in,
                             int out) {
    (void)be;
    const float *g = dy;
    if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, T, 1.0f, g, out, x, in, 1.0f, dW, in);
    if (dbias) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += g[(size_t)t * out + o];
            dbias[o] += (float)s;
        }
    }
}

/* y = res + ...: start y from res (or zero) so the product can accumulate with beta = 1 */
static void cpu_start_from(float *y, const void *res, size_t rows, size_t cols) {
    if (res == y) return;
    if (res) memcpy(y, res, rows * cols * sizeof(float));
    else memset(y, 0, rows * cols * sizeof(float));
}

static void cpu_lora_down(us_backend *be, float *u, int ldu, const void *x, int ldx, const float *A, int T, int in,
                          int R, bool fold) {
    (void)be;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, R, in, 1.0f, x, ldx, A, in, 0.0f, u, ldu);
    if (fold)
        for (int t = 0; t < T; t++) memcpy((float *)x + (size_t)t * ldx + in, u + (size_t)t * ldu, (size_t)R * 4);
}

static void cpu_lora_up(us_backend *be, void *y, const void *res, const float *u, int ldu, const float *B, float s,
                        int T, int out, int r) {
    (void)be;
    cpu_start_from(y, res, (size_t)T, (size_t)out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, r, s, u, ldu, B, r, 1.0f, y, out);
}

static void cpu_lora_bwd_dy(us_backend *be, float *du, int lddu, float *dB, const void *dy, int ldy, const float *u,
                            int ldu, const float *B, float s, int T, int out, int r, int fold_at) {
    (void)be;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, T, s, dy, ldy, u, ldu, 1.0f, dB, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, r, out, s, dy, ldy, B, r, 0.0f, du, lddu);
    if (fold_at > 0)
        for (int t = 0; t < T; t++) memcpy((float *)dy + (size_t)t * ldy + fold_at, du + (size_t)t * lddu, (size_t)r * 4);
}

static void cpu_lora_bwd_x(us_backend *be, void *dx, const void *res, float *dA, const float *du, int lddu,
                           const void *x, int ldx, const float *rstd, const float *w, const float *A, int T, int in, int R) {
    (void)be;
    if (dA && rstd) { /* dA(j, i) += w[i] * sum_t x[t, i] * (rstd[t] du[t, j]): the normed rows never formed */
        float *ds = malloc((size_t)T * R * sizeof *ds), *part = calloc((size_t)R * in, sizeof *part);
        if (!ds || !part) { /* out of host memory: the op table has no error channel; poison dA */
            for (size_t i = 0; i < (size_t)R * in; i++) dA[i] = NAN;
            free(ds), free(part);
        } else {
            for (int t = 0; t < T; t++)
                for (int j = 0; j < R; j++) ds[(size_t)t * R + j] = rstd[t] * du[(size_t)t * lddu + j];
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, in, T, 1.0f, ds, R, x, ldx, 0.0f, part, in);
            for (int j = 0; j < R; j++)
                for (int i = 0; i < in; i++) dA[(size_t)j * in + i] += w[i] * part[(size_t)j * in + i];
            free(ds), free(part);
        }
    } else if (dA) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, in, T, 1.0f, du, lddu, x, ldx, 1.0f, dA, in);
    }
    if (!dx) return;
    cpu_start_from(dx, res, (size_t)T, (size_t)in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, in, R, 1.0f, du, lddu, A, in, 1.0f, dx, in);
}

/* RoPE's angles at position p: c[i], sn[i] for i < hd/2 (sn negated for the inverse rotation). */
static void rope_angles(float *c, float *sn, int32_t p, const float *inv_freq, int half, bool inverse) {
    for (int i = 0; i < half; i++) {
        float ang = (float)p * inv_freq[i]; /* f32 product, as transformers computes it */
        c[i] = cosf(ang);
        sn[i] = inverse ? -sinf(ang) : sinf(ang);
    }
}

/* One head rotated from r into o (o may be r). */
static void rope_head(float *o, const float *r, const float *c, const float *sn, int half) {
    for (int i = 0; i < half; i++) {
        float a = r[i], b = r[i + half];
        o[i] = a * c[i] - b * sn[i];
        o[i + half] = b * c[i] + a * sn[i];
    }
}

static void cpu_rope(us_backend *be, void *x, const int32_t *pos, const float *inv_freq, int T, int nh, int hd,
                     bool inverse) {
    (void)be;
    float *v = x;
    int half = hd / 2;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float c[512], sn[512]; /* head_dim <= 1024 is checked when the model is built */
        rope_angles(c, sn, pos[t], inv_freq, half, inverse);
        for (int h = 0; h < nh; h++) {
            float *r = v + ((size_t)t * nh + h) * hd;
            rope_head(r, r, c, sn, half);
        }
    }
}

static void cpu_qkv_merge(us_backend *be, void *dst, int ld, const void *dq, const void *dk, const void *dv,
                          const int32_t *pos, const float *inv_freq, int T, int nq, int nkv, int hd) {
    (void)be;
    int half = hd / 2;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float c[512], sn[512];
        rope_angles(c, sn, pos[t], inv_freq, half, true);
        float *row = (float *)dst + (size_t)t * ld;
        for (int h = 0; h < nq + nkv; h++) {
            const float *r = h < nq ? (const float *)dq + ((size_t)t * nq + h) * hd
                                    : (const float *)dk + ((size_t)t * nkv + (h - nq)) * hd;
            rope_head(row + (size_t)h * hd, r, c, sn, half);
        }
        memcpy(row + (size_t)(nq + nkv) * hd, (const float *)dv + (size_t)t * nkv * hd, (size_t)nkv * hd * sizeof(float));
    }
}

/* Attention, blocked: for QB query rows at a time, scores against every key up to the block's
 * last row come from one sgemm, then masking (causal, example boundaries) and the softmax, then
 * the output from another sgemm. Backward recomputes the probabilities from q, k and the saved
 * log-sum-exp the same way (no S x S matrix survives a call). Work is split over (batch, head);
 * backward accumulates dk/dv per query head in scratch and sums each kv group at the end. */
#define QB 64

static float *scratch_get(cpu_state *st, size_t floats) {
    if (st->scratch_n < floats) {
        free(st->scratch);
        st->scratch = aligned_alloc(64, (floats * 4 + 63) / 64 * 64);
        st->scratch_n = st->scratch ? floats : 0;
    }
    return st->scratch;
}

/* scores of rows [i0, i1) against keys [0, i1) -> probabilities in place (row stride nk) */
static void attn_probs(float *P, int i0, int i1, const us_attn_shape *sh, const int32_t *seg, size_t tok0,
                       const float *lse_row /* NULL: compute and store into lse_out */, float *lse_out, int lse_stride) {
    int nk = i1;
    for (int i = i0; i < i1; i++) {
        float *row = P + (size_t)(i - i0) * nk;
        int j0 = seg ? seg[tok0 + i] : 0;
        for (int j = 0; j < j0; j++) row[j] = 0.0f;
        for (int j = i + 1; j < nk; j++) row[j] = 0.0f;
        if (lse_row) {
            float L = lse_row[(size_t)(i - i0) * lse_stride];
            for (int j = j0; j <= i; j++) row[j] = expf(row[j] - L);
        } else {
            float m = -INFINITY;
            for (int j = j0; j <= i; j++) m = row[j] > m ? row[j] : m;
            double l = 0;
            for (int j = j0; j <= i; j++) {
                row[j] = expf(row[j] - m);
                l += row[j];
            }
            float inv = (float)(1.0 / l);
            for (int j = j0; j <= i; j++) row[j] *= inv;
            lse_out[(size_t)(i - i0) * lse_stride] = m + (float)log(l);
        }
    }
}

static void cpu_attn_fwd(us_backend *be, void *o, float *lse, const void *q, const void *k, const void *v,
                         const int32_t *seg_start, const us_attn_shape *sh) {
    cpu_state *st = be->impl;
    const int S = sh->seq, H = sh->heads, KV = sh->kv_heads, hd = sh->head_dim, grp = H / KV;
    const float *Q = q, *K = k, *V = v;
    float *O = o;
    const size_t ldo = (size_t)us_attn_ldo(sh);
    int nth = omp_get_max_threads();
    float *scr = scratch_get(st, (size_t)nth * QB * S);
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < sh->batch; b++)
        for (int h = 0; h < H; h++) {
            float *P = scr + (size_t)omp_get_thread_num() * QB * S;
            size_t tok0 = (size_t)b * S;
            const float *Kb = K + (tok0 * KV + h / grp) * hd, *Vb = V + (tok0 * KV + h / grp) * hd;
            for (int i0 = 0; i0 < S; i0 += QB) {
                int i1 = US_MIN(S, i0 + QB), rows = i1 - i0;
                const float *Qi = Q + ((tok0 + i0) * H + h) * hd;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, i1, hd, sh->scale, Qi, H * hd, Kb, KV * hd,
                            0.0f, P, i1);
                attn_probs(P, i0, i1, sh, seg_start, tok0, NULL, lse + (tok0 + i0) * H + h, H);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, i1, 1.0f, P, i1, Vb, KV * hd, 0.0f,
                            O + (tok0 + i0) * ldo + (size_t)h * hd, ldo);
            }
        }
}

static void cpu_attn_bwd(us_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                         const void *v, const void *o, const float *lse, const int32_t *seg_start,
                         const us_attn_shape *sh, const us_qkv_merge_out *merge) {
    cpu_state *st = be->impl;
    const int S = sh->seq, H = sh->heads, KV = sh->kv_heads, hd = sh->head_dim, grp = H / KV;
    const float *Q = q, *K = k, *V = v, *O = o, *dO = dout;
    float *dQ = dq, *dK = dk, *dV = dv;
    const size_t ldo = (size_t)us_attn_ldo(sh);
    size_t T = (size_t)sh->batch * S;
    int nth = omp_get_max_threads();
    /* per thread: P and dP blocks; shared: per-query-head dk, dv [T, H, hd] */
    size_t per = (size_t)2 * QB * S;
    float *scr = scratch_get(st, (size_t)nth * per + 2 * T * H * hd);
    float *dKh = scr + (size_t)nth * per, *dVh = dKh + T * H * hd;
    memset(dKh, 0, 2 * T * H * hd * 4);
    #pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < sh->batch; b++)
        for (int h = 0; h < H; h++) {
            float *P = scr + (size_t)omp_get_thread_num() * per, *dP = P + (size_t)QB * S;
            size_t tok0 = (size_t)b * S;
            const float *Kb = K + (tok0 * KV + h / grp) * hd, *Vb = V + (tok0 * KV + h / grp) * hd;
            float *dKb = dKh + (tok0 * H + h) * hd, *dVb = dVh + (tok0 * H + h) * hd;
            for (int i0 = 0; i0 < S; i0 += QB) {
                int i1 = US_MIN(S, i0 + QB), rows = i1 - i0;
                size_t qoff = ((tok0 + i0) * H + h) * hd;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, i1, hd, sh->scale, Q + qoff, H * hd, Kb,
                            KV * hd, 0.0f, P, i1);
                attn_probs(P, i0, i1, sh, seg_start, tok0, lse + (tok0 + i0) * H + h, NULL, H);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, i1, hd, 1.0f, dO + qoff, H * hd, Vb, KV * hd,
                            0.0f, dP, i1);
                for (int i = 0; i < rows; i++) { /* dS = P * (dP - rowsum(dO * O)) * scale, into dP */
                    const float *doi = dO + qoff + (size_t)i * H * hd, *oi = O + (tok0 + i0 + i) * ldo + (size_t)h * hd;
                    float D = 0;
                    for (int d = 0; d < hd; d++) D += doi[d] * oi[d];
                    float *pr = P + (size_t)i * i1, *dr = dP + (size_t)i * i1;
                    for (int j = 0; j < i1; j++) dr[j] = pr[j] * (dr[j] - D) * sh->scale;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, i1, 1.0f, dP, i1, Kb, KV * hd, 0.0f,
                            dQ + qoff, H * hd);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, hd, rows, 1.0f, dP, i1, Q + qoff, H * hd, 1.0f,
                            dKb, H * hd);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, hd, rows, 1.0f, P, i1, dO + qoff, H * hd, 1.0f,
                            dVb, H * hd);
            }
        }
    /* sum each kv group's query heads */
    #pragma omp parallel for schedule(static)
    for (size_t t = 0; t < T; t++)
        for (int kh = 0; kh < KV; kh++) {
            float *dk_ = dK + (t * KV + kh) * hd, *dv_ = dV + (t * KV + kh) * hd;
            for (int d = 0; d < hd; d++) {
                float sk = 0, sv = 0;
                for (int g = 0; g < grp; g++) {
                    sk += dKh[(t * H + kh * grp + g) * hd + d];
                    sv += dVh[(t * H + kh * grp + g) * hd + d];
                }
                dk_[d] = sk;
                dv_[d] = sv;
            }
        }
    if (merge) cpu_qkv_merge(be, merge->dst, merge->ld, dq, dk, dv, merge->pos, merge->inv_freq, (int)T, H, KV, hd);
}

static inline int words_per_row(int cols) { return (cols + 31) / 32; }

/* act(g) * u, g already relu(g) for ReLU: glu_fwd writes it, glu_bwd forms it again for down's dA */
static float glu_product(int act, float x, float up) { return act == US_GLU_RELU ? x * up : x / (1.0f + expf(-x)) * up; }

static void cpu_glu_fwd(us_backend *be, int act, void *a, int lda, void *g, const void *u, uint32_t *bits, int rows,
                        int cols, float *ud, int ldud, const float *Ad, int R, bool fold) {
    float *G = g;
    const float *U = u;
    int W = words_per_row(cols);
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        size_t base = (size_t)r * cols;
        float *A = a ? (float *)a + (size_t)r * lda - base : NULL; /* A[base + c]: row r's column c */
        if (act == US_GLU_RELU) {
            for (int w = 0; w < W; w++) {
                uint32_t word = 0;
                for (int c = w * 32; c < US_MIN(cols, w * 32 + 32); c++) {
                    float x = G[base + c];
                    float rl = x > 0.0f ? x : 0.0f;
                    if (x > 0.0f) word |= 1u << (c & 31);
                    G[base + c] = rl;
                    if (A) A[base + c] = glu_product(act, rl, U[base + c]);
                }
                if (bits) bits[(size_t)r * W + w] = word;
            }
        } else if (A) {
            for (int c = 0; c < cols; c++) A[base + c] = glu_product(act, G[base + c], U[base + c]);
        }
    }
    if (ud && a) cpu_lora_down(be, ud, ldud, a, lda, Ad, rows, cols, R, fold);
}

static void cpu_glu_bwd(us_backend *be, int act, void *dg, void *du, float *dA, const float *dd, int lddd, int R,
                        const void *da, const void *g, const void *u, const uint32_t *bits, int rows, int cols) {
    (void)be;
    float *DG = dg, *DU = du;
    const float *DA = da, *G = g, *U = u;
    int W = words_per_row(cols);
    if (dA && rows > 0 && cols > 0) { /* down's dA from the product (formed here, before g and u are overwritten) */
        float *prod = malloc((size_t)rows * cols * sizeof *prod);
        if (!prod) { /* out of host memory: the op table has no error channel; poison dA */
            for (size_t i = 0; i < (size_t)R * cols; i++) dA[i] = NAN;
        } else {
            #pragma omp parallel for schedule(static)
            for (size_t i = 0; i < (size_t)rows * cols; i++) prod[i] = glu_product(act, G[i], U[i]);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, cols, rows, 1.0f, dd, lddd, prod, cols, 1.0f, dA, cols);
            free(prod);
        }
    }
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        size_t base = (size_t)r * cols;
        for (int c = 0; c < cols; c++) {
            size_t i = base + c;
            float x = G[i], up = U[i], d = DA[i], gate_grad, up_grad;
            if (act == US_GLU_RELU) {
                uint32_t bit = (bits[(size_t)r * W + (c >> 5)] >> (c & 31)) & 1u; /* the saved 1-bit gate */
                gate_grad = bit ? d * up : 0.0f;
                up_grad = d * x; /* x is relu(g), saved in place by the forward */
            } else {
                float sg = 1.0f / (1.0f + expf(-x));
                gate_grad = d * up * sg * (1.0f + x * (1.0f - sg));
                up_grad = d * x * sg;
            }
            DG[i] = gate_grad;
            DU[i] = up_grad;
        }
    }
}

static void cpu_add(us_backend *be, void *y, const void *x, size_t n) {
    (void)be;
    float *Y = y;
    const float *X = x;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) Y[i] += X[i];
}

static void cpu_xent_fwd_bwd(us_backend *be, void *logits, const int32_t *labels, float *loss_sum, float grad_scale,
                             int rows, int vocab) {
    (void)be;
    float *L = logits;
    double total = 0;
    #pragma omp parallel for schedule(static) reduction(+ : total)
    for (int r = 0; r < rows; r++) {
        float *row = L + (size_t)r * vocab;
        int lab = labels[r];
        if (lab < 0) {
            memset(row, 0, (size_t)vocab * 4);
            continue;
        }
        float m = -INFINITY;
        for (int i = 0; i < vocab; i++) m = row[i] > m ? row[i] : m;
        double s = 0;
        for (int i = 0; i < vocab; i++) s += exp((double)row[i] - m);
        double lse = m + log(s);
        total += lse - row[lab];
        for (int i = 0; i < vocab; i++) row[i] = (float)exp((double)row[i] - lse) * grad_scale;
        row[lab] -= grad_scale;
    }
    *loss_sum += (float)total;
}

static void cpu_adamw(us_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                      float b2, float eps, float wd, float bc1, float bc2) {
    (void)be;
    float step = lr / bc1, sq = sqrtf(bc2), decay = 1.0f - lr * wd;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        p[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] -= step * m[i] / (sqrtf(v[i]) / sq + eps);
    }
}

static double cpu_sumsq(us_backend *be, const float *x, size_t n) {
    (void)be;
    double s = 0;
    #pragma omp parallel for simd schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

static void cpu_scale(us_backend *be, float *x, size_t n, float s) {
    (void)be;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

static bool cpu_nonfinite(us_backend *be, const float *x, size_t n) {
    (void)be;
    int bad = 0;
    #pragma omp parallel for schedule(static) reduction(| : bad)
    for (size_t i = 0; i < n; i++) bad |= !isfinite(x[i]);
    return bad != 0;
}

/* host offload: the CPU's "device" is host memory, so copies are plain and synchronous */
static void *cpu_host_alloc(us_backend *be, size_t bytes) { return cpu_alloc(be, bytes); }
static int cpu_host_copy(us_backend *be, void *dst, const void *src, size_t bytes) {
    cpu_copy(be, dst, src, bytes);
    return 1;
}
static void cpu_copies_wait(us_backend *be) { (void)be; }
static void cpu_copy_wait(us_backend *be, int ticket) { (void)be, (void)ticket; }

static void cpu_destroy(us_backend *be) {
    if (!be) return;
    free(((cpu_state *)be->impl)->scratch);
    free(be->impl);
    free(be);
}

us_status us_backend_cpu_create(int threads, us_backend **out, us_err *e) {
    us_backend *be = calloc(1, sizeof *be);
    cpu_state *st = calloc(1, sizeof *st);
    if (!be || !st) {
        free(be);
        free(st);
        return us_fail(e, US_ENOMEM, "out of memory creating the cpu backend");
    }
    if (threads > 0) omp_set_num_threads(threads);
    *be = (us_backend){
        .name = "cpu", .act_bytes = 4, .weight_bytes = 4, .impl = st,
        .alloc = cpu_alloc, .free = cpu_free, .upload = cpu_copy, .download = cpu_copy, .zero = cpu_zero, .copy = cpu_copy,
        .sync = cpu_sync, .mem_info = cpu_mem_info,
        .weight_upload = cpu_weight_upload, .weight_fill_normal = cpu_weight_fill_normal,
        .weight_from_f32 = cpu_weight_from_f32, .weight_to_f32 = cpu_weight_to_f32, .weight_put = cpu_weight_put,
        .weight_put_list = cpu_weight_put_list,
        .act_from_f32 = cpu_act_from_f32, .act_to_f32 = cpu_act_to_f32,
        .embed_fwd = cpu_embed_fwd, .embed_bwd = cpu_embed_bwd,
        .rmsnorm_fwd = cpu_rmsnorm_fwd, .rmsnorm_bwd = cpu_rmsnorm_bwd,
        .linear_fwd = cpu_linear_fwd, .linear_bwd_x = cpu_linear_bwd_x, .linear_bwd_w = cpu_linear_bwd_w,
        .lora_down = cpu_lora_down, .lora_up = cpu_lora_up,
        .lora_bwd_dy = cpu_lora_bwd_dy, .lora_bwd_x = cpu_lora_bwd_x, .rope = cpu_rope, .qkv_merge = cpu_qkv_merge,
        .attn_fwd = cpu_attn_fwd, .attn_bwd = cpu_attn_bwd, .glu_fwd = cpu_glu_fwd, .glu_bwd = cpu_glu_bwd,
        .add = cpu_add, .xent_fwd_bwd = cpu_xent_fwd_bwd, .adamw = cpu_adamw, .sumsq = cpu_sumsq,
        .scale = cpu_scale, .nonfinite = cpu_nonfinite, .destroy = cpu_destroy,
        .host_alloc = cpu_host_alloc, .host_free = cpu_free, .offload = cpu_host_copy, .prefetch = cpu_host_copy,
        .copies_wait = cpu_copies_wait, .copy_wait = cpu_copy_wait,
    };
    us_cpu_decode_install(be);
    *out = be;
    return US_OK;
}
