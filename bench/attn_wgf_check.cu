/* attn_wgf_check.cu — correctness and speed check of the wgmma causal attention forward
 * (src/backend/cuda/cuda_attn_wgf.cu) against a naive f32 GPU reference (shared helpers:
 * bench/attn_check_util.cuh). Standalone: needs only the CUDA runtime. Build and run from the
 * repository root:
 *
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc -o /tmp/wgf bench/attn_wgf_check.cu && /tmp/wgf
 *
 * For each check shape: random normal q, k, v (bf16); o and lse from attn_fwd_wgmma, outputs
 * poisoned with NaN first, against a reference that runs the online softmax in f32 per (token,
 * head): o by max |o - ref| / max |ref| (pass <= 1e-2), lse by max |lse - ref|
 * (pass <= 1e-3), no NaN. Shapes marked "seg" use packed segments: per batch row, examples of
 * random lengths 1..S laid end to end (seg[i] = the start of i's example). Then the mean time of
 * 20 calls after warm-up at the timing shapes, with TFLOP/s by the causal count 4 b s^2/2 H hd
 * (against the mma.sync forward of cuda_attn.cu: build/unswag_gpu_bench 20 attn with
 * US_CUDA_ATTN_WG=0 / 1). Exits non-zero if any check fails. Optional argument: "check" or
 * "time". */
#include "backend/cuda/cuda_attn_wgf.cu"

#include "attn_check_util.cuh"

static bool new_fwd(bf *o, float *lse, const bf *q, const bf *k, const bf *v, const int *seg, int batch, int seq,
                    int H, int KV, int hd, float scale) {
    return attn_fwd_wgmma(0, 132, o, H * hd, lse, q, k, v, seg, batch, seq, H, KV, hd, scale);
}
typedef bool (*FwdFn)(bf *, float *, const bf *, const bf *, const bf *, const int *, int, int, int, int, int, float);

struct Bufs : Inputs {
    bf *o;
    float *lse;
};

static void alloc_inputs(Bufs &B, const Shape &S, uint64_t seed) {
    alloc_qkv(B, S, seed);
    CKR(cudaMalloc(&B.o, B.nq * 2));
    CKR(cudaMalloc(&B.lse, B.T * S.H * 4));
    CKR(cudaDeviceSynchronize());
}

static void free_bufs(Bufs &B) {
    free_qkv(B);
    cudaFree(B.o); cudaFree(B.lse);
}

static bool check_one(const char *name, FwdFn f, const Bufs &B, const Shape &S, const std::vector<float> &ro,
                      const std::vector<float> &rl) {
    const float scale = 1.0f / sqrtf((float)S.hd);
    CKR(cudaMemset(B.o, 0xFF, B.nq * 2));          /* bf16 NaN */
    CKR(cudaMemset(B.lse, 0xFF, B.T * S.H * 4)); /* f32 NaN */
    if (!f(B.o, B.lse, B.q, B.k, B.v, B.seg, S.b, S.s, S.H, S.KV, S.hd, scale)) {
        printf("  %s refused", name);
        return false;
    }
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
    std::vector<uint16_t> g(B.nq);
    std::vector<float> gl(B.T * S.H);
    CKR(cudaMemcpy(g.data(), B.o, B.nq * 2, cudaMemcpyDeviceToHost));
    CKR(cudaMemcpy(gl.data(), B.lse, gl.size() * 4, cudaMemcpyDeviceToHost));
    const ErrStats er = bf16_err(g, ro);
    size_t bad = er.bad, worst = er.worst;
    double le = 0.0;
    for (size_t i = 0; i < rl.size(); i++) {
        double e = fabs((double)gl[i] - rl[i]);
        if (!(e == e)) bad++, e = INFINITY;
        le = fmax(le, e);
    }
    const double rel = er.rel;
    const bool ok = bad == 0 && rel <= 1e-2 && le <= 1e-3;
    const size_t row = (size_t)S.H * S.hd;
    printf("  %s: o %.2e lse %.2e%s", name, rel, le, ok ? "" : " FAIL");
    if (!ok)
        printf(" [%zu NaN; worst o at token %zu head %zu col %zu]", bad, worst / row, worst % row / S.hd,
               worst % S.hd);
    return ok;
}

static bool check(const Shape &S, uint64_t seed) {
    Bufs B;
    alloc_inputs(B, S, seed);
    float *ro, *rl;
    CKR(cudaMalloc(&ro, B.nq * 4));
    CKR(cudaMalloc(&rl, B.T * S.H * 4));
    fwd_ref(ro, rl, B.q, B.k, B.v, B.seg, S);
    CKR(cudaDeviceSynchronize());
    std::vector<float> hro(B.nq), hrl(B.T * S.H);
    CKR(cudaMemcpy(hro.data(), ro, B.nq * 4, cudaMemcpyDeviceToHost));
    CKR(cudaMemcpy(hrl.data(), rl, hrl.size() * 4, cudaMemcpyDeviceToHost));
    printf("check b%d s%d H%d KV%d hd%d", S.b, S.s, S.H, S.KV, S.hd);
    if (S.seg) printf(" seg1..%d", S.seg);
    printf(":");
    bool ok = check_one("wgmma", new_fwd, B, S, hro, hrl);
    printf("  %s\n", ok ? "ok" : "FAILED");
    cudaFree(ro);
    cudaFree(rl);
    free_bufs(B);
    return ok;
}

static void time_shape(const Shape &S, uint64_t seed) {
    Bufs B;
    alloc_inputs(B, S, seed);
    const double flop = 4.0 * S.b * (double)S.s * S.s / 2.0 * S.H * S.hd;
    const float scale = 1.0f / sqrtf((float)S.hd);
    const double tn = time_calls([&] { return new_fwd(B.o, B.lse, B.q, B.k, B.v, B.seg, S.b, S.s, S.H, S.KV, S.hd, scale); });
    printf("time  b%d s%d H%d KV%d hd%d%s: wgmma %.3f ms %.1f TFLOP/s\n", S.b, S.s, S.H, S.KV, S.hd,
           S.seg ? " seg" : "", tn, flop / tn * 1e-9);
    free_bufs(B);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "all";
    const int sms = device_banner();
    const Shape checks[] = {ATTN_CHECK_SHAPES,        {1, 2048, 32, 8, 128, 700}, {3, 129, 8, 2, 128, 40}, {2, 300, 4, 2, 64, 20},
                            {1, 1000, 4, 4, 64, 1}};
    const Shape times[] = {ATTN_TIME_SHAPES};
    uint64_t seed = fresh_seed();
    bool ok = true;
    { /* refusals: head dim 32 */
        bf *p;
        float *l;
        CKR(cudaMalloc(&p, 1 << 20));
        CKR(cudaMalloc(&l, 1 << 16));
        const bool r = attn_fwd_wgmma(0, sms, p, 64, l, p, p, p, NULL, 1, 64, 2, 2, 32, 0.1f);
        printf("hd32 refused: %s\n", r ? "NO (FAIL)" : "yes");
        ok = ok && !r;
        cudaFree(p);
        cudaFree(l);
    }
    if (strcmp(mode, "time") != 0)
        for (const Shape &S : checks) ok = check(S, seed++) && ok;
    if (strcmp(mode, "check") != 0 && ok)
        for (const Shape &S : times) time_shape(S, seed++);
    printf("%s\n", ok ? "ALL CHECKS PASSED" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
