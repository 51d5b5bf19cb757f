"""Loads a checkpoint with the pip `safetensors` package (numpy backend) and checks the expected
parameter names and shapes: the interoperability check of the foundation issue.

usage: python3 check_safetensors.py FILE NAME=D0xD1 [NAME=D0 ...]
"""
import sys

from safetensors.numpy import load_file

path, *expected = sys.argv[1:]
tensors = load_file(path)
for item in expected:
    name, dims = item.split("=")
    shape = tuple(int(d) for d in dims.split("x"))
    if name not in tensors:
        sys.exit(f"{path}: missing tensor {name}; has {sorted(tensors)}")
    if tensors[name].shape != shape:
        sys.exit(f"{path}: {name} has shape {tensors[name].shape}, expected {shape}")
    if str(tensors[name].dtype) != "float32":
        sys.exit(f"{path}: {name} has dtype {tensors[name].dtype}, expected float32")
print(f"ok: {len(expected)} parameters checked in {path}")
