#!/usr/bin/env bash
# Installs what UnSwag needs on a Debian machine (idempotent: only what is missing).
#   scripts/deps.sh          build and test: the libraries, clang (fuzzing), valgrind, node/npm,
#                            then every tests/*/deps.sh (npm tokenizer references, Chromium)
#   scripts/deps.sh --core   only what building and running unswag needs (make demo)
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(build-essential pkg-config libopenblas-openmp-dev libcjson-dev libpcre2-dev libyaml-dev)
[ "${1:-}" = --core ] || pkgs+=(clang valgrind nodejs npm)
need=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
# node/npm may come from elsewhere than Debian (e.g. a nodesource build): a working npm suffices
if command -v npm >/dev/null; then
    keep=(); for p in "${need[@]}"; do [ "$p" = nodejs ] || [ "$p" = npm ] || keep+=("$p"); done
    need=("${keep[@]+"${keep[@]}"}")
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "deps: installing ${need[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ "${1:-}" = --core ] && exit 0
for d in tests/*/deps.sh; do
    [ -f "$d" ] && bash "$d"
done
exit 0
