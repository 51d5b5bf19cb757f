//! What a finished run leaves for other tools (issue 8): `results.csv` with one row per epoch, a TensorBoard
//! event file that reads back with valid framing and CRCs and holds the logged scalars, and PNG plots (losses,
//! validation metrics, lr, confusion matrix) that decode as images of a sensible size. Each output turns off
//! with its `run` key.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use ecstrain::systems::logging::tensorboard::{event_files, proto::What, read_events, FILE_VERSION};

const EPOCHS: usize = 3;

fn train(tag: &str, extra: &[&str]) -> (RunDir, String) {
    let dir = scratch(tag);
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&save));
    let epochs = format!("run.epochs={EPOCHS}");
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--headless", "--set", &epochs];
    for e in extra {
        args.extend(["--set", e]);
    }
    let out = engine(&args);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    drop(save);
    (dir.into_run(), log)
}

fn check_png(path: &Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{} is not a readable image: {e}", path.display()));
    let (w, h) = (img.width(), img.height());
    assert!((300..=4000).contains(&w) && (200..=4000).contains(&h), "{}: {w}x{h}", path.display());
    // A drawn chart, not a blank canvas: text, axes and lines give many distinct colours.
    let colours: BTreeSet<[u8; 3]> = img.to_rgb8().pixels().map(|p| p.0).collect();
    assert!(colours.len() > 20, "{}: only {} colours", path.display(), colours.len());
}

#[test]
fn a_digits_run_writes_results_csv_tensorboard_and_plots() {
    let (save, log) = train("outputs", &[]);

    // results.csv: a header with Ultralytics-style names, one row per epoch.
    let csv = std::fs::read_to_string(save.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), EPOCHS + 1, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    for col in ["epoch", "time", "train/loss", "val/loss", "metrics/accuracy", "metrics/top5_accuracy", "lr/pg0"] {
        assert!(header.contains(&col), "results.csv lacks {col}: {}", lines[0]);
    }
    for (i, row) in lines[1..].iter().enumerate() {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{row}");
        assert_eq!(cells[0], (i + 1).to_string());
        let acc: f64 = cells[header.iter().position(|c| *c == "metrics/accuracy").unwrap()].parse().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }

    // TensorBoard: one event file, every record's framing and CRCs valid, the version record first, and the
    // logged scalars present at increasing steps.
    let files = event_files(&save);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
    let scalars: Vec<(i64, String, f32)> =
        events.iter().flat_map(|e| e.scalars().into_iter().map(move |(t, v)| (e.step, t, v))).collect();
    let tags: BTreeSet<&str> = scalars.iter().map(|(_, t, _)| t.as_str()).collect();
    for tag in ["train/loss", "train/lr", "train/samples_per_s", "val/loss", "val/accuracy", "epoch/train_loss"] {
        assert!(tags.contains(tag), "no {tag} in the event file: {tags:?}");
    }
    let val_acc: Vec<&(i64, String, f32)> = scalars.iter().filter(|(_, t, _)| t == "val/accuracy").collect();
    assert_eq!(val_acc.len(), EPOCHS);
    assert!(val_acc.windows(2).all(|w| w[0].0 < w[1].0), "val steps increase");
    // The scalars are the logged numbers: the last val accuracy is summary.json's final one (as f32).
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    let final_acc = summary["final"]["accuracy"].as_f64().unwrap() as f32;
    assert_eq!(val_acc.last().unwrap().2, final_acc);

    // Plots: every PNG decodes as an image of sensible size.
    for f in [
        "loss.png",
        "train_loss_steps.png",
        "lr.png",
        "val_accuracy.png",
        "val_top5_accuracy.png",
        "confusion_matrix.png",
    ] {
        assert!(save.join(f).is_file(), "missing {f}\n{log}");
        check_png(&save.join(f));
    }

    // Optional: TensorBoard's own reader, when the `tensorboard` Python package is installed.
    let python = std::env::var("TENSORBOARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import tensorboard"]).output();
    if probe.is_ok_and(|o| o.status.success()) {
        let out = Command::new(&python)
            .arg(repo().join("tests/scripts/check_tensorboard.py"))
            .arg(&save)
            .arg(EPOCHS.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "tensorboard's EventAccumulator rejected the file:\n{}", text(&out));
    } else {
        eprintln!("skipping the EventAccumulator check: the tensorboard Python package is not installed");
    }
}

#[test]
fn each_output_turns_off_with_its_run_key() {
    let (save, _) = train("outputs_off", &["run.results_csv=false", "run.tensorboard=false", "run.plots=false"]);
    assert!(!save.join("results.csv").exists());
    assert!(event_files(&save).is_empty());
    let pngs: Vec<_> = std::fs::read_dir(&save)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .collect();
    assert!(pngs.is_empty(), "{pngs:?}");
    assert!(save.join("metrics.jsonl").is_file() && save.join("summary.json").is_file());
    assert!(!save.join("profile.txt").exists(), "profile.txt is written only with run.profile");
}

/// `run.profile`: the per-op table by kind on the terminal and in `profile.txt`, with every layer of the
/// model listed by its module path, forward, backward and evaluation times filled in.
#[test]
fn run_profile_writes_the_op_table() {
    let (save, log) = train("outputs_profile", &["run.profile=true"]);
    let report = std::fs::read_to_string(save.join("profile.txt")).unwrap();
    // digits_yaml's MLP: Linear(64, 32) + ReLU (fused, `model.fuse` is on by default), Linear(32, 10); one
    // forward and one backward per step.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    let steps = summary["steps"].as_u64().unwrap();
    let head = format!("Graph ops per training step (mean of {steps} forward and {steps} backward passes; evaluation:");
    assert!(report.starts_with(&head), "{report}");
    let row = |name: &str| -> Vec<String> {
        // The row of exactly this label: its numbers follow it (`Linear ` is not `Linear + Relu`).
        let is_row = |l: &&str| {
            l.strip_prefix(name).is_some_and(|rest| rest.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        };
        let line = report.lines().find(is_row).unwrap_or_else(|| panic!("no {name} row:\n{report}"));
        line[name.len()..].split_whitespace().map(str::to_string).collect()
    };
    for kind in ["Linear + Relu ", "Linear "] {
        let cells = row(kind);
        assert_eq!(cells[0], "1", "one {kind}node: {cells:?}");
        let ms: Vec<f64> = cells[1..4].iter().map(|v| v.parse().unwrap()).collect();
        assert!(
            ms.iter().all(|&v| v > 0.0) && (ms[0] + ms[1] - ms[2]).abs() < 2e-3,
            "{kind}: fwd + bwd = step: {ms:?}"
        );
    }
    for layer in ["layers.0 Linear(64, 32) + Relu", "layers.2 Linear(32, 10)"] {
        let cells = row(layer);
        let eval: f64 = cells.last().unwrap().parse().unwrap();
        assert!(eval > 0.0, "{layer}: validation forward time missing: {cells:?}");
    }
    // The kind table is echoed after the summary, pointing at the file for the per-node listing.
    assert!(log.contains("Graph ops per training step") && log.contains("profile.txt"), "{log}");
    assert!(!log.contains("Per node, in graph order"), "the per-node listing stays in the file");
}

#[test]
fn a_bad_plots_value_is_a_usage_error_naming_the_choices() {
    let dir = scratch("plots_bad");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&dir.join("run")));
    let out = engine(&["--config", cfg.to_str().unwrap(), "--set", "run.plots=sometimes"]);
    assert_eq!(out.status.code(), Some(2));
    let log = text(&out);
    assert!(log.contains("run.plots") && log.contains("end, true"), "{log}");
    assert!(!dir.join("run").exists());
}
