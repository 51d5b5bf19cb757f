#!/usr/bin/env bash
# Builds cuda-emu: a CPU stand-in for the CUDA driver (libcuda.so.1), cuBLAS (libcublas.so.12) and NCCL
# (libnccl.so.2, between processes on one machine) that runs
# the engine's own kernel sources, so the GPU tests run on machines without a GPU (see README.md here).
#
# usage: tools/cuda-emu/build.sh [OUT_DIR]          (default: target/cuda-emu)
# then:  LD_LIBRARY_PATH=OUT_DIR:<NVRTC's lib folder> cargo test ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/target/cuda-emu}"
mkdir -p "$out/src"
(cd "$root" && cargo run -q -p ecstrain-kernels --example cuda_sources -- "$out/src")
python3 "$here/gen_kernels.py" "$out/src" "$out/kernels.cpp"
cxx="${CXX:-g++}"
common=(-std=c++20 -O2 -g -fPIC -pthread -ffp-contract=off -fno-fast-math -I"$here/include")
# -z defs: a hook the instrumented kernels call but racecheck.cpp lacks fails the build, not a test run.
link=(-shared -static-libstdc++ -static-libgcc -Wl,-z,defs)
# The kernels twice: plain, and with the race check's instrumentation (racecheck.cpp provides the hooks that
# -fsanitize=thread calls; ThreadSanitizer's own runtime is not linked). The tsan parameters drop the calls
# the check does not use.
race=(-fsanitize=thread --param=tsan-instrument-func-entry-exit=0)
"$cxx" "${common[@]}" -c -o "$out/driver.o" "$here/driver.cpp" &
"$cxx" "${common[@]}" -c -o "$out/racecheck.o" "$here/racecheck.cpp" &
"$cxx" "${common[@]}" -c -o "$out/order.o" "$here/order.cpp" &
"$cxx" "${common[@]}" -c -o "$out/kernels.o" "$out/kernels.cpp" &
"$cxx" "${common[@]}" "${race[@]}" -c -o "$out/kernels-race.o" "$out/kernels.cpp" &
wait
"$cxx" "${common[@]}" "${link[@]}" -o "$out/libcuda.so.1" "$out/driver.o" "$out/racecheck.o" "$out/order.o" "$out/kernels.o"
"$cxx" "${common[@]}" "${link[@]}" -o "$out/libcublas.so.12" "$here/cublas.cpp"
"$cxx" "${common[@]}" "${link[@]}" -o "$out/libnccl.so.2" "$here/nccl.cpp"
ln -sf libcuda.so.1 "$out/libcuda.so"
ln -sf libcublas.so.12 "$out/libcublas.so"
ln -sf libnccl.so.2 "$out/libnccl.so"
# OUT/racecheck: the same libraries with the race-checking driver (tools/cuda-emu/README.md, "Races").
mkdir -p "$out/racecheck"
"$cxx" "${common[@]}" "${link[@]}" -o "$out/racecheck/libcuda.so.1" "$out/driver.o" "$out/racecheck.o" \
    "$out/order.o" "$out/kernels-race.o"
ln -sf libcuda.so.1 "$out/racecheck/libcuda.so"
for lib in libcublas.so.12 libcublas.so libnccl.so.2 libnccl.so; do ln -sf "../$lib" "$out/racecheck/$lib"; done
echo "cuda-emu built in $out (race-checking driver in $out/racecheck)"
