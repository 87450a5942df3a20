/* test_ops.c — every op of the CPU backend against float64 written here, independently.
 *
 * Each op gets (a) its forward compared with a float64 forward of the Hugging Face math written
 * in this file, and (b) its backward compared with central finite differences, in float64, of a
 * random scalar loss L = sum(w * forward(inputs)) taken through that same float64 forward, with
 * respect to every input and weight. The op runs in f32, so comparisons are relative to the scale
 * of the reference: max|ours - ref| <= tol * max(max|ref|, floor). "acc" paths are checked to add
 * into what was there, and in-place/aliasing contracts of backend.h are exercised. The dtype
 * conversions of src/core/common.c are checked against decoders written from the IEEE formats,
 * exhaustively for the 65536 16-bit patterns and on every exponent/mantissa for rounding. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/common.h"
#include "test.h"

/* ---- helpers ---- */

/* xorshift64*: a test-local generator, independent of the library's us_rand_* */
typedef struct rng {
    uint64_t s;
} rng;
static double rnd_u(rng *r) { /* [0, 1) */
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return (double)((r->s * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static double rnd_n(rng *r) {
    double u1 = rnd_u(r) + 1e-12, u2 = rnd_u(r);
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}
/* f32 values N(0, sd^2) into f and their exact double copies into d (either may be NULL) */
static void fill(rng *r, float *f, double *d, size_t n, double sd) {
    for (size_t i = 0; i < n; i++) {
        float v = (float)(sd * rnd_n(r));
        if (f) f[i] = v;
        if (d) d[i] = v;
    }
}
static double *dalloc(size_t n) { return calloc(n ? n : 1, sizeof(double)); }
static float *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }
static void f2d(double *d, const float *f, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f[i];
}

/* max|a - ref| / max(max|ref|, floor) */
static double serr(const float *a, const double *ref, size_t n, double floor_) {
    double mr = floor_, md = 0;
    for (size_t i = 0; i < n; i++) {
        mr = fmax(mr, fabs(ref[i]));
        md = fmax(md, fabs((double)a[i] - ref[i]));
    }
    return md / mr;
}

#define EXPECT_CLOSE(what, got, ref, n, tol)                                                        \
    do {                                                                                            \
        double e_ = serr((got), (ref), (n), 1e-30);                                                 \
        CHECK(e_ <= (tol), "%s: scaled error %.3g > %.3g", (what), e_, (double)(tol));              \
    } while (0)

/* central finite differences of f(ctx) w.r.t. x[0..n) (x is perturbed in place and restored) */
typedef double (*loss_fn)(void *ctx);
static void fd_grad(loss_fn f, void *ctx, double *x, size_t n, double h, double *g) {
    for (size_t i = 0; i < n; i++) {
        double s = x[i];
        x[i] = s + h;
        double lp = f(ctx);
        x[i] = s - h;
        double lm = f(ctx);
        x[i] = s;
        g[i] = (lp - lm) / (2 * h);
    }
}
static double wdot(const double *w, const double *y, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += w[i] * y[i];
    return s;
}

#define TOL 1e-4   /* f32 op vs f64 reference, relative to scale */
#define FD_H 1e-4  /* finite-difference step on O(1) inputs */

static us_backend *cpu(void) {
    us_backend *be = NULL;
    us_err e = {{0}};
    if (us_backend_cpu_create(0, &be, &e)) return NULL;
    return be;
}

/* ==== embedding ==== */

typedef struct emb_ctx {
    double *E, *w, *x;
    const int32_t *ids;
    int T, dim;
} emb_ctx;
static void emb_ref(emb_ctx *c) {
    for (int t = 0; t < c->T; t++)
        for (int d = 0; d < c->dim; d++) c->x[t * c->dim + d] = c->E[c->ids[t] * c->dim + d];
}
static double emb_loss(void *p) {
    emb_ctx *c = p;
    emb_ref(c);
    return wdot(c->w, c->x, (size_t)c->T * c->dim);
}

TEST(ops_embed) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {11};
    enum { V = 11, D = 13, T = 9 };
    const int32_t ids[T] = {3, 0, 10, 3, 3, 7, 0, 5, 10}; /* repeats: 3 x3, 0 x2, 10 x2 */
    float E[V * D], x[T * D], w[T * D], dE[V * D];
    double Ed[V * D], wd[T * D], xd[T * D], dE0[V * D], fd[V * D];
    fill(&r, E, Ed, V * D, 1);
    fill(&r, w, wd, T * D, 1);
    fill(&r, dE, dE0, V * D, 1); /* embed_bwd adds */
    void *Ew = be->weight_upload(be, E, US_DT_F32, V * D);
    be->embed_fwd(be, x, Ew, ids, T, D);
    emb_ctx c = {Ed, wd, xd, ids, T, D};
    emb_ref(&c);
    EXPECT_CLOSE("embed_fwd", x, xd, T * D, 0);
    be->embed_bwd(be, dE, w, ids, T, D);
    fd_grad(emb_loss, &c, Ed, V * D, FD_H, fd);
    for (int i = 0; i < V * D; i++) fd[i] += dE0[i];
    EXPECT_CLOSE("embed_bwd dE (repeated ids accumulate, unused rows untouched)", dE, fd, V * D, 1e-6);
    be->free(be, Ew);
    be->destroy(be);
}

/* ==== RMSNorm ==== */

typedef struct rms_ctx {
    double *x, *wt, *w, *y, *rstd;
    int T, dim;
    double eps;
} rms_ctx;
static void rms_ref(rms_ctx *c) {
    for (int t = 0; t < c->T; t++) {
        double ss = 0;
        for (int d = 0; d < c->dim; d++) ss += c->x[t * c->dim + d] * c->x[t * c->dim + d];
        double r = 1.0 / sqrt(ss / c->dim + c->eps);
        c->rstd[t] = r;
        for (int d = 0; d < c->dim; d++) c->y[t * c->dim + d] = c->wt[d] * (c->x[t * c->dim + d] * r);
    }
}
static double rms_loss(void *p) {
    rms_ctx *c = p;
    rms_ref(c);
    return wdot(c->w, c->y, (size_t)c->T * c->dim);
}

TEST(ops_rmsnorm) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {12};
    enum { T = 5, D = 37 };
    float x[T * D], wt[D], y[T * D], rstd[T], w[T * D], dx[T * D], dw[D], dxa[T * D];
    double xd[T * D], wtd[D], yd[T * D], rstdd[T], wd[T * D], fdx[T * D], fdw[D], dw0[D], dx0[T * D];
    fill(&r, x, xd, T * D, 2);
    for (int i = D; i < 2 * D; i++) x[i] *= 0.01f, xd[i] = x[i]; /* a small-magnitude row: eps matters */
    fill(&r, wt, wtd, D, 1);
    fill(&r, w, wd, T * D, 1);
    fill(&r, dw, dw0, D, 1);
    fill(&r, dxa, dx0, T * D, 1);
    rms_ctx c = {xd, wtd, wd, yd, rstdd, T, D, 1e-3};
    rms_ref(&c);
    be->rmsnorm_fwd(be, y, D, rstd, x, wt, T, D, 1e-3f);
    EXPECT_CLOSE("rmsnorm_fwd y", y, yd, T * D, TOL);
    EXPECT_CLOSE("rmsnorm_fwd rstd", rstd, rstdd, T, TOL);
    { /* rows ldy apart: the same values, the columns past D untouched */
        enum { LDY = D + 3 };
        float yp[T * LDY], yc[T * D];
        for (int i = 0; i < T * LDY; i++) yp[i] = -7.0f;
        be->rmsnorm_fwd(be, yp, LDY, rstd, x, wt, T, D, 1e-3f);
        int pad_ok = 1;
        for (int t = 0; t < T; t++) {
            memcpy(yc + t * D, yp + t * LDY, D * sizeof(float));
            for (int j = D; j < LDY; j++) pad_ok &= yp[t * LDY + j] == -7.0f;
        }
        EXPECT_CLOSE("rmsnorm_fwd y (pitch)", yc, yd, T * D, TOL);
        CHECK(pad_ok, "rmsnorm_fwd wrote past dim in a pitched row");
    }
    /* backward: dy = w */
    be->rmsnorm_bwd(be, dx, D, false, dw, w, x, rstd, wt, T, D);
    fd_grad(rms_loss, &c, xd, T * D, 1e-6, fdx);
    EXPECT_CLOSE("rmsnorm_bwd dx", dx, fdx, T * D, TOL);
    { /* dx rows D + 2 apart: the same rows, the columns past D untouched */
        enum { LDX = D + 2 };
        float dxp[T * LDX], dxc[T * D];
        for (int i = 0; i < T * LDX; i++) dxp[i] = -5.0f;
        be->rmsnorm_bwd(be, dxp, LDX, false, NULL, w, x, rstd, wt, T, D);
        int pad_ok = 1;
        for (int t = 0; t < T; t++) {
            memcpy(dxc + t * D, dxp + t * LDX, D * sizeof(float));
            pad_ok &= dxp[t * LDX + D] == -5.0f && dxp[t * LDX + D + 1] == -5.0f;
        }
        EXPECT_CLOSE("rmsnorm_bwd dx (pitch)", dxc, fdx, T * D, TOL);
        CHECK(pad_ok, "rmsnorm_bwd wrote past dim in a pitched row");
    }
    fd_grad(rms_loss, &c, wtd, D, FD_H, fdw);
    for (int i = 0; i < D; i++) fdw[i] += dw0[i];
    EXPECT_CLOSE("rmsnorm_bwd dw (adds)", dw, fdw, D, TOL);
    /* acc = true adds into dx; dw NULL is allowed */
    be->rmsnorm_bwd(be, dxa, D, true, NULL, w, x, rstd, wt, T, D);
    for (int i = 0; i < T * D; i++) fdx[i] += dx0[i];
    EXPECT_CLOSE("rmsnorm_bwd dx acc=true", dxa, fdx, T * D, TOL);
    be->destroy(be);
}

/* ==== linear ==== */

typedef struct lin_ctx {
    double *x, *W, *b, *w, *y, *y0;
    int T, in, out;
} lin_ctx;
static void lin_ref(lin_ctx *c) {
    for (int t = 0; t < c->T; t++)
        for (int o = 0; o < c->out; o++) {
            double s = c->y0 ? c->y0[t * c->out + o] : 0;
            for (int i = 0; i < c->in; i++) s += c->x[t * c->in + i] * c->W[o * c->in + i];
            if (c->b) s += c->b[o];
            c->y[t * c->out + o] = s;
        }
}
static double lin_loss(void *p) {
    lin_ctx *c = p;
    lin_ref(c);
    return wdot(c->w, c->y, (size_t)c->T * c->out);
}

TEST(ops_linear) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {13};
    enum { T = 6, IN = 19, OUT = 11 };
    float x[T * IN], W[OUT * IN], b[OUT], w[T * OUT], y[T * OUT], dx[T * IN], dW[OUT * IN], db[OUT];
    double xd[T * IN], Wd[OUT * IN], bd[OUT], wd[T * OUT], yd[T * OUT], y0[T * OUT], fd[OUT * IN], dx0[T * IN],
        dW0[OUT * IN], db0[OUT];
    fill(&r, x, xd, T * IN, 1);
    fill(&r, W, Wd, OUT * IN, 0.3);
    fill(&r, b, bd, OUT, 1);
    fill(&r, w, wd, T * OUT, 1);
    void *Wdev = be->weight_upload(be, W, US_DT_F32, OUT * IN);
    /* no bias, acc = false (y holds garbage first) */
    for (int i = 0; i < T * OUT; i++) y[i] = 1e6f;
    be->linear_fwd(be, y, NULL, x, IN, Wdev, IN, NULL, T, IN, OUT);
    lin_ctx c = {xd, Wd, NULL, wd, yd, NULL, T, IN, OUT};
    lin_ref(&c);
    EXPECT_CLOSE("linear_fwd", y, yd, T * OUT, TOL);
    /* x and W with rows further apart than IN (garbage between): the same product */
    enum { LDX = IN + 3, LDW = IN + 5 };
    float xp[T * LDX], Wp[OUT * LDW];
    for (int i = 0; i < T * LDX; i++) xp[i] = 1e30f;
    for (int i = 0; i < OUT * LDW; i++) Wp[i] = 1e30f;
    for (int t = 0; t < T; t++) memcpy(xp + t * LDX, x + t * IN, IN * sizeof(float));
    void *Wpdev = be->weight_upload(be, Wp, US_DT_F32, OUT * LDW);
    be->weight_put(be, Wpdev, LDW, W, OUT, IN, 1.0f); /* W from f32 into the pitched matrix */
    be->linear_fwd(be, y, NULL, xp, LDX, Wpdev, LDW, NULL, T, IN, OUT);
    EXPECT_CLOSE("linear_fwd (pitched x, W)", y, yd, T * OUT, TOL);
    /* bias, acc = true */
    fill(&r, y, y0, T * OUT, 1);
    be->linear_fwd(be, y, y, x, IN, Wdev, IN, b, T, IN, OUT);
    c.b = bd;
    c.y0 = y0;
    lin_ref(&c);
    EXPECT_CLOSE("linear_fwd bias acc", y, yd, T * OUT, TOL);
    /* res another tensor: y = res + x W^T + b, res untouched (y garbage first) */
    float res[T * OUT], res_keep[T * OUT];
    fill(&r, res, y0, T * OUT, 1);
    memcpy(res_keep, res, sizeof res);
    for (int i = 0; i < T * OUT; i++) y[i] = 1e6f;
    be->linear_fwd(be, y, res, x, IN, Wdev, IN, b, T, IN, OUT);
    lin_ref(&c);
    EXPECT_CLOSE("linear_fwd res elsewhere", y, yd, T * OUT, TOL);
    CHECK(!memcmp(res, res_keep, sizeof res), "linear_fwd wrote its residual");
    c.y0 = NULL;
    /* backward: dy = w */
    be->linear_bwd_x(be, dx, false, w, OUT, Wdev, IN, T, IN, OUT);
    fd_grad(lin_loss, &c, xd, T * IN, FD_H, fd);
    EXPECT_CLOSE("linear_bwd_x", dx, fd, T * IN, TOL);
    enum { LDY = OUT + 3 };
    float wp[T * LDY];
    for (int i = 0; i < T * LDY; i++) wp[i] = 1e30f;
    for (int t = 0; t < T; t++) memcpy(wp + t * LDY, w + t * OUT, OUT * sizeof(float));
    be->linear_bwd_x(be, dx, false, wp, LDY, Wpdev, LDW, T, IN, OUT);
    EXPECT_CLOSE("linear_bwd_x (pitched dy, W)", dx, fd, T * IN, TOL);
    be->free(be, Wpdev);
    fill(&r, dx, dx0, T * IN, 1);
    be->linear_bwd_x(be, dx, true, w, OUT, Wdev, IN, T, IN, OUT);
    for (int i = 0; i < T * IN; i++) fd[i] += dx0[i];
    EXPECT_CLOSE("linear_bwd_x acc", dx, fd, T * IN, TOL);
    fill(&r, dW, dW0, OUT * IN, 1);
    fill(&r, db, db0, OUT, 1);
    be->linear_bwd_w(be, dW, db, w, x, T, IN, OUT);
    double fdW[OUT * IN];
    fd_grad(lin_loss, &c, Wd, OUT * IN, FD_H, fdW);
    for (int i = 0; i < OUT * IN; i++) fd[i] = fdW[i] + dW0[i];
    EXPECT_CLOSE("linear_bwd_w dW (adds)", dW, fd, OUT * IN, TOL);
    fd_grad(lin_loss, &c, bd, OUT, FD_H, fd);
    for (int i = 0; i < OUT; i++) fd[i] += db0[i];
    EXPECT_CLOSE("linear_bwd_w dbias (adds)", db, fd, OUT, TOL);
    /* each may be NULL */
    float db2[OUT];
    memcpy(db2, db, sizeof db);
    be->linear_bwd_w(be, NULL, db2, w, x, T, IN, OUT);
    for (int i = 0; i < OUT; i++) fd[i] += fd[i] - db0[i];
    EXPECT_CLOSE("linear_bwd_w dW NULL, dbias adds again", db2, fd, OUT, TOL);
    float dW2[OUT * IN];
    memcpy(dW2, dW, sizeof dW);
    be->linear_bwd_w(be, dW2, NULL, w, x, T, IN, OUT);
    double want[OUT * IN];
    for (int i = 0; i < OUT * IN; i++) want[i] = 2.0 * fdW[i] + dW0[i];
    EXPECT_CLOSE("linear_bwd_w dbias NULL", dW2, want, OUT * IN, TOL);
    be->free(be, Wdev);
    be->destroy(be);
}

/* ==== LoRA ==== */

/* A group of two adapted projections reading the same x (as q and v do): A1, A2 one [2r, in]
 * block, u1, u2 column blocks of one [T, 2r] tensor. y_k = s (x A_k^T) B_k^T. */
typedef struct lora_ctx {
    double *x, *A, *B1, *B2, *w1, *w2, *y1, *y2;
    double s;
    int T, in, out1, out2, r;
} lora_ctx;
static void lora_ref(lora_ctx *c, double *u) { /* u [T, 2r] */
    double uu[64];
    for (int t = 0; t < c->T; t++) {
        for (int k = 0; k < 2 * c->r; k++) {
            double v = 0;
            for (int i = 0; i < c->in; i++) v += c->x[t * c->in + i] * c->A[k * c->in + i];
            uu[k] = v;
            if (u) u[t * 2 * c->r + k] = v;
        }
        for (int o = 0; o < c->out1 + c->out2; o++) {
            bool first = o < c->out1;
            int oo = first ? o : o - c->out1;
            double v = 0;
            for (int k = 0; k < c->r; k++) v += uu[(first ? 0 : c->r) + k] * (first ? c->B1 : c->B2)[oo * c->r + k];
            (first ? c->y1 : c->y2)[t * (first ? c->out1 : c->out2) + oo] = c->s * v;
        }
    }
}
static double lora_loss(void *p) {
    lora_ctx *c = p;
    lora_ref(c, NULL);
    return wdot(c->w1, c->y1, (size_t)c->T * c->out1) + wdot(c->w2, c->y2, (size_t)c->T * c->out2);
}

TEST(ops_lora) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng rg = {14};
    enum { T = 7, IN = 17, O1 = 13, O2 = 6, R = 4, LD = 2 * R };
    const float s = 2.5f;
    float x[T * IN], A[LD * IN], B1[O1 * R], B2[O2 * R], w1[T * O1], w2[T * O2], u[T * LD], du[T * LD];
    float y1[T * O1], y2[T * O2], res[T * O2], dx[T * IN], dA[LD * IN], dB1[O1 * R], dB2[O2 * R];
    double xd[T * IN], Ad[LD * IN], B1d[O1 * R], B2d[O2 * R], w1d[T * O1], w2d[T * O2], y1d[T * O1], y2d[T * O2];
    double ud[T * LD], resd[T * O2], want[T * IN > LD * IN ? T * IN : LD * IN], fd[LD * IN > T * IN ? LD * IN : T * IN];
    double dx0[T * IN], dA0[LD * IN], dB10[O1 * R], dB20[O2 * R];
    fill(&rg, x, xd, T * IN, 1);
    fill(&rg, A, Ad, LD * IN, 0.3);
    fill(&rg, B1, B1d, O1 * R, 0.3);
    fill(&rg, B2, B2d, O2 * R, 0.3);
    fill(&rg, w1, w1d, T * O1, 1);
    fill(&rg, w2, w2d, T * O2, 1);
    lora_ctx c = {xd, Ad, B1d, B2d, w1d, w2d, y1d, y2d, s, T, IN, O1, O2, R};
    lora_ref(&c, ud);
    /* one lora_down for the group, two lora_up: res NULL (write), res == y (add), res elsewhere */
    be->lora_down(be, u, LD, x, IN, A, T, IN, LD, false);
    EXPECT_CLOSE("lora_down u = x [A1; A2]^T", u, ud, T * LD, TOL);
    /* folded: x with room for u beside it (pitch IN + LD + 1); one product over [x | u] against
     * [W | s B] (weight_put) equals x W^T + s u1 B1^T */
    enum { XP = IN + LD + 1 };
    float xf[T * XP], uf[T * LD], Wf[O1 * XP], Wz[O1 * IN], yf[T * O1];
    double yfd[T * O1];
    for (int i = 0; i < T * XP; i++) xf[i] = 1e30f;
    for (int t = 0; t < T; t++) memcpy(xf + t * XP, x + t * IN, IN * sizeof(float));
    be->lora_down(be, uf, LD, xf, XP, A, T, IN, LD, true);
    EXPECT_CLOSE("lora_down u (pitched x)", uf, ud, T * LD, TOL);
    float ub[T * LD];
    for (int t = 0; t < T; t++) memcpy(ub + t * LD, xf + t * XP + IN, LD * sizeof(float));
    EXPECT_CLOSE("lora_down fold: u beside x", ub, ud, T * LD, TOL);
    fill(&rg, Wz, NULL, O1 * IN, 0.3);
    void *Wfdev = be->weight_upload(be, Wf, US_DT_F32, O1 * XP); /* contents replaced below */
    be->weight_put(be, Wfdev, XP, Wz, O1, IN, 1.0f);
    be->weight_put(be, (char *)Wfdev + IN * be->weight_bytes, XP, NULL, O1, LD, 0.0f);
    be->weight_put(be, (char *)Wfdev + IN * be->weight_bytes, XP, B1, O1, R, s); /* member 1's block */
    be->linear_fwd(be, yf, NULL, xf, XP, Wfdev, XP, NULL, T, IN + LD, O1);
    for (int t = 0; t < T; t++)
        for (int o = 0; o < O1; o++) {
            double v = y1d[t * O1 + o];
            for (int k = 0; k < IN; k++) v += xd[t * IN + k] * (double)Wz[o * IN + k];
            yfd[t * O1 + o] = v;
        }
    EXPECT_CLOSE("folded product x W^T + s u1 B1^T", yf, yfd, T * O1, TOL);
    be->free(be, Wfdev);
    fill(&rg, y1, NULL, T * O1, 1); /* garbage that must be overwritten */
    be->lora_up(be, y1, NULL, u, LD, B1, s, T, O1, R);
    EXPECT_CLOSE("lora_up y1 = s u1 B1^T", y1, y1d, T * O1, TOL);
    fill(&rg, y2, resd, T * O2, 1);
    be->lora_up(be, y2, y2, u + R, LD, B2, s, T, O2, R);
    for (int i = 0; i < T * O2; i++) want[i] = resd[i] + y2d[i];
    EXPECT_CLOSE("lora_up y2 += s u2 B2^T (res == y)", y2, want, T * O2, TOL);
    fill(&rg, res, resd, T * O2, 1);
    fill(&rg, y2, NULL, T * O2, 1);
    be->lora_up(be, y2, res, u + R, LD, B2, s, T, O2, R);
    for (int i = 0; i < T * O2; i++) want[i] = resd[i] + y2d[i];
    EXPECT_CLOSE("lora_up y2 = res + s u2 B2^T", y2, want, T * O2, TOL);

    /* backward: du and dB per member, then one lora_bwd_x for the group */
    fill(&rg, dB1, dB10, O1 * R, 1);
    fill(&rg, dB2, dB20, O2 * R, 1);
    fill(&rg, dA, dA0, LD * IN, 1);
    be->lora_bwd_dy(be, du, LD, dB1, w1, O1, u, LD, B1, s, T, O1, R, 0);
    be->lora_bwd_dy(be, du + R, LD, dB2, w2, O2, u + R, LD, B2, s, T, O2, R, 0);
    { /* folded: dy rows O1 + R apart get du1 beside them, and one input-gradient product over
       * O1 + R rows of [W; A1] equals dy W + du1 A1 */
        enum { YP = O1 + R };
        float dyp[T * YP], du1[T * R], dBs[O1 * R], Wx[YP * IN], dxf[T * IN], Wq[O1 * IN];
        double dxw[T * IN];
        for (int i = 0; i < T * YP; i++) dyp[i] = 1e30f;
        for (int t = 0; t < T; t++) memcpy(dyp + t * YP, w1 + t * O1, O1 * sizeof(float));
        memset(dBs, 0, sizeof dBs);
        be->lora_bwd_dy(be, du1, R, dBs, dyp, YP, u, LD, B1, s, T, O1, R, O1);
        float beside[T * R], dur[T * R];
        for (int t = 0; t < T; t++) {
            memcpy(beside + t * R, dyp + t * YP + O1, R * sizeof(float));
            memcpy(dur + t * R, du + t * LD, R * sizeof(float));
        }
        double dud[T * R];
        for (int i = 0; i < T * R; i++) dud[i] = dur[i];
        EXPECT_CLOSE("lora_bwd_dy du (pitched dy)", du1, dud, T * R, TOL);
        EXPECT_CLOSE("lora_bwd_dy fold: du beside dy", beside, dud, T * R, TOL);
        fill(&rg, Wq, NULL, O1 * IN, 0.3);
        memcpy(Wx, Wq, sizeof Wq);
        memcpy(Wx + O1 * IN, A, R * IN * sizeof(float)); /* A1: the group's first R rows */
        void *Wxd = be->weight_upload(be, Wx, US_DT_F32, YP * IN);
        be->linear_bwd_x(be, dxf, false, dyp, YP, Wxd, IN, T, IN, YP);
        for (int t = 0; t < T; t++)
            for (int i = 0; i < IN; i++) {
                double v = 0;
                for (int o = 0; o < O1; o++) v += w1d[t * O1 + o] * (double)Wq[o * IN + i];
                for (int k = 0; k < R; k++) v += dud[t * R + k] * Ad[k * IN + i];
                dxw[t * IN + i] = v;
            }
        EXPECT_CLOSE("folded input gradient dy W + du1 A1", dxf, dxw, T * IN, TOL);
        be->free(be, Wxd);
    }
    fd_grad(lora_loss, &c, B1d, O1 * R, FD_H, fd);
    for (int i = 0; i < O1 * R; i++) want[i] = fd[i] + dB10[i];
    EXPECT_CLOSE("lora_bwd_dy dB1 (adds)", dB1, want, O1 * R, TOL);
    fd_grad(lora_loss, &c, B2d, O2 * R, FD_H, fd);
    for (int i = 0; i < O2 * R; i++) want[i] = fd[i] + dB20[i];
    EXPECT_CLOSE("lora_bwd_dy dB2 (adds)", dB2, want, O2 * R, TOL);
    fill(&rg, dx, NULL, T * IN, 1); /* overwritten: res NULL */
    be->lora_bwd_x(be, dx, NULL, dA, du, LD, xf, XP, NULL, NULL, A, T, IN, LD); /* pitched x */
    fd_grad(lora_loss, &c, xd, T * IN, FD_H, fd);
    EXPECT_CLOSE("lora_bwd_x dx = du [A1; A2]", dx, fd, T * IN, TOL);
    double fdA[LD * IN];
    fd_grad(lora_loss, &c, Ad, LD * IN, FD_H, fdA);
    for (int i = 0; i < LD * IN; i++) want[i] = fdA[i] + dA0[i];
    EXPECT_CLOSE("lora_bwd_x dA (adds)", dA, want, LD * IN, TOL);
    fill(&rg, dx, dx0, T * IN, 1); /* res == dx: adds */
    be->lora_bwd_x(be, dx, dx, dA, du, LD, x, IN, NULL, NULL, A, T, IN, LD);
    for (int i = 0; i < T * IN; i++) want[i] = dx0[i] + fd[i];
    EXPECT_CLOSE("lora_bwd_x dx += du A", dx, want, T * IN, TOL);
    for (int i = 0; i < LD * IN; i++) want[i] = 2 * fdA[i] + dA0[i];
    EXPECT_CLOSE("lora_bwd_x dA adds again", dA, want, LD * IN, TOL);
    be->lora_bwd_x(be, NULL, NULL, dA, du, LD, x, IN, NULL, NULL, A, T, IN, LD); /* dx NULL: only dA */
    for (int i = 0; i < LD * IN; i++) want[i] = 3 * fdA[i] + dA0[i];
    EXPECT_CLOSE("lora_bwd_x dx=NULL dA", dA, want, LD * IN, TOL);
    { /* x an RMSNorm's input: dA from the normed rows x[t, i] rstd[t] w[i], never formed (float64 reference) */
        float rs[T], nw[IN], dAn[LD * IN];
        double wantn[LD * IN];
        for (int t = 0; t < T; t++) rs[t] = 0.5f + 0.1f * (float)t;
        for (int i = 0; i < IN; i++) nw[i] = 1.5f - 0.2f * (float)i;
        for (int i = 0; i < LD * IN; i++) dAn[i] = (float)dA0[i];
        be->lora_bwd_x(be, NULL, NULL, dAn, du, LD, xf, XP, rs, nw, A, T, IN, LD);
        for (int j = 0; j < LD; j++)
            for (int i = 0; i < IN; i++) {
                double v = dA0[j * IN + i];
                for (int t = 0; t < T; t++) v += (double)xf[t * XP + i] * rs[t] * nw[i] * du[t * LD + j];
                wantn[j * IN + i] = v;
            }
        EXPECT_CLOSE("lora_bwd_x dA from an RMSNorm's input (rstd, w)", dAn, wantn, LD * IN, TOL);
    }
    be->destroy(be);
}

/* ==== RoPE ==== */

/* rotate-half (transformers' rotate_half / apply_rotary_pos_emb): for i < hd/2,
 * out[i] = x[i] cos - x[i+hd/2] sin, out[i+hd/2] = x[i+hd/2] cos + x[i] sin, angle = pos * inv_freq[i] */
typedef struct rope_ctx {
    double *x, *w, *y;
    const int32_t *pos;
    const float *inv_freq;
    int T, nh, hd;
} rope_ctx;
static void rope_ref(rope_ctx *c) {
    int half = c->hd / 2;
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < c->nh; h++) {
            const double *xr = c->x + ((size_t)t * c->nh + h) * c->hd;
            double *yr = c->y + ((size_t)t * c->nh + h) * c->hd;
            for (int j = 0; j < c->hd; j++) {
                int i = j % half;
                double ang = (double)c->pos[t] * (double)c->inv_freq[i];
                double rot = j < half ? -xr[j + half] : xr[j - half];
                yr[j] = xr[j] * cos(ang) + rot * sin(ang);
            }
        }
}
static double rope_loss(void *p) {
    rope_ctx *c = p;
    rope_ref(c);
    return wdot(c->w, c->y, (size_t)c->T * c->nh * c->hd);
}

TEST(ops_rope) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {15};
    enum { T = 6, NH = 3, HD = 16, N = T * NH * HD };
    const int32_t pos[T] = {7, 8, 9, 0, 100, 257}; /* not starting at 0, a restart, larger ones */
    float inv[HD / 2];
    for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / HD);
    float x[N], y[N], w[N], z[N];
    double xd[N], wd[N], yd[N], fd[N];
    fill(&r, x, xd, N, 1);
    fill(&r, w, wd, N, 1);
    memcpy(y, x, sizeof x);
    be->rope(be, y, pos, inv, T, NH, HD, false);
    rope_ctx c = {xd, wd, yd, pos, inv, T, NH, HD};
    rope_ref(&c);
    EXPECT_CLOSE("rope forward vs f64 formula", y, yd, N, TOL);
    /* inverse is the transpose: <R x, w> = <x, R^T w> */
    memcpy(z, w, sizeof w);
    be->rope(be, z, pos, inv, T, NH, HD, true);
    double lhs = 0, rhs = 0, sc = 0;
    for (int i = 0; i < N; i++) {
        lhs += (double)y[i] * w[i];
        rhs += (double)x[i] * z[i];
        sc += fabs((double)x[i] * z[i]);
    }
    CHECK(fabs(lhs - rhs) <= 1e-5 * sc, "rope inverse is not the adjoint: %.9g vs %.9g", lhs, rhs);
    /* backward of L = <w, R x> w.r.t. x is R^T w = rope(w, inverse) */
    fd_grad(rope_loss, &c, xd, N, FD_H, fd);
    EXPECT_CLOSE("rope inverse vs d/dx of rope (finite differences)", z, fd, N, TOL);
    /* and it undoes the rotation */
    be->rope(be, y, pos, inv, T, NH, HD, true);
    EXPECT_CLOSE("rope inverse(rope(x)) = x", y, xd, N, TOL);
    be->destroy(be);
}

/* qkv_merge: [rope^-1(dq) | rope^-1(dk) | dv] rows, pitched; rope^-1 as finite differences of the
 * forward rotation (rope_loss), the dv block a copy, the pitch's spare columns untouched */
TEST(ops_qkv_merge) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {16};
    enum { T = 5, NQ = 4, NK = 2, HD = 8, LD = (NQ + 2 * NK) * HD + 3 };
    const int32_t pos[T] = {3, 4, 0, 1, 90};
    float inv[HD / 2];
    for (int i = 0; i < HD / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / HD);
    float dq[T * NQ * HD], dk[T * NK * HD], dv[T * NK * HD], dst[T * LD];
    double dqd[T * NQ * HD], dkd[T * NK * HD], fdq[T * NQ * HD], fdk[T * NK * HD];
    double xq[T * NQ * HD], xk[T * NK * HD], yq[T * NQ * HD], yk[T * NK * HD];
    fill(&r, dq, dqd, T * NQ * HD, 1);
    fill(&r, dk, dkd, T * NK * HD, 1);
    fill(&r, dv, NULL, T * NK * HD, 1);
    fill(&r, NULL, xq, T * NQ * HD, 1);
    fill(&r, NULL, xk, T * NK * HD, 1);
    for (int i = 0; i < T * LD; i++) dst[i] = 1e30f;
    be->qkv_merge(be, dst, LD, dq, dk, dv, pos, inv, T, NQ, NK, HD);
    /* d/dx <w, rope(x)> = rope^-1(w): finite differences with w = dq (dk) */
    rope_ctx cq = {xq, dqd, yq, pos, inv, T, NQ, HD}, ck = {xk, dkd, yk, pos, inv, T, NK, HD};
    fd_grad(rope_loss, &cq, xq, T * NQ * HD, FD_H, fdq);
    fd_grad(rope_loss, &ck, xk, T * NK * HD, FD_H, fdk);
    float gq[T * NQ * HD], gk[T * NK * HD];
    double wv[T * NK * HD];
    float gv[T * NK * HD];
    int spare_ok = 1;
    for (int t = 0; t < T; t++) {
        memcpy(gq + t * NQ * HD, dst + t * LD, NQ * HD * sizeof(float));
        memcpy(gk + t * NK * HD, dst + t * LD + NQ * HD, NK * HD * sizeof(float));
        memcpy(gv + t * NK * HD, dst + t * LD + (NQ + NK) * HD, NK * HD * sizeof(float));
        for (int j = (NQ + 2 * NK) * HD; j < LD; j++) spare_ok &= dst[t * LD + j] == 1e30f;
    }
    for (int i = 0; i < T * NK * HD; i++) wv[i] = dv[i];
    EXPECT_CLOSE("qkv_merge dq block = rope^-1(dq) (finite differences)", gq, fdq, T * NQ * HD, TOL);
    EXPECT_CLOSE("qkv_merge dk block = rope^-1(dk) (finite differences)", gk, fdk, T * NK * HD, TOL);
    EXPECT_CLOSE("qkv_merge dv block = dv", gv, wv, T * NK * HD, 0);
    CHECK(spare_ok, "qkv_merge wrote past its (nq + 2 nkv) hd columns");
    be->destroy(be);
}

/* ==== attention ==== */

typedef struct attn_ctx {
    double *q, *k, *v, *w, *o, *lse;
    const int32_t *seg;
    int B, S, H, KV, hd;
    double scale;
} attn_ctx;
/* softmax(q k^T * scale) v per (row, head), keys j in [seg_start(i), i]; head h uses kv head
 * h / (H / KV) (transformers' repeat_kv) */
static void attn_ref(attn_ctx *c) {
    int grp = c->H / c->KV;
    double sc[256];
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < c->S; i++) {
                size_t ti = (size_t)b * c->S + i;
                int j0 = c->seg ? c->seg[ti] : 0, kh = h / grp;
                const double *qi = c->q + (ti * c->H + h) * c->hd;
                double m = -INFINITY, l = 0;
                for (int j = j0; j <= i; j++) {
                    const double *kj = c->k + (((size_t)b * c->S + j) * c->KV + kh) * c->hd;
                    double s = 0;
                    for (int d = 0; d < c->hd; d++) s += qi[d] * kj[d];
                    sc[j] = s * c->scale;
                    m = fmax(m, sc[j]);
                }
                for (int j = j0; j <= i; j++) l += exp(sc[j] - m);
                double *oi = c->o + (ti * c->H + h) * c->hd;
                for (int d = 0; d < c->hd; d++) oi[d] = 0;
                for (int j = j0; j <= i; j++) {
                    const double *vj = c->v + (((size_t)b * c->S + j) * c->KV + kh) * c->hd;
                    double p = exp(sc[j] - m) / l;
                    for (int d = 0; d < c->hd; d++) oi[d] += p * vj[d];
                }
                c->lse[ti * c->H + h] = m + log(l);
            }
}
static double attn_loss(void *p) {
    attn_ctx *c = p;
    attn_ref(c);
    return wdot(c->w, c->o, (size_t)c->B * c->S * c->H * c->hd);
}

static void attn_case(us_test_ctx *t, int H, int KV, const int32_t *seg, const char *what) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {16 + (uint64_t)H * 7 + KV + (seg ? 100 : 0)};
    enum { B = 2, S = 7, HD = 8 };
    int T = B * S, nq = T * H * HD, nk = T * KV * HD;
    float *q = falloc(nq), *k = falloc(nk), *v = falloc(nk), *o = falloc(nq), *lse = falloc(T * H), *w = falloc(nq),
          *dq = falloc(nq), *dk = falloc(nk), *dv = falloc(nk);
    double *qd = dalloc(nq), *kd = dalloc(nk), *vd = dalloc(nk), *od = dalloc(nq), *lsed = dalloc(T * H),
           *wd = dalloc(nq), *fd = dalloc(nq);
    fill(&r, q, qd, nq, 1);
    fill(&r, k, kd, nk, 1);
    fill(&r, v, vd, nk, 1);
    fill(&r, w, wd, nq, 1);
    us_attn_shape sh = {B, S, H, KV, HD, 1.0f / sqrtf((float)HD), 0};
    attn_ctx c = {qd, kd, vd, wd, od, lsed, seg, B, S, H, KV, HD, sh.scale};
    attn_ref(&c);
    be->attn_fwd(be, o, lse, q, k, v, seg, &sh);
    double e1 = serr(o, od, nq, 1e-30), e2 = serr(lse, lsed, T * H, 1e-30);
    CHECK(e1 <= TOL && e2 <= TOL, "%s: attn_fwd o error %.3g, lse error %.3g", what, e1, e2);
    /* dq, dk, dv are written, not added: start from garbage */
    for (int i = 0; i < nq; i++) dq[i] = 1e3f;
    for (int i = 0; i < nk; i++) dk[i] = dv[i] = -1e3f;
    be->attn_bwd(be, dq, dk, dv, w, q, k, v, o, lse, seg, &sh, NULL);
    double eq, ek, ev;
    fd_grad(attn_loss, &c, qd, nq, FD_H, fd);
    eq = serr(dq, fd, nq, 1e-30);
    fd_grad(attn_loss, &c, kd, nk, FD_H, fd);
    ek = serr(dk, fd, nk, 1e-30);
    fd_grad(attn_loss, &c, vd, nk, FD_H, fd);
    ev = serr(dv, fd, nk, 1e-30);
    free(q), free(k), free(v), free(o), free(lse), free(w), free(dq), free(dk), free(dv);
    free(qd), free(kd), free(vd), free(od), free(lsed), free(wd), free(fd);
    be->destroy(be);
    CHECK(eq <= TOL && ek <= TOL && ev <= TOL, "%s: attn_bwd vs finite differences: dq %.3g dk %.3g dv %.3g", what,
          eq, ek, ev);
}

/* packed examples: row 0 holds [0..2] and [3..6]; row 1 holds [0..4], [5] and [6] */
static const int32_t seg_packed[14] = {0, 0, 0, 3, 3, 3, 3, 0, 0, 0, 0, 0, 5, 6};

TEST(ops_attention_mha) { attn_case(t, 4, 4, NULL, "MHA"); }
TEST(ops_attention_gqa) { attn_case(t, 4, 2, NULL, "GQA 4/2"); }
TEST(ops_attention_mqa) { attn_case(t, 6, 1, NULL, "MQA 6/1"); }
TEST(ops_attention_gqa_packed) { attn_case(t, 4, 2, seg_packed, "GQA 4/2 with seg_start"); }
TEST(ops_attention_mqa_packed) { attn_case(t, 3, 1, seg_packed, "MQA 3/1 with seg_start"); }

/* packing matters: a token after a restart must not see the previous example */
TEST(ops_attention_segments_isolate) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {17};
    enum { B = 2, S = 7, H = 2, KV = 1, HD = 8, T = B * S };
    float q[T * H * HD], k[T * KV * HD], v[T * KV * HD], o1[T * H * HD], o2[T * H * HD], lse[T * H];
    fill(&r, q, NULL, T * H * HD, 1);
    fill(&r, k, NULL, T * KV * HD, 1);
    fill(&r, v, NULL, T * KV * HD, 1);
    us_attn_shape sh = {B, S, H, KV, HD, 0.35f, 0};
    be->attn_fwd(be, o1, lse, q, k, v, seg_packed, &sh);
    /* change keys/values of row 0's first example (positions 0..2): the second must not move */
    for (int j = 0; j < 3 * KV * HD; j++) k[j] += 1.0f, v[j] -= 2.0f;
    be->attn_fwd(be, o2, lse, q, k, v, seg_packed, &sh);
    for (int i = 3; i < S; i++)
        for (int d = 0; d < H * HD; d++)
            CHECK(o1[i * H * HD + d] == o2[i * H * HD + d], "token %d sees the previous packed example", i);
    /* token 5 of row 1 attends only to itself: its output is its own v */
    for (int h = 0; h < H; h++)
        for (int d = 0; d < HD; d++)
            CHECK(o1[(12 * H + h) * HD + d] == v[12 * KV * HD + d], "single-token segment output is not v");
    be->destroy(be);
}

/* The output's rows further apart than H * HD (o_proj's folded LoRA columns beside it): the same
 * values, nothing written between the rows, and the backward reading o with that pitch gives the
 * same gradients as with the dense o */
TEST(ops_attention_output_pitch) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {23};
    enum { B = 2, S = 9, H = 4, KV = 2, HD = 8, T = B * S, QD = H * HD, LDO = QD + 8 };
    float q[T * QD], k[T * KV * HD], v[T * KV * HD], o[T * QD], op[T * LDO], lse[T * H], lse2[T * H], dout[T * QD];
    float dq[T * QD], dk[T * KV * HD], dv[T * KV * HD], dq2[T * QD], dk2[T * KV * HD], dv2[T * KV * HD];
    fill(&r, q, NULL, T * QD, 1);
    fill(&r, k, NULL, T * KV * HD, 1);
    fill(&r, v, NULL, T * KV * HD, 1);
    fill(&r, dout, NULL, T * QD, 1);
    for (int i = 0; i < T * LDO; i++) op[i] = 1e30f;
    us_attn_shape sh = {B, S, H, KV, HD, 0.35f, 0}, shp = sh;
    shp.ldo = LDO;
    be->attn_fwd(be, o, lse, q, k, v, NULL, &sh);
    be->attn_fwd(be, op, lse2, q, k, v, NULL, &shp);
    for (int t2 = 0; t2 < T; t2++)
        for (int j = 0; j < LDO; j++)
            CHECK(op[t2 * LDO + j] == (j < QD ? o[t2 * QD + j] : 1e30f), "pitched output: token %d column %d", t2, j);
    CHECK(!memcmp(lse, lse2, sizeof lse), "pitched output: lse differs");
    be->attn_bwd(be, dq, dk, dv, dout, q, k, v, o, lse, NULL, &sh, NULL);
    be->attn_bwd(be, dq2, dk2, dv2, dout, q, k, v, op, lse, NULL, &shp, NULL);
    CHECK(!memcmp(dq, dq2, sizeof dq) && !memcmp(dk, dk2, sizeof dk) && !memcmp(dv, dv2, sizeof dv),
          "attention backward reads the pitched output differently");
    /* merge: the backward's gradients straight into qkv_merge's pitched rows (spare columns kept) */
    enum { LD = QD + 2 * KV * HD + 5 };
    float inv[HD / 2], m1[T * LD], m2[T * LD];
    int32_t pos[T];
    for (int i = 0; i < HD / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / HD);
    for (int t2 = 0; t2 < T; t2++) pos[t2] = 3 * t2 + 1;
    for (int i = 0; i < T * LD; i++) m1[i] = m2[i] = 1e30f;
    be->qkv_merge(be, m1, LD, dq, dk, dv, pos, inv, T, H, KV, HD);
    us_qkv_merge_out mg = {m2, LD, pos, inv};
    be->attn_bwd(be, dq2, dk2, dv2, dout, q, k, v, o, lse, NULL, &sh, &mg);
    CHECK(!memcmp(m1, m2, sizeof m1), "attn_bwd's merge differs from attn_bwd then qkv_merge");
    be->destroy(be);
}

/* Long rows: several query blocks of any blocked implementation (137 = 2 x 64 + 9), segments
 * restarting inside and across blocks. Backward is checked by finite differences on a sample of
 * coordinates of q, k and v (all of them would take ~10^9 flops of float64 reference). */
static void fd_grad_at(loss_fn f, void *ctx, double *x, const size_t *idx, int n, double h, double *g) {
    for (int k = 0; k < n; k++) {
        double s = x[idx[k]];
        x[idx[k]] = s + h;
        double lp = f(ctx);
        x[idx[k]] = s - h;
        double lm = f(ctx);
        x[idx[k]] = s;
        g[k] = (lp - lm) / (2 * h);
    }
}

TEST(ops_attention_long_rows) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {26};
    enum { B = 2, S = 137, H = 2, KV = 1, HD = 8, T = B * S, NQ = T * H * HD, NK = T * KV * HD, NS = 20 };
    int32_t seg[T];
    for (int i = 0; i < S; i++) {
        seg[i] = i < 70 ? 0 : 70;                                  /* row 0: [0, 70), [70, 137) */
        seg[S + i] = i < 11 ? 0 : i < 101 ? 11 : i < 128 ? 101 : 128; /* row 1: 4 examples */
    }
    float *q = falloc(NQ), *k = falloc(NK), *v = falloc(NK), *o = falloc(NQ), *lse = falloc(T * H), *w = falloc(NQ),
          *dq = falloc(NQ), *dk = falloc(NK), *dv = falloc(NK);
    double *qd = dalloc(NQ), *kd = dalloc(NK), *vd = dalloc(NK), *od = dalloc(NQ), *lsed = dalloc(T * H),
           *wd = dalloc(NQ);
    fill(&r, q, qd, NQ, 1);
    fill(&r, k, kd, NK, 1);
    fill(&r, v, vd, NK, 1);
    fill(&r, w, wd, NQ, 1);
    us_attn_shape sh = {B, S, H, KV, HD, 1.0f / sqrtf((float)HD), 0};
    for (int pass = 0; pass < 2 && !t->failed; pass++) {
        const int32_t *sg = pass ? seg : NULL;
        attn_ctx c = {qd, kd, vd, wd, od, lsed, sg, B, S, H, KV, HD, sh.scale};
        attn_ref(&c);
        be->attn_fwd(be, o, lse, q, k, v, sg, &sh);
        double e1 = serr(o, od, NQ, 1e-30), e2 = serr(lse, lsed, T * H, 1e-30);
        be->attn_bwd(be, dq, dk, dv, w, q, k, v, o, lse, sg, &sh, NULL);
        /* sample: random coordinates, plus the last token of each row */
        size_t iq[NS], ik[NS];
        for (int s = 0; s < NS; s++) {
            iq[s] = s < 2 ? ((size_t)(s * S + S - 1) * H + 1) * HD + 3 : (size_t)(rnd_u(&r) * NQ);
            ik[s] = s < 2 ? ((size_t)(s * S + S - 1) * KV + KV - 1) * HD + 5 : (size_t)(rnd_u(&r) * NK);
        }
        double fq[NS], fk[NS], fv[NS], gq[NS], gk[NS], gv[NS], mq = 1e-30, mk = 1e-30, mv = 1e-30, eq = 0, ek = 0, ev = 0;
        fd_grad_at(attn_loss, &c, qd, iq, NS, FD_H, fq);
        fd_grad_at(attn_loss, &c, kd, ik, NS, FD_H, fk);
        fd_grad_at(attn_loss, &c, vd, ik, NS, FD_H, fv);
        for (int s = 0; s < NS; s++) {
            gq[s] = dq[iq[s]], gk[s] = dk[ik[s]], gv[s] = dv[ik[s]];
            mq = fmax(mq, fabs(fq[s])), mk = fmax(mk, fabs(fk[s])), mv = fmax(mv, fabs(fv[s]));
        }
        for (int s = 0; s < NS; s++)
            eq = fmax(eq, fabs(gq[s] - fq[s]) / mq), ek = fmax(ek, fabs(gk[s] - fk[s]) / mk),
            ev = fmax(ev, fabs(gv[s] - fv[s]) / mv);
        CHECK(e1 <= TOL && e2 <= TOL, "S=137 %s: attn_fwd o error %.3g, lse error %.3g", pass ? "packed" : "causal", e1,
              e2);
        CHECK(eq <= TOL && ek <= TOL && ev <= TOL, "S=137 %s: attn_bwd vs finite differences: dq %.3g dk %.3g dv %.3g",
              pass ? "packed" : "causal", eq, ek, ev);
    }
    free(q), free(k), free(v), free(o), free(lse), free(w), free(dq), free(dk), free(dv);
    free(qd), free(kd), free(vd), free(od), free(lsed), free(wd);
    be->destroy(be);
}

/* incremental decoding: T new queries at positions start..start+T-1 over a cache of start+T rows
 * equal rows start.. of the full causal attention of one row of start+T tokens */
TEST(ops_attention_cached) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    if (!be->attn_cached) {
        be->destroy(be);
        return; /* optional op */
    }
    rng r = {25};
    enum { START = 5, TN = 3, S = START + TN, H = 4, KV = 2, HD = 8 };
    float q[TN * H * HD], kc[(S + 2) * KV * HD], vc[(S + 2) * KV * HD], o[TN * H * HD];
    double qd[S * H * HD] = {0}, kd[S * KV * HD], vd[S * KV * HD], od[S * H * HD], lsed[S * H];
    fill(&r, q, qd + START * H * HD, TN * H * HD, 1);
    fill(&r, kc, kd, S * KV * HD, 1);
    fill(&r, vc, vd, S * KV * HD, 1);
    for (int i = S * KV * HD; i < (S + 2) * KV * HD; i++) kc[i] = vc[i] = 1e4f; /* rows past the cache: unread */
    us_attn_shape sh = {1, 0, H, KV, HD, 1.0f / sqrtf((float)HD), 0};
    be->attn_cached(be, o, q, kc, vc, TN, START, &sh);
    attn_ctx c = {qd, kd, vd, NULL, od, lsed, NULL, 1, S, H, KV, HD, sh.scale};
    attn_ref(&c);
    EXPECT_CLOSE("attn_cached vs full causal attention", o, od + START * H * HD, TN * H * HD, TOL);
    be->destroy(be);
}

/* ==== gated MLP ==== */

typedef struct glu_ctx {
    double *g, *u, *w, *a;
    int n, act;
} glu_ctx;
static void glu_ref(glu_ctx *c) {
    for (int i = 0; i < c->n; i++) {
        double g = c->g[i];
        double f = c->act == US_GLU_RELU ? (g > 0 ? g : 0) : g / (1 + exp(-g)); /* ReLU; SiLU = g sigmoid(g) */
        c->a[i] = f * c->u[i];
    }
}
static double glu_loss(void *p) {
    glu_ctx *c = p;
    glu_ref(c);
    return wdot(c->w, c->a, (size_t)c->n);
}

/* glu_bwd's fused dA of the down projection: dA [K, cols] += dd^T a (a = the product, ad in
 * float64), dd rows K + 2 apart, dA starting from nonzero values (it accumulates); the same with
 * dg/du aliasing g/u (the product is formed before they are overwritten) */
static void check_glu_dA(us_test_ctx *t, us_backend *be, int act, const float *g, const float *u, const uint32_t *bits, const float *w,
                         const float *dg, const float *du, const double *ad, int rows, int cols, const char *what) {
    enum { K = 3, LD = K + 2 };
    size_t n = (size_t)rows * cols;
    float *dd = malloc((size_t)rows * LD * 4), *dA = malloc((size_t)K * cols * 4), *dA2 = malloc((size_t)K * cols * 4);
    float *g2 = malloc(n * 4), *u2 = malloc(n * 4), *dg2 = malloc(n * 4), *du2 = malloc(n * 4);
    double *want = malloc((size_t)K * cols * 8), *ddd = malloc((size_t)rows * LD * 8), *dA0 = malloc((size_t)K * cols * 8);
    rng r = {77};
    fill(&r, dd, ddd, (size_t)rows * LD, 1);
    fill(&r, dA, dA0, (size_t)K * cols, 0.5);
    memcpy(dA2, dA, (size_t)K * cols * 4);
    for (int j = 0; j < K; j++)
        for (int c = 0; c < cols; c++) {
            double s = dA0[j * cols + c];
            for (int t = 0; t < rows; t++) s += ddd[t * LD + j] * ad[(size_t)t * cols + c];
            want[j * cols + c] = s;
        }
    be->glu_bwd(be, act, dg2, du2, dA, dd, LD, K, w, g, u, bits, rows, cols);
    EXPECT_CLOSE(what, dA, want, (size_t)K * cols, TOL);
    CHECK(!memcmp(dg2, dg, n * 4) && !memcmp(du2, du, n * 4), "%s: dg/du differ with dA asked", what);
    memcpy(g2, g, n * 4);
    memcpy(u2, u, n * 4);
    be->glu_bwd(be, act, g2, u2, dA2, dd, LD, K, w, g2, u2, bits, rows, cols);
    CHECK(!memcmp(dA2, dA, (size_t)K * cols * 4) && !memcmp(g2, dg, n * 4) && !memcmp(u2, du, n * 4),
          "%s: in place differs", what);
    free(dd), free(dA), free(dA2), free(g2), free(u2), free(dg2), free(du2), free(want), free(ddd), free(dA0);
}

TEST(ops_glu_silu) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {18};
    enum { R = 5, C = 45, N = R * C };
    float g[N], g0[N], u[N], a[N], w[N], dg[N], du[N];
    double gd[N], ud[N], wd[N], ad[N], fd[N];
    fill(&r, g, gd, N, 3);
    fill(&r, u, ud, N, 1);
    fill(&r, w, wd, N, 1);
    memcpy(g0, g, sizeof g);
    be->glu_fwd(be, US_GLU_SILU, a, C, g, u, NULL, R, C, NULL, 0, NULL, 0, false);
    glu_ctx c = {gd, ud, wd, ad, N, US_GLU_SILU};
    glu_ref(&c);
    EXPECT_CLOSE("glu_fwd silu", a, ad, N, TOL);
    CHECK(!memcmp(g, g0, sizeof g), "glu_fwd silu modified g");
    be->glu_bwd(be, US_GLU_SILU, dg, du, NULL, NULL, 0, 0, w, g, u, NULL, R, C);
    fd_grad(glu_loss, &c, gd, N, FD_H, fd);
    EXPECT_CLOSE("glu_bwd silu dg", dg, fd, N, TOL);
    fd_grad(glu_loss, &c, ud, N, FD_H, fd);
    EXPECT_CLOSE("glu_bwd silu du", du, fd, N, TOL);
    /* dg/du may alias g/u */
    float g2[N], u2[N];
    memcpy(g2, g, sizeof g);
    memcpy(u2, u, sizeof u);
    be->glu_bwd(be, US_GLU_SILU, g2, u2, NULL, NULL, 0, 0, w, g2, u2, NULL, R, C);
    CHECK(!memcmp(g2, dg, sizeof g) && !memcmp(u2, du, sizeof u), "glu_bwd silu in place differs");
    glu_ref(&c); /* fd_grad left a perturbed product in ad */
    check_glu_dA(t, be, US_GLU_SILU, g, u, NULL, w, dg, du, ad, R, C, "glu_bwd silu dA");
    if (t->failed) return;
    /* the product's rows LDA apart (room for the down projection's LoRA columns): the same
     * values, nothing written between the rows */
    enum { LDA = C + 7 };
    float ap[R * LDA];
    for (int i = 0; i < R * LDA; i++) ap[i] = 1e30f;
    be->glu_fwd(be, US_GLU_SILU, ap, LDA, g, u, NULL, R, C, NULL, 0, NULL, 0, false);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < LDA; j++) {
            float want = j < C ? a[i * C + j] : 1e30f;
            CHECK(ap[i * LDA + j] == want, "glu pitched product: row %d column %d", i, j);
        }
    /* down's x·A from the product as written (ud: float64 reference), folded beside the product */
    enum { K = 3, LDU = K + 2 };
    float Ad[K * C], xa[R * LDU];
    fill(&r, Ad, NULL, K * C, 1);
    for (int i = 0; i < R * LDA; i++) ap[i] = 1e30f;
    for (int i = 0; i < R * LDU; i++) xa[i] = 1e30f;
    be->glu_fwd(be, US_GLU_SILU, ap, LDA, g, u, NULL, R, C, xa, LDU, Ad, K, true);
    for (int i = 0; i < R; i++) {
        for (int j = 0; j < K; j++) {
            double want = 0;
            for (int k = 0; k < C; k++) want += (double)a[i * C + k] * Ad[j * C + k];
            CHECK(fabs(xa[i * LDU + j] - want) <= 1e-5 * (1 + fabs(want)), "glu_fwd ud[%d][%d] %g, want %g", i, j,
                  xa[i * LDU + j], want);
            CHECK(ap[i * LDA + C + j] == xa[i * LDU + j], "glu_fwd fold: row %d column %d", i, C + j);
        }
        for (int j = K; j < LDU; j++) CHECK(xa[i * LDU + j] == 1e30f, "glu_fwd wrote ud[%d][%d]", i, j);
        for (int j = C + K; j < LDA; j++) CHECK(ap[i * LDA + j] == 1e30f, "glu_fwd wrote past the fold: row %d", i);
    }
    /* a = NULL: saving only, nothing touched */
    be->glu_fwd(be, US_GLU_SILU, NULL, C, g, u, NULL, R, C, NULL, 0, NULL, 0, false);
    CHECK(!memcmp(g, g0, sizeof g), "glu_fwd silu a=NULL modified g");
    be->destroy(be);
}

TEST(ops_glu_relu_bits) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {19};
    enum { R = 5, C = 45, N = R * C, WPR = (C + 31) / 32 };
    float g[N], gorig[N], u[N], a[N], w[N], dg[N], du[N], a2[N], g2[N];
    double gd[N], ud[N], wd[N], ad[N], fd[N];
    uint32_t bits[R * WPR + 1], bits2[R * WPR + 1];
    /* gates away from the kink (|g| >= 0.05) except a few exact zeros and a -0 */
    for (int i = 0; i < N; i++) {
        double v = rnd_n(&r);
        g[i] = (float)(v + (v >= 0 ? 0.05 : -0.05));
    }
    g[7] = 0.0f;
    g[50] = -0.0f;
    g[C - 1] = 0.0f;
    memcpy(gorig, g, sizeof g);
    f2d(gd, g, N);
    fill(&r, u, ud, N, 1);
    fill(&r, w, wd, N, 1);
    for (size_t i = 0; i < sizeof bits / 4; i++) bits[i] = 0xA5A5A5A5u;
    be->glu_fwd(be, US_GLU_RELU, a, C, g, u, bits, R, C, NULL, 0, NULL, 0, false);
    glu_ctx c = {gd, ud, wd, ad, N, US_GLU_RELU};
    glu_ref(&c);
    EXPECT_CLOSE("glu_fwd relu a", a, ad, N, 1e-7);
    /* the documented layout: bit (c % 32) of word c / 32 of row r, rows padded to 32 columns */
    for (int row = 0; row < R; row++)
        for (int col = 0; col < WPR * 32; col++) {
            int bit = (bits[row * WPR + col / 32] >> (col % 32)) & 1;
            int want = col < C ? gorig[row * C + col] > 0 : 0;
            CHECK(bit == want, "mask bit row %d col %d is %d, want %d (padding bits zero)", row, col, bit, want);
        }
    CHECK(bits[R * WPR] == 0xA5A5A5A5u, "glu_fwd wrote past the mask");
    for (int i = 0; i < N; i++) {
        float want = gorig[i] > 0 ? gorig[i] : 0.0f;
        CHECK(g[i] == want, "g[%d] = %g not replaced by relu(g) = %g in place", i, g[i], want);
    }
    /* a = NULL (saving only): same bits and relu, nothing else */
    memcpy(g2, gorig, sizeof g);
    for (size_t i = 0; i < sizeof bits / 4; i++) bits2[i] = 0;
    be->glu_fwd(be, US_GLU_RELU, NULL, C, g2, u, bits2, R, C, NULL, 0, NULL, 0, false);
    CHECK(!memcmp(bits2, bits, R * WPR * 4) && !memcmp(g2, g, sizeof g), "glu_fwd relu a=NULL differs");
    /* bits = NULL (recompute): relu applied (idempotent on relu(g)), a the same */
    memcpy(g2, g, sizeof g);
    be->glu_fwd(be, US_GLU_RELU, a2, C, g2, u, NULL, R, C, NULL, 0, NULL, 0, false);
    CHECK(!memcmp(a2, a, sizeof a) && !memcmp(g2, g, sizeof g), "glu_fwd relu bits=NULL differs");

    /* backward from the saved relu(g), u and bits */
    be->glu_bwd(be, US_GLU_RELU, dg, du, NULL, NULL, 0, 0, w, g, u, bits, R, C);
    check_glu_dA(t, be, US_GLU_RELU, g, u, bits, w, dg, du, ad, R, C, "glu_bwd relu dA");
    if (t->failed) return;
    fd_grad(glu_loss, &c, gd, N, 1e-3, fd);
    for (int i = 0; i < N; i++)
        if (gorig[i] == 0) fd[i] = 0; /* torch: relu'(0) = 0 */
    EXPECT_CLOSE("glu_bwd relu dg", dg, fd, N, TOL);
    fd_grad(glu_loss, &c, ud, N, FD_H, fd);
    EXPECT_CLOSE("glu_bwd relu du", du, fd, N, TOL);
    /* the gate derivative comes from the bits: flip one (row 2, col 37: second word) */
    const int fr = 2, fc = 37, fi = fr * C + fc;
    memcpy(bits2, bits, sizeof bits);
    bits2[fr * WPR + fc / 32] ^= 1u << (fc % 32);
    float dg2[N], du2[N];
    be->glu_bwd(be, US_GLU_RELU, dg2, du2, NULL, NULL, 0, 0, w, g, u, bits2, R, C);
    for (int i = 0; i < N; i++) {
        CHECK(du2[i] == du[i], "flipping a mask bit changed du[%d]", i);
        if (i != fi) CHECK(dg2[i] == dg[i], "flipping the bit of element %d changed dg[%d]", fi, i);
    }
    int was = gorig[fi] > 0;
    CHECK(dg[fi] == (was ? w[fi] * u[fi] : 0.0f) && dg2[fi] == (was ? 0.0f : w[fi] * u[fi]),
          "flipped element: dg %g -> %g, da*u = %g", dg[fi], dg2[fi], w[fi] * u[fi]);
    /* dg/du alias g/u (consumed in place) */
    memcpy(g2, g, sizeof g);
    float u2[N];
    memcpy(u2, u, sizeof u);
    be->glu_bwd(be, US_GLU_RELU, g2, u2, NULL, NULL, 0, 0, w, g2, u2, bits, R, C);
    CHECK(!memcmp(g2, dg, sizeof g) && !memcmp(u2, du, sizeof u), "glu_bwd relu in place differs");
    be->destroy(be);
}

/* ==== residual add ==== */

TEST(ops_add) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {20};
    enum { N = 1001 };
    float y[N], x[N];
    double yd[N], xd[N];
    fill(&r, y, yd, N, 1);
    fill(&r, x, xd, N, 1);
    be->add(be, y, x, N);
    for (int i = 0; i < N; i++) yd[i] += xd[i];
    EXPECT_CLOSE("add", y, yd, N, 1e-7);
    be->destroy(be);
}

/* ==== cross-entropy ==== */

typedef struct xent_ctx {
    double *z;
    const int32_t *lab;
    int rows, V;
    double scale;
} xent_ctx;
/* scale * sum over counted rows of logsumexp(z) - z[label] */
static double xent_loss(void *p) {
    xent_ctx *c = p;
    double L = 0;
    for (int r = 0; r < c->rows; r++) {
        if (c->lab[r] == -100) continue;
        const double *z = c->z + (size_t)r * c->V;
        double m = -INFINITY, s = 0;
        for (int i = 0; i < c->V; i++) m = fmax(m, z[i]);
        for (int i = 0; i < c->V; i++) s += exp(z[i] - m);
        L += m + log(s) - z[c->lab[r]];
    }
    return L * c->scale;
}

TEST(ops_xent) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {21};
    enum { R = 7, V = 50 };
    const int32_t lab[R] = {3, -100, 49, 0, -100, 17, 17};
    float z[R * V];
    double zd[R * V], fd[R * V];
    fill(&r, z, zd, R * V, 2);
    for (int i = 0; i < V; i++) z[6 * V + i] += 80.0f, zd[6 * V + i] = z[6 * V + i]; /* large logits: stable? */
    const float gs = 0.2f;
    xent_ctx c = {zd, lab, R, V, 1.0};
    double want_loss = xent_loss(&c);
    float *loss = be->alloc(be, 4), l0 = 1.5f;
    be->upload(be, loss, &l0, 4);
    be->xent_fwd_bwd(be, z, lab, loss, gs, R, V);
    float got;
    be->download(be, &got, loss, 4);
    CHECK(us_close(got, 1.5 + want_loss, 1e-6, 0), "xent loss sum %.9g, want 1.5 + %.9g (adds)", got, want_loss);
    c.scale = gs;
    fd_grad(xent_loss, &c, zd, R * V, FD_H, fd);
    EXPECT_CLOSE("xent dlogits = (softmax - onehot) * grad_scale", z, fd, R * V, TOL);
    for (int i = 0; i < V; i++) CHECK(z[1 * V + i] == 0 && z[4 * V + i] == 0, "row with label -100 not zeroed");
    /* every row ignored: loss unchanged, all zero */
    const int32_t none[2] = {-100, -100};
    float z2[2 * V];
    fill(&r, z2, NULL, 2 * V, 1);
    be->xent_fwd_bwd(be, z2, none, loss, gs, 2, V);
    float got2;
    be->download(be, &got2, loss, 4);
    CHECK(got2 == got, "ignored rows changed the loss: %g -> %g", got, got2);
    for (int i = 0; i < 2 * V; i++) CHECK(z2[i] == 0, "ignored row not zeroed");
    be->free(be, loss);
    be->destroy(be);
}

/* ==== AdamW ==== */

TEST(ops_adamw) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {22};
    enum { N = 37, STEPS = 6 };
    float p[N], g[N], m[N] = {0}, v[N] = {0};
    double pd[N], md[N] = {0}, vd[N] = {0};
    fill(&r, p, pd, N, 1);
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-6, wd = 0.1;
    for (int step = 1; step <= STEPS; step++) {
        fill(&r, g, NULL, N, step == 3 ? 1e-4 : 1); /* a step of tiny gradients: eps matters */
        g[5] = 0.0f;
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        be->adamw(be, p, g, m, v, N, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)bc1, (float)bc2);
        /* torch.optim.AdamW (foreach=False, amsgrad=False, maximize=False) */
        for (int i = 0; i < N; i++) {
            pd[i] *= 1 - lr * wd;
            md[i] = md[i] * b1 + (1 - b1) * g[i];
            vd[i] = vd[i] * b2 + (1 - b2) * (double)g[i] * g[i];
            double step_size = lr / bc1, denom = sqrt(vd[i]) / sqrt(bc2) + eps;
            pd[i] -= step_size * md[i] / denom;
        }
        EXPECT_CLOSE("adamw p", p, pd, N, 1e-5);
        EXPECT_CLOSE("adamw m", m, md, N, 1e-5);
        EXPECT_CLOSE("adamw v", v, vd, N, 1e-5);
    }
    be->destroy(be);
}

/* ==== reductions ==== */

TEST(ops_sumsq_scale_nonfinite) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    rng r = {23};
    enum { N = 100003 };
    float *x = falloc(N);
    double *xd = dalloc(N), ss = 0;
    fill(&r, x, xd, N, 3);
    for (int i = 0; i < N; i++) ss += xd[i] * xd[i];
    double got = be->sumsq(be, x, N);
    CHECK(us_close(got, ss, 1e-9, 0), "sumsq %.12g, want %.12g", got, ss);
    CHECK(be->sumsq(be, x, 0) == 0, "sumsq of nothing");
    be->scale(be, x, N, -0.3f);
    for (int i = 0; i < N; i++) xd[i] *= (double)-0.3f;
    double err = serr(x, xd, N, 1e-30);
    CHECK(err <= 1e-7, "scale error %.3g", err);
    CHECK(!be->nonfinite(be, x, N), "finite data reported non-finite");
    CHECK(!be->nonfinite(be, x, 0), "empty data reported non-finite");
    float keep = x[N - 1];
    x[N - 1] = INFINITY;
    CHECK(be->nonfinite(be, x, N), "inf in the last element missed");
    CHECK(!be->nonfinite(be, x, N - 1), "element past n inspected");
    x[N - 1] = keep;
    x[N / 2] = NAN;
    CHECK(be->nonfinite(be, x, N), "NaN missed");
    x[N / 2] = -INFINITY;
    CHECK(be->nonfinite(be, x, N), "-inf missed");
    x[N / 2] = FLT_MAX;
    CHECK(!be->nonfinite(be, x, N), "FLT_MAX reported non-finite");
    free(x);
    free(xd);
    be->destroy(be);
}

/* ==== memory, weight formats ==== */

TEST(ops_memory_and_weights) {
    us_backend *be = cpu();
    CHECK(be, "no cpu backend");
    size_t in0, peak0, in1, peak1, total;
    be->mem_info(be, &in0, &peak0, &total);
    float *a = be->alloc(be, 1000 * 4);
    CHECK(a && ((uintptr_t)a % 64) == 0, "alloc not aligned");
    be->mem_info(be, &in1, &peak1, NULL);
    CHECK(in1 == in0 + 4000 && peak1 >= in1, "mem_info: in use %zu -> %zu, peak %zu", in0, in1, peak1);
    be->free(be, a);
    be->mem_info(be, &in1, NULL, NULL);
    CHECK(in1 == in0, "free did not return the bytes");
    CHECK(total > 0, "no total memory");

    /* weight_upload from BF16/F16 over more than one conversion block */
    enum { N = 65536 * 2 + 5 };
    uint16_t *h = malloc(N * 2);
    float *dst = malloc(N * 4);
    for (int i = 0; i < N; i++) h[i] = (uint16_t)((i * 7919u) & 0x3fffu); /* finite, both signs off */
    float *w = be->weight_upload(be, h, US_DT_BF16, N);
    CHECK(w, "weight_upload bf16");
    be->weight_to_f32(be, dst, w, N);
    for (int i = 0; i < N; i++) {
        double want = ldexp(1.0 + (h[i] & 0x7f) / 128.0, ((h[i] >> 7) & 0xff) - 127);
        if (((h[i] >> 7) & 0xff) == 0) want = ldexp(h[i] & 0x7f, -133);
        CHECK(dst[i] == (float)want, "bf16 upload element %d: %g want %g", i, dst[i], want);
    }
    be->free(be, w);
    w = be->weight_upload(be, h, US_DT_F16, N);
    CHECK(w, "weight_upload f16");
    be->weight_to_f32(be, dst, w, N);
    for (int i = 0; i < N; i++) {
        int ex = (h[i] >> 10) & 0x1f;
        double want = ex ? ldexp(1.0 + (h[i] & 0x3ff) / 1024.0, ex - 15) : ldexp(h[i] & 0x3ff, -24);
        CHECK(dst[i] == (float)want, "f16 upload element %d: %g want %g", i, dst[i], want);
    }
    be->free(be, w);
    /* weight_fill_normal: N(0, std^2) */
    w = be->alloc(be, (size_t)N * 4);
    be->weight_fill_normal(be, w, N, 0.5f, 42, 3);
    be->weight_to_f32(be, dst, w, N);
    double s1 = 0, s2 = 0;
    for (int i = 0; i < N; i++) s1 += dst[i], s2 += (double)dst[i] * dst[i];
    double mean = s1 / N, sd = sqrt(s2 / N - mean * mean);
    CHECK(fabs(mean) < 0.01 && fabs(sd - 0.5) < 0.01, "weight_fill_normal mean %g sd %g", mean, sd);
    be->free(be, w);
    free(h);
    free(dst);
    be->destroy(be);
}

/* ==== dtype conversions (src/core/common.c) ==== */

/* bf16: 1 sign, 8 exponent (bias 127), 7 mantissa bits */
static double bf16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v = e == 0 ? ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : ldexp(128 + m, e - 134);
    return s ? -v : v;
}
/* f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits */
static double f16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}
static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TEST(ops_convert_16bit_to_f32_exhaustive) {
    for (uint32_t h = 0; h < 65536; h++) {
        double want = bf16_value((uint16_t)h);
        float got = us_bf16_to_f32((uint16_t)h);
        if (isnan(want)) {
            CHECK(isnan(got) && !!signbit(got) == (h >> 15), "bf16 %04x: NaN expected, got %g", h, got);
        } else {
            CHECK(got == (float)want && !!signbit(got) == (h >> 15), "bf16 %04x -> %a, want %a", h, got, want);
        }
        want = f16_value((uint16_t)h);
        got = us_f16_to_f32((uint16_t)h);
        if (isnan(want)) {
            CHECK(isnan(got) && !!signbit(got) == (h >> 15), "f16 %04x: NaN expected, got %g", h, got);
        } else {
            CHECK(got == (float)want && !!signbit(got) == (h >> 15), "f16 %04x -> %a, want %a", h, got, want);
        }
    }
    /* us_convert_to_f32 over arrays (unaligned source) and F64 */
    unsigned char buf[1 + 8 * 4];
    uint16_t hv[4] = {0x3f80, 0xc000, 0x0001, 0x7f80};
    memcpy(buf + 1, hv, 8);
    float out[4];
    CHECK(us_convert_to_f32(out, buf + 1, US_DT_BF16, 4), "bf16 convert");
    CHECK(out[0] == 1.0f && out[1] == -2.0f && out[2] == (float)ldexp(1, -133) && isinf(out[3]), "bf16 array");
    memcpy(buf + 1, (uint16_t[4]){0x3c00, 0xc000, 0x0001, 0xfc00}, 8);
    CHECK(us_convert_to_f32(out, buf + 1, US_DT_F16, 4), "f16 convert");
    CHECK(out[0] == 1.0f && out[1] == -2.0f && out[2] == (float)ldexp(1, -24) && out[3] == -INFINITY, "f16 array");
    double dv[4] = {0.1, -1e300, 3.0, 1e-50};
    memcpy(buf + 1, dv, 32);
    CHECK(us_convert_to_f32(out, buf + 1, US_DT_F64, 4), "f64 convert");
    CHECK(out[0] == 0.1f && out[1] == -INFINITY && out[2] == 3.0f && out[3] == 0.0f, "f64 array");
    CHECK(!us_convert_to_f32(out, buf, US_DT_I32, 1), "i32 is not a float dtype");
}

/* Round-to-nearest-even of x onto a grid of 16-bit values, written from the definition: the two
 * neighbours of x among the finite values (plus the first value past the largest, as IEEE's
 * unbounded-exponent rule), the nearer one, on a tie the one with an even mantissa. */
static double rne_ref(double x, double (*val)(uint16_t), int man_bits, double first_past_max) {
    double ax = fabs(x);
    /* binary search for the largest non-negative pattern with value <= ax (patterns 0..max finite) */
    uint16_t maxfin = (uint16_t)(man_bits == 7 ? 0x7f7f : 0x7bff);
    double vmax = val(maxfin);
    double lo, hi;
    uint16_t lop;
    if (ax >= vmax) {
        lo = vmax;
        hi = first_past_max;
        lop = maxfin;
    } else {
        uint32_t a = 0, b = maxfin; /* val(a) <= ax < val(b) */
        while (b - a > 1) {
            uint32_t mid = (a + b) / 2;
            if (val((uint16_t)mid) <= ax) a = mid;
            else b = mid;
        }
        lo = val((uint16_t)a);
        hi = val((uint16_t)b);
        lop = (uint16_t)a;
    }
    double r;
    if (ax - lo < hi - ax) r = lo;
    else if (ax - lo > hi - ax) r = hi;
    else r = (lop & 1) ? hi : lo;
    if (r >= first_past_max) r = INFINITY;
    return x < 0 || (x == 0 && signbit(x)) ? -r : r;
}

static void check_round(us_test_ctx *t, uint32_t u) {
    float f = bits_f32(u);
    uint16_t b = us_f32_to_bf16(f), h = us_f32_to_f16(f);
    if (isnan(f)) {
        CHECK(((b >> 7) & 0xff) == 0xff && (b & 0x7f), "f32 %08x NaN -> bf16 %04x is not NaN", u, b);
        CHECK(((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff), "f32 %08x NaN -> f16 %04x is not NaN", u, h);
        return;
    }
    double wb = rne_ref(f, bf16_value, 7, ldexp(1, 128)), wh = rne_ref(f, f16_value, 10, 65536.0);
    double gb = bf16_value(b), gh = f16_value(h);
    CHECK(gb == wb && !!signbit(gb) == !!signbit(wb), "f32 %08x (%a) -> bf16 %04x (%a), want %a", u, f, b, gb, wb);
    CHECK(gh == wh && !!signbit(gh) == !!signbit(wh), "f32 %08x (%a) -> f16 %04x (%a), want %a", u, f, h, gh, wh);
}

TEST(ops_convert_f32_to_16bit_rounding) {
    /* every sign/exponent/7-bit-mantissa prefix, with the low bits on and around both ties */
    static const uint32_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x2000, 0x3000, 0x7fff, 0x8000,
                                    0x8001, 0xbfff, 0xe000, 0xf000, 0xffff};
    for (uint32_t hi = 0; hi < 65536; hi++)
        for (size_t k = 0; k < sizeof lows / sizeof lows[0]; k++) {
            check_round(t, hi << 16 | lows[k]);
            if (t->failed) return;
        }
    /* random patterns */
    rng r = {24};
    for (int i = 0; i < 200000; i++) {
        check_round(t, (uint32_t)(rnd_u(&r) * 4294967296.0));
        if (t->failed) return;
    }
    /* named edge cases */
    struct {
        float f;
        uint16_t bf, hf;
    } cases[] = {
        {0.0f, 0x0000, 0x0000},
        {-0.0f, 0x8000, 0x8000},
        {1.0f, 0x3f80, 0x3c00},
        {INFINITY, 0x7f80, 0x7c00},
        {-INFINITY, 0xff80, 0xfc00},
        {FLT_MAX, 0x7f80, 0x7c00},                 /* overflows both */
        {65504.0f, 0x4780, 0x7bff},                /* largest f16 */
        {65519.0f, 0x4780, 0x7bff},                /* below the f16 overflow tie */
        {65520.0f, 0x4780, 0x7c00},                /* the tie rounds to inf */
        {(float)ldexp(1, -24), 0x3380, 0x0001},    /* smallest f16 subnormal */
        {(float)ldexp(1, -25), 0x3300, 0x0000},    /* tie: even is 0 */
        {(float)ldexp(3, -25), 0x33c0, 0x0002},    /* tie between 1 and 2 ulps: even is 2 */
        {(float)ldexp(1023.5, -24), 0x3880, 0x0400}, /* tie below the smallest normal: rounds up to it */
        {1.0f + (float)ldexp(1, -11), 0x3f80, 0x3c00}, /* f16 tie: even is 1.0 */
        {1.0f + (float)ldexp(3, -11), 0x3f80, 0x3c02}, /* f16 tie: even mantissa 2 */
        {1.0f + (float)ldexp(1, -8), 0x3f80, 0x3c04},  /* bf16 tie: even is 1.0 */
        {1.0f + (float)ldexp(3, -8), 0x3f82, 0x3c0c},  /* bf16 tie: even mantissa 2 */
        {bits_f32(0x00000001), 0x0000, 0x0000},    /* f32 subnormals */
        {bits_f32(0x00008000), 0x0000, 0x0000},    /* bf16 tie at 0 */
        {bits_f32(0x00018000), 0x0002, 0x0000},    /* bf16 tie between 1 and 2: even 2 */
        {bits_f32(0x007fffff), 0x0080, 0x0000},    /* rounds up to the smallest normal */
        {bits_f32(0x7f7f8000), 0x7f80, 0x7c00},    /* bf16 tie above the largest: inf */
        {bits_f32(0x7f7f7fff), 0x7f7f, 0x7c00},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t b = us_f32_to_bf16(cases[i].f), h = us_f32_to_f16(cases[i].f);
        CHECK(b == cases[i].bf, "case %zu (%a): bf16 %04x, want %04x", i, cases[i].f, b, cases[i].bf);
        CHECK(h == cases[i].hf, "case %zu (%a): f16 %04x, want %04x", i, cases[i].f, h, cases[i].hf);
    }
    /* NaNs: quiet, signalling with payload only in the low bits, negative */
    uint32_t nans[] = {0x7fc00000u, 0x7f800001u, 0x7f80ffffu, 0xffc00000u, 0xff800001u, 0x7fffffffu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t b = us_f32_to_bf16(bits_f32(nans[i])), h = us_f32_to_f16(bits_f32(nans[i]));
        CHECK(isnan(bf16_value(b)) && isnan(us_bf16_to_f32(b)), "NaN %08x -> bf16 %04x", nans[i], b);
        CHECK(isnan(f16_value(h)) && isnan(us_f16_to_f32(h)), "NaN %08x -> f16 %04x", nans[i], h);
        CHECK((b >> 15) == (nans[i] >> 31) && (h >> 15) == (nans[i] >> 31), "NaN %08x lost its sign", nans[i]);
    }
    /* every 16-bit value round-trips through f32 (NaN stays NaN) */
    for (uint32_t hv = 0; hv < 65536; hv++) {
        if (!isnan(bf16_value((uint16_t)hv)))
            CHECK(us_f32_to_bf16(us_bf16_to_f32((uint16_t)hv)) == hv, "bf16 %04x does not round-trip", hv);
        if (!isnan(f16_value((uint16_t)hv)))
            CHECK(us_f32_to_f16(us_f16_to_f32((uint16_t)hv)) == hv, "f16 %04x does not round-trip", hv);
    }
}
