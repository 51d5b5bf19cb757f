#!/usr/bin/env bash
# Builds and runs cuda-emu's own test (selftest.cpp): right kernels give right results, and each bug the
# emulator promises to catch (out-of-bounds access, divergent barrier, shuffle from an exited lane, bad launch
# geometry) is caught. usage: tools/cuda-emu/selftest.sh [BUILD_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
"${CXX:-g++}" -std=c++20 -O1 -g -pthread -ffp-contract=off -I"$here/include" -o "$out/cuda-emu-selftest" \
    "$here/driver.cpp" "$here/selftest.cpp"
"$out/cuda-emu-selftest"
