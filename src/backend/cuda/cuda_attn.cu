/* cuda_attn.cu — causal flash attention (forward and backward) with GQA and packed-example
 * segments, on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation), and the dispatch to the
 * Hopper wgmma kernels (cuda_attn_wgf.cu forward, cuda_attn_wg.cu backward) that run first on a
 * compute-capability 9.0 device for head_dim 64/128; the kernels here serve every other case.
 *
 * Forward: one CTA of 4 warps per (64-query block, head, batch row); each warp owns 16 query rows,
 * streams 64-key tiles of K and V through double-buffered shared memory (cp.async), keeps the
 * running max / sum / output in registers (online softmax in base 2), and writes O (bf16) and the
 * natural-log LSE (f32). No score matrix is stored.
 *
 * Backward: D = rowsum(dO * O) first; then one CTA per (key block of BN = 64 or 128 keys, query
 * head, batch row), each warp owning 16 keys, walks the query blocks that can see its keys,
 * recomputing P from Q, K and LSE. dK and dV accumulate in registers (under GQA summed over the
 * group by f32 atomics); dS goes through shared memory to form dQ += dS K, which is added to an
 * f32 accumulator with vector atomics and cast to bf16 at the end. The heads are processed in
 * chunks so that the f32 accumulators stay within a budget (launch_bwd).
 *
 * Both grids are x = (batch row, head), y = block, the longest causal blocks first, so the long
 * CTAs of every head are dispatched before the short ones.
 *
 * Shared-memory tiles are rows of head_dim bf16 with their 16-byte chunks XOR-swizzled by the row
 * index, so ldmatrix reads of 8 rows hit 8 different bank groups. */
#include "cuda_attn_wg.cuh"
#include "cuda_attn_wgf.cuh"
#include "cuda_internal.cuh"
#include "cuda_ptx.cuh"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

namespace {


/* Element offset of (row, col) in a swizzled tile of rows of COLS bf16 (col a multiple of 8 for
 * chunk-aligned addresses). */
template <int COLS>
__device__ __forceinline__ int swz(int row, int col) {
    constexpr int CH = COLS / 8;
    constexpr int MASK = (CH < 8 ? CH : 8) - 1;
    return row * COLS + ((((col >> 3) ^ (row & MASK))) << 3) + (col & 7);
}

/* Loads ROWS x HD from global rows (stride in elements) into a swizzled tile; rows past `valid`
 * are zero-filled. */
template <int ROWS, int HD, int NT>
__device__ __forceinline__ void load_tile(bf16 *s, const bf16 *g, size_t stride, int valid, int tid) {
    constexpr int CH = HD / 8;
#pragma unroll
    for (int i = 0; i < (ROWS * CH + NT - 1) / NT; i++) {
        int c = tid + i * NT;
        if (ROWS * CH % NT == 0 || c < ROWS * CH) {
            int r = c / CH, cc = (c % CH) * 8;
            bool ok = r < valid;
            cp_async16(smem_u32(s + swz<HD>(r, cc)), ok ? (const void *)(g + (size_t)r * stride + cc) : (const void *)g, ok);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* forward                                                                                     */

constexpr int FBM = 64, FBN = 64, FNT = 128;

template <int HD>
__global__ void __launch_bounds__(FNT, HD <= 64 ? 3 : 1) k_attn_fwd(bf16 *o, int ldo, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                                  const int32_t *seg, int seq, int H, int KVH, float scale_log2) {
    extern __shared__ __align__(128) unsigned char smraw[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smraw);
    bf16 *sK = sQ + FBM * HD; /* 2 stages */
    bf16 *sV = sK + 2 * FBN * HD;
    __shared__ int s_segmin, s_segmax;

    /* grid: x = (batch row, head), y = query block from the last: every head's longest causal
     * rows are dispatched before any shorter ones (less tail) */
    const int qb = gridDim.y - 1 - blockIdx.y;
    const int h = blockIdx.x % H, b = blockIdx.x / H, kvh = h / (H / KVH);
    const int q0 = qb * FBM;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t qs = (size_t)H * HD, ks = (size_t)KVH * HD;
    const bf16 *qg = q + (size_t)b * seq * qs + (size_t)h * HD;
    const bf16 *kg = k + (size_t)b * seq * ks + (size_t)kvh * HD;
    const bf16 *vg = v + (size_t)b * seq * ks + (size_t)kvh * HD;

    const int ra = q0 + warp * 16 + (lane >> 2), rb = ra + 8; /* the two query rows of this thread */
    int sega = 0, segb = 0;
    if (tid == 0) s_segmin = seq, s_segmax = 0;
    __syncthreads();
    if (seg) {
        sega = ra < seq ? seg[(size_t)b * seq + ra] : 0;
        segb = rb < seq ? seg[(size_t)b * seq + rb] : 0;
        if (tid < FBM && q0 + tid < seq) {
            int sv = seg[(size_t)b * seq + q0 + tid];
            atomicMin(&s_segmin, sv);
            atomicMax(&s_segmax, sv);
        }
    } else if (tid == 0) {
        s_segmin = 0;
    }
    __syncthreads();
    const int segmin = s_segmin, segmax = s_segmax;
    const int kb0 = segmin / FBN, kb1 = (min(q0 + FBM, seq) - 1) / FBN;

    load_tile<FBM, HD, FNT>(sQ, qg + (size_t)q0 * qs, qs, seq - q0, tid);
    load_tile<FBN, HD, FNT>(sK, kg + (size_t)kb0 * FBN * ks, ks, seq - kb0 * FBN, tid);
    load_tile<FBN, HD, FNT>(sV, vg + (size_t)kb0 * FBN * ks, ks, seq - kb0 * FBN, tid);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = kk * 16 + (lane >> 4) * 8;
        ldsm_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], smem_u32(sQ + swz<HD>(r, cc)));
    }

    float oacc[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;

    for (int kb = kb0; kb <= kb1; kb++) {
        const int stage = (kb - kb0) & 1;
        bf16 *cK = sK + stage * FBN * HD, *cV = sV + stage * FBN * HD;
        if (kb < kb1) {
            bf16 *nK = sK + (stage ^ 1) * FBN * HD, *nV = sV + (stage ^ 1) * FBN * HD;
            load_tile<FBN, HD, FNT>(nK, kg + (size_t)(kb + 1) * FBN * ks, ks, seq - (kb + 1) * FBN, tid);
            load_tile<FBN, HD, FNT>(nV, vg + (size_t)(kb + 1) * FBN * ks, ks, seq - (kb + 1) * FBN, tid);
            cp_async_commit();
        }
        /* S = Q K^T: 16 x 64 per warp */
        float s[FBN / 8][4];
#pragma unroll
        for (int i = 0; i < FBN / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
            for (int j = 0; j < FBN / 16; j++) {
                uint32_t b0, b1, b2, b3;
                int r = j * 16 + (lane & 7) + (lane >> 4) * 8, cc = kk * 16 + ((lane >> 3) & 1) * 8;
                ldsm_x4(b0, b1, b2, b3, smem_u32(cK + swz<HD>(r, cc)));
                mma16816(s[2 * j], qf[kk], b0, b1);
                mma16816(s[2 * j + 1], qf[kk], b2, b3);
            }
        }
        const int n0 = kb * FBN;
        if (n0 + FBN - 1 > q0 || n0 < segmax) {
#pragma unroll
            for (int nt = 0; nt < FBN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int col = n0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                    int row = e < 2 ? ra : rb, sg = e < 2 ? sega : segb;
                    if (col > row || col < sg) s[nt][e] = -INFINITY;
                }
        }
        /* online softmax, base 2 */
        float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < FBN / 8; nt++) {
            mxa = fmaxf(mxa, fmaxf(s[nt][0], s[nt][1]));
            mxb = fmaxf(mxb, fmaxf(s[nt][2], s[nt][3]));
        }
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
        float mna = fmaxf(ma, mxa * scale_log2), mnb = fmaxf(mb, mxb * scale_log2);
        float ua = mna == -INFINITY ? 0.0f : mna, ub = mnb == -INFINITY ? 0.0f : mnb;
        float alpha_a = fast_exp2(ma - ua), alpha_b = fast_exp2(mb - ub);
        ma = mna, mb = mnb;
        float psa = 0.0f, psb = 0.0f;
#pragma unroll
        for (int nt = 0; nt < FBN / 8; nt++) {
            s[nt][0] = fast_exp2(fmaf(s[nt][0], scale_log2, -ua));
            s[nt][1] = fast_exp2(fmaf(s[nt][1], scale_log2, -ua));
            s[nt][2] = fast_exp2(fmaf(s[nt][2], scale_log2, -ub));
            s[nt][3] = fast_exp2(fmaf(s[nt][3], scale_log2, -ub));
            psa += s[nt][0] + s[nt][1];
            psb += s[nt][2] + s[nt][3];
        }
        la = la * alpha_a + psa;
        lb = lb * alpha_b + psb;
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            oacc[i][0] *= alpha_a, oacc[i][1] *= alpha_a;
            oacc[i][2] *= alpha_b, oacc[i][3] *= alpha_b;
        }
        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < FBN / 16; kk++) {
            uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dt = 0; dt < HD / 16; dt++) {
                uint32_t b0, b1, b2, b3;
                int r = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = dt * 16 + (lane >> 4) * 8;
                ldsm_x4_t(b0, b1, b2, b3, smem_u32(cV + swz<HD>(r, cc)));
                mma16816(oacc[2 * dt], pa, b0, b1);
                mma16816(oacc[2 * dt + 1], pa, b2, b3);
            }
        }
        cp_async_wait_all();
        __syncthreads();
    }

    la += __shfl_xor_sync(0xffffffffu, la, 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    lb += __shfl_xor_sync(0xffffffffu, lb, 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    float ia = la > 0.0f ? 1.0f / la : 0.0f, ib = lb > 0.0f ? 1.0f / lb : 0.0f;
    bf16 *og = o + (size_t)b * seq * ldo + (size_t)h * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        int col = dt * 8 + (lane & 3) * 2;
        if (ra < seq)
            *reinterpret_cast<uint32_t *>(og + (size_t)ra * ldo + col) = pack_bf16(oacc[dt][0] * ia, oacc[dt][1] * ia);
        if (rb < seq)
            *reinterpret_cast<uint32_t *>(og + (size_t)rb * ldo + col) = pack_bf16(oacc[dt][2] * ib, oacc[dt][3] * ib);
    }
    if ((lane & 3) == 0) {
        if (ra < seq) lse[((size_t)b * seq + ra) * H + h] = (ma + log2f(la)) * LN2;
        if (rb < seq) lse[((size_t)b * seq + rb) * H + h] = (mb + log2f(lb)) * LN2;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* backward                                                                                    */


/* D[t, h] = sum_d dO * O, by G = hd / 8 lanes per (t, h), 16-byte loads (hd 64: 51.0 -> 24.7 us at the
 * 1B shape, T 8192 x 32 heads; the warp per (t, h) of two-byte loads below is the fallback) */
template <int G>
__global__ void k_attn_bwd_pre_vec(float *D, const bf16 *dout, const bf16 *o, int ldo, int H, size_t TH) {
    const size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / G;
    const int part = threadIdx.x % G;
    float s = 0.0f;
    if (w < TH) {
        float a[8], b[8];
        load8(dout + w * (G * 8) + part * 8, a);
        load8(o + (w / H) * ldo + (w % H) * (G * 8) + part * 8, b);
#pragma unroll
        for (int j = 0; j < 8; j++) s += a[j] * b[j];
    }
#pragma unroll
    for (int off = G / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (w < TH && part == 0) D[w] = s;
}

__global__ void k_attn_bwd_pre(float *D, const bf16 *dout, const bf16 *o, int ldo, int H, size_t TH, int hd) {
    size_t w = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (w >= TH) return;
    const bf16 *a = dout + w * hd, *bb = o + (w / H) * ldo + (w % H) * hd; /* (token, head) w: o's rows ldo apart */
    float s = 0.0f;
    for (int d = lane; d < hd; d += 32) s += __bfloat162float(a[d]) * __bfloat162float(bb[d]);
    s = warp_sum(s);
    if (lane == 0) D[w] = s;
}

/* Minimum seg_start of each query block of BQ rows (per batch row). */
__global__ void k_seg_blockmin(int *out, const int32_t *seg, int seq, int nqb, int BQ, int batch) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nqb * batch) return;
    int b = i / nqb, qb = i % nqb, m = seq;
    for (int r = qb * BQ; r < min(seq, qb * BQ + BQ); r++) m = min(m, (int)seg[(size_t)b * seq + r]);
    out[i] = m;
}

template <int HD, int BQ, int BN>
struct BwdSmem {
    static constexpr int K = 0, V = K + BN * HD, Q = V + BN * HD, DO = Q + 2 * BQ * HD, DS = DO + 2 * BQ * HD,
                         END = DS + BN * BQ; /* in bf16 elements */
    static constexpr size_t bytes = (size_t)END * 2 + 2 * BQ * 4 * 3; /* + lse2, D, seg per stage */
};

/* One CTA per (key block, query head of the chunk h0..h0+nh-1); dQ goes to the
 * chunk's f32 accumulator dq_acc [T, acc_qs]. split (GQA): dK/dV are summed over the group by f32
 * atomics into dkv_acc ([2][T, acc_ks], kv heads from h0 / GH on); otherwise (one query head per
 * kv head) dK/dV are written directly. */
template <int HD, int BQ, int BN>
__global__ void __launch_bounds__(BN * 2) k_attn_bwd(float *dq_acc, bf16 *dk, bf16 *dv, float *dkv_acc, const bf16 *dout,
                                                  const bf16 *q, const bf16 *k, const bf16 *v, const float *lse,
                                                  const float *Dg, const int32_t *seg, const int *segmin_blk, int seq,
                                                  int H, int KVH, float scale, float scale_log2, int h0, int acc_qs,
                                                  int acc_ks) {
    using L = BwdSmem<HD, BQ, BN>;
    constexpr int BNT = BN * 2, NW = BN / 16; /* a warp per 16 keys */
    extern __shared__ __align__(128) unsigned char smraw[];
    bf16 *sb = reinterpret_cast<bf16 *>(smraw);
    bf16 *sK = sb + L::K, *sV = sb + L::V, *sQ = sb + L::Q, *sdO = sb + L::DO, *sdS = sb + L::DS;
    float *sL = reinterpret_cast<float *>(sb + L::END); /* [2][BQ] lse (natural log) */
    float *sD = sL + 2 * BQ;                            /* [2][BQ] */
    int *sS = reinterpret_cast<int *>(sD + 2 * BQ);     /* [2][BQ] seg start */

    const bool split = dkv_acc != NULL;
    /* grid: x = (batch row, head of the chunk), y = key block: the first key blocks (the most query
     * blocks to visit) of every head are dispatched first */
    const int nhc = acc_qs / HD, kblk = blockIdx.y, b = blockIdx.x / nhc, GH = H / KVH;
    const int hq0 = h0 + blockIdx.x % nhc, kvh = hq0 / GH, kv0 = h0 / GH, G = 1;
    const int k0 = kblk * BN;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t qs = (size_t)H * HD, ks = (size_t)KVH * HD;
    const int nqb = (seq + BQ - 1) / BQ;
    const int klast = min(k0 + BN, seq) - 1;
    const bf16 *kg = k + (size_t)b * seq * ks + (size_t)kvh * HD;
    const bf16 *vg = v + (size_t)b * seq * ks + (size_t)kvh * HD;

    /* work items: (head in group, query block), skipping blocks that see none of these keys */
    const int qb_first = k0 / BQ;
    auto next_item = [&](int it) -> int { /* it = g * nqb + qb; returns the next valid item after it, or -1 */
        for (int j = it + 1; j < G * nqb; j++) {
            int qb = j % nqb;
            if (qb < qb_first) {
                j = (j / nqb) * nqb + qb_first - 1;
                continue;
            }
            if (segmin_blk && segmin_blk[b * nqb + qb] > klast) continue;
            return j;
        }
        return -1;
    };
    auto issue = [&](int it, int stage) {
        int g = it / nqb, qb = it % nqb, h = hq0 + g, q0 = qb * BQ;
        const bf16 *qg = q + ((size_t)b * seq + q0) * qs + (size_t)h * HD;
        const bf16 *dg = dout + ((size_t)b * seq + q0) * qs + (size_t)h * HD;
        load_tile<BQ, HD, BNT>(sQ + stage * BQ * HD, qg, qs, seq - q0, tid);
        load_tile<BQ, HD, BNT>(sdO + stage * BQ * HD, dg, qs, seq - q0, tid);
        /* the rows' lse, D and segment start travel with the tiles (asynchronously: a plain load
         * here would stall every thread for a global round trip each iteration); rows past the
         * end arrive as zeros and are masked by index */
        for (int i = tid; i < BQ; i += BNT) {
            const bool ok = q0 + i < seq;
            const size_t t = (size_t)b * seq + (ok ? q0 + i : 0);
            cp_async4(smem_u32(sL + stage * BQ + i), lse + t * H + h, ok);
            cp_async4(smem_u32(sD + stage * BQ + i), Dg + t * H + h, ok);
            if (seg) cp_async4(smem_u32(sS + stage * BQ + i), seg + t, ok);
        }
        cp_async_commit();
    };

    load_tile<BN, HD, BNT>(sK, kg + (size_t)k0 * ks, ks, seq - k0, tid);
    load_tile<BN, HD, BNT>(sV, vg + (size_t)k0 * ks, ks, seq - k0, tid);
    int it = next_item(qb_first - 1);
    if (it >= 0) issue(it, 0); /* commits K, V and the first Q/dO together */
    else cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    constexpr bool KEEP = HD <= 64; /* K and V fragments live in registers for small heads */
    uint32_t kf[KEEP ? HD / 16 : 1][4], vf[KEEP ? HD / 16 : 1][4];
    if (KEEP) {
#pragma unroll
        for (int kk = 0; kk < (KEEP ? HD / 16 : 1); kk++) {
            int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = kk * 16 + (lane >> 4) * 8;
            ldsm_x4(kf[kk][0], kf[kk][1], kf[kk][2], kf[kk][3], smem_u32(sK + swz<HD>(r, cc)));
            ldsm_x4(vf[kk][0], vf[kk][1], vf[kk][2], vf[kk][3], smem_u32(sV + swz<HD>(r, cc)));
        }
    }
    float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dka[i][e] = dva[i][e] = 0.0f;

    const int kra = k0 + warp * 16 + (lane >> 2), krb = kra + 8; /* this thread's key rows */
    int stage = 0;
    while (it >= 0) {
        const int g = it / nqb, qb = it % nqb, h = hq0 + g, q0 = qb * BQ;
        const int nit = next_item(it);
        if (nit >= 0) issue(nit, stage ^ 1);
        const bf16 *cQ = sQ + stage * BQ * HD, *cdO = sdO + stage * BQ * HD;
        const float *cL = sL + stage * BQ, *cD = sD + stage * BQ;
        const int *cS = sS + stage * BQ;

        /* S^T = K Q^T (16 keys x BQ queries per warp) and dP^T = V dO^T */
        float st[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
        for (int i = 0; i < BQ / 8; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[i][e] = dp[i][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t ka[4], va[4];
            if (KEEP) {
#pragma unroll
                for (int e = 0; e < 4; e++) ka[e] = kf[KEEP ? kk : 0][e], va[e] = vf[KEEP ? kk : 0][e];
            } else {
                int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = kk * 16 + (lane >> 4) * 8;
                ldsm_x4(ka[0], ka[1], ka[2], ka[3], smem_u32(sK + swz<HD>(r, cc)));
                ldsm_x4(va[0], va[1], va[2], va[3], smem_u32(sV + swz<HD>(r, cc)));
            }
#pragma unroll
            for (int j = 0; j < BQ / 16; j++) {
                uint32_t b0, b1, b2, b3;
                int r = j * 16 + (lane & 7) + (lane >> 4) * 8, cc = kk * 16 + ((lane >> 3) & 1) * 8;
                ldsm_x4(b0, b1, b2, b3, smem_u32(cQ + swz<HD>(r, cc)));
                mma16816(st[2 * j], ka, b0, b1);
                mma16816(st[2 * j + 1], ka, b2, b3);
                ldsm_x4(b0, b1, b2, b3, smem_u32(cdO + swz<HD>(r, cc)));
                mma16816(dp[2 * j], va, b0, b1);
                mma16816(dp[2 * j + 1], va, b2, b3);
            }
        }
        /* P^T = exp2(S^T * scale*log2e - lse2), masked; dS^T = P^T (dP^T - D) */
        const bool need_mask = k0 + BN - 1 > q0 || seg != NULL || q0 + BQ > seq;
#pragma unroll
        for (int nt = 0; nt < BQ / 8; nt++) {
            const int qc = nt * 8 + (lane & 3) * 2;
            const float2 Ln = *reinterpret_cast<const float2 *>(cL + qc), D2 = *reinterpret_cast<const float2 *>(cD + qc);
            const float2 L2 = make_float2(Ln.x * LOG2E, Ln.y * LOG2E);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = fast_exp2(fmaf(st[nt][e], scale_log2, -((e & 1) ? L2.y : L2.x)));
                if (need_mask) {
                    int qi = q0 + qc + (e & 1), kr = e < 2 ? kra : krb;
                    if (kr > qi || qi >= seq || (seg && kr < cS[qc + (e & 1)])) p = 0.0f;
                }
                st[nt][e] = p;
                dp[nt][e] = p * (dp[nt][e] - ((e & 1) ? D2.y : D2.x));
            }
        }
        /* dV += P^T dO ; dK += dS^T Q */
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) {
            uint32_t pa[4] = {pack_bf16(st[2 * kk][0], st[2 * kk][1]), pack_bf16(st[2 * kk][2], st[2 * kk][3]),
                              pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                              pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3])};
            uint32_t sa[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                              pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                              pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
            for (int dt = 0; dt < HD / 16; dt++) {
                uint32_t b0, b1, b2, b3;
                int r = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, cc = dt * 16 + (lane >> 4) * 8;
                ldsm_x4_t(b0, b1, b2, b3, smem_u32(cdO + swz<HD>(r, cc)));
                mma16816(dva[2 * dt], pa, b0, b1);
                mma16816(dva[2 * dt + 1], pa, b2, b3);
                ldsm_x4_t(b0, b1, b2, b3, smem_u32(cQ + swz<HD>(r, cc)));
                mma16816(dka[2 * dt], sa, b0, b1);
                mma16816(dka[2 * dt + 1], sa, b2, b3);
            }
        }
        /* dS^T to shared memory, [key][query] */
#pragma unroll
        for (int nt = 0; nt < BQ / 8; nt++) {
            int qc = nt * 8 + (lane & 3) * 2, r = warp * 16 + (lane >> 2);
            *reinterpret_cast<uint32_t *>(sdS + swz<BQ>(r, qc)) = pack_bf16(dp[nt][0], dp[nt][1]);
            *reinterpret_cast<uint32_t *>(sdS + swz<BQ>(r + 8, qc)) = pack_bf16(dp[nt][2], dp[nt][3]);
        }
        __syncthreads();
        /* dQ (BQ x HD) += dS (BQ x 64 keys) K: warps split into query tiles x head-dim parts */
        {
            constexpr int QT = BQ / 16, SPLIT = NW / QT, DW = HD / SPLIT;
            const int qt = warp % QT, part = warp / QT;
            float dqa[DW / 8][4];
#pragma unroll
            for (int i = 0; i < DW / 8; i++) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                uint32_t a[4];
                int mi = lane >> 3;
                int r = kk * 16 + (lane & 7) + (mi >> 1) * 8, cc = qt * 16 + (mi & 1) * 8;
                ldsm_x4_t(a[0], a[1], a[2], a[3], smem_u32(sdS + swz<BQ>(r, cc)));
#pragma unroll
                for (int dt = 0; dt < DW / 16; dt++) {
                    uint32_t b0, b1, b2, b3;
                    int rr = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, c2 = part * DW + dt * 16 + (lane >> 4) * 8;
                    ldsm_x4_t(b0, b1, b2, b3, smem_u32(sK + swz<HD>(rr, c2)));
                    mma16816(dqa[2 * dt], a, b0, b1);
                    mma16816(dqa[2 * dt + 1], a, b2, b3);
                }
            }
            int qa_ = q0 + qt * 16 + (lane >> 2), qb_ = qa_ + 8;
            float *dqg = dq_acc + (size_t)b * seq * acc_qs + (size_t)(h - h0) * HD + part * DW;
#pragma unroll
            for (int dt = 0; dt < DW / 8; dt++) {
                int col = dt * 8 + (lane & 3) * 2;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                if (qa_ < seq)
                    atomicAdd(reinterpret_cast<float2 *>(dqg + (size_t)qa_ * acc_qs + col),
                              make_float2(dqa[dt][0] * scale, dqa[dt][1] * scale));
                if (qb_ < seq)
                    atomicAdd(reinterpret_cast<float2 *>(dqg + (size_t)qb_ * acc_qs + col),
                              make_float2(dqa[dt][2] * scale, dqa[dt][3] * scale));
#else
                if (qa_ < seq) {
                    atomicAdd(dqg + (size_t)qa_ * acc_qs + col, dqa[dt][0] * scale);
                    atomicAdd(dqg + (size_t)qa_ * acc_qs + col + 1, dqa[dt][1] * scale);
                }
                if (qb_ < seq) {
                    atomicAdd(dqg + (size_t)qb_ * acc_qs + col, dqa[dt][2] * scale);
                    atomicAdd(dqg + (size_t)qb_ * acc_qs + col + 1, dqa[dt][3] * scale);
                }
#endif
            }
        }
        cp_async_wait_all();
        __syncthreads(); /* next stage landed; this stage's Q/dO/dS no longer read */
        it = nit;
        stage ^= 1;
    }

    if (split) {
        const size_t aks = (size_t)acc_ks, half = (size_t)(gridDim.x / nhc) * seq * aks;
        float *dkg = dkv_acc + (size_t)b * seq * aks + (size_t)(kvh - kv0) * HD, *dvg = dkg + half;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            int col = dt * 8 + (lane & 3) * 2;
            if (kra < seq) {
                atomicAdd(reinterpret_cast<float2 *>(dkg + (size_t)kra * aks + col), make_float2(dka[dt][0] * scale, dka[dt][1] * scale));
                atomicAdd(reinterpret_cast<float2 *>(dvg + (size_t)kra * aks + col), make_float2(dva[dt][0], dva[dt][1]));
            }
            if (krb < seq) {
                atomicAdd(reinterpret_cast<float2 *>(dkg + (size_t)krb * aks + col), make_float2(dka[dt][2] * scale, dka[dt][3] * scale));
                atomicAdd(reinterpret_cast<float2 *>(dvg + (size_t)krb * aks + col), make_float2(dva[dt][2], dva[dt][3]));
            }
        }
        return;
    }
    bf16 *dkg = dk + (size_t)b * seq * ks + (size_t)kvh * HD;
    bf16 *dvg = dv + (size_t)b * seq * ks + (size_t)kvh * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        int col = dt * 8 + (lane & 3) * 2;
        if (kra < seq) {
            *reinterpret_cast<uint32_t *>(dkg + (size_t)kra * ks + col) = pack_bf16(dka[dt][0] * scale, dka[dt][1] * scale);
            *reinterpret_cast<uint32_t *>(dvg + (size_t)kra * ks + col) = pack_bf16(dva[dt][0], dva[dt][1]);
        }
        if (krb < seq) {
            *reinterpret_cast<uint32_t *>(dkg + (size_t)krb * ks + col) = pack_bf16(dka[dt][2] * scale, dka[dt][3] * scale);
            *reinterpret_cast<uint32_t *>(dvg + (size_t)krb * ks + col) = pack_bf16(dva[dt][2], dva[dt][3]);
        }
    }
}

template <int HD>
void launch_fwd(cuda_impl *c, void *o, float *lse, const void *q, const void *k, const void *v, const int32_t *seg,
                const us_attn_shape *sh) {
    if constexpr (HD == 64 || HD == 128) { /* the Hopper kernel (cuda_attn_wgf.cu) first */
        if (c->attn_wg &&
            attn_fwd_wgmma(c->st, c->sm_count, (bf16 *)o, us_attn_ldo(sh), lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seg,
                           sh->batch, sh->seq, sh->heads, sh->kv_heads, HD, sh->scale)) {
            CK_LAUNCH(c);
            return;
        }
    }
    size_t smem = (size_t)(FBM + 4 * FBN) * HD * 2;
    static bool attr_set = false; /* per template instance; one device per process */
    if (!attr_set) {
        CK(c, cudaFuncSetAttribute(k_attn_fwd<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    dim3 grid(sh->heads * sh->batch, (sh->seq + FBM - 1) / FBM);
    float scale_log2 = sh->scale * LOG2E;
    k_attn_fwd<HD><<<grid, FNT, smem, c->st>>>((bf16 *)o, us_attn_ldo(sh), lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seg,
                                               sh->seq, sh->heads, sh->kv_heads, scale_log2);
    CK_LAUNCH(c);
}

__global__ void k_acc_to_bf16_2d(bf16 *d, size_t dstride, const float *s, int cols, size_t rows) {
    const size_t n4 = rows * (size_t)(cols / 4);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / (cols / 4);
        const int c = (int)(i % (cols / 4)) * 4;
        const float4 v = *reinterpret_cast<const float4 *>(s + r * cols + c);
        __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
        uint2 u;
        u.x = *reinterpret_cast<uint32_t *>(&lo);
        u.y = *reinterpret_cast<uint32_t *>(&hi);
        *reinterpret_cast<uint2 *>(d + r * dstride + c) = u; /* c, dstride multiples of 4: 8-byte aligned */
    }
}

void acc_to_bf16(cuda_impl *c, void *dst, size_t dstride, const float *src, int cols, size_t rows) {
    size_t n4 = rows * (size_t)(cols / 4);
    unsigned g = (unsigned)US_MIN((n4 + 255) / 256, (size_t)c->sm_count * 32);
    k_acc_to_bf16_2d<<<g ? g : 1, 256, 0, c->st>>>((bf16 *)dst, dstride, src, cols, rows);
    CK_LAUNCH(c);
}

/* The attention backward runs over chunks of nh query heads so that its f32 accumulators (dQ for
 * the chunk's heads; dK, dV for their kv heads under GQA) stay within c->attn_budget (64 MiB;
 * US_CUDA_ATTN_ACC_BYTES overrides, for tests): nh is the whole head count when that fits, else a
 * multiple of the group size, else a divisor of it (then the kv head's dK/dV accumulate over the
 * group's chunks). */

size_t attn_acc_bytes(size_t T, int nh, int GH, int hd) {
    size_t b = T * (size_t)nh * hd * 4;
    if (GH > 1) b += 2 * T * (size_t)(nh >= GH ? nh / GH : 1) * hd * 4;
    return b;
}

/* The Hopper kernel (cuda_attn_wg.cu) takes every head at once: its accumulators for all heads
 * may use c->attn_wg_bytes (an eighth of the card, at least eight times the budget: on 80 GB the
 * 8B shape up to ~420k tokens, where it runs 1.8x faster than the kernel below). Other head sizes,
 * larger accumulators or US_CUDA_ATTN_WG=0 keep the kernel below. */
bool attn_wg_fits(cuda_impl *c, size_t T, int H, int KV, int hd) {
    return c->attn_wg && (hd == 64 || hd == 128) && H % KV == 0 &&
           attn_acc_bytes(T, H, H / KV, hd) <= c->attn_wg_bytes;
}

/* D = rowsum(dO * O) for every (token, head) */
void attn_bwd_pre(cuda_impl *c, float *D, const void *dout, const void *o, const us_attn_shape *sh) {
    const size_t TH = (size_t)sh->batch * sh->seq * sh->heads;
    const int hd = sh->head_dim, ldo = us_attn_ldo(sh);
    const bool vec = hd % 8 == 0 && ldo % 8 == 0 && aligned16(dout) && aligned16(o);
    if (vec && hd == 64)
        k_attn_bwd_pre_vec<8><<<ceil_div_u(TH * 8, 256), 256, 0, c->st>>>(D, (const bf16 *)dout, (const bf16 *)o, ldo, sh->heads, TH);
    else if (vec && hd == 128)
        k_attn_bwd_pre_vec<16><<<ceil_div_u(TH * 16, 256), 256, 0, c->st>>>(D, (const bf16 *)dout, (const bf16 *)o, ldo, sh->heads, TH);
    else
        k_attn_bwd_pre<<<ceil_div_u(TH, 8), 256, 0, c->st>>>(D, (const bf16 *)dout, (const bf16 *)o, ldo, sh->heads, TH, hd);
    CK_LAUNCH(c);
}

int attn_chunk_heads(size_t budget, size_t T, int H, int KV, int hd) {
    const int GH = H / KV;
    for (int nh = H; nh >= 1; nh--) {
        bool unit = nh % GH == 0 ? H % nh == 0 : GH % nh == 0;
        if (unit && attn_acc_bytes(T, nh, GH, hd) <= budget) return nh;
    }
    return 1;
}

template <int HD, int BN>
void launch_bwd(cuda_impl *c, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                const void *v, const void *o, const float *lse, const int32_t *seg, const us_attn_shape *sh,
                const us_qkv_merge_out *mg) {
    constexpr int BQ = HD >= 128 ? 32 : 64;
    using L = BwdSmem<HD, BQ, BN>;
    const int T = sh->batch * sh->seq, H = sh->heads, KV = sh->kv_heads, GH = H / KV;
    const int nh = attn_chunk_heads(c->attn_budget, (size_t)T, H, KV, HD), nkv = nh >= GH ? nh / GH : 1;
    const bool split = GH > 1; /* GQA: a CTA per query head balances the causal work */
    const size_t qs = (size_t)H * HD, ks = (size_t)KV * HD;
    const size_t nqc = (size_t)T * nh * HD, nkc = (size_t)T * nkv * HD;
    const size_t TH = (size_t)T * H;
    if (attn_wg_fits(c, (size_t)T, H, KV, HD)) { /* every head at once through wgmma */
        float *wq = (float *)us_cuda_scratch(c, SCR_ATTN_DQ, attn_wg_dq_scratch_bytes(sh->batch, sh->seq, H, KV, HD));
        float *wkv = split ? (float *)us_cuda_scratch(c, SCR_ATTN_DKV, 2 * (size_t)T * KV * HD * 4) : NULL;
        float *wD = (float *)us_cuda_scratch(c, SCR_ATTN_D, TH * 4);
        int *wseg = seg ? (int *)us_cuda_scratch(c, SCR_ATTN_SEG, (size_t)((sh->seq + 63) / 64) * sh->batch * 4) : NULL;
        if (!wq || !wD || (split && !wkv) || (seg && !wseg)) return;
        attn_bwd_pre(c, wD, dout, o, sh);
        int f32_left = 0; /* merging: the kernel may leave dQ (and GQA's dK, dV) as f32 sums */
        if (attn_bwd_wgmma(c->st, c->sm_count, (bf16 *)dq, (bf16 *)dk, (bf16 *)dv, wq, wkv, (const bf16 *)dout,
                           (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, lse, wD, sh->batch, sh->seq, H, KV, HD,
                           sh->scale, wseg, seg, c->attn_wg_dq, mg ? &f32_left : NULL)) {
            CK_LAUNCH(c);
            if (f32_left)
                us_cuda_qkv_merge(c, mg, wq, true, f32_left == 1 ? wkv : dk,
                                  f32_left == 1 ? wkv + (size_t)T * KV * HD : dv, f32_left == 1, T, H, KV, HD);
            else if (mg)
                us_cuda_qkv_merge(c, mg, dq, false, dk, dv, false, T, H, KV, HD);
            return;
        }
    }
    float *dq_acc = (float *)us_cuda_scratch(c, SCR_ATTN_DQ, nqc * 4);
    float *D = (float *)us_cuda_scratch(c, SCR_ATTN_D, (size_t)T * H * 4);
    int nqb = (sh->seq + BQ - 1) / BQ;
    int *segmin = NULL;
    if (seg) segmin = (int *)us_cuda_scratch(c, SCR_ATTN_SEG, (size_t)nqb * sh->batch * 4);
    float *dkv = split ? (float *)us_cuda_scratch(c, SCR_ATTN_DKV, 2 * nkc * 4) : NULL;
    if (!dq_acc || !D || (seg && !segmin) || (split && !dkv)) return;
    attn_bwd_pre(c, D, dout, o, sh);
    if (seg) {
        int n = nqb * sh->batch;
        k_seg_blockmin<<<ceil_div_u(n, 128), 128, 0, c->st>>>(segmin, seg, sh->seq, nqb, BQ, sh->batch);
        CK_LAUNCH(c);
    }
    static bool attr_set = false;
    if (!attr_set) {
        CK(c, cudaFuncSetAttribute(k_attn_bwd<HD, BQ, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L::bytes));
        attr_set = true;
    }
    for (int h0 = 0; h0 < H; h0 += nh) {
        const bool group_start = h0 % GH == 0, group_end = (h0 + nh) % GH == 0;
        const int kv0 = h0 / GH;
        CK(c, cudaMemsetAsync(dq_acc, 0, nqc * 4, c->st));
        if (split && group_start) CK(c, cudaMemsetAsync(dkv, 0, 2 * nkc * 4, c->st));
        dim3 grid(nh * sh->batch, (sh->seq + BN - 1) / BN);
        k_attn_bwd<HD, BQ, BN><<<grid, BN * 2, L::bytes, c->st>>>(dq_acc, (bf16 *)dk, (bf16 *)dv, dkv, (const bf16 *)dout,
                                                           (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, lse, D,
                                                           seg, segmin, sh->seq, H, KV, sh->scale, sh->scale * LOG2E,
                                                           h0, nh * HD, nkv * HD);
        CK_LAUNCH(c);
        acc_to_bf16(c, (bf16 *)dq + (size_t)h0 * HD, qs, dq_acc, nh * HD, (size_t)T);
        if (split && group_end) {
            acc_to_bf16(c, (bf16 *)dk + (size_t)kv0 * HD, ks, dkv, nkv * HD, (size_t)T);
            acc_to_bf16(c, (bf16 *)dv + (size_t)kv0 * HD, ks, dkv + nkc, nkv * HD, (size_t)T);
        }
    }
    if (mg) us_cuda_qkv_merge(c, mg, dq, false, dk, dv, false, T, H, KV, HD);
}

bool shape_ok(cuda_impl *c, const us_attn_shape *sh) {
    int hd = sh->head_dim;
    if (hd != 16 && hd != 32 && hd != 64 && hd != 128) {
        char m[96];
        snprintf(m, sizeof m, "head_dim %d not supported (16, 32, 64, 128)", hd);
        us_cuda_report(c, "attention", m, __FILE__, __LINE__);
        return false;
    }
    if (sh->kv_heads <= 0 || sh->heads % sh->kv_heads) {
        us_cuda_report(c, "attention", "heads must be a multiple of kv_heads", __FILE__, __LINE__);
        return false;
    }
    return sh->batch > 0 && sh->seq > 0;
}

} /* namespace */

size_t us_cuda_attn_scratch_bytes(cuda_impl *c, int T, const us_attn_shape *sh) {
    const int hd = sh->head_dim, H = sh->heads, KV = sh->kv_heads > 0 ? sh->kv_heads : 1;
    if (T <= 0 || H <= 0 || H % KV) return 0;
    const int BQ = hd >= 128 ? 32 : 64, batch = sh->batch > 0 ? sh->batch : 1;
    const int seq = sh->seq > 0 ? sh->seq : T / batch;
    const int nh = attn_chunk_heads(c->attn_budget, (size_t)T, H, KV, hd), GH = H / KV;
    size_t b = attn_acc_bytes((size_t)T, nh, GH, hd);               /* dQ (and dK, dV) accumulators */
    if (attn_wg_fits(c, (size_t)T, H, KV, hd)) /* every head, and the counters of its fused casts */
        b = US_MAX(b, attn_wg_dq_scratch_bytes(batch, seq, H, KV, hd) + (GH > 1 ? 2 * (size_t)T * KV * hd * 4 : 0));
    b += (size_t)T * H * 4;                                           /* D = rowsum(dO * O) */
    b += (size_t)((seq + BQ - 1) / BQ) * batch * 4; /* per-block segment minimum (BQ <= 64, the wgmma kernel's) */
    return b;
}

void us_cuda_attn_fwd(us_backend *be, void *o, float *lse, const void *q, const void *k, const void *v,
                      const int32_t *seg_start, const us_attn_shape *sh) {
    cuda_impl *c = CI(be);
    if (!shape_ok(c, sh)) return;
    PROF(c, P_ATTN_F);
    switch (sh->head_dim) {
    case 16: launch_fwd<16>(c, o, lse, q, k, v, seg_start, sh); break;
    case 32: launch_fwd<32>(c, o, lse, q, k, v, seg_start, sh); break;
    case 64: launch_fwd<64>(c, o, lse, q, k, v, seg_start, sh); break;
    default: launch_fwd<128>(c, o, lse, q, k, v, seg_start, sh); break;
    }
}

void us_cuda_attn_bwd(us_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                      const void *v, const void *o, const float *lse, const int32_t *seg_start,
                      const us_attn_shape *sh, const us_qkv_merge_out *merge) {
    cuda_impl *c = CI(be);
    if (!shape_ok(c, sh)) return;
    PROF(c, P_ATTN_B);
    switch (sh->head_dim) {
    case 16: launch_bwd<16, 64>(c, dq, dk, dv, dout, q, k, v, o, lse, seg_start, sh, merge); break;
    case 32: launch_bwd<32, 64>(c, dq, dk, dv, dout, q, k, v, o, lse, seg_start, sh, merge); break;
    case 64:
        if (c->attn_bn == 64) launch_bwd<64, 64>(c, dq, dk, dv, dout, q, k, v, o, lse, seg_start, sh, merge);
        else launch_bwd<64, 128>(c, dq, dk, dv, dout, q, k, v, o, lse, seg_start, sh, merge);
        break;
    default:
        if (c->attn_bn == 64) launch_bwd<128, 64>(c, dq, dk, dv, dout, q, k, v, o, lse, seg_start, sh, merge);
        else launch_bwd<128, 128>(c, dq, dk, dv, dout, q, k, v, o, lse, seg_start, sh, merge);
        break;
    }
}
