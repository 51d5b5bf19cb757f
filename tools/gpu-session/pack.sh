#!/usr/bin/env bash
# Builds, here, everything a lent GPU machine runs (it has no Rust toolchain), stripped into .gpu/ (ignored by
# git, carried with `carry: [".gpu"]`): the engine, the kernel crate's tests (every CUDA op against its CPU
# twin), tests/cuda_e2e.rs, tests/cuda_steady_state.rs, tests/cuda_device_loss.rs, tests/cuda_half_storage.rs,
# tests/cuda_memory.rs, tests/predict_e2e.rs (its CUDA case) and the criterion CUDA benchmarks, each stripped and gzipped. Then device calls run run.sh.
#
# usage: tools/gpu-session/pack.sh        (from anywhere; writes <repo>/.gpu)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="$root/.gpu"
rm -rf "$out" && mkdir -p "$out"
grep -qxF "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude

# Executables cargo reports for a build, as "name<TAB>path" lines.
built() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["executable"])'
}
take() { # name path: a stripped, gzipped copy into .gpu/ (the carry limit is 64 MiB; every test binary
    # links the whole engine, ~12 MiB stripped, ~4 compressed); run.sh unpacks them
    strip -o "$out/$1" "$2"
    gzip -9 -n "$out/$1"
    echo "packed $1 ($(du -h "$out/$1.gz" | cut -f1) gzipped)"
}

cargo build --release --bin engine --message-format=json | built | while IFS=$'\t' read -r name path; do
    [ "$name" = engine ] && take engine "$path"
done
cargo test --release --no-run -p ecstrain-kernels --lib --message-format=json | built | while IFS=$'\t' read -r _ path; do
    take kernel_tests "$path"
done
for t in cuda_e2e cuda_steady_state cuda_device_loss cuda_half_storage cuda_memory predict_e2e; do
    cargo test --release --no-run --test "$t" --message-format=json | built | while IFS=$'\t' read -r name path; do
        [ "$name" = "$t" ] && take "$t" "$path"
    done
done
cargo bench --no-run --bench cuda_kernels --message-format=json | built | while IFS=$'\t' read -r name path; do
    [ "$name" = cuda_kernels ] && take cuda_kernels_bench "$path"
done
# The shared PyTorch baseline's model definitions, for benches/torch_cuda_baseline.py there (../shared does
# not travel to the device machine).
cp ../shared/bench/torch_baseline.py "$out/" 2>/dev/null || echo "note: ../shared/bench/torch_baseline.py not found; the sbs step will lack PyTorch"
du -sh "$out"
