//! A run killed with SIGKILL at a random moment after a checkpoint, then resumed, ends exactly as an
//! uninterrupted run: the same final parameters and optimizer state bit for bit, and the same metrics.jsonl
//! records (timing fields aside: samples/s and epoch time are measurements, not results), the same
//! results.csv rows, and a TensorBoard log that TensorBoard reads as one run (the resumed file's session start
//! drops what the killed run logged after its checkpoint).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// results.csv rows as column -> cell, without the wall-clock columns.
fn csv_rows(dir: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .filter(|(c, _)| !matches!(**c, "time" | "epoch_time_s" | "data_wait" | "data_wait_frac"))
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// metrics.jsonl without the wall-clock fields.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in ["samples_per_s", "epoch_time_s", "time", "eta_s", "data_wait", "data_wait_frac"] {
                o.remove(k);
                if let Some(m) = o.get_mut("values").and_then(|m| m.as_object_mut()) {
                    m.remove(k);
                }
            }
            v
        })
        .collect()
}

#[test]
fn sigkill_after_a_checkpoint_then_resume_continues_exactly() {
    let dir = scratch("kill_resume");
    // Wide enough that an epoch takes a noticeable time, so the kill lands mid-epoch.
    let yaml = |save: &Path| {
        digits_yaml(save)
            .replace("hidden_sizes: [32]", "hidden_sizes: [1024, 1024]\n  dropout: 0.1")
            .replace("epochs: 2", "epochs: 6")
            + "  seed: 4\n  log_interval: 2\n"
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (ca, cb) = (write_config(&dir, "a.yaml", &yaml(&a)), write_config(&dir, "b.yaml", &yaml(&b)));
    let out = engine(&["--config", ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The same run, killed at a pseudo-random moment after its first checkpoint.
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--config", cb.to_str().unwrap()])
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let last = b.join("checkpoints/last.safetensors");
    let t0 = Instant::now();
    while !last.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 150)));
    child.kill().unwrap(); // SIGKILL on unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it could be killed; make it longer");

    let out = engine(&["--config", cb.to_str().unwrap(), "--set", "run.resume=true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let load = |p: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap();
    let (full, resumed) = (load(&a.join("checkpoints/last.safetensors")), load(&last));
    assert_eq!(full.tensors, resumed.tensors, "killed + resumed run differs from the uninterrupted one");
    assert_eq!(full.metadata["optimizer_step"], resumed.metadata["optimizer_step"]);
    assert_eq!(records(&a), records(&b), "metrics.jsonl differs");
    assert_eq!(csv_rows(&a), csv_rows(&b), "results.csv differs");
    assert_eq!(csv_rows(&b).len(), 6);

    // TensorBoard: the resumed run wrote a second file that starts a session after the checkpoint's step.
    use ecstrain::systems::logging::tensorboard::{event_files, proto, read_events};
    let files = event_files(&b);
    assert_eq!(files.len(), 2, "{files:?}");
    let events = read_events(&files[1]).unwrap();
    match &events[1].what {
        Some(proto::What::SessionLog(s)) => assert!(s.status == proto::SESSION_START && events[1].step > 0),
        other => panic!("the resumed file does not start with a session start: {other:?}"),
    }
    // And TensorBoard's own reader, when installed, sees one val/accuracy point per epoch.
    let python = std::env::var("TENSORBOARD_PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python).args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success()) {
        let out = Command::new(&python)
            .arg(repo().join("tests/scripts/check_tensorboard.py"))
            .arg(&b)
            .arg("6")
            .output()
            .unwrap();
        assert!(out.status.success(), "TensorBoard reads the resumed run wrongly:\n{}", text(&out));
    }
}
