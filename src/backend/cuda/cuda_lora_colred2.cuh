/* cuda_lora_colred2.cuh — LoRA column reduction, version 2 (k_lora_colred2), included by cuda_lora.cu
 * (which keeps version 1, k_lora_colred, under US_CUDA_LORA_COLRED=1) and by the standalone checker
 * bench/lora_colred_v2.cu (float64 reference, both versions timed with L2 flushed between calls).
 *
 *   O(m, j) += scale * sum_t P[t, m] Q[t, j]                      (m < M, j < R; O f32 at O[m*osm + j*osj])
 *   Du[t, j] = dscale * sum_m P[t, m] Wd[m*R + j]   (optional)    (Du f32, pitch lddu; overwritten)
 *
 * Design (against k_lora_colred of src/backend/cuda/cuda_lora.cu):
 *  - A CTA (4 warps) owns 128 columns of P and one contiguous token range (a multiple of 64
 *    tokens); the grid is sized from cudaOccupancyMaxActiveClusters so that all CTAs are resident
 *    at once with equal ranges (one wave). Without Du it aims at one CTA per SM (fewer O atomics).
 *  - P tiles (64 tokens x 128 columns, 16 KB, XOR swizzle) and the matching f32 rows of Q arrive
 *    by cp.async 16 B through an NS-stage ring (NS 3..5: as many as two CTAs per SM allow), so no
 *    synchronous global load sits in the loop (the old kernel's Q staging was one per chunk). The
 *    bf16 B fragments of Q are packed from the f32 rows in shared memory (pitch R + 4: conflict-free).
 *  - Du: a thread-block cluster of cx CTAs along the columns (same token range). CTA x of the
 *    cluster owns rows [x*64/cx, (x+1)*64/cx) of every 64-token chunk; every CTA pushes its partial
 *    rows into the owner's slot with st.async (counted on the owner's mbarrier), the owner sums the
 *    cx slots and writes Du with one 16-byte store (when the cluster spans all of M: no memset, no
 *    atomics) or one red.global.add.v4.f32 (cx times fewer atomics than one per CTA, 4 wide).
 *    Four exchange buffers (two from R = 48), recycled through "empty" mbarriers that the owners
 *    arrive on remotely (relaxed): CTAs of a cluster may drift up to two chunks apart. A per-chunk
 *    barrier.cluster (release) was measured much slower: it stalled every chunk.
 *    cx: the power of two covering M when M <= 1024 (at least 2), else 2 (larger clusters measured
 *    slower at M >= 2048: fewer co-resident CTAs).
 *  - O: the per-CTA partials go through shared memory so that the atomics are 16-byte
 *    red.global.add.v4.f32 in both layouts (4 consecutive j for dB, 4 consecutive m for dA).
 * Requirements (as the library's): M % 8 == 0, ldp % 8 == 0, P 16-byte aligned, Q/Du 8-byte
 * aligned with even pitches, R in {8, 16, 24, 32, 48, 64, 96}; sm_90 (clusters, st.async,
 * vector float atomics).
 */
#ifndef US_CUDA_LORA_COLRED2_CUH
#define US_CUDA_LORA_COLRED2_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "backend/cuda/cuda_ptx.cuh"

namespace {

constexpr int C2_LT = 128; /* threads per CTA (4 warps) */
constexpr int C2_TC = 64;  /* tokens per stage */
constexpr int C2_MB = 128; /* columns of P per CTA */

__device__ __forceinline__ int c2_swz(int row, int col) { /* 16 chunks of 8 bf16 per row, XOR by row */
    return row * C2_MB + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}
__device__ __forceinline__ uint32_t c2_cluster_ctaid_x() {
    uint32_t v;
    asm volatile("mov.u32 %0, %%cluster_ctaid.x;\n" : "=r"(v));
    return v;
}
__device__ __forceinline__ uint32_t c2_cluster_nctaid_x() {
    uint32_t v;
    asm volatile("mov.u32 %0, %%cluster_nctaid.x;\n" : "=r"(v));
    return v;
}
/* Cluster barrier: only at the start (after the mbarriers' initialisation) and at the end. The
 * loop synchronises through mbarriers (st.async bytes, relaxed remote arrives): a release cluster
 * barrier per chunk measured ~1.5x slower (likely its fence waiting on the thread's traffic). */
__device__ __forceinline__ void c2_cluster_arrive_release() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void c2_cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }
__device__ __forceinline__ uint32_t c2_mapa(uint32_t saddr, uint32_t rank) {
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(saddr), "r"(rank));
    return r;
}
__device__ __forceinline__ void c2_mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void c2_mbar_expect_tx(uint32_t bar, uint32_t bytes) { /* arrive (count 1) + expect bytes */
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void c2_mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(ok)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!ok);
}
/* 8 bytes into another CTA's shared memory, counted on that CTA's mbarrier (no fence needed) */
__device__ __forceinline__ void c2_st_async2(uint32_t raddr, float a, float b, uint32_t rbar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n" ::"r"(raddr), "f"(a),
                 "f"(b), "r"(rbar)
                 : "memory");
}
__device__ __forceinline__ void c2_red4(float *p, float4 v) { /* red.global.add.v4.f32 (sm_90) */
    asm volatile("red.global.add.v4.f32 [%0], {%1,%2,%3,%4};\n" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
}
__device__ __forceinline__ void c2_red2(float *p, float a, float b) {
    asm volatile("red.global.add.v2.f32 [%0], {%1,%2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
}

/* Shared memory of one CTA (bytes). The O partials at the end reuse the P/Q ring. */
template <int R, int NS, bool DU>
struct C2Smem {
    static constexpr int QP = R + 4;     /* f32 per staged Q row: rows 2 apart are 8 banks apart */
    static constexpr int BP = C2_MB + 8; /* bf16 per Bs row (Wd as [j][m]): conflict-free b loads */
    static constexpr int OP = R + 4;     /* f32 per O-partial row */
    static constexpr int P_OFF = 0, P_STAGE = C2_TC * C2_MB * 2;
    static constexpr int Q_OFF = P_OFF + NS * P_STAGE, Q_STAGE = C2_TC * QP * 4;
    static constexpr int B_OFF = Q_OFF + NS * Q_STAGE;
    static constexpr int NDB = R <= 32 ? 4 : 2;                   /* Du exchange buffers */
    static constexpr int D_OFF = B_OFF + (DU ? R * BP * 2 : 0); /* Du partials received: [NDB][64 rows][R] f32 */
    static constexpr int BAR_OFF = D_OFF + (DU ? NDB * C2_TC * R * 4 : 0); /* mbarriers full[NDB], empty[NDB] */
    static constexpr int RS_OFF = BAR_OFF + (DU ? 16 * NDB : 0); /* per stage: the chunk's 64 token scales (qscale) */
    static constexpr int BYTES = RS_OFF + NS * C2_TC * 4;
    static_assert(C2_MB * OP * 4 <= B_OFF, "O partials must fit the ring");
    static_assert(B_OFF % 16 == 0 && D_OFF % 16 == 0 && BAR_OFF % 8 == 0, "alignment");
};

/* Stages: the most (up to 5) with which two CTAs fit on an SM (228 KB, 1 KB reserved per CTA). */
template <int R, bool DU>
constexpr int c2_stages() {
    return C2Smem<R, 5, DU>::BYTES <= 113 * 1024   ? 5
           : C2Smem<R, 4, DU>::BYTES <= 113 * 1024 ? 4
           : C2Smem<R, 3, DU>::BYTES <= 113 * 1024 ? 3
                                                   : 2;
}

/* Du exchange (DU): the cx CTAs of a cluster share a token range and split the columns. CTA x of
 * the cluster owns rows [x*64/cx, (x+1)*64/cx) of every 64-token chunk: each CTA pushes its
 * partial rows there with st.async (slot [sender][row]), the owner's mbarrier counts the bytes,
 * and the owner sums the cx slots and writes Du one chunk later. NDB buffers (full[b]: the owner's
 * expect_tx + the pushed bytes; empty[b]: in the sender, one relaxed remote arrive per owner once
 * the owner's reads of that buffer are done, after the next loop-top __syncthreads).
 * du_mode: 0 plain stores (the cluster spans all of M), 1 atomics (Du zeroed by the launcher).
 * Fd (du_mode 0 only; NULL: none): Du's bf16 copy too, rows ldf apart (the columns beside dy a
 * folded input-gradient product reads), so no separate fold pass follows.
 * omode: 1 O rows contiguous (osj == 1), 2 O columns contiguous (osm == 1), both with 16-byte
 * vector atomics; 0 scalar atomics. vecq: Q rows 16-byte aligned. duvec: Du rows 16-byte aligned.
 * wvec: Wd 16-byte aligned. */
template <int R, int NS, bool DU>
__global__ void __launch_bounds__(C2_LT, 2) k_lora_colred2(float *O, int osm, int osj, const __nv_bfloat16 *P, int ldp, int T,
                                                           int M, const float *Q, int ldq, float scale, int tpc, int vecq,
                                                           int omode, float *Du, int lddu, const float *Wd, float dscale,
                                                           int du_mode, int duvec, int wvec, const float *qscale,
                                                           const float *oscale, __nv_bfloat16 *Fd, int ldf) {
    constexpr int NT = R / 8;
    using S = C2Smem<R, NS, DU>;
    extern __shared__ __align__(128) unsigned char c2_smem[];
    __nv_bfloat16 *Ps = reinterpret_cast<__nv_bfloat16 *>(c2_smem + S::P_OFF);
    float *Qs = reinterpret_cast<float *>(c2_smem + S::Q_OFF);
    float *Rs = reinterpret_cast<float *>(c2_smem + S::RS_OFF);
    __nv_bfloat16 *Bs = reinterpret_cast<__nv_bfloat16 *>(c2_smem + S::B_OFF);
    float *Ds = reinterpret_cast<float *>(c2_smem + S::D_OFF);
    float *Os = reinterpret_cast<float *>(c2_smem); /* after the loop */
    const uint32_t bar0 = smem_u32(c2_smem + S::BAR_OFF);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int m0 = blockIdx.x * C2_MB, t0 = blockIdx.y * tpc, t1 = min(T, t0 + tpc);
    const int nch = tpc / C2_TC; /* the same in every CTA of a cluster */
    int cx = 1, rx = 0;
    if (DU) {
        cx = (int)c2_cluster_nctaid_x();
        rx = (int)c2_cluster_ctaid_x();
        if (tid == 0) {
            for (int b = 0; b < S::NDB; b++) {
                c2_mbar_init(bar0 + 8 * b, 1);                         /* full[b]: the local expect_tx + the bytes */
                c2_mbar_init(bar0 + 8 * (S::NDB + b), (uint32_t)cx); /* empty[b]: one arrive per owner */
            }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
        c2_cluster_arrive_release();
        c2_cluster_wait(); /* every CTA's mbarriers are ready before any st.async */
    }
    const int drows = C2_TC / cx; /* Du rows per owner (cx divides 64) */

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
        if (qscale && tid < C2_TC) {
            const bool ok = tb + tid < t1;
            cp_async4(smem_u32(Rs + st * C2_TC + tid), ok ? (const void *)(qscale + tb + tid) : (const void *)qscale, ok);
        }
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
    if (DU) { /* this CTA's rows of Wd as bf16 [j][m]; zero past M. Loads first, then the stores. */
        if (wvec) {
            constexpr int NV = C2_MB * R / 4 / C2_LT, NB = NV <= 8 ? NV : NV % 8 == 0 ? 8 : NV % 4 == 0 ? 4 : 1;
#pragma unroll
            for (int b = 0; b < NV; b += NB) {
                float4 v[NB];
#pragma unroll
                for (int i = 0; i < NB; i++) {
                    const int idx = tid + (b + i) * C2_LT, mm = idx / (R / 4), j = (idx % (R / 4)) * 4;
                    v[i] = m0 + mm < M ? __ldg(reinterpret_cast<const float4 *>(Wd + (size_t)(m0 + mm) * R + j)) : make_float4(0.f, 0.f, 0.f, 0.f);
                }
#pragma unroll
                for (int i = 0; i < NB; i++) {
                    const int idx = tid + (b + i) * C2_LT, mm = idx / (R / 4), j = (idx % (R / 4)) * 4;
                    Bs[(j + 0) * S::BP + mm] = __float2bfloat16_rn(v[i].x);
                    Bs[(j + 1) * S::BP + mm] = __float2bfloat16_rn(v[i].y);
                    Bs[(j + 2) * S::BP + mm] = __float2bfloat16_rn(v[i].z);
                    Bs[(j + 3) * S::BP + mm] = __float2bfloat16_rn(v[i].w);
                }
            }
        } else {
#pragma unroll 8
            for (int idx = tid; idx < C2_MB * R; idx += C2_LT) {
                const int mm = idx / R, j = idx % R;
                Bs[j * S::BP + mm] = __float2bfloat16_rn(m0 + mm < M ? __ldg(Wd + (size_t)(m0 + mm) * R + j) : 0.0f);
            }
        }
    }

    /* Du of chunk c (buffer c & 1): this CTA's rows, summed over the cx senders */
    auto du_reduce = [&](int c) {
        const int b = c % S::NDB;
        c2_mbar_wait(bar0 + 8 * b, (uint32_t)((c / S::NDB) & 1));
        const float *src = Ds + b * (C2_TC * R);
        const int tb = t0 + c * C2_TC + rx * drows;
        for (int idx = tid; idx < drows * (R / 4); idx += C2_LT) {
            const int lr = idx / (R / 4), j = (idx % (R / 4)) * 4;
            float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int x = 0; x < cx; x++) {
                const float4 v = *reinterpret_cast<const float4 *>(src + (x * drows + lr) * R + j);
                s.x += v.x;
                s.y += v.y;
                s.z += v.z;
                s.w += v.w;
            }
            const int t = tb + lr;
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
                if (Fd) { /* the bf16 copy: 4-byte aligned pairs (ldf and the fold column are even) */
                    __nv_bfloat162 *f = reinterpret_cast<__nv_bfloat162 *>(Fd + (size_t)t * ldf + j);
                    f[0] = __floats2bfloat162_rn(s.x, s.y);
                    f[1] = __floats2bfloat162_rn(s.z, s.w);
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
        __syncthreads(); /* chunk ch is in; stage (ch-1)%NS is free; Du chunk ch-2 was read (reduced) */
        if (DU && ch >= 2 && tid < cx) /* tell sender tid that its slot of buffer (ch-2) % NDB here is free */
            asm volatile("mbarrier.arrive.relaxed.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(
                             c2_mapa(bar0 + 8 * (S::NDB + (ch - 2) % S::NDB), (uint32_t)tid))
                         : "memory");
        if (ch + NS - 1 < nch) issue(ch + NS - 1);
        cp_async_commit();
        const int st = ch % NS;
        const __nv_bfloat16 *ps = Ps + st * (C2_TC * C2_MB);
        const float *qs = Qs + st * (C2_TC * S::QP);
        const float *rs = Rs + st * C2_TC;
#pragma unroll
        for (int ks = 0; ks < C2_TC / 16; ks++) {
            const int t0r = ks * 16 + tq * 2; /* the token rows of this thread's B fragments: +0, +1, +8, +9 */
            float s0 = 1.0f, s1 = 1.0f, s8 = 1.0f, s9 = 1.0f;
            if (qscale) s0 = rs[t0r], s1 = rs[t0r + 1], s8 = rs[t0r + 8], s9 = rs[t0r + 9];
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
                const uint32_t b0 = pack_bf16(q[0] * s0, q[S::QP] * s1);
                const uint32_t b1 = pack_bf16(q[8 * S::QP] * s8, q[9 * S::QP] * s9);
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
            const int b = ch % S::NDB;
            if (ch >= S::NDB) c2_mbar_wait(bar0 + 8 * (S::NDB + b), (uint32_t)((ch / S::NDB - 1) & 1)); /* owners read chunk ch-NDB */
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = warp * 16 + g + h * 8, own = row / drows, lr = row - own * drows;
                const uint32_t dst = c2_mapa(smem_u32(Ds + b * (C2_TC * R) + (rx * drows + lr) * R), (uint32_t)own);
                const uint32_t rbar = c2_mapa(bar0 + 8 * b, (uint32_t)own);
#pragma unroll
                for (int n = 0; n < NT; n++) c2_st_async2(dst + (n * 8 + tq * 2) * 4, dacc[n][2 * h], dacc[n][2 * h + 1], rbar);
            }
            if (tid == 0) c2_mbar_expect_tx(bar0 + 8 * b, C2_TC * R * 4); /* cx senders x drows rows x R */
            if (ch >= 1) du_reduce(ch - 1);
        }
    }
    if (DU) {
        if (nch >= 1) du_reduce(nch - 1);
        c2_cluster_arrive_release();
        c2_cluster_wait(); /* all pushes and remote arrives landed: no traffic into a CTA that has left */
    }
    cp_async_wait<0>();
    __syncthreads(); /* the ring is free */
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = warp * 32 + m * 16 + g + h * 8;
                const float sc = oscale && m0 + row < M ? scale * oscale[m0 + row] : scale;
                *reinterpret_cast<float2 *>(Os + row * S::OP + n * 8 + tq * 2) =
                    make_float2(acc[m][n][2 * h] * sc, acc[m][n][2 * h + 1] * sc);
            }
    __syncthreads();
    if (omode == 1) { /* osj == 1: 4 consecutive j */
        for (int idx = tid; idx < C2_MB * (R / 4); idx += C2_LT) {
            const int row = idx / (R / 4), j = (idx % (R / 4)) * 4, mm = m0 + row;
            if (mm < M) c2_red4(O + (size_t)mm * osm + j, *reinterpret_cast<const float4 *>(Os + row * S::OP + j));
        }
    } else if (omode == 2) { /* osm == 1: 4 consecutive m (M % 4 == 0: all four valid) */
        for (int idx = tid; idx < (C2_MB / 4) * R; idx += C2_LT) {
            const int j = idx / (C2_MB / 4), row = (idx % (C2_MB / 4)) * 4, mm = m0 + row;
            const float *o = Os + row * S::OP + j;
            if (mm < M) c2_red4(O + mm + (size_t)j * osj, make_float4(o[0], o[S::OP], o[2 * S::OP], o[3 * S::OP]));
        }
    } else {
        for (int idx = tid; idx < C2_MB * R; idx += C2_LT) {
            const int row = idx / R, j = idx % R, mm = m0 + row;
            if (mm < M) atomicAdd(O + (size_t)mm * osm + (size_t)j * osj, Os[row * S::OP + j]);
        }
    }
}

/* A launch configuration: clusters of cx CTAs along the columns (with Du: 1, 2, 4, 8 or 16);
 * per_sm > 0 caps the CTAs per SM the grid is sized for (0: as many as fit). */
struct Colred2Cfg {
    int cx, per_sm;
};

template <int R, int NS, bool DU>
cudaError_t colred2_launch(cudaStream_t st, int sm_count, Colred2Cfg cfg, float *O, int osm, int osj,
                           const __nv_bfloat16 *P, int ldp, int T, int M, const float *Q, int ldq, float scale, float *Du,
                           int lddu, const float *Wd, float dscale, const float *qscale, const float *oscale,
                           __nv_bfloat16 *Fd, int ldf, bool *folded) {
    using S = C2Smem<R, NS, DU>;
    auto kern = k_lora_colred2<R, NS, DU>;
    static bool attr_set = false;
    static int cap_cache[5]; /* [log2 cx]: resident CTAs, 0 = not yet asked */
    cudaError_t e;
    if (!attr_set) {
        if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, S::BYTES)) != cudaSuccess) return e;
        if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1)) != cudaSuccess) return e;
        memset(cap_cache, 0, sizeof cap_cache);
        attr_set = true;
    }
    if (T <= 0 || M <= 0) return cudaSuccess;
    /* with Du at least 2: st.async into the CTA's own shared memory needs a cluster of two or more
     * (compute-sanitizer flags a cluster of one); a CTA past M adds zeros */
    const int cx = DU ? (cfg.cx < 2 ? 2 : cfg.cx) : 1;
    int lx = 0;
    while ((1 << lx) < cx) lx++;
    if ((1 << lx) != cx || lx > 4) return cudaErrorInvalidValue;
    const int gx = (int)((M + C2_MB * cx - 1) / (C2_MB * cx)) * cx;
    int cap = cap_cache[lx];
    if (cap == 0) {
        ClusterLaunch q(dim3(cx * 64), C2_LT, S::BYTES, 0, cx);
        int ncl = 0;
        if (cudaOccupancyMaxActiveClusters(&ncl, (void *)kern, &q.lc) != cudaSuccess || ncl <= 0) {
            (void)cudaGetLastError();
            ncl = (sm_count * 2) / cx;
        }
        cap = cap_cache[lx] = ncl * cx;
    }
    if (cfg.per_sm > 0 && cap > cfg.per_sm * sm_count) cap = cfg.per_sm * sm_count;
    int gy = cap / gx;
    if (gy < 1) gy = 1;
    int tpc = (T + gy - 1) / gy;
    tpc = (tpc + C2_TC - 1) / C2_TC * C2_TC;
    gy = (T + tpc - 1) / tpc;

    const int du_mode = (DU && gx > cx) ? 1 : 0;
    /* Du's bf16 copy in the kernel where its rows are final there (plain stores) */
    if (!DU || du_mode != 0 || ((uintptr_t)Fd & 3u) || ldf % 2) Fd = NULL;
    if (folded) *folded = Fd != NULL;
    if (DU && du_mode == 1)
        if ((e = cudaMemset2DAsync(Du, (size_t)lddu * 4, 0, (size_t)R * 4, (size_t)T, st)) != cudaSuccess) return e;
    const int vecq = ((uintptr_t)Q & 15u) == 0 && ldq % 4 == 0;
    const bool o16 = ((uintptr_t)O & 15u) == 0;
    const int omode = (osj == 1 && o16 && osm % 4 == 0) ? 1 : (osm == 1 && o16 && osj % 4 == 0 && M % 4 == 0) ? 2 : 0;
    const int duvec = DU && ((uintptr_t)Du & 15u) == 0 && lddu % 4 == 0;
    const int wvec = DU && ((uintptr_t)Wd & 15u) == 0;

    ClusterLaunch l(dim3(gx, gy), C2_LT, S::BYTES, st, cx);
    return cudaLaunchKernelEx(&l.lc, kern, O, osm, osj, P, ldp, T, M, Q, ldq, scale, tpc, vecq, omode, Du, lddu, Wd,
                              dscale, du_mode, duvec, wvec, qscale, oscale, Fd, ldf);
}

/* The default configuration (measured on an H100 at the shapes of the checker below). With Du:
 * when M <= 1024 a cluster covers M (cx the power of two >= M / 128; Du stored, no memset);
 * otherwise cx = 2 (Du added by atomics after a memset): 4, 8 and 16 measured 3-25% slower at
 * M >= 2048. Without Du: no cluster, one CTA per SM. */
inline Colred2Cfg colred2_default_cfg(int T, int M, bool du) {
    (void)T;
    const int gx0 = (M + C2_MB - 1) / C2_MB;
    int cx = 1;
    if (du) {
        cx = 2;
        if (gx0 <= 8)
            while (cx < gx0) cx *= 2;
    }
    return Colred2Cfg{cx, du ? 0 : 1};
}

/* qscale (per token, f32 [T]) multiplies Q's rows and oscale (per column of P, f32 [M]) O's rows:
 * O(m, j) += scale * oscale[m] * sum_t P[t, m] qscale[t] Q[t, j] — an RMSNorm's rstd and weight,
 * so that P may be the norm's input (lora_bwd_x's dA from the un-normed rows). NULL: 1. */
template <int R>
cudaError_t colred_v2_cfg(cudaStream_t st, int sm_count, Colred2Cfg cfg, float *O, int osm, int osj,
                          const __nv_bfloat16 *P, int ldp, int T, int M, const float *Q, int ldq, float scale, float *Du,
                          int lddu, const float *Wd, float dscale, const float *qscale = NULL, const float *oscale = NULL,
                          __nv_bfloat16 *Fd = NULL, int ldf = 0, bool *folded = NULL) {
    if (Du)
        return colred2_launch<R, c2_stages<R, true>(), true>(st, sm_count, cfg, O, osm, osj, P, ldp, T, M, Q, ldq, scale,
                                                             Du, lddu, Wd, dscale, qscale, oscale, Fd, ldf, folded);
    return colred2_launch<R, c2_stages<R, false>(), false>(st, sm_count, cfg, O, osm, osj, P, ldp, T, M, Q, ldq, scale,
                                                           Du, lddu, Wd, dscale, qscale, oscale, NULL, 0, folded);
}

/* Drop-in launcher (errors: as any launch, through cudaGetLastError). */
template <int R>
void colred_v2(cudaStream_t st, int sm_count, float *O, int osm, int osj, const __nv_bfloat16 *P, int ldp, int T, int M,
               const float *Q, int ldq, float scale, float *Du, int lddu, const float *Wd, float dscale) {
    (void)colred_v2_cfg<R>(st, sm_count, colred2_default_cfg(T, M, Du != NULL), O, osm, osj, P, ldp, T, M, Q, ldq, scale,
                           Du, lddu, Wd, dscale);
}

} /* namespace */

#endif
