#!/usr/bin/env bash
# Loader benchmark of issue 5, side by side in one run: `engine data bench` against PyTorch's DataLoader
# (benches/loader_torch.py) at the same number of workers, on
#   a: 28x28 uint8 .npy (memory-mapped) -> float / 255 -> normalize -> batches of 128   (configs/bench_loader_npy.yaml)
#   b: 64x64 PNG folder -> decode, random_resized_crop 56, flip, normalize -> batches of 64 (configs/bench_loader_images.yaml)
#   benches/loader_side_by_side.sh [a|b|all] [WORKERS]     (PYTHON: a python with torch + torchvision)
set -euo pipefail
CASE=${1:-all}
W=${2:-2}
PY=${PYTHON:-/tmp/torchenv/bin/python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-/tmp/ecstrain_loader_bench}
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
run_case() {
  local c=$1 cfg=$2
  [ -d "$DATA/$c" ] || "$PY" "$ROOT/benches/loader_torch.py" --make "$c" --data "$DATA/$c"
  echo "== case $c, workers $W"
  local e t
  e=$("$ROOT/target/release/engine" data bench --config "$ROOT/configs/$cfg" --set "datasets.bench.root=$DATA/$c" \
      --set "run.workers=$W" --epochs 2 | tail -1)
  t=$("$PY" "$ROOT/benches/loader_torch.py" --case "$c" --data "$DATA/$c" --workers "$W" --epochs 2)
  echo "engine : $e"
  echo "pytorch: $t"
  local es ts
  es=$(echo "$e" | sed -E 's/.*: ([0-9.]+) samples\/s.*/\1/')
  ts=$(echo "$t" | sed -E 's/.*"samples_per_s": ([0-9.]+).*/\1/')
  echo "ratio  : $(echo "$es $ts" | awk '{printf "%.2fx", $1 / $2}')"
}
case $CASE in
  a) run_case a bench_loader_npy.yaml ;;
  b) run_case b bench_loader_images.yaml ;;
  *) run_case a bench_loader_npy.yaml; run_case b bench_loader_images.yaml ;;
esac
