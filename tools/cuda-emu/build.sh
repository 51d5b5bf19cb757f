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
flags=(-std=c++20 -O2 -g -fPIC -shared -pthread -static-libstdc++ -static-libgcc -ffp-contract=off -fno-fast-math -I"$here/include")
"${CXX:-g++}" "${flags[@]}" -o "$out/libcuda.so.1" "$here/driver.cpp" "$out/kernels.cpp"
"${CXX:-g++}" "${flags[@]}" -o "$out/libcublas.so.12" "$here/cublas.cpp"
"${CXX:-g++}" "${flags[@]}" -o "$out/libnccl.so.2" "$here/nccl.cpp"
ln -sf libcuda.so.1 "$out/libcuda.so"
ln -sf libcublas.so.12 "$out/libcublas.so"
ln -sf libnccl.so.2 "$out/libnccl.so"
echo "cuda-emu built in $out"
