#!/usr/bin/env bash
# CPU training throughput of a benchmark shape beside the machine's sgemm ceiling.
#   bench/cpu_train_bench.sh [CONFIG_DIR] [SEQ] [BATCH] [STEPS]
# CONFIG_DIR holds config.json (random weights, nothing downloaded); default SmolLM2-135M's shape.
# Prints one JSON line: tokens/s (median of the steps after the first two), achieved GFLOP/s by
# the formula below, the sgemm GFLOP/s of this machine, and the activation plan.
#
# FLOPs per token (LoRA: frozen weights get no weight gradient):
#   4 * N_matmul                      forward + input-gradient products of every projection and the LM head
#   + L * 12 * H * hd * (S+1)/2       causal attention: 4 (QK^T, PV) forward + 8 backward, mean context (S+1)/2
#   + L * sum_adapters 6 * r * (in+out)   LoRA forward, input gradient and A/B gradients
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=${1:-../shared/reference/configs/smollm2-135m}
SEQ=${2:-512}; BATCH=${3:-1}; STEPS=${4:-8}
make -s build/unswag build/sgemm_peak >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 - "$CFG/config.json" "$SEQ" "$BATCH" "$STEPS" "$tmp/data.jsonl" <<'PY'
import json, random, sys
cfg = json.load(open(sys.argv[1])); seq, batch, steps = map(int, sys.argv[2:5])
r = random.Random(0)
with open(sys.argv[5], "w") as f:
    for _ in range(batch * steps):
        f.write(json.dumps({"input_ids": [r.randrange(cfg["vocab_size"]) for _ in range(seq)]}) + "\n")
PY
build/unswag train --model "$CFG" --random-init --data "$tmp/data.jsonl" --out "$tmp/out" --steps "$STEPS" \
    --batch "$BATCH" --seq-len "$SEQ" --lora-r 16 --lora-alpha 32 --metrics "$tmp/m.jsonl" 2> "$tmp/log"
peak=$(build/sgemm_peak)
python3 - "$CFG/config.json" "$SEQ" "$tmp/m.jsonl" "$peak" "$tmp/log" <<'PY'
import json, statistics, sys
c = json.load(open(sys.argv[1])); S = int(sys.argv[2])
D, F, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
H = c["num_attention_heads"]; KV = c.get("num_key_value_heads", H); hd = c.get("head_dim", D // H); r = 16
dims = [(D, H*hd), (D, KV*hd), (D, KV*hd), (H*hd, D), (D, F), (D, F), (F, D)]
n_mm = L * sum(i*o for i, o in dims) + V * D
flops = 4*n_mm + L*12*H*hd*(S+1)/2 + L*sum(6*r*(i+o) for i, o in dims)
m = [json.loads(l) for l in open(sys.argv[3])]
tps = statistics.median(x["tokens_per_s"] for x in m[2:])
peak = json.loads(sys.argv[4]); ceiling = max(peak.values())
plan = [l.strip() for l in open(sys.argv[5]) if "total" in l and "store-everything" in l]
print(json.dumps({"shape": sys.argv[1], "seq": S, "tokens_per_s": round(tps, 1), "gflop_per_token": round(flops/1e9, 4),
                  "achieved_gflops": round(tps*flops/1e9, 1), "sgemm_gflops": peak, "fraction_of_sgemm": round(tps*flops/1e9/ceiling, 3),
                  "plan": plan[0] if plan else None}))
PY
