#!/usr/bin/env bash
# Builds and runs cuda-emu's own tests: right kernels give right results, and each bug the emulator promises
# to catch (out-of-bounds access, divergent barrier, shuffle from an exited lane, bad launch geometry, a host
# access to pinned memory a queued copy still uses, and with
# instrumented kernels each kind of race) is caught (selftest.cpp); its cuBLAS computes the type combinations
# cuBLAS supports and refuses the rest (selftest_cublas.cpp). usage: tools/cuda-emu/selftest.sh [BUILD_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
cxx="${CXX:-g++}"
flags=(-std=c++20 -O1 -g -pthread -ffp-contract=off -I"$here/include")
"$cxx" "${flags[@]}" -o "$out/cuda-emu-selftest" "$here/driver.cpp" "$here/racecheck.cpp" "$here/order.cpp" "$here/selftest.cpp"
"$out/cuda-emu-selftest"
# The race check: the same cases with instrumented kernels (as build.sh's racecheck driver), plus its own.
"$cxx" "${flags[@]}" -fsanitize=thread --param=tsan-instrument-func-entry-exit=0 -DEMU_RACECHECK_SELFTEST \
    -c -o "$out/selftest-race.o" "$here/selftest.cpp"
"$cxx" "${flags[@]}" -o "$out/cuda-emu-selftest-race" "$here/driver.cpp" "$here/racecheck.cpp" "$here/order.cpp" "$out/selftest-race.o"
"$out/cuda-emu-selftest-race"
# The cuBLAS stand-in alone: supported type combinations compute, the rest are refused as cuBLAS refuses them.
"$cxx" "${flags[@]}" -o "$out/cuda-emu-selftest-cublas" "$here/cublas.cpp" "$here/selftest_cublas.cpp" -ldl
"$out/cuda-emu-selftest-cublas"
