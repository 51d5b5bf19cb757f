//! `engine export --format onnx` for every registered model after a short training run: onnxruntime (pip)
//! runs the .onnx on validation inputs and its output matches the engine's eval-mode forward of the same
//! checkpoint within 1e-4 relative (tests/scripts/check_onnx.py: ONNX checker with shape inference, a second
//! batch size for the dynamic batch dimension). The configs cover every op the graph IR lowers: linear
//! (Gemm and MatMul forms, fused activation), conv2d with groups and stride, every pool, batch and layer norm,
//! every activation, softmax, upsample, permute, residual add, embedding, attention (plain and causal), the
//! class token, token mean and vector quantization. Also `--format safetensors` and the bad-input exits.
//!
//! Needs python3 with `onnx` and `onnxruntime` (.ci/run installs them; ECSTRAIN_REQUIRE_ORT=1 there turns a
//! missing package into a failure instead of a skip). ECSTRAIN_PYTHON picks another interpreter.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{engine, onnxruntime_available, python, repo, scratch, text, write_config, write_npy};
use ecstrain::components::{Buffers, Graph, Mode, Params};
use ecstrain::engine::assemble::assemble;
use ecstrain::engine::cli::default_app;
use ecstrain::engine::config::load_config;
use ecstrain::systems::checkpoint::safetensors_io::load_safetensors;
use ecstrain::systems::data::npy::NpyArray;
use ecstrain::systems::graph::{forward, Activations};

/// Relative tolerance of the float export (issue 9).
const RTOL: f64 = 1e-4;

/// The engine's eval-mode output for the first `n` rows of `x_path`, with the weights of `ckpt`, the model
/// assembled from `config` + `sets` exactly as `engine export` does.
fn engine_output(config: &Path, sets: &[String], ckpt: &Path, x: &[f32], n: usize) -> (Vec<usize>, Vec<f32>) {
    let loaded = load_config(config, sets).unwrap();
    let mut asm = assemble(default_app(), loaded, true).unwrap();
    let ck = load_safetensors(ckpt).unwrap();
    ecstrain::engine::weights::load_model_exact(&mut asm.app.world, &ck, ckpt, "--checkpoint", "").unwrap();
    let world = &asm.app.world;
    let graph = world.resource::<Graph>().clone();
    let params = world.resource::<Params>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    let mut acts = Activations::plan(&graph, n);
    forward(&graph, &params, &mut buffers, &mut acts, x, n, Mode::Eval, 0);
    let mut shape = vec![n];
    shape.extend(graph.output_shape());
    (shape, acts.output(&graph, n).to_vec())
}

/// Trains `config` (one epoch unless `sets` says otherwise) into a scratch directory, exports its last
/// checkpoint, and checks the ONNX model with onnxruntime on the first 48 validation rows of `val_x`.
fn export_and_check(name: &str, config: &Path, extra_sets: &[&str], val_x: &Path) {
    let dir = scratch(&format!("onnx_{name}"));
    let mut sets: Vec<String> = vec!["run.epochs=1".into(), format!("run.save_dir={}", dir.join("run").display())];
    sets.extend(extra_sets.iter().map(|s| s.to_string()));
    let mut args: Vec<String> = vec!["--config".into(), config.display().to_string(), "--headless".into()];
    for s in &sets {
        args.extend(["--set".into(), s.clone()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = engine(&argv);
    assert!(out.status.success(), "{name}: training failed:\n{}", text(&out));
    let onnx = dir.join("model.onnx");
    let mut exp = argv.clone();
    exp.retain(|a| *a != "--headless");
    exp.splice(0..0, ["export"]);
    let onnx_s = onnx.display().to_string();
    exp.extend(["--checkpoint", "last", "--out", &onnx_s]);
    let out = engine(&exp);
    assert!(out.status.success(), "{name}: export failed:\n{}", text(&out));
    assert!(text(&out).contains("ONNX opset 17"), "{}", text(&out));

    let ckpt = dir.join("run/checkpoints/last.safetensors");
    let xs = NpyArray::open(val_x).unwrap();
    let n = 48.min(xs.rows());
    let rows: Vec<usize> = (0..n).collect();
    let mut x = vec![0.0f32; n * xs.row_len()];
    xs.read_rows_f32(&rows, &mut x).unwrap();
    let (shape, want) = engine_output(config, &sets, &ckpt, &x, n);
    let mut in_shape = vec![n];
    in_shape.extend(&xs.shape()[1..]);
    write_npy(&dir.join("input.npy"), &in_shape, &x);
    write_npy(&dir.join("expected.npy"), &shape, &want);
    let script = repo().join("tests/scripts/check_onnx.py");
    let check = Command::new(python())
        .arg(&script)
        .arg(&onnx)
        .arg(dir.join("input.npy"))
        .arg(dir.join("expected.npy"))
        .arg(RTOL.to_string())
        .output()
        .unwrap();
    let report = text(&check);
    println!("{name}: {}", report.trim());
    assert!(check.status.success(), "{name}: onnxruntime disagrees with the engine:\n{report}");
    if name == "mlp" {
        // The comparison itself: one element off by 1e-3 of the output's scale must fail it.
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let mut off = want.clone();
        off[7] += 1e-3 * scale;
        write_npy(&dir.join("expected.npy"), &shape, &off);
        let bad = Command::new(python())
            .arg(&script)
            .args([&onnx, &dir.join("input.npy"), &dir.join("expected.npy")])
            .arg(RTOL.to_string())
            .output()
            .unwrap();
        assert!(!bad.status.success(), "a perturbed expectation passed the check:\n{}", text(&bad));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn cfg(name: &str) -> PathBuf {
    repo().join("configs").join(name)
}

fn digits_val() -> PathBuf {
    repo().join("data/digits/val_x.npy")
}

#[test]
fn mlp_exports() {
    if onnxruntime_available("mlp_exports") {
        export_and_check("mlp", &cfg("digits_mlp.yaml"), &[], &digits_val());
        // A fused linear + activation node lowers to Gemm + the activation.
        export_and_check("mlp_fused", &cfg("digits_mlp.yaml"), &["model.fuse=true"], &digits_val());
    }
}

#[test]
fn cnn_exports() {
    if onnxruntime_available("cnn_exports") {
        export_and_check("cnn", &cfg("digits_cnn.yaml"), &[], &digits_val());
    }
}

#[test]
fn resnet_exports() {
    if onnxruntime_available("resnet_exports") {
        export_and_check("resnet", &cfg("digits_resnet.yaml"), &[], &digits_val());
    }
}

#[test]
fn vit_exports_with_class_token_and_with_causal_mean_pooling() {
    if onnxruntime_available("vit_exports") {
        let vit = cfg("digits_vit.yaml");
        export_and_check("vit", &vit, &["run.warmup_epochs=0"], &digits_val());
        let causal = ["run.warmup_epochs=0", "model.causal=true", "model.pool=mean"];
        export_and_check("vit_causal", &vit, &causal, &digits_val());
    }
}

#[test]
fn autoencoder_and_vq_vae_export() {
    if onnxruntime_available("autoencoder_exports") {
        export_and_check("vqvae", &cfg("digits_autoencoder.yaml"), &[], &digits_val());
        export_and_check("autoencoder", &cfg("digits_autoencoder.yaml"), &["model.codes=0"], &digits_val());
    }
}

#[test]
fn sequential_exports() {
    if onnxruntime_available("sequential_exports") {
        export_and_check("sequential", &cfg("digits_sequential.yaml"), &[], &digits_val());
    }
}

/// A sequential model through every op the registered models leave out.
#[test]
fn sequential_op_zoo_exports() {
    if !onnxruntime_available("sequential_op_zoo_exports") {
        return;
    }
    let dir = scratch("onnx_zoo_cfg");
    let yaml = std::fs::read_to_string(cfg("digits_sequential.yaml")).unwrap();
    let body = yaml.split("\ndatasets:").nth(1).unwrap();
    let r = repo().display().to_string();
    let model = r#"model:
  arch: sequential
  layers:
    - {type: reshape, shape: [1, 8, 8]}
    - {type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {type: batch_norm2d}
    - {type: silu}
    - {type: avg_pool2d, kernel: 3, stride: 1, padding: 1}
    - {type: upsample, scale: 2}
    - {type: conv2d, out_channels: 8, kernel: 3, stride: 2, padding: 2, dilation: 2}
    - {type: adaptive_avg_pool2d, output_size: 3}
    - {type: residual, layers: [{type: conv2d, out_channels: 8, kernel: 3, padding: 1, groups: 2}, {type: gelu_tanh}]}
    - {type: sigmoid}
    - {type: permute, dims: [1, 2, 0]}
    - {type: reshape, shape: [9, 8]}
    - {type: layer_norm}
    - {type: linear, out_features: 16}
    - {type: tanh}
    - {type: softmax}
    - {type: token_mean}
    - {type: linear, out_features: 10}
"#;
    let text_cfg = format!("{model}\ndatasets:{}", body.replace("data/digits/", &format!("{r}/data/digits/")));
    let path = write_config(&dir, "zoo.yaml", &text_cfg);
    export_and_check("zoo", &path, &[], &digits_val());

    // Embedding: the digits' 17 grey levels as token ids, embedded, then a global-average-pooled conv.
    let ids_dir = scratch("onnx_ids_data");
    for split in ["train", "val"] {
        let xs = NpyArray::open(&repo().join(format!("data/digits/{split}_x.npy"))).unwrap();
        let ids: Vec<f32> = xs.to_f32_vec().iter().map(|v| (v * 16.0).round()).collect();
        write_npy(&ids_dir.join(format!("{split}_x.npy")), xs.shape(), &ids);
        std::fs::copy(repo().join(format!("data/digits/{split}_y.npy")), ids_dir.join(format!("{split}_y.npy")))
            .unwrap();
    }
    let model = r#"model:
  arch: sequential
  layers:
    - {type: embedding, num_embeddings: 17, embedding_dim: 4}
    - {type: permute, dims: [1, 0]}
    - {type: reshape, shape: [4, 8, 8]}
    - {type: conv2d, out_channels: 8, kernel: 3, padding: 1}
    - {type: relu}
    - {type: global_avg_pool}
    - {type: linear, out_features: 10}
"#;
    let d = ids_dir.display().to_string();
    let text_cfg = format!("{model}\ndatasets:{}", body.replace("data/digits/", &format!("{d}/")));
    let path = write_config(&dir, "ids.yaml", &text_cfg);
    export_and_check("embedding", &path, &[], &ids_dir.join("val_x.npy"));
}

/// `--format safetensors`: the model's tensors only (no optimizer state), under the names the checkpoint and
/// PyTorch use, loadable strictly as `model.pretrained`.
#[test]
fn weights_export_as_safetensors_and_load_strictly() {
    let dir = scratch("onnx_weights");
    let run = format!("run.save_dir={}", dir.join("run").display());
    let c = cfg("digits_resnet.yaml").display().to_string();
    let out = engine(&["--config", &c, "--set", "run.epochs=1", "--set", &run, "--headless"]);
    assert!(out.status.success(), "{}", text(&out));
    let w = dir.join("weights.safetensors");
    let ws = w.display().to_string();
    let out = engine(&[
        "export",
        "--config",
        &c,
        "--set",
        &run,
        "--checkpoint",
        "last",
        "--format",
        "safetensors",
        "--out",
        &ws,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let weights = load_safetensors(&w).unwrap();
    let ckpt = load_safetensors(&dir.join("run/checkpoints/last.safetensors")).unwrap();
    assert!(weights.tensors.keys().all(|k| !k.starts_with("optimizer.")));
    assert!(
        weights.tensors.contains_key("bn1.running_mean") || weights.tensors.keys().any(|k| k.ends_with("running_mean"))
    );
    for (name, t) in &weights.tensors {
        let c = &ckpt.tensors[name];
        assert_eq!((&t.shape, t.data.dtype_name()), (&c.shape, c.data.dtype_name()), "{name}");
        assert_eq!(format!("{:?}", t.data.as_f32()), format!("{:?}", c.data.as_f32()), "{name}");
    }
    let model_tensors = ckpt.tensors.keys().filter(|k| !k.starts_with("optimizer.")).count();
    assert_eq!(weights.tensors.len(), model_tensors);
    // The exported file is a strict pretrained source for the same model.
    let pre = format!("model.pretrained={ws}");
    let out = engine(&["check", "--config", &c, "--set", &pre, "--set", "model.strict=true"]);
    assert!(out.status.success() && text(&out).contains("config OK"), "{}", text(&out));
}

/// Bad input exits 2 with the key named, and writes nothing: a checkpoint of another model, a missing
/// checkpoint, an unknown format.
#[test]
fn bad_export_input_exits_2_and_writes_nothing() {
    let dir = scratch("onnx_bad");
    let run = format!("run.save_dir={}", dir.join("run").display());
    let mlp = cfg("digits_mlp.yaml").display().to_string();
    let out = engine(&["--config", &mlp, "--set", "run.epochs=1", "--set", &run, "--headless"]);
    assert!(out.status.success(), "{}", text(&out));
    let target = dir.join("model.onnx");
    let t = target.display().to_string();

    let cnn = cfg("digits_cnn.yaml").display().to_string();
    let out = engine(&["export", "--config", &cnn, "--set", &run, "--checkpoint", "last", "--out", &t]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--checkpoint") && text(&out).contains("does not match the model"), "{}", text(&out));

    let missing = dir.join("nope.safetensors").display().to_string();
    let out = engine(&["export", "--config", &mlp, "--checkpoint", &missing, "--out", &t]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("checkpoint not found"), "{}", text(&out));

    let out =
        engine(&["export", "--config", &mlp, "--set", &run, "--checkpoint", "last", "--format", "tflite", "--out", &t]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("tflite") && text(&out).contains("onnx") && text(&out).contains("safetensors"),
        "{}",
        text(&out)
    );

    let out = engine(&[
        "export",
        "--config",
        &mlp,
        "--set",
        &run,
        "--checkpoint",
        "last",
        "--out",
        &dir.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is a directory"), "{}", text(&out));

    assert!(!target.exists(), "a failed export left {t}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(leftovers.iter().all(|n| n == "run"), "files left behind: {leftovers:?}");
}
