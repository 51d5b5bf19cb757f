//! Optimize on the device: one fused launch over the arenas for every built-in optimizer.
//!
//! Each step refills the segment table (one segment per trainable parameter, sorted by offset) with the
//! coefficients the host system would use for that parameter (its learning rate with the bias / layer-decay
//! scale, its weight decay), uploads it, and launches the optimizer's arena kernel. The state buffers are the
//! host layout's, by the same names; scalar state (the step count, NAdam's `mu_product`) stays on the host.
//!
//! Under f16 loss scaling the device decides whether the step runs ([`super::amp`]): a window that
//! overflowed empties the uploaded table before the launch, and the host puts the step count and scalars
//! back when it reads that window's flag, before the next step's coefficients.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, LearningRate, OptimizerState, RunFailure};
use ecstrain_kernels::cuda::cudarc::driver::CudaSlice;
use ecstrain_kernels::cuda::{GpuError, Segment};
use ecstrain_kernels::optim as k;

use super::state::GpuState;
use super::systems::fail;
use crate::optim::{OptimizerSettings, TrainableParam};

/// The device state buffers called `names`, each `None` when the optimizer has no such buffer.
fn buffers<'a, const N: usize>(
    opt: &'a mut [(String, CudaSlice<f32>)],
    names: [&str; N],
) -> [Option<&'a mut CudaSlice<f32>>; N] {
    let mut out: [Option<&'a mut CudaSlice<f32>>; N] = std::array::from_fn(|_| None);
    for (name, buf) in opt.iter_mut() {
        if let Some(i) = names.iter().position(|n| n == name) {
            out[i] = Some(buf);
        }
    }
    out
}

/// A state buffer the optimizer always has (its layout created it).
fn need<'a>(b: Option<&'a mut CudaSlice<f32>>, what: &str) -> &'a mut CudaSlice<f32> {
    b.unwrap_or_else(|| panic!("optimizer state has no `{what}` buffer"))
}

/// Per-parameter segment of `optimizer` at `step` (the host systems' configs, field for field).
#[allow(clippy::too_many_arguments)]
fn segment(
    optimizer: &str,
    s: &OptimizerSettings,
    lr: &LearningRate,
    param_lr: f64,
    weight_decay: f64,
    step: u64,
    mu_product: f32,
    momentum_on: bool,
    r: std::ops::Range<usize>,
) -> Segment {
    let (a, b) = (r.start, r.end);
    match optimizer {
        "sgd" => k::sgd::cuda::segment(
            &k::SgdConfig {
                lr: param_lr,
                momentum: lr.momentum,
                dampening: s.dampening,
                weight_decay,
                nesterov: s.nesterov,
            },
            step,
            a,
            b,
        ),
        "adam" | "adamw" => k::adam::cuda::segment(
            &k::AdamConfig {
                lr: param_lr,
                beta1: lr.momentum,
                beta2: s.beta2,
                eps: s.eps,
                weight_decay,
                decoupled_weight_decay: optimizer == "adamw" || s.decoupled_weight_decay,
                amsgrad: s.amsgrad,
            },
            step,
            a,
            b,
        ),
        "adamax" => k::adamax::cuda::segment(
            &k::AdamaxConfig { lr: param_lr, beta1: lr.momentum, beta2: s.beta2, eps: s.eps, weight_decay },
            step,
            a,
            b,
        ),
        "nadam" => k::nadam::cuda::segment(
            &k::NadamConfig {
                lr: param_lr,
                beta1: lr.momentum,
                beta2: s.beta2,
                eps: s.eps,
                weight_decay,
                momentum_decay: s.momentum_decay,
                decoupled_weight_decay: s.decoupled_weight_decay,
            },
            step,
            mu_product,
            a,
            b,
        ),
        "radam" => k::radam::cuda::segment(
            &k::RadamConfig {
                lr: param_lr,
                beta1: lr.momentum,
                beta2: s.beta2,
                eps: s.eps,
                weight_decay,
                decoupled_weight_decay: s.decoupled_weight_decay,
            },
            step,
            a,
            b,
        ),
        "rmsprop" => k::rmsprop::cuda::segment(
            &k::RmspropConfig {
                lr: param_lr,
                alpha: s.alpha,
                eps: s.eps,
                weight_decay,
                momentum: if momentum_on { lr.momentum } else { 0.0 },
                centered: s.centered,
            },
            a,
            b,
        ),
        "adagrad" => k::adagrad::cuda::segment(
            &k::AdagradConfig {
                lr: param_lr,
                lr_decay: s.lr_decay,
                weight_decay,
                initial_accumulator_value: s.initial_accumulator_value,
                eps: s.eps,
            },
            step,
            a,
            b,
        ),
        "adadelta" => {
            k::adadelta::cuda::segment(&k::AdadeltaConfig { lr: param_lr, rho: s.rho, eps: s.eps, weight_decay }, a, b)
        }
        other => unreachable!("assembly checks the optimizer `{other}` has a device update"),
    }
}

/// Optimize (on optimizer steps): the fused device update of the run's optimizer.
pub fn gpu_optimizer_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut gpu: ResMut<GpuState>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut scaler: Option<ResMut<super::amp::DeviceScaler>>,
    mut failure: ResMut<RunFailure>,
) {
    let state = &mut *state;
    if let Some(d) = scaler.as_deref_mut() {
        d.remember(state);
    }
    state.step += 1;
    let step = state.step;
    // Taken for the step and put back at its end (a clone would allocate every step).
    let name = std::mem::take(&mut state.optimizer);
    // NAdam's running product of the momentum schedule advances once per step, on the host, as the host
    // system does (the base config's lr and decay do not enter it).
    let mut mu_product = 0.0f32;
    if name == "nadam" {
        let base = k::NadamConfig {
            lr: lr.lr,
            beta1: lr.momentum,
            beta2: settings.beta2,
            eps: settings.eps,
            weight_decay: settings.weight_decay,
            momentum_decay: settings.momentum_decay,
            decoupled_weight_decay: settings.decoupled_weight_decay,
        };
        let slot = state
            .scalar_mut(crate::optim::nadam::MU_PRODUCT)
            .expect("nadam: optimizer state has no `mu_product` scalar");
        mu_product = k::advance_mu_product(*slot as f32, &base, step);
        *slot = mu_product as f64;
    }
    let g = &mut *gpu;
    let momentum_on = g.opt.iter().any(|(n, _)| n == "momentum_buffer");
    let mut count = 0;
    for (slice, no_decay, bias, scale) in &query {
        let wd = if no_decay { 0.0 } else { settings.weight_decay };
        let seg =
            segment(&name, &settings, &lr, lr.for_param(bias, scale), wd, step, mu_product, momentum_on, slice.range());
        if let Some(slot) = g.segments.host.get_mut(count) {
            *slot = seg;
        }
        count += 1;
    }
    assert_eq!(count, g.segments.host.len(), "the trainable parameters changed after the run was assembled");
    g.segments.host.sort_unstable_by_key(|s| s.start);
    let GpuState { gpu: device, params, grads, opt, segments, placeholders, found_inf, .. } = g;
    let [ph0, ph1] = placeholders;
    let skippable = scaler.is_some();
    let mut run = || -> Result<(), GpuError> {
        segments.upload(device)?;
        if skippable {
            k::loss_scale::cuda::skip_segments_if_found(device, segments, &found_inf.as_view())?;
        }
        let n = params.len();
        let (p, gr) = (&mut params.slice_mut(..), &grads.slice(..n));
        match name.as_str() {
            "sgd" => {
                let [m] = buffers(opt, ["momentum_buffer"]);
                k::sgd::cuda::step(device, p, gr, &mut need(m, "momentum_buffer").slice_mut(..), segments)
            }
            "adam" | "adamw" => {
                let [m, v, vm] = buffers(opt, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
                let (m, v, vm) = (need(m, "exp_avg"), need(v, "exp_avg_sq"), vm.unwrap_or(ph0));
                k::adam::cuda::step(
                    device,
                    p,
                    gr,
                    &mut m.slice_mut(..),
                    &mut v.slice_mut(..),
                    &mut vm.slice_mut(..),
                    segments,
                )
            }
            "adamax" => {
                let [m, u] = buffers(opt, ["exp_avg", "exp_inf"]);
                let (m, u) = (need(m, "exp_avg"), need(u, "exp_inf"));
                k::adamax::cuda::step(device, p, gr, &mut m.slice_mut(..), &mut u.slice_mut(..), segments)
            }
            "nadam" | "radam" => {
                let [m, v] = buffers(opt, ["exp_avg", "exp_avg_sq"]);
                let (m, v) = (&mut need(m, "exp_avg").slice_mut(..), &mut need(v, "exp_avg_sq").slice_mut(..));
                if name == "nadam" {
                    k::nadam::cuda::step(device, p, gr, m, v, segments)
                } else {
                    k::radam::cuda::step(device, p, gr, m, v, segments)
                }
            }
            "rmsprop" => {
                let [sq, ga, mb] = buffers(opt, ["square_avg", "grad_avg", "momentum_buffer"]);
                let (sq, ga, mb) = (need(sq, "square_avg"), ga.unwrap_or(ph0), mb.unwrap_or(ph1));
                k::rmsprop::cuda::step(
                    device,
                    p,
                    gr,
                    &mut sq.slice_mut(..),
                    &mut ga.slice_mut(..),
                    &mut mb.slice_mut(..),
                    segments,
                )
            }
            "adagrad" => {
                let [sum] = buffers(opt, ["sum"]);
                k::adagrad::cuda::step(device, p, gr, &mut need(sum, "sum").slice_mut(..), segments)
            }
            "adadelta" => {
                let [sq, acc] = buffers(opt, ["square_avg", "acc_delta"]);
                let (sq, acc) = (need(sq, "square_avg"), need(acc, "acc_delta"));
                k::adadelta::cuda::step(device, p, gr, &mut sq.slice_mut(..), &mut acc.slice_mut(..), segments)
            }
            other => unreachable!("assembly checks the optimizer `{other}` has a device update"),
        }
    };
    let result = run();
    state.optimizer = name;
    if let Err(e) = result {
        fail(&mut failure, "optimizer step", e);
    }
    g.host_stale = true;
}
