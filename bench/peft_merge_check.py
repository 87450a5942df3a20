#!/usr/bin/env python3
"""`unswag merge` against PEFT's merge_and_unload(). For each case: the base model in its own
dtype + the unswag-trained adapter, merged by PEFT; and the checkpoint `unswag merge` wrote,
loaded by transformers. Compares every weight (in units of the dtype's rounding) and the logits
of both merged models run in float32. Runs where torch + transformers + peft exist.

  python3 bench/peft_merge_check.py ADAPTERS_DIR MERGED_DIR"""
import json, os, sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

adapters, merged = sys.argv[1:3]
out = {}
for name in sorted(os.listdir(merged)):
    fx = os.path.join("tests/fixtures", name)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(fx, "model"), dtype="auto")
    dtype = next(base.parameters()).dtype
    peft = PeftModel.from_pretrained(base, os.path.join(adapters, name)).merge_and_unload()
    ours = AutoModelForCausalLM.from_pretrained(os.path.join(merged, name), dtype="auto")
    sp, so = peft.state_dict(), ours.state_dict()
    assert set(sp) == set(so), (set(sp) ^ set(so))
    eps = torch.finfo(dtype).eps
    worst = 0.0
    for k in sp:
        a, b = sp[k].double(), so[k].double()
        assert so[k].dtype == dtype, (k, so[k].dtype)
        worst = max(worst, ((a - b).abs() / (a.abs().clamp_min(1e-6) * eps)).max().item())
    rows = [json.loads(l) for l in open(os.path.join(fx, "data.jsonl"))]
    ids = torch.tensor([r["input_ids"] for r in rows])
    with torch.no_grad():
        la = peft.float()(input_ids=ids).logits.double()
        lb = ours.float()(input_ids=ids).logits.double()
    out[name] = dict(dtype=str(dtype), max_weight_diff_in_ulps=worst,
                     logits_max_abs_diff=(la - lb).abs().max().item(),
                     logits_rel_to_scale=((la - lb).abs().max() / la.abs().max()).item())
print(json.dumps(out, indent=1))
