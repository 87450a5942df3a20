/* gpu_bench.c — microbenchmarks of the CUDA backend's ops (build/unswag_gpu_bench, `make gpu-bench`).
 *
 * Prints, for the shapes of issue 3's targets: the bf16 matrix-product rate through linear_fwd at
 * 8192^3 (the ceiling MFU is quoted against), flash attention forward/backward TFLOP/s (causal
 * FLOPs: forward 2 products of b*s*s/2*H*hd each, x2 for multiply-add; backward 2.5x forward), and
 * the memory-bound kernels' GB/s (bytes read + written once). Inputs are random (never zeros).
 * Usage: unswag_gpu_bench [reps] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend/backend.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static us_backend *be;

static void *rand_act(size_t n, float sd, uint64_t stream) {
    void *p = be->alloc(be, n * 2);
    if (!p) {
        fprintf(stderr, "out of memory (%zu elements)\n", n);
        exit(1);
    }
    be->weight_fill_normal(be, p, n, sd, 42, stream);
    return p;
}

#define TIME(reps, stmt, out_sec)                                    \
    do {                                                             \
        stmt;                                                        \
        be->sync(be);                                                \
        double t0_ = now();                                          \
        for (int r_ = 0; r_ < (reps); r_++) stmt;                    \
        be->sync(be);                                                \
        (out_sec) = (now() - t0_) / (reps);                          \
    } while (0)

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    us_err e;
    if (us_backend_create("cuda", 0, &be, &e) != US_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    double sec;
    { /* matrix-product ceiling */
        int n = 8192;
        void *x = rand_act((size_t)n * n, 1.0f, 1), *w = rand_act((size_t)n * n, 0.01f, 2), *y = rand_act((size_t)n * n, 1.0f, 3);
        TIME(reps, be->linear_fwd(be, y, false, x, w, NULL, n, n, n), sec);
        printf("gemm bf16 %dx%dx%d (linear_fwd): %.3f ms  %.1f TFLOP/s\n", n, n, n, sec * 1e3, 2.0 * n * n * (double)n / sec / 1e12);
        /* the shapes of a 1B MLP */
        be->free(be, x), be->free(be, w), be->free(be, y);
    }
    int shapes[][5] = {{8, 2048, 9, 3, 64}, {4, 2048, 32, 8, 64}, {1, 2048, 32, 8, 128}, {1, 16384, 32, 8, 128}};
    for (int i = 0; i < 4; i++) {
        us_attn_shape sh = {shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], shapes[i][4], 0};
        sh.scale = 1.0f / sqrtf((float)sh.head_dim);
        size_t T = (size_t)sh.batch * sh.seq, nq = T * sh.heads * sh.head_dim, nk = T * sh.kv_heads * sh.head_dim;
        void *q = rand_act(nq, 1, 10), *k = rand_act(nk, 1, 11), *v = rand_act(nk, 1, 12), *o = rand_act(nq, 1, 13);
        void *dO = rand_act(nq, 1, 14), *dq = rand_act(nq, 1, 15), *dk = rand_act(nk, 1, 16), *dv = rand_act(nk, 1, 17);
        float *lse = be->alloc(be, T * sh.heads * 4);
        int r = sh.seq > 4096 ? 3 : reps;
        double fl = 4.0 * sh.batch * (double)sh.seq * sh.seq / 2 * sh.heads * sh.head_dim, tb;
        TIME(r, be->attn_fwd(be, o, lse, q, k, v, NULL, &sh), sec);
        TIME(r, be->attn_bwd(be, dq, dk, dv, dO, q, k, v, o, lse, NULL, &sh), tb);
        printf("attention b=%d s=%d H=%d KV=%d hd=%d: fwd %.3f ms %.1f TFLOP/s, bwd %.3f ms %.1f TFLOP/s\n", sh.batch,
               sh.seq, sh.heads, sh.kv_heads, sh.head_dim, sec * 1e3, fl / sec / 1e12, tb * 1e3, 2.5 * fl / tb / 1e12);
        be->free(be, q), be->free(be, k), be->free(be, v), be->free(be, o), be->free(be, dO), be->free(be, dq);
        be->free(be, dk), be->free(be, dv), be->free(be, lse);
    }
    { /* memory-bound kernels at the 1B shape: T = 8192, dim 2048, inter 8192, vocab chunk */
        int T = 8192, D = 2048, F = 8192;
        void *x = rand_act((size_t)T * D, 1, 20), *y = rand_act((size_t)T * D, 1, 21);
        float *w = be->alloc(be, D * 4), *rs = be->alloc(be, T * 4);
        be->act_to_f32(be, w, rand_act(D, 1, 22), D);
        TIME(reps, be->rmsnorm_fwd(be, y, rs, x, w, T, D, 1e-5f), sec);
        printf("rmsnorm_fwd %dx%d: %.3f ms  %.0f GB/s\n", T, D, sec * 1e3, 4.0 * T * D / sec / 1e9);
        TIME(reps, be->rmsnorm_bwd(be, y, false, NULL, x, x, rs, w, T, D), sec);
        printf("rmsnorm_bwd %dx%d: %.3f ms  %.0f GB/s\n", T, D, sec * 1e3, 6.0 * T * D / sec / 1e9);
        TIME(reps, be->add(be, y, x, (size_t)T * D), sec);
        printf("add %dx%d: %.3f ms  %.0f GB/s\n", T, D, sec * 1e3, 6.0 * T * D / sec / 1e9);
        void *g = rand_act((size_t)T * F, 1, 23), *u = rand_act((size_t)T * F, 1, 24), *a = rand_act((size_t)T * F, 1, 25);
        uint32_t *bits = be->alloc(be, (size_t)T * F / 8);
        TIME(reps, be->glu_fwd(be, US_GLU_SILU, a, g, u, NULL, T, F), sec);
        printf("glu_fwd silu %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 6.0 * T * F / sec / 1e9);
        TIME(reps, be->glu_fwd(be, US_GLU_RELU, a, g, u, bits, T, F), sec);
        printf("glu_fwd relu+bits %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 8.125 * T * F / sec / 1e9);
        TIME(reps, be->glu_bwd(be, US_GLU_RELU, g, u, a, g, u, bits, T, F), sec);
        printf("glu_bwd relu %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 10.125 * T * F / sec / 1e9);
        TIME(reps, be->glu_bwd(be, US_GLU_SILU, g, u, a, g, u, NULL, T, F), sec);
        printf("glu_bwd silu %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 10.0 * T * F / sec / 1e9);
        be->free(be, g), be->free(be, u), be->free(be, a), be->free(be, x), be->free(be, y);
        int rows = 1024, V = 128256;
        void *L = rand_act((size_t)rows * V, 2, 26);
        int32_t *lab = be->alloc(be, rows * 4);
        be->zero(be, lab, rows * 4);
        float *ls = be->alloc(be, 4);
        be->zero(be, ls, 4);
        TIME(reps, be->xent_fwd_bwd(be, L, lab, ls, 1e-4f, rows, V), sec);
        printf("xent %dx%d: %.3f ms  %.0f GB/s\n", rows, V, sec * 1e3, 6.0 * rows * V / sec / 1e9);
    }
    size_t in_use, peak, total;
    be->mem_info(be, &in_use, &peak, &total);
    printf("peak %.2f GiB of %.2f GiB\n", peak / 1073741824.0, total / 1073741824.0);
    be->destroy(be);
    return 0;
}
