/* gpu_bench.c — microbenchmarks of the CUDA backend's ops (build/unswag_gpu_bench, `make gpu-bench`).
 *
 * Prints, for the shapes of issue 3's targets: the bf16 matrix-product rate through linear_fwd at
 * 8192^3 (the ceiling MFU is quoted against), flash attention forward/backward TFLOP/s (causal
 * FLOPs: forward 2 products of b*s*s/2*H*hd each, x2 for multiply-add; backward 2.5x forward), and
 * the memory-bound kernels' GB/s (bytes read + written once). Inputs are random (never zeros).
 * Then LoRA forward/backward at the adapters of the three benchmark shapes, alone and as the
 * q+k+v / gate+up groups step.c forms (r = 16; GB/s counts the passes: forward x read + y
 * written, backward dy read, x read, dx written), and the host offload copies (pinned, GB/s each way, and a GEMM queue
 * timed alone and beside a concurrent offload + prefetch).
 * The frozen products of every projection of the three shapes (forward and input gradient).
 * Usage: unswag_gpu_bench [reps] [all|gemm|attn|mem|launch|norm|lora|loraop|proj|fuse|kpad|offload] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static void *g_x, *g_w, *g_y;
static void gemm4(int N) {
    for (int k = 0; k < 4; k++) be->linear_fwd(be, g_y, NULL, g_x, N, g_w, N, NULL, N, N, N);
}

/* a group of n projections reading x, as step.c runs it (same B for each member here) */
static void lora_group_fwd(void *y, float *u, const void *x, const float *A, const float *B, int T, int in, int out,
                           int r, int n) {
    be->lora_down(be, u, n * r, x, in, A, T, in, n * r, false);
    for (int j = 0; j < n; j++) be->lora_up(be, y, NULL, u + j * r, n * r, B, 2.0f, T, out, r);
}
static void lora_group_bwd(void *dx, float *dA, float *dB, float *du, const void *dy, const void *x, const float *u,
                           const float *A, const float *B, int T, int in, int out, int r, int n) {
    for (int j = 0; j < n; j++) be->lora_bwd_dy(be, du + j * r, n * r, dB, dy, out, u + j * r, n * r, B, 2.0f, T, out, r, 0);
    be->lora_bwd_x(be, dx, NULL, dA, du, n * r, x, in, NULL, NULL, A, T, in, n * r);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    const char *only = argc > 2 ? argv[2] : "all";
#define PART(name) (!strcmp(only, "all") || !strcmp(only, name))
    us_err e;
    if (us_backend_create("cuda", 0, &be, &e) != US_OK) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    double sec;
    if (PART("gemm")) { /* matrix-product ceiling */
        int n = 8192;
        void *x = rand_act((size_t)n * n, 1.0f, 1), *w = rand_act((size_t)n * n, 0.01f, 2), *y = rand_act((size_t)n * n, 1.0f, 3);
        TIME(reps, be->linear_fwd(be, y, NULL, x, n, w, n, NULL, n, n, n), sec);
        printf("gemm bf16 %dx%dx%d (linear_fwd): %.3f ms  %.1f TFLOP/s\n", n, n, n, sec * 1e3, 2.0 * n * n * (double)n / sec / 1e12);
        /* the shapes of a 1B MLP */
        be->free(be, x), be->free(be, w), be->free(be, y);
    }
    int shapes[][5] = {{8, 2048, 9, 3, 64}, {4, 2048, 32, 8, 64}, {1, 2048, 32, 8, 128}, {1, 16384, 32, 8, 128}};
    for (int i = 0; i < 4 && PART("attn"); i++) {
        us_attn_shape sh = {shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], shapes[i][4], 0, 0};
        sh.scale = 1.0f / sqrtf((float)sh.head_dim);
        size_t T = (size_t)sh.batch * sh.seq, nq = T * sh.heads * sh.head_dim, nk = T * sh.kv_heads * sh.head_dim;
        void *q = rand_act(nq, 1, 10), *k = rand_act(nk, 1, 11), *v = rand_act(nk, 1, 12), *o = rand_act(nq, 1, 13);
        void *dO = rand_act(nq, 1, 14), *dq = rand_act(nq, 1, 15), *dk = rand_act(nk, 1, 16), *dv = rand_act(nk, 1, 17);
        float *lse = be->alloc(be, T * sh.heads * 4);
        int r = sh.seq > 4096 ? 3 : reps;
        double fl = 4.0 * sh.batch * (double)sh.seq * sh.seq / 2 * sh.heads * sh.head_dim, tb;
        TIME(r, be->attn_fwd(be, o, lse, q, k, v, NULL, &sh), sec);
        TIME(r, be->attn_bwd(be, dq, dk, dv, dO, q, k, v, o, lse, NULL, &sh, NULL), tb);
        printf("attention b=%d s=%d H=%d KV=%d hd=%d: fwd %.3f ms %.1f TFLOP/s, bwd %.3f ms %.1f TFLOP/s\n", sh.batch,
               sh.seq, sh.heads, sh.kv_heads, sh.head_dim, sec * 1e3, fl / sec / 1e12, tb * 1e3, 2.5 * fl / tb / 1e12);
        be->free(be, q), be->free(be, k), be->free(be, v), be->free(be, o), be->free(be, dO), be->free(be, dq);
        be->free(be, dk), be->free(be, dv), be->free(be, lse);
    }
    if (PART("mem")) { /* memory-bound kernels at the 1B shape: T = 8192, dim 2048, inter 8192, vocab chunk */
        int T = 8192, D = 2048, F = 8192;
        void *x = rand_act((size_t)T * D, 1, 20), *y = rand_act((size_t)T * D, 1, 21);
        float *w = be->alloc(be, D * 4), *rs = be->alloc(be, T * 4);
        be->act_to_f32(be, w, rand_act(D, 1, 22), D);
        TIME(reps, be->rmsnorm_fwd(be, y, D, rs, x, w, T, D, 1e-5f), sec);
        printf("rmsnorm_fwd %dx%d: %.3f ms  %.0f GB/s\n", T, D, sec * 1e3, 4.0 * T * D / sec / 1e9);
        TIME(reps, be->rmsnorm_bwd(be, y, D, false, NULL, x, x, rs, w, T, D), sec);
        printf("rmsnorm_bwd %dx%d: %.3f ms  %.0f GB/s\n", T, D, sec * 1e3, 6.0 * T * D / sec / 1e9);
        TIME(reps, be->add(be, y, x, (size_t)T * D), sec);
        printf("add %dx%d: %.3f ms  %.0f GB/s\n", T, D, sec * 1e3, 6.0 * T * D / sec / 1e9);
        void *g = rand_act((size_t)T * F, 1, 23), *u = rand_act((size_t)T * F, 1, 24), *a = rand_act((size_t)T * F, 1, 25);
        uint32_t *bits = be->alloc(be, (size_t)T * F / 8);
        TIME(reps, be->glu_fwd(be, US_GLU_SILU, a, F, g, u, NULL, T, F, NULL, 0, NULL, 0, false), sec);
        printf("glu_fwd silu %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 6.0 * T * F / sec / 1e9);
        TIME(reps, be->glu_fwd(be, US_GLU_RELU, a, F, g, u, bits, T, F, NULL, 0, NULL, 0, false), sec);
        printf("glu_fwd relu+bits %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 8.125 * T * F / sec / 1e9);
        TIME(reps, be->glu_bwd(be, US_GLU_RELU, g, u, NULL, NULL, 0, 0, a, g, u, bits, T, F), sec);
        printf("glu_bwd relu %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 10.125 * T * F / sec / 1e9);
        TIME(reps, be->glu_bwd(be, US_GLU_SILU, g, u, NULL, NULL, 0, 0, a, g, u, NULL, T, F), sec);
        printf("glu_bwd silu %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3, 10.0 * T * F / sec / 1e9);
        { /* down's dA fused into the GLU backward, against the passes it replaces: the product
           * written (glu_fwd's write) and read back by the column reduction (lora_bwd_x, dA only) */
            float *dd = be->alloc(be, (size_t)T * 16 * 4), *dA = be->alloc(be, (size_t)16 * F * 4);
            be->act_to_f32(be, dd, rand_act((size_t)T * 16, 1, 26), (size_t)T * 16);
            be->act_to_f32(be, dA, rand_act((size_t)16 * F, 1, 28), (size_t)16 * F);
            TIME(reps, be->glu_bwd(be, US_GLU_SILU, g, u, dA, dd, 16, 16, a, g, u, NULL, T, F), sec);
            printf("glu_bwd silu + down dA (r 16, fused) %dx%d: %.3f ms  %.0f GB/s\n", T, F, sec * 1e3,
                   10.0 * T * F / sec / 1e9);
            double t2;
            TIME(reps, be->lora_bwd_x(be, NULL, NULL, dA, dd, 16, a, F, NULL, NULL, dA, T, F, 16), t2);
            printf("  unfused, for comparison: lora_bwd_x dA alone %.3f ms (+ the product's write in glu_bwd)\n",
                   t2 * 1e3);
            be->free(be, dd), be->free(be, dA);
        }
        be->free(be, g), be->free(be, u), be->free(be, a), be->free(be, x), be->free(be, y);
        { /* RoPE on q at the smollm2 (T 16384, 9 heads of 64) and 8B (T 2048, 32 heads of 128) shapes */
            int rs[2][3] = {{16384, 9, 64}, {2048, 32, 128}};
            for (int k = 0; k < 2; k++) {
                int RT = rs[k][0], nh = rs[k][1], hd = rs[k][2];
                void *q = rand_act((size_t)RT * nh * hd, 1, 27);
                int32_t *hp = malloc((size_t)RT * 4);
                float hf[64];
                for (int t = 0; t < RT; t++) hp[t] = t;
                for (int i = 0; i < hd / 2; i++) hf[i] = powf(10000.0f, -2.0f * i / hd);
                int32_t *pos = be->alloc(be, (size_t)RT * 4);
                float *inv = be->alloc(be, (size_t)hd / 2 * 4);
                be->upload(be, pos, hp, (size_t)RT * 4);
                be->upload(be, inv, hf, (size_t)hd / 2 * 4);
                TIME(reps, be->rope(be, q, pos, inv, RT, nh, hd, false), sec);
                printf("rope %dx%dx%d: %.3f ms  %.0f GB/s\n", RT, nh, hd, sec * 1e3, 4.0 * RT * nh * hd / sec / 1e9);
                be->free(be, q), be->free(be, pos), be->free(be, inv);
                free(hp);
            }
        }
        /* the vocabularies of SmolLM2, Llama-3, Qwen2.5 and Gemma-3 */
        static const int vocabs[] = {49152, 128256, 151936, 262144};
        for (int k = 0; k < 4; k++) {
            int rows = 1024, V = vocabs[k];
            void *L = rand_act((size_t)rows * V, 2, 26);
            int32_t *lab = be->alloc(be, rows * 4);
            be->zero(be, lab, rows * 4);
            float *ls = be->alloc(be, 4);
            be->zero(be, ls, 4);
            TIME(reps, be->xent_fwd_bwd(be, L, lab, ls, 1e-4f, rows, V), sec);
            printf("xent %dx%d: %.3f ms  %.0f GB/s (read + write)\n", rows, V, sec * 1e3, 4.0 * rows * V / sec / 1e9);
            be->free(be, L), be->free(be, lab), be->free(be, ls);
        }
    }
    if (PART("lora")) { /* LoRA r = 16 at each benchmark shape's adapters; n > 1: a group sharing x */
        struct { const char *name; int T, in, out, n; } ls[] = {
            {"smollm2 q/o", 16384, 576, 576, 1},  {"smollm2 k/v", 16384, 576, 192, 1},  {"smollm2 gate/up", 16384, 576, 1536, 1},
            {"smollm2 down", 16384, 1536, 576, 1}, {"smollm2 q+k+v", 16384, 576, 576, 3}, {"1b q/o", 8192, 2048, 2048, 1},
            {"1b k/v", 8192, 2048, 512, 1},       {"1b gate/up", 8192, 2048, 8192, 1},  {"1b down", 8192, 8192, 2048, 1},
            {"1b gate+up", 8192, 2048, 8192, 2},  {"8b q/o", 2048, 4096, 4096, 1},      {"8b k/v", 2048, 4096, 1024, 1},
            {"8b gate/up", 2048, 4096, 14336, 1}, {"8b down", 2048, 14336, 4096, 1},    {"8b gate+up", 2048, 4096, 14336, 2},
        };
        int r = 16;
        for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++) {
            int T = ls[i].T, in = ls[i].in, out = ls[i].out, n = ls[i].n, R = n * r;
            void *x = rand_act((size_t)T * in, 1, 30), *y = rand_act((size_t)T * out, 1, 31);
            void *dy = rand_act((size_t)T * out, 1, 32), *dx = rand_act((size_t)T * in, 1, 33);
            float *A = be->alloc(be, (size_t)R * in * 4), *B = be->alloc(be, (size_t)out * r * 4);
            float *dA = be->alloc(be, (size_t)R * in * 4), *dB = be->alloc(be, (size_t)out * r * 4);
            float *u = be->alloc(be, (size_t)T * R * 4), *du = be->alloc(be, (size_t)T * R * 4);
            void *tmp = rand_act((size_t)(R * in > out * r ? R * in : out * r), 0.02f, 34);
            be->act_to_f32(be, A, tmp, (size_t)R * in);
            be->act_to_f32(be, B, tmp, (size_t)out * r);
            be->zero(be, dA, (size_t)R * in * 4), be->zero(be, dB, (size_t)out * r * 4);
            double tf, tb; /* as step.c runs them: y and dx written (the frozen product adds on top) */
            TIME(reps, lora_group_fwd(y, u, x, A, B, T, in, out, r, n), tf);
            TIME(reps, lora_group_bwd(dx, dA, dB, du, dy, x, u, A, B, T, in, out, r, n), tb);
            /* bytes: forward x read + n y written; backward n dy read, x read, dx written */
            double bf = 2.0 * T * in + 2.0 * n * T * out, bb = 2.0 * n * T * out + 4.0 * T * in;
            printf("lora r=%d %-16s T=%-6d %5d -> %-5d x%d fwd %7.1f us %5.0f GB/s  bwd %7.1f us %5.0f GB/s\n", r, ls[i].name,
                   T, in, out, n, tf * 1e6, bf / tf / 1e9, tb * 1e6, bb / tb / 1e9);
            be->free(be, x), be->free(be, y), be->free(be, dy), be->free(be, dx), be->free(be, A), be->free(be, B);
            be->free(be, dA), be->free(be, dB), be->free(be, u), be->free(be, du), be->free(be, tmp);
        }
    }
    if (PART("launch")) { /* the floor of one small op in a stream: 1000 dependent tiny adds, per op */
        void *x = rand_act(64, 1, 60), *y = rand_act(64, 1, 61);
        TIME(reps, for (int k = 0; k < 1000; k++) be->add(be, y, x, 64), sec);
        printf("launch: a tiny kernel every %.2f us (1000 in a row, eager)\n", sec * 1e3);
        be->free(be, x), be->free(be, y);
    }
    if (PART("norm")) { /* RMSNorm at each benchmark shape's rows (T x dim), backward accumulating as step.c runs it */
        int ns[][2] = {{16384, 576}, {8192, 2048}, {2048, 4096}};
        for (int i = 0; i < 3; i++) {
            int T = ns[i][0], D = ns[i][1];
            void *x = rand_act((size_t)T * D, 1, 50), *y = rand_act((size_t)T * D, 1, 51), *d = rand_act((size_t)T * D, 1, 52);
            float *w = be->alloc(be, D * 4), *rs = be->alloc(be, T * 4);
            be->act_to_f32(be, w, rand_act(D, 1, 53), D);
            double tb;
            TIME(reps, be->rmsnorm_fwd(be, y, D, rs, x, w, T, D, 1e-5f), sec);
            TIME(reps, be->rmsnorm_bwd(be, d, D, true, NULL, y, x, rs, w, T, D), tb);
            printf("rmsnorm %5dx%-5d fwd %6.1f us %5.0f GB/s  bwd(acc) %6.1f us %5.0f GB/s\n", T, D, sec * 1e6,
                   4.0 * T * D / sec / 1e9, tb * 1e6, 8.0 * T * D / tb / 1e9);
            be->free(be, x), be->free(be, y), be->free(be, d), be->free(be, w), be->free(be, rs);
        }
    }
    if (PART("loraop")) { /* each LoRA op of one layer as step.c runs it (r 16, LoRA folded), timed alone */
        struct { const char *name; int T, D, Q, KV, F; } ss[] = {{"1b", 8192, 2048, 2048, 512, 8192}, {"8b", 2048, 4096, 4096, 1024, 14336}};
        for (size_t i = 0; i < sizeof ss / sizeof ss[0]; i++) {
            int T = ss[i].T, D = ss[i].D, F = ss[i].F, r = 16, big = F > D ? F : D;
            void *x = rand_act((size_t)T * (big + 64), 1, 40), *y = rand_act((size_t)T * (big + 64), 1, 41);
            void *res = rand_act((size_t)T * D, 1, 42);
            float *A = be->alloc(be, (size_t)64 * big * 4), *B = be->alloc(be, (size_t)big * 64 * 4);
            float *dW = be->alloc(be, (size_t)64 * big * 4), *u = be->alloc(be, (size_t)T * 64 * 4), *du = be->alloc(be, (size_t)T * 64 * 4);
            void *tmp = rand_act((size_t)64 * big, 0.02f, 43);
            be->act_to_f32(be, A, tmp, (size_t)64 * big), be->act_to_f32(be, B, tmp, (size_t)64 * big);
            be->zero(be, dW, (size_t)64 * big * 4), be->zero(be, u, (size_t)T * 64 * 4), be->zero(be, du, (size_t)T * 64 * 4);
            double tot = 0;
#define OP(label, bytes, stmt) do { TIME(reps, stmt, sec); tot += sec; \
            printf("loraop %s %-28s %7.1f us %5.0f GB/s\n", ss[i].name, label, sec * 1e6, (double)(bytes) / sec / 1e9); } while (0)
            /* forward */
            OP("down q+k+v R48 fold", 2.0 * T * D, be->lora_down(be, u, 48, x, D + 48, A, T, D, 48, true));
            OP("down o R16", 2.0 * T * ss[i].Q, be->lora_down(be, u, 16, x, ss[i].Q, A, T, ss[i].Q, 16, false));
            OP("up o (res)", 4.0 * T * D, be->lora_up(be, y, res, u, 16, B, 2.0f, T, D, r));
            OP("down gate+up R32 fold", 2.0 * T * D, be->lora_down(be, u, 32, x, D + 32, A, T, D, 32, true));
            OP("down down R16", 2.0 * T * F, be->lora_down(be, u, 16, x, F, A, T, F, 16, false));
            OP("up down (res)", 4.0 * T * D, be->lora_up(be, y, res, u, 16, B, 2.0f, T, D, r));
            double fwd = tot;
            /* backward */
            OP("bwd_dy down fold", 2.0 * T * D, be->lora_bwd_dy(be, du, 16, dW, y, D + 16, u, 16, B, 2.0f, T, D, r, D));
            OP("bwd_x down dA", 2.0 * T * F, be->lora_bwd_x(be, NULL, NULL, dW, du, 16, x, F, NULL, NULL, A, T, F, 16));
            OP("bwd_dy gate", 2.0 * T * F, be->lora_bwd_dy(be, du, 32, dW, y, F, u, 32, B, 2.0f, T, F, r, 0));
            OP("bwd_dy up", 2.0 * T * F, be->lora_bwd_dy(be, du + 16, 32, dW, y, F, u + 16, 32, B, 2.0f, T, F, r, 0));
            OP("bwd_x gate+up dx+dA", 4.0 * T * D, be->lora_bwd_x(be, res, NULL, dW, du, 32, x, D + 32, NULL, NULL, A, T, D, 32));
            OP("bwd_dy o fold", 2.0 * T * D, be->lora_bwd_dy(be, du, 16, dW, y, D + 16, u, 16, B, 2.0f, T, D, r, D));
            OP("bwd_x o dA", 2.0 * T * ss[i].Q, be->lora_bwd_x(be, NULL, NULL, dW, du, 16, x, ss[i].Q, NULL, NULL, A, T, ss[i].Q, 16));
            OP("bwd_dy q", 2.0 * T * ss[i].Q, be->lora_bwd_dy(be, du, 48, dW, y, ss[i].Q, u, 48, B, 2.0f, T, ss[i].Q, r, 0));
            OP("bwd_dy k", 2.0 * T * ss[i].KV, be->lora_bwd_dy(be, du + 16, 48, dW, y, ss[i].KV, u + 16, 48, B, 2.0f, T, ss[i].KV, r, 0));
            OP("bwd_dy v", 2.0 * T * ss[i].KV, be->lora_bwd_dy(be, du + 32, 48, dW, y, ss[i].KV, u + 32, 48, B, 2.0f, T, ss[i].KV, r, 0));
            OP("bwd_x q+k+v dx+dA", 4.0 * T * D, be->lora_bwd_x(be, res, NULL, dW, du, 48, x, D + 48, NULL, NULL, A, T, D, 48));
#undef OP
            printf("loraop %s layer: forward %.1f us, backward %.1f us (one layer's LoRA ops)\n", ss[i].name, fwd * 1e6, (tot - fwd) * 1e6);
            be->free(be, x), be->free(be, y), be->free(be, res), be->free(be, A), be->free(be, B), be->free(be, dW);
            be->free(be, u), be->free(be, du), be->free(be, tmp);
        }
    }
    if (PART("proj")) { /* the frozen products of each benchmark shape: forward (x W^T) and input gradient (dy W) */
        struct { const char *name; int T, in, out; } ps[] = {
            {"smollm2 q/o", 16384, 576, 576},  {"smollm2 k/v", 16384, 576, 192},  {"smollm2 gate/up", 16384, 576, 1536},
            {"smollm2 down", 16384, 1536, 576}, {"smollm2 head", 682, 576, 49152}, {"1b q/o", 8192, 2048, 2048},
            {"1b k/v", 8192, 2048, 512},       {"1b gate/up", 8192, 2048, 8192},  {"1b down", 8192, 8192, 2048},
            {"1b head", 261, 2048, 128256},    {"8b q/o", 2048, 4096, 4096},      {"8b k/v", 2048, 4096, 1024},
            {"8b gate/up", 2048, 4096, 14336}, {"8b down", 2048, 14336, 4096},    {"8b head", 261, 4096, 128256},
        };
        for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
            int T = ps[i].T, in = ps[i].in, out = ps[i].out;
            void *x = rand_act((size_t)T * in, 1, 50), *w = rand_act((size_t)out * in, 0.02f, 51), *y = rand_act((size_t)T * out, 1, 52);
            double tf, tb, fl = 2.0 * T * in * out;
            TIME(reps, be->linear_fwd(be, y, NULL, x, in, w, in, NULL, T, in, out), tf);
            TIME(reps, be->linear_bwd_x(be, x, false, y, out, w, in, T, in, out), tb);
            printf("proj %-16s T=%-6d %5d -> %-6d fwd %8.1f us %5.0f TFLOP/s  bwd_x %8.1f us %5.0f TFLOP/s\n", ps[i].name, T,
                   in, out, tf * 1e6, fl / tf / 1e12, tb * 1e6, fl / tb / 1e12);
            be->free(be, x), be->free(be, w), be->free(be, y);
        }
    }
    if (PART("head")) { /* the LM head's products over a step's tokens in chunks: the plan's room-sized chunks and a
                         * small last one (before) against equal chunks (plan.c now), 1B and 8B */
        struct { const char *name; int T, D, rows; } hs[] = {{"1b", 8192, 2048, 1350}, {"8b", 2048, 4096, 623}};
        for (int i = 0; i < 2; i++) {
            int T = hs[i].T, D = hs[i].D, V = 128256, fit = hs[i].rows, parts = (T + fit - 1) / fit;
            int eq = (T + parts - 1) / parts;
            void *h = rand_act((size_t)T * D, 1, 60), *w = rand_act((size_t)V * D, 0.02f, 61), *lg = rand_act((size_t)fit * V, 1, 62);
            double t[2];
            for (int k = 0; k < 2; k++) {
                int C = k ? eq : fit;
                TIME(reps, for (int r0 = 0; r0 < T; r0 += C) {
                    int rows = T - r0 < C ? T - r0 : C;
                    be->linear_fwd(be, lg, NULL, (char *)h + (size_t)r0 * D * 2, D, w, D, NULL, rows, D, V);
                    be->linear_bwd_x(be, (char *)h + (size_t)r0 * D * 2, false, lg, V, w, D, rows, D, V);
                }, t[k]);
            }
            printf("head %s T=%d: chunks of %d (last %d) %.3f ms, %d equal chunks of %d %.3f ms\n", hs[i].name, T, fit,
                   T - (parts - 1) * fit, t[0] * 1e3, parts, eq, t[1] * 1e3);
            be->free(be, h), be->free(be, w), be->free(be, lg);
        }
    }
    if (PART("headc")) { /* the 1B head's two products over 8192 tokens by chunk size (plan.c picks 1366) */
        int T = 8192, D = 2048, V = 128256, Cs[] = {683, 1024, 1366, 1639, 2048, 2731, 4096};
        void *h = rand_act((size_t)T * D, 1, 60), *w = rand_act((size_t)V * D, 0.02f, 61), *lg = rand_act((size_t)4096 * V, 1, 62);
        for (size_t k = 0; k < sizeof Cs / sizeof Cs[0]; k++) {
            int C = Cs[k];
            double tf, tb;
            TIME(reps, for (int r0 = 0; r0 < T; r0 += C) be->linear_fwd(be, lg, NULL, (char *)h + (size_t)r0 * D * 2, D, w, D,
                                                                        NULL, T - r0 < C ? T - r0 : C, D, V), tf);
            TIME(reps, for (int r0 = 0; r0 < T; r0 += C) be->linear_bwd_x(be, (char *)h + (size_t)r0 * D * 2, false, lg, V, w,
                                                                          D, T - r0 < C ? T - r0 : C, D, V), tb);
            printf("head 1b chunks of %d: forward %.3f ms, input gradient %.3f ms, %.0f TFLOP/s\n", C, tf * 1e3, tb * 1e3,
                   4.0 * T * D * V / (tf + tb) / 1e12);
        }
        be->free(be, h), be->free(be, w), be->free(be, lg);
    }
    if (PART("fuse")) { /* q+k+v and gate+up: separate accumulating products (as step.c runs them) vs one */
        struct { const char *name; int T, in, n, outs[3]; } fs[] = {
            {"8b q+k+v", 2048, 4096, 3, {4096, 1024, 1024}}, {"8b gate+up", 2048, 4096, 2, {14336, 14336, 0}},
            {"1b q+k+v", 8192, 2048, 3, {2048, 512, 512}},   {"1b gate+up", 8192, 2048, 2, {8192, 8192, 0}},
        };
        for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) {
            int T = fs[i].T, in = fs[i].in, n = fs[i].n, tot = 0;
            for (int j = 0; j < n; j++) tot += fs[i].outs[j];
            void *x = rand_act((size_t)T * in, 1, 50), *w = rand_act((size_t)tot * in, 0.02f, 51), *y = rand_act((size_t)T * tot, 1, 52);
            double ts0, ts1, tf, bs, bf, fl = 2.0 * T * in * tot;
#define SEP_FWD(acc_) do { size_t o_ = 0; for (int j = 0; j < n; j++) { \
                be->linear_fwd(be, (char *)y + o_ * T * 2, acc_ ? (char *)y + o_ * T * 2 : NULL, x, in, (char *)w + o_ * in * 2, in, NULL, T, in, fs[i].outs[j]); o_ += fs[i].outs[j]; } } while (0)
#define SEP_BWD() do { size_t o_ = 0; for (int j = 0; j < n; j++) { \
                be->linear_bwd_x(be, x, true, (char *)y + o_ * T * 2, fs[i].outs[j], (char *)w + o_ * in * 2, in, T, in, fs[i].outs[j]); o_ += fs[i].outs[j]; } } while (0)
            TIME(reps, SEP_FWD(false), ts0);
            TIME(reps, SEP_FWD(true), ts1);
            TIME(reps, be->linear_fwd(be, y, y, x, in, w, in, NULL, T, in, tot), tf);
            TIME(reps, SEP_BWD(), bs);
            TIME(reps, be->linear_bwd_x(be, x, true, y, tot, w, in, T, in, tot), bf);
            printf("fuse %-12s fwd separate %7.1f us (beta 0) %7.1f us (beta 1) %4.0f TFLOP/s, one %7.1f us %4.0f TFLOP/s;"
                   " bwd_x separate %7.1f us %4.0f, one %7.1f us %4.0f\n", fs[i].name, ts0 * 1e6, ts1 * 1e6, fl / ts1 / 1e12,
                   tf * 1e6, fl / tf / 1e12, bs * 1e6, fl / bs / 1e12, bf * 1e6, fl / bf / 1e12);
#undef SEP_FWD
#undef SEP_BWD
            { /* the group's LoRA forward: lora_down + lora_up per member + accumulating products, against
               * lora_down folding u beside x + one product over in + R columns per member (step.c) */
                int r = 16, R = n * r, ldf = in + R;
                float *A = be->alloc(be, (size_t)R * in * 4), *B = be->alloc(be, (size_t)tot * r * 4), *u = be->alloc(be, (size_t)T * R * 4);
                void *tmp = rand_act((size_t)(R * in > tot * r ? R * in : tot * r), 0.02f, 34);
                be->act_to_f32(be, A, tmp, (size_t)R * in);
                be->act_to_f32(be, B, tmp, (size_t)tot * r);
                void *xf = rand_act((size_t)T * ldf, 1, 53), *wf = rand_act((size_t)tot * ldf, 0.02f, 54);
                double tl, tfo;
#define LORA_SEP() do { size_t o_ = 0; be->lora_down(be, u, R, x, in, A, T, in, R, false); for (int j = 0; j < n; j++) { \
                void *yj = (char *)y + o_ * T * 2; be->lora_up(be, yj, NULL, u + j * r, R, B + o_ * r, 2.0f, T, fs[i].outs[j], r); \
                be->linear_fwd(be, yj, yj, x, in, (char *)w + o_ * in * 2, in, NULL, T, in, fs[i].outs[j]); o_ += fs[i].outs[j]; } } while (0)
#define LORA_FOLD() do { size_t o_ = 0; be->lora_down(be, u, R, xf, ldf, A, T, in, R, true); for (int j = 0; j < n; j++) { \
                be->linear_fwd(be, (char *)y + o_ * T * 2, NULL, xf, ldf, (char *)wf + o_ * ldf * 2, ldf, NULL, T, ldf, fs[i].outs[j]); \
                o_ += fs[i].outs[j]; } } while (0)
                TIME(reps, LORA_SEP(), tl);
                TIME(reps, LORA_FOLD(), tfo);
#undef LORA_SEP
#undef LORA_FOLD
                printf("fold %-12s LoRA r 16 + frozen products, forward: separate %7.1f us, folded %7.1f us\n", fs[i].name,
                       tl * 1e6, tfo * 1e6);
                be->free(be, A), be->free(be, B), be->free(be, u), be->free(be, tmp), be->free(be, xf), be->free(be, wf);
            }
            be->free(be, x), be->free(be, w), be->free(be, y);
        }
    }
    if (PART("kpad")) { /* a frozen product's K past a multiple of 64 (folded LoRA columns) */
        struct { const char *name; int T, in, out; } ks[] = {{"8b gate", 2048, 4096, 14336}, {"8b q", 2048, 4096, 4096},
                                                            {"1b gate", 8192, 2048, 8192}, {"smollm2 gate", 16384, 576, 1536},
                                                            {"8b down", 2048, 14336, 4096}, {"1b down", 8192, 8192, 2048}};
        int extra[] = {0, 16, 32, 48, 64, 128};
        for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++)
            for (int e = 0; e < 6; e++) {
                int T = ks[i].T, K = ks[i].in + extra[e], N = ks[i].out;
                void *x = rand_act((size_t)T * K, 1, 60), *w = rand_act((size_t)N * K, 0.02f, 61), *y = rand_act((size_t)T * N, 1, 62);
                double tf;
                TIME(reps, be->linear_fwd(be, y, NULL, x, K, w, K, NULL, T, K, N), tf);
                printf("kpad %-13s T=%-6d K=%-5d (+%3d) N=%-6d %8.1f us %5.0f TFLOP/s\n", ks[i].name, T, K, extra[e], N, tf * 1e6,
                       2.0 * T * K * N / tf / 1e12);
                be->free(be, x), be->free(be, w), be->free(be, y);
            }
        /* input gradients over out + e rows of [W; A] (q/k/v, o and down folded for backward) */
        struct { const char *name; int T, in, rows; } kb[] = {{"8b qkv dx", 2048, 4096, 6144}, {"1b qkv dx", 8192, 2048, 3072},
                                                             {"8b down dx", 2048, 14336, 4096}, {"1b down dx", 8192, 8192, 2048}};
        for (size_t i = 0; i < sizeof kb / sizeof kb[0]; i++)
            for (int e = 0; e < 6; e++) {
                int T = kb[i].T, K = kb[i].rows + extra[e], N = kb[i].in;
                void *dy = rand_act((size_t)T * K, 1, 63), *w = rand_act((size_t)K * N, 0.02f, 64), *dx = rand_act((size_t)T * N, 1, 65);
                double tf;
                TIME(reps, be->linear_bwd_x(be, dx, false, dy, K, w, N, T, N, K), tf);
                printf("kpad %-13s T=%-6d K=%-5d (+%3d) N=%-6d %8.1f us %5.0f TFLOP/s\n", kb[i].name, T, K, extra[e], N, tf * 1e6,
                       2.0 * T * K * N / tf / 1e12);
                be->free(be, dy), be->free(be, w), be->free(be, dx);
            }
    }
    if (PART("offload") && be->host_alloc) { /* pinned host copies on the copy stream */
        size_t n = (size_t)256 << 20;
        void *d = rand_act(n / 2, 1, 40), *d2 = rand_act(n / 2, 1, 41);
        void *h = be->host_alloc(be, n);
        if (h) {
            double td, tu;
            TIME(reps, (be->offload(be, h, d, n), be->copies_wait(be)), td);
            printf("offload d2h %zu MiB: %.3f ms  %.1f GB/s\n", n >> 20, td * 1e3, n / td / 1e9);
            TIME(reps, (be->prefetch(be, d2, h, n), be->copies_wait(be)), tu);
            printf("prefetch h2d %zu MiB: %.3f ms  %.1f GB/s\n", n >> 20, tu * 1e3, n / tu / 1e9);
            int N = 8192;
            g_x = rand_act((size_t)N * N, 1, 42), g_w = rand_act((size_t)N * N, 0.01f, 43), g_y = rand_act((size_t)N * N, 1, 44);
            double alone, both;
            TIME(reps, gemm4(N), alone);
            TIME(reps, (be->offload(be, h, d, n), be->prefetch(be, d2, h, n), gemm4(N), be->copies_wait(be)), both);
            printf("overlap: 4 GEMMs 8192^3 %.3f ms alone, %.3f ms beside a %zu MiB offload + prefetch (%.3f ms alone)\n",
                   alone * 1e3, both * 1e3, n >> 20, (td + tu) * 1e3);
            void *x = g_x, *w = g_w, *y = g_y;
            be->free(be, x), be->free(be, w), be->free(be, y);
            be->host_free(be, h);
        }
        be->free(be, d), be->free(be, d2);
    }
    size_t in_use, peak, total;
    be->mem_info(be, &in_use, &peak, &total);
    printf("peak %.2f GiB of %.2f GiB\n", peak / 1073741824.0, total / 1073741824.0);
    be->destroy(be);
    return 0;
}
