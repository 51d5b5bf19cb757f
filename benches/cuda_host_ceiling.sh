#!/usr/bin/env bash
# The host's ceiling of a CUDA training step: W1 / W2 / W3 (configs/bench_*.yaml) at batch 512 on cuda-emu with
# CUDA_EMU_NO_COMPUTE=1, so the GPU's work takes no time and steps/s is what the host alone allows (loading,
# staging, the schedule, the launches). Each binary given runs each workload REPEATS times, interleaved (these
# machines are noisy: compare only figures from one run of this script). Needs tools/cuda-emu built into
# target/cuda-emu and NVRTC (NVRTC_LIB: the folder of libnvrtc.so.12).
#   benches/cuda_host_ceiling.sh [ENGINE_BIN ...]        (REPEATS=3, EXTRA="--set run.workers=2" ...)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NVRTC_LIB=${NVRTC_LIB:-/tmp/ecstrain-ci-cuda/nvidia/cuda_nvrtc/lib}
[ $# -gt 0 ] || set -- "$ROOT/target/release/engine"
for r in $(seq "${REPEATS:-3}"); do
  for w in w1_mlp w2_cnn w3_vit; do
    for bin in "$@"; do
      d=$(mktemp -d)
      # shellcheck disable=SC2086 # EXTRA is a list of arguments
      CUDA_EMU_NO_COMPUTE=1 LD_LIBRARY_PATH="$ROOT/target/cuda-emu:$NVRTC_LIB" timeout 300 "$bin" \
        --config "$ROOT/configs/bench_$w.yaml" --set run.device=cuda --set run.batch=512 --set run.nbs=512 \
        --set run.epochs=2 --set datasets.synthetic.train_samples=51200 --set datasets.synthetic.val_samples=512 \
        --set run.save_dir="$d/run" ${EXTRA:-} > "$d/log" 2>&1 || { echo "$w $bin: failed (log $d/log)"; continue; }
      python3 - "$d/run/metrics.jsonl" "$w" "$bin" "$r" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [x for x in rows if x.get("split") == "train" and "samples_per_s" in x][-10:]
sps = statistics.median(x["samples_per_s"] for x in rows) / 512
wait = statistics.median(x["data_wait"] for x in rows) * 1e3
print(f"{sys.argv[2]:7} repeat {sys.argv[4]}  {sps:7.0f} steps/s  {1e3 / sps:6.3f} ms/step  data wait {wait:.3f} ms  {sys.argv[3]}")
PY
      rm -rf "$d"
    done
  done
done
