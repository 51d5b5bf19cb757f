"""Generates kernels/tests/fixtures/fake_quant_torch.json: seeded inputs, upstream gradients and PyTorch's
fake-quantization outputs and input gradients (zero point 0, quant_min -128, quant_max 127), the reference
of kernels/src/quant/fake_quant.rs's tests.

Run with /tmp/torchenv/bin/python kernels/tests/scripts/fake_quant_fixture.py. Every float array is a hex
string of little-endian float32 so the Rust test compares bits without a float parser in between.
"""

import json
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "fake_quant_torch.json")


def hexf(t):
    return t.detach().contiguous().numpy().astype("<f4").tobytes().hex()


def inputs(gen, shape, scale_hint):
    x = torch.randn(shape, generator=gen) * 60.0 * scale_hint
    flat = x.view(-1)
    # Exact ties and the saturation edges, in units of the scale: k + 0.5, +-127.5, -128.5, beyond.
    special = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.4, 127.5, 127.6, 128.0, -127.5, -128.0,
                            -128.4, -128.5, -128.6, -129.0, 300.0, -300.0, 0.0, -0.0])
    flat[: special.numel()] = special * scale_hint
    return x


def main():
    gen = torch.Generator().manual_seed(1234)
    out = {"per_tensor": [], "per_channel": []}
    for scale in [0.05, 0.0123, 1.0 / 127.0, 3.7]:
        x = inputs(gen, (1000,), scale).requires_grad_(True)
        dy = torch.randn(1000, generator=gen)
        y = torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)
        y.backward(dy)
        out["per_tensor"].append({"scale": scale, "scale_f32": hexf(torch.tensor([scale])), "x": hexf(x),
                                  "dy": hexf(dy), "y": hexf(y), "dx": hexf(x.grad)})
    for shape, axis in [((6, 3, 3, 3), 0), ((4, 5, 7), 1), ((8, 33), 0)]:
        c = shape[axis]
        scales = (torch.rand(c, generator=gen) * 0.1 + 0.001).float()
        x = (torch.randn(shape, generator=gen) * 40.0 * scales.view([-1 if i == axis else 1 for i in range(len(shape))]))
        x = x.requires_grad_(True)
        dy = torch.randn(shape, generator=gen)
        y = torch.fake_quantize_per_channel_affine(x, scales, torch.zeros(c, dtype=torch.int32), axis, -128, 127)
        y.backward(dy)
        inner = 1
        for s in shape[axis + 1:]:
            inner *= s
        out["per_channel"].append({"shape": list(shape), "axis": axis, "inner": inner, "scales": hexf(scales),
                                   "x": hexf(x), "dy": hexf(dy), "y": hexf(y), "dx": hexf(x.grad)})
    with open(OUT, "w") as f:
        json.dump(out, f)
    print("torch", torch.__version__, "->", OUT)


if __name__ == "__main__":
    main()
