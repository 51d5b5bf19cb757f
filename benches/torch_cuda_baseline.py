#!/usr/bin/env python3
"""PyTorch eager on CUDA for the W1 / W2 / W3 workloads at batch 512: the baseline of issue 6's GPU target.

The models and optimizers come from the shared CPU baseline's `build()` (its path is the first argument), so
both sides train exactly the shapes ../shared/bench/README.md defines. Protocol: f32, 8 pre-generated random
batches on the device cycled through, 20 warm-up steps, then 3 timed repeats of at least 100 steps (raised so
a repeat lasts >= 1 s), each ended by torch.cuda.synchronize(). A step is zero_grad(set_to_none) + forward +
cross-entropy + backward + optimizer.step(). Prints one line per workload: RESULT {json}.

TF32: PyTorch's defaults unless --cudnn-tf32 off (convolutions then exact f32, like the engine's default;
matmuls are f32 by default in PyTorch). Each RESULT records both flags.

--amp f16 / bf16: the forward and loss under torch.autocast, f32 master weights; f16 adds a GradScaler, whose
step reads its found-inf flag on the host (`.item()`) unless the optimizer is a fused one. The engine's
`run.amp=f16` keeps that decision on the device. Each RESULT records the mode.

usage: torch_cuda_baseline.py PATH/torch_baseline.py [w1_mlp w2_cnn w3_vit] [--batch 512] [--cudnn-tf32 off]
       [--amp off|f16|bf16]
"""
import argparse
import importlib.util
import json
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("baseline")
    ap.add_argument("workloads", nargs="*", default=["w1_mlp", "w2_cnn", "w3_vit"])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--cudnn-tf32", choices=["default", "off"], default="default")
    ap.add_argument("--amp", choices=["off", "f16", "bf16"], default="off")
    args = ap.parse_args()
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(args.amp)
    if args.cudnn_tf32 == "off":
        torch.backends.cudnn.allow_tf32 = False
    spec = importlib.util.spec_from_file_location("torch_baseline", args.baseline)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    dev = torch.device("cuda")
    for w in args.workloads:
        torch.manual_seed(0)
        model, opt, _, shape = base.build(w)
        model.to(dev)
        # The optimizer was built over the CPU parameters; .to() moved them in place, so it still holds them.
        xs = [torch.randn((args.batch, *shape), device=dev) for _ in range(8)]
        ys = [torch.randint(0, 10, (args.batch,), device=dev) for _ in range(8)]

        scaler = torch.amp.GradScaler("cuda") if args.amp == "f16" else None

        def step(i):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(xs[i % 8]), ys[i % 8])
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

        for i in range(20):
            step(i)
        torch.cuda.synchronize()
        n, rates = 100, []
        for _ in range(3):
            while True:
                t0 = time.perf_counter()
                for i in range(n):
                    step(i)
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                if dt >= 1.0:
                    break
                n *= 2
            rates.append(n / dt)
        sps = statistics.median(rates)
        print("RESULT " + json.dumps({"workload": w, "batch": args.batch, "steps_per_s": sps,
                                      "samples_per_s": sps * args.batch, "repeats": rates,
                                      "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                      "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                                      "cudnn_tf32": torch.backends.cudnn.allow_tf32, "amp": args.amp}),
              flush=True)


if __name__ == "__main__":
    main()
