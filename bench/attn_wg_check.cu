/* attn_wg_check.cu — correctness and speed check of the wgmma causal attention backward
 * (src/backend/cuda/cuda_attn_wg.cu) against a naive f32 GPU reference (shared helpers:
 * bench/attn_check_util.cuh). Standalone: needs only the CUDA runtime. Build and run from the
 * repository root:
 *
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc -o /tmp/wgc bench/attn_wg_check.cu && /tmp/wgc
 *
 * For each check shape: random normal q, k, v, dout (bf16); lse and D = rowsum(dO * O) from the
 * f32 reference forward (o and lse, then D); dq, dk, dv from attn_bwd_wgmma (outputs poisoned
 * with NaN and the f32 scratch with garbage first) against a reference backward that materializes P and dS in
 * f32, by max |out - ref| / max |ref| per tensor (pass <= 2e-2). Then the mean time of 20 calls
 * after warm-up at the timing shapes, with TFLOP/s by the causal count 2.5 * 4 b s^2/2 H hd.
 * Shapes marked "seg" use packed segments: per batch row, examples of random lengths 1..S laid end
 * to end (seg[i] = the start of i's example; the reference forward and backward mask likewise).
 * Exits non-zero if any check fails. Optional argument: "check" or "time" to run one part,
 * "variants" to check (two shapes per head dim) and time the launcher's other template
 * configurations (dQ by atomics, bulk reduce per row or per tile, none at all for a ceiling;
 * grid chunking), or "fuse" to check and time the
 * in-kernel bf16 casts (counters; all, or dK / dV only) against the separate cast kernel. */
#include "backend/cuda/cuda_attn_wg.cu"

#include "attn_check_util.cuh"

/* D[b, i, h] = sum_d dout[b, i, h, d] o[b, i, h, d] (o: the f32 reference forward) */
__global__ void k_ref_D(float *D, const float *o, const bf *dout, size_t rows, int hd) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= rows) return;
    float s = 0.0f;
    for (int d = 0; d < hd; d++) s += __bfloat162float(dout[t * hd + d]) * o[t * hd + d];
    D[t] = s;
}

/* backward reference for batch row b: P, dS [H][seq][seq] in f32 */
__global__ void k_bwd_ref_pds(float *P, float *dS, const bf *q, const bf *k, const bf *v, const bf *dout,
                              const float *lse, const float *D, const int *seg, int b, int seq, int H, int KV, int hd,
                              float scale) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)H * seq * seq) return;
    const int j = t % seq, i = (t / seq) % seq, h = t / ((size_t)seq * seq), kvh = h / (H / KV);
    float p = 0.0f, ds = 0.0f;
    if (j <= i && (!seg || j >= seg[(size_t)b * seq + i])) {
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

struct Bufs : Inputs {
    bf *dout, *dq, *dk, *dv;
    float *lse, *D, *dq_acc, *dkv_acc;
    int *segs; /* the per-block scratch of the segments (NULL: none) */
};

static void alloc_inputs(Bufs &B, const Shape &S, uint64_t seed) {
    alloc_qkv(B, S, seed);
    CKR(cudaMalloc(&B.dout, B.nq * 2));
    CKR(cudaMalloc(&B.dq, B.nq * 2));
    CKR(cudaMalloc(&B.dk, B.nk * 2));
    CKR(cudaMalloc(&B.dv, B.nk * 2));
    CKR(cudaMalloc(&B.lse, B.T * S.H * 4));
    CKR(cudaMalloc(&B.D, B.T * S.H * 4));
    CKR(cudaMalloc(&B.dq_acc, attn_wg_dq_scratch_bytes(S.b, S.s, S.H, S.KV, S.hd)));
    CKR(cudaMalloc(&B.dkv_acc, 2 * B.nk * 4));
    k_randn<<<2048, 256>>>(B.dout, B.nq, seed * 8 + 4, 1.0f);
    CKR(cudaGetLastError());
    B.segs = NULL;
    if (S.seg) {
        CKR(cudaMalloc(&B.segs, (size_t)S.b * ((S.s + 63) / 64) * 4));
        CKR(cudaMemset(B.segs, 0x5A, (size_t)S.b * ((S.s + 63) / 64) * 4));
    }
    float *o; /* the reference forward's output, for D */
    CKR(cudaMalloc(&o, B.nq * 4));
    fwd_ref(o, B.lse, B.q, B.k, B.v, B.seg, S);
    k_ref_D<<<nblk(B.T * S.H), 256>>>(B.D, o, B.dout, B.T * S.H, S.hd);
    CKR(cudaGetLastError());
    CKR(cudaDeviceSynchronize());
    cudaFree(o);
}

static void free_bufs(Bufs &B) {
    free_qkv(B);
    cudaFree(B.dout); cudaFree(B.dq); cudaFree(B.dk); cudaFree(B.dv);
    cudaFree(B.lse); cudaFree(B.D); cudaFree(B.dq_acc); cudaFree(B.dkv_acc);
    if (B.segs) cudaFree(B.segs);
}

typedef bool (*RunFn)(cudaStream_t, int, bf *, bf *, bf *, float *, float *, const bf *, const bf *, const bf *,
                      const bf *, const float *, const float *, int, int, int, int, int, float, int *, const int32_t *,
                      int, int *);
static RunFn g_run = attn_bwd_wgmma;
/* kernel variants (template configurations of the launcher), for "variants" mode */
template <int HD, int BQ, int BN, int DQM = 1>
static bool variant(cudaStream_t st, int sms, bf *dq, bf *dk, bf *dv, float *dqa, float *dkva, const bf *dout,
                    const bf *q, const bf *k, const bf *v, const float *lse, const float *D, int b, int s, int H, int KV,
                    int hd, float scale, int *segs, const int32_t *seg, int /* dq_mode: DQM is the template's */,
                    int *f32_left) {
    if (hd != HD) return false;
    return wg_launch<HD, BQ, BN, DQM>(st, sms, dq, dk, dv, dqa, dkva, dout, q, k, v, lse, D, b, s, H, KV, scale, segs,
                                      seg, f32_left);
}

static bool run_wg(const Bufs &B, const Shape &S, int sms) {
    return g_run(0, sms, B.dq, B.dk, B.dv, B.dq_acc, B.dkv_acc, B.dout, B.q, B.k, B.v, B.lse, B.D, S.b, S.s,
                          S.H, S.KV, S.hd, 1.0f / sqrtf((float)S.hd), B.segs, B.seg, 0, nullptr);
}

static size_t g_row = 1; /* elements per token row, for the failure report */
static double rel_err(const std::vector<uint16_t> &got, const std::vector<float> &ref, size_t *nbad) {
    const ErrStats r = bf16_err(got, ref);
    if (r.bad || r.rel > 2e-2)
        printf(" [%zu NaN, first at token %zu col %zu; worst at token %zu col %zu]", r.bad, r.first / g_row,
               r.first % g_row, r.worst / g_row, r.worst % g_row);
    *nbad = r.bad;
    return r.rel;
}

static bool check(const Shape &S, int sms, uint64_t seed) {
    Bufs B;
    alloc_inputs(B, S, seed);
    const float scale = 1.0f / sqrtf((float)S.hd);
    /* poison outputs (bf16 NaN) and scratch (garbage) */
    CKR(cudaMemset(B.dq, 0xFF, B.nq * 2));
    CKR(cudaMemset(B.dk, 0xFF, B.nk * 2));
    CKR(cudaMemset(B.dv, 0xFF, B.nk * 2));
    CKR(cudaMemset(B.dq_acc, 0x5A, attn_wg_dq_scratch_bytes(S.b, S.s, S.H, S.KV, S.hd)));
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
        k_bwd_ref_pds<<<nblk(pn), 256>>>(P, dS, B.q, B.k, B.v, B.dout, B.lse, B.D, B.seg, b, S.s, S.H, S.KV, S.hd, scale);
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
    printf("check b%d s%d H%d KV%d hd%d", S.b, S.s, S.H, S.KV, S.hd);
    if (S.seg) printf(" seg1..%d", S.seg);
    printf(":");
    for (int t = 0; t < 3; t++) {
        std::vector<uint16_t> g(n[t]);
        std::vector<float> r(n[t]);
        CKR(cudaMemcpy(g.data(), got[t], n[t] * 2, cudaMemcpyDeviceToHost));
        CKR(cudaMemcpy(r.data(), ref[t], n[t] * 4, cudaMemcpyDeviceToHost));
        size_t bad;
        g_row = (t ? (size_t)S.KV : (size_t)S.H) * S.hd;
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
    const double ms = time_calls([&] { return run_wg(B, S, sms); });
    if (ms < 0) { printf("  shape refused\n"); free_bufs(B); return; }
    const double flop = 2.5 * 4.0 * S.b * (double)S.s * S.s / 2.0 * S.H * S.hd;
    printf("time  b%d s%d H%d KV%d hd%d%s: %.3f ms  %.1f TFLOP/s%s\n", S.b, S.s, S.H, S.KV, S.hd,
           S.seg ? " seg" : "", ms, flop / ms * 1e-9, S.seg ? " (causal count)" : "");
    free_bufs(B);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "all";
    const int sms = device_banner();
    const Shape checks[] = {ATTN_CHECK_SHAPES,
                            {1, 2048, 32, 8, 128, 700}, {2, 2048, 32, 8, 64, 900}, {3, 2048, 9, 3, 64, 300},
                            {2, 300, 4, 4, 128, 90},   {1, 77, 6, 2, 64, 20},    {3, 129, 8, 2, 128, 40},
                            {2, 1000, 8, 2, 64, 1},    {1, 1000, 4, 4, 128, 3},  {2, 700, 4, 2, 128, 5000}};
    const Shape times[] = {ATTN_TIME_SHAPES,           {1, 2048, 32, 8, 128, 1024}, {4, 2048, 32, 8, 64, 1024},
                           {8, 2048, 9, 3, 64, 1024}};
    uint64_t seed = fresh_seed();
    bool ok = true;
    if (strcmp(mode, "variants") == 0) {
        struct V { const char *name; RunFn f; int hd; int chunk; } vs[] = {
            {"hd64 atomics, old order (one chunk)", variant<64, 64, 128, 1>, 64, 1 << 30},
            {"hd64 atomics, chunked", variant<64, 64, 128, 1>, 64, 0},
            {"hd64 bulk, chunked", variant<64, 64, 128, 2>, 64, 0},
            {"hd64 bulk, chunk 8", variant<64, 64, 128, 2>, 64, 8},
            {"hd64 tile bulk, chunked", variant<64, 64, 128, 3>, 64, 0},
            {"hd64 NO dQ (timing only)", variant<64, 64, 128, 0>, 64, 0},
            {"hd128 atomics, old order (one chunk)", variant<128, 64, 128, 1>, 128, 1 << 30},
            {"hd128 atomics, chunked", variant<128, 64, 128, 1>, 128, 0},
            {"hd128 bulk, chunked", variant<128, 64, 128, 2>, 128, 0},
            {"hd128 bulk, chunk 4", variant<128, 64, 128, 2>, 128, 4},
            {"hd128 tile bulk, chunked", variant<128, 64, 128, 3>, 128, 0},
            {"hd128 NO dQ (timing only)", variant<128, 64, 128, 0>, 128, 0}};
        const Shape vc[] = {{8, 2048, 9, 3, 64, 0}, {1, 77, 6, 2, 64, 0}, {2, 300, 4, 4, 128, 0}, {3, 129, 8, 2, 128, 0},
                            {1, 77, 6, 2, 64, 20},  {3, 129, 8, 2, 128, 40}};
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
    if (strcmp(mode, "fuse") == 0) { /* separate casts (0) against in-kernel ones (1; 2: dK / dV only) */
        const Shape fc[] = {{8, 2048, 9, 3, 64, 0}, {1, 77, 6, 2, 64, 20}, {2, 300, 4, 4, 128, 0},
                            {3, 129, 8, 2, 128, 40}, {1, 1000, 4, 4, 128, 3}};
        for (int f = 0; f < 3; f++) {
            wg_fuse_mode = f;
            printf("== fuse %d\n", f);
            bool fok = true;
            for (const Shape &S : fc) fok = check(S, sms, seed++) && fok;
            if (fok)
                for (const Shape &S : times) timeit(S, sms, seed++);
            ok = ok && fok;
        }
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
