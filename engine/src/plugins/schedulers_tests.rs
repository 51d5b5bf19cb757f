//! The registered builders turn `run.` keys into the right closed forms: the reference sequences of
//! `tests/reference/schedulers.json` come out of configs, and bad values are errors naming the key.

use serde_json::{json, Value};

use super::*;
use crate::app::App;

fn reference(case: &str) -> Value {
    let all: Value = serde_json::from_str(include_str!("../../../tests/reference/schedulers.json")).unwrap();
    all["schedulers"][case].clone()
}

/// Builds `run` (JSON keys of `run:`) for `epochs` epochs of `steps_per_epoch` steps.
fn build(run: Value, epochs: u64, steps_per_epoch: u64) -> Result<Schedule, String> {
    let mut run: RunSection = serde_json::from_value(run).unwrap();
    run.epochs = epochs;
    let mut app = App::new();
    app.add_plugin(BuiltinSchedulers);
    let entry = app.registry.scheduler(&scheduler_name(&run)?)?.clone();
    let ctx =
        ScheduleContext { run: &run, epochs, steps_per_epoch, total_steps: epochs * steps_per_epoch, accumulate: 1 };
    (entry.build)(&ctx)
}

/// Asserts `got(t)` equals `series` within 1e-12 at every step.
fn assert_series(series: &Value, got: impl Fn(u64) -> f64) {
    for (t, w) in series.as_array().unwrap().iter().enumerate() {
        let (g, w) = (got(t as u64), w.as_f64().unwrap());
        assert!((g - w).abs() <= 1e-12, "step {t}: {g} != {w}");
    }
}

#[test]
fn torch_like_keys_give_the_reference_sequences() {
    let cases = [
        ("extra_multistep", json!({"scheduler": "multistep", "lr0": 0.1, "milestones": [3, 6, 9]}), 10, 10),
        ("step", json!({"scheduler": "step", "lr0": 0.1, "step_size": 3}), 10, 10),
        (
            "extra_cosine_warm_restarts",
            json!({"scheduler": "cosine_restarts", "lr0": 0.1, "lrf": 0.01, "restart_epochs": 2, "restart_mult": 2}),
            10,
            10,
        ),
        ("exponential", json!({"scheduler": "exponential", "lr0": 0.1, "gamma": 0.95}), 100, 1),
        ("polynomial", json!({"scheduler": "polynomial", "lr0": 0.1, "power": 2.0}), 10, 10),
        ("cosine_annealing", json!({"scheduler": "cosine", "lr0": 0.1, "lrf": 0.01}), 10, 10),
        (
            "extra_warmup_then_cosine",
            json!({"scheduler": "cosine", "lr0": 0.1, "lrf": 0.01, "warmup_epochs": 1, "warmup_start_factor": 0.01}),
            10,
            10,
        ),
    ];
    for (case, run, epochs, spe) in cases {
        let s = build(run, epochs, spe).unwrap();
        assert_series(&reference(case)["lr"], |t| s.at(t).lr);
    }
}

#[test]
fn one_cycle_keys_give_torch_lr_and_momentum() {
    let s = build(json!({"scheduler": "one_cycle", "lr0": 0.1, "optimizer": "SGD"}), 10, 10).unwrap();
    let r = reference("one_cycle");
    assert_series(&r["lr"], |t| s.at(t).lr);
    assert_series(&r["momentum"], |t| s.at(t).momentum.unwrap());
}

#[test]
fn lavis_keys_give_lavis_sequences() {
    for (case, warmup) in [("lavis_linear_warmup_cosine_lr", 10), ("lavis_linear_warmup_cosine_lr_warmup5", 5)] {
        let run = json!({"scheduler": "linear_warmup_cosine", "lr0": 0.1, "min_lr": 0.001, "warmup_lr": 1e-4, "warmup_steps": warmup});
        let s = build(run, 10, 10).unwrap();
        assert_series(&reference(case)["lr"], |t| s.at(t).lr);
    }
    // linear_warmup_step: 2 warm-up steps from 0 in epoch 0, then 0.1 * 0.5^epoch floored at 0.02.
    let run = json!({"scheduler": "linear_warmup_step", "lr0": 0.1, "min_lr": 0.02, "warmup_lr": 0.0, "warmup_steps": 2, "lr_decay_rate": 0.5});
    let s = build(run, 5, 3).unwrap();
    let got: Vec<f64> = (0..12).map(|t| s.at(t).lr).collect();
    let want = [0.0, 0.05, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02, 0.02, 0.02];
    assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-17), "{got:?}");
}

#[test]
fn yolo_keys_give_the_ultralytics_runs() {
    let base = json!({"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "warmup_epochs": 3.0, "optimizer": "SGD"});
    let with = |extra: Value| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    let runs = [
        ("current_linear_nb50", with(json!({"scheduler": "yolo_linear"})), 50),
        ("current_cos_nb20", with(json!({"scheduler": "yolo_linear", "cos_lr": true})), 20),
        ("legacy_cos_nb50", with(json!({"scheduler": "yolo_cos", "yolo_variant": "legacy"})), 50),
        ("legacy_linear_nb20", with(json!({"scheduler": "YOLO_LINEAR", "yolo_variant": "Legacy"})), 20),
    ];
    let all = reference("ultralytics");
    for (name, run, nb) in runs {
        let s = build(run, 10, nb).unwrap();
        let r = &all["runs"][name];
        assert_series(&r["lr_bias"], |t| s.at(t).bias_lr);
        assert_series(&r["lr_weight"], |t| s.at(t).lr);
        assert_series(&r["momentum"], |t| s.at(t).momentum.unwrap());
    }
    // AdamW: the lr warm-up runs, beta1 is left alone (Ultralytics ramps only SGD's momentum).
    let adam = build(with(json!({"scheduler": "yolo_linear", "optimizer": "AdamW"})), 10, 50).unwrap();
    assert_eq!(adam.at(3).momentum, None);
    assert!(!adam.drives_momentum() && adam.separate_bias_lr());
}

#[test]
fn bad_values_name_the_key_and_the_range() {
    let cases = [
        (json!({"scheduler": "one_cycle", "pct_start": 1.0}), "run.pct_start must be in (0, 1)"),
        (
            json!({"scheduler": "one_cycle", "warmup_epochs": 1.0}),
            "run.warmup_epochs must be 0 with run.scheduler one_cycle",
        ),
        (json!({"scheduler": "one_cycle", "base_momentum": 0.99}), "run.base_momentum must be <= run.max_momentum"),
        (json!({"scheduler": "one_cycle", "div_factor": 0.0}), "run.div_factor must be a positive number"),
        (json!({"scheduler": "multistep", "milestones": [5, 3]}), "run.milestones must be strictly increasing"),
        (json!({"scheduler": "step", "step_size": 0}), "run.step_size must be at least 1"),
        (json!({"scheduler": "exponential", "gamma": -0.5}), "run.gamma must be a positive number"),
        (json!({"scheduler": "polynomial", "power": 0.0}), "run.power must be a positive number"),
        (json!({"scheduler": "cosine_restarts", "restart_mult": 0}), "run.restart_mult must be an integer >= 1"),
        (json!({"scheduler": "linear_warmup_cosine", "min_lr": 1.0}), "run.min_lr must be in [0, run.lr0"),
        (json!({"scheduler": "linear_warmup_cosine", "warmup_lr": -1.0}), "run.warmup_lr must be in [0, run.lr0"),
        (json!({"scheduler": "linear_warmup_step", "lr_decay_rate": 1.5}), "run.lr_decay_rate must be in (0, 1]"),
        (json!({"scheduler": "linear_warmup_step", "warmup_epochs": 1.0}), "set run.warmup_steps"),
        (json!({"scheduler": "yolo_cos", "yolo_variant": "v5"}), "valid choices: current, legacy"),
        (json!({"scheduler": "yolo_cos", "warmup_momentum": 1.0}), "run.warmup_momentum must be in [0, 1)"),
        (json!({"scheduler": "yolo_cos", "warmup_bias_lr": -0.1}), "run.warmup_bias_lr must be >= 0"),
        (json!({"scheduler": "step", "cos_lr": true}), "run.cos_lr: true only selects"),
    ];
    for (run, want) in cases {
        let e = build(run.clone(), 10, 10).expect_err(&run.to_string());
        assert!(e.contains(want), "{run}: {e}");
    }
}
