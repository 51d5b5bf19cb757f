//! Every case of `tests/reference/schedulers.json` (PyTorch, LAVIS and Ultralytics reference sequences)
//! against the closed forms, within 1e-12 at every step. `every_reference_case_is_covered` walks the file, so
//! a case added there without a closed form here fails.

use std::sync::OnceLock;

use serde_json::Value;

use super::*;

const TOLERANCE: f64 = 1e-12;

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| serde_json::from_str(include_str!("../../../tests/reference/schedulers.json")).unwrap())
}

fn cases() -> &'static serde_json::Map<String, Value> {
    reference()["schedulers"].as_object().unwrap()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Compares `got(t)` with the reference `series` at every index; returns the largest error.
fn compare(case: &str, what: &str, series: &Value, got: impl Fn(u64) -> f64) -> f64 {
    let want = series.as_array().unwrap_or_else(|| panic!("{case}: no `{what}` series"));
    assert!(!want.is_empty(), "{case}: empty `{what}`");
    let mut worst = 0.0f64;
    for (t, w) in want.iter().enumerate() {
        let (g, w) = (got(t as u64), num(w));
        let err = (g - w).abs();
        assert!(err <= TOLERANCE, "{case}: {what} at step {t}: {g}, reference {w}");
        worst = worst.max(err);
    }
    println!("{case}: {what}: max error {worst:.3e} over {} steps", want.len());
    worst
}

/// The closed form of a torch or LAVIS case, built from the case's documented parameters.
fn closed_form(name: &str) -> Option<Schedule> {
    let base = num(&reference()["base_lr"]);
    let torch = |schedule| Some(Schedule::Torch(LrScheduler::new(base, schedule)));
    match name {
        // CosineAnnealingLR(T_max=100, eta_min=0.001).
        "cosine_annealing" => torch(LrSchedule::Cosine { total_steps: 100, final_factor: 0.001 / base }),
        // LinearLR(start_factor=1.0, end_factor=0.01, total_iters=100).
        "linear" => torch(LrSchedule::Linear { total_steps: 100, start_factor: 1.0, end_factor: 0.01 }),
        "exponential" => torch(LrSchedule::Exponential { gamma: 0.95, period: 1 }),
        "polynomial" => torch(LrSchedule::Polynomial { total_steps: 100, power: 2.0 }),
        "step" => torch(LrSchedule::Step { step_size: 30, gamma: 0.1 }),
        "extra_multistep" => torch(LrSchedule::MultiStep { milestones: vec![30, 60, 90].into(), gamma: 0.1 }),
        "extra_cosine_warm_restarts" => {
            torch(LrSchedule::CosineRestarts { first_cycle: 20, mult: 2, final_factor: 0.001 / base })
        }
        "extra_constant" => torch(LrSchedule::ConstantFactor { factor: 0.5, total_steps: 10 }),
        // SequentialLR([LinearLR(0.01, 1.0, 10), CosineAnnealingLR(T_max=90, eta_min=0.001)], milestones=[10]).
        "extra_warmup_then_cosine" => Some(Schedule::Torch(LrScheduler {
            base_lr: base,
            warmup: Some(Warmup { steps: 10, start_factor: 0.01 }),
            schedule: LrSchedule::Cosine { total_steps: 90, final_factor: 0.001 / base },
        })),
        // OneCycleLR(max_lr=0.1, total_steps=100) with torch's defaults.
        "one_cycle" => Some(Schedule::OneCycle(OneCycle {
            max_lr: base,
            total_steps: 100,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        })),
        n if n.starts_with("lavis_linear_warmup_cosine_lr") => {
            let p = &cases()[n]["params"];
            let int = |k: &str| p[k].as_u64().unwrap();
            Some(Schedule::Lavis(LavisSchedule {
                init_lr: num(&p["init_lr"]),
                min_lr: num(&p["min_lr"]),
                warmup_start_lr: num(&p["warmup_start_lr"]),
                warmup_steps: int("warmup_steps"),
                steps_per_epoch: int("iters_per_epoch"),
                max_epoch: int("max_epoch"),
                decay: LavisDecay::Cosine,
            }))
        }
        _ => None,
    }
}

/// Checks a torch or LAVIS case: `lr` (and `closed_form_lr`), and `momentum` (and `closed_form_momentum`)
/// where the case drives it. Returns the largest error.
fn check_case(name: &str) -> f64 {
    let sched = closed_form(name).unwrap_or_else(|| panic!("no closed form for reference case `{name}`"));
    let case = &cases()[name];
    let mut worst = 0.0f64;
    for key in ["lr", "closed_form_lr"] {
        if case.get(key).is_some() {
            worst = worst.max(compare(name, key, &case[key], |t| sched.at(t).lr));
            worst = worst.max(compare(name, &format!("{key} (bias)"), &case[key], |t| sched.at(t).bias_lr));
        }
    }
    for key in ["momentum", "closed_form_momentum"] {
        if case.get(key).is_some() {
            let m = |t| sched.at(t).momentum.unwrap_or_else(|| panic!("{name}: no momentum at step {t}"));
            worst = worst.max(compare(name, key, &case[key], m));
        } else {
            assert!(!sched.drives_momentum(), "{name}: the reference keeps momentum, the schedule drives it");
        }
    }
    worst
}

/// The Ultralytics schedule of one reference run (`ultralytics.runs.<run>`).
fn yolo(run: &str) -> YoloSchedule {
    let u = &cases()["ultralytics"];
    let r = &u["runs"][run];
    let hp = &u["description"]["hyper_parameters"];
    YoloSchedule {
        lr0: num(&hp["lr0"]),
        lrf: num(&hp["lrf"]),
        epochs: hp["epochs"].as_u64().unwrap(),
        steps_per_epoch: r["nb"].as_u64().unwrap(),
        warmup_epochs: num(&hp["warmup_epochs"]),
        warmup_bias_lr: num(&hp["warmup_bias_lr"]),
        warmup_momentum: num(&hp["warmup_momentum"]),
        momentum: num(&hp["momentum"]),
        ramp_momentum: true,
        lambda: match r["lf"].as_str().unwrap() {
            "linear" => YoloLambda::Linear,
            "cos" => YoloLambda::Cos,
            o => panic!("{run}: unknown lambda {o}"),
        },
        variant: match r["variant"].as_str().unwrap() {
            "legacy" => YoloVariant::Legacy,
            "current" => YoloVariant::Current,
            o => panic!("{run}: unknown variant {o}"),
        },
    }
}

/// Checks one Ultralytics run: lr of the bias, weight and batch-norm groups and momentum at every iteration.
fn check_yolo_run(run: &str) -> f64 {
    let r = &cases()["ultralytics"]["runs"][run];
    let s = Schedule::Ultralytics(yolo(run));
    let (nw, _) = yolo(run).warmup().expect("the reference runs warm up");
    assert_eq!(nw, r["nw"].as_u64().unwrap(), "{run}: warm-up iterations");
    assert_eq!(r["lr_bias"].as_array().unwrap().len() as u64, r["iterations"].as_u64().unwrap());
    let name = format!("ultralytics.{run}");
    [
        compare(&name, "lr_bias", &r["lr_bias"], |t| s.at(t).bias_lr),
        compare(&name, "lr_weight", &r["lr_weight"], |t| s.at(t).lr),
        compare(&name, "lr_bn", &r["lr_bn"], |t| s.at(t).lr),
        compare(&name, "momentum", &r["momentum"], |t| s.at(t).momentum.unwrap()),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

/// Checks Ultralytics' `lf` lambdas at the listed epochs.
fn check_yolo_lambdas() -> f64 {
    let f = &cases()["ultralytics"]["lf_formulas"];
    let mut worst = 0.0f64;
    for (lambda, key) in [(YoloLambda::Linear, "linear_values"), (YoloLambda::Cos, "cos_values")] {
        let s = YoloSchedule {
            lrf: num(&f["lrf"]),
            epochs: f["epochs"].as_u64().unwrap(),
            lambda,
            ..yolo("current_linear_nb50")
        };
        let xs: Vec<u64> = f["x"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        assert_eq!(xs, (0..xs.len() as u64).collect::<Vec<_>>(), "lf_formulas.x is 0..n");
        worst = worst.max(compare("ultralytics.lf_formulas", key, &f[key], |x| s.lf(x)));
    }
    worst
}

/// Checks every Ultralytics run and the lambdas.
fn check_ultralytics() -> f64 {
    let runs = cases()["ultralytics"]["runs"].as_object().unwrap();
    runs.keys().map(|r| check_yolo_run(r)).fold(check_yolo_lambdas(), f64::max)
}

#[test]
fn every_reference_case_is_covered() {
    let mut checked = 0;
    for name in cases().keys() {
        if name == "ultralytics" {
            check_ultralytics();
        } else {
            check_case(name);
        }
        checked += 1;
    }
    assert_eq!(checked, 13, "schedulers.json cases");
    assert_eq!(cases()["ultralytics"]["runs"].as_object().unwrap().len(), 8, "Ultralytics runs");
}

#[test]
fn cosine_annealing_matches_torch() {
    check_case("cosine_annealing");
}

#[test]
fn linear_matches_torch() {
    check_case("linear");
}

#[test]
fn exponential_matches_torch() {
    check_case("exponential");
}

#[test]
fn polynomial_matches_torch() {
    check_case("polynomial");
}

#[test]
fn step_matches_torch() {
    check_case("step");
}

#[test]
fn multistep_matches_torch() {
    check_case("extra_multistep");
}

#[test]
fn cosine_warm_restarts_match_torch() {
    check_case("extra_cosine_warm_restarts");
}

#[test]
fn warmup_then_cosine_matches_torch() {
    check_case("extra_warmup_then_cosine");
}

#[test]
fn constant_factor_matches_torch() {
    check_case("extra_constant");
}

#[test]
fn one_cycle_lr_and_momentum_match_torch() {
    check_case("one_cycle");
}

#[test]
fn lavis_linear_warmup_cosine_matches_lavis() {
    check_case("lavis_linear_warmup_cosine_lr");
    check_case("lavis_linear_warmup_cosine_lr_warmup5");
}

#[test]
fn ultralytics_lambdas_match() {
    check_yolo_lambdas();
}

#[test]
fn ultralytics_legacy_runs_match() {
    for run in ["legacy_linear_nb50", "legacy_linear_nb20", "legacy_cos_nb50", "legacy_cos_nb20"] {
        check_yolo_run(run);
    }
}

#[test]
fn ultralytics_current_runs_match() {
    for run in ["current_linear_nb50", "current_linear_nb20", "current_cos_nb50", "current_cos_nb20"] {
        check_yolo_run(run);
    }
}
