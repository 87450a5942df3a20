/* cuda_backend.cu — the CUDA backend: bf16 activations and frozen weights, f32 LoRA masters,
 * gradients and optimizer state; matrix products through cuBLASLt (bf16 x bf16, fp32
 * accumulation); everything else as fused kernels here and in cuda_attn.cu.
 *
 * All work is queued on one stream, so ops are asynchronous with respect to the host and ordered
 * among themselves; only download, sumsq and nonfinite (which return host values) and sync wait.
 * The host offload copies run on a second stream, ordered against the first by events. LoRA's
 * kernels are in cuda_lora.cu, attention's in cuda_attn.cu.
 * Every device allocation, internal scratch included, goes through one tracker so mem_info's peak
 * is the true high-water mark of what this backend asked cudaMalloc for. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <thread>
#include <vector>

#include "cuda_internal.cuh"
#include "cuda_ptx.cuh"

#include <cooperative_groups.h>
namespace cg = cooperative_groups;

#define PIN_BYTES ((size_t)16 << 20)
#define WS_BYTES ((size_t)32 << 20)

/* ------------------------------------------------------------------------------------------ */
/* errors, allocation tracking, scratch                                                        */

void us_cuda_report(cuda_impl *c, const char *what, const char *err, const char *file, int line) {
    if (c->capturing) { /* the capture is dropped and the step issued again without it (graph_end) */
        c->capture_bad = 1;
        return;
    }
    if (!c->failed) fprintf(stderr, "unswag: cuda error: %s: %s (%s:%d)\n", what, err, file, line);
    c->failed = 1;
}

/* A captured step holds device pointers: any free drops it (and a free inside a capture spoils
 * that capture: nodes captured before it may use the memory). */
static void graph_drop(cuda_impl *c) {
    if (c->capturing) c->capture_bad = 1;
    if (c->gexec) cudaGraphExecDestroy(c->gexec);
    c->gexec = NULL;
}

static void track_add(cuda_impl *c, void *p, size_t n) {
    if (c->n_allocs == c->cap_allocs) {
        size_t cap = c->cap_allocs ? c->cap_allocs * 2 : 256;
        void *na = realloc(c->allocs, cap * sizeof *c->allocs);
        if (!na) return; /* tracking only: the allocation itself is fine */
        c->allocs = (struct cuda_impl::alloc_rec *)na;
        c->cap_allocs = cap;
    }
    c->allocs[c->n_allocs].p = p;
    c->allocs[c->n_allocs].n = n;
    c->n_allocs++;
    c->in_use += n;
    if (c->in_use > c->peak) c->peak = c->in_use;
}

static void *dev_alloc(cuda_impl *c, size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); /* an out-of-memory is an answer, not a sticky error */
        return NULL;
    }
    track_add(c, p, bytes);
    return p;
}

static void dev_free(cuda_impl *c, void *p) {
    if (!p) return;
    graph_drop(c);
    for (size_t i = c->n_allocs; i-- > 0;)
        if (c->allocs[i].p == p) {
            c->in_use -= c->allocs[i].n;
            c->allocs[i] = c->allocs[--c->n_allocs];
            break;
        }
    CK(c, cudaFree(p));
}

void *us_cuda_scratch(cuda_impl *c, int slot, size_t bytes) {
    if (c->scr_bytes[slot] >= bytes && c->scr[slot]) return c->scr[slot];
    if (c->scr[slot]) dev_free(c, c->scr[slot]);
    size_t want = bytes < 256 ? 256 : bytes;
    c->scr[slot] = dev_alloc(c, want);
    c->scr_bytes[slot] = c->scr[slot] ? want : 0;
    if (!c->scr[slot]) us_cuda_report(c, "scratch allocation", "out of memory", __FILE__, __LINE__);
    return c->scr[slot];
}

static void scratch_release(cuda_impl *c, int slot) {
    if (c->scr[slot]) dev_free(c, c->scr[slot]);
    c->scr[slot] = NULL;
    c->scr_bytes[slot] = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* profiling (US_CUDA_PROFILE=1)                                                               */

static const char *prof_names[P_COUNT] = {"embed", "rmsnorm_fwd", "rmsnorm_bwd", "linear_fwd", "linear_bwd_x",
                                          "linear_bwd_w", "lora_fwd", "lora_bwd", "rope", "attn_fwd", "attn_bwd",
                                          "glu_fwd", "glu_bwd", "add", "xent_fwd_bwd", "adamw", "reductions",
                                          "copy/zero/upload", "conversions"};

struct prof_state {
    cudaEvent_t *ev;
    int *op;
    int n, cap;
    double ms[P_COUNT];
    long cnt[P_COUNT];
};

static void prof_drain(cuda_impl *c) {
    prof_state *p = c->prof;
    if (!p->n) return;
    cudaEventSynchronize(p->ev[2 * (p->n - 1) + 1]);
    for (int i = 0; i < p->n; i++) {
        float t = 0;
        if (cudaEventElapsedTime(&t, p->ev[2 * i], p->ev[2 * i + 1]) == cudaSuccess) p->ms[p->op[i]] += t;
        p->cnt[p->op[i]]++;
    }
    p->n = 0;
}

int us_prof_begin(cuda_impl *c) {
    prof_state *p = c->prof;
    if (p->n == p->cap) prof_drain(c);
    cudaEventRecord(p->ev[2 * p->n], c->st);
    return p->n++; /* ops do not nest: the slot is closed before the next op begins */
}

void us_prof_end(cuda_impl *c, int slot, int op) {
    prof_state *p = c->prof;
    cudaEventRecord(p->ev[2 * slot + 1], c->st);
    p->op[slot] = op;
}

static void prof_init(cuda_impl *c) {
    const char *e = getenv("US_CUDA_PROFILE");
    if (!e || !*e || *e == '0') return;
    prof_state *p = (prof_state *)calloc(1, sizeof *p);
    if (!p) return;
    p->cap = 8192;
    p->ev = (cudaEvent_t *)calloc(2 * (size_t)p->cap, sizeof(cudaEvent_t));
    p->op = (int *)calloc((size_t)p->cap, sizeof(int));
    if (!p->ev || !p->op) {
        free(p->ev), free(p->op), free(p);
        return;
    }
    for (int i = 0; i < 2 * p->cap; i++) cudaEventCreate(&p->ev[i]);
    c->prof = p;
}

static void prof_report(cuda_impl *c) {
    prof_state *p = c->prof;
    if (!p) return;
    prof_drain(c);
    double tot = 0;
    for (int i = 0; i < P_COUNT; i++) tot += p->ms[i];
    fprintf(stderr, "cuda profile: GPU time per op kind (sum over the run, event pairs around each op)\n");
    int done[P_COUNT] = {0};
    for (int k = 0; k < P_COUNT; k++) {
        int best = -1;
        for (int i = 0; i < P_COUNT; i++)
            if (!done[i] && (best < 0 || p->ms[i] > p->ms[best])) best = i;
        done[best] = 1;
        if (!p->cnt[best]) continue;
        fprintf(stderr, "  %-18s %10.2f ms %5.1f%%  %8ld calls  %8.1f us/call\n", prof_names[best], p->ms[best],
                tot > 0 ? 100 * p->ms[best] / tot : 0, p->cnt[best], 1e3 * p->ms[best] / p->cnt[best]);
    }
    fprintf(stderr, "  %-18s %10.2f ms\n", "total", tot);
    for (int i = 0; i < 2 * p->cap; i++) cudaEventDestroy(p->ev[i]);
    free(p->ev), free(p->op), free(p);
    c->prof = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* memory ops                                                                                  */

static void *cu_alloc(us_backend *be, size_t bytes) { return dev_alloc(CI(be), bytes); }
static void cu_free(us_backend *be, void *p) { dev_free(CI(be), p); }

static void cu_upload(us_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_impl *c = CI(be);
    PROF(c, P_COPY);
    for (size_t off = 0; off < bytes;) {
        size_t n = US_MIN(c->pin_bytes, bytes - off);
        int i = c->pin_next;
        c->pin_next ^= 1;
        CK(c, cudaEventSynchronize(c->pin_ev[i])); /* the previous copy out of this buffer is done */
        memcpy(c->pin[i], (const char *)src + off, n);
        CK(c, cudaMemcpyAsync((char *)dst + off, c->pin[i], n, cudaMemcpyHostToDevice, c->st));
        CK(c, cudaEventRecord(c->pin_ev[i], c->st));
        off += n;
    }
}

static void cu_download(us_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_impl *c = CI(be);
    if (!bytes) return;
    CK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st));
    CK(c, cudaStreamSynchronize(c->st));
}

static void cu_zero(us_backend *be, void *p, size_t bytes) {
    PROF(CI(be), P_COPY);
    if (bytes) CK(CI(be), cudaMemsetAsync(p, 0, bytes, CI(be)->st));
}

static void cu_copy(us_backend *be, void *dst, const void *src, size_t bytes) {
    PROF(CI(be), P_COPY);
    if (bytes) CK(CI(be), cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, CI(be)->st));
}

static void cu_sync(us_backend *be) {
    cuda_impl *c = CI(be);
    CK(c, cudaStreamSynchronize(c->st));
    if (c->cst) CK(c, cudaStreamSynchronize(c->cst)); /* offloads land in host memory */
}

/* ------------------------------------------------------------------------------------------ */
/* host offload: pinned host memory and copies on a second stream                              */
/*
 * offload/prefetch: an event recorded on the compute stream orders the copy after every op issued
 * before it; the copy runs on the copy stream, overlapping the compute issued after it. Copy
 * ticket t then records ev_ring[t % COPY_RING] on the copy stream: copy_wait waits on its ticket's
 * event, copies_wait on the latest ticket's (the copy stream runs in order, so the latest record
 * covers every earlier copy, and a ticket whose event a later copy recorded again is covered by
 * that later record). */

/* Pinned host buffers of PIN_REGISTER_MIN bytes and more are anonymous memory, asked for as
 * transparent huge pages, first touched by up to 16 threads at once and then registered
 * (cudaHostRegister): cudaHostAlloc zeroes and pins page by page in one thread, which for the
 * ~110 GiB of a long-context run took most of a minute (bench/pin_bench.cu measures both).
 * US_CUDA_PIN=alloc keeps cudaHostAlloc for every size. c->regs lists the registered ones. */
#define PIN_REGISTER_MIN ((size_t)64 << 20)

static void touch_pages(char *p, size_t n) {
    unsigned hw = std::thread::hardware_concurrency();
    size_t threads = US_MAX((size_t)1, US_MIN((size_t)(hw ? hw : 4), US_MIN((size_t)16, n >> 26)));
    size_t per = (n / threads + 4095) / 4096 * 4096;
    std::vector<std::thread> ts;
    for (size_t i = 0; i < threads && i * per < n; i++) {
        size_t a = i * per, b = US_MIN(n, a + per);
        ts.emplace_back([=] { memset(p + a, 0, b - a); });
    }
    for (auto &t : ts) t.join();
}

/* MemAvailable of /proc/meminfo in bytes (0: unknown) */
static size_t host_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %zu kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024;
}

static void *cu_host_alloc(us_backend *be, size_t bytes) {
    cuda_impl *c = CI(be);
    void *p = NULL;
    bytes = bytes ? bytes : 1;
    if (bytes >= PIN_REGISTER_MIN && !c->pin_alloc_only) {
        /* touching more than the host has would wake the OOM killer, not return an error: refuse
         * what would leave under 1 GiB available */
        size_t avail = host_mem_available();
        if (avail && bytes + ((size_t)1 << 30) > avail) return NULL;
        pin_reg *r = (pin_reg *)realloc(c->regs, (c->n_regs + 1) * sizeof *c->regs);
        if (!r) return NULL;
        c->regs = r;
        void *q = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED) return NULL;
        madvise(q, bytes, MADV_HUGEPAGE); /* a hint: 4 KiB pages where the kernel has no huge ones */
        touch_pages((char *)q, bytes);
        if (cudaHostRegister(q, bytes, cudaHostRegisterDefault) != cudaSuccess) {
            (void)cudaGetLastError();
            munmap(q, bytes);
            return NULL;
        }
        c->regs[c->n_regs].p = q, c->regs[c->n_regs].bytes = bytes;
        c->n_regs++;
        return q;
    }
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError(); /* an answer, not a sticky error */
        return NULL;
    }
    return p;
}

static void cu_host_free(us_backend *be, void *p) {
    cuda_impl *c = CI(be);
    if (!p) return;
    graph_drop(c); /* a recorded step may copy from or to it */
    for (size_t i = 0; i < c->n_regs; i++)
        if (c->regs[i].p == p) {
            CK(c, cudaHostUnregister(p));
            munmap(p, c->regs[i].bytes);
            c->regs[i] = c->regs[--c->n_regs];
            return;
        }
    CK(c, cudaFreeHost(p));
}

static int copy_after_compute(cuda_impl *c, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    CK(c, cudaEventRecord(c->ev_compute, c->st));
    CK(c, cudaStreamWaitEvent(c->cst, c->ev_compute, 0));
    if (bytes) CK(c, cudaMemcpyAsync(dst, src, bytes, kind, c->cst));
    int t = ++c->copy_seq;
    if (c->copy_seq >= (1 << 30)) c->copy_seq = COPY_RING; /* keeps t % COPY_RING in step */
    CK(c, cudaEventRecord(c->ev_ring[t % COPY_RING], c->cst));
    c->copies_pending = 1;
    return t;
}

static int cu_offload(us_backend *be, void *host_dst, const void *dev_src, size_t bytes) {
    return copy_after_compute(CI(be), host_dst, dev_src, bytes, cudaMemcpyDeviceToHost);
}

static int cu_prefetch(us_backend *be, void *dev_dst, const void *host_src, size_t bytes) {
    return copy_after_compute(CI(be), dev_dst, host_src, bytes, cudaMemcpyHostToDevice);
}

static void cu_copy_wait(us_backend *be, int ticket) {
    cuda_impl *c = CI(be);
    if (ticket > 0) CK(c, cudaStreamWaitEvent(c->st, c->ev_ring[ticket % COPY_RING], 0));
}

/* widest bias the product's epilogue adds (linear_fwd; wider ones by k_add_bias) */
#define BIAS_MAX 32768

/* What the backend allocates beyond the model's buffers for a step of T tokens: the cuBLASLt
 * workspace, the attention backward's accumulators and D, the reduction scalar, the bf16 bias
 * copy. LoRA at r = 8, 16, 32 needs nothing (the cuBLASLt fallback for other ranks adds (r*in +
 * out*r + T*r) * 2 bytes for the largest adapter). */
static size_t cu_scratch_bytes(us_backend *be, int T, const us_attn_shape *sh) {
    cuda_impl *c = CI(be);
    size_t b = c->ws_bytes + 256 + BIAS_MAX * 2; /* workspace, SCR_RED, SCR_BIAS */
    if (sh && T > 0) b += us_cuda_attn_scratch_bytes(c, T, sh);
    return b;
}

static void cu_copies_wait(us_backend *be) {
    cuda_impl *c = CI(be);
    if (!c->copies_pending) return;
    CK(c, cudaStreamWaitEvent(c->st, c->ev_ring[c->copy_seq % COPY_RING], 0));
    c->copies_pending = 0;
}

static void cu_mem_info(us_backend *be, size_t *in_use, size_t *peak, size_t *total) {
    cuda_impl *c = CI(be);
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) tot = 0;
    if (in_use) *in_use = c->in_use;
    if (peak) *peak = c->peak;
    if (total) *total = tot;
}

/* ------------------------------------------------------------------------------------------ */
/* conversions and weight init                                                                 */

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static unsigned grid_for(cuda_impl *c, size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    size_t cap = (size_t)c->sm_count * 32;
    if (b > cap) b = cap;
    return (unsigned)(b ? b : 1);
}

__global__ void k_f32_to_bf16(bf16 *d, const float *s, size_t n) { GRID_STRIDE(i, n) d[i] = __float2bfloat16_rn(s[i]); }
__global__ void k_bf16_to_f32(float *d, const bf16 *s, size_t n) { GRID_STRIDE(i, n) d[i] = __bfloat162float(s[i]); }
__global__ void k_f16_to_bf16(bf16 *d, const __half *s, size_t n) {
    GRID_STRIDE(i, n) d[i] = __float2bfloat16_rn(__half2float(s[i]));
}

static void f32_to_bf16(cuda_impl *c, void *d, const float *s, size_t n) {
    if (!n) return;
    k_f32_to_bf16<<<grid_for(c, n, 256), 256, 0, c->st>>>((bf16 *)d, s, n);
    CK_LAUNCH(c);
}
static void bf16_to_f32(cuda_impl *c, float *d, const void *s, size_t n) {
    if (!n) return;
    k_bf16_to_f32<<<grid_for(c, n, 256), 256, 0, c->st>>>(d, (const bf16 *)s, n);
    CK_LAUNCH(c);
}

static void *cu_weight_upload(us_backend *be, const void *host, us_dtype dt, size_t n) {
    cuda_impl *c = CI(be);
    if (dt != US_DT_F32 && dt != US_DT_BF16 && dt != US_DT_F16) return NULL;
    bf16 *w = (bf16 *)dev_alloc(c, n * 2);
    if (!w) return NULL;
    if (dt == US_DT_BF16) {
        cu_upload(be, w, host, n * 2);
        return w;
    }
    size_t es = us_dtype_size(dt), per = c->pin_bytes / es;
    void *stage = us_cuda_scratch(c, SCR_STAGE, per * es);
    if (!stage) {
        dev_free(c, w);
        return NULL;
    }
    for (size_t i0 = 0; i0 < n; i0 += per) {
        size_t cnt = US_MIN(per, n - i0);
        cu_upload(be, stage, (const char *)host + i0 * es, cnt * es);
        if (dt == US_DT_F32)
            k_f32_to_bf16<<<grid_for(c, cnt, 256), 256, 0, c->st>>>(w + i0, (const float *)stage, cnt);
        else
            k_f16_to_bf16<<<grid_for(c, cnt, 256), 256, 0, c->st>>>(w + i0, (const __half *)stage, cnt);
        CK_LAUNCH(c);
    }
    CK(c, cudaStreamSynchronize(c->st));
    scratch_release(c, SCR_STAGE); /* keep load-time staging out of the training peak */
    return w;
}

/* The same counter-based generator as src/core/common.c (splitmix64 finaliser, Box-Muller in
 * double), so a random-init model is the same on every backend. */
__device__ __forceinline__ uint64_t d_hash64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

__global__ void k_fill_normal(bf16 *w, size_t n, float stdv, uint64_t key) {
    GRID_STRIDE(i, n) {
        uint64_t h = d_hash64(key + i);
        double u1 = ((double)(h >> 40) + 1.0) / 16777217.0;
        double u2 = (double)(h & 0xffffffu) / 16777216.0;
        float z = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        w[i] = __float2bfloat16_rn(stdv * z);
    }
}

static void cu_weight_fill_normal(us_backend *be, void *w, size_t n, float stdv, uint64_t seed, uint64_t stream) {
    cuda_impl *c = CI(be);
    if (!n) return;
    uint64_t key = us_hash64(seed ^ us_hash64(stream));
    k_fill_normal<<<grid_for(c, n, 256), 256, 0, c->st>>>((bf16 *)w, n, stdv, key);
    CK_LAUNCH(c);
}

static void cu_weight_from_f32(us_backend *be, void *w, const float *src, size_t n) {
    PROF(CI(be), P_CONVERT);
    f32_to_bf16(CI(be), w, src, n);
}
static void cu_weight_to_f32(us_backend *be, float *dst, const void *w, size_t n) {
    PROF(CI(be), P_CONVERT);
    bf16_to_f32(CI(be), dst, w, n);
}
/* one block W[i*ldw + j] = s * src[i*cols + j] (0 without src), strided over blockIdx.x */
__device__ void weight_put_block(const us_put &p) {
    const size_t n = (size_t)p.rows * p.cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / p.cols, j = i % p.cols;
        ((bf16 *)p.W)[r * p.ldw + j] = __float2bfloat16_rn(p.src ? p.s * p.src[i] : 0.0f);
    }
}
__global__ void k_weight_put(us_put p) { weight_put_block(p); }
/* blockIdx.y: the block of the list */
__global__ void k_weight_put_list(const us_put *list) { weight_put_block(list[blockIdx.y]); }
static void cu_weight_put_list(us_backend *be, const us_put *list, int n) {
    cuda_impl *c = CI(be);
    PROF(c, P_CONVERT);
    for (int i0 = 0; i0 < n; i0 += 65535) {
        k_weight_put_list<<<dim3(32, (unsigned)US_MIN(65535, n - i0)), 256, 0, c->st>>>(list + i0);
        CK_LAUNCH(c);
    }
}
static void cu_weight_put(us_backend *be, void *W, int ldw, const float *src, int rows, int cols, float s) {
    cuda_impl *c = CI(be);
    PROF(c, P_CONVERT);
    if (rows <= 0 || cols <= 0) return;
    k_weight_put<<<grid_for(c, (size_t)rows * cols, 256), 256, 0, c->st>>>(us_put{W, src, ldw, rows, cols, s});
    CK_LAUNCH(c);
}
static void cu_act_from_f32(us_backend *be, void *dst, const float *src, size_t n) {
    PROF(CI(be), P_CONVERT);
    f32_to_bf16(CI(be), dst, src, n);
}
static void cu_act_to_f32(us_backend *be, float *dst, const void *src, size_t n) {
    PROF(CI(be), P_CONVERT);
    bf16_to_f32(CI(be), dst, src, n);
}

/* ------------------------------------------------------------------------------------------ */
/* embedding                                                                                   */

__global__ void k_embed_fwd_vec(bf16 *x, const bf16 *E, const int32_t *ids, int T, int dim) {
    int upr = dim / 8;
    GRID_STRIDE(i, (size_t)T * upr) {
        size_t t = i / upr, u = i % upr;
        *reinterpret_cast<uint4 *>(x + t * dim + u * 8) =
            *reinterpret_cast<const uint4 *>(E + (size_t)ids[t] * dim + u * 8);
    }
}
__global__ void k_embed_fwd(bf16 *x, const bf16 *E, const int32_t *ids, int T, int dim) {
    GRID_STRIDE(i, (size_t)T * dim) {
        size_t t = i / dim, d = i % dim;
        x[i] = E[(size_t)ids[t] * dim + d];
    }
}
__global__ void k_embed_bwd(float *dE, const bf16 *dx, const int32_t *ids, int T, int dim) {
    GRID_STRIDE(i, (size_t)T * dim) {
        size_t t = i / dim, d = i % dim;
        atomicAdd(dE + (size_t)ids[t] * dim + d, __bfloat162float(dx[i]));
    }
}

static void cu_embed_fwd(us_backend *be, void *x, const void *E, const int32_t *ids, int T, int dim) {
    cuda_impl *c = CI(be);
    PROF(c, P_EMBED);
    if (dim % 8 == 0 && aligned16(x) && aligned16(E))
        k_embed_fwd_vec<<<grid_for(c, (size_t)T * dim / 8, 256), 256, 0, c->st>>>((bf16 *)x, (const bf16 *)E, ids, T, dim);
    else
        k_embed_fwd<<<grid_for(c, (size_t)T * dim, 256), 256, 0, c->st>>>((bf16 *)x, (const bf16 *)E, ids, T, dim);
    CK_LAUNCH(c);
}
static void cu_embed_bwd(us_backend *be, float *dE, const void *dx, const int32_t *ids, int T, int dim) {
    cuda_impl *c = CI(be);
    PROF(c, P_EMBED);
    k_embed_bwd<<<grid_for(c, (size_t)T * dim, 256), 256, 0, c->st>>>(dE, (const bf16 *)dx, ids, T, dim);
    CK_LAUNCH(c);
}

/* ------------------------------------------------------------------------------------------ */
/* RMSNorm: one warp per row                                                                   */

template <bool VEC>
__global__ void k_rmsnorm_fwd(bf16 *y, int ldy, float *rstd, const bf16 *x, const float *w, int T, int dim, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= T) return;
    const bf16 *xr = x + (size_t)row * dim;
    bf16 *yr = y + (size_t)row * ldy;
    float ss = 0;
    if (VEC) {
        for (int u = lane; u < dim / 8; u += 32) {
            float f[8];
            load8(xr + u * 8, f);
#pragma unroll
            for (int j = 0; j < 8; j++) ss += f[j] * f[j];
        }
    } else {
        for (int d = lane; d < dim; d += 32) {
            float f = __bfloat162float(xr[d]);
            ss += f * f;
        }
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / dim + eps);
    if (lane == 0) rstd[row] = r;
    if (VEC) {
        for (int u = lane; u < dim / 8; u += 32) {
            float f[8];
            load8(xr + u * 8, f);
#pragma unroll
            for (int j = 0; j < 8; j++) f[j] = w[u * 8 + j] * (f[j] * r);
            store8(yr + u * 8, f);
        }
    } else {
        for (int d = lane; d < dim; d += 32) yr[d] = __float2bfloat16_rn(w[d] * (__bfloat162float(xr[d]) * r));
    }
}

template <bool VEC>
__global__ void k_rmsnorm_bwd(bf16 *dx, int ldx, bool acc, const bf16 *dy, const bf16 *x, const float *rstd,
                              const float *w, int T, int dim) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= T) return;
    const bf16 *xr = x + (size_t)row * dim, *gr = dy + (size_t)row * dim;
    bf16 *dr = dx + (size_t)row * ldx;
    float r = rstd[row], dot = 0;
    if (VEC) {
        for (int u = lane; u < dim / 8; u += 32) {
            float f[8], g[8];
            load8(xr + u * 8, f);
            load8(gr + u * 8, g);
#pragma unroll
            for (int j = 0; j < 8; j++) dot += g[j] * w[u * 8 + j] * f[j];
        }
    } else {
        for (int d = lane; d < dim; d += 32) dot += __bfloat162float(gr[d]) * w[d] * __bfloat162float(xr[d]);
    }
    dot = warp_sum(dot);
    float mean = dot * r / dim; /* mean of (dy*w) * xhat */
    if (VEC) {
        for (int u = lane; u < dim / 8; u += 32) {
            float f[8], g[8], o[8];
            load8(xr + u * 8, f);
            load8(gr + u * 8, g);
            if (acc) load8(dr + u * 8, o);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float v = r * (g[j] * w[u * 8 + j] - f[j] * r * mean);
                o[j] = acc ? o[j] + v : v;
            }
            store8(dr + u * 8, o);
        }
    } else {
        for (int d = lane; d < dim; d += 32) {
            float v = r * (__bfloat162float(gr[d]) * w[d] - __bfloat162float(xr[d]) * r * mean);
            dr[d] = __float2bfloat16_rn(acc ? __bfloat162float(dr[d]) + v : v);
        }
    }
}

/* Register-resident variants for rows of at most 256*NC*WPR elements (dim % 8 == 0, 16-byte
 * aligned): each lane issues all of its row's 16-byte loads at once and keeps them, so the row is
 * read from memory once and many loads are in flight (the loop kernels above re-read the row and
 * wait on one load at a time). The loop kernels' arithmetic; a row over several warps sums its
 * partial sums in another order. */
__device__ __forceinline__ void load_w8(const float *w, float f[8]) {
    const float4 a = __ldg(reinterpret_cast<const float4 *>(w)), b = __ldg(reinterpret_cast<const float4 *>(w) + 1);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

/* A row is spread over WPR warps of the 128-thread block (4 / WPR rows per block), each lane
 * holding NC 16-byte chunks: wide rows (8B: 4096) keep few registers per thread and many blocks
 * resident, instead of one warp holding a whole row (WPR = 1, which the narrow rows still use).
 * row_sum() adds a row's partial sums across its warps. */
template <int WPR>
__device__ __forceinline__ float row_sum(float v, float *part) {
    v = warp_sum(v);
    if (WPR == 1) return v;
    const int warp = threadIdx.x / 32, first = warp / WPR * WPR;
    if (threadIdx.x % 32 == 0) part[warp] = v;
    __syncthreads();
    float s = 0;
#pragma unroll
    for (int k = 0; k < WPR; k++) s += part[first + k];
    return s;
}

template <int NC, int WPR>
__global__ void __launch_bounds__(128) k_rmsnorm_fwd_reg(bf16 *y, int ldy, float *rstd, const bf16 *x, const float *w,
                                                         int T, int dim, float eps) {
    __shared__ float part[4];
    const int warp = threadIdx.x / 32, row = blockIdx.x * (4 / WPR) + warp / WPR;
    const int sub = (warp % WPR) * 32 + threadIdx.x % 32, step = 32 * WPR;
    const bool live = row < T; /* no early return: the block's rows meet in row_sum */
    const int nch = dim / 8;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + (size_t)row * dim);
    uint4 v[NC];
#pragma unroll
    for (int i = 0; i < NC; i++)
        if (live && sub + step * i < nch) v[i] = __ldg(xr + sub + step * i);
    float ss = 0;
#pragma unroll
    for (int i = 0; i < NC; i++)
        if (live && sub + step * i < nch) {
            float f[8];
            unpack8(v[i], f);
#pragma unroll
            for (int j = 0; j < 8; j++) ss += f[j] * f[j];
        }
    ss = row_sum<WPR>(ss, part);
    if (!live) return;
    float r = 1.0f / sqrtf(ss / dim + eps);
    if (sub == 0) rstd[row] = r;
    bf16 *yr = y + (size_t)row * ldy;
#pragma unroll
    for (int i = 0; i < NC; i++) {
        const int u = sub + step * i;
        if (u < nch) {
            float f[8], wf[8];
            unpack8(v[i], f);
            load_w8(w + u * 8, wf);
#pragma unroll
            for (int j = 0; j < 8; j++) f[j] = wf[j] * (f[j] * r);
            store8(yr + u * 8, f);
        }
    }
}

template <int NC, int WPR>
__global__ void __launch_bounds__(128) k_rmsnorm_bwd_reg(bf16 *dx, int ldx, bool acc, const bf16 *dy, const bf16 *x,
                                                         const float *rstd, const float *w, int T, int dim) {
    __shared__ float part[4];
    const int warp = threadIdx.x / 32, row = blockIdx.x * (4 / WPR) + warp / WPR;
    const int sub = (warp % WPR) * 32 + threadIdx.x % 32, step = 32 * WPR;
    const bool live = row < T;
    const int nch = dim / 8;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + (size_t)row * dim);
    const uint4 *gr = reinterpret_cast<const uint4 *>(dy + (size_t)row * dim);
    bf16 *dr = dx + (size_t)row * ldx;
    uint4 xv[NC], gv[NC], ov[NC]; /* ov: dx's old rows, fetched with the others when accumulating */
#pragma unroll
    for (int i = 0; i < NC; i++)
        if (live && sub + step * i < nch) {
            xv[i] = __ldg(xr + sub + step * i), gv[i] = gr[sub + step * i]; /* dy may alias dx */
            if (acc) ov[i] = reinterpret_cast<const uint4 *>(dr)[sub + step * i];
        }
    float r = live ? rstd[row] : 0.0f, dot = 0;
#pragma unroll
    for (int i = 0; i < NC; i++)
        if (live && sub + step * i < nch) {
            float f[8], g[8], wf[8];
            unpack8(xv[i], f);
            unpack8(gv[i], g);
            load_w8(w + (sub + step * i) * 8, wf);
#pragma unroll
            for (int j = 0; j < 8; j++) dot += g[j] * wf[j] * f[j];
        }
    dot = row_sum<WPR>(dot, part);
    if (!live) return;
    float mean = dot * r / dim;
#pragma unroll
    for (int i = 0; i < NC; i++) {
        const int u = sub + step * i;
        if (u < nch) {
            float f[8], g[8], wf[8], o[8];
            unpack8(xv[i], f);
            unpack8(gv[i], g);
            load_w8(w + u * 8, wf);
            if (acc) unpack8(ov[i], o);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float v = r * (g[j] * wf[j] - f[j] * r * mean);
                o[j] = acc ? o[j] + v : v;
            }
            store8(dr + u * 8, o);
        }
    }
}

/* Warps per row for the register kernels: c->rms_wpr (US_CUDA_RMS_WPR=1 keeps a row in one warp,
 * the first version) or, by default, 1 up to 1024 elements, 2 up to 2048, else 4. */
static int rms_wpr(const cuda_impl *c, int dim) {
    if (c->rms_wpr == 1 || c->rms_wpr == 2 || c->rms_wpr == 4) return c->rms_wpr;
    return dim <= 1024 ? 1 : dim <= 2048 ? 2 : 4;
}

/* Launches KERNEL<NC, WPR> for a register-resident row of dim elements (dim % 8 == 0, at most
 * 8192); false when the row is too long. */
#define RMS_REG_LAUNCH(KERNEL, dim, T, ...)                                                           \
    [&]() -> bool {                                                                                   \
        const int wpr_ = rms_wpr(c, dim), nc_ = (int)ceil_div_u((size_t)(dim) / 8, 32 * wpr_);          \
        const dim3 g_(ceil_div_u((T), 4 / wpr_));                                                     \
        if (wpr_ == 1 && nc_ <= 4) KERNEL<4, 1><<<g_, 128, 0, c->st>>>(__VA_ARGS__);                  \
        else if (wpr_ == 1 && nc_ <= 8) KERNEL<8, 1><<<g_, 128, 0, c->st>>>(__VA_ARGS__);             \
        else if (wpr_ == 1 && nc_ <= 16) KERNEL<16, 1><<<g_, 128, 0, c->st>>>(__VA_ARGS__);           \
        else if (wpr_ == 2 && nc_ <= 4) KERNEL<4, 2><<<g_, 128, 0, c->st>>>(__VA_ARGS__);             \
        else if (wpr_ == 2 && nc_ <= 8) KERNEL<8, 2><<<g_, 128, 0, c->st>>>(__VA_ARGS__);             \
        else if (wpr_ == 4 && nc_ <= 4) KERNEL<4, 4><<<g_, 128, 0, c->st>>>(__VA_ARGS__);             \
        else if (wpr_ == 4 && nc_ <= 8) KERNEL<8, 4><<<g_, 128, 0, c->st>>>(__VA_ARGS__);             \
        else return false;                                                                            \
        return true;                                                                                  \
    }()

/* Column sums over rows of a [T, dim] bf16 tensor: out[d] += sum_t a[t,d] (* b[t,d] * s[t]).
 * Block: 32 columns x 8 row lanes; grid.y splits the rows; one atomicAdd per column per block. */
__global__ void k_colsum(float *out, const bf16 *a, const bf16 *b, const float *s, int T, int dim, int rows_per) {
    __shared__ float part[8][33];
    int col = blockIdx.x * 32 + threadIdx.x, t0 = blockIdx.y * rows_per, t1 = min(T, t0 + rows_per);
    float acc = 0;
    if (col < dim)
        for (int t = t0 + threadIdx.y; t < t1; t += 8) {
            float v = __bfloat162float(a[(size_t)t * dim + col]);
            if (b) v *= __bfloat162float(b[(size_t)t * dim + col]) * s[t];
            acc += v;
        }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < dim) {
        float sum = 0;
        for (int i = 0; i < 8; i++) sum += part[i][threadIdx.x];
        atomicAdd(out + col, sum);
    }
}

static void colsum(cuda_impl *c, float *out, const void *a, const void *b, const float *s, int T, int dim) {
    int rows_per = 256;
    dim3 grid(ceil_div_u(dim, 32), ceil_div_u(T, rows_per)), block(32, 8);
    k_colsum<<<grid, block, 0, c->st>>>(out, (const bf16 *)a, (const bf16 *)b, s, T, dim, rows_per);
    CK_LAUNCH(c);
}

static void cu_rmsnorm_fwd(us_backend *be, void *y, int ldy, float *rstd, const void *x, const float *w, int T,
                           int dim, float eps) {
    cuda_impl *c = CI(be);
    PROF(c, P_RMSNORM_F);
    unsigned grid = ceil_div_u(T, 4);
    const bool vec = dim % 8 == 0 && ldy % 8 == 0 && aligned16(x) && aligned16(y) && aligned16(w);
    const bool reg = vec && RMS_REG_LAUNCH(k_rmsnorm_fwd_reg, dim, T, (bf16 *)y, ldy, rstd, (const bf16 *)x, w, T, dim, eps);
    if (!reg && dim % 8 == 0 && ldy % 8 == 0 && aligned16(x) && aligned16(y))
        k_rmsnorm_fwd<true><<<grid, 128, 0, c->st>>>((bf16 *)y, ldy, rstd, (const bf16 *)x, w, T, dim, eps);
    else if (!reg)
        k_rmsnorm_fwd<false><<<grid, 128, 0, c->st>>>((bf16 *)y, ldy, rstd, (const bf16 *)x, w, T, dim, eps);
    CK_LAUNCH(c);
}

static void cu_rmsnorm_bwd(us_backend *be, void *dx, int ldx, bool acc, float *dw, const void *dy, const void *x,
                           const float *rstd, const float *w, int T, int dim) {
    cuda_impl *c = CI(be);
    PROF(c, P_RMSNORM_B);
    unsigned grid = ceil_div_u(T, 4);
    if (dw) colsum(c, dw, dy, x, rstd, T, dim); /* before dx: dx may alias dy */
    const bool vec = dim % 8 == 0 && ldx % 8 == 0 && aligned16(x) && aligned16(dy) && aligned16(dx);
    const bool reg = vec && aligned16(w) &&
                     RMS_REG_LAUNCH(k_rmsnorm_bwd_reg, dim, T, (bf16 *)dx, ldx, acc, (const bf16 *)dy, (const bf16 *)x, rstd, w, T, dim);
    if (!reg && vec)
        k_rmsnorm_bwd<true><<<grid, 128, 0, c->st>>>((bf16 *)dx, ldx, acc, (const bf16 *)dy, (const bf16 *)x, rstd, w, T, dim);
    else if (!reg)
        k_rmsnorm_bwd<false><<<grid, 128, 0, c->st>>>((bf16 *)dx, ldx, acc, (const bf16 *)dy, (const bf16 *)x, rstd, w, T, dim);
    CK_LAUNCH(c);
}

/* ------------------------------------------------------------------------------------------ */
/* matrix products: cuBLASLt, column-major, plans cached by shape, types and alignment          */

struct gemm_plan {
    int ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, align_a, align_b, align_c;
    int bias; /* the epilogue adds a vector of C's type over C's rows (CUBLASLT_EPILOGUE_BIAS) */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo, cand[8];
    int ok, n_cand, tuned;
};

static int ptr_align(const void *p) {
    uintptr_t v = (uintptr_t)p;
    int a = 256;
    while (a > 1 && (v % (uintptr_t)a)) a >>= 1;
    return a;
}

#define LTCK(c, call)                                                                  \
    do {                                                                               \
        cublasStatus_t s_ = (call);                                                    \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                             \
            char m_[64];                                                               \
            snprintf(m_, sizeof m_, "cublasLt status %d", (int)s_);                    \
            us_cuda_report((c), #call, m_, __FILE__, __LINE__);                        \
        }                                                                              \
    } while (0)

static gemm_plan *gemm_find(cuda_impl *c, int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc,
                            cudaDataType at, cudaDataType bt, cudaDataType ct, int aa, int ab, int ac, int bias) {
    for (int i = 0; i < c->n_plans; i++) {
        gemm_plan *p = &c->plans[i];
        if (p->ta == ta && p->tb == tb && p->m == m && p->n == n && p->k == k && p->lda == lda && p->ldb == ldb &&
            p->ldc == ldc && p->at == (int)at && p->bt == (int)bt && p->ct == (int)ct && p->align_a == aa &&
            p->align_b == ab && p->align_c == ac && p->bias == bias)
            return p;
    }
    if (c->n_plans == c->cap_plans) {
        int cap = c->cap_plans ? c->cap_plans * 2 : 64;
        void *np = realloc(c->plans, (size_t)cap * sizeof(gemm_plan));
        if (!np) return NULL;
        c->plans = (gemm_plan *)np;
        c->cap_plans = cap;
    }
    gemm_plan *p = &c->plans[c->n_plans];
    memset(p, 0, sizeof *p);
    p->ta = ta, p->tb = tb, p->m = m, p->n = n, p->k = k, p->lda = lda, p->ldb = ldb, p->ldc = ldc;
    p->at = at, p->bt = bt, p->ct = ct, p->align_a = aa, p->align_b = ab, p->align_c = ac, p->bias = bias;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    LTCK(c, cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LTCK(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LTCK(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (bias) { /* the bias in C's type: cuBLASLt 13 has no f32 bias for a bf16 C */
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        LTCK(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    }
    LTCK(c, cublasLtMatrixLayoutCreate(&p->la, at, ta ? k : m, ta ? m : k, lda));
    LTCK(c, cublasLtMatrixLayoutCreate(&p->lb, bt, tb ? n : k, tb ? k : n, ldb));
    LTCK(c, cublasLtMatrixLayoutCreate(&p->lc, ct, m, n, ldc));
    cublasLtMatmulPreference_t pref;
    LTCK(c, cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = c->ws_bytes;
    uint32_t a32 = (uint32_t)aa, b32 = (uint32_t)ab, c32 = (uint32_t)ac;
    LTCK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    LTCK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a32, sizeof a32));
    LTCK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b32, sizeof b32));
    LTCK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c32, sizeof c32));
    LTCK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &c32, sizeof c32));
    cublasLtMatmulHeuristicResult_t res[8];
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(c->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 8, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_SUCCESS && found > 0) {
        p->algo = res[0].algo;
        p->n_cand = 0;
        for (int i = 0; i < found; i++)
            if (res[i].state == CUBLAS_STATUS_SUCCESS) p->cand[p->n_cand++] = res[i].algo;
        p->tuned = p->n_cand <= 1;
        p->ok = 1;
    } else if (!bias) { /* a bias epilogue without an algorithm: the caller adds the bias itself */
        char msg[160];
        snprintf(msg, sizeof msg, "no cuBLASLt algorithm for m=%d n=%d k=%d ta=%d tb=%d (status %d)", m, n, k, ta, tb,
                 (int)s);
        us_cuda_report(c, "cublasLtMatmulAlgoGetHeuristic", msg, __FILE__, __LINE__);
    }
    c->n_plans++;
    return p;
}

/* Times the heuristic's candidates on the real operands, the output into C itself (beta 0, or a
 * source other than C: C is then only written), and keeps the fastest where it beats the
 * heuristic's first choice by 3% twice: once in candidate order, then in a rematch of the two
 * timed alternately (a near tie keeps the first, so the choice rarely differs from run to run;
 * US_CUDA_TUNE=0 for products that repeat bit for bit between runs). The rematch guards against
 * the clock: the first step's products are timed while the SM clock still ramps up, which favours
 * the later candidates — the 8B's k and v products had kept one of 41 µs over the first choice's
 * 25 µs (`nvjet_sm90_tst_64x128` against `128x128`, H100, 2026-11-23). Products that accumulate
 * into C in place keep the heuristic's choice: timing them would need a copy of C, memory the plan
 * does not count. Measured (H100, 2026-11-23): the folded widths put some products' K past a
 * multiple of 64, where the first choice can run 10% slow (gpu_bench kpad); tuning gave the 1B
 * +0.75% over four alternating pairs, the 8B within noise. US_CUDA_TUNE=0: the heuristic's choice
 * everywhere. */
static float gemm_time(cuda_impl *c, gemm_plan *p, const cublasLtMatmulAlgo_t *algo, float alpha, const void *A,
                       const void *B, void *C, cudaEvent_t e0, cudaEvent_t e1) {
    const float zero = 0.0f; /* the candidates only write C */
    cudaEventRecord(e0, c->st);
    for (int r = 0; r < 3; r++)
        cublasLtMatmul(c->lt, p->desc, &alpha, A, p->la, B, p->lb, &zero, C, p->lc, C, p->lc, algo, c->ws, c->ws_bytes,
                       c->st);
    cudaEventRecord(e1, c->st);
    cudaEventSynchronize(e1);
    float ms = 0;
    return cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess ? ms : -1.0f;
}

static void gemm_tune(cuda_impl *c, gemm_plan *p, float alpha, const void *A, const void *B, float beta, void *C,
                      bool c_is_output) {
    if (c->gemm_tune_off || (beta != 0.0f && !c_is_output)) {
        p->tuned = 1;
        return;
    }
    if (c->capturing) return; /* no timing inside a graph capture: the next eager call tunes */
    const float zero = 0.0f;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float best = 1e30f, first = 0.0f;
    int bi = -1;
    for (int i = 0; i < p->n_cand; i++) {
        if (cublasLtMatmul(c->lt, p->desc, &alpha, A, p->la, B, p->lb, &zero, C, p->lc, C, p->lc, &p->cand[i], c->ws,
                           c->ws_bytes, c->st) != CUBLAS_STATUS_SUCCESS)
            continue;
        float ms = gemm_time(c, p, &p->cand[i], alpha, A, B, C, e0, e1);
        if (ms <= 0.0f) continue;
        if (i == 0) first = ms;
        if (ms < best) best = ms, bi = i;
    }
    if (bi > 0 && first > 0.0f && best < 0.97f * first) { /* the rematch, alternating */
        float t0 = 0, tb = 0;
        bool ok = true;
        for (int r = 0; r < 2; r++) {
            float x = gemm_time(c, p, &p->cand[bi], alpha, A, B, C, e0, e1), y = gemm_time(c, p, &p->cand[0], alpha, A, B, C, e0, e1);
            ok = ok && x > 0.0f && y > 0.0f;
            tb += x, t0 += y;
        }
        if (!ok || !(tb < 0.97f * t0)) bi = 0;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    (void)cudaGetLastError();
    if (bi >= 0 && (first <= 0.0f || best < 0.97f * first)) p->algo = p->cand[bi];
    p->tuned = 1;
}

/* Column-major C[m,n] = alpha op(A) op(B) + beta S (+ bias[i] on row i), op(A) m x k, S = Cs
 * (same layout as C) or, with Cs NULL, C itself. Returns whether the bias was added (false: no
 * algorithm takes that epilogue at this shape; the caller adds it). */
static bool gemm_src(cuda_impl *c, bool ta, bool tb, int m, int n, int k, float alpha, const void *A, cudaDataType at,
                     int lda, const void *B, cudaDataType bt, int ldb, float beta, const void *Cs, void *C,
                     cudaDataType ct, int ldc, const void *bias = NULL) {
    if (m <= 0 || n <= 0) return true;
    const size_t bytes = (size_t)ldc * n * (ct == CUDA_R_32F ? 4 : 2);
    if (!Cs) Cs = C;
    if (k <= 0) {
        if (beta == 0.0f) CK(c, cudaMemsetAsync(C, 0, bytes, c->st));
        else if (Cs != C) CK(c, cudaMemcpyAsync(C, Cs, bytes, cudaMemcpyDeviceToDevice, c->st));
        return !bias;
    }
    int ac = US_MIN(ptr_align(C), ptr_align(Cs));
    gemm_plan *p = bias && ptr_align(bias) >= 16
                       ? gemm_find(c, ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, ptr_align(A), ptr_align(B), ac, 1)
                       : NULL;
    if (p && p->ok) LTCK(c, cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    else p = gemm_find(c, ta, tb, m, n, k, lda, ldb, ldc, at, bt, ct, ptr_align(A), ptr_align(B), ac, 0);
    if (!p || !p->ok) return true; /* reported */
    if (!p->tuned) gemm_tune(c, p, alpha, A, B, beta, C, Cs != C);
    LTCK(c, cublasLtMatmul(c->lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, Cs, p->lc, C, p->lc, &p->algo, c->ws,
                           c->ws_bytes, c->st));
    return p->bias || !bias;
}

static void gemm(cuda_impl *c, bool ta, bool tb, int m, int n, int k, float alpha, const void *A, cudaDataType at,
                 int lda, const void *B, cudaDataType bt, int ldb, float beta, void *C, cudaDataType ct, int ldc) {
    gemm_src(c, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, NULL, C, ct, ldc);
}

#define BF CUDA_R_16BF
#define F32 CUDA_R_32F

__global__ void k_add_bias(bf16 *y, const float *bias, size_t T, int out) {
    GRID_STRIDE(i, T * out) y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + bias[i % out]);
}

static void cu_linear_fwd(us_backend *be, void *y, const void *res, const void *x, int ldx, const void *W, int ldw,
                          const float *bias, int T, int in, int out) {
    cuda_impl *c = CI(be);
    PROF(c, P_LINEAR_F);
    /* the bias rounded to bf16 (as a bf16 model holds it) and added by the product's epilogue to
     * its f32 sums: one rounding, no pass over y */
    bf16 *bb = bias && out <= BIAS_MAX ? (bf16 *)us_cuda_scratch(c, SCR_BIAS, BIAS_MAX * 2) : NULL;
    if (bb) f32_to_bf16(c, bb, bias, (size_t)out);
    /* y^T (out x T) = res^T + W (out x in) x^T (+ bias) */
    if (!gemm_src(c, true, false, out, T, in, 1.0f, W, BF, ldw, x, BF, ldx, res ? 1.0f : 0.0f, res, y, BF, out, bb) ||
        (bias && !bb)) {
        k_add_bias<<<grid_for(c, (size_t)T * out, 256), 256, 0, c->st>>>((bf16 *)y, bias, (size_t)T, out);
        CK_LAUNCH(c);
    }
}

static void cu_linear_bwd_x(us_backend *be, void *dx, bool acc, const void *dy, int lddy, const void *W, int ldw, int T,
                            int in, int out) {
    PROF(CI(be), P_LINEAR_BX);
    /* dx^T (in x T) = W^T (in x out) dy^T */
    gemm(CI(be), false, false, in, T, out, 1.0f, W, BF, ldw, dy, BF, lddy, acc ? 1.0f : 0.0f, dx, BF, in);
}

static void cu_linear_bwd_w(us_backend *be, float *dW, float *dbias, const void *dy, const void *x, int T, int in,
                            int out) {
    cuda_impl *c = CI(be);
    PROF(c, P_LINEAR_BW);
    /* dW^T (in x out) += x^T (in x T) dy (T x out) */
    if (dW) gemm(c, false, true, in, out, T, 1.0f, x, BF, in, dy, BF, out, 1.0f, dW, F32, in);
    if (dbias) colsum(c, dbias, dy, NULL, NULL, T, out);
}

/* LoRA: by default the three tensor-core kernels of cuda_lora.cu (r = 8, 16, 32; they read the
 * f32 masters directly). Other ranks or alignments, or US_CUDA_LORA_GEMM=1, take the cuBLASLt
 * path below. */
static bool lora_gemm_forced(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("US_CUDA_LORA_GEMM");
        v = e && *e && *e != '0';
    }
    return v;
}

/* LoRA through cuBLASLt (fallback): the f32 masters are cast to bf16 copies (tiny) and u / du
 * gathered from their column block into a contiguous bf16 copy, for tensor-core products with
 * fp32 accumulation. */
static bf16 *lora_bf16_rows(cuda_impl *c, int slot, const float *src, int ld, int T, int w) {
    float *tmp = (float *)us_cuda_scratch(c, SCR_LORA_TMP, (size_t)T * w * 4);
    bf16 *d = (bf16 *)us_cuda_scratch(c, slot, (size_t)T * w * 2);
    if (!tmp || !d) return NULL;
    CK(c, cudaMemcpy2DAsync(tmp, (size_t)w * 4, src, (size_t)ld * 4, (size_t)w * 4, (size_t)T, cudaMemcpyDeviceToDevice, c->st));
    f32_to_bf16(c, d, tmp, (size_t)T * w);
    return d;
}

/* y = res + ...: start y from res (or zero) so the product can accumulate with beta = 1 */
static void start_from(cuda_impl *c, void *y, const void *res, size_t n) {
    if (res == y) return;
    if (res) CK(c, cudaMemcpyAsync(y, res, n * 2, cudaMemcpyDeviceToDevice, c->st));
    else CK(c, cudaMemsetAsync(y, 0, n * 2, c->st));
}

/* x[t, in + j] = bf16(u[t, j]): u beside x for a folded frozen product */
__global__ void k_lora_fold(bf16 *x, int ldx, const float *u, int ldu, int T, int R) {
    GRID_STRIDE(i, (size_t)T * R) {
        const size_t t = i / R, j = i % R;
        x[t * ldx + j] = __float2bfloat16_rn(u[t * ldu + j]);
    }
}

static void cu_lora_down(us_backend *be, float *u, int ldu, const void *x, int ldx, const float *A, int T, int in,
                         int R, bool fold) {
    cuda_impl *c = CI(be);
    PROF(c, P_LORA_F);
    bool folded = false;
    if (lora_gemm_forced() || !us_cuda_lora_down_fast(c, u, ldu, x, ldx, A, T, in, R, fold, &folded)) {
        bf16 *Ab = (bf16 *)us_cuda_scratch(c, SCR_LORA_A, (size_t)R * in * 2);
        if (!Ab) return;
        f32_to_bf16(c, Ab, A, (size_t)R * in);
        /* u^T (R x T) = A (R x in) x^T */
        gemm(c, true, false, R, T, in, 1.0f, Ab, BF, in, x, BF, ldx, 0.0f, u, F32, ldu);
    }
    if (fold && !folded && T > 0) {
        k_lora_fold<<<grid_for(c, (size_t)T * R, 256), 256, 0, c->st>>>((bf16 *)x + in, ldx, u, ldu, T, R);
        CK_LAUNCH(c);
    }
}

static void cu_lora_up(us_backend *be, void *y, const void *res, const float *u, int ldu, const float *B, float s,
                       int T, int out, int r) {
    cuda_impl *c = CI(be);
    PROF(c, P_LORA_F);
    if (!lora_gemm_forced() && us_cuda_lora_up_fast(c, y, res, u, ldu, B, s, T, out, r)) return;
    bf16 *Bb = (bf16 *)us_cuda_scratch(c, SCR_LORA_B, (size_t)out * r * 2), *ub = lora_bf16_rows(c, SCR_LORA_U, u, ldu, T, r);
    if (!Bb || !ub) return;
    f32_to_bf16(c, Bb, B, (size_t)out * r);
    start_from(c, y, res, (size_t)T * out);
    /* y^T (out x T) += s B (out x r) u^T */
    gemm(c, true, false, out, T, r, s, Bb, BF, r, ub, BF, r, 1.0f, y, BF, out);
}

static void cu_lora_bwd_dy(us_backend *be, float *du, int lddu, float *dB, const void *dy, int ldy, const float *u,
                           int ldu, const float *B, float s, int T, int out, int r, int fold_at) {
    cuda_impl *c = CI(be);
    PROF(c, P_LORA_B);
    bool folded = false; /* du's bf16 copy written by the reduction itself (when its rows end there) */
    void *fold = fold_at > 0 ? (bf16 *)dy + fold_at : NULL;
    if (lora_gemm_forced() || !us_cuda_lora_bwd_dy_fast(c, du, lddu, dB, dy, ldy, u, ldu, B, s, T, out, r, fold, &folded)) {
        bf16 *Bb = (bf16 *)us_cuda_scratch(c, SCR_LORA_B, (size_t)out * r * 2), *ub = lora_bf16_rows(c, SCR_LORA_U, u, ldu, T, r);
        if (!Bb || !ub) return;
        f32_to_bf16(c, Bb, B, (size_t)out * r);
        /* dB^T (r x out) += s u^T (r x T) dy (T x out) */
        gemm(c, false, true, r, out, T, s, ub, BF, r, dy, BF, ldy, 1.0f, dB, F32, r);
        /* du^T (r x T) = s B^T (r x out) dy^T */
        gemm(c, false, false, r, T, out, s, Bb, BF, r, dy, BF, ldy, 0.0f, du, F32, lddu);
    }
    if (fold_at > 0 && T > 0 && !folded) { /* du into dy's rows, for dy's folded input-gradient product */
        k_lora_fold<<<grid_for(c, (size_t)T * r, 256), 256, 0, c->st>>>((bf16 *)dy + fold_at, ldy, du, lddu, T, r);
        CK_LAUNCH(c);
    }
}

/* y[t, i] = bf16(x[t, i] * rstd[t] * w[i]): the normed rows, for the paths without scales */
__global__ void k_norm_rows(bf16 *y, const bf16 *x, int ldx, const float *rstd, const float *w, int T, int in) {
    GRID_STRIDE(i, (size_t)T * in) {
        const size_t t = i / in, k = i % in;
        y[i] = __float2bfloat16_rn(__bfloat162float(x[t * ldx + k]) * rstd[t] * w[k]);
    }
}

static void cu_lora_bwd_x(us_backend *be, void *dx, const void *res, float *dA, const float *du, int lddu,
                          const void *x, int ldx, const float *rstd, const float *w, const float *A, int T, int in, int R) {
    cuda_impl *c = CI(be);
    PROF(c, P_LORA_B);
    if (!lora_gemm_forced() && us_cuda_lora_bwd_x_fast(c, dx, res, dA, du, lddu, x, ldx, rstd, w, A, T, in, R)) return;
    if (rstd && dA && T > 0) { /* form the normed rows in scratch (cuBLASLt fallback, or colred version 1) */
        bf16 *xn = (bf16 *)us_cuda_scratch(c, SCR_NORM_ROWS, (size_t)T * in * 2);
        if (!xn) return;
        k_norm_rows<<<grid_for(c, (size_t)T * in, 256), 256, 0, c->st>>>(xn, (const bf16 *)x, ldx, rstd, w, T, in);
        CK_LAUNCH(c);
        x = xn, ldx = in;
        if (!lora_gemm_forced() && us_cuda_lora_bwd_x_fast(c, dx, res, dA, du, lddu, x, ldx, NULL, NULL, A, T, in, R)) return;
    }
    bf16 *dub = lora_bf16_rows(c, SCR_LORA_U, du, lddu, T, R);
    if (!dub) return;
    /* dA^T (in x R) += x^T (in x T) du (T x R) */
    if (dA) gemm(c, false, true, in, R, T, 1.0f, x, BF, ldx, dub, BF, R, 1.0f, dA, F32, in);
    if (!dx) return;
    bf16 *Ab = (bf16 *)us_cuda_scratch(c, SCR_LORA_A, (size_t)R * in * 2);
    if (!Ab) return;
    f32_to_bf16(c, Ab, A, (size_t)R * in);
    start_from(c, dx, res, (size_t)T * in);
    /* dx^T (in x T) += A^T (in x R) du^T */
    gemm(c, false, false, in, T, R, 1.0f, Ab, BF, in, dub, BF, R, 1.0f, dx, BF, in);
}

/* ------------------------------------------------------------------------------------------ */
/* RoPE                                                                                        */

/* One thread per (token, rotation pair i): the angle's sine and cosine are computed once and
 * applied to that pair in every head (consecutive threads take consecutive i: coalesced rows). */
__global__ void k_rope(bf16 *x, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, float sgn) {
    const int half = hd / 2;
    const long long n = (long long)T * half;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
        const int t = (int)(idx / half), i = (int)(idx - (long long)t * half);
        float sn, cs;
        sincosf((float)pos[t] * inv_freq[i], &sn, &cs);
        sn *= sgn;
        bf16 *r = x + (size_t)t * nh * hd + i;
        for (int h = 0; h < nh; h++, r += hd) {
            const float a = __bfloat162float(r[0]), b = __bfloat162float(r[half]);
            r[0] = __float2bfloat16_rn(a * cs - b * sn);
            r[half] = __float2bfloat16_rn(b * cs + a * sn);
        }
    }
}

/* W consecutive elements of a source (bf16 or f32 — the attention backward's f32 sums), kept
 * packed in registers until used */
template <typename S, int W> struct Packed;
template <> struct Packed<bf16, 8> {
    uint4 v;
    __device__ void load(const bf16 *p) { v = *reinterpret_cast<const uint4 *>(p); }
    __device__ void get(float f[8]) const { unpack8(v, f); }
};
template <> struct Packed<bf16, 1> {
    bf16 v;
    __device__ void load(const bf16 *p) { v = *p; }
    __device__ void get(float f[1]) const { f[0] = __bfloat162float(v); }
};
template <> struct Packed<float, 8> {
    float4 a, b;
    __device__ void load(const float *p) { a = *reinterpret_cast<const float4 *>(p), b = *reinterpret_cast<const float4 *>(p + 4); }
    __device__ void get(float f[8]) const { f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w; }
};
template <> struct Packed<float, 1> {
    float v;
    __device__ void load(const float *p) { v = *p; }
    __device__ void get(float f[1]) const { f[0] = v; }
};
template <int W> __device__ __forceinline__ void storew(bf16 *p, const float f[W]) {
    if constexpr (W == 8) store8(p, f);
    else *p = __float2bfloat16_rn(f[0]);
}

/* Rotation of RH heads by W frequencies each (W = 8: 16-byte accesses; W = 1: scalar): the heads'
 * first halves start hd apart at src / dst, their second halves hd/2 further; only the first nh
 * of them exist. Every load comes before the first store, so dst may be src (in place). */
constexpr int RH = 4;
template <int W, typename S>
__device__ __forceinline__ void rope_heads(bf16 *dst, const S *src, int hd, int nh, const int32_t *pos, int t,
                                           const float *inv_freq, float sgn) {
    const int half = hd / 2;
    float sn[W], cs[W];
    const float p = (float)pos[t];
#pragma unroll
    for (int j = 0; j < W; j++) {
        sincosf(p * inv_freq[j], &sn[j], &cs[j]);
        sn[j] *= sgn;
    }
    Packed<S, W> ra[RH], rb[RH];
#pragma unroll
    for (int k = 0; k < RH; k++) {
        if (k >= nh) break;
        ra[k].load(src + k * hd), rb[k].load(src + k * hd + half);
    }
#pragma unroll
    for (int k = 0; k < RH; k++) {
        if (k >= nh) break;
        float fa[W], fb[W], oa[W], ob[W];
        ra[k].get(fa), rb[k].get(fb);
#pragma unroll
        for (int j = 0; j < W; j++) oa[j] = fa[j] * cs[j] - fb[j] * sn[j], ob[j] = fb[j] * cs[j] + fa[j] * sn[j];
        storew<W>(dst + k * hd, oa);
        storew<W>(dst + k * hd + half, ob);
    }
}

/* The rotation in place, 16 bytes at a time: a thread takes 8 frequencies of one token for RH heads
 * and issues every load before its first store (k_rope's head loop waits on one load per head, as
 * its stores may alias the next head's loads). Needs hd % 16 == 0 and x 16-byte aligned. */
__global__ void k_rope8(bf16 *x, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, float sgn) {
    const int ng = hd / 16, hgs = (nh + RH - 1) / RH;
    const long long n = (long long)T * hgs * ng;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
        const int t = (int)(idx / ((long long)hgs * ng)), rem = (int)(idx - (long long)t * hgs * ng);
        const int h0 = rem / ng * RH, i0 = rem % ng * 8;
        bf16 *r = x + ((size_t)t * nh + h0) * hd + i0;
        rope_heads<8>(r, r, hd, nh - h0, pos, t, inv_freq + i0, sgn);
    }
}

/* qkv_merge (backend.h): rope^-1 of dq and dk and a copy of dv into one pitched matrix. A thread
 * takes W frequencies of one token for RH heads of q or k (out of place), or W elements of v;
 * W = 8: 16-byte accesses (hd % 16 == 0, everything 16-byte aligned), else 1. The sources are
 * bf16 or the attention backward's f32 sums (QS for dq, KS for dk and dv; attn_bwd's merge). */
template <int W, typename QS, typename KS>
__global__ void k_qkv_merge(bf16 *dst, int ld, const QS *dq, const KS *dk, const KS *dv, const int32_t *pos,
                            const float *inv_freq, int T, int nq, int nkv, int hd) {
    const int ng = hd / 2 / W, gq = (nq + RH - 1) / RH, gk = (nkv + RH - 1) / RH;
    const int per = (gq + gk) * ng + nkv * hd / W; /* units per token: rotations, then v */
    const long long n = (long long)T * per;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
        const int t = (int)(idx / per), rem = (int)(idx - (long long)t * per);
        bf16 *row = dst + (size_t)t * ld;
        if (rem >= (gq + gk) * ng) { /* dv */
            const int u = (rem - (gq + gk) * ng) * W;
            Packed<KS, W> v;
            float f[W];
            v.load(dv + (size_t)t * nkv * hd + u);
            v.get(f);
            storew<W>(row + (size_t)(nq + nkv) * hd + u, f);
            continue;
        }
        const int hg = rem / ng, i0 = (rem % ng) * W;
        const int h0 = (hg < gq ? hg : hg - gq) * RH;
        bf16 *d = row + (size_t)(hg < gq ? h0 : nq + h0) * hd + i0;
        if (hg < gq) rope_heads<W>(d, dq + ((size_t)t * nq + h0) * hd + i0, hd, nq - h0, pos, t, inv_freq + i0, -1.0f);
        else rope_heads<W>(d, dk + ((size_t)t * nkv + h0) * hd + i0, hd, nkv - h0, pos, t, inv_freq + i0, -1.0f);
    }
}

template <typename QS, typename KS>
static void qkv_merge_launch(cuda_impl *c, void *dst, int ld, const void *dq, const void *dk, const void *dv,
                             const int32_t *pos, const float *inv_freq, int T, int nq, int nkv, int hd) {
    if (T <= 0) return;
    const bool vec = hd % 16 == 0 && ld % 8 == 0 && aligned16(dst) && aligned16(dq) && aligned16(dk) && aligned16(dv);
    const int w = vec ? 8 : 1;
    const size_t per = ((nq + RH - 1) / RH + (nkv + RH - 1) / RH) * (size_t)(hd / 2 / w) + (size_t)nkv * hd / w;
    const size_t n = (size_t)T * per;
    if (vec)
        k_qkv_merge<8, QS, KS><<<grid_for(c, n, 256), 256, 0, c->st>>>((bf16 *)dst, ld, (const QS *)dq, (const KS *)dk,
                                                                      (const KS *)dv, pos, inv_freq, T, nq, nkv, hd);
    else
        k_qkv_merge<1, QS, KS><<<grid_for(c, n, 256), 256, 0, c->st>>>((bf16 *)dst, ld, (const QS *)dq, (const KS *)dk,
                                                                      (const KS *)dv, pos, inv_freq, T, nq, nkv, hd);
    CK_LAUNCH(c);
}

void us_cuda_qkv_merge(cuda_impl *c, const us_qkv_merge_out *mg, const void *dq, bool dq_f32, const void *dk,
                       const void *dv, bool kv_f32, int T, int nq, int nkv, int hd) {
    if (dq_f32 && kv_f32)
        qkv_merge_launch<float, float>(c, mg->dst, mg->ld, dq, dk, dv, mg->pos, mg->inv_freq, T, nq, nkv, hd);
    else if (dq_f32)
        qkv_merge_launch<float, bf16>(c, mg->dst, mg->ld, dq, dk, dv, mg->pos, mg->inv_freq, T, nq, nkv, hd);
    else
        qkv_merge_launch<bf16, bf16>(c, mg->dst, mg->ld, dq, dk, dv, mg->pos, mg->inv_freq, T, nq, nkv, hd);
}

static void cu_qkv_merge(us_backend *be, void *dst, int ld, const void *dq, const void *dk, const void *dv,
                         const int32_t *pos, const float *inv_freq, int T, int nq, int nkv, int hd) {
    cuda_impl *c = CI(be);
    PROF(c, P_ROPE);
    const us_qkv_merge_out mg = {dst, ld, pos, inv_freq};
    us_cuda_qkv_merge(c, &mg, dq, false, dk, dv, false, T, nq, nkv, hd);
}

static void cu_rope(us_backend *be, void *x, const int32_t *pos, const float *inv_freq, int T, int nh, int hd,
                    bool inverse) {
    cuda_impl *c = CI(be);
    PROF(c, P_ROPE);
    size_t n = (size_t)T * (hd / 2);
    if (!n || !nh) return;
    if (!c->rope_v1 && hd % 16 == 0 && aligned16(x)) {
        size_t n8 = (size_t)T * ((nh + RH - 1) / RH) * (hd / 16);
        k_rope8<<<grid_for(c, n8, 256), 256, 0, c->st>>>((bf16 *)x, pos, inv_freq, T, nh, hd, inverse ? -1.0f : 1.0f);
    } else {
        k_rope<<<grid_for(c, n, 256), 256, 0, c->st>>>((bf16 *)x, pos, inv_freq, T, nh, hd, inverse ? -1.0f : 1.0f);
    }
    CK_LAUNCH(c);
}

/* ------------------------------------------------------------------------------------------ */
/* gated MLP activation with the bit-packed ReLU gate                                          */


/* Vector path (cols % 8 == 0, 16-byte aligned rows): a lane owns 8 consecutive elements; the
 * four lanes of one 32-column word exchange their bytes by shuffles and the first writes it. */
__global__ void k_glu_fwd_vec(int act, bf16 *a, int lda, bf16 *g, const bf16 *u, uint32_t *bits, int rows, int cols) {
    int W = (cols + 31) / 32, upr = W * 4;
    size_t total = (size_t)rows * upr;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t iters = (total + stride - 1) / stride; /* every lane runs the same count: shuffles stay converged */
    size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    for (size_t it = 0; it < iters; it++, id += stride) {
        size_t row = id / upr;
        int cu = (int)(id % upr), c0 = cu * 8;
        bool valid = id < total && c0 < cols;
        uint32_t byte = 0;
        if (valid) {
            size_t off = row * cols + c0;
            float gf[8], uf[8], af[8];
            load8(g + off, gf);
            load8(u + off, uf);
            if (act == US_GLU_RELU) {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    byte |= (gf[j] > 0.0f ? 1u : 0u) << j;
                    gf[j] = gf[j] > 0.0f ? gf[j] : 0.0f;
                    af[j] = gf[j] * uf[j];
                }
                store8(g + off, gf);
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) af[j] = gf[j] * sigmoidf_(gf[j]) * uf[j];
            }
            if (a) store8(a + row * lda + c0, af);
        }
        if (act == US_GLU_RELU && bits) {
            const uint32_t word = mask_word4(byte);
            if ((lane & 3) == 0 && id < total) bits[row * W + cu / 4] = word;
        }
    }
}

/* Scalar path: a warp is one 32-column word of one row (cols padded to 32); ballot packs it. */
__global__ void k_glu_fwd(int act, bf16 *a, int lda, bf16 *g, const bf16 *u, uint32_t *bits, int rows, int cols) {
    int W = (cols + 31) / 32, cp = W * 32;
    size_t total = (size_t)rows * cp;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t iters = (total + stride - 1) / stride;
    size_t id = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (size_t it = 0; it < iters; it++, id += stride) {
        size_t row = id / cp;
        int col = (int)(id % cp);
        bool valid = id < total && col < cols;
        bool pos = false;
        if (valid) {
            size_t off = row * cols + col;
            float gv = __bfloat162float(g[off]), uv = __bfloat162float(u[off]), av;
            if (act == US_GLU_RELU) {
                pos = gv > 0.0f;
                gv = pos ? gv : 0.0f;
                g[off] = __float2bfloat16_rn(gv);
                av = gv * uv;
            } else {
                av = gv * sigmoidf_(gv) * uv;
            }
            if (a) a[row * lda + col] = __float2bfloat16_rn(av);
        }
        if (act == US_GLU_RELU && bits) {
            uint32_t word = __ballot_sync(0xffffffffu, pos);
            if ((threadIdx.x & 31) == 0 && id < total) bits[row * W + col / 32] = word;
        }
    }
}

__global__ void k_glu_bwd_vec(int act, bf16 *dg, bf16 *du, const bf16 *da, const bf16 *g, const bf16 *u,
                              const uint32_t *bits, int rows, int cols) {
    int W = (cols + 31) / 32, upr = cols / 8;
    GRID_STRIDE(id, (size_t)rows * upr) {
        size_t row = id / upr;
        int c0 = (int)(id % upr) * 8;
        size_t off = row * cols + c0;
        float gf[8], uf[8], df[8], og[8], ou[8];
        load8(g + off, gf);
        load8(u + off, uf);
        load8(da + off, df);
        uint32_t byte = 0xffu;
        if (act == US_GLU_RELU) {
            if (bits) {
                byte = (bits[row * W + c0 / 32] >> (c0 & 31)) & 0xffu; /* unpacked in registers */
            } else {
                byte = 0;
#pragma unroll
                for (int j = 0; j < 8; j++) byte |= (gf[j] > 0.0f ? 1u : 0u) << j;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) glu_grad(act, df[j], gf[j], uf[j], (byte >> j) & 1u, og[j], ou[j]);
        store8(dg + off, og);
        store8(du + off, ou);
    }
}

__global__ void k_glu_bwd(int act, bf16 *dg, bf16 *du, const bf16 *da, const bf16 *g, const bf16 *u,
                          const uint32_t *bits, int rows, int cols) {
    int W = (cols + 31) / 32;
    GRID_STRIDE(id, (size_t)rows * cols) {
        size_t row = id / cols;
        int col = (int)(id % cols);
        float gv = __bfloat162float(g[id]), uv = __bfloat162float(u[id]), d = __bfloat162float(da[id]), og, ou;
        bool bit = bits ? ((bits[row * W + col / 32] >> (col & 31)) & 1u) : gv > 0.0f;
        glu_grad(act, d, gv, uv, bit, og, ou);
        dg[id] = __float2bfloat16_rn(og);
        du[id] = __float2bfloat16_rn(ou);
    }
}

/* dA [R, cols] += dd^T a, a = act(g) * u rounded to bf16 as glu_fwd writes it: one thread per
 * element of dA, down the rows (the fallback of the fused kernel in cuda_lora.cu, for shapes it
 * does not take; runs before the in-place gradient overwrites g and u) */
__global__ void k_glu_dA(int act, float *dA, const float *dd, int lddd, int R, const bf16 *g, const bf16 *u, int rows,
                         int cols) {
    GRID_STRIDE(id, (size_t)R * cols) {
        int j = (int)(id / cols), col = (int)(id % cols);
        float s = 0.0f;
        for (int r = 0; r < rows; r++) {
            size_t i = (size_t)r * cols + col;
            float a = __bfloat162float(__float2bfloat16_rn(glu_prod(act, __bfloat162float(g[i]), __bfloat162float(u[i]))));
            s += dd[(size_t)r * lddd + j] * a;
        }
        dA[id] += s;
    }
}

static void glu_fwd_plain(cuda_impl *c, int act, void *a, int lda, void *g, const void *u, uint32_t *bits, int rows,
                          int cols) {
    PROF(c, P_GLU_F);
    int W = (cols + 31) / 32;
    bool vec = cols % 8 == 0 && aligned16(g) && aligned16(u) && (!a || (aligned16(a) && lda % 8 == 0));
    if (vec) {
        size_t n = (size_t)rows * W * 4;
        k_glu_fwd_vec<<<grid_for(c, n, 256), 256, 0, c->st>>>(act, (bf16 *)a, lda, (bf16 *)g, (const bf16 *)u, bits, rows,
                                                              cols);
    } else {
        size_t n = (size_t)rows * W * 32;
        k_glu_fwd<<<grid_for(c, n, 256), 256, 0, c->st>>>(act, (bf16 *)a, lda, (bf16 *)g, (const bf16 *)u, bits, rows, cols);
    }
    CK_LAUNCH(c);
}

static bool glu_fwd_u(cuda_impl *c, int act, void *a, int lda, void *g, const void *u, uint32_t *bits, int rows, int cols,
                      float *ud, int ldud, const float *A, int R, bool fold) {
    PROF(c, P_GLU_F);
    if (c->glu_u_off || !us_cuda_glu_fwd_u_fast(c, act, (bf16 *)a, lda, (bf16 *)g, (const bf16 *)u, bits, ud, ldud, A, R,
                                                rows, cols))
        return false;
    if (fold) {
        k_lora_fold<<<grid_for(c, (size_t)rows * R, 256), 256, 0, c->st>>>((bf16 *)a + cols, lda, ud, ldud, rows, R);
        CK_LAUNCH(c);
    }
    return true;
}

static void cu_glu_fwd(us_backend *be, int act, void *a, int lda, void *g, const void *u, uint32_t *bits, int rows,
                       int cols, float *ud, int ldud, const float *A, int R, bool fold) {
    cuda_impl *c = CI(be);
    if (rows <= 0 || cols <= 0) return;
    if (act != US_GLU_RELU && !a) return;
    if (ud && a && glu_fwd_u(c, act, a, lda, g, u, bits, rows, cols, ud, ldud, A, R, fold)) return;
    glu_fwd_plain(c, act, a, lda, g, u, bits, rows, cols);
    if (ud && a) cu_lora_down(be, ud, ldud, a, lda, A, rows, cols, R, fold);
}

static void cu_glu_bwd(us_backend *be, int act, void *dg, void *du, float *dA, const float *dd, int lddd, int R,
                       const void *da, const void *g, const void *u, const uint32_t *bits, int rows, int cols) {
    cuda_impl *c = CI(be);
    PROF(c, P_GLU_B);
    if (rows <= 0 || cols <= 0) return;
    if (dA && R > 0) {
        if (us_cuda_glu_bwd_dA_fast(c, act, (bf16 *)dg, (bf16 *)du, dA, dd, lddd, R, (const bf16 *)da, (const bf16 *)g,
                                    (const bf16 *)u, bits, rows, cols))
            return;
        k_glu_dA<<<grid_for(c, (size_t)R * cols, 256), 256, 0, c->st>>>(act, dA, dd, lddd, R, (const bf16 *)g,
                                                                         (const bf16 *)u, rows, cols);
        CK_LAUNCH(c);
    }
    bool vec = cols % 8 == 0 && aligned16(g) && aligned16(u) && aligned16(da) && aligned16(dg) && aligned16(du);
    if (vec)
        k_glu_bwd_vec<<<grid_for(c, (size_t)rows * cols / 8, 256), 256, 0, c->st>>>(
            act, (bf16 *)dg, (bf16 *)du, (const bf16 *)da, (const bf16 *)g, (const bf16 *)u, bits, rows, cols);
    else
        k_glu_bwd<<<grid_for(c, (size_t)rows * cols, 256), 256, 0, c->st>>>(
            act, (bf16 *)dg, (bf16 *)du, (const bf16 *)da, (const bf16 *)g, (const bf16 *)u, bits, rows, cols);
    CK_LAUNCH(c);
}

/* ------------------------------------------------------------------------------------------ */
/* residual add                                                                                */

__global__ void k_add_vec(bf16 *y, const bf16 *x, size_t n8) {
    GRID_STRIDE(i, n8) {
        float a[8], b[8];
        load8(y + i * 8, a);
        load8(x + i * 8, b);
#pragma unroll
        for (int j = 0; j < 8; j++) a[j] += b[j];
        store8(y + i * 8, a);
    }
}
__global__ void k_add(bf16 *y, const bf16 *x, size_t n) {
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + __bfloat162float(x[i]));
}

static void cu_add(us_backend *be, void *y, const void *x, size_t n) {
    cuda_impl *c = CI(be);
    PROF(c, P_ADD);
    if (!n) return;
    if (n % 8 == 0 && aligned16(x) && aligned16(y))
        k_add_vec<<<grid_for(c, n / 8, 256), 256, 0, c->st>>>((bf16 *)y, (const bf16 *)x, n / 8);
    else
        k_add<<<grid_for(c, n, 256), 256, 0, c->st>>>((bf16 *)y, (const bf16 *)x, n);
    CK_LAUNCH(c);
}

/* ------------------------------------------------------------------------------------------ */
/* cross-entropy over a chunk of rows: one block per row, online max/sum, then dlogits in place */

#define XENT_THREADS 512

__device__ __forceinline__ void ms_merge(float &m, float &s, float m2, float s2) {
    float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return;
    s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
    m = mn;
}

/* the (max, sum) pairs of a block of NTH threads merged (by warp shuffles, then over the warps
 * through sm / ss); the result is thread 0's */
template <int NTH>
__device__ __forceinline__ float2 block_ms(float m, float s, float *sm, float *ss) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        ms_merge(m, s, m2, s2);
    }
    if (lane == 0) sm[wid] = m, ss[wid] = s;
    __syncthreads();
    float M = sm[0], S = ss[0];
    if (threadIdx.x == 0)
        for (int i = 1; i < NTH / 32; i++) ms_merge(M, S, sm[i], ss[i]);
    return make_float2(M, S);
}

template <bool VEC>
__global__ void __launch_bounds__(XENT_THREADS) k_xent(bf16 *logits, const int32_t *labels, float *loss_sum,
                                                       float grad_scale, int vocab) {
    __shared__ float sm[XENT_THREADS / 32], ss[XENT_THREADS / 32];
    __shared__ float s_lse;
    int row = blockIdx.x, lab = labels[row];
    bf16 *L = logits + (size_t)row * vocab;
    int tid = threadIdx.x;
    if (lab < 0 || lab >= vocab) {
        if (VEC) {
            for (int i = tid; i < vocab / 8; i += XENT_THREADS) *reinterpret_cast<uint4 *>(L + i * 8) = make_uint4(0, 0, 0, 0);
        } else {
            for (int i = tid; i < vocab; i += XENT_THREADS) L[i] = __float2bfloat16_rn(0.0f);
        }
        return;
    }
    float m = -INFINITY, s = 0;
    if (VEC) {
        for (int i = tid; i < vocab / 8; i += XENT_THREADS) {
            float f[8];
            load8(L + i * 8, f);
            float bm = f[0];
#pragma unroll
            for (int j = 1; j < 8; j++) bm = fmaxf(bm, f[j]);
            float bs = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) bs += __expf(f[j] - bm);
            ms_merge(m, s, bm, bs);
        }
    } else {
        for (int i = tid; i < vocab; i += XENT_THREADS) ms_merge(m, s, __bfloat162float(L[i]), 1.0f);
    }
    const float2 ms = block_ms<XENT_THREADS>(m, s, sm, ss);
    if (tid == 0) {
        float lse = ms.x + logf(ms.y);
        s_lse = lse;
        atomicAdd(loss_sum, lse - __bfloat162float(L[lab]));
    }
    __syncthreads();
    float lse = s_lse;
    if (VEC) {
        for (int i = tid; i < vocab / 8; i += XENT_THREADS) {
            float f[8];
            load8(L + i * 8, f);
#pragma unroll
            for (int j = 0; j < 8; j++) f[j] = __expf(f[j] - lse) * grad_scale - (i * 8 + j == lab ? grad_scale : 0.0f);
            store8(L + i * 8, f);
        }
    } else {
        for (int i = tid; i < vocab; i += XENT_THREADS)
            L[i] = __float2bfloat16_rn(__expf(__bfloat162float(L[i]) - lse) * grad_scale - (i == lab ? grad_scale : 0.0f));
    }
}

/* Version 2: the row read once. A cluster of CL CTAs of NTH threads takes a row, each thread U
 * 16-byte pieces of it held in registers (CL * NTH * U * 8 elements a cluster: vocab 128,256 takes
 * 8 CTAs of 256 threads with U = 8, four resident per SM, so that one CTA's loads overlap
 * another's arithmetic); the (max, sum) pairs meet in shared memory, then across the cluster
 * through distributed shared memory, and dlogits leave from the registers. k_xent reads each row
 * twice: its rows (256 KB at vocab 128,256, hundreds in flight) do not stay in L2 from one pass
 * to the next. */
template <int CL, int NTH, int U>
__global__ void __launch_bounds__(NTH, 1024 / NTH) k_xent_cl(bf16 *logits, const int32_t *labels, float *loss_sum,
                                                              float grad_scale, int vocab) {
    cg::cluster_group cl = cg::this_cluster();
    __shared__ float sm[NTH / 32], ss[NTH / 32];
    __shared__ float2 part; /* this CTA's (max, sum), read by the whole cluster */
    __shared__ float s_lse;
    const int rank = (int)cl.block_rank(), row = blockIdx.x / CL, lab = labels[row];
    const int tid = threadIdx.x, n8 = vocab / 8;
    bf16 *L = logits + (size_t)row * vocab;
    auto piece = [&](int k) { return (k * CL + rank) * NTH + tid; }; /* coalesced across the cluster */
    if (lab < 0 || lab >= vocab) { /* the whole cluster takes this branch: no cluster barrier */
#pragma unroll
        for (int k = 0; k < U; k++)
            if (piece(k) < n8) *reinterpret_cast<uint4 *>(L + (size_t)piece(k) * 8) = make_uint4(0, 0, 0, 0);
        return;
    }
    uint4 v[U];
#pragma unroll
    for (int k = 0; k < U; k++)
        v[k] = piece(k) < n8 ? *reinterpret_cast<const uint4 *>(L + (size_t)piece(k) * 8) : make_uint4(0, 0, 0, 0);
    const float xlab = rank == 0 && tid == 0 ? __bfloat162float(L[lab]) : 0.0f; /* read before any CTA writes */
    auto each = [&](auto fn) { /* fn(8 values, piece index) over this thread's pieces inside the row */
#pragma unroll
        for (int k = 0; k < U; k++) {
            if (piece(k) >= n8) continue;
            float f[8];
            unpack8(v[k], f);
            fn(f, piece(k));
        }
    };
    float m = -INFINITY, s = 0;
    each([&](float *f, int) {
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, f[j]);
    });
    each([&](float *f, int) {
#pragma unroll
        for (int j = 0; j < 8; j++) s += __expf(f[j] - m);
    });
    const float2 ms = block_ms<NTH>(m, s, sm, ss);
    if (tid == 0) part = ms;
    cl.sync(); /* every CTA's part is written */
    if (tid == 0) {
        float M = -INFINITY, S = 0;
        for (int r = 0; r < CL; r++) {
            const float2 p = *cl.map_shared_rank(&part, r);
            ms_merge(M, S, p.x, p.y);
        }
        s_lse = M + logf(S);
        if (rank == 0) atomicAdd(loss_sum, s_lse - xlab);
    }
    cl.sync(); /* the parts are read (a CTA may leave); s_lse is set */
    const float lse = s_lse;
    each([&](float *f, int i) {
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = __expf(f[j] - lse) * grad_scale - (i * 8 + j == lab ? grad_scale : 0.0f);
        store8(L + (size_t)i * 8, f);
    });
}

/* CTAs of nth threads holding u pieces each a cluster of k_xent_cl needs for a row of vocab
 * elements: a power of two up to 8, 0 when more */
static int xent_cluster_size(int nth, int u, int vocab) {
    for (int cl = 1; cl <= 8; cl *= 2)
        if ((size_t)cl * nth * u * 8 >= (size_t)vocab) return cl;
    return 0;
}

/* k_xent_cl for rows of vocab elements (a multiple of 8, 16-byte aligned rows): the smallest
 * cluster of 256-thread CTAs with 8 pieces a thread that holds a row; up to 163,840 elements
 * (Qwen's 151,936) 8 CTAs of 256 threads with 10 pieces, up to 262,144 8 CTAs of 512 threads.
 * Measured (`build/unswag_gpu_bench 20 mem`, 1024 rows, H100, 2026-11-23): at 151,936 0.262 ms
 * against 0.357 with 8 CTAs of 512 threads and 0.393 with 16 pieces; at 262,144 512-thread CTAs
 * 0.488 ms against 0.526 with 16 pieces; at 128,256 10 pieces 0.234 against 0.219 with 8.
 * false: not taken */
static bool xent_cluster(cuda_impl *c, bf16 *L, const int32_t *labels, float *loss_sum, float grad_scale, int rows,
                         int vocab) {
    if (!c->clusters || c->xent_v1 || vocab % 8 || !aligned16(L)) return false;
    int nth = 256, u = 8, cl = xent_cluster_size(256, 8, vocab);
    if (!cl && xent_cluster_size(256, 10, vocab) == 8) u = 10, cl = 8;
    if (!cl && xent_cluster_size(512, 8, vocab) == 8) nth = 512, cl = 8;
    if (!cl) return false;
    ClusterLaunch l(dim3((unsigned)rows * cl), nth, 0, c->st, cl);
#define XC_GO(C, N, U) cudaLaunchKernelEx(&l.lc, k_xent_cl<C, N, U>, L, labels, loss_sum, grad_scale, vocab)
    cudaError_t e;
    if (nth == 512) e = XC_GO(8, 512, 8);
    else if (u == 10) e = XC_GO(8, 256, 10);
    else e = cl == 1 ? XC_GO(1, 256, 8) : cl == 2 ? XC_GO(2, 256, 8) : cl == 4 ? XC_GO(4, 256, 8) : XC_GO(8, 256, 8);
#undef XC_GO
    CK(c, e);
    return true;
}

static void cu_xent_fwd_bwd(us_backend *be, void *logits, const int32_t *labels, float *loss_sum, float grad_scale,
                            int rows, int vocab) {
    cuda_impl *c = CI(be);
    PROF(c, P_XENT);
    if (rows <= 0) return;
    if (xent_cluster(c, (bf16 *)logits, labels, loss_sum, grad_scale, rows, vocab)) return;
    if (vocab % 8 == 0 && aligned16(logits))
        k_xent<true><<<rows, XENT_THREADS, 0, c->st>>>((bf16 *)logits, labels, loss_sum, grad_scale, vocab);
    else
        k_xent<false><<<rows, XENT_THREADS, 0, c->st>>>((bf16 *)logits, labels, loss_sum, grad_scale, vocab);
    CK_LAUNCH(c);
}

/* ------------------------------------------------------------------------------------------ */
/* optimizer and reductions                                                                    */

__global__ void k_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                        float eps, float wd, float bc1, float bc2) {
    float step = lr / bc1, sq = sqrtf(bc2), decay = 1.0f - lr * wd;
    GRID_STRIDE(i, n) {
        float gi = g[i], pi = p[i] * decay;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step * mi / (sqrtf(vi) / sq + eps);
    }
}

static void cu_adamw(us_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                     float b2, float eps, float wd, float bc1, float bc2) {
    cuda_impl *c = CI(be);
    PROF(c, P_ADAMW);
    if (!n) return;
    k_adamw<<<grid_for(c, n, 256), 256, 0, c->st>>>(p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);
    CK_LAUNCH(c);
}

__global__ void k_sumsq(double *out, const float *x, size_t n) {
    __shared__ double part[32];
    double s = 0;
    GRID_STRIDE(i, n) s += (double)x[i] * x[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += part[i];
        atomicAdd(out, t);
    }
}

__global__ void k_nonfinite(int *flag, const float *x, size_t n) {
    int bad = 0;
    GRID_STRIDE(i, n) bad |= !isfinite(x[i]);
    if (__any_sync(0xffffffffu, bad) && (threadIdx.x & 31) == 0) atomicOr(flag, 1);
}

__global__ void k_scale(float *x, size_t n, float s) { GRID_STRIDE(i, n) x[i] *= s; }

static double cu_sumsq(us_backend *be, const float *x, size_t n) {
    cuda_impl *c = CI(be);
    PROF(c, P_REDUCE);
    double *d = (double *)us_cuda_scratch(c, SCR_RED, 8);
    if (!d || c->failed) return NAN;
    double h = 0;
    CK(c, cudaMemsetAsync(d, 0, 8, c->st));
    if (n) {
        k_sumsq<<<grid_for(c, n, 256), 256, 0, c->st>>>(d, x, n);
        CK_LAUNCH(c);
    }
    CK(c, cudaMemcpyAsync(&h, d, 8, cudaMemcpyDeviceToHost, c->st));
    CK(c, cudaStreamSynchronize(c->st));
    return c->failed ? NAN : h;
}

static void cu_scale(us_backend *be, float *x, size_t n, float s) {
    cuda_impl *c = CI(be);
    if (!n) return;
    k_scale<<<grid_for(c, n, 256), 256, 0, c->st>>>(x, n, s);
    CK_LAUNCH(c);
}

static bool cu_nonfinite(us_backend *be, const float *x, size_t n) {
    cuda_impl *c = CI(be);
    PROF(c, P_REDUCE);
    int *d = (int *)us_cuda_scratch(c, SCR_RED, 8);
    if (!d || c->failed) return true;
    int h = 0;
    CK(c, cudaMemsetAsync(d, 0, 4, c->st));
    if (n) {
        k_nonfinite<<<grid_for(c, n, 256), 256, 0, c->st>>>(d, x, n);
        CK_LAUNCH(c);
    }
    CK(c, cudaMemcpyAsync(&h, d, 4, cudaMemcpyDeviceToHost, c->st));
    CK(c, cudaStreamSynchronize(c->st));
    return h != 0 || c->failed;
}

/* ------------------------------------------------------------------------------------------ */
/* CUDA graph of a training step (backend.h: graph_begin / graph_end / graph_launch)            */

/* Replays the step captured under key; false when there is none (the caller issues the ops). */
static bool cu_graph_launch(us_backend *be, uint64_t key) {
    cuda_impl *c = CI(be);
    if (!c->gexec || c->gkey != key || c->failed) return false;
    CK(c, cudaGraphLaunch(c->gexec, c->st));
    c->graph_replays++;
    return true;
}

/* Starts capturing the ops issued next instead of running them; false: not capturing (graphs off,
 * profiling on, or the stream refused). */
static bool cu_graph_begin(us_backend *be) {
    cuda_impl *c = CI(be);
    if (c->graph_off || c->prof || c->failed) return false;
    graph_drop(c);
    if (cudaStreamBeginCapture(c->st, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
        (void)cudaGetLastError();
        c->graph_off = 1;
        return false;
    }
    c->capturing = 1, c->capture_bad = 0;
    return true;
}

/* Ends the capture, instantiates it under key and launches it. false: the capture failed — nothing
 * ran, graphs stay off from here, and the caller issues the step's ops again. */
static bool cu_graph_end(us_backend *be, uint64_t key) {
    cuda_impl *c = CI(be);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->st, &g);
    c->capturing = 0;
    cudaGraphExec_t ex = NULL;
    if (e == cudaSuccess && g && !c->capture_bad) e = cudaGraphInstantiate(&ex, g, 0);
    size_t nodes = 0;
    if (g) cudaGraphGetNodes(g, NULL, &nodes), cudaGraphDestroy(g);
    if (e != cudaSuccess || !ex || c->capture_bad) {
        (void)cudaGetLastError();
        if (ex) cudaGraphExecDestroy(ex);
        c->graph_off = 1;
        if (c->graph_log) fprintf(stderr, "unswag: cuda graph capture failed (%s); steps run op by op\n",
                                                 c->capture_bad ? "an op could not be captured" : cudaGetErrorString(e));
        return false;
    }
    c->gexec = ex, c->gkey = key, c->graph_nodes = (int)nodes;
    CK(c, cudaGraphLaunch(ex, c->st));
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* creation                                                                                    */

static void cu_destroy(us_backend *be) {
    if (!be) return;
    cuda_impl *c = CI(be);
    if (c) {
        cudaStreamSynchronize(c->st);
        prof_report(c);
        if (c->graph_log)
            fprintf(stderr, "unswag: cuda graph: %d nodes, replayed %ld times\n", c->graph_nodes, c->graph_replays);
        if (c->gexec) cudaGraphExecDestroy(c->gexec);
        for (int i = 0; i < c->n_plans; i++) {
            cublasLtMatrixLayoutDestroy(c->plans[i].la);
            cublasLtMatrixLayoutDestroy(c->plans[i].lb);
            cublasLtMatrixLayoutDestroy(c->plans[i].lc);
            cublasLtMatmulDescDestroy(c->plans[i].desc);
        }
        free(c->plans);
        for (int i = 0; i < SCR_COUNT; i++) scratch_release(c, i);
        if (c->ws) dev_free(c, c->ws);
        for (size_t i = 0; i < c->n_allocs; i++) cudaFree(c->allocs[i].p);
        free(c->allocs);
        for (size_t i = 0; i < c->n_regs; i++) cudaHostUnregister(c->regs[i].p), munmap(c->regs[i].p, c->regs[i].bytes);
        free(c->regs);
        for (int i = 0; i < 2; i++) {
            if (c->pin[i]) cudaFreeHost(c->pin[i]);
            if (c->pin_ev[i]) cudaEventDestroy(c->pin_ev[i]);
        }
        if (c->cst) {
            cudaStreamSynchronize(c->cst);
            cudaStreamDestroy(c->cst);
        }
        if (c->ev_compute) cudaEventDestroy(c->ev_compute);
        for (int i = 0; i < COPY_RING; i++)
            if (c->ev_ring[i]) cudaEventDestroy(c->ev_ring[i]);
        if (c->lt) cublasLtDestroy(c->lt);
        if (c->st) cudaStreamDestroy(c->st);
        free(c);
    }
    free(be);
}

static int env_int(const char *name, int dflt) {
    const char *e = getenv(name);
    return e && *e ? atoi(e) : dflt;
}

extern "C" us_status us_backend_cuda_create(us_backend **out, us_err *e) {
    *out = NULL;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n <= 0)
        return us_fail(e, US_EDEVICE, "--device cuda: no CUDA device found (%s)",
                       err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    us_backend *be = (us_backend *)calloc(1, sizeof *be);
    cuda_impl *c = (cuda_impl *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return us_fail(e, US_ENOMEM, "out of memory creating the cuda backend");
    }
    be->impl = c;
    const char *what = NULL;
    cudaDeviceProp prop;
    if ((err = cudaSetDevice(0)) != cudaSuccess) what = "cudaSetDevice";
    else if ((err = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) what = "cudaGetDeviceProperties";
    else if ((err = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking)) != cudaSuccess) what = "cudaStreamCreate";
    else if ((err = cudaHostAlloc(&c->pin[0], PIN_BYTES, cudaHostAllocDefault)) != cudaSuccess) what = "cudaHostAlloc";
    else if ((err = cudaHostAlloc(&c->pin[1], PIN_BYTES, cudaHostAllocDefault)) != cudaSuccess) what = "cudaHostAlloc";
    else if ((err = cudaEventCreateWithFlags(&c->pin_ev[0], cudaEventDisableTiming)) != cudaSuccess) what = "cudaEventCreate";
    else if ((err = cudaEventCreateWithFlags(&c->pin_ev[1], cudaEventDisableTiming)) != cudaSuccess) what = "cudaEventCreate";
    else if ((err = cudaStreamCreateWithFlags(&c->cst, cudaStreamNonBlocking)) != cudaSuccess) what = "cudaStreamCreate";
    else if ((err = cudaEventCreateWithFlags(&c->ev_compute, cudaEventDisableTiming)) != cudaSuccess) what = "cudaEventCreate";
    for (int i = 0; i < COPY_RING && !what; i++)
        if ((err = cudaEventCreateWithFlags(&c->ev_ring[i], cudaEventDisableTiming)) != cudaSuccess) what = "cudaEventCreate";
    if (what) {
        us_status st = us_fail(e, US_EDEVICE, "--device cuda: %s: %s", what, cudaGetErrorString(err));
        cu_destroy(be);
        return st;
    }
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
        cu_destroy(be);
        return us_fail(e, US_EDEVICE, "--device cuda: cublasLtCreate failed");
    }
    prof_init(c);
    c->pin_bytes = PIN_BYTES;
    c->sm_count = prop.multiProcessorCount;
    c->ws_bytes = WS_BYTES;
    c->attn_budget = (size_t)64 << 20;
    {
        const char *ab = getenv("US_CUDA_ATTN_ACC_BYTES");
        if (ab && *ab) c->attn_budget = (size_t)strtoull(ab, NULL, 10);
        /* the all-heads kernel's accumulators: 8x the budget, and for long sequences up to an
         * eighth of the card (the 8B shape to ~420k tokens on 80 GB) unless a test set the budget */
        c->attn_wg_bytes = 8 * c->attn_budget;
        if (!(ab && *ab)) c->attn_wg_bytes = US_MAX(c->attn_wg_bytes, (size_t)prop.totalGlobalMem / 8);
        const char *bn = getenv("US_CUDA_ATTN_BN");
        c->attn_bn = bn && atoi(bn) == 64 ? 64 : 128;
        const char *wg = getenv("US_CUDA_ATTN_WG");
        c->attn_wg = prop.major == 9 && prop.minor == 0 && !(wg && !strcmp(wg, "0"));
        c->attn_wg_dq = env_int("US_CUDA_WG_DQ", 0);
        const char *gr = getenv("US_CUDA_GRAPH");
        c->graph_off = gr && !strcmp(gr, "0");
        const char *pin = getenv("US_CUDA_PIN");
        c->pin_alloc_only = pin && !strcmp(pin, "alloc");
        c->graph_log = env_int("US_CUDA_GRAPH_LOG", 0) != 0;
        c->gemm_tune_off = env_int("US_CUDA_TUNE", 1) == 0;
        c->rms_wpr = env_int("US_CUDA_RMS_WPR", 0);
        c->rope_v1 = env_int("US_CUDA_ROPE", 0) == 1;
        c->xent_v1 = env_int("US_CUDA_XENT", 2) == 1;
        c->glu_u_off = env_int("US_CUDA_GLU_U", 1) == 0;
        c->clusters = prop.major >= 9;
        c->lora_down_v1 = env_int("US_CUDA_LORA_DOWN", 2) == 1;
        c->lora_colred_v1 = env_int("US_CUDA_LORA_COLRED", 2) == 1;
        c->lora_down_ctas = env_int("US_CUDA_LORA_DOWN_CTAS", 0);
    }
    c->ws = dev_alloc(c, WS_BYTES);
    if (!c->ws) {
        cu_destroy(be);
        return us_fail(e, US_ENOMEM, "--device cuda: out of device memory for the cuBLASLt workspace");
    }
    be->name = "cuda";
    be->act_bytes = 2;
    be->weight_bytes = 2;
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->zero = cu_zero;
    be->copy = cu_copy;
    be->sync = cu_sync;
    be->mem_info = cu_mem_info;
    be->weight_upload = cu_weight_upload;
    be->weight_fill_normal = cu_weight_fill_normal;
    be->weight_from_f32 = cu_weight_from_f32;
    be->weight_to_f32 = cu_weight_to_f32;
    be->weight_put = cu_weight_put;
    be->weight_put_list = cu_weight_put_list;
    be->act_from_f32 = cu_act_from_f32;
    be->act_to_f32 = cu_act_to_f32;
    be->embed_fwd = cu_embed_fwd;
    be->embed_bwd = cu_embed_bwd;
    be->rmsnorm_fwd = cu_rmsnorm_fwd;
    be->rmsnorm_bwd = cu_rmsnorm_bwd;
    be->linear_fwd = cu_linear_fwd;
    be->linear_bwd_x = cu_linear_bwd_x;
    be->linear_bwd_w = cu_linear_bwd_w;
    be->lora_down = cu_lora_down;
    be->lora_up = cu_lora_up;
    be->lora_bwd_dy = cu_lora_bwd_dy;
    be->lora_bwd_x = cu_lora_bwd_x;
    be->rope = cu_rope;
    be->qkv_merge = cu_qkv_merge;
    be->attn_fwd = us_cuda_attn_fwd;
    /* US_CUDA_ATTN_CACHED=0: decode.c's host attention instead, to compare */
    be->attn_cached = env_int("US_CUDA_ATTN_CACHED", 1) ? us_cuda_attn_cached : NULL;
    be->attn_bwd = us_cuda_attn_bwd;
    be->glu_fwd = cu_glu_fwd;
    be->glu_bwd = cu_glu_bwd;
    be->add = cu_add;
    be->xent_fwd_bwd = cu_xent_fwd_bwd;
    be->adamw = cu_adamw;
    be->sumsq = cu_sumsq;
    be->scale = cu_scale;
    be->nonfinite = cu_nonfinite;
    be->destroy = cu_destroy;
    be->host_alloc = cu_host_alloc;
    be->host_free = cu_host_free;
    be->offload = cu_offload;
    be->prefetch = cu_prefetch;
    be->copies_wait = cu_copies_wait;
    be->copy_wait = cu_copy_wait;
    be->graph_begin = cu_graph_begin;
    be->graph_end = cu_graph_end;
    be->graph_launch = cu_graph_launch;
    be->scratch_bytes = cu_scratch_bytes;
    *out = be;
    return US_OK;
}
