//! Optimizer systems: each runs its fused kernel from `ecstrain_kernels::optim` over the parameter entities,
//! reading the slices they own in the parameter, gradient and state arenas. One module per optimizer:
//! `layout` (the state buffers and scalars it keeps, from the settings) and its update system.
//!
//! A parameter's effective learning rate is `LearningRate.lr * LrScale`; its weight decay is zero with
//! [`NoDecay`](ecstrain_components::NoDecay); [`Frozen`](ecstrain_components::Frozen) parameters are skipped.
//! `LearningRate.momentum` is SGD / RMSprop momentum and beta1 of the Adam family (Adam, AdamW, Adamax,
//! NAdam, RAdam), as Ultralytics, so a schedule that drives momentum drives these too.

pub mod adadelta;
pub mod adagrad;
pub mod adam;
pub mod adamax;
pub mod adamw;
pub mod clip;
pub mod ema;
pub mod loss_scale;
pub mod nadam;
pub mod parallel;
pub mod radam;
pub mod rmsprop;
pub mod sgd;

use bevy_ecs::prelude::*;
use ecstrain_components::{Arena, Clock, Grads};

/// What an optimizer reads of each trainable parameter entity: its slice, whether it is exempt from weight
/// decay, whether it is a bias (its lr is [`LearningRate::bias_lr`](ecstrain_components::LearningRate)), and its
/// learning-rate scale.
pub type TrainableParam = (
    &'static ecstrain_components::ParamSlice,
    Has<ecstrain_components::NoDecay>,
    Has<ecstrain_components::Bias>,
    Option<&'static ecstrain_components::LrScale>,
);

/// Hyper-parameters of the optimizers that the schedule does not drive (the `run:` keys of the same names).
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct OptimizerSettings {
    /// Weight decay after the `nbs` scaling (coupled L2 for SGD, Adam, Adamax, RMSprop, Adagrad, Adadelta and,
    /// by default, NAdam / RAdam; decoupled for AdamW and with `decoupled_weight_decay`).
    pub weight_decay: f64,
    /// `run.momentum` as configured. RMSprop keeps a momentum buffer only when it is > 0 (torch decides at
    /// construction too); the per-step value the optimizers use is `LearningRate.momentum`.
    pub momentum: f64,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
    /// SGD: dampening.
    pub dampening: f64,
    /// Adam family: beta2; Adamax: the infinity-norm decay.
    pub beta2: f64,
    /// Epsilon of every optimizer that has one (Adam family, RMSprop, Adagrad, Adadelta).
    pub eps: f64,
    /// Adam, AdamW: the AMSGrad variant (adds the `max_exp_avg_sq` buffer).
    pub amsgrad: bool,
    /// Adam, NAdam, RAdam: decay the parameters as AdamW does instead of adding an L2 term.
    pub decoupled_weight_decay: bool,
    /// NAdam: psi of the momentum schedule `mu_t = beta1 (1 - 0.5 * 0.96^(t psi))`.
    pub momentum_decay: f64,
    /// RMSprop: smoothing constant of the running averages.
    pub alpha: f64,
    /// RMSprop: normalise by the centered second moment (adds the `grad_avg` buffer).
    pub centered: bool,
    /// Adagrad: step `t` uses `lr / (1 + (t - 1) lr_decay)`.
    pub lr_decay: f64,
    /// Adagrad: value the accumulator starts at.
    pub initial_accumulator_value: f64,
    /// Adadelta: decay of its running averages.
    pub rho: f64,
}

impl Default for OptimizerSettings {
    /// The `run:` defaults: weight decay 0.01, momentum 0.9, beta2 0.999, eps 1e-8, the rest torch's.
    fn default() -> Self {
        Self {
            weight_decay: 0.01,
            momentum: 0.9,
            nesterov: false,
            dampening: 0.0,
            beta2: 0.999,
            eps: 1e-8,
            amsgrad: false,
            decoupled_weight_decay: false,
            momentum_decay: 4e-3,
            alpha: 0.99,
            centered: false,
            lr_decay: 0.0,
            initial_accumulator_value: 0.0,
            rho: 0.9,
        }
    }
}

/// The state arenas called `names`, in that order, each `None` when the optimizer state has no such buffer
/// (optional buffers such as AMSGrad's). One pass, no allocation.
pub fn buffers_by_name<'a, const N: usize>(
    buffers: &'a mut [(String, Arena)],
    names: [&str; N],
) -> [Option<&'a mut Arena>; N] {
    let mut out: [Option<&'a mut Arena>; N] = std::array::from_fn(|_| None);
    for (name, arena) in buffers.iter_mut() {
        if let Some(k) = names.iter().position(|n| n == name) {
            out[k] = Some(arena);
        }
    }
    out
}

/// A buffer the optimizer always has, from [`buffers_by_name`]: panics naming it when missing, which can only
/// happen when the state was not built from the optimizer's own layout.
pub fn required<'a>(optimizer: &str, buffer: &str, found: Option<&'a mut Arena>) -> &'a mut Arena {
    found.unwrap_or_else(|| panic!("{optimizer}: optimizer state has no `{buffer}` buffer"))
}

/// Run condition: the micro-batch just processed ends an accumulation window.
pub fn at_accumulation_boundary(clock: Res<Clock>) -> bool {
    clock.at_accumulation_boundary()
}

/// Optimize (after the update): clears the gradient arena for the next accumulation window.
pub fn zero_grads(mut grads: ResMut<Grads>) {
    ecstrain_kernels::ops::par_fill(&mut grads.0.data, 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_found_by_name_in_any_order() {
        let mut b = vec![("b".to_string(), Arena::zeros(1)), ("a".to_string(), Arena::zeros(2))];
        let [a, c, bb] = buffers_by_name(&mut b, ["a", "c", "b"]);
        assert_eq!((a.unwrap().len(), c.is_none(), bb.unwrap().len()), (2, true, 1));
        let [a] = buffers_by_name(&mut b, ["a"]);
        assert_eq!(required("x", "a", a).len(), 2);
        assert!(std::panic::catch_unwind(|| required("x", "a", None).len()).is_err());
    }
}
