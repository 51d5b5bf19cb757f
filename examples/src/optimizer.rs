//! Optimizer `signsgd`: `p -= lr * sign(g)`, with decoupled weight decay `p *= 1 - lr * weight_decay` on the
//! parameters that take decay (Bernstein et al. 2018, without momentum). An optimizer is a state layout (here
//! none: sign-SGD keeps nothing between steps) and an update system in `StepSet::Optimize`, run on
//! accumulation boundaries whose gradients are finite.

use bevy_ecs::prelude::*;
use ecstrain::components::{Frozen, Grads, LearningRate, Params, StateLayout};
use ecstrain::engine::registry::OptimizerEntry;
use ecstrain::engine::App;
use ecstrain::systems::optim::loss_scale::optimizer_step_due;
use ecstrain::systems::optim::{OptimizerSettings, TrainableParam};
use ecstrain::systems::sets::{StepSet, TrainStep};

/// Optimize: one sign-SGD step over every trainable parameter (frozen ones are skipped by the query).
pub fn signsgd_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
) {
    for (slice, no_decay, bias, scale) in &query {
        let lr = lr.for_param(bias, scale) as f32;
        let decay = if no_decay { 1.0 } else { 1.0 - lr * settings.weight_decay as f32 };
        for (p, &g) in params.0.get_mut(*slice).iter_mut().zip(grads.0.get(*slice)) {
            // sign(0) = 0: a parameter without gradient stays where it is.
            let step = if g > 0.0 {
                lr
            } else if g < 0.0 {
                -lr
            } else {
                0.0
            };
            *p = *p * decay - step;
        }
    }
}

/// Registers `signsgd`.
pub fn register(app: &mut App) {
    app.registry.register_optimizer(
        "signsgd",
        OptimizerEntry {
            state: |_| StateLayout::default(),
            install: |app| {
                app.add_systems(TrainStep, signsgd_update.run_if(optimizer_step_due).in_set(StepSet::Optimize));
            },
            doc: "sign-SGD with decoupled weight decay (ecstrain-examples)",
        },
    );
}
