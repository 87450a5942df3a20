/* sgemm_peak.c — the BLAS sgemm rate of this machine: the ceiling the CPU trainer is measured
 * against (docs/BENCHMARKS.md). Runs square and training-shaped products, prints GFLOP/s. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double rate(int M, int N, int K, int transb) {
    float *A = malloc((size_t)M * K * 4), *B = malloc((size_t)K * N * 4), *C = malloc((size_t)M * N * 4);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)K * N; i++) B[i] = (float)(i % 5) * 0.1f;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, K, B,
                    transb ? K : N, 0.0f, C, N);
        double g = 2.0 * M * N * K / (now() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(A);
    free(B);
    free(C);
    return best;
}

int main(void) {
    printf("{\"sgemm_gflops_square_2048\": %.1f, \"sgemm_gflops_512x1536x576_nt\": %.1f, \"sgemm_gflops_512x576x1536_nn\": %.1f}\n",
           rate(2048, 2048, 2048, 0), rate(512, 1536, 576, 1), rate(512, 576, 1536, 0));
    return 0;
}
