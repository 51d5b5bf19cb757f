//! `engine eval` end to end: a checkpoint of a digits run reproduces the validation metrics recorded during
//! training exactly, writes nothing, finds the latest numbered run directory, and rejects bad checkpoints with
//! exit 2.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// Runs `engine eval` with `args`; returns the printed checkpoint path and metrics.
fn eval_ok(args: &[&str]) -> (String, BTreeMap<String, f64>) {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    let out = engine(&all);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let head = stdout.lines().find(|l| l.starts_with("evaluated ")).unwrap_or_else(|| panic!("{log}"));
    let path = head["evaluated ".len()..].split(" on the ").next().unwrap().to_string();
    let metrics = stdout
        .lines()
        .skip_while(|l| !l.starts_with("evaluated "))
        .skip(1)
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_string(), w.next().unwrap().parse::<f64>().unwrap())
        })
        .collect();
    (path, metrics)
}

fn eval_rejected(args: &[&str]) -> String {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    let out = engine(&all);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Every `"key": number` pair of a flat JSON object's text, each number read with Rust's exact parser
/// (serde_json's default float parsing can be one ulp off, and this test compares bits).
fn numbers_of(object: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for part in object.trim().trim_start_matches('{').trim_end_matches('}').split(',') {
        let Some((k, v)) = part.split_once(':') else { continue };
        let key = k.trim().trim_matches('"');
        if let (Ok(v), false) = (v.trim().parse::<f64>(), key == "step" || key == "epoch") {
            out.insert(key.to_string(), v);
        }
    }
    out
}

#[test]
fn eval_reproduces_the_recorded_validation_and_writes_nothing() {
    let dir = scratch("eval_digits");
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&save).replace("lr0: 0.001", "lr0: 0.01"));
    let c = cfg.to_str().unwrap();
    let out = engine(&["--config", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary_text = std::fs::read_to_string(save.join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary_text).unwrap();
    let vals: Vec<String> = std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"split\":\"val\""))
        .map(String::from)
        .collect();
    assert_eq!(vals.len(), 2);
    let best_epoch = summary["best"]["epoch"].as_u64().unwrap();
    let best_record = vals.iter().find(|l| l.contains(&format!("\"epoch\":{best_epoch},"))).unwrap();
    // summary.json's best.metrics object, as written.
    let best_text = summary_text.split("\"metrics\": {").nth(1).unwrap().split('}').next().unwrap();
    let recorded = numbers_of(best_text);
    assert_eq!(recorded, numbers_of(best_record));
    assert!(recorded["accuracy"] > 0.5, "the run should have learned something: {recorded:?}");
    let before = snapshot(&dir);

    // best: the metrics of the best epoch, as summary.json and metrics.jsonl recorded them, bit for bit.
    let (path, best) = eval_ok(&["--config", c, "--checkpoint", "best"]);
    assert_eq!(path, save.join("checkpoints/best.safetensors").display().to_string());
    assert_eq!(best, recorded, "eval of best.safetensors differs from the recorded best validation");
    // last: the final validation record.
    let (_, last) = eval_ok(&["--config", c, "--checkpoint", "last"]);
    assert_eq!(last, numbers_of(vals.last().unwrap()));
    // A path, and the train split (every sample, in order).
    let ck = save.join("checkpoints/last.safetensors");
    let out = engine(&["eval", "--config", c, "--checkpoint", ck.to_str().unwrap(), "--split", "train"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("on the train split (1437 samples)"), "{}", text(&out));
    assert_eq!(snapshot(&dir), before, "engine eval changed files");

    // Bad input: exit 2 with the reason, nothing written.
    let m = eval_rejected(&["--config", c, "--checkpoint", "/nonexistent/x.safetensors"]);
    assert!(m.contains("checkpoint not found") && m.contains("/nonexistent/x.safetensors"), "{m}");
    let m = eval_rejected(&["--config", c, "--checkpoint", "best", "--set", "model.hidden_sizes=[16]"]);
    assert!(m.contains("layers.0.weight") && m.contains("shape [32, 64]") && m.contains("[16, 64]"), "{m}");
    let other = dir.join("nowhere");
    let m =
        eval_rejected(&["--config", c, "--checkpoint", "last", "--set", &format!("run.save_dir={}", other.display())]);
    assert!(m.contains("no run directory") && m.contains("run.save_dir"), "{m}");
    let m = eval_rejected(&["--config", c, "--checkpoint", "best", "--split", "test"]);
    assert!(m.contains("--split") && m.contains("val") && m.contains("train"), "{m}");
    let m = eval_rejected(&["--config", c, "--checkpoint", "best", "--set", "run.lr0=-1"]);
    assert!(m.contains("run.lr0"), "{m}");
    assert!(!other.exists());
    assert_eq!(snapshot(&dir), before, "a rejected engine eval changed files");

    // A second run of the config goes to run2; best and last then name run2's checkpoints.
    let out = engine(&["--config", c, "--set", "run.seed=1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (path, _) = eval_ok(&["--config", c, "--checkpoint", "best"]);
    assert_eq!(path, dir.join("run2/checkpoints/best.safetensors").display().to_string());
    let (path, _) = eval_ok(&["--config", c, "--checkpoint", "best", "--set", "run.exist_ok=true"]);
    assert_eq!(path, save.join("checkpoints/best.safetensors").display().to_string());
}
