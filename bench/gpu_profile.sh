#!/bin/bash
# gpu_profile.sh — where a steady training step's GPU time goes, per op kind (US_CUDA_PROFILE=1),
# for the issue-3 shapes. Each shape trains twice, 3 and 11 steps; the difference of the two
# profiles over 8 is one steady step (the first step's weight upload and re-layout drop out).
# Prints, per op kind, ms per step and share, then the summed op time against the step's wall
# time from the metrics (a gap there is GPU idle time: launches, host syncs).
#
#   bench/gpu_profile.sh OUTDIR [shape:batch ...]   (default: the three benchmark shapes)
#
# UNSWAG_ARGS adds options (e.g. "--recompute mlp"). Same data and flags as gpu_bench.sh.
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
    for _ in range(b * 11):
        f.write(json.dumps({"input_ids": [random.randrange(cfg["vocab_size"]) for _ in range(2048)]}) + "\n")
PY
    for steps in 3 11; do
        # shellcheck disable=SC2086
        US_CUDA_PROFILE=1 timeout 300 "$BIN/unswag" train --device cuda --random-init --model "$CFG/$shape" \
            --data "$OUTD/$shape.jsonl" --out "$OUTD/ad_$shape" --seq-len 2048 --batch "$b" --steps $steps --lora-r 16 \
            --lora-alpha 32 --no-shuffle --metrics "$OUTD/m_$shape.$steps.jsonl" $UNSWAG_ARGS \
            > "$OUTD/prof_$shape.$steps.log" 2>&1
    done
    echo "== $shape batch $b $UNSWAG_ARGS (one steady step: 11-step profile minus 3-step, over 8)"
    python3 - "$OUTD/prof_$shape.3.log" "$OUTD/prof_$shape.11.log" "$OUTD/m_$shape.11.jsonl" "$b" <<'PY'
import json, re, statistics, sys
def prof(path):
    d = {}
    for line in open(path):
        m = re.match(r"\s+(\S+)\s+([\d.]+) ms\s+[\d.]+%\s+(\d+) calls", line)
        if m: d[m.group(1)] = (float(m.group(2)), int(m.group(3)))
    return d
a, b = prof(sys.argv[1]), prof(sys.argv[2])
rows = [(k, (b[k][0] - a.get(k, (0, 0))[0]) / 8, (b[k][1] - a.get(k, (0, 0))[1]) / 8) for k in b]
rows.sort(key=lambda r: -r[1])
tot = sum(r[1] for r in rows)
for k, ms, n in rows:
    print(f"  {k:18s} {ms:8.2f} ms {100*ms/tot:5.1f}%  {n:6.0f} calls  {1e3*ms/n if n else 0:8.1f} us/call")
steps = [json.loads(l) for l in open(sys.argv[3]) if l.strip() and '"tokens_per_s"' in l]
wall = statistics.median(int(sys.argv[4]) * 2048 / s["tokens_per_s"] for s in steps[3:]) * 1e3
print(f"  ops total {tot:.2f} ms per step; step wall {wall:.2f} ms (median of steps 4..11); gap {wall-tot:.2f} ms")
PY
done
