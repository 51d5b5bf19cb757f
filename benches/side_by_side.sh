#!/usr/bin/env bash
# Side by side: the engine's criterion train-step benchmark (benches/train_step.rs) and PyTorch's eager
# baseline (../shared/bench/torch_baseline.py) in the same run on the same machine, 2 threads each.
# usage: benches/side_by_side.sh [w1_mlp|w2_cnn|w3_vit]   (default w1_mlp)
# Needs PyTorch: python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy scikit-learn
# (or set TORCH_PYTHON / TORCH_BASELINE).
set -euo pipefail
cd "$(dirname "$0")/.."
workload=${1:-w1_mlp}
batch=128
[ "$workload" = w3_vit ] && batch=64
py=${TORCH_PYTHON:-/tmp/torchenv/bin/python}
baseline=${TORCH_BASELINE:-../shared/bench/torch_baseline.py}

log=/tmp/side_by_side_$workload.txt
cargo bench --bench train_step -- "$workload/" --noplot >"$log" 2>&1 || { cat "$log"; exit 1; }
grep -A1 "^$workload/train_step_b$batch" "$log" | head -2
est=target/criterion/$workload/train_step_b$batch/new/estimates.json
engine_sps=$(python3 -c "import json; print(1e9 / json.load(open('$est'))['median']['point_estimate'])")
torch_sps=$("$py" "$baseline" --one "$workload" --mode eager --threads 2 | sed -n 's/^RESULT //p' \
  | python3 -c "import json,sys; print(json.load(sys.stdin)['steps_per_s_median'])")
python3 - "$workload" "$engine_sps" "$torch_sps" "$batch" <<'PY'
import sys
w, e, t, b = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(f"{w}, batch {b}, 2 threads")
print(f"  engine  {e:8.1f} steps/s  {e*b:9.0f} samples/s")
print(f"  pytorch {t:8.1f} steps/s  {t*b:9.0f} samples/s")
print(f"  ratio engine/pytorch = {e/t:.2f}x")
PY
