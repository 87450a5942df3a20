#!/usr/bin/env python3
"""Loads adapters written by `unswag train` into PEFT (PeftModel.from_pretrained, through the
oracle's `logits` command) and compares PEFT's logits with the ones `unswag eval --logits-out`
computed. Runs where torch + transformers + peft exist (the GPU machine).

  python3 bench/peft_logits_check.py ORACLE CASES_DIR OUTDIR
CASES_DIR/<fixture>/ holds the adapter and ours.safetensors; the model and data are the fixture's."""
import json, os, subprocess, sys

from safetensors.torch import load_file

oracle, cases, out = sys.argv[1:4]
results = {}
for name in sorted(os.listdir(cases)):
    fx = os.path.join("tests/fixtures", name)
    peft_out = os.path.join(out, name + "_peft.safetensors")
    subprocess.run([sys.executable, oracle, "logits", "--model", os.path.join(fx, "model"), "--data",
                    os.path.join(fx, "data.jsonl"), "--adapter", os.path.join(cases, name), "--out", peft_out],
                   check=True, capture_output=True)
    ours = load_file(os.path.join(cases, name, "ours.safetensors"))["logits"].double()
    theirs = load_file(peft_out)["logits"].double()
    base_out = os.path.join(out, name + "_base.safetensors")
    subprocess.run([sys.executable, oracle, "logits", "--model", os.path.join(fx, "model"), "--data",
                    os.path.join(fx, "data.jsonl"), "--out", base_out], check=True, capture_output=True)
    base = load_file(base_out)["logits"].double()
    diff = (ours - theirs).abs().max().item()
    results[name] = dict(shape=list(ours.shape), max_abs_diff=diff,
                         rel_to_scale=diff / theirs.abs().max().item(),
                         adapter_effect=(theirs - base).abs().max().item())
print(json.dumps(results, indent=1))
