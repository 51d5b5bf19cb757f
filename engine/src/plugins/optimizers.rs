//! Registry entries of the built-in optimizers: each installs its update system in `StepSet::Optimize`, run on
//! accumulation boundaries.

use bevy_ecs::prelude::*;
use ecstrain_systems::optim;
use ecstrain_systems::optim::at_accumulation_boundary;
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};
use crate::registry::*;

/// `sgd`, `adamw`.
pub struct BuiltinOptimizers;

impl Plugin for BuiltinOptimizers {
    fn build(&self, app: &mut App) {
        app.registry.register_optimizer(
            "sgd",
            OptimizerEntry {
                state: optim::sgd::STATE,
                install: |app| {
                    app.add_systems(
                        TrainStep,
                        optim::sgd::sgd_update.run_if(at_accumulation_boundary).in_set(StepSet::Optimize),
                    );
                },
                doc: "SGD as torch.optim.SGD: momentum, dampening, nesterov, weight_decay",
            },
        );
        app.registry.register_optimizer(
            "adamw",
            OptimizerEntry {
                state: optim::adamw::STATE,
                install: |app| {
                    app.add_systems(
                        TrainStep,
                        optim::adamw::adamw_update.run_if(at_accumulation_boundary).in_set(StepSet::Optimize),
                    );
                },
                doc: "AdamW as torch.optim.AdamW: betas (momentum, beta2), eps, decoupled weight_decay",
            },
        );
    }
}
