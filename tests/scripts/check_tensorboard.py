"""Reads a run directory's event file with TensorBoard's own EventAccumulator and checks the scalars.

Usage: check_tensorboard.py RUN_DIR EPOCHS. Used by tests/run_outputs.rs when `import tensorboard` works.
"""
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run_dir, epochs = sys.argv[1], int(sys.argv[2])
acc = EventAccumulator(run_dir)
acc.Reload()
tags = set(acc.Tags()["scalars"])
for tag in ["train/loss", "train/lr", "val/loss", "val/accuracy", "epoch/train_loss"]:
    assert tag in tags, f"{tag} missing from {sorted(tags)}"
val = acc.Scalars("val/accuracy")
assert len(val) == epochs, f"{len(val)} val/accuracy points, expected {epochs}"
assert all(0.0 <= s.value <= 1.0 for s in val), val
print("ok", len(tags), "scalar tags")
