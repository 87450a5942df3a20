#!/usr/bin/env python3
"""make_hostile.py — writes the hostile-input corpus under tests/hostile/ (committed; rerun to
regenerate). Python standard library only.

Layout, one directory per reader (tests/test_hostile.c feeds each file to its reader):
  safetensors/  files for us_st_open            config/    config.json texts for us_config_load
  jsonl/        data files for us_jsonl_tokens_load (vocabulary 256)
  adapter/      PEFT adapter directories for us_adapter_open
  tokenizer/    tokenizer.json texts for us_tokenizer_load
  model_nan/    tiny model directories with NaN/Inf weights, trained through the CLI
The name says what must happen: bad_* must be refused with a message naming the file; ok_* are
valid (must load); any_* (fuzzer regressions and edge cases) may go either way — every file must
be handled without a crash or a sanitizer report. nan_* models must stop with the non-finite
message (exit 1)."""
import json, os, random, shutil, struct

ROOT = os.path.dirname(os.path.abspath(__file__))
rnd = random.Random(6)


def out(sub, name, data):
    d = os.path.join(ROOT, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def st_bytes(header, data=b"", hlen=None, pad=True):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    n = len(h) if hlen is None else hlen
    return struct.pack("<Q", n) + h + data


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


# ---------------------------------------------------------------- safetensors
T4 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
good = st_bytes({"a": T4}, f32([1, 2, 3, 4]))
S = {
    "bad_empty": b"",
    "bad_3_bytes": b"abc",
    "bad_7_bytes": b"\x10\x00\x00\x00\x00\x00\x00",
    "bad_hlen_exceeds_file": st_bytes({"a": T4}, f32([1, 2, 3, 4]), hlen=10_000),
    "bad_hlen_max_u64": struct.pack("<Q", 2**64 - 1) + b"{}",
    "bad_hlen_2_63": struct.pack("<Q", 2**63) + b"{}" + b"\0" * 64,
    "bad_hlen_zero": struct.pack("<Q", 0) + b"{}",
    "bad_hlen_one": struct.pack("<Q", 1) + b"{",
    "bad_header_not_json": st_bytes(b"hello world!!!!!"),
    "bad_header_array": st_bytes(b"[1, 2, 3]       "),
    "bad_header_string": st_bytes(b'"just a string" '),
    "bad_header_trailing_garbage": st_bytes(b'{}      xx'),
    "bad_header_nul": st_bytes(b'{"a\x00b": 1}    '),
    "bad_header_invalid_utf8": st_bytes(b'{"\xff\xfe": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', f32([1])),
    "bad_header_deep_nesting": st_bytes(b"[" * 20000 + b"]" * 20000),
    "bad_header_deep_object": st_bytes(b'{"a":' * 20000 + b"1" + b"}" * 20000),
    "bad_header_truncated_json": st_bytes(b'{"a": {"dtype": "F32", "sha'),
    "bad_entry_not_object": st_bytes({"a": 5}),
    "bad_entry_null": st_bytes({"a": None}),
    "bad_dtype_missing": st_bytes({"a": {"shape": [1], "data_offsets": [0, 4]}}, f32([1])),
    "bad_dtype_number": st_bytes({"a": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}}, f32([1])),
    "bad_dtype_unknown": st_bytes({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
    "bad_dtype_empty": st_bytes({"a": {"dtype": "", "shape": [1], "data_offsets": [0, 4]}}, f32([1])),
    "bad_shape_missing": st_bytes({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, f32([1])),
    "bad_shape_string": st_bytes({"a": {"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]}}, f32([1] * 4)),
    "bad_shape_negative": st_bytes({"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, f32([1] * 4)),
    "bad_shape_fraction": st_bytes({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, f32([1])),
    "bad_shape_huge_overflow": st_bytes({"a": {"dtype": "F32", "shape": [2**31, 2**31, 2**31], "data_offsets": [0, 4]}}, f32([1])),
    "bad_shape_huge_bytes": st_bytes({"a": {"dtype": "F64", "shape": [2**61], "data_offsets": [0, 8]}}, b"\0" * 8),
    "bad_shape_huge_2d": st_bytes({"a": {"dtype": "BF16", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 2]}}, b"\0\0"),
    "bad_shape_9_dims": st_bytes({"a": {"dtype": "U8", "shape": [1] * 9, "data_offsets": [0, 1]}}, b"\0"),
    "bad_shape_1e300": st_bytes(b'{"a": {"dtype": "F32", "shape": [1e300], "data_offsets": [0, 4]}}', f32([1])),
    "bad_offsets_missing": st_bytes({"a": {"dtype": "F32", "shape": [1]}}, f32([1])),
    "bad_offsets_one_number": st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, f32([1])),
    "bad_offsets_three": st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, f32([1, 2])),
    "bad_offsets_reversed": st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, f32([1, 2])),
    "bad_offsets_negative": st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, f32([1])),
    "bad_offsets_beyond_data": st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32([1])),
    "bad_offsets_far": st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [2**50, 2**50 + 4]}}, f32([1])),
    "bad_offsets_2_64": st_bytes(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 18446744073709551616]}}', f32([1])),
    "bad_offsets_strings": st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}, f32([1])),
    "bad_lying_length_short": st_bytes({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, f32([1] * 4)),
    "bad_lying_length_long": st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, f32([1] * 4)),
    "bad_overlap_same": st_bytes({"a": T4, "b": T4}, f32([1] * 4)),
    "bad_overlap_partial": st_bytes({"a": T4, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, f32([1] * 4)),
    "bad_overlap_inside": st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                    "b": {"dtype": "U8", "shape": [1], "data_offsets": [5, 6]}}, f32([1] * 4)),
    "bad_duplicate_name": st_bytes(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                   b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', f32([1, 2])),
    "bad_metadata_not_object": st_bytes({"__metadata__": [1, 2]}),
    "bad_metadata_number_value": st_bytes({"__metadata__": {"format": 7}}),
    "bad_metadata_twice": st_bytes(b'{"__metadata__": {}, "__metadata__": {}}'),
    "bad_empty_name": st_bytes({"": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, f32([1])),
    "bad_truncated_data": good[:-5],
    "bad_truncated_header": good[:12],
    "ok_empty_header": st_bytes({}),
    "ok_metadata_only": st_bytes({"__metadata__": {"format": "pt"}}),
    "ok_zero_size_tensor": st_bytes({"a": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]}}),
    "ok_scalar": st_bytes({"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, f32([3])),
    "ok_unaligned_header": st_bytes({"a": T4}, f32([1, 2, 3, 4]), pad=False) if len(json.dumps({"a": T4})) % 8 else st_bytes(b'{"a":' + json.dumps(T4).encode() + b'}', f32([1, 2, 3, 4]), pad=False),
    "ok_nan_inf_data": st_bytes({"a": T4}, f32([float("nan"), float("inf"), -float("inf"), 0.0])),
    "ok_all_dtypes": st_bytes({d: {"dtype": d, "shape": [2], "data_offsets": [i * 16, i * 16 + 2 * s]}
                               for i, (d, s) in enumerate([("F32", 4), ("BF16", 2), ("F16", 2), ("F64", 8), ("I64", 8),
                                                           ("I32", 4), ("I16", 2), ("I8", 1), ("U8", 1), ("BOOL", 1)])},
                              bytes(range(160))),
    "ok_many_tensors": st_bytes({"t%05d" % i: {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(3000)},
                                bytes(3000)),
    "ok_trailing_bytes": good + b"extra bytes after the data block",
}
for k, v in S.items():
    out("safetensors", k + ".safetensors", v)

# ---------------------------------------------------------------- config.json
base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 64,
        "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True}


def cfg(**kw):
    d = dict(base)
    for k, v in kw.items():
        if v is ...:
            d.pop(k, None)
        else:
            d[k] = v
    return json.dumps(d)


C = {
    "ok_llama": cfg(),
    "ok_rope_llama3": cfg(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "bad_empty": "",
    "bad_whitespace": "   \n\t ",
    "bad_not_object": "[1, 2, 3]",
    "bad_number": "42",
    "bad_truncated": cfg()[:-20],
    "bad_trailing_comma": cfg()[:-1] + ",}",
    "bad_deep_array": "[" * 20000 + "]" * 20000,
    "bad_deep_object_in_key": cfg()[:-1] + ', "x": ' + '{"a":' * 20000 + "1" + "}" * 20000 + "}",
    "bad_invalid_utf8_arch": cfg().replace("LlamaForCausalLM", "Llama\udcff").encode("utf-8", "surrogateescape").decode("latin-1"),
    "bad_nul_in_arch": cfg(architectures=["Llama\u0000ForCausalLM"]),
    "bad_arch_gpt2": cfg(architectures=["GPT2LMHeadModel"]),
    "bad_arch_number": cfg(architectures=[7]),
    "bad_arch_string": cfg(architectures="LlamaForCausalLM"),
    "bad_no_arch_no_type": cfg(architectures=..., model_type=...),
    "bad_vocab_string": cfg(vocab_size="256"),
    "bad_vocab_zero": cfg(vocab_size=0),
    "bad_vocab_negative": cfg(vocab_size=-5),
    "bad_vocab_huge": cfg(vocab_size=2**40),
    "bad_vocab_1e300": cfg(vocab_size=1e300),
    "bad_vocab_fraction": cfg(vocab_size=255.5),
    "bad_hidden_huge": cfg(hidden_size=2**31),
    "bad_layers_huge": cfg(num_hidden_layers=10**9),
    "bad_heads_zero": cfg(num_attention_heads=0),
    "bad_kv_not_dividing": cfg(num_key_value_heads=3),
    "bad_head_dim_odd": cfg(head_dim=15),
    "bad_head_dim_huge": cfg(head_dim=2**23),
    "bad_missing_hidden": cfg(hidden_size=...),
    "bad_act_gelu": cfg(hidden_act="gelu"),
    "bad_act_number": cfg(hidden_act=1),
    "bad_eps_negative": cfg(rms_norm_eps=-1),
    "bad_eps_string": cfg(rms_norm_eps="1e-5"),
    "bad_rope_theta_zero": cfg(rope_theta=0),
    "bad_rope_scaling_string": cfg(rope_scaling="linear"),
    "bad_rope_type_yarn": cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
    "bad_rope_linear_no_factor": cfg(rope_scaling={"type": "linear"}),
    "bad_rope_llama3_inverted": cfg(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                                  "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
    "bad_tie_string": cfg(tie_word_embeddings="yes"),
    "bad_bos_negative": cfg(bos_token_id=-1),
    "bad_number_overflow": cfg().replace('"max_position_embeddings": 512', '"max_position_embeddings": 1e999'),
    "any_duplicate_key": cfg()[:-1] + ', "vocab_size": 128}',
    "any_huge_but_valid_dims": cfg(vocab_size=16000000, hidden_size=16000000, intermediate_size=16000000,
                                   num_attention_heads=1, num_key_value_heads=1, head_dim=1000),
    "any_unicode_escapes": cfg()[:-1] + ', "note": "\\ud800\\udc00\\u0000\\uffff"}',
}
for k, v in C.items():
    out("config", k + ".json", v.encode("latin-1") if k == "bad_invalid_utf8_arch" else v)

# ---------------------------------------------------------------- JSONL
J = {
    "ok_basic": '{"input_ids": [1, 2, 3]}\n{"input_ids": [4, 5], "labels": [-100, 5]}\n',
    "ok_crlf_and_blank": '{"input_ids": [1, 2]}\r\n\r\n   \n{"input_ids": [3]}\r\n',
    "ok_labels_null": '{"input_ids": [1, 2], "labels": null}\n',
    "ok_extra_keys": '{"input_ids": [1, 2], "text": "\\u00e9\\ud83d\\ude00", "meta": {"a": [1, {"b": null}]}}\n',
    "bad_empty": "",
    "bad_blank": "\n\n   \n",
    "bad_not_json": "hello\n",
    "bad_array_line": "[1, 2, 3]\n",
    "bad_truncated": '{"input_ids": [1, 2, 3\n',
    "bad_two_objects_one_line": '{"input_ids": [1]} {"input_ids": [2]}\n',
    "bad_invalid_utf8": b'{"input_ids": [1, 2], "t": "\xff\xfe\xc0\x80"}\n{"input_ids": [1, \xff]}\n',
    "bad_nul_byte": b'{"input_ids": [1,\x00 2]}\n',
    "any_bom": b'\xef\xbb\xbf{"input_ids": [1, 2]}\n',
    "bad_deep_nesting": '{"input_ids": ' + "[" * 20000 + "]" * 20000 + "}\n",
    "bad_deep_in_other_key": '{"input_ids": [1], "x": ' + "[" * 20000 + "]" * 20000 + "}\n",
    "bad_ids_nested_arrays": '{"input_ids": [[1, 2], [3]]}\n',
    "bad_ids_string": '{"input_ids": "1 2 3"}\n',
    "bad_ids_strings_in_array": '{"input_ids": ["1", "2"]}\n',
    "bad_ids_empty": '{"input_ids": []}\n',
    "bad_ids_missing": '{"labels": [1, 2]}\n',
    "bad_ids_float": '{"input_ids": [1.5, 2]}\n',
    "bad_ids_huge": '{"input_ids": [1e400]}\n',
    "bad_ids_1e20": '{"input_ids": [100000000000000000000]}\n',
    "bad_ids_2_53_plus_1": '{"input_ids": [9007199254740993]}\n',
    "bad_ids_negative_huge": '{"input_ids": [-1e20]}\n',
    "bad_ids_at_vocab": '{"input_ids": [1, 256]}\n',
    "bad_ids_minus_100": '{"input_ids": [-100, 1]}\n',
    "bad_ids_bools": '{"input_ids": [true, false]}\n',
    "bad_ids_null_element": '{"input_ids": [1, null]}\n',
    "bad_labels_short": '{"input_ids": [1, 2, 3], "labels": [1, 2]}\n',
    "bad_labels_minus_101": '{"input_ids": [1, 2], "labels": [-101, 2]}\n',
    "bad_labels_object": '{"input_ids": [1, 2], "labels": {"a": 1}}\n',
    "bad_second_line_broken": '{"input_ids": [1, 2]}\n{"input_ids": [1, 2]\n',
    "bad_long_line_last_bad": '{"input_ids": [' + ", ".join(str(rnd.randrange(256)) for _ in range(5000)) + ', 999]}\n',
    "bad_duplicate_key": '{"input_ids": [1], "input_ids": [999]}\n',
    "bad_duplicate_key_nested": '{"input_ids": [1], "meta": {"a": 1, "a": 2}}\n',
    "any_no_trailing_newline": '{"input_ids": [1, 2]}',
}
for k, v in J.items():
    out("jsonl", k + ".jsonl", v)

# ---------------------------------------------------------------- adapters
def lora_name(layer, t, b):
    blk = "self_attn" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return "base_model.model.model.layers.%d.%s.%s.lora_%s.weight" % (layer, blk, t, "B" if b else "A")


def adapter_st(tensors):
    hdr, data, off = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, dt, shape, payload in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(payload)]}
        data += payload
        off += len(payload)
    return st_bytes(hdr, data)


acfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}
qa = (lora_name(0, "q_proj", 0), "F32", [2, 8], f32([0.1] * 16))
qb = (lora_name(0, "q_proj", 1), "F32", [8, 2], f32([0.0] * 16))


def adapter(name, config, tensors, raw_config=None):
    d = os.path.join("adapter", name)
    out(d, "adapter_config.json", raw_config if raw_config is not None else json.dumps(config))
    if tensors is not None:
        out(d, "adapter_model.safetensors", tensors if isinstance(tensors, bytes) else adapter_st(tensors))


def ac(**kw):
    d = dict(acfg)
    for k, v in kw.items():
        if v is ...:
            d.pop(k, None)
        else:
            d[k] = v
    return d


adapter("ok_q_proj", acfg, [qa, qb])
adapter("bad_no_safetensors", acfg, None)
adapter("bad_config_not_json", None, [qa, qb], raw_config="{peft_type: LORA}")
adapter("bad_config_deep", None, [qa, qb], raw_config="[" * 20000 + "]" * 20000)
adapter("bad_config_invalid_utf8", None, [qa, qb], raw_config=b'{"peft_type": "LO\xffRA", "r": 2}')
adapter("bad_peft_type_prefix", ac(peft_type="PREFIX_TUNING"), [qa, qb])
adapter("bad_r_zero", ac(r=0), [qa, qb])
adapter("bad_r_huge", ac(r=2**40), [qa, qb])
adapter("bad_r_string", ac(r="2"), [qa, qb])
adapter("bad_alpha_negative", ac(lora_alpha=-4), [qa, qb])
adapter("bad_alpha_missing", ac(lora_alpha=...), [qa, qb])
adapter("bad_targets_regex", ac(target_modules=".*q_proj"), [qa, qb])
adapter("bad_targets_unknown", ac(target_modules=["c_attn"]), [qa, qb])
adapter("bad_targets_empty", ac(target_modules=[]), [qa, qb])
adapter("bad_dora", ac(use_dora=True), [qa, qb])
adapter("bad_rank_pattern", ac(rank_pattern={"q_proj": 4}), [qa, qb])
adapter("bad_a_without_b", acfg, [qa])
adapter("bad_wrong_rank_shape", acfg, [(qa[0], "F32", [3, 8], f32([0.1] * 24)), qb])
adapter("bad_three_dims", acfg, [(qa[0], "F32", [2, 8, 1], f32([0.1] * 16)), qb])
adapter("bad_dtype_i8", acfg, [(qa[0], "I8", [2, 8], bytes(16)), qb])
adapter("bad_untargeted_tensor", acfg, [qa, qb, (lora_name(0, "v_proj", 0), "F32", [2, 8], f32([0] * 16)),
                                        (lora_name(0, "v_proj", 1), "F32", [4, 2], f32([0] * 8))])
adapter("bad_foreign_tensor", acfg, [qa, qb, ("model.embed_tokens.weight", "F32", [2, 2], f32([0] * 4))])
adapter("bad_layer_huge", acfg, [(lora_name(99999999999, "q_proj", 0), "F32", [2, 8], f32([0] * 16)), qb])
adapter("bad_layer_leading_zero", acfg, [(lora_name(0, "q_proj", 0).replace("layers.0", "layers.00"), "F32", [2, 8], f32([0] * 16)), qb])
adapter("bad_truncated_safetensors", acfg, adapter_st([qa, qb])[:-10])
adapter("bad_empty_safetensors", acfg, st_bytes({}))
adapter("any_nan_weights", acfg, [(qa[0], "F32", [2, 8], f32([float("nan")] * 16)), qb])

# ---------------------------------------------------------------- tokenizer.json
bpe = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": {"type": "ByteLevel",
       "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, "post_processor": None,
       "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
       "merges": ["a b"]}}


def tok(**kw):
    d = json.loads(json.dumps(bpe))
    for k, v in kw.items():
        d[k] = v
    return json.dumps(d)


TK = {
    "any_minimal_bpe": tok(),
    "bad_empty": "",
    "bad_not_object": "[]",
    "bad_deep": "[" * 20000 + "]" * 20000,
    "bad_model_missing": tok(model=None),
    "bad_model_wordpiece": tok(model={"type": "WordPiece", "vocab": {"a": 0}}),
    "bad_vocab_not_object": tok(model={"type": "BPE", "vocab": [1, 2], "merges": []}),
    "bad_vocab_negative_id": tok(model={"type": "BPE", "vocab": {"a": -1}, "merges": []}),
    "bad_vocab_huge_id": tok(model={"type": "BPE", "vocab": {"a": 2**40}, "merges": []}),
    "any_merges_unknown_token": tok(model={"type": "BPE", "vocab": {"a": 0}, "merges": ["x y"]}),
    "bad_merges_not_list": tok(model={"type": "BPE", "vocab": {"a": 0}, "merges": "a b"}),
    "bad_added_token_not_object": tok(added_tokens=[1, 2]),
    "bad_pre_tokenizer_unknown": tok(pre_tokenizer={"type": "Whatever"}),
    "bad_split_regex_invalid": tok(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(((("}, "behavior": "Isolated",
                                                  "invert": False}),
    "bad_normalizer_unknown": tok(normalizer={"type": "NFKD"}),
    "any_invalid_utf8_vocab": tok().replace('"ab": 2', '"\udcff": 2'),
    "any_dup_vocab_ids": tok(model={"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}),
    # fuzz_tokenizer regression: an unknown Split behavior leaked the compiled regex (LeakSanitizer)
    "bad_fuzz_leak_split_behavior": tok(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a+)+b"},
                                                       "behavior": "Weird", "invert": False}),
    "any_regex_catastrophic": tok(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a+)+b"},
                                                 "behavior": "Isolated", "invert": False}),
}
for k, v in TK.items():
    out("tokenizer", k + ".json", v.encode("utf-8", "surrogateescape"))

# ---------------------------------------------------------------- tiny models with NaN/Inf weights
mcfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        "max_position_embeddings": 64, "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
shapes = {"model.embed_tokens.weight": [16, 8], "model.norm.weight": [8],
          "model.layers.0.input_layernorm.weight": [8], "model.layers.0.post_attention_layernorm.weight": [8],
          "model.layers.0.self_attn.q_proj.weight": [8, 8], "model.layers.0.self_attn.k_proj.weight": [4, 8],
          "model.layers.0.self_attn.v_proj.weight": [4, 8], "model.layers.0.self_attn.o_proj.weight": [8, 8],
          "model.layers.0.mlp.gate_proj.weight": [16, 8], "model.layers.0.mlp.up_proj.weight": [16, 8],
          "model.layers.0.mlp.down_proj.weight": [8, 16]}


def model(name, poison):
    d = os.path.join("model_nan", name)
    out(d, "config.json", json.dumps(mcfg))
    hdr, data, off = {}, b"", 0
    for n in sorted(shapes):
        cnt = 1
        for s in shapes[n]:
            cnt *= s
        vals = [1.0] * cnt if "norm" in n else [rnd.gauss(0, 0.2) for _ in range(cnt)]
        if n in poison:
            vals = poison[n](vals)
        p = f32(vals)
        hdr[n] = {"dtype": "F32", "shape": shapes[n], "data_offsets": [off, off + len(p)]}
        data += p
        off += len(p)
    out(d, "model.safetensors", st_bytes(hdr, data))


def first(x):
    return lambda v: [x] + v[1:]


model("nan_final_norm", {"model.norm.weight": first(float("nan"))})
model("nan_embedding_all", {"model.embed_tokens.weight": lambda v: [float("nan")] * len(v)})
model("nan_inf_q_proj", {"model.layers.0.self_attn.q_proj.weight": first(float("inf"))})
model("nan_down_proj", {"model.layers.0.mlp.down_proj.weight": lambda v: [float("nan") if i % 3 == 0 else x for i, x in enumerate(v)]})
model("nan_input_norm_neg_inf", {"model.layers.0.input_layernorm.weight": first(-float("inf"))})
out("model_nan", "data.jsonl", "".join(json.dumps({"input_ids": [rnd.randrange(16) for _ in range(12)]}) + "\n"
                                      for _ in range(8)))
