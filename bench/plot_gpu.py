#!/usr/bin/env python3
"""Draws docs/img/gpu_vs_peft.svg (and docs/img/gpu_longctx.svg, at the end): tokens/s and peak GPU memory of unswag (default plan, and
--max-memory at each shape's memory target: 5, 8, 19 GiB; 5 for Qwen2.5-0.5B, which the issue's
table does not list) beside transformers + PEFT for the benchmark shapes, from the figures in
docs/BENCHMARKS.md (H100, one call, 2026-11-23 09:03 UTC, commit 92309a0: medians of three
alternating runs; the --max-memory rows one run each). Plain SVG, no plotting library needed.
  python3 bench/plot_gpu.py [OUT.svg]"""
import sys

shapes = ["smollm2-135m 8×2048", "qwen2.5-0.5b 8×2048", "llama-3.2-1b 4×2048", "llama-3.1-8b 1×2048"]
tok = {"PEFT": [65713, 57155, 39591, 8270], "unswag": [328884, 163100, 88401, 16882],
       "unswag --max-memory 5/5/8/19": [318932, 148927, 86392, 16585]}
gib = {"PEFT": [21.80, 51.35, 28.55, 31.78], "unswag": [6.16, 11.79, 9.41, 21.77],
       "unswag --max-memory 5/5/8/19": [4.98, 4.96, 7.91, 18.93]}
colors = {"PEFT": "#9ca3af", "unswag": "#2563eb", "unswag --max-memory 5/5/8/19": "#60a5fa"}
W, H, pad = 1180, 410, 50
out = []
def text(x, y, s, size=12, anchor="middle", weight="normal", fill="#111827"):
    out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" fill="{fill}">{s}</text>')

def panel(x0, title, data, fmt, rel):
    pw, ph = 540, 250
    text(x0 + pw / 2, 30, title, 14, weight="bold")
    y0 = 50 + ph
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + pw}" y2="{y0}" stroke="#374151"/>')
    gw = pw / len(shapes)
    for i, s in enumerate(shapes):
        top = max(v[i] for v in data.values())
        bw = gw / (len(data) + 1)
        for j, (name, vals) in enumerate(data.items()):
            h = ph * vals[i] / top * 0.85
            x = x0 + i * gw + bw * (j + 0.5)
            out.append(f'<rect x="{x:.1f}" y="{y0 - h:.1f}" width="{bw * 0.9:.1f}" height="{h:.1f}" fill="{colors[name]}"/>')
            r = rel(vals[i], data["PEFT"][i]) if name != "PEFT" else ""
            text(x + bw * 0.45, y0 - h - (17 if r else 5), fmt(vals[i]), 10)
            if r:
                text(x + bw * 0.45, y0 - h - 5, r, 10, weight="bold")
        text(x0 + i * gw + gw / 2, y0 + 18, s, 11)

out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">')
out.append(f'<rect width="{W}" height="{H}" fill="white"/>')
panel(pad - 20, "training tokens/s (higher is better)", tok, lambda v: f"{v / 1000:.1f}k" if v < 1e5 else f"{v / 1000:.0f}k", lambda v, p: f"{v / p:.2f}×")
panel(pad + 570, "peak GPU memory, GiB (lower is better)", gib, lambda v: f"{v:.1f}", lambda v, p: "")
lx = pad
for name, c in colors.items():
    out.append(f'<rect x="{lx}" y="{H - 58}" width="14" height="14" fill="{c}"/>')
    text(lx + 20, H - 46, name, 12, anchor="start")
    lx += 220
text(pad - 20, H - 16, "H100 80GB, LoRA r 16 all projections, bf16; one call beside transformers + PEFT, 2026-11-23 (ratios: × that call's PEFT tokens/s)", 11, anchor="start", fill="#6b7280")
out.append("</svg>")
open(sys.argv[1] if len(sys.argv) > 1 else "docs/img/gpu_vs_peft.svg", "w").write("\n".join(out))

# docs/img/gpu_longctx.svg: the longest sequence of the 8B shape that trains 2 steps on the one
# 80 GB GPU (batch 1), unswag --offload beside PEFT + gradient checkpointing, same call
# (docs/BENCHMARKS.md "Long context").
rows = [("PEFT + gradient checkpointing", 28672, "64.0 GiB GPU; 32,768 out of memory", "#9ca3af"),
        ("unswag --offload, 131,072-token window (20:44)", 131072, "27.5 GiB GPU, 32 GiB host", "#60a5fa"),
        ("unswag --offload --keep-attn 11 --offload-attn 18 --extend-context", 286720, "74.6 GiB GPU, 109 GiB host", "#2563eb")]
W2, H2, left, bar = 980, 230, 20, 560
out = []
out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W2}" height="{H2}" font-family="sans-serif">')
out.append(f'<rect width="{W2}" height="{H2}" fill="white"/>')
text(W2 / 2, 26, "Llama-3.1-8B shape: longest sequence that trains 2 steps on one H100 80GB (higher is better)", 14, weight="bold")
for i, (name, n, note, c) in enumerate(rows):
    y = 50 + i * 52
    w = bar * n / rows[-1][1]
    text(left, y + 12, name, 12, anchor="start")
    out.append(f'<rect x="{left}" y="{y + 18}" width="{w:.1f}" height="20" fill="{c}"/>')
    text(left + w + 8, y + 33, f"{n:,} tokens ({n / rows[0][1]:.1f}×) — {note}", 12, anchor="start",
         weight="bold" if i == 2 else "normal")
text(left, H2 - 12, "same call for PEFT and the 286,720-token run (2026-11-22 22:58 UTC); the 131,072 row is an earlier call", 11, anchor="start", fill="#6b7280")
out.append("</svg>")
open(sys.argv[2] if len(sys.argv) > 2 else "docs/img/gpu_longctx.svg", "w").write("\n".join(out))
