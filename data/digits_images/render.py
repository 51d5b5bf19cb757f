"""Renders data/digits/*.npy (8x8 grey digits in [0, 1]) as 16x16 PNG files, one folder per class:
train/<class>/<row>.png and val/<class>/<row>.png. Run from the repository root:
    python data/digits_images/render.py
Needs numpy and Pillow. The output is committed; this script documents how it was made."""
import os
import numpy as np
from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "..", "digits")
for split in ("train", "val"):
    x = np.load(os.path.join(src, f"{split}_x.npy"))
    y = np.load(os.path.join(src, f"{split}_y.npy"))
    for row, (pixels, label) in enumerate(zip(x, y)):
        img = Image.fromarray(np.round(pixels.reshape(8, 8) * 255).astype(np.uint8), mode="L")
        img = img.resize((16, 16), Image.BICUBIC)
        d = os.path.join(here, split, str(int(label)))
        os.makedirs(d, exist_ok=True)
        img.save(os.path.join(d, f"{row:04d}.png"), optimize=True)
