"""PyTorch side of the loader benchmark (benches/loader_side_by_side.sh runs it next to `engine data bench`).

Cases (issue 5):
  a  28x28 uint8 .npy, memory-mapped -> float, /255, normalize -> shuffled batches of 128
  b  a folder of 64x64 PNG files (one subfolder per class) -> decode, RandomResizedCrop(56),
     RandomHorizontalFlip, ToTensor, Normalize -> shuffled batches of 64

    python loader_torch.py --case a --data DIR --workers 2 [--batches N]
    python loader_torch.py --make a|b --data DIR      # writes the data set (once)

Prints one JSON line: samples/s over the timed batches (after the first batch, so worker start-up is not
counted), batches, workers. Runs with torch.set_num_threads(1) in the workers as DataLoader does.
"""
import argparse
import json
import os
import time

import numpy as np


def make(case, data, samples):
    os.makedirs(data, exist_ok=True)
    rng = np.random.default_rng(0)
    if case == "a":
        n = samples or 60000
        # Smooth blobs plus noise: image-like values, not uniform noise.
        base = rng.integers(0, 256, size=(n, 1, 7, 7)).astype(np.float32)
        x = np.kron(base, np.ones((1, 1, 4, 4), np.float32))
        x = np.clip(x + rng.normal(0, 12, size=x.shape), 0, 255).astype(np.uint8)
        np.save(os.path.join(data, "x.npy"), x)
        np.save(os.path.join(data, "y.npy"), rng.integers(0, 10, size=n).astype(np.int64))
    else:
        from PIL import Image
        n = samples or 2560
        yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
        for i in range(n):
            c = i % 10
            d = os.path.join(data, "train", f"class_{c}")
            os.makedirs(d, exist_ok=True)
            phase = rng.uniform(0, 6.28, size=3)
            img = np.stack([128 + 100 * np.sin(xx / (4 + c) + yy / (7 + k) + phase[k]) for k in range(3)], -1)
            img = np.clip(img + rng.normal(0, 10, size=img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img, "RGB").save(os.path.join(d, f"{i:05d}.png"))


def bench(case, data, workers, batches, epochs):
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import datasets, transforms

    torch.set_num_threads(max(1, workers) if workers == 0 else 1)
    if case == "a":

        class Npy(Dataset):
            def __init__(self):
                self.x = np.load(os.path.join(data, "x.npy"), mmap_mode="r")
                self.y = np.load(os.path.join(data, "y.npy"))
                self.norm = transforms.Normalize([0.5], [0.25])

            def __len__(self):
                return len(self.y)

            def __getitem__(self, i):
                x = torch.from_numpy(np.array(self.x[i])).float().div_(255)
                return self.norm(x), int(self.y[i])

        ds, batch = Npy(), 128
    else:
        tf = transforms.Compose([
            transforms.RandomResizedCrop(56),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        ds, batch = datasets.ImageFolder(os.path.join(data, "train"), transform=tf), 64
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    seen, t0, n = 0, None, 0
    for _ in range(epochs):
        for x, y in loader:
            if t0 is None:
                t0 = time.perf_counter()  # after the first batch: workers are up
            else:
                seen += x.shape[0]
                n += 1
            if batches and n >= batches:
                break
        if batches and n >= batches:
            break
    dt = time.perf_counter() - t0
    print(json.dumps({"case": case, "framework": "pytorch", "workers": workers, "batches": n,
                      "samples_per_s": seen / dt, "ms_per_batch": 1000 * dt / max(n, 1)}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--case", choices=["a", "b"])
    p.add_argument("--make", choices=["a", "b"])
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    if a.make:
        make(a.make, a.data, a.samples)
    else:
        bench(a.case, a.data, a.workers, a.batches, a.epochs)
