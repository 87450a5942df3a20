/* cuda_attn_wg.cu — causal flash-attention backward for Hopper (sm_90a) on warpgroup MMA
 * (wgmma.mma_async, bf16 operands, fp32 accumulation), with GQA.
 *
 * Grid: one CTA per (batch row x query head = "unit", key block of BN = 128 keys), 1-D: the units
 * go in chunks whose dq_acc rows and Q / dO fit in about 24 MiB of L2 (at least two CTAs per SM),
 * all key blocks of a chunk before the next chunk, block 0 (the longest walk) first inside it, so
 * the dQ reductions and the Q / dO re-reads hit L2 rather than HBM (measured: 14.9 -> 14.4 ms at
 * s16384 hd128, 0.85 -> 0.74 ms at b4 s2048 hd64). A CTA is two warpgroups (256 threads, one CTA
 * per SM: ~250 / ~190 registers for hd 128 / 64); warpgroup w owns keys
 * [64w, 64w + 64) of the block and keeps their dK and dV (64 x hd each, fp32) in registers for the
 * whole walk over the query blocks of BQ = 64 rows that can see them. Per query block:
 *
 *   S^T  = K_w Q^T     wgmma m64n64k16, A = K (smem, K-major), B = Q (smem, K-major)
 *   dP^T = V_w dO^T    same shape with V and dO (a second commit group: the exponentials of
 *                      S^T run while it is in flight)
 *   P^T  = exp2(S^T * scale*log2e - lse*log2e), causally masked; dS^T = scale * P^T (dP^T - D)
 *   dV  += P^T dO      wgmma m64n{hd}k16, A = P^T from registers (the accumulator layout is the
 *   dK  += dS^T Q      A-fragment layout), B = dO / Q (smem, MN-major: the transpose bit)
 *   dS^T -> smem       [key][query], 4-byte stores, then fence.proxy.async and a CTA barrier
 *   dQ   = dS K        wgmma m64n{hd/2}k16, both operands MN-major in smem; warpgroup w takes
 *                      head-dim columns [w hd/2, (w+1) hd/2) over all 128 keys; the result is
 *                      added to the f32 accumulator dq_acc, for hd 64 by red.global.add.v4.f32
 *                      from registers (lane pairs swap halves so each lane holds 4 consecutive
 *                      columns of one row), for hd 128 by writing the warpgroup's whole tile to
 *                      shared memory in the accumulators' register order and one
 *                      cp.reduce.async.bulk .add.f32 of it (the bulk-copy engine does the adds;
 *                      dq_acc is laid out tile by tile in that order and the cast kernel puts
 *                      the rows back). Measured (2026-11-23, mean of 20): hd 128 s2048 0.302 ms
 *                      against 0.315 by atomics and 0.310 by a bulk add per row, s16384 13.83
 *                      against 14.64 / 14.09; hd 64 b4 s2048 0.747 against 0.737 by atomics
 *
 * Q, dO, lse and D of the next query block are fetched by cp.async into the other of two stages
 * while the current one is computed; one CTA barrier per query block publishes them (each thread
 * waits for its own copies and fences them into the async proxy first) and a second one publishes
 * dS. At the end dK / dV are stored as bf16 directly (KV == H) or, under GQA, summed over the
 * group by v4 f32 atomics into dkv_acc. dq_acc (and dkv_acc) are zeroed before and cast to bf16
 * after the kernel (one cast kernel for dQ, dK and dV).
 *
 * Packed segments (seg != NULL, template SEG): token i sees keys seg[i] <= j <= i. A pre-kernel
 * takes the minimum of seg over each query block of 64 rows (into seg_scratch); a CTA skips the
 * query blocks whose minimum lies past its last key (a warp ballot over 32 prefetched minima
 * finds the next block, so the cp.async of its tiles is issued as before), and masks the rest
 * with the rows' seg starts, which travel with lse and D in the stage. The plain causal kernel is
 * a separate instance (SEG = false), so it pays nothing for this.
 *
 * Fused bf16 casts (FUSE 1 / 2, wg_fuse_mode; measured slower, off by default): per-unit and
 * per-(kv head, key block) arrival counters after dq_acc, each CTA fences its atomics and counts
 * itself at its end, the last casts. Measured (H100, mean of 20) against the separate cast:
 * hd128 b1 s2048 H32/8 0.373 / 0.343 (dK/dV only) vs 0.317 ms; hd64 b4 s2048 0.939 / 0.933 vs
 * 0.746 ms; hd64 b8 s2048 H9/3 0.535 / 0.531 vs 0.419 ms. The fence is the cost: it waits for the
 * CTA's fire-and-forget f32 reductions, which queue deeply at L2 in this reduction-bound kernel
 * (an earlier per-query-block variant, fencing every iteration, was slower still: 0.425 ms at
 * hd128). A faster scheme would have to avoid waiting for the reductions in the compute warps.
 *
 * Shared-memory tiles use the canonical 128-byte-swizzle layout of wgmma: a tile of R rows x C
 * bf16 columns is stored as C/64 column blocks of R rows of 128 bytes, each block 1024-byte
 * aligned, the 16-byte chunk c of row r at chunk position c ^ (r & 7). Read K-major (rows = M/N,
 * 128-byte rows along K) a k-step of 16 moves the start address 32 bytes inside the row; read
 * MN-major (rows = K) the leading byte offset is the column-block stride and the stride byte
 * offset the 1024 bytes between groups of 8 rows.
 *
 * The dQ reduction is the limiter: without it (timing experiment, variant DQM 0) the kernel runs
 * at 611 TFLOP/s at s16384 hd128 against 397 with it, at hd 64 b4 s2048 325 against 233. How the
 * adds are issued matters little (above): their volume does, f32 sums of seq / 128 partial tiles
 * per query row. Halving it by running key blocks 2p, 2p + 1 as a cluster of two CTAs that sum
 * their tiles in the first one's shared memory (st.async into double buffers, full / empty
 * mbarriers, then atomics or one tile add) was correct but slower: hd 64 b4 s2048 0.939 / 0.948 ms
 * against 0.745, hd 128 s2048 0.389 / 0.370 against 0.310, s16384 17.2 / 16.1 against 13.75; in
 * training 1B 82.6k against 85.4k tokens/s (2026-11-23, commit dce5f63, reverted): the pair runs
 * in lockstep, the first CTA waiting for its partner's tile every block, and clusters of two
 * schedule the causal walks of unequal length worse. A longer key block per CTA needs more
 * registers than a thread has. Other variants measured and dropped: BQ = 128 for hd 64
 * (no gain), one warpgroup per CTA with BN = 64 and two CTAs per SM (twice the dQ reductions:
 * 1.6x to 2.6x slower), deferring the dQ adds behind the next block's S (ptxas inserts waits).
 *
 * wgmma and the swizzle need sm_90a; the plain compute_90 PTX pass compiles the kernel as a trap
 * (the host entry returns false on devices other than 9.0).
 *
 * Note: nvcc 13.0 dropped the statement following a brace-less `if constexpr (...) for (...) {}`
 * inside the issue lambda (the cp.async commit: the plain causal kernel then raced on its tiles);
 * keep braces around the bodies of `if constexpr` here. */
#include "cuda_attn_wg.cuh"
#include "cuda_ptx.cuh"
#include "cuda_wgmma.cuh"

#include <stdint.h>

namespace {

typedef __nv_bfloat16 wbf16;

#ifdef WG_SM90A
/* release / acquire fence at device scope (the fused casts' counters) */
__device__ __forceinline__ void fence_gpu() { asm volatile("fence.acq_rel.gpu;\n" ::: "memory"); }
#endif

template <int HD, int WG_BQ, int WG_BN, int DQM = 1>
struct WgSmem { /* byte offsets from a 1024-aligned base */
    /* DQM 2: dQ staging rows of hd/2 floats + 32 bytes (bank spread), per warpgroup 64 rows */
    static constexpr int DQ_RS = HD / 2 * 4 + 32;
    /* DQM 3: one warpgroup's dQ tile (64 rows x hd/2 f32), two buffers per warpgroup */
    static constexpr int DQ_TILE = 64 * (HD / 2) * 4;
    static constexpr int K = 0, V = K + WG_BN * HD * 2, Q = V + WG_BN * HD * 2, DO = Q + 2 * WG_BQ * HD * 2,
                         DS = DO + 2 * WG_BQ * HD * 2, L = DS + WG_BN * WG_BQ * 2, D = L + 2 * WG_BQ * 4,
                         SG = D + 2 * WG_BQ * 4, DQ = SG + 2 * WG_BQ * 4,
                         END = DQ + (DQM == 2 ? 2 * 64 * DQ_RS : DQM == 3 ? 2 * 2 * DQ_TILE : 0);
    static constexpr size_t bytes = (size_t)END + 1024; /* + alignment slack */
};

/* DQM 3: the dQ tile of (unit, query block of 64, warpgroup) in dq_acc, in tiles of 64 x hd/2
 * floats; inside a tile float4 j of thread t (the accumulator's d[4j..4j+3]) at j * 128 + t */
#ifdef WG_SM90A
__device__ __forceinline__ size_t wg_dq_tile_index(int unit, int qb, int wg, int nqb) {
    return ((size_t)unit * nqb + qb) * 2 + wg;
}
#endif

/* DQM: how dQ tiles reach dq_acc: 1 red.global.add.v4.f32 from registers; 2 staged in shared
 * memory and added by the bulk-copy engine (cp.reduce.async.bulk .add.f32, a row per lane);
 * 3 the whole tile of a warpgroup in one bulk add, into dq_acc laid out tile by tile in the
 * accumulator's register order (wg_dq_tile_index; the cast kernel puts the rows back);
 * 0 not at all (timing experiments only) */
template <int HD, int WG_BQ, int WG_BN, int DQM, int FUSE, bool SEG>
__global__ void __launch_bounds__(WG_BN * 2, WG_BN == 64 ? 2 : 1)
    k_attn_bwd_wg(float *dq_acc, wbf16 *dq, wbf16 *dk, wbf16 *dv, float *dkv_acc, int *cnt, const wbf16 *dout,
                  const wbf16 *q, const wbf16 *k, const wbf16 *v, const float *lse, const float *Dg,
                  const int32_t *seg, const int *segmin, int seq, int H, int KVH, float scale, float scale_log2,
                  int units, int nkb, int chunk) {
#ifdef WG_SM90A
    using L = WgSmem<HD, WG_BQ, WG_BN, DQM>;
    static_assert((DQM != 2 && DQM != 3) || (WG_BN == 128 && WG_BQ == 64), "bulk dQ: two warpgroups, BQ = 64");
    static_assert(DQM != 3 || FUSE != 1, "tile-ordered dQ: cast after the kernel");
    constexpr int WG_NT = WG_BN * 2;
    static_assert((WG_BQ * HD / 8) % WG_NT == 0 && (WG_BN * HD / 8) % WG_NT == 0, "tile"); /* wg_load: no tail */
    static_assert(WG_BN == 128 || WG_BQ == 64, "one warpgroup: BQ = 64");
    constexpr bool SPLITC = WG_BN == 128 && WG_BQ == 64; /* dQ: warpgroups split the head dim */
    constexpr int HN = HD / 2; /* dK / dV accumulator registers */
    /* dQ of a query block: two warpgroups and BQ = 64: warpgroup w takes head-dim columns
     * [w hd/2, (w+1) hd/2) of the 64 rows; BQ = 128: rows [64w, 64w + 64), all columns; one
     * warpgroup (BN = 64): everything */
    constexpr int DQN = SPLITC ? HD / 2 : HD;
    extern __shared__ unsigned char wg_smraw[];
    const uint32_t sraw = smem_u32(wg_smraw), sb = (sraw + 1023u) & ~1023u;
    unsigned char *sp = wg_smraw + (sb - sraw);
    const float *sL = reinterpret_cast<const float *>(sp + L::L), *sD = reinterpret_cast<const float *>(sp + L::D);
    const int *sS = reinterpret_cast<const int *>(sp + L::SG);
    __shared__ int s_cast; /* FUSE: bit 0 this CTA casts its unit's dQ, bit 1 its key block's dK / dV */

    /* blockIdx.x -> (unit = batch row * H + head, key block): units go in chunks of `chunk`, all
     * key blocks of a chunk before the next chunk (its dq_acc rows and Q / dO stay in L2), inside
     * a chunk the first key blocks (the longest walks) first */
    int unit, kblk;
    {
        const int per = chunk * nkb, c = blockIdx.x / per, r = blockIdx.x % per;
        const int cc = min(chunk, units - c * chunk);
        kblk = r / cc;
        unit = c * chunk + r % cc;
    }
    const int h = unit % H, b = unit / H, kvh = h / (H / KVH);
    const int k0 = kblk * WG_BN;
    const int tid = threadIdx.x, wg = tid >> 7, wi = (tid >> 5) & 3, lane = tid & 31;
    const size_t qs = (size_t)H * HD, ks = (size_t)KVH * HD;
    const int nqb = (seq + WG_BQ - 1) / WG_BQ, qb0 = k0 / WG_BQ;
    const int klast = k0 + WG_BN - 1;
    const int *smin = SEG ? segmin + (size_t)b * nqb : nullptr; /* per query block minimum of seg */

    auto issue = [&](int qb, int stage) {
        const int q0 = qb * WG_BQ;
        const size_t off = ((size_t)b * seq + q0) * qs + (size_t)h * HD;
        wg_load<WG_BQ, HD, WG_NT>(sb + L::Q + stage * WG_BQ * HD * 2, q + off, qs, seq - q0, tid);
        wg_load<WG_BQ, HD, WG_NT>(sb + L::DO + stage * WG_BQ * HD * 2, dout + off, qs, seq - q0, tid);
        if (tid < 2 * WG_BQ) {
            const int i = tid & (WG_BQ - 1);
            const bool ok = q0 + i < seq;
            const size_t t = (size_t)b * seq + (ok ? q0 + i : 0);
            const float *src = (tid < WG_BQ ? lse : Dg) + t * H + h;
            cp_async4(sb + (tid < WG_BQ ? L::L : L::D) + (stage * WG_BQ + i) * 4, src, ok);
        }
        if constexpr (SEG) { /* (braces: nvcc 13.0 dropped the statement after a brace-less one) */
            for (int i = tid; i < WG_BQ; i += WG_NT) {
                const bool ok = q0 + i < seq;
                cp_async4(sb + L::SG + (stage * WG_BQ + i) * 4, seg + (size_t)b * seq + (ok ? q0 + i : 0), ok);
            }
        }
        cp_async_commit();
    };
    /* packed segments: the first query block from p on that some query of it lets this CTA's keys
     * through (a warp-wide scan of the block minima, 32 at a time) */
    auto scan = [&](int p) -> int {
        for (; p < nqb; p += 32) {
            const int i = p + lane;
            const unsigned m = __ballot_sync(0xffffffffu, i < nqb && __ldg(smin + i) <= klast);
            if (m) return p + __ffs(m) - 1;
        }
        return nqb;
    };
    {
        const size_t off = ((size_t)b * seq + k0) * ks + (size_t)kvh * HD;
        wg_load<WG_BN, HD, WG_NT>(sb + L::K, k + off, ks, seq - k0, tid);
        wg_load<WG_BN, HD, WG_NT>(sb + L::V, v + off, ks, seq - k0, tid);
    }
    int cur = SEG ? scan(qb0) : qb0;                      /* the query block to compute */
    int nxt = SEG ? (cur < nqb ? scan(cur + 1) : nqb) : cur + 1; /* the one after it */
    if (cur < nqb) issue(cur, 0); /* one group with K and V */
    else cp_async_commit();

    float dka[HN], dva[HN];
#pragma unroll
    for (int i = 0; i < HN; i++) dka[i] = dva[i] = 0.0f;

    const int krow = wg * 64 + wi * 16 + (lane >> 2); /* this thread's key rows: krow, krow + 8 */
    const int kr0 = k0 + krow, kr1 = kr0 + 8;
    const int wk_last = k0 + wg * 64 + 63; /* last key of this warpgroup */
    /* dQ: this warpgroup's head-dim columns inside K (MN-major B) */
    const uint32_t kq_off = SPLITC ? ((wg * HN) >> 6) * WG_BN * 128 + ((wg * HN) & 63) * 2 : 0;
    const uint32_t dsq_off = WG_BQ == 128 ? wg * WG_BN * 128 : 0; /* the warpgroup's queries in dS^T */
    const int dq_col = SPLITC ? wg * HN : 0, dq_row = WG_BQ == 128 ? wg * 64 : 0;

    /* adds a finished dQ tile (this thread's part) to dq_acc */
    auto flush = [&](float (&dqa)[DQN / 2], int q0) {
        const int qa_ = q0 + dq_row + wi * 16 + (lane >> 2), qb_ = qa_ + 8;
        const bool odd = lane & 1;
        const int row = odd ? qb_ : qa_;
        float *dqg = dq_acc + (size_t)b * seq * qs + (size_t)h * HD + dq_col + (lane & 3) * 2 - (odd ? 2 : 0);
#pragma unroll
        for (int j = 0; j < DQN / 8; j++) {
            const float a0 = dqa[4 * j], a1 = dqa[4 * j + 1], b0 = dqa[4 * j + 2], b1 = dqa[4 * j + 3];
            const float r0 = __shfl_xor_sync(0xffffffffu, odd ? a0 : b0, 1);
            const float r1 = __shfl_xor_sync(0xffffffffu, odd ? a1 : b1, 1);
            const float4 val = odd ? make_float4(r0, r1, b0, b1) : make_float4(a0, a1, r0, r1);
            if (row < seq) atomicAdd(reinterpret_cast<float4 *>(dqg + (size_t)row * qs + j * 8), val);
        }
    };

    for (int it = 0; cur < nqb; it++) {
        const int stage = it & 1, q0 = cur * WG_BQ;
        cp_async_wait_all();
        fence_async_smem();
        if constexpr (DQM == 3) { /* the dQ buffer of two blocks ago has been read by its bulk add */
            if ((tid & 127) == 0) asm volatile("cp.async.bulk.wait_group.read 1;\n" ::: "memory");
        }
        __syncthreads(); /* stage landed; the previous block's dS and stage are no longer read */
        if (nxt < nqb) issue(nxt, stage ^ 1);
        int pre = 0x7fffffff; /* block minima after nxt, for the next scan */
        if (SEG && nxt + 1 + lane < nqb) pre = __ldg(smin + nxt + 1 + lane);
        const uint32_t sQ = sb + L::Q + stage * WG_BQ * HD * 2, sdO = sb + L::DO + stage * WG_BQ * HD * 2;

        float sacc[WG_BQ / 2], pacc[WG_BQ / 2];
        /* acc = (this warpgroup's 64 keys of the K or V tile at kv) x (the Q or dO tile at qo)^T, both
         * K-major in 128-byte swizzled column slabs; committed as one wgmma group */
        auto kv_by_q = [&](float(&acc)[WG_BQ / 2], uint32_t kv, uint32_t qo) {
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                const uint32_t a = kv + (kk >> 2) * WG_BN * 128 + wg * 64 * 128 + (kk & 3) * 32;
                const uint32_t b = qo + (kk >> 2) * WG_BQ * 128 + (kk & 3) * 32;
                wg_ss<WG_BQ, 0, 0>(acc, wg_desc(a, 16, 1024), wg_desc(b, 16, 1024), kk);
            }
            wg_commit();
        };
        wg_fence();
        kv_by_q(sacc, sb + L::K, sQ);  /* S^T = K Q^T */
        kv_by_q(pacc, sb + L::V, sdO); /* dP^T = V dO^T */
        wg_wait<1>();
        reg_pin(sacc);

        const float *cL = sL + stage * WG_BQ, *cD = sD + stage * WG_BQ;
        const bool need_mask = SEG || wk_last > q0 || q0 + WG_BQ > seq;
        const int *cS = sS + stage * WG_BQ;
#pragma unroll
        for (int j = 0; j < WG_BQ / 8; j++) {
            const int qc = j * 8 + (lane & 3) * 2;
            const float2 Ln = *reinterpret_cast<const float2 *>(cL + qc);
            const float l0 = Ln.x * WG_LOG2E, l1 = Ln.y * WG_LOG2E;
            int2 sg2 = make_int2(0, 0);
            if constexpr (SEG) {
                sg2 = *reinterpret_cast<const int2 *>(cS + qc);
            }
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = fast_exp2(fmaf(sacc[4 * j + e], scale_log2, -((e & 1) ? l1 : l0)));
                if (need_mask) {
                    const int qi = q0 + qc + (e & 1), kr = e < 2 ? kr0 : kr1;
                    if (kr > qi || qi >= seq || (SEG && kr < ((e & 1) ? sg2.y : sg2.x))) p = 0.0f;
                }
                sacc[4 * j + e] = p;
            }
        }
        uint32_t pa[WG_BQ / 16][4], sa[WG_BQ / 16][4];
#pragma unroll
        for (int kk = 0; kk < WG_BQ / 16; kk++)
#pragma unroll
            for (int e = 0; e < 4; e++) pa[kk][e] = pack_bf16(sacc[8 * kk + 2 * e], sacc[8 * kk + 2 * e + 1]);
        wg_wait<0>();
        reg_pin(pacc);
#pragma unroll
        for (int j = 0; j < WG_BQ / 8; j++) {
            const int qc = j * 8 + (lane & 3) * 2;
            const float2 D2 = *reinterpret_cast<const float2 *>(cD + qc);
#pragma unroll
            for (int e = 0; e < 4; e++)
                pacc[4 * j + e] = scale * sacc[4 * j + e] * (pacc[4 * j + e] - ((e & 1) ? D2.y : D2.x));
        }
#pragma unroll
        for (int kk = 0; kk < WG_BQ / 16; kk++)
#pragma unroll
            for (int e = 0; e < 4; e++) sa[kk][e] = pack_bf16(pacc[8 * kk + 2 * e], pacc[8 * kk + 2 * e + 1]);

        /* dS^T to shared memory: chunk j of rows krow / krow + 8 is sa[j/2][2(j&1)] / [2(j&1)+1] */
#pragma unroll
        for (int j = 0; j < WG_BQ / 8; j++) {
            const int qc = j * 8 + (lane & 3) * 2;
            *reinterpret_cast<uint32_t *>(sp + L::DS + sw128<WG_BN>(krow, qc)) = sa[j >> 1][2 * (j & 1)];
            *reinterpret_cast<uint32_t *>(sp + L::DS + sw128<WG_BN>(krow + 8, qc)) = sa[j >> 1][2 * (j & 1) + 1];
        }
        fence_async_smem();

        /* dV += P^T dO, dK += dS^T Q (B MN-major: rows are the queries) */
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < WG_BQ / 16; kk++)
            wg_rs<HD, 1>(dva, pa[kk], wg_desc(sdO + kk * 2048, WG_BQ * 128, 1024), 1);
#pragma unroll
        for (int kk = 0; kk < WG_BQ / 16; kk++)
            wg_rs<HD, 1>(dka, sa[kk], wg_desc(sQ + kk * 2048, WG_BQ * 128, 1024), 1);
        wg_commit();
        __syncthreads(); /* dS^T of both warpgroups in shared memory */

        /* dQ (64 queries x HN columns) = dS K: A = dS^T tile read MN-major, B = K read MN-major */
        float dqa[DQN / 2];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < WG_BN / 16; kk++) {
            const uint64_t da = wg_desc(sb + L::DS + dsq_off + kk * 2048, WG_BN * 128, 1024);
            const uint64_t db = wg_desc(sb + L::K + kq_off + kk * 2048, WG_BN * 128, 1024);
            wg_ss<DQN, 1, 1>(dqa, da, db, kk);
        }
        wg_commit();
        wg_wait<0>();
        reg_pin(dqa);
        reg_pin(dka);
        reg_pin(dva);
        reg_pin(pa);
        reg_pin(sa);

        if constexpr (DQM == 1) {
            flush(dqa, q0);
        } else if constexpr (DQM == 2) {
            /* this warp's 16 rows x hd/2 columns: stage, then a bulk reduce-add per row */
            const uint32_t srow = sb + L::DQ + (wg * 64 + wi * 16) * L::DQ_RS;
            if (lane < 16) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
            __syncwarp();
#pragma unroll
            for (int j = 0; j < HN / 8; j++) {
                const int r = lane >> 2, c = j * 8 + (lane & 3) * 2;
                *reinterpret_cast<float2 *>(sp + (srow - sb) + r * L::DQ_RS + c * 4) = make_float2(dqa[4 * j], dqa[4 * j + 1]);
                *reinterpret_cast<float2 *>(sp + (srow - sb) + (r + 8) * L::DQ_RS + c * 4) =
                    make_float2(dqa[4 * j + 2], dqa[4 * j + 3]);
            }
            fence_async_smem();
            __syncwarp();
            if (lane < 16) {
                const int qr = q0 + wi * 16 + lane;
                if (qr < seq) {
                    const float *g = dq_acc + ((size_t)b * seq + qr) * qs + (size_t)h * HD + wg * HN;
                    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(g),
                                 "r"(srow + lane * L::DQ_RS), "n"(HN * 4)
                                 : "memory");
                }
                asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
            }
        } else if constexpr (DQM == 3) {
            /* the warpgroup's tile, 16 bytes a thread at a time in register order (no bank
             * conflicts), then one bulk add of all of it by the warpgroup's first thread */
            const int t = tid & 127;
            const uint32_t buf = sb + L::DQ + ((it & 1) * 2 + wg) * L::DQ_TILE;
#pragma unroll
            for (int j = 0; j < DQN / 8; j++)
                *reinterpret_cast<float4 *>(sp + (buf - sb) + (j * 128 + t) * 16) =
                    make_float4(dqa[4 * j], dqa[4 * j + 1], dqa[4 * j + 2], dqa[4 * j + 3]);
            fence_async_smem();
            asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
            if (t == 0) {
                const float *g = dq_acc + wg_dq_tile_index(unit, cur, wg, nqb) * (size_t)(L::DQ_TILE / 4);
                asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(g),
                             "r"(buf), "n"(L::DQ_TILE)
                             : "memory");
                asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
            }
        }
        /* the next block */
        cur = nxt;
        if constexpr (SEG) {
            const unsigned m = __ballot_sync(0xffffffffu, pre <= klast);
            nxt = m ? nxt + __ffs(m) : scan(nxt + 33);
        } else {
            nxt = cur + 1;
        }
    }
    if constexpr (DQM == 2) {
        if (lane < 16) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    } else if constexpr (DQM == 3) {
        if ((tid & 127) == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    }
    cp_async_wait_all(); /* (only the K / V loads of a CTA without query blocks can be in flight) */

    /* FUSE: once all its adds are done (a fence), the CTA counts itself for its unit (all the key
     * blocks add to the unit's dQ; FUSE 1 only) and, under GQA, for its key block (the group's
     * query heads add to its dK / dV); the last one of either casts the f32 sums to bf16 */
    auto fused_casts = [&](bool kv) {
        if constexpr (DQM >= 2) {
            asm volatile("fence.proxy.async.global;\n" ::: "memory");
        }
        fence_gpu();
        __syncthreads();
        if (tid == 0) {
            int f = FUSE == 1 ? atomicAdd(cnt + unit, 1) == nkb - 1 : 0;
            if (kv) f |= (atomicAdd(cnt + units + ((size_t)b * KVH + kvh) * nkb + kblk, 1) == H / KVH - 1) << 1;
            if (f) fence_gpu(); /* acquire the other CTAs' adds */
            s_cast = f;
        }
        __syncthreads();
        const int f = s_cast;
        constexpr int C4 = HD / 4, U = 8; /* U loads in flight per thread */
        if (f & 1) { /* dQ of the unit: seq rows */
            const size_t base = (size_t)b * seq * qs + (size_t)h * HD;
            const int n = seq * C4;
            for (int e0 = tid; e0 < n; e0 += U * WG_NT) {
                float4 x[U];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int e = e0 + u * WG_NT;
                    if (e < n) x[u] = __ldcg(reinterpret_cast<const float4 *>(dq_acc + base + (size_t)(e / C4) * qs + (e % C4) * 4));
                }
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int e = e0 + u * WG_NT;
                    if (e < n)
                        *reinterpret_cast<uint2 *>(dq + base + (size_t)(e / C4) * qs + (e % C4) * 4) =
                            make_uint2(pack_bf16(x[u].x, x[u].y), pack_bf16(x[u].z, x[u].w));
                }
            }
        }
        if (f & 2) { /* dK, dV of the key block */
            const size_t half = (size_t)(units / H) * seq * ks, base = ((size_t)b * seq + k0) * ks + (size_t)kvh * HD;
            const int n = min(WG_BN, seq - k0) * C4;
            for (int e0 = tid; e0 < 2 * n; e0 += U * WG_NT) {
                float4 x[U];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int e = e0 + u * WG_NT, t = e >= n, i = e - (t ? n : 0);
                    if (e < 2 * n)
                        x[u] = __ldcg(reinterpret_cast<const float4 *>(dkv_acc + (t ? half : 0) + base + (size_t)(i / C4) * ks + (i % C4) * 4));
                }
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int e = e0 + u * WG_NT, t = e >= n, i = e - (t ? n : 0);
                    if (e < 2 * n)
                        *reinterpret_cast<uint2 *>((t ? dv : dk) + base + (size_t)(i / C4) * ks + (i % C4) * 4) =
                            make_uint2(pack_bf16(x[u].x, x[u].y), pack_bf16(x[u].z, x[u].w));
                }
            }
        }
    };
    if (dkv_acc) { /* GQA: sum over the group's query heads */
        const bool odd = lane & 1;
        const int row = odd ? kr1 : kr0;
        const size_t half = (size_t)(units / H) * seq * ks;
        float *dkg = dkv_acc + (size_t)b * seq * ks + (size_t)kvh * HD + (lane & 3) * 2 - (odd ? 2 : 0);
#pragma unroll
        for (int j = 0; j < HN / 4; j++) {
            float a0 = dka[4 * j], a1 = dka[4 * j + 1], b0 = dka[4 * j + 2], b1 = dka[4 * j + 3];
            float r0 = __shfl_xor_sync(0xffffffffu, odd ? a0 : b0, 1);
            float r1 = __shfl_xor_sync(0xffffffffu, odd ? a1 : b1, 1);
            const float4 kv4 = odd ? make_float4(r0, r1, b0, b1) : make_float4(a0, a1, r0, r1);
            a0 = dva[4 * j], a1 = dva[4 * j + 1], b0 = dva[4 * j + 2], b1 = dva[4 * j + 3];
            r0 = __shfl_xor_sync(0xffffffffu, odd ? a0 : b0, 1);
            r1 = __shfl_xor_sync(0xffffffffu, odd ? a1 : b1, 1);
            const float4 vv4 = odd ? make_float4(r0, r1, b0, b1) : make_float4(a0, a1, r0, r1);
            if (row < seq) {
                atomicAdd(reinterpret_cast<float4 *>(dkg + (size_t)row * ks + j * 8), kv4);
                atomicAdd(reinterpret_cast<float4 *>(dkg + half + (size_t)row * ks + j * 8), vv4);
            }
        }
        if constexpr (FUSE) {
            fused_casts(true);
        }
        return;
    }
    wbf16 *dkg = dk + (size_t)b * seq * ks + (size_t)kvh * HD, *dvg = dv + (size_t)b * seq * ks + (size_t)kvh * HD;
#pragma unroll
    for (int j = 0; j < HN / 4; j++) {
        const int col = j * 8 + (lane & 3) * 2;
        if (kr0 < seq) {
            *reinterpret_cast<uint32_t *>(dkg + (size_t)kr0 * ks + col) = pack_bf16(dka[4 * j], dka[4 * j + 1]);
            *reinterpret_cast<uint32_t *>(dvg + (size_t)kr0 * ks + col) = pack_bf16(dva[4 * j], dva[4 * j + 1]);
        }
        if (kr1 < seq) {
            *reinterpret_cast<uint32_t *>(dkg + (size_t)kr1 * ks + col) = pack_bf16(dka[4 * j + 2], dka[4 * j + 3]);
            *reinterpret_cast<uint32_t *>(dvg + (size_t)kr1 * ks + col) = pack_bf16(dva[4 * j + 2], dva[4 * j + 3]);
        }
    }
    if constexpr (FUSE == 1) {
        fused_casts(false);
    }
#else
    __trap(); /* needs sm_90a */
#endif
}

/* f32 -> bf16 of up to three contiguous arrays in one launch: s0 (n0 floats), then s1 and s2 (n1
 * floats each); n0, n1 multiples of 4 */
/* float4 j of s -> four bf16 at d (streaming load: the sums are read once) */
__device__ __forceinline__ void cast4(wbf16 *d, const float *s, size_t j) {
    const float4 x = __ldcs(reinterpret_cast<const float4 *>(s) + j);
    reinterpret_cast<uint2 *>(d)[j] = make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
}

__global__ void k_wg_f32_to_bf16(wbf16 *d0, const float *s0, size_t n0, wbf16 *d1, const float *s1, wbf16 *d2,
                                 const float *s2, size_t n1) {
    const size_t a = n0 / 4, c = n1 / 4, n4 = a + 2 * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        const float *s = i < a ? s0 : i < a + c ? s1 : s2;
        wbf16 *d = i < a ? d0 : i < a + c ? d1 : d2;
        cast4(d, s, i < a ? i : i < a + c ? i - a : i - a - c);
    }
}

/* DQM 3: dq_acc in tile order (wg_dq_tile_index) -> dq [T, H * HD] bf16, then (dk != NULL) the
 * contiguous dK / dV sums (nk floats each) -> dk, dv. Consecutive threads take the float4s of one
 * accumulator thread, so a warp writes 64-byte runs of two rows. */
template <int HD>
__global__ void k_wg_cast_tiles(wbf16 *dq, const float *dq_acc, int units, int nqb, int seq, int H, wbf16 *dk,
                                wbf16 *dv, const float *dkv_acc, size_t nk) {
    constexpr int F = HD / 16, TILE4 = 128 * F; /* float4s a thread, a tile */
    const size_t nq4 = (size_t)units * nqb * 2 * TILE4, n4 = nq4 + (dk ? nk / 2 : 0);
    const size_t qs = (size_t)H * HD;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        if (i >= nq4) { /* dK, dV */
            const size_t j = i - nq4, half = nk / 4;
            if (j < half) cast4(dk, dkv_acc, j);
            else cast4(dv, dkv_acc + nk, j - half);
            continue;
        }
        const size_t tile = i / TILE4;
        const int f = (int)(i % TILE4), t = f / F, j = f % F, wg = (int)(tile & 1);
        const int qb = (int)((tile >> 1) % nqb), unit = (int)((tile >> 1) / nqb), h = unit % H, b = unit / H;
        const int lane = t & 31, r = qb * 64 + (t >> 5) * 16 + (lane >> 2);
        const int c = wg * (HD / 2) + 8 * j + 2 * (lane & 3);
        const float4 x = __ldcs(reinterpret_cast<const float4 *>(dq_acc + (tile * TILE4 + (size_t)j * 128 + t) * 4));
        wbf16 *d = dq + ((size_t)b * seq + r) * qs + (size_t)h * HD + c;
        if (r < seq) *reinterpret_cast<uint32_t *>(d) = pack_bf16(x.x, x.y);
        if (r + 8 < seq) *reinterpret_cast<uint32_t *>(d + 8 * qs) = pack_bf16(x.z, x.w);
    }
}

void wg_cast(cudaStream_t st, int sm_count, wbf16 *d0, const float *s0, size_t n0, wbf16 *d1 = nullptr,
             const float *s1 = nullptr, wbf16 *d2 = nullptr, const float *s2 = nullptr, size_t n1 = 0) {
    const size_t n4 = n0 / 4 + 2 * (n1 / 4);
    size_t g = (n4 + 255) / 256, cap = (size_t)(sm_count > 0 ? sm_count : 132) * 16;
    if (g > cap) g = cap;
    k_wg_f32_to_bf16<<<(unsigned)(g ? g : 1), 256, 0, st>>>(d0, s0, n0, d1, s1, d2, s2, n1);
}

/* Minimum (clamped to [0, row]) of seg over each query block of BQ rows: a warp per block. */
__global__ void k_wg_segmin(int *out, const int32_t *seg, int seq, int nqb, int BQ, int nblk) {
    const int w = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (w >= nblk) return;
    const int b = w / nqb, r0 = (w % nqb) * BQ, r1 = min(seq, r0 + BQ);
    int m = 0x7fffffff;
    for (int r = r0 + lane; r < r1; r += 32) m = min(m, max(0, min((int)seg[(size_t)b * seq + r], r)));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = min(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) out[w] = m;
}

int wg_chunk_override = 0; /* tests: units per chunk (0: by the L2 budget) */
/* dQ and dK / dV (GQA) f32 sums to bf16: 0 by one cast kernel afterwards; 1 inside the kernel
 * (arrival counters: the last CTA of a unit casts its dQ, the last of a kv group's key block its
 * dK / dV); 2 dK / dV inside, dQ afterwards; -1 by head dim (WG_FUSE64 / WG_FUSE128) */
int wg_fuse_mode = -1;
#ifndef WG_FUSE64
#define WG_FUSE64 0
#endif
#ifndef WG_FUSE128
#define WG_FUSE128 0
#endif

/* counters of the fused casts: one per unit, one per (batch row, kv head, key block of 64 or
 * more keys) */
size_t wg_counter_ints(int batch, int seq, int H, int KV) {
    return (size_t)batch * H + (size_t)batch * KV * (size_t)((seq + 63) / 64);
}

template <int HD, int BQ, int BN, int DQM, int FUSE, bool SEG>
bool wg_launch_t(cudaStream_t st, int sm_count, wbf16 *dq, wbf16 *dk, wbf16 *dv, float *dq_acc, float *dkv_acc,
                 const wbf16 *dout, const wbf16 *q, const wbf16 *k, const wbf16 *v, const float *lse, const float *D,
                 int batch, int seq, int H, int KV, float scale, int *seg_scratch, const int32_t *seg, int *f32_left) {
    static int attr = 0; /* per instance: 1 set, -1 failed; one device per process */
    if (attr == 0)
        attr = cudaFuncSetAttribute(k_attn_bwd_wg<HD, BQ, BN, DQM, FUSE, SEG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)WgSmem<HD, BQ, BN, DQM>::bytes) == cudaSuccess ? 1 : -1;
    if (attr < 0) {
        (void)cudaGetLastError();
        return false;
    }
    const size_t T = (size_t)batch * seq, nk = T * KV * HD;
    const bool split = H != KV;
    const int units = batch * H, nkb = (seq + BN - 1) / BN, nqb = (seq + BQ - 1) / BQ;
    /* dQ sums: rows of the tensor, or (DQM 3) whole tiles of 64 rows */
    const size_t nq = DQM == 3 ? (size_t)units * nqb * 64 * HD : T * H * HD;
    int *cnt = reinterpret_cast<int *>(dq_acc + nq); /* after the dQ accumulators: one memset */
    cudaMemsetAsync(dq_acc, 0, nq * 4 + (FUSE ? ((size_t)units + (size_t)batch * KV * nkb) * 4 : 0), st);
    if (split) cudaMemsetAsync(dkv_acc, 0, 2 * nk * 4, st);
    if (SEG) {
        const int n = batch * nqb;
        k_wg_segmin<<<(unsigned)((n + 7) / 8), 256, 0, st>>>(seg_scratch, seg, seq, nqb, BQ, n);
    }
    /* chunk: units whose dq_acc (f32) and Q, dO (bf16) take about 24 MiB of L2, at least two
     * CTAs per SM */
    const size_t unit_bytes = (size_t)seq * HD * 8;
    const int sms = sm_count > 0 ? sm_count : 132;
    int chunk = (int)((24u << 20) / unit_bytes);
    chunk = chunk > (2 * sms + nkb - 1) / nkb ? chunk : (2 * sms + nkb - 1) / nkb;
    if (wg_chunk_override) chunk = wg_chunk_override;
    chunk = chunk < 1 ? 1 : chunk > units ? units : chunk;
    k_attn_bwd_wg<HD, BQ, BN, DQM, FUSE, SEG><<<(unsigned)units * nkb, BN * 2, WgSmem<HD, BQ, BN, DQM>::bytes, st>>>(
        dq_acc, dq, dk, dv, split ? dkv_acc : nullptr, cnt, dout, q, k, v, lse, D, seg, SEG ? seg_scratch : nullptr,
        seq, H, KV, scale, scale * WG_LOG2E, units, nkb, chunk);
    if (FUSE == 1) return true;
    if (f32_left && DQM != 3) { /* the caller rounds the row-ordered sums itself (attn_bwd_wgmma) */
        *f32_left = split && FUSE == 0 ? 1 : 2;
        return true;
    }
    if constexpr (DQM == 3) {
        const size_t n4 = nq / 4 + (split && FUSE == 0 ? nk / 2 : 0), cap = (size_t)sms * 16;
        const size_t g = (n4 + 255) / 256 < cap ? (n4 + 255) / 256 : cap;
        k_wg_cast_tiles<HD><<<(unsigned)g, 256, 0, st>>>(dq, dq_acc, units, nqb, seq, H, split && FUSE == 0 ? dk : nullptr,
                                                        dv, dkv_acc, nk);
        return true;
    }
    if (split && FUSE == 0) wg_cast(st, sm_count, dq, dq_acc, nq, dk, dkv_acc, dv, dkv_acc + nk, nk);
    else wg_cast(st, sm_count, dq, dq_acc, nq);
    return true;
}

template <int HD, int BQ, int BN, int DQM = 1>
bool wg_launch(cudaStream_t st, int sm_count, wbf16 *dq, wbf16 *dk, wbf16 *dv, float *dq_acc, float *dkv_acc,
               const wbf16 *dout, const wbf16 *q, const wbf16 *k, const wbf16 *v, const float *lse, const float *D,
               int batch, int seq, int H, int KV, float scale, int *seg_scratch, const int32_t *seg, int *f32_left) {
    int fuse = wg_fuse_mode >= 0 ? wg_fuse_mode : HD == 64 ? WG_FUSE64 : WG_FUSE128;
    if (fuse == 2 && H == KV) fuse = 0; /* nothing to fuse but dQ */
    constexpr int F1 = DQM == 3 ? 2 : 1; /* tile-ordered dQ is cast after the kernel */
#define WG_LT(F, S)                                                                                                    \
    wg_launch_t<HD, BQ, BN, DQM, F, S>(st, sm_count, dq, dk, dv, dq_acc, dkv_acc, dout, q, k, v, lse, D, batch, seq, H, \
                                       KV, scale, seg_scratch, seg, f32_left)
    if (seg) return fuse == 1 ? WG_LT(F1, true) : fuse == 2 ? WG_LT(2, true) : WG_LT(0, true);
    return fuse == 1 ? WG_LT(F1, false) : fuse == 2 ? WG_LT(2, false) : WG_LT(0, false);
#undef WG_LT
}

} /* namespace */

size_t attn_wg_dq_scratch_bytes(int batch, int seq, int H, int KV, int hd) { /* (whole tiles: DQM 3) */
    return ((size_t)batch * H * ((seq + 63) / 64) * 64 * hd + wg_counter_ints(batch, seq, H, KV)) * 4;
}

bool attn_bwd_wgmma(cudaStream_t st, int sm_count, __nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv,
                    float *dq_acc, float *dkv_acc, const __nv_bfloat16 *dout, const __nv_bfloat16 *q,
                    const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *lse, const float *D, int batch,
                    int seq, int H, int KV, int hd, float scale, int *seg_scratch, const int32_t *seg, int dq_mode,
                    int *f32_left) {
    if (f32_left) *f32_left = 0;
    if ((hd != 64 && hd != 128) || batch < 1 || seq < 1 || KV < 1 || H < KV || H % KV) return false;
    if (seg && !seg_scratch) return false;
    if ((size_t)batch * H * ((seq + 63) / 64) > 0x7fffffffu) return false;
    if (!dq_acc || (H != KV && !dkv_acc)) return false;
    const uintptr_t al = (uintptr_t)dq | (uintptr_t)dk | (uintptr_t)dv | (uintptr_t)dq_acc | (uintptr_t)dkv_acc |
                         (uintptr_t)dout | (uintptr_t)q | (uintptr_t)k | (uintptr_t)v;
    if (al & 15) return false;
    if (!wgmma_cc90()) return false; /* sm_90a code */
    /* how the dQ tiles reach the accumulator (DQM above); by default the faster for the head dim
     * (bench/attn_wg_check.cu variants): atomics at 64, one bulk add per tile at 128 */
    const int m = dq_mode >= 1 && dq_mode <= 3 ? dq_mode : hd == 64 ? 1 : 3;
#define WG_GO(HD, DQM)                                                                                                 \
    wg_launch<HD, 64, 128, DQM>(st, sm_count, dq, dk, dv, dq_acc, dkv_acc, dout, q, k, v, lse, D, batch, seq, H, KV,  \
                                scale, seg_scratch, seg, f32_left)
    if (hd == 64) return m == 3 ? WG_GO(64, 3) : m == 2 ? WG_GO(64, 2) : WG_GO(64, 1);
    return m == 3 ? WG_GO(128, 3) : m == 2 ? WG_GO(128, 2) : WG_GO(128, 1);
#undef WG_GO
}
