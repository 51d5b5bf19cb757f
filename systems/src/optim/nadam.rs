//! NAdam (coupled or decoupled weight decay) as a system; beta1 is `LearningRate.momentum`.
//!
//! The running momentum product `mu_product` is one f32 value per optimizer (torch keeps it in a float32
//! scalar tensor), stored in `OptimizerState`'s scalars so checkpoints carry it and a resumed run continues
//! bit for bit. It advances once per step, before any parameter is updated.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::nadam::{advance_mu_product, nadam_step, NadamConfig, MU_PRODUCT_INIT};

use super::parallel::{par_update, Job};
use super::{buffers_by_name, required, OptimizerSettings, TrainableParam};

/// Names of NAdam's state arenas (PyTorch's state keys).
pub const STATE: &[&str] = &["exp_avg", "exp_avg_sq"];

/// Name of the scalar holding the running momentum product (PyTorch's state key).
pub const MU_PRODUCT: &str = "mu_product";

/// NAdam's state: [`STATE`], zero-initialised, and [`MU_PRODUCT`] starting at 1.
pub fn layout(_: &OptimizerSettings) -> StateLayout {
    StateLayout { scalars: vec![(MU_PRODUCT, MU_PRODUCT_INIT as f64)], ..StateLayout::zeros(STATE) }
}

/// Optimize: one NAdam step over every trainable parameter.
pub fn nadam_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<NadamConfig>>>,
) {
    let state = &mut *state;
    state.step += 1;
    let step = state.step;
    let base = NadamConfig {
        lr: lr.lr,
        beta1: lr.momentum,
        beta2: settings.beta2,
        eps: settings.eps,
        weight_decay: settings.weight_decay,
        momentum_decay: settings.momentum_decay,
        decoupled_weight_decay: settings.decoupled_weight_decay,
    };
    let slot = state.scalar_mut(MU_PRODUCT).expect("nadam: optimizer state has no `mu_product` scalar");
    // The stored value is an f32 widened to f64, so the cast back is exact.
    let mu_product = advance_mu_product(*slot as f32, &base, step);
    *slot = mu_product as f64;
    let [m, v] = buffers_by_name(&mut state.buffers, ["exp_avg", "exp_avg_sq"]);
    let (m, v) = (required("nadam", "exp_avg", m), required("nadam", "exp_avg_sq", v));
    jobs.clear();
    for (slice, no_decay, bias, scale) in &query {
        let cfg = NadamConfig {
            lr: lr.for_param(bias, scale),
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            ..base
        };
        jobs.push((slice.range(), cfg));
    }
    par_update(&mut params.0.data, &grads.0.data, [&mut m.data, &mut v.data], &mut jobs, |p, g, [m, v], cfg| {
        nadam_step(p, g, m, v, cfg, step, mu_product)
    });
}
