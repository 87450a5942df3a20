#!/usr/bin/env bash
# Installs what UnSwag needs on a Debian machine (idempotent: only what is missing), then runs
# every tests/*/deps.sh (e.g. the npm packages the tokenizer tests compare against).
set -euo pipefail
need=()
for p in build-essential pkg-config libopenblas-openmp-dev libcjson-dev libpcre2-dev libyaml-dev clang valgrind; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "deps: installing ${need[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
for d in tests/*/deps.sh; do
    [ -f "$d" ] && bash "$d"
done
exit 0
