//! Where the engine writes what the user asked for (`export` / `quantize --out`, `run.save_dir`, `data pack
//! --out`): an existing entry is replaced only when it is a regular file (a FIFO stands in for /dev/null,
//! which a rename once replaced), a location that cannot be written or a size that cannot be held is bad
//! input (exit 2, the option and path named), and a refused output leaves nothing behind.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Trains the small digits MLP for one epoch into `<dir>/run`; returns its config path and the `--set` that
/// points export and quantize at the run.
fn trained(dir: &Path) -> (String, String) {
    let cfg = write_config(dir, "mlp.yaml", &digits_yaml(&dir.join("run")));
    let out = engine(&["--config", cfg.to_str().unwrap(), "--set", "run.epochs=1", "--headless"]);
    assert!(out.status.success(), "{}", text(&out));
    (cfg.display().to_string(), format!("run.save_dir={}", dir.join("run").display()))
}

/// `engine <cmd> --config cfg --set run --checkpoint last --out out` plus `extra`.
fn deploy(cmd: &str, (cfg, run): &(String, String), out: &Path, extra: &[&str]) -> Output {
    let o = out.display().to_string();
    let mut args = vec![cmd, "--config", cfg, "--set", run, "--checkpoint", "last", "--out", &o];
    args.extend_from_slice(extra);
    engine(&args)
}

/// Checks exit 2 with a message containing every one of `needles`, and no panic; returns the message.
fn exits_2(what: &str, out: &Output, needles: &[&str]) -> String {
    let m = text(out);
    assert_eq!(out.status.code(), Some(2), "{what}: expected exit 2:\n{m}");
    assert!(!m.contains("panicked"), "{what}: {m}");
    for n in needles {
        assert!(m.contains(n), "{what}: the message lacks `{n}`:\n{m}");
    }
    m
}

/// A FIFO at `path`, made with mkfifo(1).
fn fifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// The entries of `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn export_and_quantize_never_replace_what_is_not_a_regular_file() {
    let dir = scratch("out_special");
    let run = trained(&dir);
    let pipe = dir.join("pipe");
    fifo(&pipe);
    for (what, cmd, extra) in [
        ("export onnx", "export", &[][..]),
        ("export safetensors", "export", &["--format", "safetensors"][..]),
        ("quantize", "quantize", &[][..]),
    ] {
        let out = deploy(cmd, &run, &pipe, extra);
        exits_2(what, &out, &["--out", &pipe.display().to_string(), "a FIFO", "regular file"]);
        assert!(std::fs::symlink_metadata(&pipe).unwrap().file_type().is_fifo(), "{what}: the FIFO was replaced");
    }
    // A link to a FIFO is refused just the same.
    std::os::unix::fs::symlink(&pipe, dir.join("to_pipe")).unwrap();
    exits_2("link to a FIFO", &deploy("export", &run, &dir.join("to_pipe"), &[]), &["a FIFO"]);

    // A link to a regular file writes through it: the link stays, its target gets the model.
    std::fs::write(dir.join("target.onnx"), b"old").unwrap();
    std::os::unix::fs::symlink(dir.join("target.onnx"), dir.join("link.onnx")).unwrap();
    let out = deploy("export", &run, &dir.join("link.onnx"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::symlink_metadata(dir.join("link.onnx")).unwrap().file_type().is_symlink());
    assert!(std::fs::metadata(dir.join("target.onnx")).unwrap().len() > 1000);
    assert_eq!(listing(&dir), ["link.onnx", "mlp.yaml", "pipe", "run", "target.onnx", "to_pipe"]);
}

#[test]
fn unwritable_out_locations_exit_2_and_leave_nothing() {
    let dir = scratch("out_unwritable");
    let run = trained(&dir);
    std::fs::write(dir.join("file"), b"x").unwrap();
    for out in [dir.join("file/model.onnx"), PathBuf::from("/proc/ecstrain-export.onnx")] {
        let o = out.display().to_string();
        exits_2(&o, &deploy("export", &run, &out, &[]), &["--out", &o]);
        exits_2(&o, &deploy("quantize", &run, &out, &[]), &["--out", &o]);
    }
    // New directories made for the output are removed again when the write fails (a name too long).
    let long = dir.join("new").join("n".repeat(300)).join("model.onnx");
    exits_2("long name", &deploy("export", &run, &long, &[]), &["--out"]);
    assert_eq!(listing(&dir), ["file", "mlp.yaml", "run"]);
}

#[test]
fn run_directories_that_cannot_be_made_exit_2_and_leave_nothing() {
    let dir = scratch("out_save_dir");
    let cfg = write_config(&dir, "mlp.yaml", &digits_yaml(&dir.join("unused")));
    std::fs::write(dir.join("file"), b"x").unwrap();
    let long = dir.join("new").join("n".repeat(300));
    for save in [dir.join("file/run"), long, PathBuf::from("/proc/ecstrain-run")] {
        let set = format!("run.save_dir={}", save.display());
        let out = engine(&["--config", cfg.to_str().unwrap(), "--set", &set, "--set", "run.epochs=1", "--headless"]);
        exits_2(&set, &out, &["run.save_dir", &save.display().to_string()]);
    }
    assert_eq!(listing(&dir), ["file", "mlp.yaml"]);
}

#[test]
fn an_empty_save_dir_is_rejected_instead_of_writing_into_the_working_directory() {
    let dir = scratch("out_empty_save_dir");
    let cfg = write_config(&dir, "mlp.yaml", &digits_yaml(&dir.join("unused")));
    for empty in ["run.save_dir=''", "run.save_dir='  '"] {
        // Run from the scratch directory: without the check the run would land in the working directory.
        let out = Command::new(engine_bin())
            .args(["--config", cfg.to_str().unwrap(), "--set", empty, "--set", "run.epochs=1", "--headless"])
            .current_dir(&dir)
            .output()
            .unwrap();
        exits_2(empty, &out, &["mlp.yaml", "run.save_dir", "empty"]);
        assert_eq!(listing(&dir), ["mlp.yaml"], "{empty}: something was written");
    }
}
