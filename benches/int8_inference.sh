#!/usr/bin/env bash
# Float vs int8 CPU inference for the digits CNN and ViT, side by side in one run: the engine's f32 forward,
# the engine's int8 forward (`engine quantize --bench`) and onnxruntime on the exported float and QDQ models,
# all on one batch of 64 val inputs with 2 threads. Also prints the float and int8 val accuracies.
# usage: benches/int8_inference.sh [SECONDS per measurement, default 3]   (needs pip onnxruntime)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-3}"
OUT="${ECSTRAIN_BENCH_DIR:-/tmp/ecstrain-int8-bench}"
cargo build --release --quiet
E=target/release/engine
for m in cnn vit; do
    cfg="configs/digits_$m.yaml"
    run="run.save_dir=$OUT/$m"
    rm -rf "$OUT/$m"
    "$E" --config "$cfg" --set "$run" --set run.threads=2 --headless > "$OUT.$m.train.log"
    "$E" export --config "$cfg" --set "$run" --checkpoint best --out "$OUT/$m.onnx"
    "$E" quantize --config "$cfg" --set "$run" --set run.threads=2 --checkpoint best --method entropy \
        --bench "$SECS" --out "$OUT/${m}_int8.onnx"
    python3 benches/ort_inference.py "$SECS" 64 2 "$OUT/$m.onnx" "$OUT/${m}_int8.onnx"
done
