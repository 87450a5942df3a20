/* cuda_lora.cu — LoRA products as three memory-bound tensor-core kernels (mma.sync m16n8k16,
 * bf16 operands, fp32 accumulation) that read the f32 masters A and B directly: each CTA stages
 * its slice of A or B into shared memory as bf16, so no separate cast kernel runs and no bf16
 * copy of the parameters is kept.
 *
 * Every LoRA product has one side of width r (the rank), so each is a pass over one wide operand
 * (x, y, dy or dx) at memory speed:
 *   down:    O[t, j]  = scale * sum_k P[t, k] W(j, k)       u = x A^T,  du = s dy B
 *   expand:  Y[t, n] = Res[t, n] + scale * sum_j Q[t, j] W(n, j)   y = res + s u B^T,  dx = res + du A
 *   colred:  O(m, j) += scale * sum_t P[t, m] Q[t, j]       dB += s dy^T u,  dA += du^T x
 *            (for dB fused with down's du = s dy B: one pass over dy)
 * P, Y are bf16 [T, width] rows; Q is f32 [T, r]; W(a, b) = W[a * sa + b * sb] is f32 (either
 * layout of A [r, in] or B [out, r]); O is f32.
 *
 * Fragment layouts. The reduction index of a product may be permuted freely as long as both
 * operands use the same permutation, so `down` loads 8 consecutive columns of P (16 bytes) per
 * thread and feeds them to two k-steps, with W's slice read the same way; `expand` permutes the
 * output columns so that each thread owns 8 consecutive columns of Y (16-byte read-modify-write);
 * `colred` reduces over tokens and transposes its P tile with ldmatrix.trans from shared memory.
 *
 * The narrow side has width R = n * r: one projection (R = r), or a group of n projections
 * that read the same input (q/k/v, gate/up), whose A matrices form one [R, in] block and whose
 * u / du are column blocks of one [T, R] tensor (row pitch ld). expand starts from a residual
 * (Y = Res + ..., Res NULL: from zero, Res == Y: in place), so the frozen product runs after it
 * and accumulates, and no pass reads Y only to add to it.
 *
 * Supported: R in {8, 16, 24, 32, 48, 64, 96}, widths a multiple of 8, P/Y/Res 16-byte aligned,
 * Q/O (u, du) 8-byte aligned with an even pitch; otherwise the caller falls back to cuBLASLt. */
#include "cuda_internal.cuh"
#include "cuda_ptx.cuh"
#include "cuda_lora_colred2.cuh"

#include <cooperative_groups.h>
namespace cg = cooperative_groups;

namespace {

__device__ __forceinline__ uint4 ldg16(const bf16 *p) { return __ldg(reinterpret_cast<const uint4 *>(p)); }

__device__ __forceinline__ void atomic_add2(float *p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2 *>(p), make_float2(a, b));
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}

constexpr int LT = 128; /* threads per CTA (4 warps) for all three kernels */

/* ------------------------------------------------------------------------------------------ */
/* down: O[T, R] (row pitch ldo; =, or += by atomics when the K range is split: the caller zeroes
 * O's R columns first)                                                                         */

constexpr int DSC = 128;            /* columns of W staged per round */
constexpr int DPITCH = DSC + 32;    /* bf16 per staged row: 320 bytes, 64 mod 128 (no bank conflicts) */

template <int R>
__global__ void __launch_bounds__(LT) k_lora_down(float *O, int ldo, const bf16 *P, int ldp, int T, int K, const float *W,
                                                  int wsj, int wsk, float scale, int kc, int atomic, int vecw) {
    constexpr int NT = R / 8;
    __shared__ __align__(16) bf16 Ws[R][DPITCH];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int rbase = blockIdx.x * 128 + warp * 32; /* a warp: two 16-row tiles */
    const int kb = blockIdx.y * kc, ke = min(K, kb + kc);
    float acc[2][NT][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;

    for (int k0 = kb; k0 < ke; k0 += DSC) {
        /* this round's P fragments first, so their latency overlaps the staging of W */
        uint4 xr[DSC / 32][4];
#pragma unroll
        for (int s = 0; s < DSC / 32; s++) {
            const int col = k0 + s * 32 + tq * 8;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = rbase + (i >> 1) * 16 + g + (i & 1) * 8;
                xr[s][i] = (row < T && col < ke) ? ldg16(P + (size_t)row * ldp + col) : make_uint4(0, 0, 0, 0);
            }
        }
        __syncthreads(); /* the previous round's reads of Ws are done */
        if (vecw && wsk == 1) { /* rows of A: 16-byte loads along k */
            for (int idx = tid; idx < R * DSC / 4; idx += LT) {
                const int j = idx / (DSC / 4), k = (idx % (DSC / 4)) * 4, kk = k0 + k;
                const float4 v = kk < ke ? *reinterpret_cast<const float4 *>(W + (size_t)j * wsj + kk) : make_float4(0, 0, 0, 0);
                uint2 u2;
                u2.x = pack_bf16(v.x, v.y);
                u2.y = pack_bf16(v.z, v.w);
                *reinterpret_cast<uint2 *>(&Ws[j][k]) = u2;
            }
        } else if (vecw && wsj == 1) { /* W(j, k) = B[k, j]: 16-byte loads along a row of B */
            for (int idx = tid; idx < R * DSC / 4; idx += LT) {
                const int k = idx / (R / 4), j = (idx % (R / 4)) * 4, kk = k0 + k;
                const float4 v = kk < ke ? *reinterpret_cast<const float4 *>(W + (size_t)kk * wsk + j) : make_float4(0, 0, 0, 0);
                Ws[j][k] = __float2bfloat16_rn(v.x);
                Ws[j + 1][k] = __float2bfloat16_rn(v.y);
                Ws[j + 2][k] = __float2bfloat16_rn(v.z);
                Ws[j + 3][k] = __float2bfloat16_rn(v.w);
            }
        } else if (wsk == 1) {
            for (int idx = tid; idx < R * DSC; idx += LT) {
                const int j = idx / DSC, k = idx % DSC, kk = k0 + k;
                Ws[j][k] = __float2bfloat16_rn(kk < ke ? W[(size_t)j * wsj + kk] : 0.0f);
            }
        } else {
            for (int idx = tid; idx < R * DSC; idx += LT) {
                const int j = idx % R, k = idx / R, kk = k0 + k;
                Ws[j][k] = __float2bfloat16_rn(kk < ke ? W[(size_t)j * wsj + (size_t)kk * wsk] : 0.0f);
            }
        }
        __syncthreads();
#pragma unroll
        for (int s = 0; s < DSC / 32; s++) {
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const uint4 w = *reinterpret_cast<const uint4 *>(&Ws[n * 8 + g][s * 32 + tq * 8]);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    const uint4 xa = xr[s][m * 2], xb = xr[s][m * 2 + 1];
                    /* columns 8tq..8tq+3 as logical k {2tq,2tq+1} and {2tq+8,2tq+9}; then 8tq+4..8tq+7 */
                    mma16816(acc[m][n], xa.x, xb.x, xa.y, xb.y, w.x, w.y);
                    mma16816(acc[m][n], xa.z, xb.z, xa.w, xb.w, w.z, w.w);
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int col = n * 8 + tq * 2;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = rbase + m * 16 + g + h * 8;
                if (row >= T) continue;
                float *o = O + (size_t)row * ldo + col;
                const float a = acc[m][n][2 * h] * scale, b = acc[m][n][2 * h + 1] * scale;
                if (atomic) atomic_add2(o, a, b);
                else *reinterpret_cast<float2 *>(o) = make_float2(a, b);
            }
        }
}

/* ------------------------------------------------------------------------------------------ */
/* down, version 2 (u = x A^T with A [R, K] row-major f32; R in 16..64): the K range is split over
 * a thread-block cluster (up to 8 CTAs along y) whose partial sums meet in distributed shared
 * memory, so nothing is zeroed first and no atomics run; the CTA of each cluster rank writes its
 * share of the rows once, as f32 u and, folded, as bf16 beside x. A CTA holds 64 rows; chunks of
 * 64 columns of x (bf16, 128-byte rows swizzled for ldmatrix) and of A (f32, cp.async as is) pass
 * through a D2_NS-stage cp.async pipeline; warp w reduces the chunk's columns 16w..16w+15 for all
 * 64 rows (A is read from shared memory once per chunk), the four warps' sums are added at the
 * end. The first version (k_lora_down above: one round of registers per 128 columns, W restaged
 * through registers, K split by atomics into a zeroed u, the fold a separate kernel) remains for
 * other widths and under US_CUDA_LORA_DOWN=1. */

constexpr int D2_ROWS = 64, D2_KC = 64, D2_NS = 4, D2_APITCH = D2_KC + 8; /* A rows: 72 floats, conflict-free float2 */

template <int R>
struct Down2Smem {
    static constexpr int RED = R + 4; /* f32 per row of the warps' partial sums */
    static constexpr int PIPE = D2_NS * (D2_ROWS * D2_KC * 2 + R * D2_APITCH * 4);
    static constexpr int BYTES = PIPE > 4 * D2_ROWS * RED * 4 ? PIPE : 4 * D2_ROWS * RED * 4;
};

__device__ __forceinline__ int swz64(int row, int col) { /* 8 chunks of 8 bf16 per 128-byte row */
    return row * D2_KC + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

template <int R>
__global__ void __launch_bounds__(LT) k_lora_down2(float *O, int ldo, const bf16 *P, int ldp, int T, int K, const float *W,
                                                   float scale, int kslice, bf16 *fold) {
    constexpr int NT = R / 8;
    using S = Down2Smem<R>;
    extern __shared__ __align__(128) unsigned char down2_smem[];
    bf16 *xs = reinterpret_cast<bf16 *>(down2_smem);                                       /* [NS][64 x 64] */
    float *as = reinterpret_cast<float *>(down2_smem + D2_NS * D2_ROWS * D2_KC * 2);       /* [NS][R x 72] */
    float *red = reinterpret_cast<float *>(down2_smem);                                    /* after the loop: [4][64][RED] */
    cg::cluster_group cluster = cg::this_cluster();
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int row0 = blockIdx.x * D2_ROWS, kb = blockIdx.y * kslice, ke = min(K, kb + kslice);
    const int nch = ke > kb ? (ke - kb + D2_KC - 1) / D2_KC : 0;

    auto issue = [&](int ch) {
        const int st = ch % D2_NS, k0 = kb + ch * D2_KC;
        bf16 *xst = xs + st * D2_ROWS * D2_KC;
#pragma unroll
        for (int i = 0; i < D2_ROWS * D2_KC / 8 / LT; i++) { /* 4 pieces of 16 bytes per thread */
            const int c = tid + i * LT, r = c >> 3, cc = (c & 7) * 8;
            const bool ok = row0 + r < T && k0 + cc < ke;
            cp_async16(smem_u32(&xst[swz64(r, cc)]), ok ? (const void *)(P + (size_t)(row0 + r) * ldp + k0 + cc) : (const void *)P, ok);
        }
        float *ast = as + st * R * D2_APITCH;
#pragma unroll
        for (int i = 0; i < R * D2_KC / 4 / LT; i++) {
            const int c = tid + i * LT, j = c / (D2_KC / 4), kk = (c % (D2_KC / 4)) * 4;
            const bool ok = k0 + kk < ke;
            cp_async16(smem_u32(&ast[j * D2_APITCH + kk]), ok ? (const void *)(W + (size_t)j * K + k0 + kk) : (const void *)W, ok);
        }
    };

    float acc[4][NT][4];
#pragma unroll
    for (int m = 0; m < 4; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;

#pragma unroll
    for (int s = 0; s < D2_NS - 1; s++) {
        if (s < nch) issue(s);
        cp_async_commit();
    }
    for (int ch = 0; ch < nch; ch++) {
        cp_async_wait<D2_NS - 2>();
        __syncthreads(); /* chunk ch landed for every thread; chunk ch-1's stage is free */
        if (ch + D2_NS - 1 < nch) issue(ch + D2_NS - 1);
        cp_async_commit();
        const int st = ch % D2_NS;
        const bf16 *xst = xs + st * D2_ROWS * D2_KC;
        const float *ast = as + st * R * D2_APITCH;
        const int kk = warp * 16;
        uint32_t b[NT][2];
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const float2 w0 = *reinterpret_cast<const float2 *>(&ast[(n * 8 + g) * D2_APITCH + kk + tq * 2]);
            const float2 w1 = *reinterpret_cast<const float2 *>(&ast[(n * 8 + g) * D2_APITCH + kk + tq * 2 + 8]);
            b[n][0] = pack_bf16(w0.x, w0.y);
            b[n][1] = pack_bf16(w1.x, w1.y);
        }
#pragma unroll
        for (int m = 0; m < 4; m++) {
            uint32_t a0, a1, a2, a3;
            const int r = m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = kk + (lane >> 4) * 8;
            ldsm_x4(a0, a1, a2, a3, smem_u32(&xst[swz64(r, cc)]));
#pragma unroll
            for (int n = 0; n < NT; n++) mma16816(acc[m][n], a0, a1, a2, a3, b[n][0], b[n][1]);
        }
    }
    cp_async_wait<0>();
    __syncthreads(); /* the pipeline's buffers become the reduction's */
    constexpr int RED = S::RED;
#pragma unroll
    for (int m = 0; m < 4; m++)
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                *reinterpret_cast<float2 *>(&red[(warp * D2_ROWS + m * 16 + g + h * 8) * RED + n * 8 + tq * 2]) =
                    make_float2(acc[m][n][2 * h], acc[m][n][2 * h + 1]);
    __syncthreads();
    for (int i = tid; i < D2_ROWS * R / 2; i += LT) { /* the CTA's sum into warp 0's rows */
        const int r = i / (R / 2), j = (i % (R / 2)) * 2;
        float2 v = *reinterpret_cast<float2 *>(&red[r * RED + j]);
#pragma unroll
        for (int w = 1; w < 4; w++) {
            const float2 o = *reinterpret_cast<float2 *>(&red[(w * D2_ROWS + r) * RED + j]);
            v.x += o.x, v.y += o.y;
        }
        *reinterpret_cast<float2 *>(&red[r * RED + j]) = v;
    }
    cluster.sync(); /* every CTA's partial sums are in place */
    const int cs = (int)cluster.num_blocks(), rank = (int)cluster.block_rank();
    const int per = (D2_ROWS + cs - 1) / cs, ra = rank * per, rb = min(D2_ROWS, ra + per);
    for (int i = tid; i < (rb - ra) * (R / 2); i += LT) {
        const int r = ra + i / (R / 2), j = (i % (R / 2)) * 2, t = row0 + r;
        float2 v = make_float2(0.0f, 0.0f);
        for (int q = 0; q < cs; q++) {
            const float *rp = cluster.map_shared_rank(red, q);
            const float2 o = *reinterpret_cast<const float2 *>(&rp[r * RED + j]);
            v.x += o.x, v.y += o.y;
        }
        if (t < T) {
            v.x *= scale, v.y *= scale;
            *reinterpret_cast<float2 *>(O + (size_t)t * ldo + j) = v;
            if (fold) *reinterpret_cast<uint32_t *>(fold + (size_t)t * ldp + j) = pack_bf16(v.x, v.y);
        }
    }
    cluster.sync(); /* no CTA leaves while another still reads its shared memory */
}

/* ------------------------------------------------------------------------------------------ */
/* expand: Y[T, N] = Res + scale * Q[T, R] W^T, W(n, j) = W[n * wsn + j * wsj], Q row pitch ldq  */

constexpr int ENC = 128; /* output columns per CTA */

template <int R>
__global__ void __launch_bounds__(LT) k_lora_expand(bf16 *Y, const bf16 *Res, int T, int N, const float *Q, int ldq,
                                                    const float *W, int wsn, int wsj, float scale, int vecw) {
    constexpr int KS = (R + 15) / 16, RP = KS * 16, PITCH = RP + 2; /* odd word pitch: <= 2-way conflicts */
    __shared__ __align__(16) bf16 Ws[ENC][PITCH];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int n0 = blockIdx.y * ENC, rbase = blockIdx.x * 128 + warp * 32;
    constexpr int PAD = RP > R ? RP - R : 1; /* zero columns R..RP-1 (r = 8) */
    if (RP > R)
        for (int idx = tid; idx < ENC * PAD; idx += LT) Ws[idx / PAD][R + idx % PAD] = __float2bfloat16_rn(0.0f);
    if (vecw && wsj == 1) { /* rows of B: 16-byte loads along j */
        for (int idx = tid; idx < ENC * R / 4; idx += LT) {
            const int n = idx / (R / 4), j = (idx % (R / 4)) * 4;
            const float4 v = n0 + n < N ? *reinterpret_cast<const float4 *>(W + (size_t)(n0 + n) * wsn + j) : make_float4(0, 0, 0, 0);
            *reinterpret_cast<uint32_t *>(&Ws[n][j]) = pack_bf16(v.x, v.y);
            *reinterpret_cast<uint32_t *>(&Ws[n][j + 2]) = pack_bf16(v.z, v.w);
        }
    } else if (vecw && wsn == 1) { /* W(n, j) = A[j, n]: 16-byte loads along a row of A */
        for (int idx = tid; idx < ENC / 4 * R; idx += LT) {
            const int j = idx / (ENC / 4), n = (idx % (ENC / 4)) * 4;
            const float4 v = n0 + n < N ? *reinterpret_cast<const float4 *>(W + (size_t)j * wsj + n0 + n) : make_float4(0, 0, 0, 0);
            Ws[n][j] = __float2bfloat16_rn(v.x);
            Ws[n + 1][j] = __float2bfloat16_rn(v.y);
            Ws[n + 2][j] = __float2bfloat16_rn(v.z);
            Ws[n + 3][j] = __float2bfloat16_rn(v.w);
        }
    } else if (wsj == 1) {
        for (int idx = tid; idx < ENC * RP; idx += LT) {
            const int n = idx / RP, j = idx % RP;
            Ws[n][j] = __float2bfloat16_rn(n0 + n < N && j < R ? W[(size_t)(n0 + n) * wsn + j] : 0.0f);
        }
    } else {
        for (int idx = tid; idx < ENC * RP; idx += LT) {
            const int n = idx % ENC, j = idx / ENC;
            Ws[n][j] = __float2bfloat16_rn(n0 + n < N && j < R ? W[(size_t)(n0 + n) * wsn + (size_t)j * wsj] : 0.0f);
        }
    }
    /* A fragments: Q rows (f32) scaled and rounded to bf16, zero past T and past R */
    uint32_t af[2][KS][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int row = rbase + m * 16 + g + (i & 1) * 8, col = ks * 16 + tq * 2 + (i >> 1) * 8;
                float2 q = make_float2(0.0f, 0.0f);
                if (row < T && col < R) q = *reinterpret_cast<const float2 *>(Q + (size_t)row * ldq + col);
                af[m][ks][i] = pack_bf16(q.x * scale, q.y * scale);
            }
    __syncthreads();
    for (int c32 = 0; c32 < ENC; c32 += 32) {
        const int colg = n0 + c32;
        if (colg >= N) break;
        /* B fragments of the four 8-column tiles: tile j4's logical column n_l is physical column
         * 8*(n_l/2) + 2*j4 + n_l%2, so a thread's outputs are columns 8tq..8tq+7 */
        uint32_t bf[4][KS][2];
#pragma unroll
        for (int j4 = 0; j4 < 4; j4++) {
            const int nl = c32 + 8 * (g >> 1) + 2 * j4 + (g & 1);
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                bf[j4][ks][0] = *reinterpret_cast<const uint32_t *>(&Ws[nl][ks * 16 + tq * 2]);
                bf[j4][ks][1] = *reinterpret_cast<const uint32_t *>(&Ws[nl][ks * 16 + tq * 2 + 8]);
            }
        }
        const int col = colg + tq * 8;
        const bool cok = col < N;
#pragma unroll
        for (int m = 0; m < 2; m++) {
            const int ra = rbase + m * 16 + g, rb = ra + 8;
            uint4 ya = make_uint4(0, 0, 0, 0), yb = ya;
            if (Res && cok && ra < T) ya = *reinterpret_cast<const uint4 *>(Res + (size_t)ra * N + col);
            if (Res && cok && rb < T) yb = *reinterpret_cast<const uint4 *>(Res + (size_t)rb * N + col);
            float c[4][4];
#pragma unroll
            for (int j4 = 0; j4 < 4; j4++) {
                c[j4][0] = c[j4][1] = c[j4][2] = c[j4][3] = 0.0f;
#pragma unroll
                for (int ks = 0; ks < KS; ks++)
                    mma16816(c[j4], af[m][ks][0], af[m][ks][1], af[m][ks][2], af[m][ks][3], bf[j4][ks][0], bf[j4][ks][1]);
            }
            __nv_bfloat162 *ha = reinterpret_cast<__nv_bfloat162 *>(&ya), *hb = reinterpret_cast<__nv_bfloat162 *>(&yb);
#pragma unroll
            for (int j4 = 0; j4 < 4; j4++) {
                float2 fa = __bfloat1622float2(ha[j4]), fb = __bfloat1622float2(hb[j4]);
                ha[j4] = __floats2bfloat162_rn(fa.x + c[j4][0], fa.y + c[j4][1]);
                hb[j4] = __floats2bfloat162_rn(fb.x + c[j4][2], fb.y + c[j4][3]);
            }
            if (cok && ra < T) *reinterpret_cast<uint4 *>(Y + (size_t)ra * N + col) = ya;
            if (cok && rb < T) *reinterpret_cast<uint4 *>(Y + (size_t)rb * N + col) = yb;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* colred: O(m, j) += scale * sum_t P[t, m] Q[t, j] over this CTA's token range (atomics)       */

constexpr int CTC = 64, CMB = 128; /* tokens per stage, columns of P per CTA */

template <int R>
struct ColredSmem {
    static constexpr int QP = CTC + 8; /* bf16 per Qs row: 36 words, 4 mod 32 (conflict-free b loads) */
    static constexpr int BP = CMB + 8; /* bf16 per Bs row (fused down) */
    bf16 P[2][CTC * CMB];
    bf16 Bs[R][BP]; /* fused down: W rows m0..m0+127 as [j][m] */
    bf16 Q[2][R][QP];
};

__device__ __forceinline__ int swz128(int row, int col) { /* 16 chunks of 8 per row, XOR by row */
    return row * CMB + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

/* Fused down (lora_bwd_dy: du and dB from one pass over dy): with Du set, each staged P tile
 * also feeds Du[t, j] += dscale * sum_{m in this CTA's columns} P[t, m] W[m, j] (W f32 [M, R],
 * added by atomics into a Du zeroed first), a warp per 16 tokens of the tile. */
template <int R>
__global__ void __launch_bounds__(LT) k_lora_colred(float *O, int osm, int osj, const bf16 *P, int ldp, int T, int M,
                                                    const float *Q, int ldq, float scale, int tpc, int vec2, int vecq,
                                                    float *Du, int lddu, const float *Wd, float dscale) {
    constexpr int NT = R / 8;
    using S = ColredSmem<R>;
    extern __shared__ __align__(128) unsigned char colred_smem[]; /* dynamic: over 48 KB from R = 64 */
    S &sm = *reinterpret_cast<S *>(colred_smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int m0 = blockIdx.x * CMB, t0 = blockIdx.y * tpc, t1 = min(T, t0 + tpc);
    const int nch = (t1 - t0 + CTC - 1) / CTC;
    if (Du) /* this CTA's rows of W, as bf16 [j][m]; zero past M */
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
                /* matrices: (t 0-7, m 0-7), (t 0-7, m 8-15), (t 8-15, m 0-7), (t 8-15, m 8-15) */
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
        if (Du) { /* du rows of this tile: warp w owns tokens 16w..16w+15, reduced over the 128 columns */
            float dacc[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++) dacc[n][0] = dacc[n][1] = dacc[n][2] = dacc[n][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < CMB / 16; ks++) {
                uint32_t a0, a1, a2, a3; /* (t 0-7, m 0-7), (t 8-15, m 0-7), (t 0-7, m 8-15), (t 8-15, m 8-15) */
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
        __syncthreads(); /* this stage is free for the round after next */
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
                if (vec2) { /* osj == 1, O 8-byte aligned */
                    atomic_add2(o, a, b);
                } else {
                    atomicAdd(o, a);
                    atomicAdd(o + osj, b);
                }
            }
        }
}

/* ------------------------------------------------------------------------------------------ */
/* launchers                                                                                    */

/* CTAs a reduction over tokens aims for: 2 per SM (4 and 8 measured slower at every benchmark
 * adapter shape, commit 785f782's US_CUDA_LORA_CTAS) */
int target_ctas(cuda_impl *c) { return 2 * c->sm_count; }

template <int R>
void down(cuda_impl *c, float *O, int ldo, const void *P, int ldp, int T, int K, const float *W, int wsj, int wsk,
          float scale) {
    const int gx = (int)ceil_div_u(T, 128);
    int gy = (int)ceil_div_u(target_ctas(c), gx);
    const int kmax = (int)ceil_div_u(K, DSC);
    if (gy > kmax) gy = kmax;
    if (gy < 1) gy = 1;
    int kc = (int)ceil_div_u(ceil_div_u(K, gy), DSC) * DSC;
    gy = (int)ceil_div_u(K, kc);
    if (gy > 1) CK(c, cudaMemset2DAsync(O, (size_t)ldo * 4, 0, (size_t)R * 4, (size_t)T, c->st));
    k_lora_down<R><<<dim3(gx, gy), LT, 0, c->st>>>(O, ldo, (const bf16 *)P, ldp, T, K, W, wsj, wsk, scale, kc, gy > 1,
                                                    aligned16(W) && (wsk == 1 ? wsj % 4 == 0 : wsk % 4 == 0));
    CK_LAUNCH(c);
}

/* version 2 of down (widths 16..64, A rows 16-byte aligned); false: the caller runs version 1 */
template <int R>
bool down2(cuda_impl *c, float *O, int ldo, const void *P, int ldp, int T, int K, const float *W, float scale,
           bool fold) {
    if (c->lora_down_v1 || R < 16 || R > 64 || !aligned16(W) || K % 4) return false;
    using S = Down2Smem<R>;
    static bool attr_set = false; /* per instance; one device per process */
    if (!attr_set) {
        CK(c, cudaFuncSetAttribute(k_lora_down2<R>, cudaFuncAttributeMaxDynamicSharedMemorySize, S::BYTES));
        attr_set = true;
    }
    const int gx = (int)ceil_div_u(T, D2_ROWS), nchunk = (int)ceil_div_u(K, D2_KC);
    /* one CTA per SM: at 2 per SM (more K splits) every benchmark adapter shape ran slower */
    int cs = (int)ceil_div_u(c->lora_down_ctas > 0 ? c->lora_down_ctas : c->sm_count, gx);
    cs = cs < 1 ? 1 : cs > 8 ? 8 : cs;
    if (cs > nchunk) cs = nchunk;
    const int kslice = (int)ceil_div_u(ceil_div_u(K, cs), D2_KC) * D2_KC;
    cs = (int)ceil_div_u(K, kslice);
    ClusterLaunch l(dim3(gx, cs), LT, S::BYTES, c->st, 1, cs);
    CK(c, cudaLaunchKernelEx(&l.lc, k_lora_down2<R>, O, ldo, (const bf16 *)P, ldp, T, K, W, scale, kslice,
                             fold ? (bf16 *)P + K : (bf16 *)NULL));
    CK_LAUNCH(c);
    return true;
}

template <int R>
void expand(cuda_impl *c, void *Y, const void *Res, int T, int N, const float *Q, int ldq, const float *W, int wsn,
            int wsj, float scale) {
    dim3 grid(ceil_div_u(T, 128), ceil_div_u(N, ENC));
    k_lora_expand<R><<<grid, LT, 0, c->st>>>((bf16 *)Y, (const bf16 *)Res, T, N, Q, ldq, W, wsn, wsj, scale,
                                              aligned16(W) && (wsj == 1 ? wsn % 4 == 0 : wsj % 4 == 0));
    CK_LAUNCH(c);
}

template <int R>
void colred(cuda_impl *c, float *O, int osm, int osj, const void *P, int ldp, int T, int M, const float *Q, int ldq,
            float scale,
            float *Du = NULL, int lddu = 0, const float *Wd = NULL, float dscale = 0.0f) {
    static bool attr_set = false; /* per instance; one device per process */
    if (!attr_set) {
        CK(c, cudaFuncSetAttribute(k_lora_colred<R>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sizeof(ColredSmem<R>)));
        attr_set = true;
    }
    const int gx = (int)ceil_div_u(M, CMB);
    int gy = (int)ceil_div_u(target_ctas(c), gx);
    const int tmax = (int)ceil_div_u(T, CTC);
    if (gy > tmax) gy = tmax;
    if (gy < 1) gy = 1;
    int tpc = (int)ceil_div_u(ceil_div_u(T, gy), CTC) * CTC;
    gy = (int)ceil_div_u(T, tpc);
    const int vec2 = osj == 1 && ((uintptr_t)O & 7u) == 0;
    if (Du) CK(c, cudaMemset2DAsync(Du, (size_t)lddu * 4, 0, (size_t)R * 4, (size_t)T, c->st));
    k_lora_colred<R><<<dim3(gx, gy), LT, sizeof(ColredSmem<R>), c->st>>>(O, osm, osj, (const bf16 *)P, ldp, T, M, Q, ldq,
                                                                         scale, tpc, vec2, aligned16(Q) && ldq % 4 == 0,
                                                                         Du, lddu, Wd, dscale);
    CK_LAUNCH(c);
}

/* colred by version 2 (cuda_lora_colred2.cuh: clusters exchanging du, a deeper cp.async ring, one
 * wave of CTAs); US_CUDA_LORA_COLRED=1 runs version 1 above */
/* qscale / oscale (version 2 only: the caller checks c->lora_colred_v1 first) as colred_v2_cfg's */
/* Fd / ldf / folded: Du's bf16 copy as colred_v2_cfg's (version 2 only; *folded says whether it
 * was written) */
template <int R>
void colred_any(cuda_impl *c, float *O, int osm, int osj, const void *P, int ldp, int T, int M, const float *Q, int ldq,
                float scale, float *Du = NULL, int lddu = 0, const float *Wd = NULL, float dscale = 0.0f,
                const float *qscale = NULL, const float *oscale = NULL, bf16 *Fd = NULL, int ldf = 0,
                bool *folded = NULL) {
    if (folded) *folded = false;
    if (c->lora_colred_v1) {
        colred<R>(c, O, osm, osj, P, ldp, T, M, Q, ldq, scale, Du, lddu, Wd, dscale);
        return;
    }
    CK(c, colred_v2_cfg<R>(c->st, c->sm_count, colred2_default_cfg(T, M, Du != NULL), O, osm, osj, (const bf16 *)P, ldp, T,
                           M, Q, ldq, scale, Du, lddu, Wd, dscale, qscale, oscale, Fd, ldf, folded));
    CK_LAUNCH(c);
}

/* The products at a width R known at compile time: R = n * r for a group of n projections. */
template <int R>
struct lora_at {
    /* u = x A^T (A [R, in]); *folded: u was also written beside x */
    static void down_x(cuda_impl *c, float *u, int ldu, const void *x, int ldx, const float *A, int T, int in, bool fold,
                       bool *folded) {
        if (down2<R>(c, u, ldu, x, ldx, T, in, A, 1.0f, fold)) *folded = fold;
        else down<R>(c, u, ldu, x, ldx, T, in, A, in, 1, 1.0f);
    }
    static void up(cuda_impl *c, void *y, const void *res, const float *u, int ldu, const float *B, float s, int T,
                   int out) {
        expand<R>(c, y, res, T, out, u, ldu, B, R, 1, s); /* y = res + s u B^T   (B [out, R]) */
    }
    static void bwd_dy(cuda_impl *c, float *du, int lddu, float *dB, const void *dy, int ldy, const float *u, int ldu,
                       const float *B, float s, int T, int out, bf16 *fold, bool *folded) {
        /* one pass over dy: dB(o, j) += s sum_t dy[t, o] u[t, j] and du = s dy B (and, where the
         * kernel can, du's bf16 copy at fold, rows ldy apart) */
        colred_any<R>(c, dB, R, 1, dy, ldy, T, out, u, ldu, s, du, lddu, B, s, NULL, NULL, fold, ldy, folded);
    }
    static void bwd_x(cuda_impl *c, void *dx, const void *res, float *dA, const float *du, int lddu, const void *x,
                      int ldx, const float *rstd, const float *w, const float *A, int T, int in) {
        /* dA(i, j) += sum_t x[t, i] du[t, j] (normed: w[i] sum_t x[t, i] rstd[t] du[t, j]) */
        if (dA) colred_any<R>(c, dA, 1, in, x, ldx, T, in, du, lddu, 1.0f, NULL, 0, NULL, 0.0f, rstd, w);
        if (dx) expand<R>(c, dx, res, T, in, du, lddu, A, 1, in, 1.0f); /* dx = res + du A   (W(i, j) = A[j, i]) */
    }
};

/* Calls F<R>::fn(args...) for the supported widths; false for the others (the caller falls back). */
#define LORA_DISPATCH(R, call)                       \
    switch (R) {                                     \
    case 8: lora_at<8>::call; break;                 \
    case 16: lora_at<16>::call; break;               \
    case 24: lora_at<24>::call; break;               \
    case 32: lora_at<32>::call; break;               \
    case 48: lora_at<48>::call; break;               \
    case 64: lora_at<64>::call; break;               \
    case 96: lora_at<96>::call; break;               \
    default: return false;                           \
    }

bool width_ok(int R) { return R == 8 || R == 16 || R == 24 || R == 32 || R == 48 || R == 64 || R == 96; }
bool a8(const void *p) { return ((uintptr_t)p & 7u) == 0; }

} /* namespace */

/* Tensor-core paths; false when a width, size or alignment is outside what the kernels take
 * (widths multiple of 8; the wide operands 16-byte aligned; u/du 8-byte aligned, even pitch). */
bool us_cuda_lora_down_fast(cuda_impl *c, float *u, int ldu, const void *x, int ldx, const float *A, int T, int in,
                            int R, bool fold, bool *folded) {
    *folded = false;
    if (T <= 0) return true;
    if (!width_ok(R) || in % 8 || ldx % 8 || !aligned16(x) || !a8(u) || ldu % 2) return false;
    LORA_DISPATCH(R, down_x(c, u, ldu, x, ldx, A, T, in, fold, folded));
    return true;
}

bool us_cuda_lora_up_fast(cuda_impl *c, void *y, const void *res, const float *u, int ldu, const float *B, float s,
                          int T, int out, int r) {
    if (T <= 0) return true;
    if (!width_ok(r) || out % 8 || !aligned16(y) || (res && !aligned16(res)) || !a8(u) || ldu % 2) return false;
    LORA_DISPATCH(r, up(c, y, res, u, ldu, B, s, T, out));
    return true;
}

bool us_cuda_lora_bwd_dy_fast(cuda_impl *c, float *du, int lddu, float *dB, const void *dy, int ldy, const float *u,
                              int ldu, const float *B, float s, int T, int out, int r, void *fold, bool *folded) {
    *folded = false;
    if (T <= 0) return true;
    if (!width_ok(r) || out % 8 || ldy % 8 || !aligned16(dy) || !a8(u) || !a8(du) || ldu % 2 || lddu % 2) return false;
    LORA_DISPATCH(r, bwd_dy(c, du, lddu, dB, dy, ldy, u, ldu, B, s, T, out, (bf16 *)fold, folded));
    return true;
}

bool us_cuda_lora_bwd_x_fast(cuda_impl *c, void *dx, const void *res, float *dA, const float *du, int lddu,
                             const void *x, int ldx, const float *rstd, const float *w, const float *A, int T, int in, int R) {
    if (T <= 0) return true;
    if (rstd && dA && c->lora_colred_v1) return false; /* version 1 has no scales */
    if (!width_ok(R) || in % 8 || ldx % 8 || !aligned16(x) || (dx && !aligned16(dx)) || (res && !aligned16(res)) || !a8(du) ||
        lddu % 2)
        return false;
    LORA_DISPATCH(R, bwd_x(c, dx, res, dA, du, lddu, x, ldx, rstd, w, A, T, in));
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* glu_bwd with the down projection's dA fused (backend.h glu_bwd): the GLU backward reads g and
 * u anyway, so it forms the product a = act(g) * u on its way and reduces dA [R, cols] += dd^T a
 * from it, instead of writing a (T x F bf16) for a separate column reduction to read back.
 *
 * Work units are (column strip of 128, chunk of 64 rows), strip-major; each CTA (8 warps) takes
 * an equal contiguous range of them and the grid is one wave. Per unit every thread holds 4 x 8
 * columns of g, u and da (16-byte loads; the next unit's are issued right after the barrier, so
 * they are in flight during this unit's MMAs), writes dg and du in place and the bf16 product
 * into a swizzled [64 x 128] shared tile (c2_swz), and stages the unit's dd rows (f32). After one
 * barrier warp w accumulates dA^T[16w, 16w + 16) x [0, R) over the 64 rows: A = a^T by
 * ldmatrix.trans, B = dd packed to bf16, mma m16n8k16 (colred2's fragments). Two tile buffers:
 * one barrier per unit. When its strip ends (or its range), a CTA adds its partial dA by f32
 * atomics: about (units per CTA / chunks per strip + 1) partials per element. */
namespace {

constexpr int GB_LT = 256, GB_TC = 64, GB_MB = 128;

/* A warp's m16n8 accumulators (NT n-tiles) added by f32 atomics where addr(row 0..15, column
 * 0..8 NT - 1) gives a target (nullptr: outside), then zeroed */
template <int NT, typename Addr>
__device__ __forceinline__ void acc_flush(float (&acc)[NT][4], Addr addr) {
    const int lane = threadIdx.x & 31, g8 = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float *p = addr(g8 + h * 8, n * 8 + tq * 2 + e);
                if (p) atomicAdd(p, acc[n][2 * h + e]);
                acc[n][2 * h + e] = 0.0f;
            }
}

template <int NT>
struct GluDASmem {
    static constexpr int NR = NT * 8, QP = NR + 4; /* f32 per staged dd row (colred2's pitch) */
    static constexpr size_t P_BYTES = (size_t)GB_TC * GB_MB * 2, Q_BYTES = (size_t)GB_TC * QP * 4;
    static constexpr size_t BYTES = 2 * (P_BYTES + Q_BYTES);
};

template <int NT>
__global__ void __launch_bounds__(GB_LT, NT <= 3 ? 2 : 1) /* two CTAs per SM without spills up to R 24 */
    k_glu_bwd_dA(int act, bf16 *dg, bf16 *du, float *dA, const float *dd, int lddd, int R, const bf16 *da, const bf16 *g,
                 const bf16 *u, const uint32_t *bits, int rows, int cols, int nch, long long units) {
    using S = GluDASmem<NT>;
    constexpr int NR = S::NR, QP = S::QP, NQ = GB_TC * NR / GB_LT; /* dd floats a thread stages per unit */
    extern __shared__ __align__(1024) unsigned char gb_smem[];
    bf16 *Ps = reinterpret_cast<bf16 *>(gb_smem);                         /* [2][64 x 128] */
    float *Qs = reinterpret_cast<float *>(gb_smem + 2 * S::P_BYTES);      /* [2][64 x QP] */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g8 = lane >> 2, tq = lane & 3;
    const long long u0 = (long long)blockIdx.x * units / gridDim.x, u1 = (long long)(blockIdx.x + 1) * units / gridDim.x;
    if (u0 >= u1) return;
    const int W = (cols + 31) / 32;
    uint4 rg[4], ru[4], rd[4];
    uint32_t rb[4];
    float rq[NQ];
    /* g and u are read with plain loads: this kernel overwrites them (each element by the thread
     * that read it) */
    auto load = [&](long long un) {
        const int strip = (int)(un / nch), t0 = (int)(un % nch) * GB_TC;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int v = tid + i * GB_LT, row = t0 + (v >> 4), col = strip * GB_MB + (v & 15) * 8;
            const bool ok = row < rows && col < cols;
            const size_t off = (size_t)row * cols + col;
            const uint4 z = make_uint4(0, 0, 0, 0);
            rg[i] = ok ? *reinterpret_cast<const uint4 *>(g + off) : z;
            ru[i] = ok ? *reinterpret_cast<const uint4 *>(u + off) : z;
            rd[i] = ok ? __ldg(reinterpret_cast<const uint4 *>(da + off)) : z;
            rb[i] = act == US_GLU_RELU && bits && ok ? (bits[(size_t)row * W + col / 32] >> (col & 31)) & 0xffu : 0u;
        }
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            const int idx = tid + k * GB_LT, rr = idx / NR, j = idx % NR, row = t0 + rr;
            rq[k] = row < rows && j < R ? dd[(size_t)row * lddd + j] : 0.0f;
        }
    };
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    load(u0);
    int buf = 0;
    for (long long un = u0; un < u1; un++, buf ^= 1) {
        const int strip = (int)(un / nch), t0 = (int)(un % nch) * GB_TC;
        bf16 *ps = Ps + buf * (GB_TC * GB_MB);
        float *qs = Qs + buf * (GB_TC * QP);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int v = tid + i * GB_LT, r = v >> 4, cl = (v & 15) * 8, row = t0 + r, col = strip * GB_MB + cl;
            float gf[8], uf[8], df[8], og[8], ou[8], pf[8];
            unpack8(rg[i], gf);
            unpack8(ru[i], uf);
            unpack8(rd[i], df);
            uint32_t byte = rb[i];
            if (act == US_GLU_RELU && !bits) {
                byte = 0;
#pragma unroll
                for (int j = 0; j < 8; j++) byte |= (gf[j] > 0.0f ? 1u : 0u) << j;
            }
#pragma unroll
            for (int j = 0; j < 8; j++) {
                glu_grad(act, df[j], gf[j], uf[j], (byte >> j) & 1u, og[j], ou[j]);
                pf[j] = glu_prod(act, gf[j], uf[j]); /* 0 outside the matrix: g = u = 0 there */
            }
            if (row < rows && col < cols) {
                const size_t off = (size_t)row * cols + col;
                store8(dg + off, og);
                store8(du + off, ou);
            }
            store8(ps + c2_swz(r, cl), pf);
        }
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            const int idx = tid + k * GB_LT;
            qs[(idx / NR) * QP + idx % NR] = rq[k];
        }
        __syncthreads(); /* tile buf complete; the other buffer's MMAs (previous unit) are done */
        if (un + 1 < u1) load(un + 1);
#pragma unroll
        for (int ks = 0; ks < GB_TC / 16; ks++) {
            uint32_t a0, a1, a2, a3; /* (t 0-7, m 0-7), (t 0-7, m 8-15), (t 8-15, m 0-7), (t 8-15, m 8-15) */
            const int r = ks * 16 + (lane & 7) + ((lane >> 4) & 1) * 8, cc = warp * 16 + ((lane >> 3) & 1) * 8;
            ldsm_x4_t(a0, a1, a2, a3, smem_u32(ps + c2_swz(r, cc)));
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const float *q = qs + (ks * 16 + tq * 2) * QP + n * 8 + g8;
                mma16816(acc[n], a0, a1, a2, a3, pack_bf16(q[0], q[QP]), pack_bf16(q[8 * QP], q[9 * QP]));
            }
        }
        if (un + 1 == u1 || (un + 1) / nch != strip) /* the strip's partial dA out */
            acc_flush<NT>(acc, [&](int r, int j) {
                const int m = strip * GB_MB + warp * 16 + r;
                return m < cols && j < R ? dA + (size_t)j * cols + m : nullptr;
            });
    }
}

template <int NT>
void glu_bwd_dA(cuda_impl *c, int act, bf16 *dg, bf16 *du, float *dA, const float *dd, int lddd, int R, const bf16 *da,
                const bf16 *g, const bf16 *u, const uint32_t *bits, int rows, int cols) {
    using S = GluDASmem<NT>;
    auto kern = k_glu_bwd_dA<NT>;
    static int per_sm = 0; /* resident CTAs per SM, asked once per instance (one device per process) */
    if (!per_sm) {
        CK(c, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)S::BYTES));
        CK(c, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, GB_LT, S::BYTES));
        if (per_sm < 1) per_sm = 1;
    }
    const int nch = (int)ceil_div_u(rows, GB_TC), nstrip = (int)ceil_div_u(cols, GB_MB);
    const long long units = (long long)nch * nstrip;
    const int grid = (int)(units < (long long)per_sm * c->sm_count ? units : (long long)per_sm * c->sm_count);
    kern<<<grid, GB_LT, S::BYTES, c->st>>>(act, dg, du, dA, dd, lddd, R, da, g, u, bits, rows, cols, nch, units);
    CK_LAUNCH(c);
}

} /* namespace */

/* glu_fwd with the down projection's lora_down fused (backend.h glu_fwd): ud = a A^T from the
 * product a = act(g) * u as it is formed, instead of a second pass reading a back. The units are
 * glu_bwd_dA's transposed: (chunk of 64 rows, column strip of 128), row-major, each CTA an equal
 * contiguous range in one wave of one CTA per SM. g, u and the unit's A columns (f32) arrive by
 * cp.async through NS stages, so NS - 1 units' loads are in flight while one is computed (the
 * same pass with loads into registers, one unit ahead at two CTAs per SM, ran at ~2.2 TB/s: its
 * loads waited on each unit's arithmetic), and 1024 threads share the arithmetic (256 left too
 * few warps to hide its latency: 253 against 179 us a 1B layer). A thread reads back only the
 * 16-byte piece of g and of u it copied itself, forms 8 columns of a, writes them (and ReLU's mask words, packed by
 * 4-lane shuffles) and puts them into a swizzled [64 x 128] shared tile. After one barrier warp w < 8
 * takes rows 16 (w % 4).. of the tile and columns 64 (w / 4).. against every rank: ldmatrix + mma
 * m16n8k16, A packed to bf16 on the way (as lora_down2 rounds it). A CTA's sums leave by f32
 * atomics into ud (zeroed first) when its row chunk ends; the fold (ud in bf16 beside a) is a
 * separate pass once every sum is in. */
namespace {

template <int NT>
struct GluUSmem {
    static constexpr int NR = NT * 8, QP = GB_MB + 8;                           /* f32 per staged A row (float2 reads: no bank conflicts) */
    static constexpr size_t P_BYTES = (size_t)GB_TC * GB_MB * 2;                 /* one tile of a, or of g, or of u */
    static constexpr size_t STAGE = 2 * P_BYTES + (size_t)NR * QP * 4;           /* g, u, A */
    static constexpr int NS = (int)((220u * 1024 - 2 * P_BYTES) / STAGE) < 4 ? (int)((220u * 1024 - 2 * P_BYTES) / STAGE) : 4;
    static constexpr size_t BYTES = 2 * P_BYTES + NS * STAGE;
};

constexpr int GU_LT = 1024, GU_SLOTS = GB_TC * GB_MB / 8 / GU_LT; /* 16-byte pieces a thread forms per unit */

template <int NT>
__global__ void __launch_bounds__(GU_LT, 1)
    k_glu_fwd_u(int act, bf16 *a, int lda, bf16 *g, const bf16 *u, uint32_t *bits, float *ud, int ldud,
                const float *A, int R, int rows, int cols, int nstrip, long long units) {
    using S = GluUSmem<NT>;
    constexpr int NR = S::NR, QP = S::QP, NS = S::NS;
    static_assert(NS >= 2, "shared memory for two stages");
    extern __shared__ __align__(1024) unsigned char gu_smem[];
    bf16 *Ps = reinterpret_cast<bf16 *>(gu_smem); /* [2][64 x 128] */
    unsigned char *stages = gu_smem + 2 * S::P_BYTES;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g8 = lane >> 2, tq = lane & 3;
    const int mt = warp & 3, kh = warp >> 2;
    const long long u0 = (long long)blockIdx.x * units / gridDim.x, u1 = (long long)(blockIdx.x + 1) * units / gridDim.x;
    if (u0 >= u1) return;
    const int W = (cols + 31) / 32;
    auto stage_g = [&](int st) { return reinterpret_cast<uint4 *>(stages + st * S::STAGE); };
    auto stage_u = [&](int st) { return reinterpret_cast<uint4 *>(stages + st * S::STAGE + S::P_BYTES); };
    auto stage_a = [&](int st) { return reinterpret_cast<float *>(stages + st * S::STAGE + 2 * S::P_BYTES); };
    auto issue = [&](long long un) {
        if (un < u1) {
            const int st = (int)(un % NS), t0 = (int)(un / nstrip) * GB_TC, c0 = (int)(un % nstrip) * GB_MB;
#pragma unroll
            for (int i = 0; i < GU_SLOTS; i++) { /* thread tid's own pieces tid + GU_LT i */
                const int v = tid + i * GU_LT, row = t0 + (v >> 4), col = c0 + (v & 15) * 8;
                const bool ok = row < rows && col < cols;
                const size_t off = ok ? (size_t)row * cols + col : 0;
                cp_async16(smem_u32(stage_g(st) + v), g + off, ok);
                cp_async16(smem_u32(stage_u(st) + v), u + off, ok);
            }
            float *qa = stage_a(st);
            for (int idx = tid; idx < NR * (GB_MB / 4); idx += GU_LT) { /* A's rows j < R, columns of the strip */
                const int j = idx / (GB_MB / 4), m = (idx % (GB_MB / 4)) * 4;
                const bool ok = j < R && c0 + m < cols;
                cp_async16(smem_u32(qa + j * QP + m), ok ? (const void *)(A + (size_t)j * cols + c0 + m) : (const void *)A, ok);
            }
        }
        cp_async_commit(); /* one group per unit, empty past the range: the wait count stays exact */
    };
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int k = 0; k < NS - 1; k++) issue(u0 + k);
    for (long long un = u0; un < u1; un++) {
        const int rc = (int)(un / nstrip), t0 = rc * GB_TC, c0 = (int)(un % nstrip) * GB_MB, st = (int)(un % NS);
        bf16 *ps = Ps + (un & 1) * (GB_TC * GB_MB);
        cp_async_wait<NS - 2>(); /* this thread's copies of unit un are in */
#pragma unroll
        for (int i = 0; i < GU_SLOTS; i++) {
            const int v = tid + i * GU_LT, r = v >> 4, cl = (v & 15) * 8, row = t0 + r, col = c0 + cl;
            const bool ok = row < rows && col < cols;
            float gf[8], uf[8], pf[8];
            unpack8(stage_g(st)[v], gf);
            unpack8(stage_u(st)[v], uf);
            uint32_t byte = 0;
            if (act == US_GLU_RELU) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    byte |= (gf[j] > 0.0f ? 1u : 0u) << j;
                    gf[j] = fmaxf(gf[j], 0.0f);
                }
                if (bits) { /* lanes 4k..4k+3 hold one 32-column word of this row */
                    const uint32_t word = mask_word4(byte);
                    if ((lane & 3) == 0 && ok) bits[(size_t)row * W + col / 32] = word;
                }
            }
#pragma unroll
            for (int j = 0; j < 8; j++) pf[j] = glu_prod(act, gf[j], uf[j]); /* 0 outside: g = u = 0 there */
            if (ok) {
                const size_t off = (size_t)row * cols + col;
                if (act == US_GLU_RELU) store8(g + off, gf);
                store8(a + (size_t)row * lda + col, pf);
            }
            store8(ps + c2_swz(r, cl), pf); /* rounded as written: ud is exactly a's product with A */
        }
        __syncthreads(); /* tile complete; every thread's copies of unit un (A) are in; the MMAs of
                            unit un - 1 are done, so its stage is free */
        issue(un + NS - 1);
        if (warp >= 8) continue;
        const float *qs = stage_a(st);
#pragma unroll
        for (int ks = 0; ks < 4; ks++) {
            const int k0 = kh * 64 + ks * 16;
            uint32_t a0, a1, a2, a3; /* (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) */
            const int r = mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = k0 + (lane >> 4) * 8;
            ldsm_x4(a0, a1, a2, a3, smem_u32(ps + c2_swz(r, cc)));
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const float2 b0 = *reinterpret_cast<const float2 *>(qs + (n * 8 + g8) * QP + k0 + tq * 2);
                const float2 b1 = *reinterpret_cast<const float2 *>(qs + (n * 8 + g8) * QP + k0 + 8 + tq * 2);
                mma16816(acc[n], a0, a1, a2, a3, pack_bf16(b0.x, b0.y), pack_bf16(b1.x, b1.y));
            }
        }
        if (un + 1 == u1 || (un + 1) / nstrip != rc) /* the row chunk's partial sums out */
            acc_flush<NT>(acc, [&](int r, int j) {
                const int t = t0 + mt * 16 + r;
                return t < rows && j < R ? ud + (size_t)t * ldud + j : nullptr;
            });
    }
    cp_async_wait<0>(); /* nothing left in flight at exit (the groups past the range are empty) */
}

template <int NT>
void glu_fwd_u(cuda_impl *c, int act, bf16 *a, int lda, bf16 *g, const bf16 *u, uint32_t *bits, float *ud, int ldud,
               const float *A, int R, int rows, int cols) {
    using S = GluUSmem<NT>;
    auto kern = k_glu_fwd_u<NT>;
    static bool attr = false;
    if (!attr) {
        CK(c, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)S::BYTES));
        attr = true;
    }
    CK(c, cudaMemset2DAsync(ud, (size_t)ldud * 4, 0, (size_t)R * 4, (size_t)rows, c->st));
    const int nch = (int)ceil_div_u(rows, GB_TC), nstrip = (int)ceil_div_u(cols, GB_MB);
    const long long units = (long long)nch * nstrip;
    const int grid = (int)(units < (long long)c->sm_count ? units : (long long)c->sm_count);
    kern<<<grid, GU_LT, S::BYTES, c->st>>>(act, a, lda, g, u, bits, ud, ldud, A, R, rows, cols, nstrip, units);
    CK_LAUNCH(c);
}

} /* namespace */

bool us_cuda_glu_fwd_u_fast(cuda_impl *c, int act, bf16 *a, int lda, bf16 *g, const bf16 *u, uint32_t *bits, float *ud,
                            int ldud, const float *A, int R, int rows, int cols) {
    if (R < 1 || R > 32 || cols % 32 || lda % 8 || !a || !aligned16(a) || !aligned16(g) || !aligned16(u) || !aligned16(A))
        return false; /* R <= 32: the sums fit 1024 threads' registers */
    switch ((R + 7) / 8) {
    case 1: glu_fwd_u<1>(c, act, a, lda, g, u, bits, ud, ldud, A, R, rows, cols); break;
    case 2: glu_fwd_u<2>(c, act, a, lda, g, u, bits, ud, ldud, A, R, rows, cols); break;
    case 3: glu_fwd_u<3>(c, act, a, lda, g, u, bits, ud, ldud, A, R, rows, cols); break;
    default: glu_fwd_u<4>(c, act, a, lda, g, u, bits, ud, ldud, A, R, rows, cols); break;
    }
    return true;
}

bool us_cuda_glu_bwd_dA_fast(cuda_impl *c, int act, bf16 *dg, bf16 *du, float *dA, const float *dd, int lddd, int R,
                             const bf16 *da, const bf16 *g, const bf16 *u, const uint32_t *bits, int rows, int cols) {
    if (R < 1 || R > 64 || cols % 8 || !aligned16(dg) || !aligned16(du) || !aligned16(da) || !aligned16(g) ||
        !aligned16(u))
        return false;
    switch ((R + 7) / 8) {
    case 1: glu_bwd_dA<1>(c, act, dg, du, dA, dd, lddd, R, da, g, u, bits, rows, cols); break;
    case 2: glu_bwd_dA<2>(c, act, dg, du, dA, dd, lddd, R, da, g, u, bits, rows, cols); break;
    case 3: glu_bwd_dA<3>(c, act, dg, du, dA, dd, lddd, R, da, g, u, bits, rows, cols); break;
    case 4: glu_bwd_dA<4>(c, act, dg, du, dA, dd, lddd, R, da, g, u, bits, rows, cols); break;
    case 5: case 6: glu_bwd_dA<6>(c, act, dg, du, dA, dd, lddd, R, da, g, u, bits, rows, cols); break;
    default: glu_bwd_dA<8>(c, act, dg, du, dA, dd, lddd, R, da, g, u, bits, rows, cols); break;
    }
    return true;
}
