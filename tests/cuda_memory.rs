//! Device memory on CUDA: a batch the GPU cannot hold is refused at start-up (exit 2, the key and the way
//! out named, no run directory), and the run's records carry the memory it holds (`gpu_mem`, as
//! Ultralytics' `GPU_mem`), which start-up's warm-up step has already sized.
//!
//! To fill the device: on tools/cuda-emu its memory is capped for the child process (`CUDA_EMU_MEMORY`); on
//! a GPU this test process takes all but a few MiB of it before starting the engine. Without a device the
//! tests print SKIPPED.

mod common;

use std::process::Command;

use common::*;
use ecstrain::kernels::cuda::testing::gpu_or_skip;

/// The engine on cuda with `sets`, from the repository root, with `env` added.
fn engine_cuda(save: &std::path::Path, config: &str, sets: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(engine_bin());
    cmd.current_dir(repo()).args(["--config", config, "--set", "run.device=cuda"]);
    cmd.args(["--set", &format!("run.save_dir={}", save.display())]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("engine runs")
}

/// `the run holds 22.4 MiB on the device` -> bytes (to the printed precision).
fn start_up_holding(out: &str) -> f64 {
    let line = out.lines().find(|l| l.contains("the run holds")).unwrap_or_else(|| panic!("no memory notice:\n{out}"));
    let rest = line.split("the run holds ").nth(1).unwrap();
    let mut words = rest.split_whitespace();
    let value: f64 = words.next().unwrap().parse().unwrap();
    let unit = match words.next().unwrap() {
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        u => panic!("unit {u} in {line}"),
    };
    value * unit
}

#[test]
fn cuda_batch_that_does_not_fit_exits_2_before_the_run_directory() {
    let Some(gpu) = gpu_or_skip("cuda_batch_that_does_not_fit_exits_2_before_the_run_directory") else { return };
    let dir = scratch("cuda-oom");
    // The ResNet holds about 22 MiB at batch 64 on the emulator, 13 of it before its first step's buffers
    // grow: 4 MiB fails while the state is allocated, 16 MiB in the warm-up step.
    let caps: &[&str] = if gpu.info.is_emulated() { &["4m", "16m"] } else { &[""] };
    for cap in caps {
        let save = dir.join(format!("run{cap}"));
        let out = if gpu.info.is_emulated() {
            engine_cuda(&save, "configs/digits_resnet.yaml", &[], &[("CUDA_EMU_MEMORY", cap)])
        } else {
            // All but 8 MiB of the GPU held here while the engine starts.
            let free = gpu.memory().unwrap().free;
            let hog = gpu.stream().alloc_zeros::<u8>(free.saturating_sub(8 << 20)).expect("fill the GPU");
            let out = engine_cuda(&save, "configs/digits_resnet.yaml", &[], &[]);
            drop(hog);
            out
        };
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(2), "cap {cap}:\n{msg}");
        for words in ["configs/digits_resnet.yaml", "run.batch: a batch of 64 does not fit on cuda:0", "out of memory"]
        {
            assert!(msg.contains(words), "cap {cap}: `{words}` missing:\n{msg}");
        }
        for words in ["free of", "this run holds", "lower run.batch (now 64", "run.amp"] {
            assert!(msg.contains(words), "cap {cap}: `{words}` missing:\n{msg}");
        }
        assert!(!msg.contains("panicked"), "{msg}");
        assert!(!save.exists(), "cap {cap}: a refused run left {}", save.display());
    }
    // The same cap with the activations in half precision fits less, so the advice holds on the emulator:
    // the bf16 ResNet needs less than the f32 one (18.5 against 22.4 MiB), and 20 MiB runs it.
    if gpu.info.is_emulated() {
        let save = dir.join("run-bf16");
        let sets = ["run.amp=bf16", "run.max_iters=1", "run.iters_per_inner_epoch=1"];
        let out = engine_cuda(&save, "configs/digits_resnet.yaml", &sets, &[("CUDA_EMU_MEMORY", "20m")]);
        assert_eq!(out.status.code(), Some(0), "bf16 at 20 MiB:\n{}", text(&out));
        let f32_run =
            engine_cuda(&dir.join("run-f32"), "configs/digits_resnet.yaml", &sets[1..], &[("CUDA_EMU_MEMORY", "20m")]);
        assert_eq!(f32_run.status.code(), Some(2), "f32 at 20 MiB:\n{}", text(&f32_run));
    }
}

/// Every train and epoch record of `save` with its `gpu_mem` (GiB), and `summary.json`'s `gpu_mem_peak`.
fn memory_records(save: &std::path::Path) -> (Vec<(String, Option<f64>)>, Option<f64>) {
    let records = std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train" || v["split"] == "epoch")
        .map(|v| (v["split"].as_str().unwrap().to_string(), v["gpu_mem"].as_f64()))
        .collect();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    (records, summary["gpu_mem_peak"].as_f64())
}

#[test]
fn cuda_records_carry_the_device_memory_the_run_holds() {
    let Some(gpu) = gpu_or_skip("cuda_records_carry_the_device_memory_the_run_holds") else { return };
    let dir = scratch("cuda-gpu-mem");
    let sets = ["run.epochs=2", "run.log_interval=5"];
    let save = dir.join("cuda");
    let out = engine_cuda(&save, "configs/digits_cnn.yaml", &sets, &[]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(0), "{msg}");
    let held_at_start = start_up_holding(&msg);
    let (records, peak) = memory_records(&save);
    assert!(records.iter().any(|(s, _)| s == "train") && records.iter().any(|(s, _)| s == "epoch"), "{records:?}");
    let peak = peak.expect("summary.json has gpu_mem_peak");
    let total = gpu.memory().unwrap().total as f64 / 1073741824.0;
    for (split, gib) in &records {
        let gib = gib.unwrap_or_else(|| panic!("a {split} record without gpu_mem: {records:?}"));
        assert!(gib > 0.0 && gib <= peak && peak < total, "{split}: gpu_mem {gib} GiB, peak {peak}, total {total}");
        if gpu.info.is_emulated() {
            // The emulator's memory is this run's alone, so the warm-up's reading is the steady one (within
            // the notice's rounding to 0.1 MiB): nothing grows after start-up.
            let bytes = gib * 1073741824.0;
            assert!((bytes - held_at_start).abs() <= 0.05 * 1048576.0, "{split}: {bytes} B after {held_at_start} B");
        }
    }
    assert!(msg.contains("peak GPU memory"), "{msg}");
    // A CPU run has no device memory to report.
    let cpu = dir.join("cpu");
    let out = engine(&[
        "--config",
        "configs/digits_cnn.yaml",
        "--set",
        &format!("run.save_dir={}", cpu.display()),
        "--set",
        "run.epochs=1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (records, peak) = memory_records(&cpu);
    assert!(records.iter().all(|(_, g)| g.is_none()) && peak.is_none(), "{records:?} {peak:?}");
    assert!(!text(&out).contains("GPU memory"));
}
