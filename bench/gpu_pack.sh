#!/bin/bash
# gpu_pack.sh — for the lent GPU machine, which has CUDA but not the host libraries UnSwag links
# (OpenBLAS, cJSON, PCRE2, ...): builds `make gpu-build` in a clean worktree of HEAD (other
# people's uncommitted work stays out) and packs the binaries with the non-system shared
# libraries they need into .gpu/pack.tar.xz (ignore /.gpu/ in .git/info/exclude; name .gpu in
# the call's carry). On the machine:
#   mkdir -p /tmp/g build && tar -C /tmp/g -xJf .gpu/pack.tar.xz && cp /tmp/g/bin/* build/
#   export LD_LIBRARY_PATH=/tmp/g/lib:/usr/local/cuda/lib64
#   build/unswag_gpu_tests && bash bench/gpu_bench.sh /tmp/b
set -euo pipefail
root=$(git rev-parse --show-toplevel)
wt=${GPU_WORKTREE:-/tmp/unswag-gpu-wt}
[ -d "$wt" ] || git -C "$root" worktree add --detach "$wt" HEAD >/dev/null
git -C "$wt" checkout -q -f --detach "$(git -C "$root" rev-parse HEAD)" # its own tree: nothing there to keep
make -C "$wt" -j"$(nproc)" gpu-build >/dev/null
stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/lib"
cp "$wt"/build/unswag "$wt"/build/unswag_gpu_tests "$wt"/build/unswag_gpu_bench "$wt"/build/gemm_load "$stage/bin/"
ldd "$wt"/build/unswag "$wt"/build/unswag_gpu_tests | awk '/=> \// {print $3}' | sort -u |
    grep -vE '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libgomp|ld-linux)[.-]|/cuda' |
    while read -r l; do cp -L "$l" "$stage/lib/"; done
mkdir -p "$root/.gpu"
tar -C "$stage" -cJf "$root/.gpu/pack.tar.xz" bin lib
rm -rf "$stage"
ls -la "$root/.gpu/pack.tar.xz"
