"""Checks an exported ONNX model: the ONNX checker (with shape inference) accepts it, onnxruntime runs it on
the given input, and its output matches the engine's within a relative tolerance.

usage: check_onnx.py MODEL.onnx INPUT.npy EXPECTED.npy RTOL [--batch-dynamic]

The error is measured against the output's scale: max |ort - engine| / max |engine|. Prints one line
`max_rel_err=<value> shape=<shape>`; exits 1 when the check fails.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model_path, input_path, expected_path, rtol = sys.argv[1:5]
    rtol = float(rtol)
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    x = np.load(input_path).astype(np.float32)
    want = np.load(expected_path).astype(np.float32)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["output"], {"input": x})
    if got.shape != want.shape:
        print(f"shape mismatch: onnxruntime {got.shape}, engine {want.shape}")
        sys.exit(1)
    # The batch dimension is dynamic: a batch of another size runs too.
    half = x[: max(1, x.shape[0] // 2)]
    (got_half,) = sess.run(["output"], {"input": half})
    if got_half.shape[0] != half.shape[0]:
        print(f"dynamic batch failed: batch {half.shape[0]} gave {got_half.shape}")
        sys.exit(1)
    scale = float(np.abs(want).max()) or 1.0
    err = float(np.abs(got - want).max()) / scale
    print(f"max_rel_err={err:.3e} shape={list(got.shape)}")
    sys.exit(0 if err <= rtol else 1)


if __name__ == "__main__":
    main()
