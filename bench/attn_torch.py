#!/usr/bin/env python3
"""attn_torch.py — the peers' causal attention at the benchmark shapes, for comparison with
unswag's kernels (ncu or `build/unswag_gpu_bench 20 attn`): PyTorch's scaled_dot_product_attention
through its FlashAttention-2 and cuDNN backends, bf16, K/V repeated to the query heads (GQA).
Prints the median forward and backward (forward + backward minus forward) of 30 timed calls
after 5 warm-ups, CUDA events, and TFLOP/s (causal: half the 4·B·H·S²·hd forward FLOPs; backward
2.5× the forward). Needs a GPU and PyTorch.
  python3 bench/attn_torch.py"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_us(fn, n=30):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(n):
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2] * 1e3


torch.manual_seed(0)
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())
# (batch, heads, kv heads, seq, head_dim): the 1B, 8B and smollm2 benchmark rows
for B, H, KV, S, D in [(4, 32, 8, 2048, 64), (1, 32, 8, 2048, 128), (8, 9, 3, 2048, 64)]:
    q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, KV, S, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, KV, S, D, device="cuda", dtype=torch.bfloat16)
    ke = k.repeat_interleave(H // KV, 1).requires_grad_()
    ve = v.repeat_interleave(H // KV, 1).requires_grad_()
    flops = 4 * B * H * S * S * D / 2
    for backend in [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]:
        with sdpa_kernel([backend]):
            do = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
            tf = median_us(lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True))

            def fwd_bwd():
                F.scaled_dot_product_attention(q, ke, ve, is_causal=True).backward(do)

            tb = median_us(fwd_bwd) - tf
        print(f"B={B} H={H} KV={KV} S={S} hd={D} {backend.name}: forward {tf:.1f} us ({flops / tf / 1e6:.0f} TFLOP/s), "
              f"backward {tb:.1f} us ({2.5 * flops / tb / 1e6:.0f} TFLOP/s)")
