//! End to end on a GPU: the digits MLP and CNN trained with `run.device=cuda` reach the CPU's accuracy and
//! their per-epoch validation losses follow the CPU's run of the same config and seed. Without a CUDA device
//! each test prints a SKIPPED line and passes (CI has no GPU; the sessions lent one run these).

mod common;

use std::path::Path;

use common::*;

/// Per-epoch validation (loss, accuracy) of a run directory.
fn val_records(dir: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "val")
        .map(|v| (v["loss"].as_f64().unwrap(), v["accuracy"].as_f64().unwrap()))
        .collect()
}

/// Trains `config` for `epochs` on `device` into a scratch run directory; returns its val records.
fn train(name: &str, config: &str, device: &str, epochs: u32) -> Vec<(f64, f64)> {
    let dir = scratch(&format!("{name}-{}", device.replace(':', "")));
    let save = dir.join("run");
    let out = engine(&[
        "--config",
        config,
        "--set",
        &format!("run.save_dir={}", save.display()),
        "--set",
        &format!("run.device={device}"),
        "--set",
        &format!("run.epochs={epochs}"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{name} on {device}:\n{}", text(&out));
    val_records(&save)
}

/// The CUDA run of `config` against the CPU run: same number of epochs, best accuracy within a point of
/// the CPU's (and at least `floor`), and every epoch's val loss within 0.05 + 10% of the CPU's. The two runs
/// differ only by float rounding (cuBLAS and reduction order), which a 20-epoch run amplifies a little.
fn matches_cpu(name: &str, config: &str, floor: f64) {
    if let Err(why) = ecstrain::kernels::cuda::probe(0) {
        eprintln!("SKIPPED {name}: no CUDA device ({why})");
        return;
    }
    let epochs = 20;
    let cpu = train(name, config, "cpu", epochs);
    let gpu = train(name, config, "cuda", epochs);
    assert_eq!(cpu.len(), gpu.len(), "{name}: epochs differ");
    for (e, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        eprintln!(
            "{name} epoch {}: val loss cpu {:.5} cuda {:.5}, accuracy cpu {:.4} cuda {:.4}",
            e + 1,
            c.0,
            g.0,
            c.1,
            g.1
        );
        assert!((c.0 - g.0).abs() <= 0.05 + 0.1 * c.0, "{name} epoch {}: val loss cpu {} vs cuda {}", e + 1, c.0, g.0);
    }
    let best = |r: &[(f64, f64)]| r.iter().map(|x| x.1).fold(0.0, f64::max);
    let (bc, bg) = (best(&cpu), best(&gpu));
    assert!(bg >= floor && bg >= bc - 0.01, "{name}: best val accuracy cuda {bg}, cpu {bc}");
}

#[test]
fn digits_mlp_on_cuda_matches_cpu() {
    matches_cpu("digits_mlp", "configs/digits_mlp.yaml", 0.97);
}

#[test]
fn digits_cnn_on_cuda_matches_cpu() {
    matches_cpu("digits_cnn", "configs/digits_cnn.yaml", 0.97);
}
