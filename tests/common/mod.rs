//! Shared helpers of the end-to-end tests: run the real `engine` binary in a scratch directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (configs/ and data/ live there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecstrain-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `engine` with `args` from the repository root.
pub fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine")).args(args).current_dir(repo()).output().expect("engine runs")
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

/// A small valid digits config writing into `save_dir`; tests replace pieces of it.
pub fn digits_yaml(save_dir: &Path) -> String {
    let r = repo().display().to_string();
    [
        "model:".to_string(),
        "  arch: mlp".into(),
        "  input_size: 64".into(),
        "  hidden_sizes: [32]".into(),
        "  output_size: 10".into(),
        "datasets:".into(),
        "  digits:".into(),
        "    builder: npy".into(),
        "    train:".into(),
        format!("      x: {r}/data/digits/train_x.npy"),
        format!("      y: {r}/data/digits/train_y.npy"),
        "    val:".into(),
        format!("      x: {r}/data/digits/val_x.npy"),
        format!("      y: {r}/data/digits/val_y.npy"),
        "run:".into(),
        "  epochs: 2".into(),
        "  batch: 64".into(),
        "  optimizer: AdamW".into(),
        "  lr0: 0.001".into(),
        format!("  save_dir: {}", save_dir.display()),
    ]
    .join("\n")
        + "\n"
}
