//! Gradient clipping through the real step pipeline: a probe plugin records the gradients just before the
//! Reduce stage (as the backward left them) and just after it (what the optimizer will read), on a digits MLP
//! with one layer frozen.

mod common;

use std::sync::Mutex;

use bevy_ecs::prelude::*;
use common::*;
use ecstrain::components::{Frozen, Grads, ParamInfo, ParamSlice};
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner, App};
use ecstrain::systems::optim::clip::GradNorm;
use ecstrain::systems::sets::{RunStart, StepSet, TrainStep};

/// (before Reduce, after Reduce, logged norm) per optimizer step.
/// The tests share the probe's static, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static SEEN: Mutex<Vec<Probe>> = Mutex::new(Vec::new());

/// Gradients before Reduce, after Reduce, and the logged norm, of one optimizer step.
type Probe = (Vec<f32>, Vec<f32>, Option<f64>);

fn freeze_first_layer(mut commands: Commands, params: Query<(Entity, &ParamInfo)>) {
    for (e, info) in &params {
        if info.name.starts_with("layers.0.") {
            commands.entity(e).insert(Frozen);
        }
    }
}

fn before(grads: Res<Grads>) {
    SEEN.lock().unwrap().push((grads.0.data.clone(), Vec::new(), None));
}

fn after(grads: Res<Grads>, norm: Option<Res<GradNorm>>) {
    let mut seen = SEEN.lock().unwrap();
    let last = seen.last_mut().unwrap();
    last.1 = grads.0.data.clone();
    last.2 = norm.and_then(|n| n.0);
}

/// Runs one epoch with `overrides` and returns what the probe saw, plus the frozen layer's arena range.
fn run(tag: &str, overrides: &[&str]) -> (Vec<Probe>, FrozenRanges) {
    SEEN.lock().unwrap().clear();
    let dir = scratch(tag);
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&dir.join("run")).replace("epochs: 2", "epochs: 1"));
    let mut app = default_app();
    app.add_plugin(|app: &mut App| {
        app.add_systems(RunStart, freeze_first_layer);
        app.add_systems(TrainStep, before.after(StepSet::Backward).before(StepSet::Reduce));
        app.add_systems(TrainStep, after.after(StepSet::Reduce).before(StepSet::Optimize));
    });
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let asm = assemble(app, load_config(&cfg, &overrides).unwrap(), true).unwrap();
    let mut q = asm.app.world.try_query::<(&ParamInfo, &ParamSlice)>().unwrap();
    let frozen: Vec<_> =
        q.iter(&asm.app.world).filter(|(info, _)| info.name.starts_with("layers.0.")).map(|(_, s)| s.range()).collect();
    runner::train(asm).unwrap();
    (SEEN.lock().unwrap().clone(), FrozenRanges(frozen))
}

/// The arena ranges of the frozen parameters.
struct FrozenRanges(Vec<std::ops::Range<usize>>);

impl FrozenRanges {
    fn contains(&self, i: &usize) -> bool {
        self.0.iter().any(|r| r.contains(i))
    }
}

fn norm(v: &[f32], skip: &FrozenRanges) -> f64 {
    v.iter().enumerate().filter(|(i, _)| !skip.contains(i)).map(|(_, x)| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn clip_by_norm_scales_trainable_gradients_to_the_limit() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (seen, frozen) = run("clip-norm", &["run.clip_grad_norm=0.05"]);
    assert!(seen.len() > 10);
    let mut clipped = 0;
    for (pre, post, logged) in &seen {
        let n = norm(pre, &frozen);
        let logged = logged.expect("grad_norm is recorded when clipping is on");
        assert!((logged - n).abs() <= 1e-9 * n.max(1.0), "logged norm {logged} vs {n}");
        let coef = (0.05 / (n + 1e-6)).min(1.0);
        for i in 0..pre.len() {
            let want = if frozen.contains(&i) { pre[i] } else { pre[i] * coef as f32 };
            assert_eq!(post[i].to_bits(), want.to_bits(), "element {i}: {} vs {want}", post[i]);
        }
        if coef < 1.0 {
            clipped += 1;
            assert!((norm(post, &frozen) - 0.05).abs() < 1e-6);
        }
    }
    assert!(clipped > 0, "the limit never bit; pick a smaller one");
}

#[test]
fn clip_by_value_clamps_each_element_and_off_changes_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (seen, frozen) = run("clip-value", &["run.clip_grad_value=0.001"]);
    let mut bit = false;
    for (pre, post, _) in &seen {
        for i in 0..pre.len() {
            let want = if frozen.contains(&i) { pre[i] } else { pre[i].clamp(-0.001, 0.001) };
            bit |= want != pre[i];
            assert_eq!(post[i], want);
        }
    }
    assert!(bit, "no element exceeded the limit");
    let (seen, _) = run("clip-off", &[]);
    assert!(seen.iter().all(|(pre, post, logged)| pre == post && logged.is_none()));
}
