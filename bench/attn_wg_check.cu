/* attn_wg_check.cu — correctness and speed check of the wgmma causal attention backward
 * (src/backend/cuda/cuda_attn_wg.cu) against a naive f32 GPU reference. Standalone: needs only
 * the CUDA runtime. Build and run from the repository root:
 *
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc -o /tmp/wgc bench/attn_wg_check.cu && /tmp/wgc
 *
 * For each check shape: random normal q, k, v, dout (bf16); lse and D = rowsum(dO * O) from a
 * reference forward in f32; dq, dk, dv from attn_bwd_wgmma (outputs poisoned with NaN and the
 * f32 scratch with garbage first) against a reference backward that materializes P and dS in
 * f32, by max |out - ref| / max |ref| per tensor (pass <= 2e-2). Then the mean time of 20 calls
 * after warm-up at the timing shapes, with TFLOP/s by the causal count 2.5 * 4 b s^2/2 H hd.
 * Exits non-zero if any check fails. Optional argument: "check" or "time" to run one part, or
 * "variants" to check (two shapes per head dim) and time the launcher's other template
 * configurations (dQ by atomics or bulk reduce, grid chunking). */
#include "backend/cuda/cuda_attn_wg.cu"

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

/* forward reference: one thread per (b, h, i); lanes of a warp take consecutive i of one (b, h) */
__global__ void k_fwd_ref(float *lse, float *D, const bf *q, const bf *k, const bf *v, const bf *dout, int batch,
                          int seq, int H, int KV, int hd, float scale) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)batch * H * seq) return;
    const int i = t % seq, h = (t / seq) % H, b = t / ((size_t)seq * H), kvh = h / (H / KV);
    const bf *qi = q + ((size_t)b * seq + i) * H * hd + (size_t)h * hd;
    const bf *oi = dout + ((size_t)b * seq + i) * H * hd + (size_t)h * hd;
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j <= i; j++) {
        const bf *kj = k + ((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd;
        float s = 0.0f;
        for (int d = 0; d < hd; d++) s += __bfloat162float(qi[d]) * __bfloat162float(kj[d]);
        s *= scale;
        float mn = fmaxf(m, s);
        l = l * expf(m - mn) + expf(s - mn);
        m = mn;
    }
    const float L = m + logf(l);
    float dsum = 0.0f;
    for (int j = 0; j <= i; j++) {
        const bf *kj = k + ((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd;
        const bf *vj = v + ((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd;
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < hd; d++) {
            s += __bfloat162float(qi[d]) * __bfloat162float(kj[d]);
            dp += __bfloat162float(oi[d]) * __bfloat162float(vj[d]);
        }
        dsum += expf(s * scale - L) * dp;
    }
    lse[((size_t)b * seq + i) * H + h] = L;
    D[((size_t)b * seq + i) * H + h] = dsum;
}

/* backward reference for batch row b: P, dS [H][seq][seq] in f32 */
__global__ void k_bwd_ref_pds(float *P, float *dS, const bf *q, const bf *k, const bf *v, const bf *dout,
                              const float *lse, const float *D, int b, int seq, int H, int KV, int hd, float scale) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)H * seq * seq) return;
    const int j = t % seq, i = (t / seq) % seq, h = t / ((size_t)seq * seq), kvh = h / (H / KV);
    float p = 0.0f, ds = 0.0f;
    if (j <= i) {
        const bf *qi = q + ((size_t)b * seq + i) * H * hd + (size_t)h * hd;
        const bf *oi = dout + ((size_t)b * seq + i) * H * hd + (size_t)h * hd;
        const bf *kj = k + ((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd;
        const bf *vj = v + ((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd;
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < hd; d++) {
            s += __bfloat162float(qi[d]) * __bfloat162float(kj[d]);
            dp += __bfloat162float(oi[d]) * __bfloat162float(vj[d]);
        }
        const size_t r = ((size_t)b * seq + i) * H + h;
        p = expf(s * scale - lse[r]);
        ds = p * (dp - D[r]);
    }
    P[t] = p;
    dS[t] = ds;
}
/* dq[b, i, h, d] = scale sum_j dS[h][i][j] k[j][kvh][d] */
__global__ void k_bwd_ref_dq(float *dq, const float *dS, const bf *k, int b, int seq, int H, int KV, int hd, float scale) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)seq * H * hd) return;
    const int d = t % hd, h = (t / hd) % H, i = t / ((size_t)hd * H), kvh = h / (H / KV);
    float s = 0.0f;
    for (int j = 0; j <= i; j++)
        s += dS[((size_t)h * seq + i) * seq + j] * __bfloat162float(k[((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd + d]);
    dq[((size_t)b * seq + i) * H * hd + (size_t)h * hd + d] = s * scale;
}
/* dk[b, j, kvh, d] = scale sum_{h in group, i >= j} dS q; dv = sum P dout */
__global__ void k_bwd_ref_dkv(float *dk, float *dv, const float *P, const float *dS, const bf *q, const bf *dout, int b,
                              int seq, int H, int KV, int hd, float scale) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)seq * KV * hd) return;
    const int d = t % hd, kvh = (t / hd) % KV, j = t / ((size_t)hd * KV), G = H / KV;
    float sk = 0.0f, sv = 0.0f;
    for (int h = kvh * G; h < kvh * G + G; h++)
        for (int i = j; i < seq; i++) {
            const size_t pi = ((size_t)h * seq + i) * seq + j, qi = ((size_t)b * seq + i) * H * hd + (size_t)h * hd + d;
            sk += dS[pi] * __bfloat162float(q[qi]);
            sv += P[pi] * __bfloat162float(dout[qi]);
        }
    dk[((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd + d] = sk * scale;
    dv[((size_t)b * seq + j) * KV * hd + (size_t)kvh * hd + d] = sv;
}

struct Shape {
    int b, s, H, KV, hd;
};

static unsigned nblk(size_t n) { return (unsigned)((n + 255) / 256); }

struct Bufs {
    bf *q, *k, *v, *dout, *dq, *dk, *dv;
    float *lse, *D, *dq_acc, *dkv_acc;
    size_t nq, nk, T;
};

static void alloc_inputs(Bufs &B, const Shape &S, uint64_t seed) {
    B.T = (size_t)S.b * S.s;
    B.nq = B.T * S.H * S.hd;
    B.nk = B.T * S.KV * S.hd;
    CKR(cudaMalloc(&B.q, B.nq * 2));
    CKR(cudaMalloc(&B.dout, B.nq * 2));
    CKR(cudaMalloc(&B.dq, B.nq * 2));
    CKR(cudaMalloc(&B.k, B.nk * 2));
    CKR(cudaMalloc(&B.v, B.nk * 2));
    CKR(cudaMalloc(&B.dk, B.nk * 2));
    CKR(cudaMalloc(&B.dv, B.nk * 2));
    CKR(cudaMalloc(&B.lse, B.T * S.H * 4));
    CKR(cudaMalloc(&B.D, B.T * S.H * 4));
    CKR(cudaMalloc(&B.dq_acc, B.nq * 4));
    CKR(cudaMalloc(&B.dkv_acc, 2 * B.nk * 4));
    k_randn<<<2048, 256>>>(B.q, B.nq, seed * 8 + 1, 1.0f);
    k_randn<<<2048, 256>>>(B.k, B.nk, seed * 8 + 2, 1.0f);
    k_randn<<<2048, 256>>>(B.v, B.nk, seed * 8 + 3, 1.0f);
    k_randn<<<2048, 256>>>(B.dout, B.nq, seed * 8 + 4, 1.0f);
    CKR(cudaGetLastError());
    const float scale = 1.0f / sqrtf((float)S.hd);
    k_fwd_ref<<<nblk((size_t)S.b * S.H * S.s), 256>>>(B.lse, B.D, B.q, B.k, B.v, B.dout, S.b, S.s, S.H, S.KV, S.hd, scale);
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
}

static void free_bufs(Bufs &B) {
    cudaFree(B.q); cudaFree(B.k); cudaFree(B.v); cudaFree(B.dout); cudaFree(B.dq); cudaFree(B.dk); cudaFree(B.dv);
    cudaFree(B.lse); cudaFree(B.D); cudaFree(B.dq_acc); cudaFree(B.dkv_acc);
}

typedef bool (*RunFn)(cudaStream_t, int, bf *, bf *, bf *, float *, float *, const bf *, const bf *, const bf *,
                      const bf *, const float *, const float *, int, int, int, int, int, float);
static RunFn g_run = attn_bwd_wgmma;
/* kernel variants (template configurations of the launcher), for "variants" mode */
template <int HD, int BQ, int BN, int DQM = 1>
static bool variant(cudaStream_t st, int sms, bf *dq, bf *dk, bf *dv, float *dqa, float *dkva, const bf *dout,
                    const bf *q, const bf *k, const bf *v, const float *lse, const float *D, int b, int s, int H, int KV,
                    int hd, float scale) {
    if (hd != HD) return false;
    return wg_launch<HD, BQ, BN, DQM>(st, sms, dq, dk, dv, dqa, dkva, dout, q, k, v, lse, D, b, s, H, KV, scale);
}

static bool run_wg(const Bufs &B, const Shape &S, int sms) {
    return g_run(0, sms, B.dq, B.dk, B.dv, B.dq_acc, B.dkv_acc, B.dout, B.q, B.k, B.v, B.lse, B.D, S.b, S.s,
                          S.H, S.KV, S.hd, 1.0f / sqrtf((float)S.hd));
}

static double rel_err(const std::vector<uint16_t> &got, const std::vector<float> &ref, size_t *nbad) {
    double mx = 0.0, me = 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        uint32_t u = (uint32_t)got[i] << 16;
        float g;
        memcpy(&g, &u, 4);
        double e = fabs((double)g - ref[i]);
        if (!(e == e)) { bad++; e = INFINITY; }
        mx = fmax(mx, fabs((double)ref[i]));
        me = fmax(me, e);
    }
    *nbad = bad;
    return mx > 0 ? me / mx : me;
}

static bool check(const Shape &S, int sms, uint64_t seed) {
    Bufs B;
    alloc_inputs(B, S, seed);
    const float scale = 1.0f / sqrtf((float)S.hd);
    /* poison outputs (bf16 NaN) and scratch (garbage) */
    CKR(cudaMemset(B.dq, 0xFF, B.nq * 2));
    CKR(cudaMemset(B.dk, 0xFF, B.nk * 2));
    CKR(cudaMemset(B.dv, 0xFF, B.nk * 2));
    CKR(cudaMemset(B.dq_acc, 0x5A, B.nq * 4));
    CKR(cudaMemset(B.dkv_acc, 0x5A, 2 * B.nk * 4));
    if (!run_wg(B, S, sms)) {
        printf("  shape refused\n");
        free_bufs(B);
        return false;
    }
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
    /* reference */
    float *rdq, *rdk, *rdv, *P, *dS;
    const size_t pn = (size_t)S.H * S.s * S.s;
    CKR(cudaMalloc(&rdq, B.nq * 4));
    CKR(cudaMalloc(&rdk, B.nk * 4));
    CKR(cudaMalloc(&rdv, B.nk * 4));
    CKR(cudaMalloc(&P, pn * 4));
    CKR(cudaMalloc(&dS, pn * 4));
    for (int b = 0; b < S.b; b++) {
        k_bwd_ref_pds<<<nblk(pn), 256>>>(P, dS, B.q, B.k, B.v, B.dout, B.lse, B.D, b, S.s, S.H, S.KV, S.hd, scale);
        k_bwd_ref_dq<<<nblk((size_t)S.s * S.H * S.hd), 256>>>(rdq, dS, B.k, b, S.s, S.H, S.KV, S.hd, scale);
        k_bwd_ref_dkv<<<nblk((size_t)S.s * S.KV * S.hd), 256>>>(rdk, rdv, P, dS, B.q, B.dout, b, S.s, S.H, S.KV, S.hd, scale);
        CKR(cudaGetLastError());
    }
    CKR(cudaDeviceSynchronize());
    bool ok = true;
    const char *names[3] = {"dq", "dk", "dv"};
    bf *got[3] = {B.dq, B.dk, B.dv};
    float *ref[3] = {rdq, rdk, rdv};
    size_t n[3] = {B.nq, B.nk, B.nk};
    printf("check b%d s%d H%d KV%d hd%d:", S.b, S.s, S.H, S.KV, S.hd);
    for (int t = 0; t < 3; t++) {
        std::vector<uint16_t> g(n[t]);
        std::vector<float> r(n[t]);
        CKR(cudaMemcpy(g.data(), got[t], n[t] * 2, cudaMemcpyDeviceToHost));
        CKR(cudaMemcpy(r.data(), ref[t], n[t] * 4, cudaMemcpyDeviceToHost));
        size_t bad;
        double e = rel_err(g, r, &bad);
        bool pass = e <= 2e-2 && bad == 0;
        ok = ok && pass;
        printf("  %s %.2e%s", names[t], e, pass ? "" : (bad ? " NaN!" : " FAIL"));
    }
    printf("  %s\n", ok ? "ok" : "FAILED");
    cudaFree(rdq); cudaFree(rdk); cudaFree(rdv); cudaFree(P); cudaFree(dS);
    free_bufs(B);
    return ok;
}

static void timeit(const Shape &S, int sms, uint64_t seed) {
    Bufs B;
    alloc_inputs(B, S, seed);
    for (int i = 0; i < 3; i++)
        if (!run_wg(B, S, sms)) { printf("  shape refused\n"); free_bufs(B); return; }
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CKR(cudaEventCreate(&e0));
    CKR(cudaEventCreate(&e1));
    const int N = 20;
    CKR(cudaEventRecord(e0));
    for (int i = 0; i < N; i++) run_wg(B, S, sms);
    CKR(cudaEventRecord(e1));
    CKR(cudaEventSynchronize(e1));
    CKR(cudaGetLastError());
    float ms;
    CKR(cudaEventElapsedTime(&ms, e0, e1));
    ms /= N;
    const double flop = 2.5 * 4.0 * S.b * (double)S.s * S.s / 2.0 * S.H * S.hd;
    printf("time  b%d s%d H%d KV%d hd%d: %.3f ms  %.1f TFLOP/s\n", S.b, S.s, S.H, S.KV, S.hd, ms, flop / ms * 1e-9);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
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
    const Shape checks[] = {{1, 2048, 32, 8, 128}, {4, 2048, 32, 8, 64}, {8, 2048, 9, 3, 64},
                            {2, 300, 4, 4, 128},   {1, 77, 6, 2, 64},    {3, 129, 8, 2, 128}};
    const Shape times[] = {{1, 2048, 32, 8, 128}, {4, 2048, 32, 8, 64}, {8, 2048, 9, 3, 64}, {1, 16384, 32, 8, 128}};
    uint64_t seed = 12345;
    { /* fresh inputs per run */
        FILE *f = fopen("/dev/urandom", "rb");
        if (f) { if (fread(&seed, sizeof seed, 1, f) != 1) seed = 12345; fclose(f); }
    }
    bool ok = true;
    if (strcmp(mode, "variants") == 0) {
        struct V { const char *name; RunFn f; int hd; int chunk; } vs[] = {
            {"hd64 atomics, old order (one chunk)", variant<64, 64, 128, 1>, 64, 1 << 30},
            {"hd64 atomics, chunked", variant<64, 64, 128, 1>, 64, 0},
            {"hd64 bulk, chunked", variant<64, 64, 128, 2>, 64, 0},
            {"hd64 bulk, chunk 8", variant<64, 64, 128, 2>, 64, 8},
            {"hd128 atomics, old order (one chunk)", variant<128, 64, 128, 1>, 128, 1 << 30},
            {"hd128 atomics, chunked", variant<128, 64, 128, 1>, 128, 0},
            {"hd128 bulk, chunked", variant<128, 64, 128, 2>, 128, 0},
            {"hd128 bulk, chunk 4", variant<128, 64, 128, 2>, 128, 4}};
        const Shape vc[] = {{8, 2048, 9, 3, 64}, {1, 77, 6, 2, 64}, {2, 300, 4, 4, 128}, {3, 129, 8, 2, 128}};
        for (const V &x : vs) {
            printf("== variant %s\n", x.name);
            g_run = x.f;
            wg_chunk_override = x.chunk;
            bool vok = true, nodq = strstr(x.name, "NO dQ") != NULL;
            for (const Shape &S : vc)
                if (S.hd == x.hd && !nodq) vok = check(S, sms, seed++) && vok;
            if (vok)
                for (const Shape &S : times)
                    if (S.hd == x.hd) timeit(S, sms, seed++);
            ok = ok && vok;
        }
        wg_chunk_override = 0;
        printf("%s\n", ok ? "ALL CHECKS PASSED" : "SOME CHECKS FAILED");
        return ok ? 0 : 1;
    }
    if (strcmp(mode, "time") != 0)
        for (const Shape &S : checks) ok = check(S, sms, seed++) && ok;
    if (strcmp(mode, "check") != 0 && ok)
        for (const Shape &S : times) timeit(S, sms, seed++);
    printf("%s\n", ok ? "ALL CHECKS PASSED" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
