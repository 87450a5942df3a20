#!/bin/bash
# gpu_bench.sh — unswag --device cuda beside transformers + PEFT (the oracle's `bench`) on random
# weights of the issue-3 shapes, in one call, on one GPU.
#
#   bench/gpu_bench.sh OUTDIR [shape:batch ...]      (default: smollm2-135m:8 llama-3.2-1b:4 llama-3.1-8b:1)
#
# Environment: UNSWAG_ARGS adds options to every unswag run (e.g. "--recompute mlp"), TAG names
# its files (unswag_SHAPE$TAG.log, m_SHAPE$TAG.rN.jsonl) and PEFT=0 skips the PEFT runs (the table
# then uses the PEFT figures an earlier run left in OUTDIR: same call, same GPU). REPEAT=N runs
# both systems N times, alternating, and reports the medians (PEFT's small-model figure moves by
# ±15% between runs); the spread is printed as an HTML comment above the table row.
#
# Needs build/unswag and build/unswag_gpu_bench (make gpu-build), python3 with torch,
# transformers and peft, the oracle at $REF and its configs at $CFG. For each shape it writes
# random token rows (seq 2048), runs 12 steps of both systems (LoRA r=16, alpha=32, all seven
# projections, AdamW, bf16), and prints one summary line per shape: tokens/s (median of steps
# 5..12, like the oracle's median after 4 warm-up steps), peak GiB, ratio, and MFU against the
# bf16 matrix-product rate measured first in the same call (unswag_gpu_bench's 8192^3 GEMM):
#   MFU = tokens/s * (4*N + 7*S*L*H*hd) / peak_rate
#   N = parameters of every matrix product (7 projections per layer + LM head): a frozen-weight
#   LoRA step does 2N forward + 2N for input gradients per token; attention (causal, average
#   S/2 keys): forward 2 products = 2*S*H*hd per token per layer, backward 5 products = 2.5x that.
set -o pipefail
OUTD=${1:-/tmp/gpubench}
shift
SHAPES=${*:-smollm2-135m:8 llama-3.2-1b:4 llama-3.1-8b:1}
BIN=${BIN:-build}
REF=${REF:-.shared/peft_reference.py}
CFG=${CFG:-.shared/configs}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-12}
TAG=${TAG:-}
PEFT=${PEFT:-1}
REPEAT=${REPEAT:-1}
mkdir -p "$OUTD"
date -u +"%Y-%m-%d %H:%M UTC" | tee "$OUTD/date.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTD/gpu.txt"
if [ ! -f "$OUTD/gemm.txt" ]; then
    "$BIN/unswag_gpu_bench" 10 > "$OUTD/microbench.txt" 2>&1 # whole: a pipe into head would stop it early
    head -1 "$OUTD/microbench.txt" | tee "$OUTD/gemm.txt"
fi
for sb in $SHAPES; do
    shape=${sb%%:*}
    b=${sb##*:}
    [ -f "$OUTD/$shape.jsonl" ] || python3 - "$CFG/$shape/config.json" "$OUTD/$shape.jsonl" "$b" "$STEPS" "$SEQ" <<'EOF'
import json, random, sys
cfg = json.load(open(sys.argv[1])); b, steps, seq = map(int, sys.argv[3:6])
random.seed(0)
with open(sys.argv[2], "w") as f:
    for _ in range(b * steps):
        f.write(json.dumps({"input_ids": [random.randrange(cfg["vocab_size"]) for _ in range(seq)]}) + "\n")
EOF
    for i in $(seq "$REPEAT"); do
        echo "== unswag $shape batch $b $UNSWAG_ARGS (run $i)"
        # shellcheck disable=SC2086
        timeout 300 "$BIN/unswag" train --device cuda --random-init --model "$CFG/$shape" --data "$OUTD/$shape.jsonl" \
            --out "$OUTD/ad_$shape" --seq-len "$SEQ" --batch "$b" --steps "$STEPS" --lora-r 16 --lora-alpha 32 \
            --no-shuffle --metrics "$OUTD/m_$shape$TAG.r$i.jsonl" $UNSWAG_ARGS 2>&1 | grep -v '^step ' | tee "$OUTD/unswag_$shape$TAG.log"
        if [ "$PEFT" != 0 ]; then
            echo "== peft $shape batch $b (run $i)"
            PYTHONUNBUFFERED=1 timeout 300 python3 "$REF" bench --config "$CFG/$shape" --batch "$b" --seq "$SEQ" 2>&1 \
                | tail -1 | tee "$OUTD/peft_$shape.r$i.json"
        fi
    done
done
TAG="$TAG" UNSWAG_ARGS="$UNSWAG_ARGS" python3 - "$OUTD" $SHAPES <<'EOF'
import glob, json, os, re, statistics, sys
outd, shapes = sys.argv[1], sys.argv[2:]
tag, mode = os.environ.get("TAG", ""), os.environ.get("UNSWAG_ARGS", "") or "default"
gemm = float(re.search(r"([\d.]+) TFLOP/s", open(f"{outd}/gemm.txt").read()).group(1)) * 1e12
print(f"\nbf16 GEMM rate measured: {gemm/1e12:.1f} TFLOP/s")
print("| shape | batch x seq | unswag mode | unswag tok/s | PEFT tok/s | ratio | unswag peak GiB | planned GiB | PEFT peak GiB | plan B/token | MFU unswag | MFU PEFT |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for sb in shapes:
    shape, b = sb.split(":"); b = int(b)
    cfgp = os.environ.get("CFG", ".shared/configs")
    c = json.load(open(f"{cfgp}/{shape}/config.json"))
    D, F, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    H, KV = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    hd = c.get("head_dim") or D // H
    seq = int(os.environ.get("SEQ", "2048"))
    N = L * (D * H * hd + 2 * D * KV * hd + H * hd * D + 3 * D * F) + V * D
    fpt = 4 * N + 7 * seq * L * H * hd
    def run_median(path):
        rows = [json.loads(l) for l in open(path)]
        return statistics.median(r["tokens_per_s"] for r in rows[4:]) if len(rows) > 4 else float("nan")
    runs = sorted(glob.glob(f"{outd}/m_{shape}{tag}.r*.jsonl"))
    ours_runs = [run_median(r) for r in runs]
    ours = statistics.median(ours_runs) if ours_runs else float("nan")
    log = open(f"{outd}/unswag_{shape}{tag}.log").read()
    m = re.search(r"peak cuda memory ([\d.]+) MiB", log)
    ours_peak = float(m.group(1)) / 1024 if m else float("nan")
    m = re.search(r"total\s+(\d+)", log)
    plan = m.group(1) if m else "?"
    m = re.search(r"planned \w+ memory: .*= ([\d.]+) MiB", log)
    planned = float(m.group(1)) / 1024 if m else float("nan")
    peft_runs = []
    for f in sorted(glob.glob(f"{outd}/peft_{shape}.r*.json")):
        try:
            peft_runs.append(json.loads(open(f).read()))
        except Exception:
            pass
    pt = statistics.median(p["tokens_per_s"] for p in peft_runs) if peft_runs else float("nan")
    pp = max(p["peak_gib"] for p in peft_runs) if peft_runs else float("nan")
    spread = lambda v: "/".join(f"{x/1000:.1f}k" for x in v)
    print(f"<!-- {shape} {mode}: unswag runs {spread(ours_runs)}; PEFT runs {spread([p['tokens_per_s'] for p in peft_runs])} -->")
    print(f"| {shape} | {b} x {seq} | {mode} | {ours:,.0f} | {pt:,.0f} | {ours/pt:.2f}x | {ours_peak:.2f} | {planned:.2f} | {pp:.2f} | {plan} | "
          f"{100*ours*fpt/gemm:.1f}% | {100*pt*fpt/gemm:.1f}% |")
EOF
