//! Gradient clipping and a weight EMA written the way a user outside the engine would write them: plugins of
//! their own components and systems on the public API, no engine edit. Each is checked against the built-in
//! feature of the same name (`run.clip_grad_norm`, `run.ema`) on the same run.

mod common;

use std::sync::Mutex;

use bevy_ecs::prelude::*;
use common::*;
use ecstrain::components::{Clock, Frozen, Grads, ParamInfo, ParamSlice, Params};
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner, App};
use ecstrain::systems::checkpoint::safetensors_io::load_safetensors;
use ecstrain::systems::sets::{StepSet, TrainStep};

const MAX_NORM: f64 = 0.05;

/// The user's clipping: scale every trainable gradient so their joint L2 norm is at most MAX_NORM.
fn my_clip(q: Query<&ParamSlice, Without<Frozen>>, mut grads: ResMut<Grads>, clock: Res<Clock>) {
    if !clock.at_accumulation_boundary() {
        return;
    }
    let total: f64 = q.iter().flat_map(|s| grads.0.get(*s).iter()).map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
    let coef = (MAX_NORM / (total + 1e-6)).min(1.0) as f32;
    for s in &q {
        grads.0.get_mut(*s).iter_mut().for_each(|g| *g *= coef);
    }
}

/// The user's EMA: each parameter entity carries its own average as a component.
#[derive(Component)]
struct MyShadow(Vec<f32>);

fn attach_shadows(mut commands: Commands, q: Query<(Entity, &ParamSlice)>, params: Res<Params>) {
    for (e, s) in &q {
        commands.entity(e).insert(MyShadow(params.0.get(*s).to_vec()));
    }
}

fn update_shadows(
    mut q: Query<(&ParamSlice, &mut MyShadow)>,
    params: Res<Params>,
    clock: Res<Clock>,
    mut n: Local<u64>,
) {
    if !clock.at_accumulation_boundary() {
        return;
    }
    *n += 1;
    let d = 0.9 * (1.0 - (-(*n as f64) / 5.0).exp());
    for (s, mut shadow) in &mut q {
        for (a, &p) in shadow.0.iter_mut().zip(params.0.get(*s)) {
            *a = *a * d as f32 + (1.0 - d) as f32 * p;
        }
    }
}

/// The user's averages at the end of the run, by parameter name.
static SHADOWS: Mutex<Vec<(String, Vec<f32>)>> = Mutex::new(Vec::new());

fn export_shadows(q: Query<(&ParamInfo, &MyShadow)>) {
    *SHADOWS.lock().unwrap() = q.iter().map(|(i, s)| (i.name.clone(), s.0.clone())).collect();
}

fn run(
    tag: &str,
    sets: &[&str],
    plugin: Option<fn(&mut App)>,
) -> ecstrain::systems::checkpoint::safetensors_io::LoadedCheckpoint {
    let dir = scratch(tag);
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &(digits_yaml(&save) + "  seed: 2\n"));
    let mut app = default_app();
    if let Some(p) = plugin {
        app.add_plugin(p);
    }
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    runner::train(assemble(app, load_config(&cfg, &sets).unwrap(), true).unwrap()).unwrap();
    load_safetensors(&save.join("checkpoints/last.safetensors")).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + x.abs()))
}

#[test]
fn a_user_clipping_plugin_matches_the_built_in_one() {
    let builtin = run("clip_builtin", &["run.clip_grad_norm=0.05"], None);
    let user = run(
        "clip_user",
        &[],
        Some(|app: &mut App| {
            app.add_systems(TrainStep, my_clip.in_set(StepSet::Reduce));
        }),
    );
    let plain = run("clip_none", &[], None);
    for (name, t) in &builtin.tensors {
        let (b, u) = (t.data.as_f32().unwrap(), user.tensors[name].data.as_f32().unwrap());
        assert!(close(b, u, 1e-5), "{name}: the user's clipping differs from run.clip_grad_norm");
    }
    assert_ne!(builtin.tensors, plain.tensors, "clipping at 0.05 should change the run");
}

#[test]
fn a_user_ema_plugin_matches_the_built_in_one() {
    let builtin = run("ema_builtin", &["run.ema=true", "run.ema_decay=0.9", "run.ema_tau=5"], None);
    run(
        "ema_user",
        &[],
        Some(|app: &mut App| {
            use ecstrain::systems::sets::{RunEnd, RunStart};
            app.add_systems(RunStart, attach_shadows);
            app.add_systems(TrainStep, update_shadows.after(StepSet::Optimize).before(StepSet::Schedule));
            app.add_systems(RunEnd, export_shadows);
        }),
    );
    let shadows = SHADOWS.lock().unwrap().clone();
    assert!(!shadows.is_empty());
    for (name, avg) in shadows {
        // The built-in checkpoint holds the averages under the plain names.
        let b = builtin.tensors[&name].data.as_f32().unwrap();
        assert!(close(b, &avg, 1e-6), "{name}: the user's EMA differs from run.ema");
    }
}
