#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, over the binaries pack.sh built (.gpu/): the GPU op
# tests, the end-to-end CUDA runs and the device benchmarks, each log into $OUT (or ./gpu-out). A device call
# may run 600 s and a session has 15 minutes of device time in all, so two calls on the same warm machine:
#
#   device run  carry: [".gpu"]  command: "STEPS='info ops e2e' tools/gpu-session/run.sh"       timeout_s: 420
#   device run  carry: [".gpu"]  command: "STEPS='info bench criterion sbs' tools/gpu-session/run.sh"  timeout_s: 420
#
# NVRTC and cuBLAS are found in the CUDA toolkit or in pip's nvidia wheels; unversioned links to them (the
# names cudarc looks for first) are made in a scratch folder. Each step has its own time limit so one slow
# step cannot eat the others' device time. STEPS (default "info bench ops e2e criterion sbs") picks steps.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
out="${OUT:-$repo/gpu-out}"
mkdir -p "$out"
packed="$repo/.gpu"
[ -f "$packed/engine.gz" ] || { echo "no $packed/engine.gz: run tools/gpu-session/pack.sh first and carry .gpu"; exit 2; }
# pack.sh gzips the binaries (the carry limit): unpacked into a scratch folder, with the baseline's models.
bin="$(mktemp -d)"
for f in "$packed"/*.gz; do
    name="$(basename "$f" .gz)"
    gunzip -c "$f" > "$bin/$name" && chmod +x "$bin/$name"
done
cp "$packed"/*.py "$bin/" 2>/dev/null || true

# Libraries: the toolkit's lib64, then every pip nvidia wheel's lib folder.
links="$(mktemp -d)"
dirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
site="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)"
[ -n "$site" ] && while IFS= read -r d; do dirs+=("$d"); done < <(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null)
for lib in nvrtc cublas cublasLt nccl; do
    for d in "${dirs[@]}"; do
        f="$(ls "$d"/lib$lib.so.[0-9]* 2>/dev/null | sort -V | tail -1)"
        if [ -n "$f" ]; then ln -sf "$f" "$links/lib$lib.so"; break; fi
    done
done
export LD_LIBRARY_PATH="$links:$(IFS=:; echo "${dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for inc in /usr/local/cuda/include "$site"/nvidia/cuda_runtime/include "$site"/nvidia/cu*/include; do
    if [ -f "$inc/cuda_fp16.h" ]; then export ECSTRAIN_CUDA_INCLUDE="$inc"; break; fi
done
export ECSTRAIN_ENGINE_BIN="$bin/engine" ECSTRAIN_REPO="$repo" ECSTRAIN_REQUIRE_GPU=1 ECSTRAIN_REQUIRE_NVRTC=1
export ECSTRAIN_KERNEL_CACHE="$(mktemp -d)"

step() { # name seconds command...: runs with a limit, logs to $out/name.log, notes the status
    local name=$1 secs=$2
    shift 2
    echo "=== $name (limit ${secs}s)"
    local t0=$SECONDS
    timeout "$secs" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    tail -5 "$out/$name.log"
}

# Engine steps/s on the device for one bench config at batch 512: the last epoch's train samples/s / 512.
# The train split on the device unless the 4th argument is false (then every batch is assembled and staged
# on the host); the host's pool on every core (it splits the staging and gathering copies).
engine_sps() { # workload config [tf32] [device_cache] [amp]
    local dir tf32="${3:-false}" cache="${4:-true}" amp="${5:-off}"
    dir="$(mktemp -d)"
    timeout 60 "$bin/engine" --config "$2" --set run.device=cuda --set run.batch=512 --set run.nbs=512 --set run.epochs=3 \
        --set run.tf32="$tf32" --set run.device_cache="$cache" --set run.amp="$amp" --set run.threads="$(nproc)" \
        --set datasets.synthetic.train_samples=$((512 * ${SBS_STEPS:-100})) --set datasets.synthetic.val_samples=512 \
        --set run.save_dir="$dir/run" > "$out/sbs_$1_${tf32}_${cache}_$amp.log" 2>&1 ||
        { echo "RESULT_ENGINE $1 tf32=$tf32 device_cache=$cache amp=$amp failed"; return; }
    python3 -c "
import json
r = [json.loads(l) for l in open('$dir/run/metrics.jsonl')]
r = [x for x in r if x.get('split') == 'train' and 'samples_per_s' in x]
print('RESULT_ENGINE', json.dumps({'workload': '$1', 'tf32': $([ "$tf32" = true ] && echo True || echo False), 'device_cache': $([ "$cache" = true ] && echo True || echo False), 'amp': '$amp', 'steps_per_s': r[-1]['samples_per_s'] / 512}))"
}

steps="${STEPS:-info bench ops e2e criterion sbs}"
for s in $steps; do
    case $s in
    info)
        { nvidia-smi || true; echo "links: $(ls -l "$links")"; echo "include: ${ECSTRAIN_CUDA_INCLUDE:-none}"; } \
            > "$out/info.log" 2>&1
        head -20 "$out/info.log" ;;
    bench) step bench 90 "$bin/engine" bench --device cuda ;;
    ops) step ops 90 "$bin/kernel_tests" cuda --test-threads=1 --nocapture
        step steady 60 "$bin/cuda_steady_state" --nocapture
        step loss 60 "$bin/cuda_device_loss" --test-threads=1 --nocapture
        step half 60 "$bin/cuda_half_storage" --test-threads=1 --nocapture
        step memory 60 "$bin/cuda_memory" --test-threads=1 --nocapture
        step predict 60 "$bin/predict_e2e" cuda --test-threads=1 --nocapture ;;
    e2e) step e2e 300 "$bin/cuda_e2e" --test-threads=1 --nocapture ;;
    criterion) step criterion 90 "$bin/cuda_kernels_bench" --bench --noplot ;;
    sbs) # W1 / W2 / W3 at batch 512: the engine on CUDA, then PyTorch eager on CUDA (pack.sh carries the
        # shared baseline's model definitions as .gpu/torch_baseline.py).
        {
            for w in w1_mlp w2_cnn w3_vit; do engine_sps "$w" "configs/bench_$w.yaml"; done
            # What assembling and staging every batch on the host costs (PyTorch's baseline keeps its batches
            # on the device, as run.device_cache does).
            engine_sps w1_mlp configs/bench_w1_mlp.yaml false false
            # PyTorch runs its convolutions on TF32 by default (cudnn.allow_tf32): W2 both ways on both sides.
            engine_sps w2_cnn configs/bench_w2_cnn.yaml true
            # f16 autocast with dynamic loss scaling: the engine decides each step's skip on the device, torch's
            # GradScaler (non-fused AdamW) on the host.
            engine_sps w1_mlp configs/bench_w1_mlp.yaml false true f16
            engine_sps w3_vit configs/bench_w3_vit.yaml false true f16
            timeout 120 python3 benches/torch_cuda_baseline.py "$bin/torch_baseline.py"
            timeout 60 python3 benches/torch_cuda_baseline.py "$bin/torch_baseline.py" w2_cnn --cudnn-tf32 off
            timeout 60 python3 benches/torch_cuda_baseline.py "$bin/torch_baseline.py" w1_mlp w3_vit --amp f16
        } > "$out/sbs.log" 2>&1
        grep RESULT "$out/sbs.log" | tee -a "$out/summary.txt" ;;
    *) echo "unknown step $s" ;;
    esac
done
cat "$out/summary.txt"
