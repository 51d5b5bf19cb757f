"""PyTorch's eager ops at the W3 step shapes (batch 64 x 50 tokens = 3,200 rows, width 128), 2 threads: the same
cases as the `w3_ops` group of benches/kernels.rs, so the two read side by side (median ms of timed repeats).

usage: /tmp/torchenv/bin/python benches/w3_ops_torch.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)
ROWS = 64 * 50


def timed(fn, min_s=0.5, repeats=5):
    for _ in range(5):
        fn()
    meds = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_s / repeats:
            fn()
            n += 1
        meds.append((time.perf_counter() - t0) / n)
    return statistics.median(meds) * 1e3


def main():
    for name, cin, cout in [("qkv", 128, 384), ("proj", 128, 128), ("fc1", 128, 256), ("fc2", 256, 128)]:
        lin = torch.nn.Linear(cin, cout)
        x = torch.randn(ROWS, cin, requires_grad=True)
        dy = torch.randn(ROWS, cout)
        y = lin(x)
        fwd = timed(lambda: lin(x).detach())

        def bwd():
            x.grad = None
            lin(x).backward(dy)

        both = timed(bwd)
        flops = 2 * ROWS * cin * cout
        print(f"linear {name:5s} forward {fwd:7.3f} ms ({flops / fwd / 1e6:6.1f} GFLOP/s)"
              f"  backward {both - fwd:7.3f} ms ({2 * flops / (both - fwd) / 1e6:6.1f} GFLOP/s, forward+backward less forward)")
    ln = torch.nn.LayerNorm(128)
    x = torch.randn(ROWS, 128, requires_grad=True)
    dy = torch.randn(ROWS, 128)
    fwd = timed(lambda: ln(x).detach())

    def ln_bwd():
        x.grad = None
        ln(x).backward(dy)

    print(f"layer_norm forward {fwd:7.3f} ms  backward {timed(ln_bwd) - fwd:7.3f} ms")
    x = torch.randn(ROWS, 256, requires_grad=True)
    dy = torch.randn(ROWS, 256)
    fwd = timed(lambda: F.gelu(x).detach())

    def gelu_bwd():
        x.grad = None
        F.gelu(x).backward(dy)

    print(f"gelu forward {fwd:7.3f} ms  backward {timed(gelu_bwd) - fwd:7.3f} ms")
    # One attention layer as the W3 twin runs it: heads taken out of the fused qkv projection, SDPA, heads merged.
    qkv = torch.randn(64, 50, 384, requires_grad=True)
    dy = torch.randn(64, 50, 128)

    def attn():
        q, k, v = qkv.reshape(64, 50, 3, 4, 32).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(64, 50, 128)

    fwd = timed(lambda: attn().detach())

    def attn_bwd():
        qkv.grad = None
        attn().backward(dy)

    print(f"attention forward {fwd:7.3f} ms  backward {timed(attn_bwd) - fwd:7.3f} ms")


if __name__ == "__main__":
    main()
