/* attn_check_util.cuh — what the standalone attention checkers (bench/attn_wg_check.cu: the wgmma
 * backward, bench/attn_wgf_check.cu: the wgmma forward) share: the CUDA error check CKR, random
 * normal bf16 fills (k_randn), the check / timing shape, packed-segment starts (make_segs), the
 * f32 reference forward (k_fwd_ref: o and lse by the online softmax per (token, head)), the error
 * metric of a bf16 output against an f32 reference (bf16_err), the timing harness (time_calls:
 * the mean of 20 calls after 3 warm-up ones), a fresh seed per run and the device banner.
 * Include after the kernel .cu (it uses only the CUDA runtime). */
#ifndef ATTN_CHECK_UTIL_CUH
#define ATTN_CHECK_UTIL_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
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

/* reference forward: one thread per (b, h, i), lanes of a warp take consecutive i of one (b, h);
 * o (f32, [b][s][H][HD]) and lse (natural log, [b][s][H]); seg: packed segments or NULL */
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

/* the plain causal shapes both checkers check (b, s, H, KV, hd: GQA at hd 128 and 64, a group of
 * 3, ragged lengths) and time (those GQA ones and a long sequence) */
#define ATTN_CHECK_SHAPES                                                                                              \
    {1, 2048, 32, 8, 128, 0}, {4, 2048, 32, 8, 64, 0}, {8, 2048, 9, 3, 64, 0}, {2, 300, 4, 4, 128, 0},               \
        {1, 77, 6, 2, 64, 0}, {3, 129, 8, 2, 128, 0}
#define ATTN_TIME_SHAPES {1, 2048, 32, 8, 128, 0}, {4, 2048, 32, 8, 64, 0}, {8, 2048, 9, 3, 64, 0}, {1, 16384, 32, 8, 128, 0}

static unsigned nblk(size_t n) { return (unsigned)((n + 255) / 256); }

/* k_fwd_ref for head dim 64 or 128 */
static void fwd_ref(float *o, float *lse, const bf *q, const bf *k, const bf *v, const int *seg, const Shape &S) {
    const float scale = 1.0f / sqrtf((float)S.hd);
    if (S.hd == 64)
        k_fwd_ref<64><<<nblk((size_t)S.b * S.H * S.s), 256>>>(o, lse, q, k, v, seg, S.b, S.s, S.H, S.KV, scale);
    else
        k_fwd_ref<128><<<nblk((size_t)S.b * S.H * S.s), 256>>>(o, lse, q, k, v, seg, S.b, S.s, S.H, S.KV, scale);
    CKR(cudaGetLastError());
}

/* packed segments (S.seg > 0): per batch row, examples of random lengths 1..S.seg laid end to
 * end; seg[i] = the start of i's example */
static std::vector<int> make_segs(const Shape &S, uint64_t seed) {
    std::vector<int> hs((size_t)S.b * S.s);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 7;
    for (int b = 0; b < S.b; b++)
        for (int p = 0; p < S.s;) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            const int len = 1 + (int)(x % (uint64_t)S.seg);
            for (int i = p; i < p + len && i < S.s; i++) hs[(size_t)b * S.s + i] = p;
            p += len;
        }
    return hs;
}

/* the inputs both checkers start from: q [b][s][H][hd], k and v [b][s][KV][hd] (bf16, random
 * normal) and, for S.seg > 0, the packed-segment starts (device; else NULL) */
struct Inputs {
    bf *q, *k, *v;
    int *seg;
    size_t nq, nk, T; /* elements of q, of k; tokens */
};
static void alloc_qkv(Inputs &I, const Shape &S, uint64_t seed) {
    I.T = (size_t)S.b * S.s;
    I.nq = I.T * S.H * S.hd;
    I.nk = I.T * S.KV * S.hd;
    CKR(cudaMalloc(&I.q, I.nq * 2));
    CKR(cudaMalloc(&I.k, I.nk * 2));
    CKR(cudaMalloc(&I.v, I.nk * 2));
    k_randn<<<2048, 256>>>(I.q, I.nq, seed * 8 + 1, 1.0f);
    k_randn<<<2048, 256>>>(I.k, I.nk, seed * 8 + 2, 1.0f);
    k_randn<<<2048, 256>>>(I.v, I.nk, seed * 8 + 3, 1.0f);
    CKR(cudaGetLastError());
    I.seg = NULL;
    if (S.seg) {
        const std::vector<int> hs = make_segs(S, seed);
        CKR(cudaMalloc(&I.seg, I.T * 4));
        CKR(cudaMemcpy(I.seg, hs.data(), I.T * 4, cudaMemcpyHostToDevice));
    }
}
static void free_qkv(Inputs &I) {
    cudaFree(I.q); cudaFree(I.k); cudaFree(I.v);
    if (I.seg) cudaFree(I.seg);
}

/* a bf16 output against its f32 reference: max |got - ref| / max |ref| (rel), the NaN count
 * (bad; a NaN counts as an infinite error), the first NaN and the worst element */
struct ErrStats {
    double rel;
    size_t bad, first, worst;
};
static ErrStats bf16_err(const std::vector<uint16_t> &got, const std::vector<float> &ref) {
    double mx = 0.0, me = 0.0;
    ErrStats r = {0.0, 0, 0, 0};
    for (size_t i = 0; i < ref.size(); i++) {
        uint32_t u = (uint32_t)got[i] << 16;
        float g;
        memcpy(&g, &u, 4);
        double e = fabs((double)g - ref[i]);
        if (!(e == e)) { if (!r.bad) r.first = i; r.bad++; e = INFINITY; }
        mx = fmax(mx, fabs((double)ref[i]));
        if (e > me) me = e, r.worst = i;
    }
    r.rel = mx > 0 ? me / mx : me;
    return r;
}

/* mean milliseconds of 20 calls of call() (returns false: refused) after 3 warm-up calls; -1 if
 * refused */
template <class F>
static double time_calls(F call) {
    for (int i = 0; i < 3; i++)
        if (!call()) return -1.0;
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CKR(cudaEventCreate(&e0));
    CKR(cudaEventCreate(&e1));
    const int N = 20;
    CKR(cudaEventRecord(e0));
    for (int i = 0; i < N; i++) call();
    CKR(cudaEventRecord(e1));
    CKR(cudaEventSynchronize(e1));
    CKR(cudaGetLastError());
    float ms;
    CKR(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms / N;
}

/* fresh inputs per run: a seed from /dev/urandom (12345 without it) */
static uint64_t fresh_seed() {
    uint64_t seed = 12345;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) { if (fread(&seed, sizeof seed, 1, f) != 1) seed = 12345; fclose(f); }
    return seed;
}

/* prints the device; returns its SM count */
static int device_banner() {
    int dev = 0, sms = 0;
    CKR(cudaGetDevice(&dev));
    CKR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp pr;
    CKR(cudaGetDeviceProperties(&pr, dev));
    printf("device %s, %d SMs\n", pr.name, sms);
    return sms;
}

#endif
