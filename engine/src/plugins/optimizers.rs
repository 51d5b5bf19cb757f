//! Registry entries of the built-in optimizers: each installs its update system in `StepSet::Optimize`, run on
//! accumulation boundaries. Names are lower-case; configs may spell them as torch / Ultralytics do (`SGD`,
//! `AdamW`, `RMSProp`, ...) since lookups are case-insensitive.

use bevy_ecs::prelude::*;
use ecstrain_systems::device::on_cpu;
use ecstrain_systems::optim;
use ecstrain_systems::optim::loss_scale::optimizer_step_due;
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};
use crate::registry::*;

/// `sgd`, `adam`, `adamw`, `adamax`, `nadam`, `radam`, `rmsprop`, `adagrad`, `adadelta`.
pub struct BuiltinOptimizers;

/// Adds `system` to the Optimize set of the train step, on accumulation boundaries only.
fn install<M>(app: &mut App, system: impl IntoScheduleConfigs<bevy_ecs::system::ScheduleSystem, M>) {
    // The host update; on a CUDA run the device's fused update (plugins/cuda.rs) takes its place.
    app.add_systems(TrainStep, system.run_if(optimizer_step_due).run_if(on_cpu).in_set(StepSet::Optimize));
}

impl Plugin for BuiltinOptimizers {
    fn build(&self, app: &mut App) {
        let entries: [(&str, OptimizerEntry); 9] = [
            (
                "sgd",
                OptimizerEntry {
                    state: optim::sgd::layout,
                    install: |app| install(app, optim::sgd::sgd_update),
                    doc: "SGD as torch.optim.SGD: momentum, dampening, nesterov, weight_decay",
                },
            ),
            (
                "adam",
                OptimizerEntry {
                    state: optim::adam::layout,
                    install: |app| install(app, optim::adam::adam_update),
                    doc: "Adam as torch.optim.Adam: betas (momentum, beta2), eps, L2 weight_decay, amsgrad, decoupled_weight_decay",
                },
            ),
            (
                "adamw",
                OptimizerEntry {
                    state: optim::adamw::layout,
                    install: |app| install(app, optim::adamw::adamw_update),
                    doc: "AdamW as torch.optim.AdamW: betas (momentum, beta2), eps, decoupled weight_decay, amsgrad",
                },
            ),
            (
                "adamax",
                OptimizerEntry {
                    state: optim::adamax::layout,
                    install: |app| install(app, optim::adamax::adamax_update),
                    doc: "Adamax as torch.optim.Adamax: betas (momentum, beta2), eps, L2 weight_decay",
                },
            ),
            (
                "nadam",
                OptimizerEntry {
                    state: optim::nadam::layout,
                    install: |app| install(app, optim::nadam::nadam_update),
                    doc: "NAdam as torch.optim.NAdam: betas (momentum, beta2), eps, momentum_decay, weight_decay, decoupled_weight_decay",
                },
            ),
            (
                "radam",
                OptimizerEntry {
                    state: optim::radam::layout,
                    install: |app| install(app, optim::radam::radam_update),
                    doc: "RAdam as torch.optim.RAdam: betas (momentum, beta2), eps, weight_decay, decoupled_weight_decay",
                },
            ),
            (
                "rmsprop",
                OptimizerEntry {
                    state: optim::rmsprop::layout,
                    install: |app| install(app, optim::rmsprop::rmsprop_update),
                    doc: "RMSprop as torch.optim.RMSprop: alpha, eps, momentum (run.momentum), centered, weight_decay",
                },
            ),
            (
                "adagrad",
                OptimizerEntry {
                    state: optim::adagrad::layout,
                    install: |app| install(app, optim::adagrad::adagrad_update),
                    doc: "Adagrad as torch.optim.Adagrad: lr_decay, initial_accumulator_value, eps, weight_decay",
                },
            ),
            (
                "adadelta",
                OptimizerEntry {
                    state: optim::adadelta::layout,
                    install: |app| install(app, optim::adadelta::adadelta_update),
                    doc: "Adadelta as torch.optim.Adadelta: rho, eps, weight_decay (lr scales the step, torch default 1.0)",
                },
            ),
        ];
        for (name, entry) in entries {
            app.registry.register_optimizer(name, entry);
        }
    }
}
