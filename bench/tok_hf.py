#!/usr/bin/env python3
"""tok_hf.py — Hugging Face `tokenizers` side of UnSwag's tokenizer benchmark and parity check.

usage: tok_hf.py CORPUS STRINGS OUTDIR MODELDIR...
For each model directory (holding tokenizer.json): encodes every line of STRINGS (one JSON string
per line) with and without special tokens into OUTDIR/hf_<name>_<0|1>.jsonl, and times single-thread
encoding of CORPUS line by line (best of 3), printing one JSON line per model."""
import json, os, sys, time
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer

corpus, strings, outdir, *models = sys.argv[1:]
text = open(corpus, encoding="utf-8").read()
parts = text.splitlines(keepends=True)
lines = [json.loads(l) for l in open(strings, encoding="utf-8") if l.strip()]
for mdir in models:
    name = os.path.basename(os.path.dirname(mdir.rstrip("/"))).replace("tokenizer-", "")
    tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    for sp in (0, 1):
        with open(os.path.join(outdir, f"hf_{name}_{sp}.jsonl"), "w") as f:
            for s in lines:
                f.write(json.dumps(tok.encode(s, add_special_tokens=bool(sp)).ids, separators=(",", ":")) + "\n")
    best, ntok = 1e30, 0
    for _ in range(3):
        t0 = time.perf_counter()
        ntok = sum(len(tok.encode(p, add_special_tokens=False).ids) for p in parts)
        best = min(best, time.perf_counter() - t0)
    nbytes = len(text.encode("utf-8"))
    print(json.dumps({"model": name, "bytes": nbytes, "tokens": ntok, "seconds": round(best, 4),
                      "MB_per_s": round(nbytes / 1e6 / best, 2)}), flush=True)
