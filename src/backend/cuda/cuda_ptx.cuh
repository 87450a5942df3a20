/* cuda_ptx.cuh — the inline-PTX building blocks the tensor-core kernels share (cuda_attn.cu,
 * cuda_lora.cu): shared-memory addresses, ldmatrix (plain and transposed), bf16 mma.sync
 * m16n8k16 with fp32 accumulation, cp.async of 16 or 4 bytes (zero-filled when the predicate is
 * false) with its commit/wait, and bf16x2 packing. sm_80+ instructions; the kernels built here
 * target sm_90a. Host side: the launch configuration of a grid of thread-block clusters. */
#ifndef US_CUDA_PTX_CUH
#define US_CUDA_PTX_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

/* c += a b: a 16x16 (four registers), b 16x8 (two), c 16x8 fp32 */
__device__ __forceinline__ void mma16816(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    mma16816(c, a[0], a[1], a[2], a[3], b0, b1);
}

__device__ __forceinline__ void cp_async16(uint32_t saddr, const void *g, bool pred) {
    int n = pred ? 16 : 0; /* 0: zero-fill, nothing read */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(g), "r"(n));
}
__device__ __forceinline__ void cp_async4(uint32_t saddr, const void *g, bool pred) {
    int n = pred ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr), "l"(g), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { cp_async_wait<0>(); }

/* 2^x by the MUFU unit alone (ex2.approx.ftz: relative error ~2^-22, -inf -> 0), without the
 * extra instructions exp2f adds for denormal results: attention's P and dS are rounded to bf16. */
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

/* A launch configuration for a grid of thread-block clusters of cx x cy CTAs (used in place: lc
 * points at the object's own attribute) */
struct ClusterLaunch {
    cudaLaunchConfig_t lc;
    cudaLaunchAttribute at[1];
    ClusterLaunch(dim3 grid, int threads, size_t smem, cudaStream_t st, int cx, int cy = 1) : lc() {
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = (unsigned)cx, at[0].val.clusterDim.y = (unsigned)cy, at[0].val.clusterDim.z = 1;
        lc.gridDim = grid, lc.blockDim = dim3((unsigned)threads), lc.dynamicSmemBytes = smem, lc.stream = st;
        lc.attrs = at, lc.numAttrs = 1;
    }
    ClusterLaunch(const ClusterLaunch &) = delete;
};

} /* namespace */

#endif
