#!/usr/bin/env bash
# Peak RSS of a training run on a 2 GiB memory-mapped .npy data set (issue 5): the data set is generated here
# (not stored in the repo), then `engine` trains one full pass over it (an MLP on [N, 784] uint8 rows,
# every sample read once) under /usr/bin/time, which reports the peak RSS.
#   benches/memory_2gib.sh [DIR]   (default DIR: /tmp/ecstrain_mem2g; needs python3 with numpy)
set -euo pipefail
DIR=${1:-/tmp/ecstrain_mem2g}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$DIR"
if [ ! -f "$DIR/x.npy" ]; then
  "$PY" - "$DIR" <<'PY'
import sys, numpy as np
d = sys.argv[1]
n = 2_740_000                                   # 2_740_000 * 784 B = 2.0 GiB
x = np.lib.format.open_memmap(f"{d}/x.npy", mode="w+", dtype=np.uint8, shape=(n, 784))
rng = np.random.default_rng(0)
for s in range(0, n, 100_000):
    e = min(n, s + 100_000)
    x[s:e] = rng.integers(0, 256, size=(e - s, 784), dtype=np.uint8)
x.flush()
np.save(f"{d}/y.npy", rng.integers(0, 10, size=n).astype(np.int64))
PY
fi
ls -l "$DIR/x.npy"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
cat > "$DIR/mem.yaml" <<YAML
model: {arch: mlp, input_size: 784, hidden_sizes: [64], output_size: 10}
datasets:
  big:
    builder: npy
    root: $DIR
    train: {x: x.npy, y: y.npy}
    processors: {train: [to_float]}
run: {epochs: 1, batch: 512, workers: 2, optimizer: SGD, lr0: 0.01, save_dir: $DIR/runs, exist_ok: true, log_interval: 1000, save_period: 0}
YAML
/usr/bin/time -v "$ROOT/target/release/engine" --config "$DIR/mem.yaml" --headless 2>"$DIR/time.txt" | tail -3
grep -E "Maximum resident|Elapsed" "$DIR/time.txt"
