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
fn a_reused_run_directory_with_special_files_at_output_names_exits_2_untouched() {
    let dir = scratch("out_reused_run_dir");
    let save = dir.join("run");
    std::fs::create_dir_all(save.join("checkpoints/best.safetensors")).unwrap();
    let cfg = write_config(&dir, "mlp.yaml", &digits_yaml(&save));
    let set = "run.exist_ok=true";
    for (name, kind) in [("metrics.jsonl", "FIFO"), ("checkpoints/best.safetensors", "directory")] {
        if kind == "FIFO" {
            fifo(&save.join(name));
        }
        // Spawned with a deadline: opening the FIFO for writing would block forever.
        let mut child = Command::new(engine_bin())
            .args(["--config", cfg.to_str().unwrap(), "--set", set, "--set", "run.epochs=1", "--headless"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("{name}: the run blocked on the {kind}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        exits_2(name, &out, &["run.save_dir", &save.join(name).display().to_string(), kind]);
        assert_eq!(listing(&save), ["checkpoints", "metrics.jsonl"], "{name}: the run wrote into the directory");
        if kind == "FIFO" {
            std::fs::remove_file(save.join(name)).unwrap();
            std::fs::write(save.join(name), b"").unwrap();
        }
    }
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

/// `engine data pack --src src --out out` plus `extra`.
fn pack(src: &Path, out: &Path, extra: &[&str]) -> Output {
    let (s, o) = (src.display().to_string(), out.display().to_string());
    let mut args = vec!["data", "pack", "--src", &s, "--out", &o];
    args.extend_from_slice(extra);
    engine(&args)
}

/// The CRC-32 of PNG chunks (ISO 3309, reflected polynomial 0xEDB88320).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header claims `w` x `h` RGB pixels, with no pixel data behind it (its one IDAT chunk is the
/// zlib stream of nothing).
fn lying_png(path: &Path, w: u32, h: u32) {
    let chunk = |kind: &[u8], data: &[u8]| {
        let body: Vec<u8> = [kind, data].concat();
        [&(data.len() as u32).to_be_bytes()[..], &body, &crc32(&body).to_be_bytes()].concat()
    };
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    let png = [
        &b"\x89PNG\r\n\x1a\n"[..],
        &chunk(b"IHDR", &ihdr),
        &chunk(b"IDAT", &[0x78, 0x9C, 3, 0, 0, 0, 0, 1]),
        &chunk(b"IEND", &[]),
    ]
    .concat();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, png).unwrap();
}

#[test]
fn pack_rejects_sizes_it_cannot_hold_and_leaves_nothing() {
    let dir = scratch("out_pack");
    let digits = repo().join("data/digits_images");
    let out = dir.join("outx/p");
    // 3 x 2^32 x 2^32 bytes per image overflows; 3 x 100000^2 is 30 GB per image.
    let m = exits_2("overflow", &pack(&digits, &out, &["--size", "4294967296"]), &["--size", "2 GiB"]);
    assert!(m.contains("more than 2^64"), "{m}");
    exits_2("huge", &pack(&digits, &out, &["--size", "100000", "100000"]), &["--size 100000 100000", "2 GiB"]);
    // Under the per-image limit, but a shard of 1437 such images is terabytes.
    exits_2("shard", &pack(&digits, &out, &["--size", "26000", "26000", "--splits", "train"]), &["--shard-size"]);
    // An image header claiming 100000 x 100000: named, before any buffer for it is allocated.
    let lying = dir.join("lying");
    lying_png(&lying.join("a/0.png"), 100_000, 100_000);
    lying_png(&lying.join("b/0.png"), 100_000, 100_000);
    exits_2("header", &pack(&lying, &out, &[]), &["a/0.png", "100000x100000", "--size"]);
    // With --size the decoder's limit (the one the image_folder dataset reads with) refuses it.
    exits_2("decode", &pack(&lying, &out, &["--size", "8"]), &["0.png", "limit"]);
    // An output under a regular file.
    std::fs::write(dir.join("file"), b"x").unwrap();
    exits_2("under a file", &pack(&lying, &dir.join("file/p"), &["--size", "8"]), &["--out", "file"]);
    assert_eq!(listing(&dir), ["file", "lying"], "a refused pack left something behind");
}
