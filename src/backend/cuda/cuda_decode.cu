/* cuda_decode.cu — the CUDA backend's op for incremental decoding: attention of T new queries
 * (positions start..start+T-1 of one sequence) over its key/value cache, on the device, so
 * generation never copies the cache to the host (decode.c's fallback does, per token and layer).
 *
 * One CTA of 4 warps per (query, head). The keys 0..start+i are dealt to the warps in runs of 4;
 * a warp walks its keys with the lanes splitting head_dim (hd/32 elements each, so the K and V rows
 * are read coalesced), forms the 4 scores of a run by warp sums, and keeps an online softmax —
 * running max, normaliser, and its lanes' slice of the weighted value sum — in registers. The
 * warps' partial states meet in shared memory at the end. Decoding reads the whole cache for every
 * token, so the kernel is a streaming read of it (the frozen weights' products dominate a token
 * anyway); prefill chunks give T x heads CTAs. Lane l holds elements l, l + 32, ... of a row (each
 * load of the warp reads 64 contiguous bytes), up to head_dim 512; past that one thread per (query,
 * head) walks everything (slow, but no such model is in sight). */
#include <math.h>

#include "cuda_internal.cuh"

#define DEC_WARPS 4
#define DEC_MAXD 16 /* elements per lane at most: head_dim <= 512 */

template <int DPL> /* elements per lane: head_dim <= 32 DPL */
__global__ void __launch_bounds__(DEC_WARPS * 32)
    k_attn_cached(bf16 *o, const bf16 *q, const bf16 *kc, const bf16 *vc, int start, int H, int KV, int hd, float scale) {
    const int i = blockIdx.x / H, h = blockIdx.x % H, kh = h / (H / KV);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, last = start + i;
    const size_t qd = (size_t)H * hd, kvd = (size_t)KV * hd;
    float qf[DPL], acc[DPL];
    const bf16 *qi = q + (size_t)i * qd + (size_t)h * hd + lane;
#pragma unroll
    for (int d = 0; d < DPL; d++) qf[d] = lane + 32 * d < hd ? __bfloat162float(qi[32 * d]) * scale : 0.0f, acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const bf16 *kbase = kc + (size_t)kh * hd + lane, *vbase = vc + (size_t)kh * hd + lane;
    for (int j0 = warp * 4; j0 <= last; j0 += DEC_WARPS * 4) {
        float s[4];
#pragma unroll
        for (int u = 0; u < 4; u++) { /* four independent dot products in flight */
            int j = min(j0 + u, last);
            const bf16 *kj = kbase + (size_t)j * kvd;
            float part = 0.0f;
#pragma unroll
            for (int d = 0; d < DPL; d++)
                if (lane + 32 * d < hd) part = fmaf(qf[d], __bfloat162float(kj[32 * d]), part);
            s[u] = part;
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
        float mx = m;
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (j0 + u <= last) mx = fmaxf(mx, s[u]);
        const float corr = __expf(m - mx); /* 0 on the first run (m = -inf) */
        l *= corr;
#pragma unroll
        for (int d = 0; d < DPL; d++) acc[d] *= corr;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (j0 + u > last) break;
            const float p = __expf(s[u] - mx);
            l += p;
            const bf16 *vj = vbase + (size_t)(j0 + u) * kvd;
#pragma unroll
            for (int d = 0; d < DPL; d++)
                if (lane + 32 * d < hd) acc[d] = fmaf(p, __bfloat162float(vj[32 * d]), acc[d]);
        }
        m = mx;
    }
    /* the warps' states: rescale each to the common max, sum */
    __shared__ float sm[DEC_WARPS], sl[DEC_WARPS], sacc[DEC_WARPS][DEC_MAXD * 32];
    if (lane == 0) sm[warp] = m, sl[warp] = l;
#pragma unroll
    for (int d = 0; d < DPL; d++) sacc[warp][lane + 32 * d] = acc[d];
    __syncthreads();
    if (warp) return;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, sm[w]);
    float L = 0.0f, out[DPL];
#pragma unroll
    for (int d = 0; d < DPL; d++) out[d] = 0.0f;
#pragma unroll
    for (int w = 0; w < DEC_WARPS; w++) {
        if (sm[w] == -INFINITY) continue; /* a warp that had no keys */
        const float f = __expf(sm[w] - M);
        L += sl[w] * f;
#pragma unroll
        for (int d = 0; d < DPL; d++) out[d] += sacc[w][lane + 32 * d] * f;
    }
    bf16 *oi = o + (size_t)i * qd + (size_t)h * hd + lane;
#pragma unroll
    for (int d = 0; d < DPL; d++)
        if (lane + 32 * d < hd) oi[32 * d] = __float2bfloat16_rn(out[d] / L);
}

/* head_dim past 512: one thread per (query, head), two passes over the keys */
__global__ void k_attn_cached_wide(bf16 *o, const bf16 *q, const bf16 *kc, const bf16 *vc, int T, int start, int H, int KV,
                                   int hd, float scale) {
    const int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= T * H) return;
    const int i = id / H, h = id % H, kh = h / (H / KV), last = start + i;
    const size_t qd = (size_t)H * hd, kvd = (size_t)KV * hd;
    const bf16 *qi = q + (size_t)i * qd + (size_t)h * hd;
    bf16 *oi = o + (size_t)i * qd + (size_t)h * hd;
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j <= last; j++) {
        float s = 0.0f;
        for (int d = 0; d < hd; d++) s += __bfloat162float(qi[d]) * __bfloat162float(kc[(size_t)j * kvd + (size_t)kh * hd + d]);
        s *= scale;
        float mx = fmaxf(m, s);
        l = l * __expf(m - mx) + __expf(s - mx);
        m = mx;
    }
    for (int d = 0; d < hd; d++) {
        float a = 0.0f;
        for (int j = 0; j <= last; j++) {
            float s = 0.0f;
            for (int e = 0; e < hd; e++)
                s += __bfloat162float(qi[e]) * __bfloat162float(kc[(size_t)j * kvd + (size_t)kh * hd + e]);
            a += __expf(s * scale - m) * __bfloat162float(vc[(size_t)j * kvd + (size_t)kh * hd + d]);
        }
        oi[d] = __float2bfloat16_rn(a / l);
    }
}

void us_cuda_attn_cached(us_backend *be, void *o, const void *q, const void *kc, const void *vc, int T, int start,
                         const us_attn_shape *sh) {
    cuda_impl *c = CI(be);
    PROF(c, P_ATTN_F);
    if (T <= 0) return;
    const int H = sh->heads, KV = sh->kv_heads, hd = sh->head_dim;
    dim3 grid((unsigned)(T * H)), block(DEC_WARPS * 32);
    /* elements per lane: 1..8, else 12 or 16 (fewer instances); 0 past head_dim 512 */
    int dpl = (hd + 31) / 32;
    if (dpl > 8) dpl = dpl <= 12 ? 12 : dpl <= 16 ? 16 : 0;
#define DEC_CASE(n)                                                                                            \
    case n:                                                                                                    \
        k_attn_cached<n><<<grid, block, 0, c->st>>>((bf16 *)o, (const bf16 *)q, (const bf16 *)kc, (const bf16 *)vc, \
                                                    start, H, KV, hd, sh->scale);                                  \
        break
    switch (dpl) {
        DEC_CASE(1); DEC_CASE(2); DEC_CASE(3); DEC_CASE(4); DEC_CASE(5); DEC_CASE(6); DEC_CASE(7); DEC_CASE(8);
        DEC_CASE(12); DEC_CASE(16);
    default:
        k_attn_cached_wide<<<(T * H + 127) / 128, 128, 0, c->st>>>((bf16 *)o, (const bf16 *)q, (const bf16 *)kc,
                                                                   (const bf16 *)vc, T, start, H, KV, hd, sh->scale);
    }
#undef DEC_CASE
    CK_LAUNCH(c);
}
