/* pin_bench.cu — how fast pinned host memory can be had and given back: cudaHostAlloc against
 * anonymous memory touched by threads (optionally as transparent huge pages) and registered with
 * cudaHostRegister, and the host-to-device copy rate from each. Long-context training pins
 * ~110 GiB, so these seconds add up (bench/gpu_longctx.sh).
 *
 *   nvcc -O2 -std=c++17 -o /tmp/pinb bench/pin_bench.cu && /tmp/pinb [GiB] [threads]
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <chrono>
#include <thread>
#include <vector>

static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static void touch(char *p, size_t n, int threads) {
    std::vector<std::thread> ts;
    size_t per = (n / threads + 4095) / 4096 * 4096;
    for (int i = 0; i < threads; i++) {
        size_t a = (size_t)i * per, b = a + per < n ? a + per : n;
        if (a >= n) break;
        ts.emplace_back([=] { memset(p + a, 0, b - a); });
    }
    for (auto &t : ts) t.join();
}

static double h2d_rate(void *host, size_t n) {
    void *d;
    size_t m = n < ((size_t)2 << 30) ? n : ((size_t)2 << 30);
    if (cudaMalloc(&d, m) != cudaSuccess) return 0;
    cudaMemcpy(d, host, m, cudaMemcpyHostToDevice);
    double t = now();
    for (int i = 0; i < 3; i++) cudaMemcpy(d, host, m, cudaMemcpyHostToDevice);
    t = now() - t;
    cudaFree(d);
    return 3.0 * m / t / 1e9;
}

int main(int argc, char **argv) {
    size_t n = (size_t)(argc > 1 ? atof(argv[1]) : 16) * ((size_t)1 << 30);
    int threads = argc > 2 ? atoi(argv[2]) : 16;
    cudaFree(0);
    /* A: cudaHostAlloc */
    void *p;
    double t = now();
    if (cudaHostAlloc(&p, n, cudaHostAllocDefault) != cudaSuccess) return printf("cudaHostAlloc failed\n"), 1;
    double ta = now() - t;
    double ra = h2d_rate(p, n);
    t = now();
    cudaFreeHost(p);
    double tf = now() - t;
    printf("cudaHostAlloc %.1f GiB: alloc %.2f s (%.1f GB/s), free %.2f s, H2D %.1f GB/s\n", n / 1073741824.0, ta,
           n / ta / 1e9, tf, ra);
    /* B, C: mmap + threads touching (C: transparent huge pages) + cudaHostRegister */
    for (int huge = 0; huge < 2; huge++) {
        t = now();
        char *q = (char *)mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED) return printf("mmap failed\n"), 1;
        if (huge) madvise(q, n, MADV_HUGEPAGE);
        touch(q, n, threads);
        double tt = now() - t;
        t = now();
        cudaError_t err = cudaHostRegister(q, n, cudaHostRegisterDefault);
        double tr = now() - t;
        double rr = err == cudaSuccess ? h2d_rate(q, n) : 0;
        t = now();
        if (err == cudaSuccess) cudaHostUnregister(q);
        double tu = now() - t;
        t = now();
        munmap(q, n);
        double tm = now() - t;
        printf("mmap%s + %d threads + cudaHostRegister: touch %.2f s, register %.2f s (%s), total %.2f s; unregister "
               "%.2f s, munmap %.2f s; H2D %.1f GB/s\n",
               huge ? " (MADV_HUGEPAGE)" : "", threads, tt, tr, cudaGetErrorString(err), tt + tr, tu, tm, rr);
    }
    return 0;
}
