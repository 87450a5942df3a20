/* gemm_load.cu — does the cuBLASLt candidate that is fastest alone stay fastest under load?
 * (build/gemm_load, `make gpu-build`)
 *
 * The backend's gemm_tune times the heuristic's candidates in the first training step, each for
 * three back-to-back calls on a card that was idle a moment before (boost clock). In training the
 * card runs at its power limit. This probe times every candidate of the 1B shape's products (the
 * shapes cu_linear_fwd / cu_linear_bwd_x hand cuBLASLt: column-major, m = output features, n =
 * tokens) three ways:
 *   burst      3 calls after 0.3 s idle (what gemm_tune sees);
 *   sustained  the product alone, back to back, for SUS_MS twice (the card capped), with the
 *              power and SM clock nvidia-smi reads in the middle of the second window;
 *   mixed      (mode 1) 200 calls each behind a 256 MiB device copy, the product's own time by
 *              events over the last 100 (a training step's mix of products and memory-bound
 *              passes), three rounds over the candidates.
 * Usage: gemm_load [SUS_MS=300] [mode 0|1]. Results: docs/BENCHMARKS.md (2026-11-23, commit
 * 57bf594): under the mixed load the ranking is the burst one within ~2%. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define CHECK(x) check((int)(x), #x, __LINE__)
static void check(int status, const char *what, int line) { /* CUDA and cuBLASLt: 0 is success */
    if (status == 0) return;
    fprintf(stderr, "gemm_load: %s failed (%d) at line %d\n", what, status, line);
    exit(1);
}

__global__ void fill(__nv_bfloat16 *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
        p[i] = __float2bfloat16(((float)(h & 0xffff) / 65536.0f - 0.5f) * 0.1f);
    }
}
__global__ void copy4(float4 *d, const float4 *s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) d[i] = s[i];
}

/* power and SM clock as nvidia-smi reads them now */
static void smi(char *line, size_t n) {
    line[0] = 0;
    FILE *f = popen("nvidia-smi --query-gpu=power.draw,clocks.sm --format=csv,noheader", "r");
    if (!f) return;
    if (!fgets(line, (int)n, f)) line[0] = 0;
    pclose(f);
    for (char *q = line; *q; q++)
        if (*q == '\n') *q = 0;
}

int main(int argc, char **argv) {
    /* m, n, k, A transposed: the 1B (T = 8192, folded K = in + 32 or + 16) */
    static const int shapes[][4] = {
        {8192, 8192, 2080, 1},  /* gate / up forward */
        {2048, 8192, 8208, 1},  /* down forward */
        {2048, 8192, 8192, 0},  /* gate / up input gradient */
        {2048, 8192, 2080, 1},  /* q forward */
        {512, 8192, 2080, 1},   /* k / v forward */
        {128256, 1366, 2048, 1}, /* LM head, a chunk of 1,366 rows */
        {2048, 1366, 128256, 0}, /* its input gradient */
    };
    const double sus_ms = argc > 1 ? atof(argv[1]) : 300.0;
    const int mode = argc > 2 ? atoi(argv[2]) : 0;
    cublasLtHandle_t lt;
    CHECK(cublasLtCreate(&lt));
    const size_t wsb = (size_t)64 << 20, cpn = (size_t)16 << 20; /* workspace; 16 Mi float4 = 256 MiB */
    void *ws;
    float4 *cs, *cd;
    CHECK(cudaMalloc(&ws, wsb));
    CHECK(cudaMalloc(&cs, cpn * 16));
    CHECK(cudaMalloc(&cd, cpn * 16));
    cudaStream_t st;
    CHECK(cudaStreamCreate(&st));
    cudaEvent_t e0, e1, ev[2][200];
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    for (int j = 0; j < 2; j++)
        for (int r = 0; r < 200; r++) CHECK(cudaEventCreate(&ev[j][r]));
    for (const auto &s : shapes) {
        const int m = s[0], n = s[1], k = s[2], ta = s[3];
        __nv_bfloat16 *A, *B, *C;
        CHECK(cudaMalloc(&A, (size_t)m * k * 2));
        CHECK(cudaMalloc(&B, (size_t)k * n * 2));
        CHECK(cudaMalloc(&C, (size_t)m * n * 2));
        fill<<<1024, 256>>>(A, (size_t)m * k, 1);
        fill<<<1024, 256>>>(B, (size_t)k * n, 2);
        cublasLtMatmulDesc_t d;
        CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = CUBLAS_OP_N;
        CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof oa));
        CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof ob));
        cublasLtMatrixLayout_t la, lb, lc;
        CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta ? k : m, ta ? m : k, ta ? k : m));
        CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, k));
        CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, m, n, m));
        cublasLtMatmulPreference_t pref;
        CHECK(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t w64 = wsb;
        CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &w64, sizeof w64));
        cublasLtMatmulHeuristicResult_t res[8];
        int found = 0;
        CHECK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, 8, res, &found));
        const float one = 1.0f, zero = 0.0f;
        const double flop = 2.0 * m * n * k;
        printf("m=%d n=%d k=%d %s: %d candidates\n", m, n, k, ta ? "TN" : "NN", found);
        auto run = [&](int i, int reps) {
            for (int r = 0; r < reps; r++)
                CHECK(cublasLtMatmul(lt, d, &one, A, la, B, lb, &zero, C, lc, C, lc, &res[i].algo, ws, wsb, st));
        };
        for (int rnd = 0; rnd < (mode == 1 ? 3 : 1); rnd++)
            for (int i = 0; i < found; i++) {
                float ms = 0.0f;
                if (mode == 1) {
                    for (int r = 0; r < 200; r++) {
                        copy4<<<1056, 256, 0, st>>>(cd, cs, cpn);
                        CHECK(cudaEventRecord(ev[0][r], st));
                        run(i, 1);
                        CHECK(cudaEventRecord(ev[1][r], st));
                    }
                    CHECK(cudaStreamSynchronize(st));
                    for (int r = 100; r < 200; r++) {
                        float x = 0.0f;
                        CHECK(cudaEventElapsedTime(&x, ev[0][r], ev[1][r]));
                        ms += x / 100;
                    }
                    printf("  round %d cand %d  mixed %8.1f us %6.1f TFLOP/s\n", rnd, i, ms * 1e3, flop / ms / 1e9);
                    continue;
                }
                usleep(300000);
                run(i, 1);
                CHECK(cudaEventRecord(e0, st));
                run(i, 3);
                CHECK(cudaEventRecord(e1, st));
                CHECK(cudaEventSynchronize(e1));
                CHECK(cudaEventElapsedTime(&ms, e0, e1));
                const float burst = ms / 3;
                const int reps = (int)(sus_ms / burst) + 1;
                run(i, reps);
                CHECK(cudaEventRecord(e0, st));
                run(i, reps);
                CHECK(cudaEventRecord(e1, st));
                usleep((useconds_t)(sus_ms * 1500)); /* the middle of the second window */
                char line[128];
                smi(line, sizeof line);
                CHECK(cudaEventSynchronize(e1));
                CHECK(cudaEventElapsedTime(&ms, e0, e1));
                const float sus = ms / reps;
                printf("  cand %d  burst %8.1f us %6.1f TFLOP/s | sustained %8.1f us %6.1f TFLOP/s  [%s]\n", i,
                       burst * 1e3, flop / burst / 1e9, sus * 1e3, flop / sus / 1e9, line);
            }
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(d);
        cudaFree(A), cudaFree(B), cudaFree(C);
    }
    return 0;
}
