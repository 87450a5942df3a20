/* lora_colred_v2.cu — a faster LoRA column reduction (k_lora_colred2) and its checker/benchmark.
 *
 *   O(m, j) += scale * sum_t P[t, m] Q[t, j]                      (m < M, j < R; O f32 at O[m*osm + j*osj])
 *   Du[t, j] = dscale * sum_m P[t, m] Wd[m*R + j]   (optional)    (Du f32, pitch lddu; overwritten)
 *
 * Design (what changed against k_lora_colred):
 *  - A CTA (4 warps) owns 128 columns of P and a contiguous token range (tpc tokens, a multiple of
 *    64). P tiles of 64 tokens x 128 columns (16 KB, XOR-swizzled) and the matching rows of Q (f32,
 *    as they are in memory) arrive by cp.async 16 B in an NS-stage ring (NS = 3..5, as many as two
 *    CTAs per SM allow): no synchronous global load sits in the loop. The bf16 B fragments of Q are
 *    built from the f32 rows in shared memory (row pitch R + 4 floats: conflict-free).
 *  - Thread-block clusters. Along the columns (cx CTAs, cx up to 16): each 64-token chunk's Du
 *    partial sums (one per CTA) are exchanged through distributed shared memory: each CTA writes
 *    its partial into a double buffer, arrives on the cluster barrier, and one chunk later (after
 *    its next tile's MMAs, so the barrier latency is hidden) waits and sums 1/cx of the chunk's
 *    rows over the cx CTAs, then writes them with one float4 store (the cluster spans all of M: no
 *    memset, no atomics) or one float4 atomic per 4 elements (cx times fewer than one per CTA).
 *    Along the tokens (cy CTAs): at the end the per-CTA O partials are summed the same way, so O
 *    gets cy times fewer atomics, 4-wide (red.global.add.v4.f32) in both O layouts.
 *  - The grid is sized from cudaOccupancyMaxActiveClusters so that every CTA is resident at once
 *    (one wave, equal token ranges).
 * Requirements (as the library's): M % 8 == 0, ldp % 8 == 0, P 16-byte aligned, Q/Du 8-byte
 * aligned with even pitches, R in {8, 16, 24, 32, 48, 64, 96}; sm_90 (clusters, v4 float atomics).
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_ptx.cuh"

// ==== BEGIN KERNEL ====
namespace {

constexpr int C2_LT = 128; /* threads per CTA (4 warps) */
constexpr int C2_TC = 64;  /* tokens per stage */
constexpr int C2_MB = 128; /* columns of P per CTA */

__device__ __forceinline__ int c2_swz(int row, int col) { /* 16 chunks of 8 bf16 per row, XOR by row */
    return row * C2_MB + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}
__device__ __forceinline__ uint32_t c2_sreg_cluster_ctaid_x() {
    uint32_t v;
    asm volatile("mov.u32 %0, %%cluster_ctaid.x;\n" : "=r"(v));
    return v;
}
__device__ __forceinline__ uint32_t c2_sreg_cluster_ctaid_y() {
    uint32_t v;
    asm volatile("mov.u32 %0, %%cluster_ctaid.y;\n" : "=r"(v));
    return v;
}
__device__ __forceinline__ uint32_t c2_sreg_cluster_nctaid_x() {
    uint32_t v;
    asm volatile("mov.u32 %0, %%cluster_nctaid.x;\n" : "=r"(v));
    return v;
}
__device__ __forceinline__ uint32_t c2_sreg_cluster_nctaid_y() {
    uint32_t v;
    asm volatile("mov.u32 %0, %%cluster_nctaid.y;\n" : "=r"(v));
    return v;
}
__device__ __forceinline__ void c2_cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void c2_cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
__device__ __forceinline__ uint32_t c2_mapa(uint32_t saddr, uint32_t rank) {
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(saddr), "r"(rank));
    return r;
}
__device__ __forceinline__ float4 c2_ld_cluster4(uint32_t addr) {
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}
__device__ __forceinline__ float c2_ld_cluster(uint32_t addr) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ void c2_red4(float *p, float4 v) { /* red.global.add.v4.f32 (sm_90) */
    asm volatile("red.global.add.v4.f32 [%0], {%1,%2,%3,%4};\n" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
}
__device__ __forceinline__ void c2_red2(float *p, float a, float b) {
    asm volatile("red.global.add.v2.f32 [%0], {%1,%2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
}
__device__ __forceinline__ void c2_add4(float4 &s, const float4 v) {
    s.x += v.x;
    s.y += v.y;
    s.z += v.z;
    s.w += v.w;
}

/* Shared memory of one CTA (bytes). The O partials at the end reuse the P/Q ring. */
template <int R, int NS, bool DU>
struct C2Smem {
    static constexpr int QP = R + 4;     /* f32 per staged Q row: 2 rows = 8 banks apart */
    static constexpr int BP = C2_MB + 8; /* bf16 per Bs row (Wd as [j][m]) */
    static constexpr int OP = R + 4;     /* f32 per O-partial row */
    static constexpr int P_OFF = 0, P_STAGE = C2_TC * C2_MB * 2;
    static constexpr int Q_OFF = P_OFF + NS * P_STAGE, Q_STAGE = C2_TC * QP * 4;
    static constexpr int B_OFF = Q_OFF + NS * Q_STAGE;
    static constexpr int D_OFF = B_OFF + (DU ? R * BP * 2 : 0); /* Du partials: 2 x [64][R] f32 */
    static constexpr int BYTES = D_OFF + (DU ? 2 * C2_TC * R * 4 : 0);
    static_assert(C2_MB * OP * 4 <= B_OFF, "O partials must fit the ring");
    static_assert(B_OFF % 16 == 0 && D_OFF % 16 == 0, "alignment");
};

/* Stages: the most (up to 5) with which two CTAs fit on an SM (228 KB, 1 KB reserved per CTA). */
template <int R, bool DU>
constexpr int c2_stages() {
    return C2Smem<R, 5, DU>::BYTES <= 113 * 1024   ? 5
           : C2Smem<R, 4, DU>::BYTES <= 113 * 1024 ? 4
           : C2Smem<R, 3, DU>::BYTES <= 113 * 1024 ? 3
                                                   : 2;
}

/* du_mode: 0 plain stores (the cluster spans all of M), 1 atomics (Du zeroed by the launcher).
 * omode: 1 O rows contiguous (osj == 1) with 16-byte vectors, 2 O columns contiguous (osm == 1)
 * with 16-byte vectors, 0 scalar. vecq: Q rows 16-byte aligned (else 4-byte cp.async). duvec: Du
 * rows 16-byte aligned. */
template <int R, int NS, bool DU>
__global__ void __launch_bounds__(C2_LT) k_lora_colred2(float *O, int osm, int osj, const __nv_bfloat16 *P, int ldp, int T,
                                                        int M, const float *Q, int ldq, float scale, int tpc, int vecq,
                                                        int omode, float *Du, int lddu, const float *Wd, float dscale,
                                                        int du_mode, int duvec) {
    constexpr int NT = R / 8;
    using S = C2Smem<R, NS, DU>;
    extern __shared__ __align__(128) unsigned char c2_smem[];
    __nv_bfloat16 *Ps = reinterpret_cast<__nv_bfloat16 *>(c2_smem + S::P_OFF);
    float *Qs = reinterpret_cast<float *>(c2_smem + S::Q_OFF);
    __nv_bfloat16 *Bs = reinterpret_cast<__nv_bfloat16 *>(c2_smem + S::B_OFF);
    float *Ds = reinterpret_cast<float *>(c2_smem + S::D_OFF);
    float *Os = reinterpret_cast<float *>(c2_smem); /* after the loop */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int m0 = blockIdx.x * C2_MB, t0 = blockIdx.y * tpc, t1 = min(T, t0 + tpc);
    const int nch = tpc / C2_TC; /* the same in every CTA of a cluster */
    const int cx = (int)c2_sreg_cluster_nctaid_x(), cy = (int)c2_sreg_cluster_nctaid_y();
    const int rx = (int)c2_sreg_cluster_ctaid_x(), ry = (int)c2_sreg_cluster_ctaid_y();

    auto issue = [&](int ch) {
        const int st = ch % NS, tb = t0 + ch * C2_TC;
        __nv_bfloat16 *ps = Ps + st * (C2_TC * C2_MB);
#pragma unroll
        for (int i = 0; i < C2_TC * (C2_MB / 8) / C2_LT; i++) {
            const int c = tid + i * C2_LT, r = c >> 4, cc = (c & 15) * 8;
            const bool ok = tb + r < t1 && m0 + cc < M;
            cp_async16(smem_u32(ps + c2_swz(r, cc)), ok ? (const void *)(P + (size_t)(tb + r) * ldp + m0 + cc) : (const void *)P,
                       ok);
        }
        float *qs = Qs + st * (C2_TC * S::QP);
        if (vecq) {
#pragma unroll
            for (int i = 0; i < (C2_TC * R / 4 + C2_LT - 1) / C2_LT; i++) {
                const int idx = tid + i * C2_LT;
                if ((C2_TC * R / 4) % C2_LT == 0 || idx < C2_TC * R / 4) {
                    const int r = idx / (R / 4), j = (idx % (R / 4)) * 4;
                    const bool ok = tb + r < t1;
                    cp_async16(smem_u32(qs + r * S::QP + j), ok ? (const void *)(Q + (size_t)(tb + r) * ldq + j) : (const void *)Q, ok);
                }
            }
        } else {
            for (int idx = tid; idx < C2_TC * R; idx += C2_LT) {
                const int r = idx / R, j = idx % R;
                const bool ok = tb + r < t1;
                cp_async4(smem_u32(qs + r * S::QP + j), ok ? (const void *)(Q + (size_t)(tb + r) * ldq + j) : (const void *)Q, ok);
            }
        }
    };

#pragma unroll
    for (int s = 0; s < NS - 1; s++) {
        if (s < nch) issue(s);
        cp_async_commit();
    }
    if (DU) /* this CTA's rows of Wd as bf16 [j][m]; zero past M */
        for (int idx = tid; idx < C2_MB * R; idx += C2_LT) {
            const int mm = idx / R, j = idx % R;
            Bs[j * S::BP + mm] = __float2bfloat16_rn(m0 + mm < M ? __ldg(Wd + (size_t)(m0 + mm) * R + j) : 0.0f);
        }

    /* Du of chunk c: this CTA sums rows [rx*64/cx, (rx+1)*64/cx) over the cx CTAs of its row */
    auto du_reduce = [&](int c) {
        const int rows = C2_TC / cx, n4 = rows * (R / 4);
        const int tb = t0 + c * C2_TC + rx * rows;
        const uint32_t base = smem_u32(Ds + (c & 1) * (C2_TC * R) + rx * rows * R);
        for (int idx = tid; idx < n4; idx += C2_LT) {
            const uint32_t a = base + idx * 16;
            float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int x = 0; x < cx; x++) c2_add4(s, c2_ld_cluster4(c2_mapa(a, (uint32_t)(x + ry * cx))));
            const int t = tb + idx / (R / 4), j = (idx % (R / 4)) * 4;
            if (t >= t1) continue;
            s.x *= dscale;
            s.y *= dscale;
            s.z *= dscale;
            s.w *= dscale;
            float *d = Du + (size_t)t * lddu + j;
            if (du_mode == 0) {
                if (duvec) {
                    *reinterpret_cast<float4 *>(d) = s;
                } else {
                    *reinterpret_cast<float2 *>(d) = make_float2(s.x, s.y);
                    *reinterpret_cast<float2 *>(d + 2) = make_float2(s.z, s.w);
                }
            } else {
                if (duvec) {
                    c2_red4(d, s);
                } else {
                    c2_red2(d, s.x, s.y);
                    c2_red2(d + 2, s.z, s.w);
                }
            }
        }
    };

    float acc[2][NT][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;

    for (int ch = 0; ch < nch; ch++) {
        cp_async_wait<NS - 2>();
        __syncthreads(); /* chunk ch is in; stage (ch-1)%NS is free */
        if (ch + NS - 1 < nch) issue(ch + NS - 1);
        cp_async_commit();
        const int st = ch % NS;
        const __nv_bfloat16 *ps = Ps + st * (C2_TC * C2_MB);
        const float *qs = Qs + st * (C2_TC * S::QP);
#pragma unroll
        for (int ks = 0; ks < C2_TC / 16; ks++) {
            uint32_t a[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++) {
                /* matrices: (t 0-7, m 0-7), (t 0-7, m 8-15), (t 8-15, m 0-7), (t 8-15, m 8-15) */
                const int r = ks * 16 + (lane & 7) + ((lane >> 4) & 1) * 8;
                const int cc = warp * 32 + m * 16 + ((lane >> 3) & 1) * 8;
                ldsm_x4_t(a[m][0], a[m][1], a[m][2], a[m][3], smem_u32(ps + c2_swz(r, cc)));
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const float *q = qs + (ks * 16 + tq * 2) * S::QP + n * 8 + g;
                const uint32_t b0 = pack_bf16(q[0], q[S::QP]);
                const uint32_t b1 = pack_bf16(q[8 * S::QP], q[9 * S::QP]);
#pragma unroll
                for (int m = 0; m < 2; m++) mma16816(acc[m][n], a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
            }
        }
        if (DU) { /* warp w: tokens 16w..16w+15 of the chunk, over the CTA's 128 columns */
            float dacc[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++) dacc[n][0] = dacc[n][1] = dacc[n][2] = dacc[n][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < C2_MB / 16; ks++) {
                uint32_t a0, a1, a2, a3; /* (t 0-7, m 0-7), (t 8-15, m 0-7), (t 0-7, m 8-15), (t 8-15, m 8-15) */
                const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = ks * 16 + (lane >> 4) * 8;
                ldsm_x4(a0, a1, a2, a3, smem_u32(ps + c2_swz(r, cc)));
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const uint32_t b0 = *reinterpret_cast<const uint32_t *>(Bs + (n * 8 + g) * S::BP + ks * 16 + tq * 2);
                    const uint32_t b1 = *reinterpret_cast<const uint32_t *>(Bs + (n * 8 + g) * S::BP + ks * 16 + tq * 2 + 8);
                    mma16816(dacc[n], a0, a1, a2, a3, b0, b1);
                }
            }
            if (ch > 0) { /* every CTA of the cluster has written chunk ch-1's partial */
                c2_cluster_wait();
                du_reduce(ch - 1);
            }
            float *db = Ds + (ch & 1) * (C2_TC * R);
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    *reinterpret_cast<float2 *>(db + (warp * 16 + g + h * 8) * R + n * 8 + tq * 2) =
                        make_float2(dacc[n][2 * h], dacc[n][2 * h + 1]);
            c2_cluster_arrive(); /* also: this CTA's reads of chunk ch-1's buffers are done */
        }
    }
    if (DU && nch > 0) {
        c2_cluster_wait();
        du_reduce(nch - 1);
    }
    cp_async_wait<0>();
    __syncthreads(); /* the ring is free */
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                *reinterpret_cast<float2 *>(Os + (warp * 32 + m * 16 + g + h * 8) * S::OP + n * 8 + tq * 2) =
                    make_float2(acc[m][n][2 * h] * scale, acc[m][n][2 * h + 1] * scale);
    c2_cluster_arrive();
    c2_cluster_wait(); /* all O partials written; all Du reads done */
    {
        const int rows = C2_MB / cy, r0 = ry * rows;
        const uint32_t obase = smem_u32(Os);
        if (omode == 1) { /* osj == 1: 4 consecutive j */
            for (int idx = tid; idx < rows * (R / 4); idx += C2_LT) {
                const int row = r0 + idx / (R / 4), j = (idx % (R / 4)) * 4, mm = m0 + row;
                const uint32_t a = obase + (row * S::OP + j) * 4;
                float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
                for (int y = 0; y < cy; y++) c2_add4(s, c2_ld_cluster4(c2_mapa(a, (uint32_t)(rx + y * cx))));
                if (mm < M) c2_red4(O + (size_t)mm * osm + j, s);
            }
        } else if (omode == 2) { /* osm == 1: 4 consecutive m */
            for (int idx = tid; idx < (rows / 4) * R; idx += C2_LT) {
                const int j = idx / (rows / 4), row = r0 + (idx % (rows / 4)) * 4, mm = m0 + row;
                const uint32_t a = obase + (row * S::OP + j) * 4;
                float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
                for (int y = 0; y < cy; y++) {
                    const uint32_t ra = c2_mapa(a, (uint32_t)(rx + y * cx));
                    s.x += c2_ld_cluster(ra);
                    s.y += c2_ld_cluster(ra + S::OP * 4);
                    s.z += c2_ld_cluster(ra + S::OP * 8);
                    s.w += c2_ld_cluster(ra + S::OP * 12);
                }
                if (mm < M) c2_red4(O + mm + (size_t)j * osj, s); /* M % 4 == 0: all four rows valid */
            }
        } else {
            for (int idx = tid; idx < rows * R; idx += C2_LT) {
                const int row = r0 + idx / R, j = idx % R, mm = m0 + row;
                const uint32_t a = obase + (row * S::OP + j) * 4;
                float s = 0.f;
                for (int y = 0; y < cy; y++) s += c2_ld_cluster(c2_mapa(a, (uint32_t)(rx + y * cx)));
                if (mm < M) atomicAdd(O + (size_t)mm * osm + (size_t)j * osj, s);
            }
        }
    }
    c2_cluster_arrive();
    c2_cluster_wait(); /* no CTA leaves while another reads its shared memory */
}

/* A launch configuration: cluster of cx (columns) x cy (tokens) CTAs; per_sm > 0 caps the CTAs
 * per SM that the grid is sized for (0: as many as fit). */
struct Colred2Cfg {
    int cx, cy, per_sm;
};

template <int R, int NS, bool DU>
cudaError_t colred2_launch(cudaStream_t st, int sm_count, Colred2Cfg cfg, float *O, int osm, int osj,
                           const __nv_bfloat16 *P, int ldp, int T, int M, const float *Q, int ldq, float scale, float *Du,
                           int lddu, const float *Wd, float dscale) {
    using S = C2Smem<R, NS, DU>;
    auto kern = k_lora_colred2<R, NS, DU>;
    static bool attr_set = false;
    static int cap_cache[5][5]; /* [log2 cx][log2 cy]: resident CTAs, 0 = not yet asked */
    cudaError_t e;
    if (!attr_set) {
        if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::BYTES)) != cudaSuccess) return e;
        if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1)) != cudaSuccess) return e;
        memset(cap_cache, 0, sizeof cap_cache);
        attr_set = true;
    }
    if (T <= 0 || M <= 0) return cudaSuccess;
    const int cx = cfg.cx, cy = cfg.cy;
    int lx = 0, ly = 0;
    while ((1 << lx) < cx) lx++;
    while ((1 << ly) < cy) ly++;
    if ((1 << lx) != cx || (1 << ly) != cy || lx > 4 || ly > 4 || cx * cy > 16) return cudaErrorInvalidValue;
    const int gx = (int)((M + C2_MB * cx - 1) / (C2_MB * cx)) * cx;
    int cap = cap_cache[lx][ly];
    if (cap == 0) {
        cudaLaunchConfig_t lc = {};
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = cx;
        at[0].val.clusterDim.y = cy;
        at[0].val.clusterDim.z = 1;
        lc.gridDim = dim3(cx * 16, cy * 16);
        lc.blockDim = dim3(C2_LT);
        lc.dynamicSmemBytes = S::BYTES;
        lc.attrs = at;
        lc.numAttrs = 1;
        int ncl = 0;
        if (cudaOccupancyMaxActiveClusters(&ncl, (void *)kern, &lc) != cudaSuccess || ncl <= 0) {
            (void)cudaGetLastError();
            ncl = (sm_count * 2) / (cx * cy);
        }
        cap = cap_cache[lx][ly] = ncl * cx * cy;
    }
    if (cfg.per_sm > 0 && cap > cfg.per_sm * sm_count) cap = cfg.per_sm * sm_count;
    int gy = cap / gx / cy * cy;
    if (gy < cy) gy = cy;
    int tpc = (T + gy - 1) / gy;
    tpc = (tpc + C2_TC - 1) / C2_TC * C2_TC;
    gy = (T + tpc - 1) / tpc;
    gy = (gy + cy - 1) / cy * cy;

    const int du_mode = (DU && gx > cx) ? 1 : 0;
    if (DU && du_mode == 1)
        if ((e = cudaMemset2DAsync(Du, (size_t)lddu * 4, 0, (size_t)R * 4, (size_t)T, st)) != cudaSuccess) return e;
    const int vecq = ((uintptr_t)Q & 15u) == 0 && ldq % 4 == 0;
    const bool o16 = ((uintptr_t)O & 15u) == 0;
    const int omode = (osj == 1 && o16 && osm % 4 == 0) ? 1 : (osm == 1 && o16 && osj % 4 == 0 && M % 4 == 0) ? 2 : 0;
    const int duvec = DU && ((uintptr_t)Du & 15u) == 0 && lddu % 4 == 0;

    cudaLaunchConfig_t lc = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = cx;
    at[0].val.clusterDim.y = cy;
    at[0].val.clusterDim.z = 1;
    lc.gridDim = dim3(gx, gy);
    lc.blockDim = dim3(C2_LT);
    lc.dynamicSmemBytes = S::BYTES;
    lc.stream = st;
    lc.attrs = at;
    lc.numAttrs = 1;
    return cudaLaunchKernelEx(&lc, kern, O, osm, osj, P, ldp, T, M, Q, ldq, scale, tpc, vecq, omode, Du, lddu, Wd,
                              dscale, du_mode, duvec);
}

/* The default configuration. With Du: a cluster spans the columns (up to 16 CTAs = 2048 columns),
 * so Du partials meet in shared memory. Without: a cluster of 8 spans the tokens. */
inline Colred2Cfg colred2_default_cfg(int T, int M, bool du) {
    (void)T;
    const int gx0 = (M + C2_MB - 1) / C2_MB;
    if (du) {
        int cx = 1;
        while (cx < gx0 && cx < 16) cx *= 2;
        return Colred2Cfg{cx, 1, 0};
    }
    return Colred2Cfg{1, 8, 0};
}

template <int R>
cudaError_t colred_v2_cfg(cudaStream_t st, int sm_count, Colred2Cfg cfg, float *O, int osm, int osj,
                          const __nv_bfloat16 *P, int ldp, int T, int M, const float *Q, int ldq, float scale, float *Du,
                          int lddu, const float *Wd, float dscale) {
    if (Du)
        return colred2_launch<R, c2_stages<R, true>(), true>(st, sm_count, cfg, O, osm, osj, P, ldp, T, M, Q, ldq, scale,
                                                             Du, lddu, Wd, dscale);
    return colred2_launch<R, c2_stages<R, false>(), false>(st, sm_count, cfg, O, osm, osj, P, ldp, T, M, Q, ldq, scale,
                                                           Du, lddu, Wd, dscale);
}

/* Drop-in launcher (errors: as any launch, through cudaGetLastError / the returned code above). */
template <int R>
void colred_v2(cudaStream_t st, int sm_count, float *O, int osm, int osj, const __nv_bfloat16 *P, int ldp, int T, int M,
               const float *Q, int ldq, float scale, float *Du, int lddu, const float *Wd, float dscale) {
    (void)colred_v2_cfg<R>(st, sm_count, colred2_default_cfg(T, M, Du != NULL), O, osm, osj, P, ldp, T, M, Q, ldq, scale,
                           Du, lddu, Wd, dscale);
}

} /* namespace */
// ==== END KERNEL ====

/* ============================================================================================ */
/* The old kernel (src/backend/cuda/cuda_lora.cu, k_lora_colred and its launcher), renamed, for
 * a side-by-side timing.                                                                        */
namespace old {
typedef __nv_bfloat16 bf16;
__device__ __forceinline__ void atomic_add2(float *p, float a, float b) {
    atomicAdd(reinterpret_cast<float2 *>(p), make_float2(a, b));
}
constexpr int LT = 128;
constexpr int CTC = 64, CMB = 128;
template <int R>
struct ColredSmem {
    static constexpr int QP = CTC + 8;
    static constexpr int BP = CMB + 8;
    bf16 P[2][CTC * CMB];
    bf16 Bs[R][BP];
    bf16 Q[2][R][QP];
};
__device__ __forceinline__ int swz128(int row, int col) { return row * CMB + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7); }

template <int R>
__global__ void __launch_bounds__(LT) k_lora_colred_old(float *O, int osm, int osj, const bf16 *P, int ldp, int T, int M,
                                                        const float *Q, int ldq, float scale, int tpc, int vec2, int vecq,
                                                        float *Du, int lddu, const float *Wd, float dscale) {
    constexpr int NT = R / 8;
    using S = ColredSmem<R>;
    extern __shared__ __align__(128) unsigned char colred_smem[];
    S &sm = *reinterpret_cast<S *>(colred_smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int m0 = blockIdx.x * CMB, t0 = blockIdx.y * tpc, t1 = min(T, t0 + tpc);
    const int nch = (t1 - t0 + CTC - 1) / CTC;
    if (Du)
        for (int idx = tid; idx < CMB * R; idx += LT) {
            const int mm = idx / R, j = idx % R;
            sm.Bs[j][mm] = __float2bfloat16_rn(m0 + mm < M ? Wd[(size_t)(m0 + mm) * R + j] : 0.0f);
        }
    auto issue = [&](int ch, int st) {
        const int tb = t0 + ch * CTC;
#pragma unroll
        for (int i = 0; i < CTC * (CMB / 8) / LT; i++) {
            const int c = tid + i * LT, r = c / (CMB / 8), cc = (c % (CMB / 8)) * 8;
            const bool ok = tb + r < t1 && m0 + cc < M;
            cp_async16(smem_u32(&sm.P[st][swz128(r, cc)]), ok ? (const void *)(P + (size_t)(tb + r) * ldp + m0 + cc)
                                                             : (const void *)P, ok);
        }
        cp_async_commit();
        if (vecq) {
            for (int idx = tid; idx < CTC * R / 4; idx += LT) {
                const int r = idx / (R / 4), j = (idx % (R / 4)) * 4;
                const float4 v = tb + r < t1 ? *reinterpret_cast<const float4 *>(Q + (size_t)(tb + r) * ldq + j) : make_float4(0, 0, 0, 0);
                sm.Q[st][j][r] = __float2bfloat16_rn(v.x);
                sm.Q[st][j + 1][r] = __float2bfloat16_rn(v.y);
                sm.Q[st][j + 2][r] = __float2bfloat16_rn(v.z);
                sm.Q[st][j + 3][r] = __float2bfloat16_rn(v.w);
            }
        } else {
            for (int idx = tid; idx < CTC * R; idx += LT) {
                const int r = idx / R, j = idx % R;
                sm.Q[st][j][r] = __float2bfloat16_rn(tb + r < t1 ? Q[(size_t)(tb + r) * ldq + j] : 0.0f);
            }
        }
    };
    float acc[2][NT][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
    if (nch > 0) issue(0, 0);
    for (int ch = 0; ch < nch; ch++) {
        const int st = ch & 1;
        if (ch + 1 < nch) {
            issue(ch + 1, st ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < CTC / 16; ks++) {
            uint32_t a[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++) {
                const int r = ks * 16 + (lane & 7) + ((lane >> 4) & 1) * 8;
                const int cc = warp * 32 + m * 16 + ((lane >> 3) & 1) * 8;
                ldsm_x4_t(a[m][0], a[m][1], a[m][2], a[m][3], smem_u32(&sm.P[st][swz128(r, cc)]));
            }
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const uint32_t b0 = *reinterpret_cast<const uint32_t *>(&sm.Q[st][n * 8 + g][ks * 16 + tq * 2]);
                const uint32_t b1 = *reinterpret_cast<const uint32_t *>(&sm.Q[st][n * 8 + g][ks * 16 + tq * 2 + 8]);
#pragma unroll
                for (int m = 0; m < 2; m++) mma16816(acc[m][n], a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
            }
        }
        if (Du) {
            float dacc[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++) dacc[n][0] = dacc[n][1] = dacc[n][2] = dacc[n][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < CMB / 16; ks++) {
                uint32_t a0, a1, a2, a3;
                const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = ks * 16 + (lane >> 4) * 8;
                ldsm_x4(a0, a1, a2, a3, smem_u32(&sm.P[st][swz128(r, cc)]));
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const uint32_t b0 = *reinterpret_cast<const uint32_t *>(&sm.Bs[n * 8 + g][ks * 16 + tq * 2]);
                    const uint32_t b1 = *reinterpret_cast<const uint32_t *>(&sm.Bs[n * 8 + g][ks * 16 + tq * 2 + 8]);
                    mma16816(dacc[n], a0, a1, a2, a3, b0, b1);
                }
            }
            const int tb = t0 + ch * CTC + warp * 16 + g;
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int t = tb + h * 8;
                    if (t < t1) atomic_add2(Du + (size_t)t * lddu + n * 8 + tq * 2, dacc[n][2 * h] * dscale, dacc[n][2 * h + 1] * dscale);
                }
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int j = n * 8 + tq * 2;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int mm = m0 + warp * 32 + m * 16 + g + h * 8;
                if (mm >= M) continue;
                const float a = acc[m][n][2 * h] * scale, b = acc[m][n][2 * h + 1] * scale;
                float *o = O + (size_t)mm * osm + (size_t)j * osj;
                if (vec2) {
                    atomic_add2(o, a, b);
                } else {
                    atomicAdd(o, a);
                    atomicAdd(o + osj, b);
                }
            }
        }
}

static unsigned cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

template <int R>
void colred_old(cudaStream_t st, int sm_count, float *O, int osm, int osj, const bf16 *P, int ldp, int T, int M,
                const float *Q, int ldq, float scale, float *Du, int lddu, const float *Wd, float dscale) {
    static bool attr_set = false;
    if (!attr_set) {
        cudaFuncSetAttribute(k_lora_colred_old<R>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sizeof(ColredSmem<R>));
        attr_set = true;
    }
    const int gx = (int)cdiv(M, CMB);
    int gy = (int)cdiv(2 * sm_count, gx);
    const int tmax = (int)cdiv(T, CTC);
    if (gy > tmax) gy = tmax;
    if (gy < 1) gy = 1;
    int tpc = (int)cdiv(cdiv(T, gy), CTC) * CTC;
    gy = (int)cdiv(T, tpc);
    const int vec2 = osj == 1 && ((uintptr_t)O & 7u) == 0;
    if (Du) cudaMemset2DAsync(Du, (size_t)lddu * 4, 0, (size_t)R * 4, (size_t)T, st);
    k_lora_colred_old<R><<<dim3(gx, gy), LT, sizeof(ColredSmem<R>), st>>>(
        O, osm, osj, P, ldp, T, M, Q, ldq, scale, tpc, vec2, ((uintptr_t)Q & 15u) == 0 && ldq % 4 == 0, Du, lddu, Wd, dscale);
}
} /* namespace old */

/* ============================================================================================ */
/* checker / benchmark                                                                           */

#define CK(x)                                                                                        \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
            exit(2);                                                                                 \
        }                                                                                            \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t rng() {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static inline float frand() { return (float)((rng() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; } /* [-1, 1) */
static inline uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

enum { L_DB = 0, L_DA = 1 }; /* O layout: dB (osm = R, osj = 1) or dA (osm = 1, osj = M) */

struct Case {
    int T, M, R, du, layout, ldp, ldq, lddu, timed;
};

/* 0 old, 1 v2 default, 2 v2 with an explicit config */
static void launch(int which, Colred2Cfg cfg, cudaStream_t st, int sms, const Case &c, float *O, const __nv_bfloat16 *P,
                   const float *Q, float *Du, const float *Wd, float scale, float dscale) {
    const int osm = c.layout == L_DB ? c.R : 1, osj = c.layout == L_DB ? 1 : c.M;
    float *du = c.du ? Du : NULL;
#define DISPATCH(RR)                                                                                                   \
    case RR:                                                                                                           \
        if (which == 0)                                                                                                \
            old::colred_old<RR>(st, sms, O, osm, osj, P, c.ldp, c.T, c.M, Q, c.ldq, scale, du, c.lddu, Wd, dscale);   \
        else if (which == 1)                                                                                           \
            colred_v2<RR>(st, sms, O, osm, osj, P, c.ldp, c.T, c.M, Q, c.ldq, scale, du, c.lddu, Wd, dscale);          \
        else                                                                                                           \
            CK(colred_v2_cfg<RR>(st, sms, cfg, O, osm, osj, P, c.ldp, c.T, c.M, Q, c.ldq, scale, du, c.lddu, Wd, dscale)); \
        break;
    switch (c.R) {
        DISPATCH(8)
        DISPATCH(16)
        DISPATCH(24)
        DISPATCH(32)
        DISPATCH(48)
        DISPATCH(64)
        DISPATCH(96)
    default: fprintf(stderr, "bad R\n"); exit(2);
    }
#undef DISPATCH
    CK(cudaGetLastError());
}

__global__ void k_flush_read(const float4 *p, size_t n, float *sink) { /* pulls 100 MB through L2 (clean lines) */
    float s = 0.f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float4 v = p[i];
        s += v.x + v.y + v.z + v.w;
    }
    if (s == 123456.789f) *sink = s;
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    int dev = 0, sms = 0;
    CK(cudaSetDevice(dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    sms = prop.multiProcessorCount;
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, sms, prop.l2CacheSize >> 20);
    cudaStream_t st;
    CK(cudaStreamCreate(&st));

    std::vector<Case> cases = {
        /* timed: with Du (dB layout) */
        {2048, 14336, 16, 1, L_DB, 0, 0, 0, 1},
        {2048, 4096, 16, 1, L_DB, 0, 0, 0, 1},
        {2048, 1024, 16, 1, L_DB, 0, 0, 0, 1},
        {8192, 8192, 16, 1, L_DB, 0, 0, 0, 1},
        {8192, 2048, 16, 1, L_DB, 0, 0, 0, 1},
        {8192, 512, 16, 1, L_DB, 0, 0, 0, 1},
        /* timed: without Du (dA layout) */
        {2048, 14336, 16, 0, L_DA, 0, 0, 0, 1},
        {8192, 8192, 16, 0, L_DA, 0, 0, 0, 1},
        {8192, 2048, 48, 0, L_DA, 0, 0, 0, 1},
        {8192, 2048, 32, 0, L_DA, 0, 0, 0, 1},
        /* odd shapes, checked only */
        {1000, 4096, 16, 1, L_DB, 0, 0, 0, 0},
        {1000, 200, 16, 1, L_DB, 208, 0, 0, 0},
        {1000, 200, 16, 0, L_DA, 0, 0, 0, 0},
        {1000, 200, 16, 0, L_DB, 0, 0, 0, 0},
        {1000, 4096, 16, 1, L_DA, 0, 0, 0, 0},
        {777, 1024, 48, 1, L_DB, 1032, 50, 50, 0}, /* ldq, lddu even but not % 4 */
        {1000, 2048, 32, 1, L_DB, 0, 0, 0, 0},
        {1000, 2048, 48, 0, L_DA, 0, 0, 0, 0},
        {1000, 1096, 8, 1, L_DB, 0, 0, 0, 0},
        {1000, 1096, 24, 1, L_DB, 0, 0, 0, 0},
        {1000, 640, 64, 1, L_DB, 0, 0, 0, 0},
        {1000, 648, 96, 0, L_DA, 0, 0, 0, 0}, /* osj = 648: % 4 == 0; M % 4 == 0 */
        {1000, 1000, 96, 1, L_DA, 0, 0, 0, 0},
        {130, 14336, 16, 1, L_DB, 0, 0, 0, 0},
        {8, 128, 16, 1, L_DB, 0, 0, 0, 0},
        {3000, 8, 16, 1, L_DB, 0, 0, 0, 0},
        {5000, 2056, 16, 0, L_DA, 0, 36, 0, 0}, /* osj = 2056 */
    };
    for (auto &c : cases) {
        if (!c.ldp) c.ldp = c.M;
        if (!c.ldq) c.ldq = c.R;
        if (!c.lddu) c.lddu = c.R;
    }
    size_t maxP = 0, maxQ = 0, maxO = 0, maxW = 0, maxD = 0;
    for (auto &c : cases) {
        maxP = std::max(maxP, (size_t)c.T * c.ldp);
        maxQ = std::max(maxQ, (size_t)c.T * c.ldq);
        maxO = std::max(maxO, (size_t)c.M * c.R);
        maxW = std::max(maxW, (size_t)c.M * c.R);
        maxD = std::max(maxD, (size_t)c.T * c.lddu);
    }
    __nv_bfloat16 *dP;
    float *dQ, *dO, *dW, *dD, *dFlush, *dSink;
    const size_t flushN = (100u << 20) / 16;
    CK(cudaMalloc(&dP, maxP * 2));
    CK(cudaMalloc(&dQ, maxQ * 4));
    CK(cudaMalloc(&dO, maxO * 4));
    CK(cudaMalloc(&dW, maxW * 4));
    CK(cudaMalloc(&dD, maxD * 4));
    CK(cudaMalloc(&dFlush, flushN * 16));
    CK(cudaMalloc(&dSink, 4));
    CK(cudaMemset(dFlush, 0, flushN * 16));
    std::vector<uint16_t> hP(maxP);
    std::vector<float> hQ(maxQ), hO(maxO), hW(maxW), gO(maxO), gD(maxD);
    for (size_t i = 0; i < maxP; i++) hP[i] = f2bf(frand());
    CK(cudaMemcpy(dP, hP.data(), maxP * 2, cudaMemcpyHostToDevice));

    const float scale = 0.5f, dscale = 0.25f;
    int fails = 0;
    bool neg_done = false;
    double worstO = 0, worstD = 0;
    struct Row {
        Case c;
        double us[2], eo[2], ed[2];
    };
    std::vector<Row> rows;
    cudaEvent_t ev[2][64];
    for (int i = 0; i < 64; i++) {
        CK(cudaEventCreate(&ev[0][i]));
        CK(cudaEventCreate(&ev[1][i]));
    }
    auto flush = [&]() {
        k_flush_read<<<sms * 4, 512, 0, st>>>((const float4 *)dFlush, flushN, dSink);
        CK(cudaGetLastError());
    };
    auto time_it = [&](int which, Colred2Cfg cfg, const Case &c) {
        const int NREP = 50;
        for (int i = 0; i < 5; i++) {
            flush();
            launch(which, cfg, st, sms, c, dO, dP, dQ, dD, dW, scale, dscale);
        }
        for (int i = 0; i < NREP; i++) {
            flush();
            CK(cudaEventRecord(ev[0][i], st));
            launch(which, cfg, st, sms, c, dO, dP, dQ, dD, dW, scale, dscale);
            CK(cudaEventRecord(ev[1][i], st));
        }
        CK(cudaStreamSynchronize(st));
        double tot = 0;
        for (int i = 0; i < NREP; i++) {
            float ms;
            CK(cudaEventElapsedTime(&ms, ev[0][i], ev[1][i]));
            tot += ms;
        }
        return tot / NREP * 1000.0;
    };

    for (size_t ci = 0; ci < cases.size(); ci++) {
        Case &c = cases[ci];
        const int osm = c.layout == L_DB ? c.R : 1, osj = c.layout == L_DB ? 1 : c.M;
        for (size_t i = 0; i < (size_t)c.T * c.ldq; i++) hQ[i] = frand();
        for (size_t i = 0; i < (size_t)c.M * c.R; i++) hW[i] = frand();
        for (size_t i = 0; i < (size_t)c.M * c.R; i++) hO[i] = frand();
        /* a different window of the random P per case */
        const size_t poff = (maxP - (size_t)c.T * c.ldp) ? (rng() % (maxP - (size_t)c.T * c.ldp)) & ~(size_t)7 : 0;
        const __nv_bfloat16 *Pc = dP + poff;
        const uint16_t *hPc = hP.data() + poff;
        CK(cudaMemcpy(dQ, hQ.data(), (size_t)c.T * c.ldq * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dW, hW.data(), (size_t)c.M * c.R * 4, cudaMemcpyHostToDevice));
        /* sampled rows of O (m) and Du (t); all of them for small cases */
        std::vector<int> ms, ts;
        const bool full = (double)c.T * c.M * c.R <= 4e7;
        if (full) {
            for (int m = 0; m < c.M; m++) ms.push_back(m);
            for (int t = 0; t < c.T; t++) ts.push_back(t);
        } else {
            int fm[] = {0, 1, 7, 127, 128, 129, c.M / 2, c.M - 129, c.M - 128, c.M - 1};
            for (int m : fm) ms.push_back(m);
            for (int i = 0; i < 90; i++) ms.push_back((int)(rng() % c.M));
            int ft[] = {0, 1, 63, 64, 65, c.T / 2, c.T - 65, c.T - 64, c.T - 1};
            for (int t : ft) ts.push_back(t);
            for (int i = 0; i < 90; i++) ts.push_back((int)(rng() % c.T));
        }
        std::vector<double> refO(ms.size() * c.R), refD(ts.size() * c.R);
        for (size_t k = 0; k < ms.size(); k++) {
            const int m = ms[k];
            for (int j = 0; j < c.R; j++) {
                double s = 0;
                for (int t = 0; t < c.T; t++) s += (double)bf2f(hPc[(size_t)t * c.ldp + m]) * hQ[(size_t)t * c.ldq + j];
                refO[k * c.R + j] = scale * s;
            }
        }
        if (c.du)
            for (size_t k = 0; k < ts.size(); k++) {
                const int t = ts[k];
                std::vector<double> s(c.R, 0.0);
                for (int m = 0; m < c.M; m++) {
                    const double p = bf2f(hPc[(size_t)t * c.ldp + m]);
                    for (int j = 0; j < c.R; j++) s[j] += p * hW[(size_t)m * c.R + j];
                }
                for (int j = 0; j < c.R; j++) refD[k * c.R + j] = dscale * s[j];
            }
        Row row;
        row.c = c;
        for (int which = 0; which < 2; which++) {
            /* O: random nonzero start (accumulation); Du: poisoned with NaN (must be overwritten) */
            for (int m = 0; m < c.M; m++)
                for (int j = 0; j < c.R; j++) gO[(size_t)m * osm + (size_t)j * osj] = hO[(size_t)m * c.R + j];
            CK(cudaMemcpy(dO, gO.data(), (size_t)c.M * c.R * 4, cudaMemcpyHostToDevice));
            CK(cudaMemset(dD, 0xFF, maxD * 4));
            launch(which, Colred2Cfg{}, st, sms, c, dO, Pc, dQ, dD, dW, scale, dscale);
            CK(cudaStreamSynchronize(st));
            CK(cudaMemcpy(gO.data(), dO, (size_t)c.M * c.R * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(gD.data(), dD, (size_t)c.T * c.lddu * 4, cudaMemcpyDeviceToHost));
            double mref = 0, merr = 0;
            bool bad = false;
            for (size_t i = 0; i < (size_t)c.M * c.R; i++) bad |= !std::isfinite(gO[i]);
            for (size_t k = 0; k < ms.size(); k++)
                for (int j = 0; j < c.R; j++) {
                    const size_t off = (size_t)ms[k] * osm + (size_t)j * osj;
                    const double r = refO[k * c.R + j];
                    mref = std::max(mref, fabs(r));
                    const double d = fabs((double)gO[off] - (hO[(size_t)ms[k] * c.R + j] + r));
                    merr = std::max(merr, d != d ? 1e30 : d);
                }
            row.eo[which] = mref > 0 ? merr / mref : merr;
            row.ed[which] = 0;
            if (c.du) {
                double dref = 0, derr = 0;
                for (int t = 0; t < c.T; t++)
                    for (int j = 0; j < c.R; j++) bad |= !std::isfinite(gD[(size_t)t * c.lddu + j]);
                for (size_t k = 0; k < ts.size(); k++)
                    for (int j = 0; j < c.R; j++) {
                        const double r = refD[k * c.R + j];
                        dref = std::max(dref, fabs(r));
                        const double d = fabs((double)gD[(size_t)ts[k] * c.lddu + j] - r);
                        derr = std::max(derr, d != d ? 1e30 : d);
                    }
                row.ed[which] = dref > 0 ? derr / dref : derr;
                if (which == 1 && !neg_done) { /* negative control: a 5% error in one Du element must fail */
                    const size_t k = ts.size() / 2;
                    const double r = refD[k * c.R + 3], d = fabs((double)gD[(size_t)ts[k] * c.lddu + 3] + 0.05 * dref - r);
                    printf("negative control: perturbed Du error %.3e -> %s\n", d / dref, d / dref > 1e-2 ? "FAIL (as it must)" : "pass (CHECKER BROKEN)");
                    if (!(d / dref > 1e-2)) fails++;
                    neg_done = true;
                }
            }
            const bool ok = !bad && row.eo[which] < 1e-2 && row.ed[which] < 1e-2;
            if (!ok) fails++;
            if (which == 1) {
                worstO = std::max(worstO, row.eo[1]);
                worstD = std::max(worstD, row.ed[1]);
            }
            printf("check %-3s T=%5d M=%5d R=%2d %s %s ldp=%d ldq=%d lddu=%d: errO %.2e errDu %.2e %s%s\n", which ? "v2" : "old", c.T,
                   c.M, c.R, c.du ? "Du" : "--", c.layout == L_DB ? "dB" : "dA", c.ldp, c.ldq, c.lddu, row.eo[which], row.ed[which],
                   ok ? "ok" : "FAIL", bad ? " (non-finite / unwritten)" : "");
            fflush(stdout);
        }
        if (c.timed) {
            row.us[0] = time_it(0, Colred2Cfg{}, c);
            row.us[1] = time_it(1, Colred2Cfg{}, c);
            /* alternatives */
            std::vector<Colred2Cfg> alts;
            if (c.du)
                alts = {{4, 1, 0}, {8, 1, 0}, {16, 1, 0}, {8, 2, 0}, {4, 4, 0}, {16, 1, 1}, {8, 1, 1}};
            else
                alts = {{1, 1, 0}, {1, 4, 0}, {1, 8, 0}, {1, 16, 0}, {2, 8, 0}, {1, 8, 1}};
            printf("  alt T=%d M=%d R=%d %s:", c.T, c.M, c.R, c.du ? "Du" : "--");
            for (auto &a : alts) {
                const int gx0 = (c.M + 127) / 128;
                if (a.cx > 1 && a.cx > 2 * gx0) continue;
                printf("  (%d,%d,%d) %.1f", a.cx, a.cy, a.per_sm, time_it(2, a, c));
            }
            printf("\n");
            fflush(stdout);
            rows.push_back(row);
        }
    }
    printf("\ntiming: mean of 50 launches after 5 warm-up, each preceded by a 100 MB read-through of another buffer (L2 flushed with clean lines);\n"
           "the with-Du time includes the launcher's Du memset when it has one. TB/s = bytes of P / time.\n");
    printf("%-6s %-6s %-3s %-3s %-3s | %9s %7s | %9s %7s | %6s | %7s\n", "T", "M", "R", "Du", "O", "old us", "TB/s", "v2 us", "TB/s", "speedup", "P/3TB/s");
    for (auto &r : rows) {
        const double bytes = (double)r.c.T * r.c.M * 2;
        printf("%-6d %-6d %-3d %-3s %-3s | %9.1f %7.2f | %9.1f %7.2f | %6.2fx | %7.1f\n", r.c.T, r.c.M, r.c.R, r.c.du ? "yes" : "no",
               r.c.layout == L_DB ? "dB" : "dA", r.us[0], bytes / r.us[0] * 1e-6, r.us[1], bytes / r.us[1] * 1e-6, r.us[0] / r.us[1],
               bytes / 3.0e12 * 1e6);
    }
    printf("v2 max relative error: O %.2e, Du %.2e (tolerance 1e-2 of the max |reference|)\n", worstO, worstD);
    printf("%s (%d failures)\n", fails ? "CHECK FAILED" : "ALL CHECKS PASSED", fails);
    return fails ? 1 : 0;
}
