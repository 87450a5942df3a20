/* cuda_attn_wgf.cuh — Hopper (sm_90a) wgmma causal flash-attention forward (cuda_attn_wgf.cu). */
#ifndef US_CUDA_ATTN_WGF_CUH
#define US_CUDA_ATTN_WGF_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

/* Causal attention forward with GQA on an sm_90 device through wgmma. Tensors are row-major,
 * token-major: q, o [batch*seq, H*hd] (o's rows ldo >= H*hd apart, ldo % 8 == 0); k, v
 * [batch*seq, KV*hd] (bf16); lse [batch*seq, H] (f32,
 * the natural-log log-sum-exp of the scaled scores, scale = the softmax scale, 1/sqrt(hd) usually).
 * Query head h uses kv head h / (H / KV). seg (NULL: plain causal): packed segments, int32
 * [batch*seq], for each token the position in its row where its example begins (token i sees keys
 * j with seg[i] <= j <= i). Returns false, having done nothing, for shapes or devices it does not
 * handle (hd other than 64 / 128, H % KV != 0, a device other than compute capability 9.0,
 * misaligned pointers); then the caller keeps its own kernel. Everything is queued on `st`; launch
 * errors are left for the caller's cudaGetLastError. */
bool attn_fwd_wgmma(cudaStream_t st, int sm_count, __nv_bfloat16 *o, int ldo, float *lse, const __nv_bfloat16 *q,
                    const __nv_bfloat16 *k, const __nv_bfloat16 *v, const int32_t *seg, int batch, int seq, int H,
                    int KV, int hd, float scale);

#endif
