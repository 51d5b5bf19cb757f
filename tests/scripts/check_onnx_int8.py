"""Checks an int8 QDQ ONNX model: the ONNX checker accepts it, it holds QuantizeLinear / DequantizeLinear
nodes and int8 weight initializers, onnxruntime runs it, and its outputs agree with the engine's int8 outputs.

usage: check_onnx_int8.py MODEL.onnx INPUT.npy LABELS.npy ENGINE_INT8.npy|-   (`-`: accuracy only)

Two sessions: onnxruntime with every graph optimization (what a deployment runs: its QDQ fusions into int8
kernels, which round intermediate results their own way) gives `accuracy`; with optimizations off, the
QDQ graph computed as the ONNX spec defines it gives `max_rel_err` (max |ort - engine| / max |engine|) and
`argmax_agree` against the engine's int8 outputs, the check that the engine's int8 arithmetic is the
model's; `ort_spread` is the same measure between onnxruntime's two sessions. Prints `accuracy=...
max_rel_err=... argmax_agree=... optimized_rel_err=... ort_spread=...`.
Exits 1 when the structure is wrong.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model_path, input_path, labels_path, engine_path = sys.argv[1:5]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops or not int8_weights:
        print(f"not a QDQ model: ops {sorted(ops)}, {len(int8_weights)} int8 weight tensors")
        sys.exit(1)
    x = np.load(input_path).astype(np.float32)
    labels = np.load(labels_path).astype(np.int64)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (fast,) = sess.run(["output"], {"input": x})
    accuracy = float((fast.argmax(1) == labels).mean())
    if engine_path == "-":
        print(f"accuracy={accuracy:.6f}")
        return
    engine = np.load(engine_path).astype(np.float32)
    scale = float(np.abs(engine).max()) or 1.0
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model_path, plain, providers=["CPUExecutionProvider"])
    (got,) = ref.run(["output"], {"input": x})
    err = float(np.abs(got - engine).max()) / scale
    agree = float((got.argmax(1) == engine.argmax(1)).mean())
    fast_err = float(np.abs(fast - engine).max()) / scale
    # How far onnxruntime's own two evaluations are apart: the spread rounding alone causes.
    ort_spread = float(np.abs(fast - got).max()) / scale
    print(
        f"accuracy={accuracy:.6f} max_rel_err={err:.3e} argmax_agree={agree:.6f} optimized_rel_err={fast_err:.3e} "
        f"ort_spread={ort_spread:.3e}"
    )


if __name__ == "__main__":
    main()
