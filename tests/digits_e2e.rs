//! The default example end to end: `engine --config configs/digits_mlp.yaml` trains to the accuracy bar and
//! writes every file of the run-directory contract; the checkpoint loads in Python's `safetensors`; the
//! same seed gives the same parameters; an existing directory gets a numbered sibling.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn default_config_trains_to_accuracy_and_writes_the_run_directory() {
    let dir = scratch("digits_default");
    let save = dir.join("run");
    let out = engine(&["--config", "configs/digits_mlp.yaml", "--set", &format!("run.save_dir={}", save.display())]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    for f in
        ["config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.safetensors", "checkpoints/best.safetensors"]
    {
        assert!(save.join(f).is_file(), "missing {f}");
    }
    let s = summary(&save);
    let best = s["best"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(best >= 0.975, "best val accuracy {best} < 0.975\n{log}");
    assert_eq!(s["epochs_completed"], 30);
    assert!(s["samples_per_s"].as_f64().unwrap() > 0.0);
    assert!(s["wall_time_s"].as_f64().unwrap() > 0.0);

    // metrics.jsonl: one JSON object per line, with a val record per epoch.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let vals: Vec<&serde_json::Value> = lines.iter().filter(|l| l["split"] == "val").collect();
    assert_eq!(vals.len(), 30);
    for v in &vals {
        assert!(v["step"].is_u64() && v["epoch"].is_u64() && v["accuracy"].is_f64() && v["loss"].is_f64(), "{v}");
    }
    assert!(lines.iter().any(|l| l["split"] == "train" && l["loss"].is_f64() && l["lr"].is_f64()));

    // config.yaml is the resolved config: it runs as-is and has every default filled in.
    let cfg = std::fs::read_to_string(save.join("config.yaml")).unwrap();
    assert!(cfg.contains("lr0: 0.001") && cfg.contains("nbs: 64") && cfg.contains("arch: mlp"), "{cfg}");
    let out = engine(&["check", "--config", save.join("config.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The checkpoint loads in Python's safetensors with every parameter under its dotted name.
    let out = Command::new("python3")
        .arg(repo().join("tests/scripts/check_safetensors.py"))
        .arg(save.join("checkpoints/best.safetensors"))
        .args([
            "layers.0.weight=256x64",
            "layers.0.bias=256",
            "layers.2.weight=256x256",
            "layers.2.bias=256",
            "layers.4.weight=10x256",
            "layers.4.bias=10",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python safetensors check failed (is `pip install safetensors numpy` done?):\n{}",
        text(&out)
    );
}

#[test]
fn same_seed_gives_the_same_parameters_and_dirs_are_numbered() {
    let dir = scratch("digits_seed");
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&save));
    let c = cfg.to_str().unwrap();
    for _ in 0..2 {
        let out = engine(&["--config", c, "--set", "model.dropout=0.2"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert!(dir.join("run2").is_dir(), "second run should get a numbered sibling directory");
    let load = |p: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap();
    let a = load(&save.join("checkpoints/last.safetensors"));
    let b = load(&dir.join("run2/checkpoints/last.safetensors"));
    assert_eq!(a.tensors, b.tensors, "same seed, different parameters");
    // A different seed gives different parameters.
    let out = engine(&["--config", c, "--set", "run.seed=1", "--set", "run.exist_ok=true"]);
    assert_eq!(out.status.code(), Some(0));
    let c1 = load(&save.join("checkpoints/last.safetensors"));
    assert_ne!(a.tensors["layers.0.weight"], c1.tensors["layers.0.weight"]);
    // The checkpoint carries optimizer state, clock and config for a later resume.
    for k in ["optimizer.exp_avg", "optimizer.exp_avg_sq"] {
        assert!(a.tensors.contains_key(k), "missing {k}");
    }
    for k in ["clock", "optimizer_step", "config", "format"] {
        assert!(a.metadata.contains_key(k), "missing metadata {k}");
    }
}

#[test]
fn resumed_run_continues_exactly() {
    let dir = scratch("digits_resume");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let yaml = |save: &Path| digits_yaml(save).replace("epochs: 2", "epochs: 4\n  scheduler: constant") + "  seed: 3\n";
    let ca =
        write_config(&dir, "a.yaml", &yaml(&a).replace("hidden_sizes: [32]", "hidden_sizes: [32]\n  dropout: 0.2"));
    let cb =
        write_config(&dir, "b.yaml", &yaml(&b).replace("hidden_sizes: [32]", "hidden_sizes: [32]\n  dropout: 0.2"));
    let run = |args: &[&str]| {
        let out = engine(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        text(&out)
    };
    run(&["--config", ca.to_str().unwrap()]);
    run(&["--config", cb.to_str().unwrap(), "--set", "run.epochs=2"]);
    let log = run(&["--config", cb.to_str().unwrap(), "--set", "run.resume=true"]);
    assert!(log.contains("resuming from") && log.contains("at epoch 3"), "{log}");
    assert!(!dir.join("b2").exists(), "a resumed run must continue in its own directory");
    let load = |p: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap();
    let full = load(&a.join("checkpoints/last.safetensors"));
    let resumed = load(&b.join("checkpoints/last.safetensors"));
    assert_eq!(full.tensors, resumed.tensors, "2 + 2 resumed epochs differ from 4 uninterrupted epochs");
    assert_eq!(full.metadata["optimizer_step"], resumed.metadata["optimizer_step"]);
    let vals = std::fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"split\":\"val\""))
        .count();
    assert_eq!(vals, 4, "metrics.jsonl of the resumed run should hold all 4 epochs");

    // A checkpoint that does not fit the model is rejected with exit 2.
    let out =
        engine(&["--config", cb.to_str().unwrap(), "--set", "run.resume=true", "--set", "model.hidden_sizes=[16]"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("layers.0.weight") && text(&out).contains("shape"), "{}", text(&out));
    let out = engine(&["--config", cb.to_str().unwrap(), "--set", "run.resume=/nonexistent/last.safetensors"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("checkpoint not found"), "{}", text(&out));
}

#[test]
fn digits_cnn_config_trains_and_its_checkpoint_loads_in_python() {
    let dir = scratch("digits_cnn");
    let save = dir.join("run");
    let out = engine(&["--config", "configs/digits_cnn.yaml", "--set", &format!("run.save_dir={}", save.display())]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let best = summary(&save)["best"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(best >= 0.97, "digits CNN best val accuracy {best} < 0.97\n{log}");
    let out = Command::new("python3")
        .arg(repo().join("tests/scripts/check_safetensors.py"))
        .arg(save.join("checkpoints/best.safetensors"))
        .args([
            "features.0.weight=16x1x3x3",
            "features.0.bias=16",
            "features.3.weight=32x16x3x3",
            "classifier.0.weight=64x128",
            "classifier.2.weight=10x64",
        ])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python safetensors check failed:\n{}", text(&out));
}

#[test]
fn digits_sequential_config_written_in_yaml_trains() {
    let dir = scratch("digits_sequential");
    let save = dir.join("run");
    let out =
        engine(&["--config", "configs/digits_sequential.yaml", "--set", &format!("run.save_dir={}", save.display())]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let best = summary(&save)["best"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(best >= 0.97, "digits sequential best val accuracy {best} < 0.97\n{log}");
    let ck =
        ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&save.join("checkpoints/best.safetensors"))
            .unwrap();
    assert_eq!(ck.tensors["layers.1.weight"].shape, vec![16, 1, 3, 3]);
    assert_eq!(ck.tensors["layers.11.weight"].shape, vec![10, 64]);
}

#[test]
fn a_checkpoint_with_unreadable_resume_state_is_refused() {
    use ecstrain::systems::checkpoint::safetensors_io::{load_safetensors, save_safetensors, LoadedData, TensorData};
    // A resume that silently dropped these would restart the optimizer's bias corrections or forget the best
    // epoch; it must say which key is broken instead.
    let dir = scratch("digits_resume_corrupt");
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&save));
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ck = load_safetensors(&save.join("checkpoints/last.safetensors")).unwrap();
    for (key, value, want) in [
        ("optimizer_step", "-5", "metadata `optimizer_step` is not a step count"),
        ("training_state", "{]", "metadata `training_state` is not readable JSON"),
    ] {
        let mut meta = ck.metadata.clone();
        meta.insert(key.into(), value.into());
        let tensors: Vec<(String, Vec<usize>, TensorData<'_>)> = ck
            .tensors
            .iter()
            .map(|(n, t)| {
                let data = match &t.data {
                    LoadedData::F32(v) => TensorData::F32(v),
                    LoadedData::F64(v) => TensorData::F64(v),
                    LoadedData::I64(v) => TensorData::I64(v),
                };
                (n.clone(), t.shape.clone(), data)
            })
            .collect();
        let bad = dir.join(format!("bad_{key}.safetensors"));
        save_safetensors(&bad, &tensors, &meta).unwrap();
        let resume = format!("run.resume={}", bad.display());
        let out = engine(&["--config", cfg.to_str().unwrap(), "--set", &resume, "--set", "run.epochs=3"]);
        assert_eq!(out.status.code(), Some(2), "{key}: {}", text(&out));
        assert!(text(&out).contains(want), "{key}: {}", text(&out));
    }
}
