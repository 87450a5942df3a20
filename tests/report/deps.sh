#!/usr/bin/env bash
# Installs what the report test needs: headless Chromium (Debian package `chromium`, large, so it
# lives here rather than in scripts/deps.sh's core list; scripts/deps.sh runs this file) and
# python3 for the screenshot's pixel check. Idempotent: only what is missing.
set -euo pipefail
need=()
for p in chromium python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "deps: installing ${need[*]} (tests/report)"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
exit 0
