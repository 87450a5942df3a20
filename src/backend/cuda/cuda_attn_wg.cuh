/* cuda_attn_wg.cuh — Hopper (sm_90a) wgmma causal flash-attention backward (cuda_attn_wg.cu). */
#ifndef US_CUDA_ATTN_WG_CUH
#define US_CUDA_ATTN_WG_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

/* Causal attention backward with GQA on an sm_90 device through wgmma. Tensors are row-major,
 * token-major: q, dout, dq [batch*seq, H*hd]; k, v, dk, dv [batch*seq, KV*hd] (bf16); lse, D
 * [batch*seq, H] (f32; lse the natural-log log-sum-exp of the scaled scores, D = rowsum(dO * O)).
 * dq_acc: scratch of attn_wg_dq_scratch_bytes() bytes (the f32 dQ accumulators and the counters
 * of the fused bf16 casts); dkv_acc: f32 scratch of 2*batch*seq*KV*hd floats (used only when
 * H != KV). Both are zeroed here as needed. seg (NULL: plain causal): packed segments, int32
 * [batch*seq], for each token the position in its row where its example begins (token i sees
 * keys j with seg[i] <= j <= i); then seg_scratch (batch * ceil(seq/64) ints) takes the per
 * query block minima. Returns false, having done nothing, for shapes or devices it does not
 * handle (hd other than 64 / 128, H % KV != 0, a device other than compute capability 9.0,
 * misaligned pointers, seg without seg_scratch); then the caller keeps its own kernel. dq_mode:
 * how dQ partial tiles are summed (1 atomics, 2 a bulk add per row, 3 a bulk add per tile;
 * 0: the faster for hd). f32_left not NULL: the caller may take the f32 sums in place of the bf16
 * casts; *f32_left = 1: dQ is left in dq_acc and dK, dV in dkv_acc (rows as dq / dk / dv, dV
 * after dK), dq, dk, dv unwritten; 2: dQ left in dq_acc, dk and dv written; 0: all written (dQ
 * summed tile by tile, or casts fused into the kernel).
 * Everything is queued on `st`; launch errors are left for the caller's cudaGetLastError. */
bool attn_bwd_wgmma(cudaStream_t st, int sm_count, __nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv,
                    float *dq_acc, float *dkv_acc, const __nv_bfloat16 *dout, const __nv_bfloat16 *q,
                    const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *lse, const float *D, int batch,
                    int seq, int H, int KV, int hd, float scale, int *seg_scratch, const int32_t *seg,
                    int dq_mode, int *f32_left);

/* bytes of attn_bwd_wgmma's dq_acc scratch */
size_t attn_wg_dq_scratch_bytes(int batch, int seq, int H, int KV, int hd);

#endif
