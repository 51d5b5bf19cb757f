//! Iteration-based runs (`run.max_iters`, `run.iters_per_inner_epoch`) end to end: with one pass over the data
//! per inner epoch they train exactly as the epoch runner; with inner epochs that cut passes (and accumulation,
//! warm-up, dropout) they validate and checkpoint per inner epoch and resume mid-run bit for bit.

mod common;

use std::path::Path;

use common::*;

fn load(p: &Path) -> ecstrain::systems::checkpoint::safetensors_io::LoadedCheckpoint {
    ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap()
}

fn records(dir: &Path, split: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == split)
        .collect()
}

fn trained(args: &[&str]) -> String {
    let out = engine(args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    text(&out)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn one_pass_per_inner_epoch_trains_as_the_epoch_runner() {
    let dir = scratch("iters_equal_epochs");
    let (a, b) = (dir.join("epochs"), dir.join("iters"));
    let yaml = |save: &Path| digits_yaml(save).replace("hidden_sizes: [32]", "hidden_sizes: [32]\n  dropout: 0.2");
    let ca = write_config(&dir, "a.yaml", &yaml(&a));
    let cb = write_config(&dir, "b.yaml", &yaml(&b));
    trained(&["--config", ca.to_str().unwrap()]);
    // 1437 samples in batches of 64: 23 optimizer steps per pass.
    let log = trained(&[
        "--config",
        cb.to_str().unwrap(),
        "--set",
        "run.max_iters=46",
        "--set",
        "run.iters_per_inner_epoch=23",
    ]);
    assert!(log.contains("46 optimizer steps in 2 inner epochs of 23 (run.epochs is ignored)"), "{log}");
    let (ea, eb) = (load(&a.join("checkpoints/last.safetensors")), load(&b.join("checkpoints/last.safetensors")));
    assert!(ea.tensors == eb.tensors, "iteration run with one pass per inner epoch differs from the epoch run");
    assert_eq!(ea.metadata["clock"], eb.metadata["clock"]);
    let strip = |r: &[serde_json::Value]| -> Vec<(u64, u64, f64, f64)> {
        r.iter()
            .map(|v| {
                (
                    v["epoch"].as_u64().unwrap(),
                    v["step"].as_u64().unwrap(),
                    v["accuracy"].as_f64().unwrap(),
                    v["loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&records(&a, "val")), strip(&records(&b, "val")));
}

#[test]
fn inner_epochs_cut_passes_validate_per_inner_epoch_and_resume_exactly() {
    let dir = scratch("iters_resume");
    let a = dir.join("a");
    // Batch 32 with nbs 64: 45 micro-batches, 23 optimizer steps per pass (the last one a single batch), so the
    // data wraps inside inner epoch 4 (steps 21..28); the linear schedule and the warm-up span the whole run.
    let yaml = digits_yaml(&a)
        .replace("hidden_sizes: [32]", "hidden_sizes: [32]\n  dropout: 0.2")
        .replace("batch: 64", "batch: 32")
        + "  max_iters: 40\n  iters_per_inner_epoch: 7\n  warmup_epochs: 1\n  save_period: 3\n  seed: 5\n";
    let cfg = write_config(&dir, "a.yaml", &yaml);
    let c = cfg.to_str().unwrap();
    trained(&["--config", c]);

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 40);
    assert_eq!(summary["epochs_completed"], 6);
    assert_eq!(summary["epochs"], 6);
    assert_eq!(summary["max_iters"], 40);
    let vals = records(&a, "val");
    let at: Vec<(u64, u64)> =
        vals.iter().map(|v| (v["epoch"].as_u64().unwrap(), v["step"].as_u64().unwrap())).collect();
    assert_eq!(at, [(1, 7), (2, 14), (3, 21), (4, 28), (5, 35), (6, 40)], "one val record per inner epoch");
    assert_eq!(records(&a, "epoch").len(), 6);
    let best_epoch = summary["best"]["epoch"].as_u64().unwrap();
    assert!((1..=6).contains(&best_epoch), "{summary}");
    for f in ["last", "best", "epoch3", "epoch6"] {
        assert!(a.join(format!("checkpoints/{f}.safetensors")).is_file(), "missing {f}.safetensors");
    }
    assert!(!a.join("checkpoints/epoch4.safetensors").exists());
    // The lr follows the closed form over 40 steps: warm-up for the first inner epoch, then linear decay.
    let lrs: Vec<f64> = records(&a, "epoch").iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    assert!(lrs.windows(2).skip(1).all(|w| w[1] < w[0]), "lr should decay after the warm-up: {lrs:?}");

    // Resume a copy from the checkpoint of inner epoch 3 (step 21, mid-pass): it ends where the full run did.
    let b = dir.join("b");
    copy_dir(&a, &b);
    let ck = b.join("checkpoints/epoch3.safetensors");
    let log = trained(&["--config", c, "--set", &format!("run.resume={}", ck.display())]);
    assert!(log.contains("resuming from") && log.contains("at epoch 4 (step 21)"), "{log}");
    let (full, resumed) =
        (load(&a.join("checkpoints/last.safetensors")), load(&b.join("checkpoints/last.safetensors")));
    assert!(full.tensors == resumed.tensors, "3 + 3 resumed inner epochs differ from 6 uninterrupted ones");
    assert_eq!(full.metadata["clock"], resumed.metadata["clock"]);
    assert_eq!(full.metadata["optimizer_step"], resumed.metadata["optimizer_step"]);

    // A checkpoint resumes only in a run of its kind and inner-epoch length.
    let out = engine(&[
        "--config",
        c,
        "--set",
        &format!("run.resume={}", ck.display()),
        "--set",
        "run.iters_per_inner_epoch=5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not at the end of an inner epoch"), "{}", text(&out));
    let epoch_yaml = yaml.replace("  max_iters: 40\n  iters_per_inner_epoch: 7\n", "");
    let ce = write_config(&dir, "e.yaml", &epoch_yaml);
    let out = engine(&["--config", ce.to_str().unwrap(), "--set", &format!("run.resume={}", ck.display())]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("iteration-based run"), "{}", text(&out));
}
