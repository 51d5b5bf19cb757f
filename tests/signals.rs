//! Stops between optimizer steps: SIGTERM (and SIGINT, SIGUSR1) mid-epoch -> exit 130 within seconds with a
//! valid `last.safetensors` for the step it stopped after; `run.resume: auto` then ends exactly where an
//! uninterrupted run ends (parameters, optimizer state and metrics.jsonl records, timing fields aside).
//! `run.time_limit` stops the same way with exit 0 and stop reason `time_limit`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// metrics.jsonl without the wall-clock fields.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in ["samples_per_s", "epoch_time_s", "data_wait", "data_wait_frac"] {
                o.remove(k);
            }
            v
        })
        .collect()
}

fn load(p: &Path) -> ecstrain::systems::checkpoint::safetensors_io::LoadedCheckpoint {
    ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap()
}

/// A run long enough (several seconds) that a signal lands mid-epoch.
fn long_yaml(save: &Path) -> String {
    digits_yaml(save)
        .replace("hidden_sizes: [32]", "hidden_sizes: [1024, 1024]\n  dropout: 0.1")
        .replace("epochs: 2", "epochs: 5")
        + "  seed: 7\n  log_interval: 3\n  resume: auto\n"
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--config", config.to_str().unwrap()])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `signal` (e.g. "TERM") to the child with kill(1).
fn send(child: &Child, signal: &str) {
    let ok = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{signal} failed");
}

/// Waits for the run to have trained a few steps (a train record in metrics.jsonl), plus a pseudo-random
/// delay so the signal lands anywhere in a step.
fn wait_for_training(dir: &Path) {
    let t0 = Instant::now();
    let log = dir.join("metrics.jsonl");
    while std::fs::read_to_string(&log).map_or(true, |t| !t.contains("\"train\"")) {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run never logged a train record");
        std::thread::sleep(Duration::from_millis(2));
    }
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 200)));
}

/// Waits for the child, at most `limit`; returns its exit code, the wait, and its output.
fn wait(mut child: Child, limit: Duration) -> (Option<i32>, Duration, String) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (status.code(), t0.elapsed(), text(&out));
        }
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("the run did not exit within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_checkpoints_exits_130_and_resumes_exactly() {
    let dir = scratch("signals_term");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (ca, cb) = (write_config(&dir, "a.yaml", &long_yaml(&a)), write_config(&dir, "b.yaml", &long_yaml(&b)));
    let out = engine(&["--config", ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let child = spawn(&cb);
    wait_for_training(&b);
    send(&child, "TERM");
    let (code, took, log) = wait(child, Duration::from_secs(10));
    assert_eq!(code, Some(130), "{log}");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert!(log.contains("stopped by SIGTERM after step"), "{log}");
    // A valid checkpoint of the step it stopped after, and no temporary file left behind.
    let ck = load(&b.join("checkpoints/last.safetensors"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stop_reason"], "signal SIGTERM");
    assert_eq!(ck.metadata["optimizer_step"], summary["steps"].to_string(), "checkpoint of another step");
    // Usually mid-epoch (the resumed run then continues its epoch); at an epoch's end when the signal came
    // during validation.
    let mid = ck.metadata.get("mid_epoch").is_some_and(|v| v == "true");
    println!("stopped after step {} (mid-epoch: {mid}) in {took:?}", summary["steps"]);
    for e in std::fs::read_dir(b.join("checkpoints")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(name.ends_with(".safetensors"), "left over: {name}");
    }

    // The requeued job: the same command (`resume: auto`) continues and ends as the uninterrupted run.
    let out = engine(&["--config", cb.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("resuming from"), "{}", text(&out));
    let (full, resumed) =
        (load(&a.join("checkpoints/last.safetensors")), load(&b.join("checkpoints/last.safetensors")));
    assert_eq!(full.tensors, resumed.tensors, "interrupted + resumed run differs from the uninterrupted one");
    assert_eq!(full.metadata["optimizer_step"], resumed.metadata["optimizer_step"]);
    assert_eq!(records(&a), records(&b), "metrics.jsonl differs");
}

#[test]
fn sigint_and_sigusr1_stop_the_same_way() {
    for sig in ["INT", "USR1"] {
        let dir = scratch(&format!("signals_{sig}"));
        let save = dir.join("run");
        let cfg = write_config(&dir, "c.yaml", &long_yaml(&save));
        let child = spawn(&cfg);
        wait_for_training(&save);
        send(&child, sig);
        let (code, _, log) = wait(child, Duration::from_secs(10));
        assert_eq!(code, Some(130), "SIG{sig}: {log}");
        assert!(log.contains(&format!("stopped by SIG{sig}")), "{log}");
        load(&save.join("checkpoints/last.safetensors"));
    }
}

#[test]
fn time_limit_stops_cleanly_with_a_checkpoint() {
    let dir = scratch("time_limit");
    let save = dir.join("run");
    // 0.0003 h = 1.08 s, far less than the run needs: 500 epochs, so that an optimised build (5 epochs in
    // about a second) does not finish first.
    let yaml = long_yaml(&save).replace("resume: auto", "time_limit: 0.0003").replace("epochs: 5", "epochs: 500");
    let cfg = write_config(&dir, "c.yaml", &yaml);
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stop_reason"], "time_limit", "{summary}");
    assert!(summary["wall_time_s"].as_f64().unwrap() < 30.0, "{summary}");
    let ck = load(&save.join("checkpoints/last.safetensors"));
    assert_eq!(ck.metadata["optimizer_step"], summary["steps"].to_string());

    for bad in ["0", "-1"] {
        let out = engine(&["--config", cfg.to_str().unwrap(), "--set", &format!("run.time_limit={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("run.time_limit must be a positive number of hours"), "{}", text(&out));
    }
}

#[test]
fn sigint_during_data_pack_leaves_nothing_behind() {
    let dir = scratch("pack_signal");
    let out = dir.join("packed");
    // Upscaling every digit image to 1024x1024 takes seconds, so the signal lands mid-pack.
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["data", "pack", "--src", "data/digits_images", "--size", "1024", "1024", "--shard-size", "16"])
        .arg("--out")
        .arg(&out)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial =
        || std::fs::read_dir(&dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains(".partial"));
    let t0 = Instant::now();
    while !partial() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the pack never started writing");
        std::thread::sleep(Duration::from_millis(2));
    }
    send(&child, "INT");
    let (code, _, log) = wait(child, Duration::from_secs(60));
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("data pack stopped by SIGINT; nothing was written"), "{log}");
    assert!(!out.exists() && !partial(), "the pack left output behind: {:?}", std::fs::read_dir(&dir).unwrap().count());
}
