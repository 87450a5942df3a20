/* test_cuda_ops.c — every op of the CUDA backend against the CPU backend on random inputs.
 *
 * Inputs are drawn once, rounded to bf16, and given to both backends (bf16 on the GPU, the same
 * values in f32 on the CPU), so the comparison measures only the GPU's arithmetic: products in
 * bf16 with fp32 accumulation and bf16 outputs. Tolerances are relative L2 errors:
 *   - elementwise ops with a bf16 output: 1e-2 (one output rounding is ~2e-3 relative);
 *   - matrix products and attention: 1e-2 forward, 2e-2 for gradients (P and dS are rounded to
 *     bf16 inside the fused attention backward);
 *   - f32-only ops (AdamW, reductions): 1e-5.
 * GPU outputs are poisoned (NaN) before each op, so an unwritten element fails. */
#include <math.h>
#include "gpu_util.h"
#include "model/decode.h"

#define TOL_EW 1e-2
#define TOL_MM 1e-2
#define TOL_GRAD 2e-2

TEST(cuda_weight_fill_normal_matches_cpu) {
    OPEN_PAIR(p);
    size_t n = 100003;
    void *w = g_poison(&p, n * 2);
    p.g->weight_fill_normal(p.g, w, n, 0.02f, 1234, 5);
    float *h = get_act(&p, w, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float ref = bfr(0.02f * us_rand_normal(1234, 5, i));
        if (h[i] != ref) bad++;
    }
    free(h);
    gpair_close(&p);
    CHECK(bad <= n / 10000, "%zu of %zu values differ from us_rand_normal", bad, n);
}

TEST(cuda_weight_upload_converts) {
    OPEN_PAIR(p);
    size_t n = 5000;
    float *f = malloc(n * 4);
    uint16_t *h16 = malloc(n * 2), *b16 = malloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        f[i] = us_rand_normal(9, 9, i) * 3.0f;
        h16[i] = us_f32_to_f16(f[i]);
        b16[i] = us_f32_to_bf16(f[i]);
    }
    void *wf = p.g->weight_upload(p.g, f, US_DT_F32, n);
    void *wh = p.g->weight_upload(p.g, h16, US_DT_F16, n);
    void *wb = p.g->weight_upload(p.g, b16, US_DT_BF16, n);
    CHECK(wf && wh && wb, "weight_upload returned NULL");
    float *gf = get_act(&p, wf, n), *gh = get_act(&p, wh, n), *gb = get_act(&p, wb, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (gf[i] != us_bf16_to_f32(b16[i])) bad++;
        if (gh[i] != bfr(us_f16_to_f32(h16[i]))) bad++;
        if (gb[i] != us_bf16_to_f32(b16[i])) bad++;
    }
    /* weight_to_f32 / act round trip */
    float *df = p.g->alloc(p.g, n * 4);
    p.g->weight_to_f32(p.g, df, wf, n);
    float *back = get_f32(&p, df, n);
    for (size_t i = 0; i < n; i++)
        if (back[i] != us_bf16_to_f32(b16[i])) bad++;
    free(f), free(h16), free(b16), free(gf), free(gh), free(gb), free(back);
    gpair_close(&p);
    CHECK(bad == 0, "%zu conversions differ", bad);
}

TEST(cuda_embed_fwd_bwd) {
    OPEN_PAIR(p);
    int V = 300, D = 72, T = 257;
    float *E = rnd((size_t)V * D, 1.0f, 1), *dx = rnd((size_t)T * D, 1.0f, 2);
    int32_t *ids = malloc(T * 4);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((us_hash64(t) % V));
    for (int variant = 0; variant < 2; variant++) {
        int dim = variant ? D - 3 : D; /* scalar path too */
        void *gE = g_act(&p, E, (size_t)V * dim), *gx = g_poison(&p, (size_t)T * dim * 2);
        int32_t *gid = g_bytes(&p, ids, T * 4);
        void *cE = c_f32(&p, E, (size_t)V * dim), *cx = p.c->alloc(p.c, (size_t)T * dim * 4);
        int32_t *cid = c_bytes(&p, ids, T * 4);
        p.g->embed_fwd(p.g, gx, gE, gid, T, dim);
        p.c->embed_fwd(p.c, cx, cE, cid, T, dim);
        double e1 = err_act(&p, gx, cx, (size_t)T * dim);
        CHECK(e1 == 0, "embed_fwd dim %d: rel err %g", dim, e1);
        float *zero = calloc((size_t)V * dim, 4);
        float *gdE = g_bytes(&p, zero, (size_t)V * dim * 4), *cdE = c_f32(&p, zero, (size_t)V * dim);
        void *gdx = g_act(&p, dx, (size_t)T * dim), *cdx = c_f32(&p, dx, (size_t)T * dim);
        p.g->embed_bwd(p.g, gdE, gdx, gid, T, dim);
        p.c->embed_bwd(p.c, cdE, cdx, cid, T, dim);
        double e2 = err_f32(&p, gdE, cdE, (size_t)V * dim);
        free(zero);
        CHECK(e2 < 1e-5, "embed_bwd dim %d: rel err %g", dim, e2);
    }
    free(E), free(dx), free(ids);
    gpair_close(&p);
}

TEST(cuda_rmsnorm_fwd_bwd) {
    OPEN_PAIR(p);
    int dims[] = {64, 576, 100, 2048, 3000, 4096, 8192}; /* register kernels up to 4096, loops past */
    for (int di = 0; di < 7; di++) {
        int T = 131, D = dims[di];
        size_t n = (size_t)T * D;
        float *x = rnd(n, 2.0f, 10 + di), *dy = rnd(n, 1.0f, 20 + di), *w = rnd(D, 1.0f, 30 + di), *dx0 = rnd(n, 1.0f, 40);
        void *gx = g_act(&p, x, n), *gy = g_poison(&p, n * 2), *gdy = g_act(&p, dy, n);
        float *gw = g_bytes(&p, w, D * 4), *grs = g_poison(&p, T * 4);
        void *cx = c_f32(&p, x, n), *cy = p.c->alloc(p.c, n * 4), *cdy = c_f32(&p, dy, n);
        float *cw = c_f32(&p, w, D), *crs = p.c->alloc(p.c, T * 4);
        p.g->rmsnorm_fwd(p.g, gy, D, grs, gx, gw, T, D, 1e-5f);
        p.c->rmsnorm_fwd(p.c, cy, D, crs, cx, cw, T, D, 1e-5f);
        double ey = err_act(&p, gy, cy, n), er = err_f32(&p, grs, crs, T);
        CHECK(ey < TOL_EW && er < 1e-5, "rmsnorm_fwd D=%d: y %g rstd %g", D, ey, er);
        { /* rows D + 8 apart: the same rows, the 8 columns past D untouched (poison stays) */
            void *gyp = g_poison(&p, (size_t)T * (D + 8) * 2);
            float *before = get_act(&p, gyp, (size_t)T * (D + 8));
            p.g->rmsnorm_fwd(p.g, gyp, D + 8, grs, gx, gw, T, D, 1e-5f);
            float *hp = get_act(&p, gyp, (size_t)T * (D + 8)), *rows = malloc(n * 4);
            size_t moved = 0;
            for (int t2 = 0; t2 < T; t2++) {
                memcpy(rows + (size_t)t2 * D, hp + (size_t)t2 * (D + 8), (size_t)D * 4);
                moved += memcmp(hp + (size_t)t2 * (D + 8) + D, before + (size_t)t2 * (D + 8) + D, 8 * 4) != 0;
            }
            double e = rel_l2(rows, (const float *)cy, n);
            free(before), free(hp), free(rows);
            CHECK(e < TOL_EW && moved == 0, "rmsnorm_fwd D=%d pitched: y %g, %zu rows written past D", D, e, moved);
        }
        for (int acc = 0; acc < 2; acc++) {
            void *gdx = acc ? g_act(&p, dx0, n) : g_poison(&p, n * 2);
            void *cdx = acc ? c_f32(&p, dx0, n) : p.c->alloc(p.c, n * 4);
            float *zero = calloc(D, 4);
            float *gdw = g_bytes(&p, zero, D * 4), *cdw = c_f32(&p, zero, D);
            p.g->rmsnorm_bwd(p.g, gdx, D, acc, gdw, gdy, gx, crs == NULL ? NULL : grs, gw, T, D);
            p.c->rmsnorm_bwd(p.c, cdx, D, acc, cdw, cdy, cx, crs, cw, T, D);
            double ex = err_act(&p, gdx, cdx, n), ew = err_f32(&p, gdw, cdw, D);
            free(zero);
            CHECK(ex < TOL_EW && ew < 1e-3, "rmsnorm_bwd D=%d acc=%d: dx %g dw %g", D, acc, ex, ew);
        }
        free(x), free(dy), free(w), free(dx0);
    }
    gpair_close(&p);
}

TEST(cuda_linear_fwd_bwd) {
    OPEN_PAIR(p);
    { /* a bias wider than the epilogue's copy (32,768): added by a kernel after the product */
        int T = 16, in = 64, out = 32776;
        float *x = rnd((size_t)T * in, 1.0f, 11), *W = rnd((size_t)out * in, 0.05f, 12), *b = rnd(out, 0.1f, 13);
        void *gx = g_act(&p, x, (size_t)T * in), *gW = p.g->weight_upload(p.g, W, US_DT_F32, (size_t)out * in);
        float *gb = g_bytes(&p, b, (size_t)out * 4), *cb = c_f32(&p, b, out);
        void *cx = c_f32(&p, x, (size_t)T * in), *cW = c_f32(&p, W, (size_t)out * in);
        void *gy = g_poison(&p, (size_t)T * out * 2), *cy = p.c->alloc(p.c, (size_t)T * out * 4);
        p.g->linear_fwd(p.g, gy, NULL, gx, in, gW, in, gb, T, in, out);
        p.c->linear_fwd(p.c, cy, NULL, cx, in, cW, in, cb, T, in, out);
        double e = err_act(&p, gy, cy, (size_t)T * out);
        CHECK(e < TOL_MM, "linear_fwd %dx%dx%d with its bias: %g", T, in, out, e);
        free(x), free(W), free(b);
    }
    int shapes[][3] = {{100, 64, 96}, {512, 576, 1536}, {77, 40, 24}};
    for (int si = 0; si < 3; si++) {
        int T = shapes[si][0], in = shapes[si][1], out = shapes[si][2];
        float *x = rnd((size_t)T * in, 1.0f, 1), *W = rnd((size_t)out * in, 0.05f, 2), *b = rnd(out, 0.1f, 3);
        float *y0 = rnd((size_t)T * out, 1.0f, 4), *dy = rnd((size_t)T * out, 1.0f, 5), *dx0 = rnd((size_t)T * in, 1.0f, 6);
        void *gx = g_act(&p, x, (size_t)T * in), *gW = p.g->weight_upload(p.g, W, US_DT_F32, (size_t)out * in);
        float *gb = g_bytes(&p, b, out * 4);
        void *cx = c_f32(&p, x, (size_t)T * in), *cW = c_f32(&p, W, (size_t)out * in);
        float *cb = c_f32(&p, b, out);
        for (int acc = 0; acc < 2; acc++) {
            void *gy = acc ? g_act(&p, y0, (size_t)T * out) : g_poison(&p, (size_t)T * out * 2);
            void *cy = acc ? c_f32(&p, y0, (size_t)T * out) : p.c->alloc(p.c, (size_t)T * out * 4);
            p.g->linear_fwd(p.g, gy, acc ? gy : NULL, gx, in, gW, in, acc ? NULL : gb, T, in, out);
            p.c->linear_fwd(p.c, cy, acc ? cy : NULL, cx, in, cW, in, acc ? NULL : cb, T, in, out);
            double e = err_act(&p, gy, cy, (size_t)T * out);
            CHECK(e < TOL_MM, "linear_fwd %dx%dx%d acc=%d: %g", T, in, out, acc, e);
            if (acc) { /* the residual another tensor: y = y0 + x W^T, y0 left as it was */
                void *gres = g_act(&p, y0, (size_t)T * out), *gy2 = g_poison(&p, (size_t)T * out * 2);
                void *cres = c_f32(&p, y0, (size_t)T * out);
                p.g->linear_fwd(p.g, gy2, gres, gx, in, gW, in, NULL, T, in, out);
                double e2 = err_act(&p, gy2, cy, (size_t)T * out), e3 = err_act(&p, gres, cres, (size_t)T * out);
                CHECK(e2 < TOL_MM && e3 < TOL_MM, "linear_fwd %dx%dx%d res elsewhere: %g (res against y0: %g)", T, in, out, e2, e3);
                /* and a bias with it (cuBLASLt's bias epilogue) */
                void *cyb = p.c->alloc(p.c, (size_t)T * out * 4), *gy3 = g_poison(&p, (size_t)T * out * 2);
                p.c->linear_fwd(p.c, cyb, cres, cx, in, cW, in, cb, T, in, out);
                p.g->linear_fwd(p.g, gy3, gres, gx, in, gW, in, gb, T, in, out);
                double e4 = err_act(&p, gy3, cyb, (size_t)T * out);
                CHECK(e4 < TOL_MM, "linear_fwd %dx%dx%d res elsewhere and bias: %g", T, in, out, e4);
            }
            if (!acc) { /* x and W with rows in + 8 apart, NaN between: the same product */
                int ld = in + 8;
                float *xp = malloc((size_t)T * ld * 4), *Wp = malloc((size_t)out * ld * 4);
                for (size_t i = 0; i < (size_t)T * ld; i++) xp[i] = NAN;
                for (size_t i = 0; i < (size_t)out * ld; i++) Wp[i] = NAN;
                for (int r2 = 0; r2 < T; r2++) memcpy(xp + (size_t)r2 * ld, x + (size_t)r2 * in, (size_t)in * 4);
                for (int r2 = 0; r2 < out; r2++) memcpy(Wp + (size_t)r2 * ld, W + (size_t)r2 * in, (size_t)in * 4);
                void *gxp = g_act(&p, xp, (size_t)T * ld), *gWp = p.g->weight_upload(p.g, Wp, US_DT_F32, (size_t)out * ld);
                void *gyp = g_poison(&p, (size_t)T * out * 2), *gdxp = g_poison(&p, (size_t)T * in * 2);
                void *gdy2 = g_act(&p, dy, (size_t)T * out), *cdx2 = p.c->alloc(p.c, (size_t)T * in * 4);
                void *cdy2 = c_f32(&p, dy, (size_t)T * out);
                p.g->linear_fwd(p.g, gyp, NULL, gxp, ld, gWp, ld, gb, T, in, out);
                p.g->linear_bwd_x(p.g, gdxp, false, gdy2, out, gWp, ld, T, in, out);
                p.c->linear_bwd_x(p.c, cdx2, false, cdy2, out, cW, in, T, in, out);
                double e1 = err_act(&p, gyp, cy, (size_t)T * out), e2 = err_act(&p, gdxp, cdx2, (size_t)T * in);
                free(xp), free(Wp);
                CHECK(e1 < TOL_MM && e2 < TOL_MM, "linear %dx%dx%d pitched x, W: fwd %g bwd_x %g", T, in, out, e1, e2);
            }
            void *gdy = g_act(&p, dy, (size_t)T * out), *cdy = c_f32(&p, dy, (size_t)T * out);
            void *gdx = acc ? g_act(&p, dx0, (size_t)T * in) : g_poison(&p, (size_t)T * in * 2);
            void *cdx = acc ? c_f32(&p, dx0, (size_t)T * in) : p.c->alloc(p.c, (size_t)T * in * 4);
            p.g->linear_bwd_x(p.g, gdx, acc, gdy, out, gW, in, T, in, out);
            p.c->linear_bwd_x(p.c, cdx, acc, cdy, out, cW, in, T, in, out);
            e = err_act(&p, gdx, cdx, (size_t)T * in);
            CHECK(e < TOL_MM, "linear_bwd_x %dx%dx%d acc=%d: %g", T, in, out, acc, e);
        }
        float *dW0 = rnd((size_t)out * in, 0.1f, 7), *db0 = rnd(out, 0.1f, 8);
        void *gdy = g_act(&p, dy, (size_t)T * out), *cdy = c_f32(&p, dy, (size_t)T * out);
        float *gdW = g_bytes(&p, dW0, (size_t)out * in * 4), *cdW = c_f32(&p, dW0, (size_t)out * in);
        float *gdb = g_bytes(&p, db0, out * 4), *cdb = c_f32(&p, db0, out);
        p.g->linear_bwd_w(p.g, gdW, gdb, gdy, gx, T, in, out);
        p.c->linear_bwd_w(p.c, cdW, cdb, cdy, cx, T, in, out);
        double ew = err_f32(&p, gdW, cdW, (size_t)out * in), eb = err_f32(&p, gdb, cdb, out);
        CHECK(ew < 1e-3 && eb < 1e-4, "linear_bwd_w %dx%dx%d: dW %g db %g", T, in, out, ew, eb);
        free(x), free(W), free(b), free(y0), free(dy), free(dx0), free(dW0), free(db0);
    }
    gpair_close(&p);
}

/* ranks 8, 16, 32 take the tensor-core kernels of cuda_lora.cu (12: the cuBLASLt fallback; with
 * US_CUDA_LORA_GEMM=1 every rank does). Odd token counts test the bounds; T = 34000 gives the
 * down-projection kernel one K range per CTA (plain stores), the others split K (atomics). off = 1
 * places A, B, dA, dB one float past 16-byte alignment (scalar staging, scalar atomics). */
static int lora_case(gpair *pp, us_test_ctx *t, int T, int in, int out, int r, int off, int n);

TEST(cuda_lora_fwd_bwd) {
    OPEN_PAIR(p);
    /* T, in, out, r, off (masters off 16-byte alignment), n (projections in the group: R = n r);
     * R in {8..96} takes the tensor-core kernels, r = 12 (R 12, 36) and odd widths cuBLASLt */
    int cases[][6] = {{300, 576, 192, 16, 0, 3}, {77, 104, 40, 8, 0, 1},   {130, 64, 96, 12, 0, 1},  {2048, 2048, 512, 16, 0, 1},
                      {513, 1536, 576, 32, 0, 1}, {34000, 64, 136, 16, 0, 2}, {1000, 4096, 1024, 16, 0, 3}, {77, 100, 36, 8, 0, 3},
                      {300, 576, 192, 16, 1, 2},  {129, 256, 64, 32, 1, 3},   {200, 128, 72, 32, 0, 2},  {90, 96, 40, 12, 0, 3},
                      {257, 2048, 8192, 16, 0, 2}};
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++)
        if (!lora_case(&p, t, cases[i][0], cases[i][1], cases[i][2], cases[i][3], cases[i][4], cases[i][5])) {
            gpair_close(&p);
            return;
        }
    gpair_close(&p);
}

/* a device copy of n floats placed `off` floats into its allocation (off = 1: not 16-byte aligned) */
static float *g_f32_at(gpair *p, const float *h, size_t n, int off) {
    float *d = p->g->alloc(p->g, (n + 4) * 4);
    p->g->upload(p->g, d + off, h, n * 4);
    return d + off;
}

/* GPU against CPU for one group of n projections sharing x: one lora_down, n lora_up (res
 * NULL, res == y, res elsewhere in turn), n lora_bwd_dy into column blocks of du, one
 * lora_bwd_x (res == dx, then NULL, then dx NULL). Increments are compared, not the residuals. */
static int lora_case(gpair *pp, us_test_ctx *t, int T, int in, int out, int r, int off, int n) {
    gpair p = *pp;
    float s = 2.0f;
    int R = n * r;
    size_t TR = (size_t)T * R, TO = (size_t)T * out, TI = (size_t)T * in;
    float *x = rnd(TI, 1.0f, 1), *A = rnd((size_t)R * in, 0.05f, 2), *B = rnd((size_t)n * out * r, 0.05f, 3);
    float *y0 = rnd(TO, 1.0f, 4), *dy = rnd((size_t)n * TO, 1.0f, 5), *dx0 = rnd(TI, 1.0f, 6);
    float *dA0 = rnd((size_t)R * in, 0.1f, 7), *dB0 = rnd((size_t)n * out * r, 0.1f, 8);
    /* on the GPU, x has room for u beside it (rows in + R apart, NaN there) where the pitch keeps
     * rows 16-byte aligned, and lora_down folds u into it */
    int ldx = (in + R) % 8 == 0 ? in + R : in;
    float *xp = malloc((size_t)T * ldx * 4);
    for (size_t i = 0; i < (size_t)T * ldx; i++) xp[i] = NAN;
    for (int r2 = 0; r2 < T; r2++) memcpy(xp + (size_t)r2 * ldx, x + (size_t)r2 * in, (size_t)in * 4);
    void *gx = g_act(&p, xp, (size_t)T * ldx), *cx = c_f32(&p, x, TI);
    free(xp);
    float *gA = g_f32_at(&p, A, (size_t)R * in, off), *cA = c_f32(&p, A, (size_t)R * in);
    float *gB = g_f32_at(&p, B, (size_t)n * out * r, off), *cB = c_f32(&p, B, (size_t)n * out * r);
    float *gu = g_poison(&p, TR * 4), *cu = p.c->alloc(p.c, TR * 4);
    char what[160];
    snprintf(what, sizeof what, "T=%d in=%d out=%d r=%d n=%d off=%d", T, in, out, r, n, off);
    p.g->lora_down(p.g, gu, R, gx, ldx, gA, T, in, R, ldx > in);
    p.c->lora_down(p.c, cu, R, cx, in, cA, T, in, R, false);
    double eu = err_f32(&p, gu, cu, TR);
    if (!(eu < 5e-3)) { snprintf(t->msg, sizeof t->msg, "lora_down %s ldx %d: u %g", what, ldx, eu); t->failed = 1; return 0; }
    if (ldx > in) { /* the folded copy of u beside x */
        float *hx = get_act(&p, gx, (size_t)T * ldx), *fu = malloc(TR * 4);
        for (int r2 = 0; r2 < T; r2++) memcpy(fu + (size_t)r2 * R, hx + (size_t)r2 * ldx + in, (size_t)R * 4);
        double ef = rel_l2(fu, (const float *)cu, TR);
        free(hx), free(fu);
        if (!(ef < 5e-3)) { snprintf(t->msg, sizeof t->msg, "lora_down %s fold: u beside x %g", what, ef); t->failed = 1; return 0; }
    }
    float *inc_g = malloc(US_MAX(TO, TI) * 4), *inc_c = malloc(US_MAX(TO, TI) * 4);
    for (int j = 0; j < n; j++) { /* the CPU's u for both from here on */
        int mode = j % 3; /* 0: res NULL, 1: res == y, 2: res another buffer */
        void *gres = g_act(&p, y0, TO), *gy = mode == 1 ? gres : g_poison(&p, TO * 2);
        float *cy = p.c->alloc(p.c, TO * 4);
        const float *gu_j = (const float *)g_bytes(&p, cu, TR * 4) + (size_t)j * r;
        p.g->lora_up(p.g, gy, mode == 0 ? NULL : gres, gu_j, R, gB + (size_t)j * out * r, s, T, out, r);
        p.c->lora_up(p.c, cy, NULL, cu + (size_t)j * r, R, cB + (size_t)j * out * r, s, T, out, r);
        float *hy = get_act(&p, gy, TO);
        for (size_t i = 0; i < TO; i++) inc_g[i] = hy[i] - (mode ? y0[i] : 0.0f), inc_c[i] = ((float *)cy)[i];
        double ey = rel_l2(inc_g, inc_c, TO);
        free(hy);
        if (!(ey < 3e-2)) { snprintf(t->msg, sizeof t->msg, "lora_up %s member %d (res mode %d): %g", what, j, mode, ey); t->failed = 1; return 0; }
    }
    /* backward: du and dB per member */
    float *gu2 = g_bytes(&p, cu, TR * 4);
    float *gdu = g_poison(&p, TR * 4), *cdu = p.c->alloc(p.c, TR * 4);
    float *gdB = g_f32_at(&p, dB0, (size_t)n * out * r, off), *cdB = c_f32(&p, dB0, (size_t)n * out * r);
    /* member 0's dy on the GPU has room for du beside it (rows out + r apart) where that keeps
     * rows 16-byte aligned, and lora_bwd_dy folds du into it */
    int ldy0 = (out + r) % 8 == 0 ? out + r : out;
    void *gdy0 = NULL;
    for (int j = 0; j < n; j++) {
        int ldy = j == 0 ? ldy0 : out;
        float *dyp = malloc((size_t)T * ldy * 4);
        for (size_t i = 0; i < (size_t)T * ldy; i++) dyp[i] = NAN;
        for (int r2 = 0; r2 < T; r2++) memcpy(dyp + (size_t)r2 * ldy, dy + (size_t)j * TO + (size_t)r2 * out, (size_t)out * 4);
        void *gdy = g_act(&p, dyp, (size_t)T * ldy), *cdy = c_f32(&p, dy + (size_t)j * TO, TO);
        free(dyp);
        if (j == 0) gdy0 = gdy;
        p.g->lora_bwd_dy(p.g, gdu + (size_t)j * r, R, gdB + (size_t)j * out * r, gdy, ldy, gu2 + (size_t)j * r, R,
                         gB + (size_t)j * out * r, s, T, out, r, ldy > out ? out : 0);
        p.c->lora_bwd_dy(p.c, cdu + (size_t)j * r, R, cdB + (size_t)j * out * r, cdy, out, cu + (size_t)j * r, R,
                         cB + (size_t)j * out * r, s, T, out, r, 0);
    }
    double edu = err_f32(&p, gdu, cdu, TR), eB = err_f32(&p, gdB, cdB, (size_t)n * out * r);
    if (!(edu < 5e-3 && eB < TOL_MM)) { snprintf(t->msg, sizeof t->msg, "lora_bwd_dy %s ldy %d: du %g dB %g", what, ldy0, edu, eB); t->failed = 1; return 0; }
    if (ldy0 > out) { /* the folded copy of member 0's du beside its dy */
        float *hy = get_act(&p, gdy0, (size_t)T * ldy0), *fu = malloc((size_t)T * r * 4), *cu0 = malloc((size_t)T * r * 4);
        for (int r2 = 0; r2 < T; r2++) {
            memcpy(fu + (size_t)r2 * r, hy + (size_t)r2 * ldy0 + out, (size_t)r * 4);
            memcpy(cu0 + (size_t)r2 * r, (float *)cdu + (size_t)r2 * R, (size_t)r * 4);
        }
        double ef = rel_l2(fu, cu0, (size_t)T * r);
        free(hy), free(fu), free(cu0);
        if (!(ef < 5e-3)) { snprintf(t->msg, sizeof t->msg, "lora_bwd_dy %s fold: du beside dy %g", what, ef); t->failed = 1; return 0; }
    }
    /* one lora_bwd_x for the group, with the CPU's du for both: dx += du A (res == dx) */
    float *gdu2 = g_bytes(&p, cdu, TR * 4);
    void *gdx = g_act(&p, dx0, TI), *cdx = c_f32(&p, dx0, TI);
    float *gdA = g_f32_at(&p, dA0, (size_t)R * in, off), *cdA = c_f32(&p, dA0, (size_t)R * in);
    p.g->lora_bwd_x(p.g, gdx, gdx, gdA, gdu2, R, gx, ldx, NULL, NULL, gA, T, in, R);
    p.c->lora_bwd_x(p.c, cdx, cdx, cdA, cdu, R, cx, in, NULL, NULL, cA, T, in, R);
    double eA = err_f32(&p, gdA, cdA, (size_t)R * in);
    float *hdx = get_act(&p, gdx, TI);
    for (size_t i = 0; i < TI; i++) inc_g[i] = hdx[i] - dx0[i], inc_c[i] = ((float *)cdx)[i] - dx0[i];
    double ex = rel_l2(inc_g, inc_c, TI);
    free(hdx);
    if (!(eA < TOL_MM && ex < 3e-2)) { snprintf(t->msg, sizeof t->msg, "lora_bwd_x %s: dA %g dx increment %g", what, eA, ex); t->failed = 1; return 0; }
    /* res NULL: dx written from nothing (poisoned first) */
    void *gdx2 = g_poison(&p, TI * 2);
    p.g->lora_bwd_x(p.g, gdx2, NULL, gdA, gdu2, R, gx, ldx, NULL, NULL, gA, T, in, R);
    hdx = get_act(&p, gdx2, TI);
    for (size_t i = 0; i < TI; i++) inc_g[i] = hdx[i];
    ex = rel_l2(inc_g, inc_c, TI);
    free(hdx);
    if (!(ex < 3e-2)) { snprintf(t->msg, sizeof t->msg, "lora_bwd_x %s res NULL: dx %g", what, ex); t->failed = 1; return 0; }
    /* dx may be NULL */
    p.g->lora_bwd_x(p.g, NULL, NULL, gdA, gdu2, R, gx, ldx, NULL, NULL, gA, T, in, R);
    p.g->sync(p.g);
    if (p.g->nonfinite(p.g, gdA, (size_t)R * in)) { snprintf(t->msg, sizeof t->msg, "lora_bwd_x with dx NULL: non-finite dA"); t->failed = 1; return 0; }
    { /* x an RMSNorm's input (rstd per row, w per column): dA from the normed rows formed on the fly */
        float *rs = rnd((size_t)T, 0.5f, 11), *nw = rnd((size_t)in, 1.0f, 12);
        float *gr = g_bytes(&p, rs, (size_t)T * 4), *gw = g_bytes(&p, nw, (size_t)in * 4);
        float *cr = c_f32(&p, rs, (size_t)T), *cw = c_f32(&p, nw, (size_t)in);
        float *gdA2 = g_f32_at(&p, dA0, (size_t)R * in, off), *cdA2 = c_f32(&p, dA0, (size_t)R * in);
        p.g->lora_bwd_x(p.g, NULL, NULL, gdA2, gdu2, R, gx, ldx, gr, gw, gA, T, in, R);
        p.c->lora_bwd_x(p.c, NULL, NULL, cdA2, cdu, R, cx, in, cr, cw, cA, T, in, R);
        double eN = err_f32(&p, gdA2, cdA2, (size_t)R * in);
        free(rs), free(nw);
        if (!(eN < TOL_MM)) { snprintf(t->msg, sizeof t->msg, "lora_bwd_x %s, x normed on the fly: dA %g", what, eN); t->failed = 1; return 0; }
    }
    free(x), free(A), free(B), free(y0), free(dy), free(dx0), free(dA0), free(dB0), free(inc_g), free(inc_c);
    return 1;
}

TEST(cuda_rope) {
    OPEN_PAIR(p);
    int T = 70, nh = 3, hd = 64;
    size_t n = (size_t)T * nh * hd;
    float *x = rnd(n, 1.0f, 1), *inv = malloc(hd / 2 * 4);
    for (int i = 0; i < hd / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / hd);
    int32_t *pos = malloc(T * 4);
    for (int t = 0; t < T; t++) pos[t] = (t * 37) % 2048;
    for (int inverse = 0; inverse < 2; inverse++) {
        void *gx = g_act(&p, x, n), *cx = c_f32(&p, x, n);
        int32_t *gp = g_bytes(&p, pos, T * 4), *cp = c_bytes(&p, pos, T * 4);
        float *gi = g_bytes(&p, inv, hd / 2 * 4), *ci = c_f32(&p, inv, hd / 2);
        p.g->rope(p.g, gx, gp, gi, T, nh, hd, inverse);
        p.c->rope(p.c, cx, cp, ci, T, nh, hd, inverse);
        double e = err_act(&p, gx, cx, n);
        CHECK(e < TOL_EW, "rope inverse=%d: %g", inverse, e);
    }
    free(x), free(inv), free(pos);
    gpair_close(&p);
}

/* qkv_merge: GPU against CPU, 16-byte path (hd 64, 128) and scalar path (hd 24), head counts not a
 * multiple of the kernel's 4, the pitch's spare columns left as they were (NaN) */
TEST(cuda_qkv_merge) {
    OPEN_PAIR(p);
    int cases[][4] = {{70, 9, 3, 64}, {33, 32, 8, 128}, {17, 5, 1, 24}};
    for (int k = 0; k < 3; k++) {
        int T = cases[k][0], nq = cases[k][1], nkv = cases[k][2], hd = cases[k][3], ld = (nq + 2 * nkv) * hd + 8;
        size_t nqe = (size_t)T * nq * hd, nke = (size_t)T * nkv * hd, nd = (size_t)T * ld;
        float *q = rnd(nqe, 1.0f, 40 + k), *kk = rnd(nke, 1.0f, 50 + k), *v = rnd(nke, 1.0f, 60 + k);
        float *inv = malloc((size_t)hd / 2 * 4), *nan = malloc(nd * 4);
        int32_t *pos = malloc((size_t)T * 4);
        for (int i = 0; i < hd / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / hd);
        for (int t = 0; t < T; t++) pos[t] = (t * 53) % 4096;
        for (size_t i = 0; i < nd; i++) nan[i] = NAN;
        void *gd = g_act(&p, nan, nd), *cd = c_f32(&p, nan, nd);
        p.g->qkv_merge(p.g, gd, ld, g_act(&p, q, nqe), g_act(&p, kk, nke), g_act(&p, v, nke), g_bytes(&p, pos, (size_t)T * 4),
                       g_bytes(&p, inv, (size_t)hd / 2 * 4), T, nq, nkv, hd);
        p.c->qkv_merge(p.c, cd, ld, c_f32(&p, q, nqe), c_f32(&p, kk, nke), c_f32(&p, v, nke), c_bytes(&p, pos, (size_t)T * 4),
                       c_f32(&p, inv, (size_t)hd / 2), T, nq, nkv, hd);
        float *h = get_act(&p, gd, nd), *hw = malloc(nd * 4), *cw = malloc(nd * 4);
        size_t n = 0, spare_nan = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < ld; j++) {
                float gv = h[(size_t)t * ld + j], cv = ((float *)cd)[(size_t)t * ld + j];
                if (j < (nq + 2 * nkv) * hd) hw[n] = gv, cw[n++] = cv;
                else spare_nan += isnan(gv);
            }
        double e = rel_l2(hw, cw, n);
        free(q), free(kk), free(v), free(inv), free(nan), free(pos), free(h), free(hw), free(cw);
        CHECK(e < TOL_EW && spare_nan == (size_t)T * 8, "qkv_merge T=%d nq=%d nkv=%d hd=%d: %g, spare columns kept %zu of %d",
              T, nq, nkv, hd, e, spare_nan, T * 8);
    }
    gpair_close(&p);
}

static int attn_case(gpair *p, us_test_ctx *t, int batch, int seq, int H, int KV, int hd, int use_seg) {
    us_attn_shape sh = {batch, seq, H, KV, hd, 1.0f / sqrtf((float)hd), 0};
    size_t T = (size_t)batch * seq, nq = T * H * hd, nk = T * KV * hd;
    uint64_t sd = (uint64_t)seq * 131 + hd;
    float *q = rnd(nq, 1.0f, sd + 1), *k = rnd(nk, 1.0f, sd + 2), *v = rnd(nk, 1.0f, sd + 3), *dout = rnd(nq, 1.0f, sd + 4);
    int32_t *seg = NULL;
    if (use_seg) { /* packed examples: boundaries at pseudo-random places */
        seg = malloc(T * 4);
        for (int b = 0; b < batch; b++) {
            int start = 0;
            for (int i = 0; i < seq; i++) {
                if (i > 0 && us_hash64((uint64_t)b * 100003 + i) % 41 == 0) start = i;
                seg[(size_t)b * seq + i] = start;
            }
        }
    }
    void *gq = g_act(p, q, nq), *gk = g_act(p, k, nk), *gv = g_act(p, v, nk), *go = g_poison(p, nq * 2);
    float *gl = g_poison(p, T * H * 4);
    int32_t *gs = seg ? g_bytes(p, seg, T * 4) : NULL, *cs = seg ? c_bytes(p, seg, T * 4) : NULL;
    void *cq = c_f32(p, q, nq), *ck = c_f32(p, k, nk), *cv = c_f32(p, v, nk), *co = p->c->alloc(p->c, nq * 4);
    float *cl = p->c->alloc(p->c, T * H * 4);
    p->g->attn_fwd(p->g, go, gl, gq, gk, gv, gs, &sh);
    p->c->attn_fwd(p->c, co, cl, cq, ck, cv, cs, &sh);
    double eo = err_act(p, go, co, nq), el = err_f32(p, gl, cl, T * H);
    int ok = eo < TOL_MM && el < 1e-3;
    if (ok) {
        /* backward from the GPU's own o (bf16) on both sides */
        float *ho = get_act(p, go, nq);
        void *cob = c_f32(p, ho, nq);
        float *hl = get_f32(p, gl, T * H);
        float *clg = c_f32(p, hl, T * H);
        void *gdo = g_act(p, dout, nq), *cdo = c_f32(p, dout, nq);
        void *gdq = g_poison(p, nq * 2), *gdk = g_poison(p, nk * 2), *gdv = g_poison(p, nk * 2);
        void *cdq = p->c->alloc(p->c, nq * 4), *cdk = p->c->alloc(p->c, nk * 4), *cdv = p->c->alloc(p->c, nk * 4);
        p->g->attn_bwd(p->g, gdq, gdk, gdv, gdo, gq, gk, gv, go, gl, gs, &sh, NULL);
        p->c->attn_bwd(p->c, cdq, cdk, cdv, cdo, cq, ck, cv, cob, clg, cs, &sh, NULL);
        double eq = err_act(p, gdq, cdq, nq), ek = err_act(p, gdk, cdk, nk), ev = err_act(p, gdv, cdv, nk);
        if (!(eq < TOL_GRAD && ek < TOL_GRAD && ev < TOL_GRAD)) {
            snprintf(t->msg, sizeof t->msg, "attn_bwd b=%d s=%d H=%d KV=%d hd=%d seg=%d: dq %g dk %g dv %g", batch, seq,
                     H, KV, hd, use_seg, eq, ek, ev);
            ok = 0;
        }
        /* o's rows H*hd + 16 apart (o_proj's folded columns beside it): the same o, nothing written
         * between the rows, and the backward reading that o the same gradients */
        us_attn_shape shp = sh;
        shp.ldo = H * hd + 16;
        size_t np = T * (size_t)shp.ldo;
        void *gop = g_poison(p, np * 2), *gdq2 = g_poison(p, nq * 2), *gdk2 = g_poison(p, nk * 2), *gdv2 = g_poison(p, nk * 2);
        p->g->attn_fwd(p->g, gop, gl, gq, gk, gv, gs, &shp);
        float *hop = get_act(p, gop, np);
        int same = 1, pads = 1;
        for (size_t r2 = 0; r2 < T; r2++) {
            same &= !memcmp(hop + r2 * shp.ldo, ho + r2 * H * hd, (size_t)H * hd * 4);
            for (int j = H * hd; j < shp.ldo; j++) pads &= !isfinite(hop[r2 * shp.ldo + j]);
        }
        p->g->attn_bwd(p->g, gdq2, gdk2, gdv2, gdo, gq, gk, gv, gop, gl, gs, &shp, NULL);
        double eq2 = err_act(p, gdq2, cdq, nq), ek2 = err_act(p, gdk2, cdk, nk), ev2 = err_act(p, gdv2, cdv, nk);
        if (ok && !(same && pads && eq2 < TOL_GRAD && ek2 < TOL_GRAD && ev2 < TOL_GRAD)) {
            snprintf(t->msg, sizeof t->msg, "attn ldo %d b=%d s=%d H=%d KV=%d hd=%d seg=%d: o %s%s, dq %g dk %g dv %g",
                     shp.ldo, batch, seq, H, KV, hd, use_seg, same ? "same" : "differs", pads ? "" : ", pads written",
                     eq2, ek2, ev2);
            ok = 0;
        }
        /* merged (attn_bwd's merge): rope^-1(dq) | rope^-1(dk) | dv straight into rows ld apart,
         * against the CPU's qkv_merge of its own gradients; the spare columns left alone */
        int ld = (H + 2 * KV) * hd + 8, used = (H + 2 * KV) * hd;
        size_t nd = T * (size_t)ld;
        float *inv = malloc((size_t)hd / 2 * 4);
        int32_t *pos = malloc(T * 4);
        for (int i = 0; i < hd / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / hd);
        for (size_t r2 = 0; r2 < T; r2++) pos[r2] = (int32_t)((r2 * 53) % 4096);
        us_qkv_merge_out gm = {g_poison(p, nd * 2), ld, g_bytes(p, pos, T * 4), g_bytes(p, inv, (size_t)hd / 2 * 4)};
        float *cd = p->c->alloc(p->c, nd * 4);
        p->c->qkv_merge(p->c, cd, ld, cdq, cdk, cdv, c_bytes(p, pos, T * 4), c_f32(p, inv, (size_t)hd / 2), (int)T, H,
                        KV, hd);
        p->g->attn_bwd(p->g, g_poison(p, nq * 2), g_poison(p, nk * 2), g_poison(p, nk * 2), gdo, gq, gk, gv, go, gl, gs,
                       &sh, &gm);
        float *hm = get_act(p, gm.dst, nd), *hw = malloc(nd * 4), *cw = malloc(nd * 4);
        size_t nu = 0, spare_kept = 0;
        for (size_t r2 = 0; r2 < T; r2++)
            for (int j = 0; j < ld; j++) {
                if (j < used) hw[nu] = hm[r2 * ld + j], cw[nu++] = cd[r2 * ld + j];
                else spare_kept += !isfinite(hm[r2 * ld + j]);
            }
        double em = rel_l2(hw, cw, nu);
        if (ok && !(em < TOL_GRAD && spare_kept == T * 8)) {
            snprintf(t->msg, sizeof t->msg, "attn_bwd merged b=%d s=%d H=%d KV=%d hd=%d seg=%d: %g, spare kept %zu of %zu",
                     batch, seq, H, KV, hd, use_seg, em, spare_kept, T * 8);
            ok = 0;
        }
        free(inv), free(pos), free(hm), free(hw), free(cw);
        free(hop), free(ho), free(hl);
    } else {
        snprintf(t->msg, sizeof t->msg, "attn_fwd b=%d s=%d H=%d KV=%d hd=%d seg=%d: o %g lse %g", batch, seq, H, KV, hd,
                 use_seg, eo, el);
    }
    free(q), free(k), free(v), free(dout), free(seg);
    return ok;
}

static const int attn_cases[][6] = {
    /* batch, seq, heads, kv_heads, head_dim, seg */
    {2, 100, 4, 2, 16, 0}, {1, 130, 4, 1, 32, 0}, {2, 64, 2, 2, 64, 0},  {1, 200, 6, 2, 64, 0},
    {1, 129, 4, 2, 128, 0}, {2, 150, 4, 2, 16, 1}, {1, 300, 4, 4, 64, 1}, {1, 190, 4, 1, 128, 1},
    {1, 1, 2, 1, 64, 0},   {2, 70, 8, 2, 32, 0},  {1, 1000, 8, 2, 128, 0}, {3, 257, 6, 3, 64, 0},
};

/* every case above with the backend created under US_CUDA_ATTN_ACC_BYTES = budget (NULL: default) */
static int attn_cases_under(us_test_ctx *t, const char *budget) {
    if (budget) setenv("US_CUDA_ATTN_ACC_BYTES", budget, 1);
    gpair p;
    int opened = gpair_open(&p) == 0;
    if (budget) unsetenv("US_CUDA_ATTN_ACC_BYTES");
    if (!opened) {
        snprintf(t->msg, sizeof t->msg, "backends: %s", p.err.msg);
        t->failed = 1;
        return 0;
    }
    for (size_t i = 0; i < sizeof attn_cases / sizeof attn_cases[0]; i++) {
        const int *c = attn_cases[i];
        if (!attn_case(&p, t, c[0], c[1], c[2], c[3], c[4], c[5])) {
            size_t l = strlen(t->msg);
            if (budget) snprintf(t->msg + l, sizeof t->msg - l, " (accumulator budget %s bytes)", budget);
            t->failed = 1;
            gpair_close(&p);
            return 0;
        }
    }
    gpair_close(&p);
    return 1;
}

TEST(cuda_attention_fwd_bwd) { attn_cases_under(t, NULL); }

/* The Hopper backward's three ways of adding dQ tiles (US_CUDA_WG_DQ: atomics, a bulk add per row,
 * a bulk add per tile into the tile-ordered accumulator), each against the CPU backend; the
 * default picks one per head dim. Each mode in a backend opened under it (the backend reads the
 * variable when it opens). (On other GPUs every mode runs the portable kernel.) */
TEST(cuda_attention_bwd_dq_modes) {
    static const char *modes[] = {"1", "2", "3"};
    for (int i = 0; i < 3 && !t->failed; i++) {
        setenv("US_CUDA_WG_DQ", modes[i], 1);
        if (!attn_cases_under(t, NULL)) {
            size_t l = strlen(t->msg);
            snprintf(t->msg + l, sizeof t->msg - l, " (US_CUDA_WG_DQ=%s)", modes[i]);
        }
        unsetenv("US_CUDA_WG_DQ");
    }
}

/* The backward in chunks of query heads: budget 1 byte forces one head per chunk (dK/dV of a kv
 * head accumulate over its group's chunks); 300000 bytes gives whole-group chunks for some cases. */
TEST(cuda_attention_bwd_chunked) {
    if (!attn_cases_under(t, "1")) return;
    attn_cases_under(t, "300000");
}

TEST(cuda_glu_fwd_bwd_bits) {
    OPEN_PAIR(p);
    /* cols not a multiple of 8 take the fallback kernels; the ranks R of the fused dA: padded to
     * 8 (5, 3), several n-tiles (40: 6), across many row chunks and column strips (777 x 1032).
     * The forward's fused x·A of down (ud) takes columns that are a multiple of 32 (160, 1536,
     * 1056 over 777 rows: many row chunks and a partial last strip, 224 at R 5); the others
     * compose glu_fwd and lora_down. */
    int colss[] = {160, 100, 1536, 33, 1032, 1056, 224}, rowss[] = {37, 37, 37, 37, 777, 777, 130};
    int Rs[] = {16, 5, 40, 3, 16, 16, 5};
    for (int ci = 0; ci < 7; ci++)
        for (int act = 0; act < 2; act++) {
            /* the product's rows lda apart: the down projection's input, its folded LoRA columns
             * (ud in bf16) and 8 more that nothing may write */
            int rows = rowss[ci], cols = colss[ci], W = (cols + 31) / 32, R = Rs[ci], lda = cols + R + 8, lddd = R + 3;
            size_t n = (size_t)rows * cols, na = (size_t)rows * lda, nu = (size_t)rows * lddd;
            float *g = rnd(n, 1.0f, 1 + ci), *u = rnd(n, 1.0f, 2 + ci), *da = rnd(n, 1.0f, 3 + ci);
            float *Ad = rnd((size_t)R * cols, 0.05f, 6 + ci), *nan = malloc(na * 4);
            for (size_t i = 0; i < na; i++) nan[i] = NAN;
            void *gg = g_act(&p, g, n), *gu = g_act(&p, u, n), *ga = g_poison(&p, na * 2);
            uint32_t *gb = g_poison(&p, (size_t)rows * W * 4);
            float *gud = g_poison(&p, nu * 4), *gAd = g_f32_at(&p, Ad, (size_t)R * cols, 0);
            void *cg = c_f32(&p, g, n), *cu = c_f32(&p, u, n), *ca = c_f32(&p, nan, na);
            uint32_t *cb = p.c->alloc(p.c, (size_t)rows * W * 4);
            float *cud = c_f32(&p, nan, nu), *cAd = c_f32(&p, Ad, (size_t)R * cols);
            p.g->glu_fwd(p.g, act, ga, lda, gg, gu, act == US_GLU_RELU ? gb : NULL, rows, cols, gud, lddd, gAd, R, true);
            p.c->glu_fwd(p.c, act, ca, lda, cg, cu, act == US_GLU_RELU ? cb : NULL, rows, cols, cud, lddd, cAd, R, true);
            float *hga = get_act(&p, ga, na), *hud = get_f32(&p, gud, nu), *dense = malloc(n * 4), *cdense = malloc(n * 4);
            float *fold = malloc((size_t)rows * R * 4), *cfold = malloc((size_t)rows * R * 4);
            float *ud = malloc((size_t)rows * R * 4), *cud_ = malloc((size_t)rows * R * 4);
            int pads_kept = 1;
            for (int r2 = 0; r2 < rows; r2++) {
                memcpy(dense + (size_t)r2 * cols, hga + (size_t)r2 * lda, (size_t)cols * 4);
                memcpy(cdense + (size_t)r2 * cols, (float *)ca + (size_t)r2 * lda, (size_t)cols * 4);
                memcpy(fold + (size_t)r2 * R, hga + (size_t)r2 * lda + cols, (size_t)R * 4);
                memcpy(cfold + (size_t)r2 * R, (float *)ca + (size_t)r2 * lda + cols, (size_t)R * 4);
                memcpy(ud + (size_t)r2 * R, hud + (size_t)r2 * lddd, (size_t)R * 4);
                memcpy(cud_ + (size_t)r2 * R, cud + (size_t)r2 * lddd, (size_t)R * 4);
                for (int j = cols + R; j < lda; j++) pads_kept &= !isfinite(hga[(size_t)r2 * lda + j]);
                for (int j = R; j < lddd; j++) pads_kept &= !isfinite(hud[(size_t)r2 * lddd + j]);
            }
            double ea = rel_l2(dense, cdense, n), eg = err_act(&p, gg, cg, n);
            double eu = rel_l2(ud, cud_, (size_t)rows * R), ef = rel_l2(fold, cfold, (size_t)rows * R);
            free(dense), free(cdense), free(fold), free(cfold), free(ud), free(cud_), free(hud), free(nan), free(Ad);
            CHECK(ea < TOL_EW && eg < TOL_EW && eu < TOL_EW && ef < TOL_EW && pads_kept,
                  "glu_fwd act=%d rows=%d cols=%d R=%d: a %g g %g, down's x·A %g, folded %g%s", act, rows, cols, R, ea, eg,
                  eu, ef, pads_kept ? "" : ", wrote between rows");
            if (act == US_GLU_RELU) {
                uint32_t *hb = malloc((size_t)rows * W * 4);
                p.g->download(p.g, hb, gb, (size_t)rows * W * 4);
                int same = memcmp(hb, cb, (size_t)rows * W * 4) == 0;
                free(hb);
                CHECK(same, "glu_fwd cols=%d: packed bits differ from the cpu backend", cols);
            }
            /* backward, in place (dg, du alias g, u), from each side's saved state, with the down
             * projection's dA += dd^T product (dA starting from nonzero values) */
            void *gda = g_act(&p, da, n), *cda = c_f32(&p, da, n);
            float *dd = rnd((size_t)rows * lddd, 1.0f, 4 + ci), *dA0 = rnd((size_t)R * cols, 1.0f, 5 + ci);
            float *gdd = g_f32_at(&p, dd, (size_t)rows * lddd, 0), *gdA = g_f32_at(&p, dA0, (size_t)R * cols, 0);
            float *cdd = c_f32(&p, dd, (size_t)rows * lddd), *cdA = c_f32(&p, dA0, (size_t)R * cols);
            p.g->glu_bwd(p.g, act, gg, gu, gdA, gdd, lddd, R, gda, gg, gu, act == US_GLU_RELU ? gb : NULL, rows, cols);
            p.c->glu_bwd(p.c, act, cg, cu, cdA, cdd, lddd, R, cda, cg, cu, act == US_GLU_RELU ? cb : NULL, rows, cols);
            double edg = err_act(&p, gg, cg, n), edu = err_act(&p, gu, cu, n);
            float *hdA = get_f32(&p, gdA, (size_t)R * cols);
            double edA = rel_l2(hdA, cdA, (size_t)R * cols);
            free(hdA), free(hga), free(dd), free(dA0);
            CHECK(edg < TOL_EW && edu < TOL_EW && edA < TOL_EW, "glu_bwd act=%d rows=%d cols=%d R=%d: dg %g du %g dA %g",
                  act, rows, cols, R, edg, edu, edA);
            free(g), free(u), free(da);
        }
    gpair_close(&p);
}

/* Decoding's attention over a key/value cache (attn_cached) against the CPU backend's: prefill
 * chunks (T > 1, from position 0 and past it) and single tokens late in a long cache, GQA and
 * not, head_dim 64 / 128 / 80 (not a multiple of 32) / 256; the cache rows past start + T are
 * poison (NaN) and must not be read. */
TEST(cuda_attn_cached_matches_cpu) {
    OPEN_PAIR(p);
    CHECK(p.g->attn_cached && p.c->attn_cached, "attn_cached missing");
    static const int cases[][5] = {/* T, start, H, KV, hd */
                                   {7, 0, 4, 2, 64},     {1, 300, 32, 8, 128}, {16, 40, 6, 6, 80},
                                   {1, 0, 2, 1, 64},     {3, 1021, 8, 2, 128}, {5, 9, 4, 1, 256}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int T = cases[k][0], start = cases[k][1], H = cases[k][2], KV = cases[k][3], hd = cases[k][4];
        int ctx = start + T, cap = ctx + 5;
        size_t nq = (size_t)T * H * hd, nkv = (size_t)cap * KV * hd, used = (size_t)ctx * KV * hd;
        float *q = rnd(nq, 1.0f, 40 + k), *kk = rnd(nkv, 1.0f, 41 + k), *v = rnd(nkv, 1.0f, 42 + k);
        for (size_t i = used; i < nkv; i++) kk[i] = v[i] = NAN; /* rows past the sequence */
        void *gq = g_act(&p, q, nq), *gk = g_act(&p, kk, nkv), *gv = g_act(&p, v, nkv), *go = g_poison(&p, nq * 2);
        void *cq = c_f32(&p, q, nq), *ck = c_f32(&p, kk, nkv), *cv = c_f32(&p, v, nkv), *co = p.c->alloc(p.c, nq * 4);
        us_attn_shape sh = {1, 0, H, KV, hd, 1.0f / sqrtf((float)hd), 0};
        p.g->attn_cached(p.g, go, gq, gk, gv, T, start, &sh);
        p.c->attn_cached(p.c, co, cq, ck, cv, T, start, &sh);
        double e = err_act(&p, go, co, nq);
        CHECK(e < TOL_EW, "attn_cached T %d start %d H %d KV %d hd %d: rel err %g", T, start, H, KV, hd, e);
        free(q), free(kk), free(v);
    }
    gpair_close(&p);
}

/* The whole decode path on the GPU (projections with the LoRA adapter, RoPE into the cache,
 * attn_cached, the head): a 9-token prefill, then 6 tokens one at a time, against the CPU backend.
 * bf16 activations move these small models' logits by a few percent from f32 (the ReLU fixture's
 * gates flip sign here and there: 2-6% measured), so the bound is what the GPU's own training
 * forward (us_model_forward over the same prefix) shows against the CPU's: the decoder may differ
 * from the CPU decoder by at most twice that, plus 1e-2. On the GPU alone the 15 tokens fed at
 * once give the incremental logits within 1e-2 (positions, cache rows and causal range agree). */
TEST(cuda_decode_matches_cpu) {
    static const char *fx[] = {"llama_relu_f16_sharded", "llama_silu_gqa_tied", "mistral_mlp", "qwen2_bias_bf16"};
    for (int f = 0; f < 4; f++) {
        us_backend *be[2] = {NULL, NULL};
        us_model *m[2] = {NULL, NULL};
        us_decoder *d[2] = {NULL, NULL};
        us_err e = {{0}};
        char model[512], adapter[512];
        snprintf(model, sizeof model, "%s/%s/model", FIXTURES, fx[f]);
        snprintf(adapter, sizeof adapter, "%s/%s/adapter_final", FIXTURES, fx[f]);
        bool ok = true;
        for (int b = 0; b < 2 && ok; b++)
            ok = !us_backend_create(b ? "cuda" : "cpu", 2, &be[b], &e) &&
                 !us_model_load_inference(&m[b], be[b], model, adapter, &e) && !us_decoder_create(m[b], 32, &d[b], &e) &&
                 !us_model_prepare(m[b], 15, &e);
        CHECK(ok, "%s: %s", fx[f], e.msg);
        int V = m[0]->cfg.vocab;
        float *lg[2], *lf[2];
        int32_t ids[15], tg[15], pos[15], *dev[2][3];
        for (int i = 0; i < 15; i++) ids[i] = (int32_t)((i * 7919 + 13) % V), tg[i] = -100, pos[i] = i;
        for (int b = 0; b < 2; b++) {
            lg[b] = malloc((size_t)V * 4), lf[b] = malloc((size_t)15 * V * 4);
            for (int k = 0; k < 3; k++) {
                dev[b][k] = be[b]->alloc(be[b], 60);
                be[b]->upload(be[b], dev[b][k], k == 0 ? ids : k == 1 ? tg : pos, 60);
            }
        }
        double worst = 0;
        for (int step = 0; step < 7 && ok; step++) {
            int at = step ? 8 + step : 0, n = step ? 1 : 9, len = at + n;
            for (int b = 0; b < 2 && ok; b++) {
                us_batch bt = {.batch = 1, .seq = len, .ids = dev[b][0], .targets = dev[b][1], .pos = dev[b][2]};
                double ls;
                ok = !us_decoder_feed(d[b], ids + at, n, lg[b], &e) && !us_model_forward(m[b], &bt, lf[b], &ls, &e);
            }
            CHECK(ok, "%s feed %d: %s", fx[f], step, e.msg);
            size_t last = (size_t)(len - 1) * V;
            double eref = rel_l2(lf[1] + last, lf[0] + last, (size_t)V), edec = rel_l2(lg[1], lg[0], (size_t)V);
            CHECK(edec <= 2 * eref + 1e-2, "%s: logits after feed %d (%d tokens): decoder %g from the CPU's, forward %g",
                  fx[f], step, len, edec, eref);
            worst = fmax(worst, edec);
        }
        float *once = malloc((size_t)V * 4);
        us_decoder_reset(d[1]);
        ok = ok && !us_decoder_feed(d[1], ids, 15, once, &e);
        double err = ok ? rel_l2(once, lg[1], (size_t)V) : 1;
        free(once);
        CHECK(ok && err < 1e-2, "%s: 15 tokens at once vs one by one on the GPU: %g %s", fx[f], err, e.msg);
        printf("     %-24s decoder vs CPU decoder: worst %.2e; all at once vs one by one %.2e\n", fx[f], worst, err);
        for (int b = 0; b < 2; b++) {
            free(lg[b]), free(lf[b]);
            for (int k = 0; k < 3; k++) be[b]->free(be[b], dev[b][k]);
            us_decoder_free(d[b]);
            us_model_free(m[b]);
            be[b]->destroy(be[b]);
        }
    }
}

TEST(cuda_add_and_xent) {
    OPEN_PAIR(p);
    size_t n = 10007;
    float *y = rnd(n, 1.0f, 1), *x = rnd(n, 1.0f, 2);
    for (int off = 0; off < 2; off++) { /* off = 1: unaligned scalar path */
        void *gy = g_act(&p, y, n), *gx = g_act(&p, x, n);
        void *cy = c_f32(&p, y, n), *cx = c_f32(&p, x, n);
        p.g->add(p.g, (char *)gy + 2 * off, (char *)gx + 2 * off, n - off);
        p.c->add(p.c, (float *)cy + off, (float *)cx + off, n - off);
        double e = err_act(&p, gy, cy, n);
        CHECK(e < TOL_EW, "add: %g", e);
    }
    /* 1001: the scalar path; 128256 and 151936: the benchmark models' and Qwen2's rows. The
     * row-in-registers kernel: clusters of 1, 2, 4, 8 CTAs of 256 threads with 8 pieces of 8
     * elements (256 to 128256), 8 CTAs with 10 pieces (151936, 163840 full), 8 CTAs of 512
     * threads (200000, 262144 full); 262152 takes the two-pass kernel. Labels: one ignored row,
     * the first and last element, the rest anywhere. */
    int vocabs[] = {256, 1000, 1001, 49152, 128256, 151936, 163840, 200000, 262144, 262152};
    for (int vi = 0; vi < 10; vi++) {
        int rows = 9, V = vocabs[vi];
        size_t nl = (size_t)rows * V;
        float *L = rnd(nl, 3.0f, 10 + vi);
        int32_t lab[9];
        for (int r = 0; r < rows; r++) lab[r] = r == 3 ? -100 : (int32_t)(us_hash64(r + vi) % V);
        lab[5] = 0, lab[7] = V - 1;
        void *gL = g_act(&p, L, nl), *cL = c_f32(&p, L, nl);
        int32_t *gl = g_bytes(&p, lab, sizeof lab), *cl = c_bytes(&p, lab, sizeof lab);
        float z = 1.5f;
        float *gls = g_bytes(&p, &z, 4), *cls = c_f32(&p, &z, 1);
        p.g->xent_fwd_bwd(p.g, gL, gl, gls, 0.125f, rows, V);
        p.c->xent_fwd_bwd(p.c, cL, cl, cls, 0.125f, rows, V);
        double eL = err_act(&p, gL, cL, nl), el = err_f32(&p, gls, cls, 1);
        CHECK(eL < TOL_EW && el < 1e-4, "xent vocab %d: dlogits %g loss %g", V, eL, el);
        free(L);
    }
    free(y), free(x);
    gpair_close(&p);
}

TEST(cuda_adamw_and_reductions) {
    OPEN_PAIR(p);
    size_t n = 100000;
    float *pp = rnd(n, 1.0f, 1), *g = rnd(n, 0.1f, 2), *m = rnd(n, 0.01f, 3), *v = rnd(n, 0.01f, 4);
    for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i];
    float *gp = g_bytes(&p, pp, n * 4), *gg = g_bytes(&p, g, n * 4), *gm = g_bytes(&p, m, n * 4), *gv = g_bytes(&p, v, n * 4);
    float *cp = c_f32(&p, pp, n), *cg = c_f32(&p, g, n), *cm = c_f32(&p, m, n), *cv = c_f32(&p, v, n);
    for (int step = 1; step <= 3; step++) {
        float bc1 = 1.0f - powf(0.9f, step), bc2 = 1.0f - powf(0.999f, step);
        p.g->adamw(p.g, gp, gg, gm, gv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, bc1, bc2);
        p.c->adamw(p.c, cp, cg, cm, cv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, bc1, bc2);
    }
    double ep = err_f32(&p, gp, cp, n), em = err_f32(&p, gm, cm, n), ev = err_f32(&p, gv, cv, n);
    CHECK(ep < 1e-6 && em < 1e-6 && ev < 1e-6, "adamw: p %g m %g v %g", ep, em, ev);
    double sg = p.g->sumsq(p.g, gg, n), sc = p.c->sumsq(p.c, cg, n);
    CHECK(fabs(sg - sc) <= 1e-9 * sc, "sumsq %.12g vs %.12g", sg, sc);
    p.g->scale(p.g, gg, n, 0.5f);
    p.c->scale(p.c, cg, n, 0.5f);
    CHECK(err_f32(&p, gg, cg, n) == 0, "scale");
    CHECK(!p.g->nonfinite(p.g, gg, n), "nonfinite on finite data");
    float bad = NAN;
    p.g->upload(p.g, gg + n / 2, &bad, 4);
    CHECK(p.g->nonfinite(p.g, gg, n), "nonfinite missed a NaN");
    bad = INFINITY;
    p.g->upload(p.g, gg + n / 2, &bad, 4);
    CHECK(p.g->nonfinite(p.g, gg, n), "nonfinite missed an inf");
    free(pp), free(g), free(m), free(v);
    gpair_close(&p);
}

TEST(cuda_memory_tracking) {
    OPEN_PAIR(p);
    size_t u0, pk0, tot;
    p.g->mem_info(p.g, &u0, &pk0, &tot);
    void *a = p.g->alloc(p.g, 100 << 20), *b = p.g->alloc(p.g, 50 << 20);
    CHECK(a && b, "alloc");
    size_t u1, pk1;
    p.g->mem_info(p.g, &u1, &pk1, NULL);
    p.g->free(p.g, a);
    size_t u2, pk2;
    p.g->mem_info(p.g, &u2, &pk2, NULL);
    CHECK(u1 == u0 + (150u << 20) && pk1 >= u1 && u2 == u0 + (50u << 20) && pk2 == pk1 && tot > (1ull << 30),
          "in_use %zu -> %zu -> %zu, peak %zu, total %zu", u0, u1, u2, pk2, tot);
    void *huge = p.g->alloc(p.g, (size_t)1 << 50);
    CHECK(huge == NULL, "an impossible allocation returned non-NULL");
    /* copy and zero */
    float h[4] = {1, 2, 3, 4}, back[4];
    p.g->upload(p.g, b, h, 16);
    p.g->copy(p.g, (char *)b + 64, b, 16);
    p.g->zero(p.g, b, 16);
    p.g->download(p.g, back, (char *)b + 64, 16);
    CHECK(memcmp(back, h, 16) == 0, "copy");
    p.g->download(p.g, back, b, 16);
    CHECK(back[0] == 0 && back[3] == 0, "zero");
    /* a large upload through the pinned staging buffers */
    size_t big = 40u << 20;
    unsigned char *src = malloc(big), *dst = malloc(big);
    for (size_t i = 0; i < big; i++) src[i] = (unsigned char)(i * 7 + (i >> 20));
    void *d = p.g->alloc(p.g, big);
    p.g->upload(p.g, d, src, big);
    p.g->download(p.g, dst, d, big);
    int same = memcmp(src, dst, big) == 0;
    free(src), free(dst);
    CHECK(same, "40 MiB upload round trip");
    gpair_close(&p);
}

/* Host offload: offload/prefetch run on the copy stream, ordered after the compute issued before
 * them (here a kernel that rewrites the source just before the offload, behind a queue of large
 * products), and copies_wait orders later compute after them. Round trip: device -> pinned host ->
 * another device buffer, checked on the host copy and on the device after more compute. */
TEST(cuda_offload_roundtrip_under_compute) {
    OPEN_PAIR(p);
    us_backend *g = p.g;
    CHECK(g->host_alloc && g->offload && g->prefetch && g->copies_wait && g->copy_wait, "offload ops missing");
    size_t n = (size_t)16 << 20; /* 64 MiB of f32 */
    float *h = malloc(n * 4);
    for (size_t i = 0; i < n; i++) h[i] = (float)(i % 1000003) * 0.5f;
    float *a = g_bytes(&p, h, n * 4), *b = g_poison(&p, n * 4);
    float *pin = g->host_alloc(g, n * 4);
    CHECK(pin != NULL, "host_alloc of 64 MiB failed");
    memset(pin, 0, n * 4);
    int N = 4096; /* a queue of products so that the copies would overtake compute if unordered */
    float *x = rnd((size_t)N * N, 1.0f, 3);
    void *gx = g_act(&p, x, (size_t)N * N), *gw = g_act(&p, x, (size_t)N * N), *gy = g_poison(&p, (size_t)N * N * 2);
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < 8; i++) g->linear_fwd(g, gy, NULL, gx, N, gw, N, NULL, N, N, N);
        /* rounds 1 and 2 wait on each copy's ticket (copy_wait) instead of on every copy */
        g->scale(g, a, n, 2.0f);            /* the offload must see this */
        int t1 = g->offload(g, pin, a, n * 4);
        for (int i = 0; i < 4; i++) g->linear_fwd(g, gy, NULL, gx, N, gw, N, NULL, N, N, N); /* overlaps the copy */
        if (rep) g->copy_wait(g, t1);
        else g->copies_wait(g);
        g->scale(g, a, n, 0.5f);            /* after the copy: must not show in pin */
        int t2 = g->prefetch(g, b, pin, n * 4);
        CHECK(t1 > 0 && t2 > t1, "tickets %d then %d", t1, t2);
        if (rep) g->copy_wait(g, t2);
        else g->copies_wait(g);
        g->scale(g, b, n, 3.0f);            /* after the prefetch */
        g->sync(g);
        size_t bad_h = 0, bad_d = 0;
        for (size_t i = 0; i < n; i++)
            if (pin[i] != h[i] * 2.0f) bad_h++;
        float *back = get_f32(&p, b, n), *aa = get_f32(&p, a, n);
        for (size_t i = 0; i < n; i++)
            if (back[i] != h[i] * 6.0f || aa[i] != h[i]) bad_d++;
        free(back), free(aa);
        CHECK(bad_h == 0 && bad_d == 0, "round %d: %zu host values, %zu device values wrong", rep, bad_h, bad_d);
        g->zero(g, b, n * 4);
    }
    g->host_free(g, pin);
    /* more than the host has: refused (NULL), not left to the OOM killer */
    CHECK(g->host_alloc(g, (size_t)1 << 50) == NULL, "host_alloc of 1 PiB succeeded");
    free(h), free(x);
    gpair_close(&p);
}

TEST(cuda_scratch_bytes_counts_attention) {
    OPEN_PAIR(p);
    us_backend *g = p.g;
    CHECK(g->scratch_bytes != NULL, "scratch_bytes missing");
    us_attn_shape sh = {1, 4096, 32, 8, 128, 0.088f, 0};
    size_t fixed = g->scratch_bytes(g, 0, NULL), s = g->scratch_bytes(g, 4096, &sh);
    /* the Hopper kernel takes every head at once: dQ 64 MiB + dK, dV 32 MiB + D 0.5 MiB (within
     * eight times the 64 MiB budget); the older one chunks 16 heads: 48.5 MiB */
    CHECK(fixed >= (32u << 20) && s > fixed && s - fixed <= (size_t)97 << 20, "fixed %zu, with attention %zu", fixed, s);
    /* the measured peak of an attention backward stays within the prediction */
    size_t T = 4096, nq = T * 32 * 128, nk = T * 8 * 128;
    size_t u0, pk0;
    g->mem_info(g, &u0, &pk0, NULL);
    void *q = g_poison(&p, nq * 2), *k = g_poison(&p, nk * 2), *v = g_poison(&p, nk * 2), *o = g_poison(&p, nq * 2);
    void *dq = g_poison(&p, nq * 2), *dk = g_poison(&p, nk * 2), *dv = g_poison(&p, nk * 2);
    float *lse = g_poison(&p, T * 32 * 4);
    g->zero(g, q, nq * 2), g->zero(g, k, nk * 2), g->zero(g, v, nk * 2);
    g->attn_fwd(g, o, lse, q, k, v, NULL, &sh);
    size_t u1, pk1;
    g->mem_info(g, &u1, &pk1, NULL);
    g->attn_bwd(g, dq, dk, dv, o, q, k, v, o, lse, NULL, &sh, NULL);
    g->sync(g);
    size_t u2, pk2;
    g->mem_info(g, &u2, &pk2, NULL);
    CHECK(pk2 - u1 <= s - fixed + 4096, "attention backward allocated %zu bytes, predicted %zu", pk2 - u1, s - fixed);
    CHECK(!g->nonfinite(g, lse, T * 32), "lse non-finite");
    gpair_close(&p);
}
