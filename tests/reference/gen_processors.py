"""Writes processors.json: torchvision's outputs for the deterministic parts of the image processors.

Run with the fixture environment (torch 2.15, torchvision 0.29):
    /tmp/torchenv/bin/python tests/reference/gen_processors.py

Every case names an input image, the operation with its parameters (as the Rust test replays them) and
torchvision's output. Images are float32; values are written with 9 significant digits, which round-trip an f32
exactly, so the Rust side compares against torchvision's own f32 results.
"""

import json
import os
import platform

import numpy as np
import torch
import torchvision
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional import InterpolationMode as IM

torch.manual_seed(5)
rng = np.random.default_rng(5)


def f32_list(t):
    return [float("%.9g" % v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def rgb_test_image():
    # Small RGB image with the cases the HSV conversion branches on: gray pixels (max == min), ties of the
    # largest channel (r == g, g == b, r == b), black and white, values on a coarse grid and random values.
    img = torch.rand(3, 6, 7)
    grid = torch.tensor(rng.integers(0, 5, size=(3, 2, 7)) / 4.0, dtype=torch.float32)
    img[:, :2, :] = grid
    img[:, 2, 0] = 0.5  # gray
    img[:, 2, 1] = 0.0  # black
    img[:, 2, 2] = 1.0  # white
    img[:, 2, 3] = torch.tensor([0.8, 0.8, 0.2])  # r == g max
    img[:, 2, 4] = torch.tensor([0.1, 0.7, 0.7])  # g == b max
    img[:, 2, 5] = torch.tensor([0.6, 0.3, 0.6])  # r == b max
    return img


images = {
    "A": torch.rand(3, 13, 17),
    "B": torch.rand(1, 9, 7),
    "C": rgb_test_image(),
    # Byte-valued image for to_float.
    "U": torch.tensor(rng.integers(0, 256, size=(1, 5, 6)), dtype=torch.float32),
}

cases = []


def add(group, image, params, out):
    cases.append({"group": group, "image": image, "params": params, "shape": list(out.shape), "out": f32_list(out)})


MODES = {"bilinear": IM.BILINEAR, "bicubic": IM.BICUBIC, "nearest": IM.NEAREST}

# resize: downscale, upscale, one axis only, mixed; int (smaller edge) and [h, w] sizes.
resize_sizes = {"A": [[6, 8], 9, [5, 17], [13, 7], [20, 9]], "B": [[16, 12], 12, [4, 11]]}
for mode in ["bilinear", "bicubic", "nearest"]:
    for aa in [True, False] if mode != "nearest" else [False]:
        for name, sizes in resize_sizes.items():
            for size in sizes:
                out = F.resize(images[name], size if isinstance(size, list) else [size], interpolation=MODES[mode],
                               antialias=aa)
                group = f"resize_{mode}" + ("_aa" if aa else "")
                add(group, name, {"size": size, "interpolation": mode, "antialias": aa}, out)

# center_crop: smaller than the image (odd margins: rounding of the anchor), larger (zero padding), mixed.
for name, size in [("A", [8, 10]), ("A", [16, 20]), ("A", [10, 20]), ("A", [12, 16]), ("B", 5), ("B", [12, 4])]:
    out = F.center_crop(images[name], size if isinstance(size, list) else [size])
    add("center_crop", name, {"size": size}, out)

# resized_crop: box (top, left, height, width) -> size, antialias on as RandomResizedCrop does.
for name, box, size, mode in [
    ("A", [2, 3, 7, 9], [8, 8], "bilinear"),
    ("A", [0, 0, 13, 17], [6, 6], "bilinear"),
    ("A", [4, 1, 5, 12], [10, 10], "bilinear"),
    ("A", [1, 2, 11, 12], [5, 4], "bicubic"),
    ("A", [3, 3, 6, 6], [6, 6], "bilinear"),
    ("B", [1, 0, 8, 7], [4, 4], "bicubic"),
]:
    out = F.resized_crop(images[name], *box, size=size, interpolation=MODES[mode], antialias=True)
    add("resized_crop", name, {"box": box, "size": size, "interpolation": mode}, out)

# Flips.
add("flip", "A", {"axis": "horizontal"}, F.horizontal_flip(images["A"]))
add("flip", "B", {"axis": "horizontal"}, F.horizontal_flip(images["B"]))
add("flip", "B", {"axis": "vertical"}, F.vertical_flip(images["B"]))

# pad (left, top, right, bottom) in every mode, then a crop (top, left, height, width) of the padded image.
for mode in ["constant", "edge", "reflect", "symmetric"]:
    fill = 0.25 if mode == "constant" else 0.0
    padded = F.pad(images["B"], [2, 1, 3, 4], fill=fill, padding_mode=mode)
    add("pad_crop", "B", {"padding": [2, 1, 3, 4], "mode": mode, "fill": fill, "crop": [0, 0, 14, 12]}, padded)
    padded = F.pad(images["A"], [4, 3, 5, 2], fill=fill, padding_mode=mode)
    for crop in [[0, 0, 7, 9], [11, 17, 7, 9]]:
        out = F.crop(padded, *crop)
        add("pad_crop", "A", {"padding": [4, 3, 5, 2], "mode": mode, "fill": fill, "crop": crop}, out)

# Colour adjustments with given factors (clamping to [0, 1] included).
for f in [0.6, 1.4]:
    add("brightness", "C", {"factor": f}, F.adjust_brightness(images["C"], f))
add("brightness", "B", {"factor": 1.7}, F.adjust_brightness(images["B"], 1.7))
for name, f in [("C", 0.5), ("C", 1.5), ("B", 0.7), ("A", 1.9)]:
    add("contrast", name, {"factor": f}, F.adjust_contrast(images[name], f))
for f in [0.0, 0.3, 1.8]:
    add("saturation", "C", {"factor": f}, F.adjust_saturation(images["C"], f))
for name, f in [("C", -0.3), ("C", 0.1), ("C", 0.45), ("C", -0.5), ("A", 0.23)]:
    add("hue", name, {"factor": f}, F.adjust_hue(images[name], f))
# ColorJitter's transform with fixed parameters: the ops in the given order.
for order, b, c, s, h in [([3, 0, 2, 1], 1.2, 0.8, 1.3, -0.1), ([1, 2, 0, 3], 0.7, 1.4, 0.5, 0.2)]:
    out = images["C"]
    for fn in order:
        out = [F.adjust_brightness(out, b), F.adjust_contrast(out, c), F.adjust_saturation(out, s),
               F.adjust_hue(out, h)][fn]
    add("color_jitter", "C", {"order": order, "brightness": b, "contrast": c, "saturation": s, "hue": h}, out)

# normalize: per channel and one value for all; to_float as ToTensor on bytes.
add("normalize", "C", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    F.normalize(images["C"], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
add("normalize", "B", {"mean": [0.5], "std": [0.25]}, F.normalize(images["B"], mean=[0.5], std=[0.25]))
hwc_bytes = images["U"].to(torch.uint8).permute(1, 2, 0).numpy()
add("to_float", "U", {}, torchvision.transforms.ToTensor()(hwc_bytes))

doc = {
    "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
                 "python": platform.python_version()},
    "images": {k: {"shape": list(v.shape), "data": f32_list(v)} for k, v in images.items()},
    "cases": cases,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "processors.json")
with open(path, "w") as f:
    json.dump(doc, f, separators=(",", ":"))
print(f"wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes")
