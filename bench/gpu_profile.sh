#!/bin/bash
# gpu_profile.sh — where a training step's GPU time goes, per op kind (US_CUDA_PROFILE=1), for
# the issue-3 shapes; one line per op kind with ms and share, per shape.
#
#   bench/gpu_profile.sh OUTDIR [shape:batch ...]   (default: the three benchmark shapes)
#
# UNSWAG_ARGS adds options (e.g. "--recompute mlp"). Same data and flags as gpu_bench.sh, 8 steps.
set -o pipefail
OUTD=${1:-/tmp/gpuprof}
shift
SHAPES=${*:-smollm2-135m:8 llama-3.2-1b:4 llama-3.1-8b:1}
BIN=${BIN:-build}
CFG=${CFG:-.shared/configs}
mkdir -p "$OUTD"
for sb in $SHAPES; do
    shape=${sb%%:*}
    b=${sb##*:}
    python3 - "$CFG/$shape/config.json" "$OUTD/$shape.jsonl" "$b" <<'PY'
import json, random, sys
cfg = json.load(open(sys.argv[1])); b = int(sys.argv[3])
random.seed(0)
with open(sys.argv[2], "w") as f:
    for _ in range(b * 8):
        f.write(json.dumps({"input_ids": [random.randrange(cfg["vocab_size"]) for _ in range(2048)]}) + "\n")
PY
    echo "== $shape batch $b $UNSWAG_ARGS"
    # shellcheck disable=SC2086
    US_CUDA_PROFILE=1 timeout 300 "$BIN/unswag" train --device cuda --random-init --model "$CFG/$shape" \
        --data "$OUTD/$shape.jsonl" --out "$OUTD/ad_$shape" --seq-len 2048 --batch "$b" --steps 8 --lora-r 16 \
        --lora-alpha 32 --no-shuffle $UNSWAG_ARGS 2>&1 | grep -v '^step ' | tail -28
done
