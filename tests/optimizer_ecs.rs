//! The optimizer systems, run through the ECS exactly as in training (entities with slices into the arenas,
//! the Optimize set of the TrainStep schedule, markers, the state layout from the registry), against
//! PyTorch's reference trajectories in tests/reference/optimizers.json: every case of every registered
//! optimizer, the f32 run within 1e-6 of `params_f32` at every step.

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

/// The config spelling of the engine optimizer for a torch class (mixed case on purpose: lookups are
/// case-insensitive).
fn engine_name(class: &str) -> &'static str {
    match class {
        "torch.optim.SGD" => "SGD",
        "torch.optim.Adam" => "Adam",
        "torch.optim.AdamW" => "AdamW",
        "torch.optim.Adamax" => "Adamax",
        "torch.optim.NAdam" => "NAdam",
        "torch.optim.RAdam" => "RAdam",
        "torch.optim.RMSprop" => "RMSProp",
        "torch.optim.Adagrad" => "Adagrad",
        "torch.optim.Adadelta" => "Adadelta",
        other => panic!("no engine optimizer for {other}"),
    }
}

/// The settings a `run:` section would give for torch's hyper-parameters `hp` (torch defaults for keys the
/// class does not have).
fn settings(hp: &Value) -> OptimizerSettings {
    let f = |k: &str, d: f64| hp.get(k).and_then(Value::as_f64).unwrap_or(d);
    let b = |k: &str| hp.get(k).and_then(Value::as_bool).unwrap_or(false);
    OptimizerSettings {
        weight_decay: f("weight_decay", 0.0),
        momentum: momentum(hp),
        nesterov: b("nesterov"),
        dampening: f("dampening", 0.0),
        beta2: hp.get("betas").map_or(0.999, |b| b[1].as_f64().unwrap()),
        eps: f("eps", 1e-8),
        amsgrad: b("amsgrad"),
        decoupled_weight_decay: b("decoupled_weight_decay"),
        momentum_decay: f("momentum_decay", 4e-3),
        alpha: f("alpha", 0.99),
        centered: b("centered"),
        lr_decay: f("lr_decay", 0.0),
        initial_accumulator_value: f("initial_accumulator_value", 0.0),
        rho: f("rho", 0.9),
    }
}

/// `LearningRate.momentum` for `hp`: SGD / RMSprop momentum, else beta1 (Ultralytics' convention).
fn momentum(hp: &Value) -> f64 {
    hp.get("momentum").and_then(Value::as_f64).unwrap_or_else(|| hp["betas"][0].as_f64().unwrap_or(0.0))
}

/// An app holding only the registered optimizer's system, one 8-element parameter entity (the other
/// `extra` 8-element slots of the arenas are for entities the caller spawns), and the resources the system
/// reads, its state laid out by the registry entry as assembly does.
fn optimizer_app(name: &str, hp: &Value, extra: usize) -> App {
    let registry = default_app().registry;
    let entry = registry.optimizer(name).unwrap().clone();
    let mut app = App::new();
    let n = 8 * (1 + extra);
    app.world.spawn((ParamInfo { name: "p".into(), shape: vec![8] }, ParamSlice { offset: 0, len: 8 }));
    let init = f64s(&reference()["initial_params"]);
    let mut params = Arena::zeros(n);
    for k in 0..=extra {
        for (i, v) in init.iter().enumerate() {
            params.data[8 * k + i] = *v as f32;
        }
    }
    app.insert_resource(Params(params));
    app.insert_resource(Grads(Arena::zeros(n)));
    let s = settings(hp);
    app.insert_resource(OptimizerState::from_layout(&name.to_ascii_lowercase(), &(entry.state)(&s), n));
    app.insert_resource(LearningRate::uniform(hp["lr"].as_f64().unwrap(), momentum(hp)));
    app.insert_resource(s);
    app.insert_resource(Clock { batches_per_epoch: 1_000, accumulate: 1, ..Default::default() });
    (entry.install)(&mut app);
    app
}

fn set_grads(app: &mut App, g: &[f64], copies: usize) {
    let mut grads = app.world.resource_mut::<Grads>();
    for k in 0..copies {
        for (i, v) in g.iter().enumerate() {
            grads.0.data[8 * k + i] = *v as f32;
        }
    }
}

/// Runs all 50 reference steps with the gradient in every one of `copies` slots; returns the parameters.
fn run_steps(app: &mut App, copies: usize) -> Vec<f32> {
    for g in reference()["grads"].as_array().unwrap() {
        set_grads(app, &f64s(g), copies);
        app.run(TrainStep);
    }
    app.world.resource::<Params>().0.data.clone()
}

#[test]
fn every_registered_optimizer_matches_every_pytorch_case() {
    let r = reference();
    let mut covered = std::collections::BTreeSet::new();
    for (case, c) in r["optimizers"].as_object().unwrap() {
        let name = engine_name(c["class"].as_str().unwrap());
        covered.insert(name.to_ascii_lowercase());
        let mut app = optimizer_app(name, &c["hyper_parameters"], 0);
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
        println!("{case} ({name}): max |engine - torch f32| = {worst:.3e}");
        assert!(worst <= 1e-6, "{case}: max |engine - torch f32| = {worst:e}");
        let state = app.world.resource::<OptimizerState>();
        assert_eq!(state.step, 50);
        // The state holds exactly the buffers torch's does (AMSGrad's, centered RMSprop's only when on).
        let mut names: Vec<&str> = state.buffers.iter().map(|(n, _)| n.as_str()).collect();
        let mut torch: Vec<&str> = c["final_state_f64"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_array())
            .map(|(k, _)| k.as_str())
            .collect();
        names.sort();
        torch.sort();
        // SGD keeps its momentum buffer even at momentum 0 (torch creates it lazily), the one exception.
        if !(name == "SGD" && torch.is_empty()) {
            assert_eq!(names, torch, "{case}: state buffers");
        }
        if name == "NAdam" {
            let want = c["final_state_f64"]["mu_product"].as_f64().unwrap() as f32;
            assert_eq!(state.scalar("mu_product").unwrap() as f32, want, "{case}: mu_product");
        }
    }
    let registered: std::collections::BTreeSet<String> = default_app().registry.optimizers.keys().cloned().collect();
    assert_eq!(covered, registered, "every registered optimizer has reference cases");
}

/// For every optimizer: entity 0 decayed (weight decay 0.05), entity 1 `NoDecay`, entity 2 `Frozen`. The
/// frozen parameter never moves, the NoDecay one follows torch's decay-free trajectory, the decayed one
/// does not.
#[test]
fn markers_select_decay_and_freezing_for_every_optimizer() {
    let r = reference();
    // (optimizer, case whose hyper-parameters are used with weight_decay 0.05, decay-free reference case).
    // AdamW has no decay-free case; torch's Adam without decay is the same update.
    let plan = [
        ("sgd", "sgd_momentum", "sgd_momentum"),
        ("adam", "adam", "adam"),
        ("adamw", "adamw", "adam"),
        ("adamax", "adamax", "adamax"),
        ("nadam", "nadam", "nadam"),
        ("radam", "radam", "radam"),
        ("rmsprop", "rmsprop_momentum", "rmsprop_momentum"),
        ("adagrad", "adagrad", "adagrad"),
        ("adadelta", "adadelta", "adadelta"),
    ];
    let registered = default_app().registry.optimizers.len();
    assert_eq!(plan.len(), registered, "a plan entry per registered optimizer");
    let init = f64s(&r["initial_params"]);
    for (name, source, no_decay_ref) in plan {
        let mut hp = r["optimizers"][source]["hyper_parameters"].clone();
        hp["weight_decay"] = serde_json::json!(0.05);
        let mut app = optimizer_app(name, &hp, 2);
        app.world.spawn((ParamInfo { name: "b".into(), shape: vec![8] }, ParamSlice { offset: 8, len: 8 }, NoDecay));
        app.world.spawn((ParamInfo { name: "f".into(), shape: vec![8] }, ParamSlice { offset: 16, len: 8 }, Frozen));
        let p = run_steps(&mut app, 3);
        let want = f64s(&r["optimizers"][no_decay_ref]["params_f32"][49]);
        let mut decay_effect = 0.0f64;
        for i in 0..8 {
            assert_eq!(p[16 + i], init[i] as f32, "{name}: a Frozen parameter moved");
            let nd = p[8 + i] as f64;
            assert!((nd - want[i]).abs() <= 1e-6, "{name}: NoDecay parameter {i}: {nd} vs torch {}", want[i]);
            decay_effect = decay_effect.max((p[i] as f64 - nd).abs());
        }
        assert!(decay_effect > 1e-5, "{name}: weight decay had no effect ({decay_effect:e})");
    }
}
