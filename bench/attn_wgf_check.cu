/* attn_wgf_check.cu — correctness and speed check of the wgmma causal attention forward
 * (src/backend/cuda/cuda_attn_wgf.cu) against a naive f32 GPU reference, side by side with the
 * mma.sync forward of cuda_attn.cu (k_attn_fwd, copied below verbatim for timing). Standalone:
 * needs only the CUDA runtime. Build and run from the repository root:
 *
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc -o /tmp/wgf bench/attn_wgf_check.cu && /tmp/wgf
 *
 * For each check shape: random normal q, k, v (bf16); o and lse from attn_fwd_wgmma (and from the
 * old kernel), outputs poisoned with NaN first, against a reference that runs the online softmax
 * in f32 per (token, head): o by max |o - ref| / max |ref| (pass <= 1e-2), lse by max |lse - ref|
 * (pass <= 1e-3), no NaN. Shapes marked "seg" use packed segments: per batch row, examples of
 * random lengths 1..S laid end to end (seg[i] = the start of i's example). Then the mean time of
 * 20 calls after warm-up at the timing shapes, new and old, with TFLOP/s by the causal count
 * 4 b s^2/2 H hd. Exits non-zero if any check fails. Optional argument: "check" or "time". */
#include "backend/cuda/cuda_attn_wgf.cu"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

typedef __nv_bfloat16 bf;

#define CKR(x)                                                                                       \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));       \
            exit(2);                                                                                 \
        }                                                                                            \
    } while (0)

/* ---- the mma.sync forward of src/backend/cuda/cuda_attn.cu (copy, for timing) ---- */
namespace oldfwd {
typedef __nv_bfloat16 bf16;
#define OLD_LN2 0.6931471805599453f
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}


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
__global__ void __launch_bounds__(FNT, HD <= 64 ? 3 : 1) k_attn_fwd(bf16 *o, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
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
    bf16 *og = o + (size_t)b * seq * qs + (size_t)h * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        int col = dt * 8 + (lane & 3) * 2;
        if (ra < seq)
            *reinterpret_cast<uint32_t *>(og + (size_t)ra * qs + col) = pack_bf16(oacc[dt][0] * ia, oacc[dt][1] * ia);
        if (rb < seq)
            *reinterpret_cast<uint32_t *>(og + (size_t)rb * qs + col) = pack_bf16(oacc[dt][2] * ib, oacc[dt][3] * ib);
    }
    if ((lane & 3) == 0) {
        if (ra < seq) lse[((size_t)b * seq + ra) * H + h] = (ma + log2f(la)) * OLD_LN2;
        if (rb < seq) lse[((size_t)b * seq + rb) * H + h] = (mb + log2f(lb)) * OLD_LN2;
    }
}

} /* namespace oldfwd */

static bool old_fwd(bf *o, float *lse, const bf *q, const bf *k, const bf *v, const int *seg, int batch, int seq,
                    int H, int KV, int hd, float scale) {
    using namespace oldfwd;
    const size_t smem = (size_t)(FBM + 4 * FBN) * hd * 2;
    dim3 grid(H * batch, (seq + FBM - 1) / FBM);
    const float sl2 = scale * 1.4426950408889634f;
    if (hd == 64) {
        static bool set = false;
        if (!set) CKR(cudaFuncSetAttribute(k_attn_fwd<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        set = true;
        k_attn_fwd<64><<<grid, FNT, smem>>>(o, lse, q, k, v, seg, seq, H, KV, sl2);
    } else {
        static bool set = false;
        if (!set) CKR(cudaFuncSetAttribute(k_attn_fwd<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        set = true;
        k_attn_fwd<128><<<grid, FNT, smem>>>(o, lse, q, k, v, seg, seq, H, KV, sl2);
    }
    return true;
}
static bool new_fwd(bf *o, float *lse, const bf *q, const bf *k, const bf *v, const int *seg, int batch, int seq,
                    int H, int KV, int hd, float scale) {
    return attn_fwd_wgmma(0, 132, o, lse, q, k, v, seg, batch, seq, H, KV, hd, scale);
}
typedef bool (*FwdFn)(bf *, float *, const bf *, const bf *, const bf *, const int *, int, int, int, int, int, float);

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return (uint32_t)x;
}
__global__ void k_randn(bf *p, size_t n, uint64_t seed, float sd) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u1 = (hash32(seed * 0x9E3779B97F4A7C15ull + 2 * i) + 1.0f) * 2.3283064e-10f;
        float u2 = hash32(seed * 0x9E3779B97F4A7C15ull + 2 * i + 1) * 2.3283064e-10f;
        p[i] = __float2bfloat16(sd * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2));
    }
}

/* reference: one thread per (b, h, i), lanes of a warp take consecutive i of one (b, h) */
template <int HD>
__global__ void k_fwd_ref(float *o, float *lse, const bf *q, const bf *k, const bf *v, const int *seg, int batch,
                          int seq, int H, int KV, float scale) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)batch * H * seq) return;
    const int i = t % seq, h = (t / seq) % H, b = t / ((size_t)seq * H), kvh = h / (H / KV);
    const int j0 = seg ? seg[(size_t)b * seq + i] : 0;
    const bf *qi = q + ((size_t)b * seq + i) * H * HD + (size_t)h * HD;
    float qf[HD], acc[HD];
    for (int d = 0; d < HD; d++) qf[d] = __bfloat162float(qi[d]), acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j = j0; j <= i; j++) {
        const bf *kj = k + ((size_t)b * seq + j) * KV * HD + (size_t)kvh * HD;
        const bf *vj = v + ((size_t)b * seq + j) * KV * HD + (size_t)kvh * HD;
        float s = 0.0f;
        for (int d = 0; d < HD; d++) s += qf[d] * __bfloat162float(kj[d]);
        s *= scale;
        const float mn = fmaxf(m, s), c = expf(m - mn), p = expf(s - mn);
        l = l * c + p;
        for (int d = 0; d < HD; d++) acc[d] = acc[d] * c + p * __bfloat162float(vj[d]);
        m = mn;
    }
    float *oi = o + ((size_t)b * seq + i) * H * HD + (size_t)h * HD;
    for (int d = 0; d < HD; d++) oi[d] = acc[d] / l;
    lse[((size_t)b * seq + i) * H + h] = m + logf(l);
}

struct Shape {
    int b, s, H, KV, hd;
    int seg; /* 0: plain causal; else packed examples of random lengths 1..seg */
};

static unsigned nblk(size_t n) { return (unsigned)((n + 255) / 256); }

struct Bufs {
    bf *q, *k, *v, *o;
    float *lse;
    int *seg;
    size_t nq, nk, T;
};

static void alloc_inputs(Bufs &B, const Shape &S, uint64_t seed) {
    B.T = (size_t)S.b * S.s;
    B.nq = B.T * S.H * S.hd;
    B.nk = B.T * S.KV * S.hd;
    CKR(cudaMalloc(&B.q, B.nq * 2));
    CKR(cudaMalloc(&B.o, B.nq * 2));
    CKR(cudaMalloc(&B.k, B.nk * 2));
    CKR(cudaMalloc(&B.v, B.nk * 2));
    CKR(cudaMalloc(&B.lse, B.T * S.H * 4));
    k_randn<<<2048, 256>>>(B.q, B.nq, seed * 8 + 1, 1.0f);
    k_randn<<<2048, 256>>>(B.k, B.nk, seed * 8 + 2, 1.0f);
    k_randn<<<2048, 256>>>(B.v, B.nk, seed * 8 + 3, 1.0f);
    CKR(cudaGetLastError());
    B.seg = NULL;
    if (S.seg) {
        std::vector<int> hs(B.T);
        uint64_t x = seed * 0x9E3779B97F4A7C15ull + 7;
        for (int b = 0; b < S.b; b++)
            for (int p = 0; p < S.s;) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                const int len = 1 + (int)(x % (uint64_t)S.seg);
                for (int i = p; i < p + len && i < S.s; i++) hs[(size_t)b * S.s + i] = p;
                p += len;
            }
        CKR(cudaMalloc(&B.seg, B.T * 4));
        CKR(cudaMemcpy(B.seg, hs.data(), B.T * 4, cudaMemcpyHostToDevice));
    }
    CKR(cudaDeviceSynchronize());
}

static void free_bufs(Bufs &B) {
    cudaFree(B.q); cudaFree(B.k); cudaFree(B.v); cudaFree(B.o); cudaFree(B.lse);
    if (B.seg) cudaFree(B.seg);
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
    double mx = 0.0, me = 0.0, le = 0.0;
    size_t bad = 0, worst = 0;
    for (size_t i = 0; i < ro.size(); i++) {
        uint32_t u = (uint32_t)g[i] << 16;
        float x;
        memcpy(&x, &u, 4);
        double e = fabs((double)x - ro[i]);
        if (!(e == e)) bad++, e = INFINITY;
        mx = fmax(mx, fabs((double)ro[i]));
        if (e > me) me = e, worst = i;
    }
    for (size_t i = 0; i < rl.size(); i++) {
        double e = fabs((double)gl[i] - rl[i]);
        if (!(e == e)) bad++, e = INFINITY;
        le = fmax(le, e);
    }
    const double rel = mx > 0 ? me / mx : me;
    const bool ok = bad == 0 && rel <= 1e-2 && le <= 1e-3;
    const size_t row = (size_t)S.H * S.hd;
    printf("  %s: o %.2e lse %.2e%s", name, rel, le, ok ? "" : " FAIL");
    if (!ok)
        printf(" [%zu NaN; worst o at token %zu head %zu col %zu]", bad, worst / row, worst % row / S.hd,
               worst % S.hd);
    return ok;
}

static bool check(const Shape &S, uint64_t seed, bool with_old) {
    Bufs B;
    alloc_inputs(B, S, seed);
    const float scale = 1.0f / sqrtf((float)S.hd);
    float *ro, *rl;
    CKR(cudaMalloc(&ro, B.nq * 4));
    CKR(cudaMalloc(&rl, B.T * S.H * 4));
    if (S.hd == 64)
        k_fwd_ref<64><<<nblk((size_t)S.b * S.H * S.s), 256>>>(ro, rl, B.q, B.k, B.v, B.seg, S.b, S.s, S.H, S.KV, scale);
    else
        k_fwd_ref<128><<<nblk((size_t)S.b * S.H * S.s), 256>>>(ro, rl, B.q, B.k, B.v, B.seg, S.b, S.s, S.H, S.KV, scale);
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
    std::vector<float> hro(B.nq), hrl(B.T * S.H);
    CKR(cudaMemcpy(hro.data(), ro, B.nq * 4, cudaMemcpyDeviceToHost));
    CKR(cudaMemcpy(hrl.data(), rl, hrl.size() * 4, cudaMemcpyDeviceToHost));
    printf("check b%d s%d H%d KV%d hd%d", S.b, S.s, S.H, S.KV, S.hd);
    if (S.seg) printf(" seg1..%d", S.seg);
    printf(":");
    bool ok = check_one("wgmma", new_fwd, B, S, hro, hrl);
    if (with_old) check_one("old", old_fwd, B, S, hro, hrl); /* (information: the reference's sanity) */
    printf("  %s\n", ok ? "ok" : "FAILED");
    cudaFree(ro);
    cudaFree(rl);
    free_bufs(B);
    return ok;
}

static double timeit(FwdFn f, const Bufs &B, const Shape &S) {
    const float scale = 1.0f / sqrtf((float)S.hd);
    for (int i = 0; i < 3; i++)
        if (!f(B.o, B.lse, B.q, B.k, B.v, B.seg, S.b, S.s, S.H, S.KV, S.hd, scale)) return -1.0;
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CKR(cudaEventCreate(&e0));
    CKR(cudaEventCreate(&e1));
    const int N = 20;
    CKR(cudaEventRecord(e0));
    for (int i = 0; i < N; i++) f(B.o, B.lse, B.q, B.k, B.v, B.seg, S.b, S.s, S.H, S.KV, S.hd, scale);
    CKR(cudaEventRecord(e1));
    CKR(cudaEventSynchronize(e1));
    CKR(cudaGetLastError());
    float ms;
    CKR(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms / N;
}

static void time_shape(const Shape &S, uint64_t seed) {
    Bufs B;
    alloc_inputs(B, S, seed);
    const double flop = 4.0 * S.b * (double)S.s * S.s / 2.0 * S.H * S.hd;
    const double tn = timeit(new_fwd, B, S), to = timeit(old_fwd, B, S);
    printf("time  b%d s%d H%d KV%d hd%d%s: wgmma %.3f ms %.1f TFLOP/s | old %.3f ms %.1f TFLOP/s | x%.2f\n", S.b, S.s,
           S.H, S.KV, S.hd, S.seg ? " seg" : "", tn, flop / tn * 1e-9, to, flop / to * 1e-9, to / tn);
    free_bufs(B);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "all";
    int dev = 0, sms = 0;
    CKR(cudaGetDevice(&dev));
    CKR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp pr;
    CKR(cudaGetDeviceProperties(&pr, dev));
    printf("device %s, %d SMs\n", pr.name, sms);
    const Shape checks[] = {{1, 2048, 32, 8, 128, 0}, {4, 2048, 32, 8, 64, 0},   {8, 2048, 9, 3, 64, 0},
                            {2, 300, 4, 4, 128, 0},   {1, 77, 6, 2, 64, 0},      {3, 129, 8, 2, 128, 0},
                            {1, 2048, 32, 8, 128, 700}, {3, 129, 8, 2, 128, 40}, {2, 300, 4, 2, 64, 20},
                            {1, 1000, 4, 4, 64, 1}};
    const Shape times[] = {{1, 2048, 32, 8, 128, 0}, {4, 2048, 32, 8, 64, 0}, {8, 2048, 9, 3, 64, 0},
                           {1, 16384, 32, 8, 128, 0}};
    uint64_t seed = 12345;
    {
        FILE *f = fopen("/dev/urandom", "rb");
        if (f) { if (fread(&seed, sizeof seed, 1, f) != 1) seed = 12345; fclose(f); }
    }
    bool ok = true;
    { /* refusals: head dim 32 */
        bf *p;
        float *l;
        CKR(cudaMalloc(&p, 1 << 20));
        CKR(cudaMalloc(&l, 1 << 16));
        const bool r = attn_fwd_wgmma(0, sms, p, l, p, p, p, NULL, 1, 64, 2, 2, 32, 0.1f);
        printf("hd32 refused: %s\n", r ? "NO (FAIL)" : "yes");
        ok = ok && !r;
        cudaFree(p);
        cudaFree(l);
    }
    if (strcmp(mode, "time") != 0)
        for (const Shape &S : checks) ok = check(S, seed++, true) && ok;
    if (strcmp(mode, "check") != 0 && ok)
        for (const Shape &S : times) time_shape(S, seed++);
    printf("%s\n", ok ? "ALL CHECKS PASSED" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
