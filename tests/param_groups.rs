//! Parameter groups from the config: layer-wise lr decay (`run.layer_decay`) reaches the optimizer as
//! per-entity `LrScale`s, and LAVIS's `accum_grad_iters` sets the accumulation without scaling weight decay.

mod common;

use std::sync::Mutex;

use bevy_ecs::prelude::*;
use common::*;
use ecstrain::components::{Clock, Grads, LrScale, ParamInfo, ParamSlice, Params};
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner::train_step, App};
use ecstrain::systems::optim::OptimizerSettings;
use ecstrain::systems::sets::{StepSet, TrainStep};

static GRADS: Mutex<Vec<f32>> = Mutex::new(Vec::new());

fn grab(grads: Res<Grads>) {
    *GRADS.lock().unwrap() = grads.0.data.clone();
}

fn app(overrides: &[&str]) -> App {
    let mut app = default_app();
    app.add_plugin(|app: &mut App| {
        app.add_systems(TrainStep, grab.after(StepSet::Reduce).before(StepSet::Optimize));
    });
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let cfg = repo().join("configs/digits_vit.yaml");
    let mut app = assemble(app, load_config(&cfg, &o).unwrap(), true).unwrap().app;
    // Steps outside a run directory: the JSONL logger writes into a sink.
    let sink = std::fs::File::create("/dev/null").unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    app
}

#[test]
fn layer_decay_scales_each_blocks_sgd_step() {
    let mut app = app(&[
        "run.layer_decay=0.5",
        "run.optimizer=SGD",
        "run.momentum=0",
        "run.weight_decay=0",
        "run.scheduler=constant",
        "run.warmup_epochs=0",
        "run.lr0=0.01",
        "run.nbs=1",
    ]);
    let depth = 1 + app
        .world
        .query::<&ParamInfo>()
        .iter(&app.world)
        .filter_map(|i| i.name.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .unwrap();
    let before = app.world.resource::<Params>().0.data.clone();
    train_step(&mut app);
    let after = app.world.resource::<Params>().0.data.clone();
    let g = GRADS.lock().unwrap().clone();
    let mut q = app.world.query::<(&ParamInfo, &ParamSlice, Option<&LrScale>)>();
    let mut checked = 0;
    for (info, s, scale) in q.iter(&app.world) {
        let want_scale = if info.name.starts_with("head.") || info.name.starts_with("norm.") {
            None
        } else if let Some(rest) = info.name.strip_prefix("blocks.") {
            let k: usize = rest.split('.').next().unwrap().parse().unwrap();
            Some(0.5f64.powi((depth - k) as i32))
        } else {
            Some(0.5f64.powi(depth as i32 + 1))
        };
        let norm_scale = if info.name.starts_with("norm.") { Some(1.0) } else { want_scale };
        assert_eq!(scale.map(|s| s.0), norm_scale, "{}", info.name);
        let lr = 0.01 * norm_scale.unwrap_or(1.0);
        for i in s.range() {
            let step = (after[i] - before[i]) as f64;
            let want = -lr * g[i] as f64;
            // The step is read back from rounded f32 weights: allow an ulp of the weight.
            let ulp = (before[i].abs().max(1e-30) * f32::EPSILON) as f64;
            let tol = 1e-5 * want.abs() + 2.0 * ulp;
            assert!((step - want).abs() <= tol, "{} [{i}]: step {step}, want {want}", info.name);
        }
        checked += 1;
    }
    assert!(checked > 10);
}

#[test]
fn accum_grad_iters_sets_the_window_and_keeps_weight_decay() {
    let app = app(&["run.accum_grad_iters=3", "run.weight_decay=0.05", "run.batch=16"]);
    assert_eq!(app.world.resource::<Clock>().accumulate, 3);
    assert_eq!(app.world.resource::<OptimizerSettings>().weight_decay, 0.05);
    // The Ultralytics rule for comparison: nbs 64 / batch 16 = 4 batches, decay * 16 * 4 / 64.
    let app = crate::app(&["run.weight_decay=0.05", "run.batch=16", "run.nbs=64"]);
    assert_eq!(app.world.resource::<Clock>().accumulate, 4);
    assert!((app.world.resource::<OptimizerSettings>().weight_decay - 0.05).abs() < 1e-15);
}
