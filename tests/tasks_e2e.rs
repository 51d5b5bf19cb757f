//! The `reconstruction`, `regression` and `embedding` tasks end to end through the `engine` binary: an MLP
//! autoencoder on the digits improves its PSNR; an MLP fits dense targets `x @ P` to a high R^2 (regression)
//! and cosine similarity (embedding); bad options and class-label targets are rejected with exit 2.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The `val` records of a run's metrics.jsonl, in order.
fn val_records(save: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["split"] == "val")
        .collect()
}

fn metric(record: &serde_json::Value, name: &str) -> f64 {
    record[name].as_f64().unwrap_or_else(|| panic!("val record without `{name}`: {record}"))
}

fn run_ok(cfg: &Path) -> String {
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    log
}

fn autoencoder_yaml(save: &Path) -> String {
    digits_yaml(save)
        .replace("output_size: 10", "output_size: 64")
        .replace("epochs: 2", "epochs: 6")
        .replace("lr0: 0.001", "lr0: 0.003")
        + "  task: reconstruction\n"
}

#[test]
fn mlp_autoencoder_improves_psnr_and_rejects_unknown_losses() {
    let dir = scratch("tasks_recon");
    let save = dir.join("run");
    let yaml = autoencoder_yaml(&save);
    let cfg = write_config(&dir, "ae.yaml", &yaml);
    let log = run_ok(&cfg);
    let vals = val_records(&save);
    assert_eq!(vals.len(), 6, "{log}");
    for v in &vals {
        for k in ["loss", "recon_loss", "mse", "psnr"] {
            assert!(metric(v, k).is_finite(), "{k} in {v}");
        }
        // mse loss without a VQ layer: loss == recon_loss == mse; no SSIM for a flat output.
        assert_eq!(metric(v, "loss"), metric(v, "mse"));
        assert!(v.get("ssim").is_none() && v.get("vq_loss").is_none(), "{v}");
    }
    let (first, last) = (metric(&vals[0], "psnr"), metric(&vals[5], "psnr"));
    assert!(last > first + 1.0, "psnr did not improve: {first} -> {last}\n{log}");
    assert!(metric(&vals[5], "mse") < metric(&vals[0], "mse"));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["fitness_metric"], "psnr", "the default fitness should be psnr: {s}");

    // l1 also reports mse, which then differs from the loss.
    let save_l1 = dir.join("l1");
    let cfg = write_config(&dir, "l1.yaml", &yaml.replace(&save.display().to_string(), &save_l1.display().to_string()));
    let out = engine(&["--config", cfg.to_str().unwrap(), "--set", "run.recon_loss=l1", "--set", "run.epochs=1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = &val_records(&save_l1)[0];
    assert!(metric(v, "loss") > metric(v, "mse"), "l1 loss should exceed mse for errors < 1: {v}");

    // Unknown loss and bad data_range: exit 2, nothing written.
    let out = engine(&["--config", cfg.to_str().unwrap(), "--set", "run.recon_loss=huber"]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("huber") && msg.contains("mse") && msg.contains("l1"), "{msg}");
    let out = engine(&["--config", cfg.to_str().unwrap(), "--set", "run.data_range=0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("data_range"), "{}", text(&out));

    // An output that is not the input's size.
    let out = engine(&["--config", cfg.to_str().unwrap(), "--set", "model.output_size=10"]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("[10]") && msg.contains("[64]"), "{msg}");
}

#[test]
fn regression_fits_a_linear_projection() {
    let dir = scratch("tasks_regression");
    write_projection_dataset(&dir, 8);
    let save = dir.join("run");
    let cfg = write_config(&dir, "reg.yaml", &projection_yaml(&dir, &save, "regression", 8));
    let log = run_ok(&cfg);
    let vals = val_records(&save);
    assert_eq!(vals.len(), 10, "{log}");
    let last = vals.last().unwrap();
    for k in ["loss", "mse", "mae", "r2"] {
        assert!(metric(last, k).is_finite(), "{k} in {last}");
    }
    let (r2_first, r2) = (metric(&vals[0], "r2"), metric(last, "r2"));
    assert!(r2 > 0.9, "final val r2 {r2} <= 0.9\n{log}");
    assert!(r2 > r2_first, "r2 did not improve: {r2_first} -> {r2}");
    assert!(r2 <= 1.0);

    // Class labels are not regression targets; nor are targets of the wrong width.
    let bad = write_config(&dir, "bad.yaml", &(digits_yaml(&dir.join("bad")) + "  task: regression\n"));
    let out = engine(&["--config", bad.to_str().unwrap()]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("float targets") && msg.contains("regression"), "{msg}");
    let out = engine(&["--config", cfg.to_str().unwrap(), "--set", "model.output_size=4"]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("[8]") && msg.contains("[4]"), "{msg}");
}

#[test]
fn embedding_fits_a_linear_projection_by_cosine() {
    let dir = scratch("tasks_embedding");
    write_projection_dataset(&dir, 8);
    let save = dir.join("run");
    let cfg = write_config(&dir, "emb.yaml", &projection_yaml(&dir, &save, "embedding", 8));
    let log = run_ok(&cfg);
    let vals = val_records(&save);
    assert_eq!(vals.len(), 10, "{log}");
    let last = vals.last().unwrap();
    let (cos_first, cos) = (metric(&vals[0], "cosine"), metric(last, "cosine"));
    assert!(cos > 0.9, "final val cosine {cos} <= 0.9\n{log}");
    assert!(cos > cos_first, "cosine did not improve: {cos_first} -> {cos}");
    assert!((metric(last, "loss") - (1.0 - cos)).abs() < 1e-9, "{last}");

    let bad: PathBuf = write_config(&dir, "bad.yaml", &(digits_yaml(&dir.join("bad")) + "  task: embedding\n"));
    let out = engine(&["--config", bad.to_str().unwrap()]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("float targets") && msg.contains("embedding"), "{msg}");
}

#[test]
fn vq_autoencoder_reports_image_and_codebook_metrics() {
    let dir = scratch("tasks_vq");
    let save = dir.join("run");
    let out = engine(&[
        "--config",
        "configs/digits_autoencoder.yaml",
        "--set",
        "run.epochs=1",
        "--set",
        &format!("run.save_dir={}", save.display()),
    ]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let v = &val_records(&save)[0];
    for k in ["loss", "recon_loss", "mse", "psnr", "ssim", "vq_loss", "perplexity"] {
        assert!(metric(v, k).is_finite(), "{k} in {v}");
    }
    // loss = recon_weight * recon + vq_weight * vq with both weights 1.
    let sum = metric(v, "recon_loss") + metric(v, "vq_loss");
    assert!((metric(v, "loss") - sum).abs() < 1e-9 * sum.max(1.0), "{v}");
    assert!((-1.0..=1.0).contains(&metric(v, "ssim")) && metric(v, "perplexity") >= 1.0, "{v}");
    let epoch = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap();
    assert!(epoch.contains("\"train_vq_loss\"") && epoch.contains("\"train_perplexity\""), "{epoch}");

    // val_reconstructions.png: the first 8 val images over their reconstructions, each column on the joint
    // min-max scale of its pair, tiles of 8x8 enlarged 8 times with 4-pixel gaps. The reconstructions are the
    // final weights' outputs, which `engine predict` reproduces (same batches, so the same bits).
    let recon = dir.join("recon.npy");
    let save_set = format!("run.save_dir={}", save.display());
    let out = engine(&[
        "predict",
        "--config",
        "configs/digits_autoencoder.yaml",
        "--set",
        &save_set,
        "--checkpoint",
        "last",
        "--split",
        "val",
        "--out",
        recon.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let outputs = ecstrain::systems::data::npy::NpyArray::open(&recon).unwrap();
    assert_eq!(outputs.shape(), &[360, 1, 8, 8]);
    let outputs = outputs.to_f32_vec();
    let inputs =
        ecstrain::systems::data::npy::NpyArray::open(&repo().join("data/digits/val_x.npy")).unwrap().to_f32_vec();
    let png = image::open(save.join("val_reconstructions.png")).unwrap().to_rgb8();
    let (gap, f) = (4u32, 8u32);
    assert_eq!(png.dimensions(), (gap + 8 * (8 * f + gap), gap + 2 * (8 * f + gap)));
    for col in 0..8usize {
        let (t, o) = (&inputs[col * 64..(col + 1) * 64], &outputs[col * 64..(col + 1) * 64]);
        let lo = t.iter().chain(o).fold(f32::INFINITY, |a, &b| a.min(b));
        let hi = t.iter().chain(o).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for (row, tile) in [t, o].into_iter().enumerate() {
            for p in 0..64u32 {
                let want = ((tile[p as usize] - lo) / (hi - lo) * 255.0).round() as i32;
                let x = gap + col as u32 * (8 * f + gap) + (p % 8) * f + f / 2;
                let y = gap + row as u32 * (8 * f + gap) + (p / 8) * f + f / 2;
                let got = png.get_pixel(x, y).0;
                assert!(
                    (i32::from(got[0]) - want).abs() <= 1 && got[0] == got[2],
                    "column {col} row {row} pixel {p}: {got:?} vs {want}"
                );
            }
        }
    }
}
