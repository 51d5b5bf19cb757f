//! A run killed with SIGKILL at a random moment after a checkpoint, then resumed, ends exactly as an
//! uninterrupted run: the same final parameters and optimizer state bit for bit, and the same metrics.jsonl
//! records (timing fields aside: samples/s and epoch time are measurements, not results).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

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
}
