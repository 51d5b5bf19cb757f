#!/usr/bin/env bash
# W1 side by side: the engine's criterion benchmark (benches/w1_mlp.rs) and PyTorch's eager baseline
# (../shared/bench/torch_baseline.py) in the same run on the same machine, 2 threads each.
# Prints steps/s of both and the ratio. Needs PyTorch: python3 -m venv /tmp/torchenv &&
# /tmp/torchenv/bin/pip install torch numpy scikit-learn   (or set TORCH_PYTHON / TORCH_BASELINE).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${TORCH_PYTHON:-/tmp/torchenv/bin/python}
baseline=${TORCH_BASELINE:-../shared/bench/torch_baseline.py}

cargo bench --bench w1_mlp -- --noplot >/tmp/w1_engine_bench.txt 2>&1 || { cat /tmp/w1_engine_bench.txt; exit 1; }
grep -A3 "train_step_b128" /tmp/w1_engine_bench.txt | head -4
est=target/criterion/w1_mlp/train_step_b128/new/estimates.json
engine_sps=$(python3 -c "import json; print(1e9 / json.load(open('$est'))['median']['point_estimate'])")
torch_sps=$("$py" "$baseline" --one w1_mlp --mode eager --threads 2 | sed -n 's/^RESULT //p' | python3 -c "import json,sys; print(json.load(sys.stdin)['steps_per_s_median'])")
python3 - "$engine_sps" "$torch_sps" <<'PY'
import sys
e, t = map(float, sys.argv[1:])
print(f"W1 784-512-512-10 AdamW batch 128, 2 threads")
print(f"  engine  {e:8.1f} steps/s  {e*128:9.0f} samples/s")
print(f"  pytorch {t:8.1f} steps/s  {t*128:9.0f} samples/s")
print(f"  ratio engine/pytorch = {e/t:.2f}x")
PY
