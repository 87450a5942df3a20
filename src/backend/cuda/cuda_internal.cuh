/* cuda_internal.cuh — what the CUDA backend's translation units share: the backend state, error
 * checking, scratch buffers and the small device helpers (bf16 vectors, warp reductions). */
#ifndef US_CUDA_INTERNAL_CUH
#define US_CUDA_INTERNAL_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

extern "C" {
#include "backend/backend.h"
}

typedef __nv_bfloat16 bf16;

/* Internal scratch slots (grow-only device buffers, counted in mem_info like any allocation). */
enum {
    SCR_STAGE = 0,  /* weight_upload: raw host data before conversion */
    SCR_LORA_A,     /* bf16 copy of LoRA A */
    SCR_LORA_B,     /* bf16 copy of LoRA B */
    SCR_LORA_U,     /* bf16 copy of u / du */
    SCR_LORA_TMP,   /* u / du gathered from their column block (f32) */
    SCR_ATTN_DQ,    /* attention backward: f32 dq accumulator */
    SCR_ATTN_D,     /* attention backward: rowsum(dO * O) */
    SCR_ATTN_SEG,   /* attention backward: per query block min seg_start */
    SCR_ATTN_DKV,   /* attention backward (GQA): f32 dK, dV accumulators */
    SCR_RED,        /* reductions: one double / int */
    SCR_NORM_ROWS,  /* lora_bwd_x given an RMSNorm's input, on the paths without scales: the normed rows */
    SCR_BIAS,       /* linear_fwd: bf16 copy of the bias for cuBLASLt's bias epilogue (BIAS_MAX elements) */
    SCR_COUNT
};

struct gemm_plan;

/* Per-op GPU time (US_CUDA_PROFILE=1): an event pair around each op, summed per op kind and
 * printed to stderr when the backend is destroyed. Off by default (no events, no cost). */
enum {
    P_EMBED, P_RMSNORM_F, P_RMSNORM_B, P_LINEAR_F, P_LINEAR_BX, P_LINEAR_BW, P_LORA_F, P_LORA_B, P_ROPE, P_ATTN_F,
    P_ATTN_B, P_GLU_F, P_GLU_B, P_ADD, P_XENT, P_ADAMW, P_REDUCE, P_COPY, P_CONVERT, P_COUNT
};
struct prof_state;

#define COPY_RING 256 /* copy tickets whose events are kept apart (backend.h copy_wait) */

struct pin_reg { /* a registered pinned host buffer */
    void *p;
    size_t bytes;
};

typedef struct cuda_impl {
    int device;
    cudaStream_t st;
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    /* allocation tracking */
    size_t in_use, peak;
    struct alloc_rec { void *p; size_t n; } *allocs;
    size_t n_allocs, cap_allocs;
    /* pinned staging for uploads: two buffers, each guarded by an event */
    void *pin[2];
    size_t pin_bytes;
    struct pin_reg *regs;            /* host_alloc's registered buffers (cu_host_alloc) */
    size_t n_regs;
    bool pin_alloc_only;             /* US_CUDA_PIN=alloc: cudaHostAlloc for every host buffer */
    cudaEvent_t pin_ev[2];
    int pin_next;
    void *scr[SCR_COUNT];
    size_t scr_bytes[SCR_COUNT];
    struct gemm_plan *plans;
    int n_plans, cap_plans;
    int sm_count;
    bool attn_wg;                    /* the wgmma attention kernels run: compute capability 9.0, US_CUDA_ATTN_WG != 0 */
    int failed; /* a sticky CUDA error was reported */
    struct prof_state *prof;
    /* host offload: a copy stream ordered after the compute stream through events */
    cudaStream_t cst;
    cudaEvent_t ev_compute;          /* the compute stream's last record, for the copies to wait on */
    int copies_pending;              /* a copy was issued since the last copies_wait */
    cudaEvent_t ev_ring[COPY_RING];  /* copy ticket t recorded ev_ring[t % COPY_RING] after it */
    int copy_seq;                    /* tickets handed out so far */
    size_t attn_budget;              /* bytes for the attention backward's f32 accumulators */
    size_t attn_wg_bytes;            /* the same for the Hopper kernel, which takes every head at once */
    int attn_wg_dq;                  /* US_CUDA_WG_DQ: how that kernel sums dQ tiles (0: by head dim) */
    int attn_bn;                     /* keys per CTA of the attention backward, head_dim 64/128 */
    /* CUDA graph of one training step (graph_begin/graph_end/graph_launch, backend.h) */
    cudaGraphExec_t gexec;           /* the step captured last, or NULL */
    uint64_t gkey;                   /* the caller's key for it */
    int capturing, capture_bad;      /* inside a capture; something there could not be captured */
    int graph_off;                   /* US_CUDA_GRAPH=0, or a capture failed once */
    long graph_replays;
    int graph_nodes;
    bool graph_log;                  /* US_CUDA_GRAPH_LOG: say what the graphs did */
    bool gemm_tune_off;              /* US_CUDA_TUNE=0: cuBLASLt's heuristic choice, untimed (gemm_tune) */
    /* earlier kernel versions and their knobs, for comparison (docs/GPU.md, "Knobs") */
    int rms_wpr;                     /* US_CUDA_RMS_WPR: warps per RMSNorm row (0: by width) */
    bool rope_v1;                    /* US_CUDA_ROPE=1 */
    bool xent_v1;                    /* US_CUDA_XENT=1: cross-entropy reading each row twice (k_xent) */
    bool clusters;                   /* thread-block clusters (compute capability 9.0 and later) */
    bool glu_u_off;                  /* US_CUDA_GLU_U=0: down's lora_down as its own pass after glu_fwd */
    bool lora_down_v1, lora_colred_v1; /* US_CUDA_LORA_DOWN=1, US_CUDA_LORA_COLRED=1 */
    int lora_down_ctas;              /* US_CUDA_LORA_DOWN_CTAS (0: one per SM) */
} cuda_impl;

static inline cuda_impl *CI(us_backend *be) { return (cuda_impl *)be->impl; }

/* Reports a CUDA error once (sticky); ops have no error channel, so reductions return a non-finite
 * value afterwards and the trainer stops on it. */
void us_cuda_report(cuda_impl *c, const char *what, const char *err, const char *file, int line);

#define CK(c, call)                                                                   \
    do {                                                                              \
        cudaError_t err_ = (call);                                                    \
        if (err_ != cudaSuccess) us_cuda_report((c), #call, cudaGetErrorString(err_), __FILE__, __LINE__); \
    } while (0)
#define CK_LAUNCH(c) CK(c, cudaGetLastError())

int us_prof_begin(cuda_impl *c);
void us_prof_end(cuda_impl *c, int slot, int op);
struct ProfScope {
    cuda_impl *c;
    int slot, op;
    ProfScope(cuda_impl *c_, int op_) : c(c_), slot(c_->prof ? us_prof_begin(c_) : -1), op(op_) {}
    ~ProfScope() {
        if (slot >= 0) us_prof_end(c, slot, op);
    }
};
#define PROF(c, op) ProfScope prof_scope_((c), (op))

/* A scratch buffer of at least `bytes` for slot `slot`; NULL (and reported) on failure. */
void *us_cuda_scratch(cuda_impl *c, int slot, size_t bytes);

static inline unsigned ceil_div_u(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

/* ---- device helpers ---- */
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* 8 bf16 <-> 8 floats through one 16-byte access. */
__device__ __forceinline__ void unpack8(const uint4 &u, float f[8]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
__device__ __forceinline__ void load8(const bf16 *p, float f[8]) { unpack8(*reinterpret_cast<const uint4 *>(p), f); }
__device__ __forceinline__ void store8(bf16 *p, const float f[8]) {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}

/* The gated MLP activation, elementwise (glu_fwd / glu_bwd; the fused dA kernel of cuda_lora.cu) */
__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ void glu_grad(int act, float d, float gv, float uv, bool bit, float &dg, float &du) {
    if (act == US_GLU_RELU) {
        dg = bit ? d * uv : 0.0f;
        du = d * (bit ? gv : 0.0f); /* gv is relu(g) (or g: same where the bit is set) */
    } else {
        float sg = sigmoidf_(gv);
        dg = d * uv * sg * (1.0f + gv * (1.0f - sg));
        du = d * gv * sg;
    }
}

/* ReLU's 32-bit mask word from the 8-bit masks of lanes 4k..4k+3 (8 consecutive columns each):
 * every lane of the warp must call it; the word is right in the first lane of each four */
__device__ __forceinline__ uint32_t mask_word4(uint32_t byte) {
    const int base = (threadIdx.x & 31) & ~3;
    const uint32_t b0 = __shfl_sync(0xffffffffu, byte, base), b1 = __shfl_sync(0xffffffffu, byte, base + 1);
    const uint32_t b2 = __shfl_sync(0xffffffffu, byte, base + 2), b3 = __shfl_sync(0xffffffffu, byte, base + 3);
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
}

/* the product as glu_fwd forms it (g is relu(g) already for ReLU) */
__device__ __forceinline__ float glu_prod(int act, float gv, float uv) {
    return act == US_GLU_RELU ? gv * uv : gv * sigmoidf_(gv) * uv;
}

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* incremental decoding (cuda_decode.cu): backend.h attn_cached */
void us_cuda_attn_cached(us_backend *be, void *o, const void *q, const void *kc, const void *vc, int T, int start,
                         const us_attn_shape *sh);

/* LoRA (cuda_lora.cu): false when the shape, rank or alignment is not covered (the caller then
 * takes the cuBLASLt path) */
bool us_cuda_lora_down_fast(cuda_impl *c, float *u, int ldu, const void *x, int ldx, const float *A, int T, int in,
                            int R, bool fold, bool *folded);
bool us_cuda_lora_up_fast(cuda_impl *c, void *y, const void *res, const float *u, int ldu, const float *B, float s,
                          int T, int out, int r);
/* fold (may be NULL): where du's bf16 copy goes (rows ldy apart); *folded: whether the kernel
 * wrote it (else the caller folds) */
bool us_cuda_lora_bwd_dy_fast(cuda_impl *c, float *du, int lddu, float *dB, const void *dy, int ldy, const float *u, int ldu,
                              const float *B, float s, int T, int out, int r, void *fold, bool *folded);
/* glu_bwd with the down projection's dA fused (cuda_lora.cu); false: shape not taken, nothing run */
bool us_cuda_glu_bwd_dA_fast(cuda_impl *c, int act, bf16 *dg, bf16 *du, float *dA, const float *dd, int lddd, int R,
                             const bf16 *da, const bf16 *g, const bf16 *u, const uint32_t *bits, int rows, int cols);
/* glu_fwd with the down projection's lora_down fused (cuda_lora.cu): ud = a A^T (zeroed, then
 * summed); no fold. false: shape not taken, nothing run */
bool us_cuda_glu_fwd_u_fast(cuda_impl *c, int act, bf16 *a, int lda, bf16 *g, const bf16 *u, uint32_t *bits, float *ud,
                            int ldud, const float *A, int R, int rows, int cols);
bool us_cuda_lora_bwd_x_fast(cuda_impl *c, void *dx, const void *res, float *dA, const float *du, int lddu,
                             const void *x, int ldx, const float *rstd, const float *w, const float *A, int T, int in, int R);

/* attention (cuda_attn.cu) */
void us_cuda_attn_fwd(us_backend *be, void *o, float *lse, const void *q, const void *k, const void *v,
                      const int32_t *seg_start, const us_attn_shape *sh);
/* bytes of the attention backward's own buffers for T tokens of shape sh */
size_t us_cuda_attn_scratch_bytes(cuda_impl *c, int T, const us_attn_shape *sh);
void us_cuda_attn_bwd(us_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                      const void *v, const void *o, const float *lse, const int32_t *seg_start,
                      const us_attn_shape *sh, const us_qkv_merge_out *merge);
/* qkv_merge into mg from bf16 sources, or from the attention backward's f32 sums (dq_f32: dq;
 * kv_f32: dk and dv) */
void us_cuda_qkv_merge(cuda_impl *c, const us_qkv_merge_out *mg, const void *dq, bool dq_f32, const void *dk,
                       const void *dv, bool kv_f32, int T, int nq, int nkv, int hd);

#endif
