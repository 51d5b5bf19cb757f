//! The optimizer systems, run through the ECS exactly as in training (entities with slices into the arenas,
//! the Optimize set of the TrainStep schedule, markers), against PyTorch's reference trajectories in
//! tests/reference/optimizers.json: the f32 run within 1e-6 of `params_f32` at every step.

use bevy_ecs::prelude::*;
use ecstrain::components::*;
use ecstrain::engine::cli::default_app;
use ecstrain::engine::App;
use ecstrain::systems::optim::OptimizerSettings;
use ecstrain::systems::sets::TrainStep;
use serde_json::Value;

fn reference() -> Value {
    serde_json::from_str(include_str!("reference/optimizers.json")).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// An app holding only the registered optimizer's system, one 8-element parameter entity (plus optional
/// extra entities), and the resources the system reads.
fn optimizer_app(name: &str, hp: &Value, extra: usize) -> (App, Entity) {
    let registry = default_app().registry;
    let entry = registry.optimizer(name).unwrap().clone();
    let mut app = App::new();
    let n = 8 * (1 + extra);
    let e = app.world.spawn((ParamInfo { name: "p".into(), shape: vec![8] }, ParamSlice { offset: 0, len: 8 })).id();
    let init = f64s(&reference()["initial_params"]);
    let mut params = Arena::zeros(n);
    for k in 0..=extra {
        for (i, v) in init.iter().enumerate() {
            params.data[8 * k + i] = *v as f32;
        }
    }
    app.insert_resource(Params(params));
    app.insert_resource(Grads(Arena::zeros(n)));
    app.insert_resource(OptimizerState::new(name, entry.state, n));
    let momentum = hp.get("momentum").and_then(Value::as_f64).unwrap_or_else(|| hp["betas"][0].as_f64().unwrap_or(0.0));
    app.insert_resource(LearningRate::uniform(hp["lr"].as_f64().unwrap(), momentum));
    app.insert_resource(OptimizerSettings {
        weight_decay: hp["weight_decay"].as_f64().unwrap(),
        nesterov: hp.get("nesterov").and_then(Value::as_bool).unwrap_or(false),
        dampening: hp.get("dampening").and_then(Value::as_f64).unwrap_or(0.0),
        beta2: hp.get("betas").map_or(0.999, |b| b[1].as_f64().unwrap()),
        eps: hp.get("eps").and_then(Value::as_f64).unwrap_or(1e-8),
    });
    app.insert_resource(Clock { batches_per_epoch: 1_000, accumulate: 1, ..Default::default() });
    (entry.install)(&mut app);
    (app, e)
}

fn set_grads(app: &mut App, g: &[f64], copies: usize) {
    let mut grads = app.world.resource_mut::<Grads>();
    for k in 0..copies {
        for (i, v) in g.iter().enumerate() {
            grads.0.data[8 * k + i] = *v as f32;
        }
    }
}

#[test]
fn optimizer_systems_match_pytorch_reference() {
    let r = reference();
    for (case, name) in [
        ("sgd", "sgd"),
        ("sgd_momentum", "sgd"),
        ("sgd_nesterov", "sgd"),
        ("sgd_weight_decay", "sgd"),
        ("adamw", "AdamW"),
    ] {
        let c = &r["optimizers"][case];
        let (mut app, _) = optimizer_app(name, &c["hyper_parameters"], 0);
        let mut worst = 0.0f64;
        for (t, g) in r["grads"].as_array().unwrap().iter().enumerate() {
            set_grads(&mut app, &f64s(g), 1);
            app.run(TrainStep);
            let want = f64s(&c["params_f32"][t]);
            let got = &app.world.resource::<Params>().0.data;
            for (a, b) in got.iter().zip(&want) {
                worst = worst.max((*a as f64 - b).abs());
            }
        }
        assert!(worst <= 1e-6, "{case}: max |engine - torch f32| = {worst:e}");
        assert_eq!(app.world.resource::<OptimizerState>().step, 50);
    }
}

#[test]
fn markers_select_decay_and_freezing() {
    let r = reference();
    let c = &r["optimizers"]["adamw"];
    // Entity 0: decayed (reference); entity 1: NoDecay; entity 2: Frozen.
    let (mut app, _) = optimizer_app("adamw", &c["hyper_parameters"], 2);
    app.world.spawn((ParamInfo { name: "b".into(), shape: vec![8] }, ParamSlice { offset: 8, len: 8 }, NoDecay));
    app.world.spawn((ParamInfo { name: "f".into(), shape: vec![8] }, ParamSlice { offset: 16, len: 8 }, Frozen));
    for g in r["grads"].as_array().unwrap() {
        set_grads(&mut app, &f64s(g), 3);
        app.run(TrainStep);
    }
    let p = app.world.resource::<Params>().0.data.clone();
    let want = f64s(&c["params_f32"][49]);
    let init = f64s(&r["initial_params"]);
    for i in 0..8 {
        assert!((p[i] as f64 - want[i]).abs() <= 1e-6);
        assert_eq!(p[16 + i], init[i] as f32, "a Frozen parameter moved");
    }
    // Without decay the parameters end elsewhere, and match a decay-free AdamW (torch Adam without L2).
    let adam = &r["optimizers"]["adam"];
    let nd = f64s(&adam["params_f32"][49]);
    for i in 0..8 {
        assert!((p[8 + i] as f64 - nd[i]).abs() <= 1e-6, "NoDecay parameter {i}: {} vs {}", p[8 + i], nd[i]);
    }
}
