#!/bin/bash
# gpu_longctx.sh — the long-context test of issue 3: the longest sequence (batch 1) that trains two
# steps on one GPU, unswag with --offload (layer inputs in pinned host memory, implies --recompute
# layer) beside transformers + PEFT with gradient checkpointing, in one call.
#
#   bench/gpu_longctx.sh OUTDIR "UNSWAG_LENGTHS" "PEFT_LENGTHS" [shape]     (shape: llama-3.1-8b)
#
# PEFT's list runs first (its runs are short), then unswag's. Each list (an empty one skips that
# system) is tried in increasing order and stops at the first length that fails (out of memory,
# error, or the per-run time limit LIMIT seconds, default 280). unswag: random weights, one data row
# of N random token ids per step, LoRA r=16 alpha=32 on all seven projections, AdamW, STEPS steps
# (2), --extend-context (lengths past the config's max_position_embeddings train as context
# extension), UNSWAG_ARGS appended; with DEADLINE set, unswag's runs end by then (seconds from the
# script's start) instead of after LIMIT.
# PEFT: ../shared/reference/peft_reference.py bench --grad-ckpt --batch 1 --seq N --steps 2
# --warmup 1. Prints one line per run (tokens/s of the second step, peak GiB) and the longest of each.
set -o pipefail
OUTD=${1:-/tmp/longctx}
OURS=${2-"32768 65536 131072"}
THEIRS=${3-"8192 16384 32768 65536"}
SHAPE=${4:-llama-3.1-8b}
BIN=${BIN:-build}
REF=${REF:-.shared/peft_reference.py}
CFG=${CFG:-.shared/configs}
LIMIT=${LIMIT:-280}
STEPS=${STEPS:-2}
mkdir -p "$OUTD"
date -u +"%Y-%m-%d %H:%M UTC" | tee "$OUTD/date.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTD/gpu.txt"
best_ours=0 best_peft=0
for n in $THEIRS; do
    out=$(PYTHONUNBUFFERED=1 timeout "$LIMIT" python3 "$REF" bench --config "$CFG/$SHAPE" --grad-ckpt --batch 1 --seq "$n" \
        --steps 2 --warmup 1 2>&1 | tee "$OUTD/peft_$n.log" | tail -1)
    rc=$?
    if echo "$out" | grep -q '"tokens_per_s"'; then
        echo "peft --grad-ckpt seq $n: $out"
        best_peft=$n
    else
        echo "peft --grad-ckpt seq $n: failed: $(grep -oE "OutOfMemoryError|CUDA out of memory|Killed|Error[^:]*" "$OUTD/peft_$n.log" | head -1) (rc $rc)"
        break
    fi
done
for n in $OURS; do
    python3 - "$CFG/$SHAPE/config.json" "$OUTD/rows_$n.jsonl" "$n" "$STEPS" <<'PY'
import json, random, sys
cfg = json.load(open(sys.argv[1])); n = int(sys.argv[3]); random.seed(n)
with open(sys.argv[2], "w") as f:
    for _ in range(int(sys.argv[4])):
        f.write(json.dumps({"input_ids": [random.randrange(cfg["vocab_size"]) for _ in range(n)]}) + "\n")
PY
    log="$OUTD/unswag_$n.log"
    t0=$SECONDS
    lim=$LIMIT
    [ -n "$DEADLINE" ] && lim=$((DEADLINE - SECONDS)) # DEADLINE: seconds from the script's start
    timeout "$lim" "$BIN/unswag" train --device cuda --random-init --model "$CFG/$SHAPE" --data "$OUTD/rows_$n.jsonl" \
        --out "$OUTD/ad_$n" --seq-len "$n" --batch 1 --steps "$STEPS" --lora-r 16 --lora-alpha 32 --no-shuffle --offload \
        --extend-context --metrics "$OUTD/m_$n.jsonl" $UNSWAG_ARGS > "$log" 2>&1
    rc=$?
    rm -f "$OUTD/rows_$n.jsonl"
    peak=$(grep -oE "peak cuda memory [0-9.]+ MiB" "$log" | grep -oE "[0-9.]+" | head -1)
    tps=$(tail -1 "$OUTD/m_$n.jsonl" 2>/dev/null | python3 -c "import json,sys; print('%.0f' % json.loads(sys.stdin.read())['tokens_per_s'])" 2>/dev/null)
    steps=$(wc -l < "$OUTD/m_$n.jsonl" 2>/dev/null || echo 0)
    echo "unswag --offload seq $n: rc $rc, steps $steps, tokens/s ${tps:-?}, peak ${peak:-?} MiB, $((SECONDS - t0)) s"
    cat "$OUTD/m_$n.jsonl" 2>/dev/null
    grep -E "plan|step arena|attention" "$log" | head -8
    if [ "$rc" != 0 ] || [ "$steps" -lt "$STEPS" ]; then tail -3 "$log"; break; fi
    best_ours=$n
done
echo "longest that trains $STEPS steps ($SHAPE, batch 1): unswag --offload $best_ours tokens, PEFT + gradient checkpointing $best_peft tokens"
