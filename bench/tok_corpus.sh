#!/usr/bin/env bash
# tok_corpus.sh OUT — builds the tokenizer benchmark text: the parity test's 10,240 generated strings
# (many scripts, emoji, code, whitespace) as plain lines, then UnSwag's own C sources and the
# transformers.js tokenizer source (code with English comments). Deterministic.
set -euo pipefail
out=${1:-build/tok_corpus.txt}
mkdir -p "$(dirname "$out")"
US_TOK_STRINGS_OUT=/tmp/us_tok_strings.$$ build/unswag_tests tok_parity_llama2 >/dev/null 2>&1 || true
node -e 'const fs=require("fs");for(const l of fs.readFileSync(process.argv[1],"utf8").split("\n"))if(l)process.stdout.write(JSON.parse(l)+"\n")' /tmp/us_tok_strings.$$ > "$out"
cp /tmp/us_tok_strings.$$ "$(dirname "$out")/tok_strings.jsonl"
rm -f /tmp/us_tok_strings.$$
find src -name '*.[ch]' | sort | xargs cat >> "$out"
cat tests/tok/node_modules/@lenml/tokenizers/src/tokenizers/tokenizers.js >> "$out"
ls -la "$out"
