/* lora_colred_v2.cu — standalone checker and benchmark of the LoRA column reduction, version 2
 * (src/backend/cuda/cuda_lora_colred2.cuh, where its design is described) against a float64 CPU
 * reference, with version 1 (a renamed copy of k_lora_colred) timed beside it; L2 is flushed by a
 * 100 MB read before each timed call. From the repository root on a Hopper machine:
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc -o /tmp/cv2 bench/lora_colred_v2.cu && /tmp/cv2
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

#include "backend/cuda/cuda_lora_colred2.cuh"


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

/* 1 v2 default, 2 v2 with an explicit config (version 1 is timed in the library: US_CUDA_LORA_COLRED=1
 * with build/unswag_gpu_bench 50 loraop) */
static void launch(int which, Colred2Cfg cfg, cudaStream_t st, int sms, const Case &c, float *O, const __nv_bfloat16 *P,
                   const float *Q, float *Du, const float *Wd, float scale, float dscale) {
    const int osm = c.layout == L_DB ? c.R : 1, osj = c.layout == L_DB ? 1 : c.M;
    float *du = c.du ? Du : NULL;
#define DISPATCH(RR)                                                                                                   \
    case RR:                                                                                                           \
        if (which == 1)                                                                                                \
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
        for (int which = 1; which < 2; which++) {
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
            printf("check %-3s T=%5d M=%5d R=%2d %s %s ldp=%d ldq=%d lddu=%d: errO %.2e errDu %.2e %s%s\n", "v2", c.T,
                   c.M, c.R, c.du ? "Du" : "--", c.layout == L_DB ? "dB" : "dA", c.ldp, c.ldq, c.lddu, row.eo[which], row.ed[which],
                   ok ? "ok" : "FAIL", bad ? " (non-finite / unwritten)" : "");
            fflush(stdout);
        }
        if (c.timed) {
            row.us[1] = time_it(1, Colred2Cfg{}, c);
            /* alternatives */
            std::vector<Colred2Cfg> alts;
            if (c.du)
                alts = {{2, 0}, {4, 0}, {8, 0}, {16, 0}, {2, 1}};
            else
                alts = {{1, 0}};
            printf("  alt T=%d M=%d R=%d %s:", c.T, c.M, c.R, c.du ? "Du" : "--");
            for (auto &a : alts) {
                const int gx0 = (c.M + 127) / 128;
                if (a.cx > 1 && a.cx > 2 * gx0) continue;
                printf("  (cx %d, per_sm %d) %.1f", a.cx, a.per_sm, time_it(2, a, c));
            }
            printf("\n");
            fflush(stdout);
            rows.push_back(row);
        }
    }
    printf("\ntiming: mean of 50 launches after 5 warm-up, each preceded by a 100 MB read-through of another buffer (L2 flushed with clean lines);\n"
           "the with-Du time includes the launcher's Du memset when it has one. TB/s = bytes of P / time.\n");
    printf("%-6s %-6s %-3s %-3s %-3s | %9s %7s | %7s\n", "T", "M", "R", "Du", "O", "v2 us", "TB/s", "P/3TB/s");
    for (auto &r : rows) {
        const double bytes = (double)r.c.T * r.c.M * 2;
        printf("%-6d %-6d %-3d %-3s %-3s | %9.1f %7.2f | %7.1f\n", r.c.T, r.c.M, r.c.R, r.c.du ? "yes" : "no",
               r.c.layout == L_DB ? "dB" : "dA", r.us[1], bytes / r.us[1] * 1e-6, bytes / 3.0e12 * 1e6);
    }
    printf("v2 max relative error: O %.2e, Du %.2e (tolerance 1e-2 of the max |reference|)\n", worstO, worstD);
    printf("%s (%d failures)\n", fails ? "CHECK FAILED" : "ALL CHECKS PASSED", fails);
    return fails ? 1 : 0;
}
