//! End to end on a GPU: the digits MLP, CNN and ViT trained with `run.device=cuda` reach the CPU's accuracy
//! and the VQ-VAE the CPU's PSNR, and their per-epoch validation losses follow the CPU's run of the same
//! config and seed. Without a CUDA device each of those tests prints a SKIPPED line and passes (CI has no
//! GPU; the sessions lent one run these); the driver-message test runs only there.

mod common;

use std::path::Path;

use common::*;

/// Per-epoch validation (loss, `metric`) of a run directory.
fn val_records(dir: &Path, metric: &str) -> Vec<(f64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "val")
        .map(|v| {
            (v["loss"].as_f64().unwrap(), v[metric].as_f64().unwrap_or_else(|| panic!("val records carry {metric}")))
        })
        .collect()
}

/// Trains `config` for `epochs` on `device` into a scratch run directory; returns its val (loss, metric).
fn train(name: &str, config: &str, device: &str, epochs: u32, metric: &str) -> Vec<(f64, f64)> {
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
    val_records(&save, metric)
}

/// The CPU and CUDA runs of `config` for `epochs`, after checking they have the same epochs and that every
/// epoch's val loss is within `abs + rel * cpu` of the CPU's; `None` (with a SKIPPED line) without a
/// device. The two runs differ only by float rounding (cuBLAS and reduction order), which a long run
/// amplifies a little.
#[allow(clippy::type_complexity)]
fn both_devices(
    name: &str,
    config: &str,
    epochs: u32,
    metric: &str,
    (abs, rel): (f64, f64),
) -> Option<(Vec<(f64, f64)>, Vec<(f64, f64)>)> {
    if let Err(why) = ecstrain::kernels::cuda::probe(0) {
        eprintln!("SKIPPED {name}: no CUDA device ({why})");
        return None;
    }
    let cpu = train(name, config, "cpu", epochs, metric);
    let gpu = train(name, config, "cuda", epochs, metric);
    assert_eq!(cpu.len(), gpu.len(), "{name}: epochs differ");
    for (e, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        eprintln!(
            "{name} epoch {}: val loss cpu {:.5} cuda {:.5}, {metric} cpu {:.4} cuda {:.4}",
            e + 1,
            c.0,
            g.0,
            c.1,
            g.1
        );
        assert!((c.0 - g.0).abs() <= abs + rel * c.0, "{name} epoch {}: val loss cpu {} vs cuda {}", e + 1, c.0, g.0);
    }
    Some((cpu, gpu))
}

/// Best of a run's metric (higher is better).
fn best(r: &[(f64, f64)]) -> f64 {
    r.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max)
}

/// A classifier on CUDA against the CPU: val losses within 0.05 + 10% every epoch, best accuracy within a
/// point of the CPU's and at least `floor`.
fn matches_cpu(name: &str, config: &str, epochs: u32, floor: f64) {
    let Some((cpu, gpu)) = both_devices(name, config, epochs, "accuracy", (0.05, 0.1)) else { return };
    let (bc, bg) = (best(&cpu), best(&gpu));
    assert!(bg >= floor && bg >= bc - 0.01, "{name}: best val accuracy cuda {bg}, cpu {bc}");
}

#[test]
fn digits_mlp_on_cuda_matches_cpu() {
    matches_cpu("digits_mlp", "configs/digits_mlp.yaml", 20, 0.97);
}

#[test]
fn digits_cnn_on_cuda_matches_cpu() {
    matches_cpu("digits_cnn", "configs/digits_cnn.yaml", 20, 0.97);
}

/// The ViT (patch convolution, class token, position embedding, fused-projection attention, GELU MLPs,
/// layer norms, class-token head) over the config's full 30 epochs, where the CPU reaches 97%.
#[test]
fn digits_vit_on_cuda_matches_cpu() {
    matches_cpu("digits_vit", "configs/digits_vit.yaml", 30, 0.97);
}

/// The VQ-VAE (convolutions, vector quantization with its loss and perplexity reported from the device,
/// nearest upsampling): every epoch's val loss (reconstruction + VQ terms, ~0.01-0.1) within 0.01 + 15% of
/// the CPU's, since a code assignment flipped by rounding moves the loss more than a dense layer's rounding
/// does; best PSNR within 1 dB of the CPU's and at least 6 dB above the first epoch (the CPU test's bar).
#[test]
fn digits_vqvae_on_cuda_matches_cpu() {
    let name = "digits_vqvae";
    let Some((cpu, gpu)) = both_devices(name, "configs/digits_autoencoder.yaml", 30, "psnr", (0.01, 0.15)) else {
        return;
    };
    let (bc, bg) = (best(&cpu), best(&gpu));
    assert!((bg - bc).abs() <= 1.0, "{name}: best val PSNR cuda {bg} dB, cpu {bc} dB");
    assert!(bg >= gpu[0].1 + 6.0, "{name}: best val PSNR cuda {bg} dB vs {} dB after epoch 1", gpu[0].1);
}

/// Without a driver, the ViT and VQ-VAE configs on `run.device=cuda` exit 2 with the driver message: the
/// driver probe comes before the graph's op check, and the op check accepts these models anyway.
#[test]
fn vit_and_vqvae_on_cuda_without_a_driver_name_the_driver() {
    if ecstrain::kernels::cuda::probe(0).is_ok() {
        eprintln!("SKIPPED vit_and_vqvae_on_cuda_without_a_driver_name_the_driver: a CUDA device is present");
        return;
    }
    let dir = scratch("cuda-no-driver");
    for config in ["configs/digits_vit.yaml", "configs/digits_autoencoder.yaml"] {
        let save = format!("run.save_dir={}", dir.join("run").display());
        let out = engine(&["--config", config, "--set", "run.device=cuda", "--set", &save]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{config}:\n{t}");
        assert!(t.contains("run.device") && t.contains("not available") && t.contains("no CUDA"), "{config}:\n{t}");
        assert!(!t.contains("CUDA executor cannot run"), "{config}: the op check ran first:\n{t}");
        assert!(!dir.join("run").exists(), "{config}: a run directory was written before the error");
    }
}
