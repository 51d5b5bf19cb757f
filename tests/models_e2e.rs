//! End to end: the ResNet, ViT and autoencoder configs shipped in configs/ train to their targets, and a run
//! with batch-norm buffers resumes exactly.

mod common;

use std::path::Path;

use common::*;

fn summary(save: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap()
}

/// Trains `config` into `<scratch>/run` (extra `--set` overrides in `sets`) and returns the scratch directory.
fn train(name: &str, config: &str, sets: &[&str]) -> Scratch {
    let dir = scratch(name);
    let save = dir.join("run");
    let mut args =
        vec!["--config".to_string(), config.to_string(), "--set".into(), format!("run.save_dir={}", save.display())];
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = engine(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    dir
}

#[test]
fn digits_resnet_config_reaches_97_percent() {
    let dir = train("digits_resnet", "configs/digits_resnet.yaml", &[]);
    let save = dir.join("run");
    let best = summary(&save)["best"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(best >= 0.97, "digits ResNet best val accuracy {best} < 0.97");
    let ck =
        ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&save.join("checkpoints/best.safetensors"))
            .unwrap();
    // Batch-norm statistics travel with the weights, under PyTorch's names and dtypes.
    assert_eq!(ck.tensors["layer2.0.downsample.1.running_var"].shape, vec![32]);
    let tracked = ck.tensors["bn1.num_batches_tracked"].data.as_i64().expect("int64 counter")[0];
    assert!(tracked > 0, "num_batches_tracked {tracked}");
}

#[test]
fn digits_vit_config_reaches_97_percent() {
    let dir = train("digits_vit", "configs/digits_vit.yaml", &[]);
    let save = dir.join("run");
    let best = summary(&save)["best"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(best >= 0.97, "digits ViT best val accuracy {best} < 0.97");
}

#[test]
fn resnet_run_resumes_exactly_with_batch_norm_statistics() {
    let dir = scratch("resnet_resume");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let common = ["model.type=resnet8", "model.width=4", "run.scheduler=constant", "run.seed=5"];
    let run = |save: &Path, extra: &[&str]| {
        let mut args = vec!["--config", "configs/digits_resnet.yaml"];
        let save_set = format!("run.save_dir={}", save.display());
        let mut sets: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        sets.push(save_set);
        sets.extend(extra.iter().map(|s| s.to_string()));
        for s in &sets {
            args.push("--set");
            args.push(s);
        }
        let out = engine(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    run(&a, &["run.epochs=3"]);
    run(&b, &["run.epochs=2"]);
    run(&b, &["run.epochs=3", "run.resume=true"]);
    let load = |p: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap();
    let full = load(&a.join("checkpoints/last.safetensors"));
    let resumed = load(&b.join("checkpoints/last.safetensors"));
    assert!(full.tensors.contains_key("layer1.0.bn2.running_mean"));
    assert_eq!(full.tensors, resumed.tensors, "2 + 1 resumed epochs differ from 3 uninterrupted epochs");
}

#[test]
fn digits_autoencoder_config_gains_6_db_psnr_over_its_first_epoch() {
    let dir = train("digits_autoencoder", "configs/digits_autoencoder.yaml", &[]);
    let save = dir.join("run");
    let psnr: Vec<f64> = std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == "val")
        .map(|r| r["psnr"].as_f64().expect("val records carry psnr"))
        .collect();
    assert_eq!(psnr.len(), 30);
    let best = summary(&save)["best"]["metrics"]["psnr"].as_f64().unwrap();
    assert!(best >= psnr[0] + 6.0, "VQ-VAE best val PSNR {best} dB vs {} dB after epoch 1: < +6 dB", psnr[0]);
}

/// Writes the digits as token sequences: each pixel (0..16 in the original data, stored / 16) becomes the id
/// `round(16 x)` of a 17-word vocabulary; labels are copied. Returns the config text.
fn token_digits(dir: &Path, save: &Path, corrupt: bool) -> String {
    use ecstrain::systems::data::npy::{write_npy, NpyArray};
    for split in ["train", "val"] {
        let x = NpyArray::open(&repo().join(format!("data/digits/{split}_x.npy"))).unwrap();
        let mut ids: Vec<f32> = x.to_f32_vec().iter().map(|v| (v * 16.0).round()).collect();
        if corrupt && split == "val" {
            ids[5 * 64 + 3] = 17.0; // sample 5: one id past the vocabulary
        }
        write_npy(&dir.join(format!("{split}_x.npy")), &[ids.len() / 64, 64], &ids).unwrap();
        std::fs::copy(repo().join(format!("data/digits/{split}_y.npy")), dir.join(format!("{split}_y.npy"))).unwrap();
    }
    let d = dir.display();
    format!(
        "model:\n  arch: sequential\n  layers:\n    - {{type: embedding, num_embeddings: 17, embedding_dim: 8}}\n    - {{type: flatten}}\n    - {{type: linear, out_features: 64}}\n    - {{type: relu}}\n    - {{type: linear, out_features: 10}}\n\
         datasets:\n  tokens:\n    builder: npy\n    train: {{x: {d}/train_x.npy, y: {d}/train_y.npy}}\n    val: {{x: {d}/val_x.npy, y: {d}/val_y.npy}}\n\
         run:\n  epochs: 12\n  batch: 64\n  optimizer: AdamW\n  lr0: 0.003\n  save_dir: {}\n",
        save.display()
    )
}

#[test]
fn embedding_model_trains_on_token_ids_and_bad_ids_exit_2() {
    let dir = scratch("tokens");
    let save = dir.join("run");
    let cfg = write_config(&dir, "tokens.yaml", &token_digits(&dir, &save, false));
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let best = summary(&save)["best"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(best >= 0.9, "token-embedding digits best val accuracy {best} < 0.9");

    let bad = scratch("tokens_bad");
    let save = bad.join("run");
    let cfg = write_config(&bad, "tokens.yaml", &token_digits(&bad, &save, true));
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains("layers.0") && msg.contains("val_x.npy") && msg.contains("sample 5") && msg.contains("0..17"),
        "{msg}"
    );
    assert!(!save.exists() && !msg.contains("panicked"), "{msg}");
}
