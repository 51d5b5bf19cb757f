//! Processors from YAML: a run with train augmentations and eval processors trains (twice the same with one
//! seed), and bad processor entries exit 2 with the key and the valid choices named.

mod common;

use std::path::Path;

use common::*;

/// A synthetic 3x12x12 classification run through `processors`, writing into `save`.
fn yaml(save: &Path, processors: &str) -> String {
    format!(
        "model:
  arch: cnn
  channels: [4]
  hidden_sizes: [8]
  output_size: 3
datasets:
  d:
    builder: synthetic
    shape: [3, 12, 12]
    classes: 3
    train_samples: 96
    val_samples: 32
    processors:
{processors}
run:
  epochs: 2
  batch: 16
  optimizer: AdamW
  lr0: 0.003
  seed: 7
  save_dir: {}
",
        save.display()
    )
}

const PROCESSORS: &str = "      train:
        - scale: {factor: 0.25, offset: 0.5}
        - random_resized_crop: {size: 8, scale: [0.3, 1.0]}
        - random_horizontal_flip
        - {name: color_jitter, brightness: 0.3, contrast: 0.3, saturation: 0.3, hue: 0.05}
        - normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
      eval:
        - scale: {factor: 0.25, offset: 0.5}
        - resize: {size: 10}
        - center_crop: {size: 8}
        - normalize: {mean: 0.5, std: 0.25}";

fn run(name: &str, processors: &str) -> (std::process::Output, RunDir) {
    let dir = scratch(name);
    let save = dir.join("run");
    let cfg = write_config(&dir, "p.yaml", &yaml(&save, processors));
    (engine(&["--config", cfg.to_str().unwrap()]), dir.into_run())
}

fn final_val(save: &Path) -> serde_json::Value {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    s["final"].clone()
}

#[test]
fn augmented_run_trains_and_repeats_exactly() {
    let (out, save) = run("proc_train", PROCESSORS);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let a = final_val(&save);
    assert!(a["loss"].as_f64().is_some_and(f64::is_finite), "{a}");
    // Same seed: the same crops, flips and jitter per (epoch, sample), so the same run.
    let (out, save) = run("proc_train_again", PROCESSORS);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(final_val(&save), a);
}

/// Runs a config that must be rejected; returns the message after checking exit code 2 and no run directory.
fn rejected(name: &str, processors: &str) -> String {
    let (out, save) = run(name, processors);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{name}: expected exit 2\n{msg}");
    assert!(!save.exists(), "{name}: run directory written");
    assert!(!msg.contains("panicked"), "{msg}");
    msg
}

#[test]
fn bad_processor_entries_exit_2_naming_the_problem() {
    let m = rejected("proc_unknown", "      train:\n        - to_float\n        - random_flip");
    assert!(
        m.contains("datasets.d.processors.train[1]")
            && m.contains("unknown processor `random_flip`")
            && m.contains("random_horizontal_flip")
            && m.contains("color_jitter, normalize"),
        "{m}"
    );
    let m = rejected("proc_bad_option", "      train:\n        - resize: {size: 0}");
    assert!(m.contains("datasets.d.processors.train[0]") && m.contains("option `size`"), "{m}");
    let m = rejected("proc_unknown_option", "      eval:\n        - center_crop: {size: 4, pad: 1}");
    assert!(m.contains("processors.eval[0]") && m.contains("unknown field `pad`") && m.contains("`size`"), "{m}");
    let m = rejected("proc_channels", "      train:\n        - normalize: {mean: [0.5, 0.5], std: [0.2, 0.2]}");
    assert!(m.contains("normalize") && m.contains("2 values") && m.contains("3 channel"), "{m}");
    let m = rejected("proc_hue", "      train:\n        - color_jitter: {hue: 0.7}");
    assert!(m.contains("`hue`") && m.contains("[0, 0.5]"), "{m}");
    // Train and eval must agree on the processed shape.
    let m = rejected("proc_mismatch", "      train:\n        - center_crop: {size: 8}");
    assert!(m.contains("[3, 12, 12]") && m.contains("[3, 8, 8]"), "{m}");
}
