"""Generates kernels/tests/fixtures/calib_ort.json: seeded activation batches and ONNX Runtime's
calibration thresholds for them, the reference of kernels/src/quant/calibrate.rs's tests.

Run with ONNX Runtime importable (PYTHONPATH=/tmp/ortenv python3 kernels/tests/scripts/calib_fixture.py).
The batches are stored as hex strings of little-endian float32, so the Rust test reads the exact values
without Python. ORT's HistogramCollector is driven batch by batch exactly as its calibrators do:
- percentile, symmetric=True: histogram of |x| (collect_absolute_value), num_bins=2048, compute_percentile;
- entropy: the signed histogram (collect_value, used whatever `symmetric` is) with num_bins=4096 (2048 per
  side, the resolution of the Rust |x| histogram) and num_quantized_bins=255 (127 levels a side), then
  compute_entropy; the symmetric amax is max(|lo|, |hi|) of ORT's threshold pair.
"""

import json
import os

import numpy as np
from onnxruntime.quantization.calibrate import HistogramCollector

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "calib_ort.json")
BATCHES, BATCH = 4, 4096
PERCENTILES = [99.9, 99.99]


def distributions(rng):
    # Per-batch spreads grow and shrink so the histograms must extend their range mid-stream.
    spread = [1.0, 1.5, 0.8, 2.0]
    gauss = [rng.normal(0.0, s, BATCH).astype(np.float32) for s in spread]
    relu = [np.maximum(rng.normal(0.2, s, BATCH), 0.0).astype(np.float32) for s in spread]
    heavy = []
    for s in spread:
        b = (rng.standard_t(3, BATCH) * 0.5 * s).astype(np.float32)
        idx = rng.choice(BATCH, 4, replace=False)
        b[idx] = rng.choice([-1.0, 1.0], 4) * rng.uniform(20.0, 60.0, 4)
        heavy.append(b.astype(np.float32))
    return [("gaussian", gauss), ("relu_gaussian", relu), ("heavy_tailed_outliers", heavy)]


def ort_percentile(batches, p):
    c = HistogramCollector("percentile", True, 2048, 128, p, None)
    for b in batches:
        c.collect({"t": [b]})
    lo, hi = c.compute_collection_result()["t"][:2]
    return float(max(abs(lo), abs(hi)))


def ort_entropy(batches):
    c = HistogramCollector("entropy", True, 4096, 255, 99.99, None)
    for b in batches:
        c.collect({"t": [b]})
    lo, hi = c.compute_collection_result()["t"][:2]
    return float(max(abs(lo), abs(hi)))


def main():
    rng = np.random.default_rng(20240609)
    out = {"batch": BATCH, "distributions": []}
    for name, batches in distributions(rng):
        entry = {
            "name": name,
            "batches": [b.astype("<f4").tobytes().hex() for b in batches],
            "max": float(max(np.abs(b).max() for b in batches)),
            "percentile": [{"p": p, "amax": ort_percentile(batches, p)} for p in PERCENTILES],
            "entropy_amax": ort_entropy(batches),
        }
        print(name, entry["max"], entry["percentile"], entry["entropy_amax"])
        out["distributions"].append(entry)
    with open(OUT, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
