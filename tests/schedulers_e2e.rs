//! Schedules end to end: short digits runs of the real binary with an Ultralytics schedule, one-cycle and a
//! LAVIS schedule; every `lr` (and `bias_lr` / `momentum` where the schedule drives them) logged in
//! metrics.jsonl equals the closed form at that step. A train record at `step` s carries the values set for
//! the next optimizer step, the 0-based step s.

mod common;

use std::path::Path;

use common::*;
use ecstrain::systems::schedule::{
    LavisDecay, LavisSchedule, OneCycle, Schedule, StepValues, YoloLambda, YoloSchedule, YoloVariant,
};
use serde_json::Value;

/// Digits train split: 1437 samples, so 23 batches of 64 per epoch (the last one of 29).
const BATCHES_OF_64: u64 = 23;

/// Runs the digits config with `sets` and returns the `train` records of metrics.jsonl.
fn train_records(name: &str, sets: &[&str]) -> Vec<Value> {
    let dir = scratch(name);
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&save));
    let mut args = vec!["--config", cfg.to_str().unwrap(), "--set", "run.log_interval=1"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = engine(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    records(&save.join("metrics.jsonl"))
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["split"] == "train")
        .collect()
}

/// Asserts every record's logged values equal `sched.at(step)`; `bias_lr` and `momentum` say whether the
/// records must carry those keys (or must not). Returns the steps seen.
fn assert_logged(records: &[Value], sched: &Schedule, bias_lr: bool, momentum: bool) -> Vec<u64> {
    assert!(!records.is_empty());
    let mut steps = Vec::new();
    let worst = std::cell::Cell::new(0.0f64);
    for r in records {
        let step = r["step"].as_u64().unwrap();
        let want: StepValues = sched.at(step);
        let close = |key: &str, w: f64| {
            let got = r[key].as_f64().unwrap_or_else(|| panic!("step {step}: no `{key}` in {r}"));
            assert!((got - w).abs() <= 1e-12, "step {step}: {key} {got}, closed form {w}");
            worst.set(worst.get().max((got - w).abs()));
        };
        close("lr", want.lr);
        if bias_lr {
            close("bias_lr", want.bias_lr);
        } else {
            assert!(r.get("bias_lr").is_none(), "{r}");
        }
        if momentum {
            close("momentum", want.momentum.expect("the schedule drives momentum"));
        } else {
            assert!(r.get("momentum").is_none(), "{r}");
        }
        steps.push(step);
    }
    println!("{} records: max |logged - closed form| = {:.3e}", records.len(), worst.get());
    steps
}

#[test]
fn ultralytics_warmup_drives_lr_bias_lr_and_momentum() {
    // Current variant, 1.5 warm-up epochs of 23 steps: nw = round(34.5) = 34 (ties to even), so the warm-up
    // ends at step 33 inside epoch 1, whose remaining steps hold the last warm-up values.
    let recs = train_records(
        "sched_yolo",
        &[
            "run.scheduler=yolo_linear",
            "run.optimizer=SGD",
            "run.lr0=0.01",
            "run.lrf=0.1",
            "run.momentum=0.937",
            "run.warmup_epochs=1.5",
            "run.epochs=3",
        ],
    );
    let yolo = YoloSchedule {
        lr0: 0.01,
        lrf: 0.1,
        epochs: 3,
        steps_per_epoch: BATCHES_OF_64,
        warmup_epochs: 1.5,
        warmup_bias_lr: 0.1,
        warmup_momentum: 0.8,
        momentum: 0.937,
        ramp_momentum: true,
        lambda: YoloLambda::Linear,
        variant: YoloVariant::Current,
    };
    let steps = assert_logged(&recs, &Schedule::Ultralytics(yolo), true, true);
    assert_eq!(steps, (1..=3 * BATCHES_OF_64).collect::<Vec<_>>(), "one record per step");
    // By hand: half-way through the warm-up (step 17 of 34) biases and weights meet lr0*lf(0) half-way.
    let mid = &recs[16];
    assert_eq!(mid["step"], 17);
    assert!((mid["lr"].as_f64().unwrap() - 0.005).abs() < 1e-15, "{mid}");
    assert!((mid["bias_lr"].as_f64().unwrap() - 0.055).abs() < 1e-15, "{mid}");
    assert!((mid["momentum"].as_f64().unwrap() - 0.8685).abs() < 1e-15, "{mid}");
    // Epoch 2 runs at lr0 * lf(2) = 0.01 * ((1 - 2/3) * 0.9 + 0.1) = 0.004 for every group.
    let e2 = recs.iter().find(|r| r["step"] == 50).unwrap();
    assert!((e2["lr"].as_f64().unwrap() - 0.004).abs() < 1e-15 && e2["bias_lr"] == e2["lr"], "{e2}");

    // The legacy variant is one key away: at least 100 warm-up steps, i.e. the whole 69-step run here.
    let legacy = train_records(
        "sched_yolo_legacy",
        &[
            "run.scheduler=yolo_linear",
            "run.yolo_variant=legacy",
            "run.optimizer=SGD",
            "run.warmup_epochs=1",
            "run.epochs=3",
        ],
    );
    let sched = Schedule::Ultralytics(YoloSchedule {
        lr0: 0.001,
        lrf: 0.01,
        momentum: 0.9,
        warmup_epochs: 1.0,
        variant: YoloVariant::Legacy,
        ..yolo
    });
    assert_logged(&legacy, &sched, true, true);
}

#[test]
fn one_cycle_drives_lr_and_beta1_with_accumulation() {
    // batch 32 with nbs 64 accumulates 2 micro-batches per step: 45 batches = 23 optimizer steps per epoch
    // (the last window of an epoch is a single batch).
    let recs = train_records(
        "sched_one_cycle",
        &["run.scheduler=one_cycle", "run.optimizer=AdamW", "run.lr0=0.01", "run.batch=32", "run.epochs=2"],
    );
    let sched = Schedule::OneCycle(OneCycle {
        max_lr: 0.01,
        total_steps: 2 * 23,
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
        base_momentum: 0.85,
        max_momentum: 0.95,
    });
    let steps = assert_logged(&recs, &sched, false, true);
    assert_eq!(steps, (1..=46).collect::<Vec<_>>(), "one record per optimizer step");
    // The last record (step 46 = total_steps) holds the final lr, max_lr / 25 / 1e4.
    let last = recs.last().unwrap();
    assert!((last["lr"].as_f64().unwrap() - 4e-8).abs() < 1e-20, "{last}");
    assert!((last["momentum"].as_f64().unwrap() - 0.95).abs() < 1e-15, "{last}");
}

#[test]
fn lavis_step_schedule_is_logged_per_epoch() {
    let recs = train_records(
        "sched_lavis",
        &[
            "run.scheduler=linear_warmup_step",
            "run.lr0=0.001",
            "run.warmup_lr=0.0001",
            "run.warmup_steps=10",
            "run.min_lr=0.0007",
            "run.lr_decay_rate=0.9",
            "run.epochs=4",
        ],
    );
    let sched = Schedule::Lavis(LavisSchedule {
        init_lr: 0.001,
        min_lr: 0.0007,
        warmup_start_lr: 0.0001,
        warmup_steps: 10,
        steps_per_epoch: BATCHES_OF_64,
        max_epoch: 4,
        decay: LavisDecay::Step { decay_rate: 0.9 },
    });
    assert_logged(&recs, &sched, false, false);
    // By hand: epoch 3 (steps 69..91) at max(7e-4, 1e-3 * 0.9^3 = 7.29e-4).
    let e3 = recs.iter().find(|r| r["step"] == 70).unwrap();
    assert!((e3["lr"].as_f64().unwrap() - 7.29e-4).abs() < 1e-15, "{e3}");
}
