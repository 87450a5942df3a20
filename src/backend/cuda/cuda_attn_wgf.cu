/* cuda_attn_wgf.cu — causal flash-attention forward for Hopper (sm_90a) on warpgroup MMA
 * (wgmma.mma_async, bf16 operands, fp32 accumulation), with GQA and packed segments.
 *
 * Grid: 1-D, one CTA per (query block of BM = 128 rows, batch row x query head = "unit"), the
 * query blocks from the last (the longest causal walks) to the first, all units of a block before
 * the next one (the query heads of a GQA group are adjacent, so they share their K / V in L2). A
 * CTA is two warpgroups (256 threads); warpgroup w owns query rows [64w, 64w + 64) of the block
 * and walks the key blocks of BN keys that it can see, from the first (segment start) to its
 * diagonal one (warpgroup 0 skips a last block that lies wholly above its rows):
 *
 *   S   = Q K^T      wgmma m64n{BN}k16 x hd/16, A = Q (smem, K-major), B = K (smem, K-major)
 *   P   = exp2(S * scale*log2e - m), online softmax on the accumulator fragments (base 2, the
 *                    running max m and sum l per row in registers, a quad shuffle per row)
 *   O  += P V        wgmma m64n{hd}k16 x BN/16, A = P from registers (bf16-packed accumulators:
 *                    the accumulator layout is the A-fragment layout), B = V (smem, MN-major: the
 *                    transpose bit)
 *
 * Configurations (measured on H100, see bench/attn_wgf_check.cu): hd 128: BN = 128, one CTA per
 * SM (~240 registers, 224 KiB of shared memory); hd 64: BN = 64, two CTAs per SM (<= 128
 * registers, 64 KiB each: the two CTAs' barriers are independent, so one's softmax overlaps the
 * other's GEMMs). Measured and dropped: hd 64 with BN = 128 (one CTA per SM, 20% slower), three
 * warpgroups (BM = 192: slower, or spills at hd 128), one-warpgroup CTAs (BM = 64) two or three
 * per SM (5-10% slower at hd 64 / at hd 128 s16384, equal at hd 128 s2048).
 *
 * The two GEMMs are software-pipelined inside each warpgroup: iteration j issues S_j = Q K_j^T and
 * then O += P_{j-1} V_{j-1} as two commit groups, waits for the first only, and computes the
 * softmax of S_j while the tensor cores run P_{j-1} V_{j-1}; it then waits for the second,
 * rescales O by exp2(m_{j-1} - m_j) and packs P_j. The last P V runs after the loop.
 *
 * K / V tiles stream through three shared-memory stages by cp.async (all threads): at the top of
 * iteration j every thread waits for its own copies of block j, fences them into the async proxy
 * and meets the others at one CTA barrier (after which block j is visible to wgmma, and the stage
 * of block j-2, last read by P_{j-2} V_{j-2} which both warpgroups have waited for, is free); then
 * block j+1 is issued into that stage (two stages would not do: P_{j-1} V_{j-1} is issued after
 * the loads of block j+1). One barrier per key block. Q is loaded once with the first block. At
 * the end O / l is written as bf16 (4-byte stores) and lse = (m + log2 l) ln 2.
 *
 * Masking (causal, key >= seq, packed segments: key < seg[row]) is applied to S only on the key
 * blocks that need it (the diagonal blocks, and under segments those below the largest segment
 * start of the CTA's rows); rows that see no key of a block keep their state (the -inf guard of
 * the online softmax).
 *
 * Shared-memory tiles use the canonical 128-byte-swizzle layout of wgmma (as cuda_attn_wg.cu): a
 * tile of R rows x C bf16 columns is stored as C/64 column blocks of R rows of 128 bytes, each
 * block 1024-byte aligned, the 16-byte chunk c of row r at chunk position c ^ (r & 7). Read K-major
 * a k-step of 16 moves the start address 32 bytes inside the row (rows of 8 x 128 bytes: stride
 * byte offset 1024); read MN-major (V) the leading byte offset is the column-block stride and a
 * k-step of 16 rows moves 2048 bytes.
 *
 * wgmma and the swizzle need sm_90a; the plain compute_90 PTX pass compiles the kernel as a trap
 * (the host entry returns false on devices other than 9.0). The wgmma helpers are those of
 * cuda_wgmma.cuh, shared with cuda_attn_wg.cu. */
#include "cuda_attn_wgf.cuh"
#include "cuda_ptx.cuh"
#include "cuda_wgmma.cuh"

#include <stdint.h>

namespace {

typedef __nv_bfloat16 fbf16;

#define WF_LN2 0.6931471805599453f

template <int HD, int BN, int NWG, int WF_NS>
struct WfSmem { /* byte offsets from a 1024-aligned base */
    static constexpr int TK = BN * HD * 2; /* one K or V tile */
    static constexpr int Q = 0, K = Q + 64 * NWG * HD * 2, V = K + WF_NS * TK, END = V + WF_NS * TK;
    static constexpr size_t bytes = (size_t)END + 1024; /* + alignment slack */
};

template <int HD, int BN, int NWG, int MINB, int WF_NS, bool SEG>
__global__ void __launch_bounds__(NWG * 128, MINB)
    k_attn_fwd_wg(fbf16 *o, int ldo, float *lse, const fbf16 *q, const fbf16 *k, const fbf16 *v, const int32_t *seg,
                  int seq, int H, int KVH, float scale_log2, int units, int nqb) {
#ifdef WG_SM90A
    using L = WfSmem<HD, BN, NWG, WF_NS>;
    constexpr int WF_BM = 64 * NWG, WF_NT = 128 * NWG;
    static_assert(WF_NS >= 3, "P V of block j-1 is issued after block j+1's loads");
    extern __shared__ unsigned char wf_smraw[];
    const uint32_t sraw = smem_u32(wf_smraw), sb = (sraw + 1023u) & ~1023u;
    __shared__ int s_segmin, s_segmax;

    /* blockIdx.x -> (query block from the last, unit) */
    const int qb = nqb - 1 - (int)(blockIdx.x / units), unit = (int)(blockIdx.x % units);
    const int h = unit % H, b = unit / H, kvh = h / (H / KVH);
    const int q0 = qb * WF_BM;
    const int tid = threadIdx.x, wg = tid >> 7, wi = (tid >> 5) & 3, lane = tid & 31;
    const size_t qs = (size_t)H * HD, ks = (size_t)KVH * HD;
    const fbf16 *kg = k + (size_t)b * seq * ks + (size_t)kvh * HD;
    const fbf16 *vg = v + (size_t)b * seq * ks + (size_t)kvh * HD;
    const int q0w = q0 + wg * 64;                              /* this warpgroup's first row */
    const int ra = q0w + wi * 16 + (lane >> 2), rb = ra + 8; /* this thread's two rows */

    int sega = 0, segb = 0, segmin = 0, segmax = 0;
    if constexpr (SEG) {
        if (tid == 0) s_segmin = 0x7fffffff, s_segmax = 0;
        __syncthreads();
        sega = ra < seq ? seg[(size_t)b * seq + ra] : 0x7fffffff;
        segb = rb < seq ? seg[(size_t)b * seq + rb] : 0x7fffffff;
        int mn = min(sega, segb), mx = max(ra < seq ? sega : 0, rb < seq ? segb : 0);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, off));
            mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        }
        if (lane == 0) {
            atomicMin(&s_segmin, mn);
            atomicMax(&s_segmax, mx);
        }
        __syncthreads();
        segmin = max(0, min(s_segmin, q0)); /* (rows past seq only: 0x7fffffff) */
        segmax = s_segmax;
    }
    const int kb0 = segmin / BN, kb1 = (min(q0 + WF_BM, seq) - 1) / BN;
    const int kbw = min(kb1, min(q0w + 63, seq - 1) / BN); /* this warpgroup's last key block */

    auto load_kv = [&](int kb, int stage) {
        const int n0 = kb * BN;
        wg_load<BN, HD, WF_NT>(sb + L::K + stage * L::TK, kg + (size_t)n0 * ks, ks, seq - n0, tid);
        wg_load<BN, HD, WF_NT>(sb + L::V + stage * L::TK, vg + (size_t)n0 * ks, ks, seq - n0, tid);
    };
    wg_load<WF_BM, HD, WF_NT>(sb + L::Q, q + ((size_t)b * seq + q0) * qs + (size_t)h * HD, qs, seq - q0, tid);
    load_kv(kb0, 0);
    cp_async_commit();

    float s[BN / 2], oacc[HD / 2];
    uint32_t pa[BN / 16][4];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) oacc[i] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;

    /* S = Q_w K^T (stage), issued */
    auto gemm_s = [&](int stage) {
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            const uint32_t qa = sb + L::Q + (kk >> 2) * WF_BM * 128 + wg * 64 * 128 + (kk & 3) * 32;
            const uint32_t ka = sb + L::K + stage * L::TK + (kk >> 2) * BN * 128 + (kk & 3) * 32;
            wg_ss<BN, 0, 0>(s, wg_desc(qa, 16, 1024), wg_desc(ka, 16, 1024), kk);
        }
    };
    /* O += P V (stage), issued */
    auto gemm_pv = [&](int stage) {
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)
            wg_rs<HD, 1>(oacc, pa[kk], wg_desc(sb + L::V + stage * L::TK + kk * 2048, BN * 128, 1024), 1);
    };
    /* mask, running max, P = exp2(S scale - m) in s; returns the rescale factors and row sums */
    auto softmax = [&](int kb, float &aa, float &ab, float &psa, float &psb) {
        const int n0 = kb * BN;
        if (n0 + BN - 1 > q0w || (SEG && n0 < segmax)) {
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = n0 + j * 8 + (lane & 3) * 2 + (e & 1);
                    const int row = e < 2 ? ra : rb;
                    if (col > row || (SEG && col < (e < 2 ? sega : segb))) s[4 * j + e] = -INFINITY;
                }
        }
        float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            mxa = fmaxf(mxa, fmaxf(s[4 * j], s[4 * j + 1]));
            mxb = fmaxf(mxb, fmaxf(s[4 * j + 2], s[4 * j + 3]));
        }
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
        const float mna = fmaxf(ma, mxa * scale_log2), mnb = fmaxf(mb, mxb * scale_log2);
        const float ua = mna == -INFINITY ? 0.0f : mna, ub = mnb == -INFINITY ? 0.0f : mnb;
        aa = fast_exp2(ma - ua);
        ab = fast_exp2(mb - ub);
        ma = mna;
        mb = mnb;
        psa = 0.0f;
        psb = 0.0f;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            s[4 * j] = fast_exp2(fmaf(s[4 * j], scale_log2, -ua));
            s[4 * j + 1] = fast_exp2(fmaf(s[4 * j + 1], scale_log2, -ua));
            s[4 * j + 2] = fast_exp2(fmaf(s[4 * j + 2], scale_log2, -ub));
            s[4 * j + 3] = fast_exp2(fmaf(s[4 * j + 3], scale_log2, -ub));
            psa += s[4 * j] + s[4 * j + 1];
            psb += s[4 * j + 2] + s[4 * j + 3];
        }
    };
    auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)
#pragma unroll
            for (int e = 0; e < 4; e++) pa[kk][e] = pack_bf16(s[8 * kk + 2 * e], s[8 * kk + 2 * e + 1]);
    };

    /* first key block: S, softmax, P */
    cp_async_wait_all();
    fence_async_smem();
    __syncthreads();
    if (kb0 < kb1) {
        load_kv(kb0 + 1, 1);
        cp_async_commit();
    }
    {
        wg_fence();
        gemm_s(0);
        wg_commit();
        wg_wait<0>();
        reg_pin(s);
        float aa, ab, psa, psb;
        softmax(kb0, aa, ab, psa, psb);
        la = psa;
        lb = psb;
        pack_p();
    }
    int stage = 0, lstage = 0; /* lstage: the stage of this warpgroup's last block so far */
    for (int kb = kb0 + 1; kb <= kb1; kb++) {
        const int pstage = stage;
        stage = stage == WF_NS - 1 ? 0 : stage + 1;
        cp_async_wait_all();
        fence_async_smem();
        __syncthreads(); /* block kb landed; the stage of kb - 2 is free */
        if (kb < kb1) {
            load_kv(kb + 1, stage == WF_NS - 1 ? 0 : stage + 1);
            cp_async_commit();
        }
        if (kb > kbw) continue; /* (warpgroup-uniform) keys past all of this warpgroup's rows */
        lstage = stage;
        wg_fence();
        gemm_s(stage);
        wg_commit();
        gemm_pv(pstage);
        wg_commit();
        wg_wait<1>();
        reg_pin(s);
        float aa, ab, psa, psb;
        softmax(kb, aa, ab, psa, psb);
        wg_wait<0>();
        reg_pin(oacc);
        reg_pin(pa);
        la = la * aa + psa;
        lb = lb * ab + psb;
#pragma unroll
        for (int j = 0; j < HD / 8; j++) {
            oacc[4 * j] *= aa;
            oacc[4 * j + 1] *= aa;
            oacc[4 * j + 2] *= ab;
            oacc[4 * j + 3] *= ab;
        }
        pack_p();
    }
    wg_fence();
    gemm_pv(lstage);
    wg_commit();
    wg_wait<0>();
    reg_pin(oacc);
    reg_pin(pa);

    la += __shfl_xor_sync(0xffffffffu, la, 1);
    la += __shfl_xor_sync(0xffffffffu, la, 2);
    lb += __shfl_xor_sync(0xffffffffu, lb, 1);
    lb += __shfl_xor_sync(0xffffffffu, lb, 2);
    const float ia = la > 0.0f ? 1.0f / la : 0.0f, ib = lb > 0.0f ? 1.0f / lb : 0.0f;
    fbf16 *og = o + (size_t)b * seq * ldo + (size_t)h * HD + (lane & 3) * 2;
#pragma unroll
    for (int j = 0; j < HD / 8; j++) {
        if (ra < seq)
            *reinterpret_cast<uint32_t *>(og + (size_t)ra * ldo + j * 8) = pack_bf16(oacc[4 * j] * ia, oacc[4 * j + 1] * ia);
        if (rb < seq)
            *reinterpret_cast<uint32_t *>(og + (size_t)rb * ldo + j * 8) =
                pack_bf16(oacc[4 * j + 2] * ib, oacc[4 * j + 3] * ib);
    }
    if ((lane & 3) == 0) {
        if (ra < seq) lse[((size_t)b * seq + ra) * H + h] = (ma + log2f(la)) * WF_LN2;
        if (rb < seq) lse[((size_t)b * seq + rb) * H + h] = (mb + log2f(lb)) * WF_LN2;
    }
#else
    __trap(); /* needs sm_90a */
#endif
}

template <int HD, int BN, int NWG, int MINB, int NS, bool SEG>
bool wf_launch(cudaStream_t st, fbf16 *o, int ldo, float *lse, const fbf16 *q, const fbf16 *k, const fbf16 *v,
               const int32_t *seg, int batch, int seq, int H, int KV, float scale) {
    using L = WfSmem<HD, BN, NWG, NS>;
    constexpr int WF_BM = 64 * NWG;
    static int attr = 0; /* per instance: 1 set, -1 failed; one device per process */
    if (attr == 0)
        attr = cudaFuncSetAttribute(k_attn_fwd_wg<HD, BN, NWG, MINB, NS, SEG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)L::bytes) == cudaSuccess
                   ? 1
                   : -1;
    if (attr < 0) {
        (void)cudaGetLastError();
        return false;
    }
    const int nqb = (seq + WF_BM - 1) / WF_BM, units = batch * H;
    if ((size_t)nqb * units > 0x7fffffffu) return false;
    k_attn_fwd_wg<HD, BN, NWG, MINB, NS, SEG><<<(unsigned)(nqb * units), NWG * 128, L::bytes, st>>>(o, ldo, lse, q, k, v, seg, seq, H, KV,
                                                                                 scale * WG_LOG2E, units, nqb);
    return true;
}

} /* namespace */

/* per head dim: key block BN, warpgroups per CTA NWG (query rows / 64), CTAs per SM MINB (the
 * launch bound); -D overrides for experiments */
#ifndef WF_HD64_BN
#define WF_HD64_BN 64
#endif
#ifndef WF_HD64_NWG
#define WF_HD64_NWG 2
#endif
#ifndef WF_HD64_MINB
#define WF_HD64_MINB 2
#endif
#ifndef WF_HD128_BN
#define WF_HD128_BN 128
#endif
#ifndef WF_HD128_NWG
#define WF_HD128_NWG 2
#endif
#ifndef WF_HD128_MINB
#define WF_HD128_MINB 1
#endif
#ifndef WF_HD64_NS
#define WF_HD64_NS 3
#endif
#ifndef WF_HD128_NS
#define WF_HD128_NS 3
#endif
#define WF_HD64_CFG WF_HD64_BN, WF_HD64_NWG, WF_HD64_MINB, WF_HD64_NS
#define WF_HD128_CFG WF_HD128_BN, WF_HD128_NWG, WF_HD128_MINB, WF_HD128_NS

bool attn_fwd_wgmma(cudaStream_t st, int sm_count, __nv_bfloat16 *o, int ldo, float *lse, const __nv_bfloat16 *q,
                    const __nv_bfloat16 *k, const __nv_bfloat16 *v, const int32_t *seg, int batch, int seq, int H,
                    int KV, int hd, float scale) {
    (void)sm_count;
    if ((hd != 64 && hd != 128) || batch < 1 || seq < 1 || KV < 1 || H < KV || H % KV) return false;
    if (ldo < H * hd || ldo % 8) return false;
    if (!o || !lse || !q || !k || !v) return false;
    const uintptr_t al = (uintptr_t)o | (uintptr_t)q | (uintptr_t)k | (uintptr_t)v;
    if ((al & 15) || ((uintptr_t)lse & 3) || ((uintptr_t)seg & 3)) return false;
    if (!wgmma_cc90()) return false; /* sm_90a code */
    if (hd == 64)
        return seg ? wf_launch<64, WF_HD64_CFG, true>(st, o, ldo, lse, q, k, v, seg, batch, seq, H, KV, scale)
                   : wf_launch<64, WF_HD64_CFG, false>(st, o, ldo, lse, q, k, v, seg, batch, seq, H, KV, scale);
    return seg ? wf_launch<128, WF_HD128_CFG, true>(st, o, ldo, lse, q, k, v, seg, batch, seq, H, KV, scale)
               : wf_launch<128, WF_HD128_CFG, false>(st, o, ldo, lse, q, k, v, seg, batch, seq, H, KV, scale);
}
