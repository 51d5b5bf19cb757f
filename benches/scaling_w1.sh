#!/usr/bin/env bash
# Data-parallel scaling of W1 (configs/bench_w1_mlp.yaml: 784-512-512-10 MLP, AdamW, global batch 128) on this
# machine: 1 process with 2 compute threads vs `mpirun -n 2` ranks of 1 thread each (batch 64 per rank, the
# same global batch: strong scaling), the same two ranks started torchrun-style (RANK / WORLD_SIZE /
# MASTER_ADDR / MASTER_PORT, joined through ompi-server), and 2 ranks of batch 128 (weak scaling). The strong-scaling
# pair also runs with the all-reduce after the backward (`run.bucket_mb=0`) and with 0.25 MiB buckets, against the
# default overlapped 25 MiB buckets (the first one 1 MiB). Prints samples/s (the run's, from the train records), ms
# per optimizer step, the all-reduce time per step (`allreduce_s`) and the part the training thread waited for
# (`allreduce_wait_s`).
#   benches/scaling_w1.sh [EPOCHS]        (needs Open MPI; builds the release engine with --features mpi)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-40}
cargo build --release --features mpi --bin engine >&2
BIN=target/release/engine
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
MPIRUN=(mpirun -n 2 --oversubscribe --allow-run-as-root --bind-to none)
common=(--config configs/bench_w1_mlp.yaml --headless --set run.epochs="$EPOCHS" --set run.val_interval="$EPOCHS"
        --set run.log_interval=8 --set run.exist_ok=true)

"$BIN" "${common[@]}" --set run.threads=2 --set run.save_dir="$OUT/one" >/dev/null
"${MPIRUN[@]}" "$BIN" "${common[@]}" --set run.threads=1 --set run.batch=64 --set run.save_dir="$OUT/strong" >/dev/null
"${MPIRUN[@]}" "$BIN" "${common[@]}" --set run.threads=1 --set run.batch=64 --set run.bucket_mb=0 \
    --set run.save_dir="$OUT/after" >/dev/null
"${MPIRUN[@]}" "$BIN" "${common[@]}" --set run.threads=1 --set run.batch=64 --set run.bucket_mb=0.25 \
    --set run.save_dir="$OUT/small" >/dev/null
"${MPIRUN[@]}" "$BIN" "${common[@]}" --set run.threads=1 --set run.batch=128 --set run.nbs=256 \
    --set run.save_dir="$OUT/weak" >/dev/null

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        "$BIN" "${common[@]}" --set run.threads=1 --set run.batch=64 --set run.save_dir="$OUT/torchrun" >/dev/null &
done
wait

python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = [("1 process x 2 threads, batch 128", "one", 1, 128),
        ("2 ranks x 1 thread, batch 64/rank (global 128)", "strong", 2, 128),
        ("the same, all-reduce after the backward (bucket_mb 0)", "after", 2, 128),
        ("the same, 0.25 MiB buckets", "small", 2, 128),
        ("the same, torchrun-style launch", "torchrun", 2, 128),
        ("2 ranks x 1 thread, batch 128/rank (global 256)", "weak", 2, 256)]
base = None
print(f"| run | samples/s | ms / step | all-reduce ms / step | waited ms / step | share of step waited |")
print(f"|---|---|---|---|---|---|")
for name, d, ranks, gbatch in rows:
    recs = [json.loads(l) for l in open(f"{out}/{d}/metrics.jsonl")]
    train = [r for r in recs if r["split"] == "train"][2:]  # skip the warm-up records
    sps = statistics.median(r["samples_per_s"] for r in train)
    step_ms = gbatch / sps * 1e3
    ar = statistics.median(r.get("allreduce_s", 0.0) for r in train) * 1e3
    wait = statistics.median(r.get("allreduce_wait_s", 0.0) for r in train) * 1e3
    base = base or sps
    print(f"| {name} | {sps:,.0f} ({sps / base:.2f}x) | {step_ms:.2f} | {ar:.3f} | {wait:.3f} | {wait / step_ms:.1%} |")
PY
