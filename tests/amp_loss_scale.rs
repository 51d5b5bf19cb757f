//! f16 mixed precision's dynamic loss scaling (torch GradScaler) on the CPU: with no overflow a scaled run
//! trains bit for bit like an unscaled one (the scale is a power of two); an injected inf gradient skips that
//! optimizer step, leaves the weights alone and halves the scale, which grows again after `growth_interval`
//! finite steps; the scale is in the train records.

mod common;

use std::sync::Mutex;

use bevy_ecs::prelude::*;
use common::*;
use ecstrain::components::{Clock, Grads, LossScaler, Params};
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner, App};
use ecstrain::systems::graph::systems::backward_system;
use ecstrain::systems::sets::{StepSet, TrainStep};

/// (micro-step, weights after the step, scale after the step) of every micro-batch.
static SEEN: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// One micro-batch: micro-step, weights after it, scale after it.
type Record = (u64, Vec<f32>, f64);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const INJECT_AT: u64 = 4;

/// A user's fault injection: an inf in the first gradient at one micro-step.
fn inject_overflow(clock: Res<Clock>, mut grads: ResMut<Grads>) {
    if clock.micro_step == INJECT_AT {
        grads.0.data[0] = f32::INFINITY;
    }
}

fn record(clock: Res<Clock>, params: Res<Params>, scaler: Option<Res<LossScaler>>) {
    let scale = scaler.map_or(1.0, |s| s.scale);
    SEEN.lock().unwrap().push((clock.micro_step, params.0.data.clone(), scale));
}

/// What [`run`] returns: the per-micro-step records, the optimizer steps taken, the run directory.
type Outcome = (Vec<Record>, u64, RunDir);

fn run(tag: &str, sets: &[&str], inject: bool) -> Outcome {
    SEEN.lock().unwrap().clear();
    let dir = scratch(tag);
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&save).replace("epochs: 2", "epochs: 1"));
    let mut app = default_app();
    app.add_plugin(move |app: &mut App| {
        if inject {
            app.add_systems(TrainStep, inject_overflow.in_set(StepSet::Backward).after(backward_system));
        }
        app.add_systems(TrainStep, record.after(StepSet::Optimize).before(StepSet::Schedule));
    });
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let asm = assemble(app, load_config(&cfg, &sets).unwrap(), true).unwrap();
    runner::train(asm).unwrap();
    let ck =
        ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&save.join("checkpoints/last.safetensors"))
            .unwrap();
    let opt_steps: u64 = ck.metadata["optimizer_step"].parse().unwrap();
    drop(save);
    (SEEN.lock().unwrap().clone(), opt_steps, dir.into_run())
}

#[test]
fn scaled_run_without_overflow_equals_the_f32_run() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (off, steps_off, _) = run("amp_off", &[], false);
    let (f16, steps_f16, save) = run("amp_f16", &["run.amp=f16", "run.amp_growth_interval=3"], false);
    assert_eq!(steps_off, steps_f16);
    assert_eq!(off.len(), f16.len());
    for ((_, a, _), (m, b, _)) in off.iter().zip(&f16) {
        assert!(a == b, "micro-step {m}: the loss-scaled run's weights differ");
    }
    // The scale grew every 3 steps from 2^16.
    let (_, _, last_scale) = f16.last().unwrap();
    let n = f16.len() as i32;
    assert_eq!(*last_scale, 65536.0 * 2f64.powi(n / 3));
    let log = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap();
    assert!(log.contains("\"loss_scale\""), "train records should carry loss_scale");
}

#[test]
fn an_injected_overflow_skips_its_step_and_backs_off() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (seen, opt_steps, _) = run("amp_inject", &["run.amp=f16", "run.amp_growth_interval=3"], true);
    let (clean, clean_steps, _) = run("amp_clean", &["run.amp=f16", "run.amp_growth_interval=3"], false);
    assert_eq!(opt_steps + 1, clean_steps, "exactly one optimizer step is skipped");
    let k = seen.iter().position(|(m, _, _)| *m == INJECT_AT).unwrap();
    assert_eq!(seen[k].1, seen[k - 1].1, "the weights moved on the skipped step");
    assert!(seen.iter().all(|(_, w, _)| w.iter().all(|v| v.is_finite())));
    // GradScaler's rule, replayed: growth after 3 good steps, x0.5 and a reset on the bad one.
    let (mut scale, mut good) = (65536.0f64, 0u64);
    for (m, _, got) in &seen {
        if *m == INJECT_AT {
            scale *= 0.5;
            good = 0;
        } else {
            good += 1;
            if good == 3 {
                scale *= 2.0;
                good = 0;
            }
        }
        assert_eq!(*got, scale, "micro-step {m}");
    }
    // Before the overflow both runs are the same.
    assert_eq!(seen[k - 1].1, clean[k - 1].1);
}
