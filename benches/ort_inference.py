"""onnxruntime CPU inference throughput of exported models, for side-by-side figures with `engine quantize
--bench` (benches/int8_inference.sh): one batch of the digits val inputs, repeated for about SECONDS.

usage: ort_inference.py SECONDS BATCH THREADS MODEL.onnx [MODEL.onnx ...]
"""
import sys
import time

import numpy as np
import onnxruntime as ort


def rate(path, x, threads, secs):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess.run(["output"], {"input": x})
    iters, t = 0, time.perf_counter()
    while time.perf_counter() - t < secs or iters < 3:
        sess.run(["output"], {"input": x})
        iters += 1
    return iters * x.shape[0] / (time.perf_counter() - t)


def main():
    secs, batch, threads = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    x = np.load("data/digits/val_x.npy").astype(np.float32)[:batch]
    for path in sys.argv[4:]:
        print(f"onnxruntime {path}: {rate(path, x, threads, secs):.1f} samples/s (batch {batch}, {threads} threads)")


if __name__ == "__main__":
    main()
