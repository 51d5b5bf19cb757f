//! The CUDA twins of the step's systems, each gated by [`on_cuda`](super::on_cuda) where it is scheduled.
//!
//! A train step on the device: sync up (only when the host arenas changed) -> upload batch -> forward ->
//! output down to the host [`Activations`] -> the task's loss on the host -> output gradient up -> backward
//! -> optimizer (one fused launch) -> zero gradients. A device error stops the run through [`RunFailure`]
//! like a data error does.

use bevy_ecs::prelude::*;
use ecstrain_components::{
    Batch, Buffers, Clock, Frozen, Graph, LearningRate, Mode, OptimizerState, Params, RunFailure, RunSettings,
};
use ecstrain_kernels::cuda::GpuError;
use ecstrain_kernels::optim::adam::AdamConfig;
use ecstrain_kernels::rng::Rng;

use super::exec;
use super::state::GpuState;
use crate::graph::Activations;
use crate::optim::{OptimizerSettings, TrainableParam};

/// Records the first device error of the step (later stages are gated on no failure).
fn fail(failure: &mut RunFailure, what: &str, e: GpuError) {
    if failure.0.is_none() {
        failure.0 = Some(format!("CUDA {what}: {e}"));
    }
}

/// Per-micro-batch seed of stochastic ops: the host executor's, so dropout masks match the CPU's.
fn step_seed(settings: &RunSettings, clock: &Clock) -> u64 {
    Rng::derive(settings.seed, &[0x57E9, clock.micro_step]).next_u64()
}

/// Load (first): uploads the host arenas when they changed (a new run, a resume, loaded weights).
pub fn gpu_sync_up(
    mut gpu: ResMut<GpuState>,
    params: Res<Params>,
    buffers: Res<Buffers>,
    opt: Res<OptimizerState>,
    mut failure: ResMut<RunFailure>,
) {
    if gpu.device_stale {
        if let Err(e) = gpu.upload(&params, &buffers, &opt) {
            fail(&mut failure, "upload of the model state", e);
        }
    }
}

/// Before the host reads the arenas (validation end, epoch end, run end): copies them down if the device
/// trained since the last copy.
pub fn gpu_sync_down(
    mut gpu: ResMut<GpuState>,
    mut params: ResMut<Params>,
    mut buffers: ResMut<Buffers>,
    mut opt: ResMut<OptimizerState>,
    mut failure: ResMut<RunFailure>,
) {
    if gpu.host_stale {
        if let Err(e) = gpu.download(&mut params, &mut buffers, &mut opt) {
            fail(&mut failure, "download of the model state", e);
        }
    }
}

/// Preprocess: stages the batch's inputs in page-locked memory and copies them up on the copy stream.
pub fn gpu_upload_batch(mut gpu: ResMut<GpuState>, batch: Res<Batch>, mut failure: ResMut<RunFailure>) {
    let len = batch.size * batch.input_len;
    let g = &mut *gpu;
    let mut run = || -> Result<(), GpuError> {
        // Waits for the previous copy out of the staging buffer (long done: a whole step ago).
        let staging = g.pinned_input.as_mut_slice()?;
        staging[..len].copy_from_slice(&batch.inputs[..len]);
        // The whole planned input: rows past the batch are stale and never read.
        g.gpu.copy_stream().memcpy_htod(&g.pinned_input, &mut g.acts.input)?;
        Ok(())
    };
    if let Err(e) = run() {
        fail(&mut failure, "batch upload", e);
    }
}

/// Forward on the device; the output rows are copied into the host [`Activations`] for the task.
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn gpu_forward(
    mut gpu: ResMut<GpuState>,
    graph: Res<Graph>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    clock: Res<Clock>,
    settings: Res<RunSettings>,
    mut failure: ResMut<RunFailure>,
) {
    let n = batch.size;
    let g = &mut *gpu;
    let device = g.gpu.clone();
    let mut run = || -> Result<(), GpuError> {
        exec::forward(&device, &graph, &g.params, &mut g.buffers, &mut g.acts, n, *mode, step_seed(&settings, &clock))?;
        let out = graph.output.0;
        let len = n * graph.values[out].numel();
        let dev_out = g.acts.values[out].as_ref().expect("the output is produced").slice(..len);
        device.stream().memcpy_dtoh(&dev_out, &mut acts.values[out][..len])?;
        device.stream().synchronize()?;
        Ok(())
    };
    if let Err(e) = run() {
        fail(&mut failure, "forward", e);
    }
}

/// Backward on the device, after the task wrote d loss / d output into the host [`Activations`].
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn gpu_backward(
    mut gpu: ResMut<GpuState>,
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    clock: Res<Clock>,
    settings: Res<RunSettings>,
    mut failure: ResMut<RunFailure>,
) {
    let n = batch.size;
    let g = &mut *gpu;
    let device = g.gpu.clone();
    let mut run = || -> Result<(), GpuError> {
        let out = graph.output.0;
        let len = n * graph.values[out].numel();
        let dst = g.acts.grads[out].as_mut().expect("the output has a gradient buffer");
        device.stream().memcpy_htod(&acts.grads[out][..len], &mut dst.slice_mut(..len))?;
        exec::backward(&device, &graph, &g.params, &mut g.grads, &mut g.acts, n, *mode, step_seed(&settings, &clock))
    };
    if let Err(e) = run() {
        fail(&mut failure, "backward", e);
    }
    g.host_stale = true;
}

/// Schedule (on accumulation boundaries): clears the device gradient arena.
pub fn gpu_zero_grads(mut gpu: ResMut<GpuState>, mut failure: ResMut<RunFailure>) {
    let g = &mut *gpu;
    if let Err(e) = g.gpu.stream().memset_zeros(&mut g.grads) {
        fail(&mut failure, "gradient zeroing", e.into());
    }
}

/// Optimize: one fused Adam / AdamW launch over the arenas (one segment per trainable parameter, with the
/// host systems' per-parameter learning rate and decay).
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn gpu_adam_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut gpu: ResMut<GpuState>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut failure: ResMut<RunFailure>,
) {
    let decoupled = state.optimizer == "adamw" || settings.decoupled_weight_decay;
    state.step += 1;
    let step = state.step;
    let g = &mut *gpu;
    let mut k = 0;
    for (slice, no_decay, bias, scale) in &query {
        let cfg = AdamConfig {
            lr: lr.for_param(bias, scale),
            beta1: lr.momentum,
            beta2: settings.beta2,
            eps: settings.eps,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            decoupled_weight_decay: decoupled,
            amsgrad: settings.amsgrad,
        };
        let r = slice.range();
        g.segments.host[k] = ecstrain_kernels::optim::adam::cuda::segment(&cfg, step, r.start, r.end);
        k += 1;
    }
    debug_assert_eq!(k, g.segments.host.len(), "trainable parameters changed after assembly");
    g.segments.host.sort_unstable_by_key(|s| s.start);
    let GpuState { gpu: device, params, grads, opt, segments, placeholder, .. } = g;
    let mut run = || -> Result<(), GpuError> {
        segments.upload(device)?;
        let (mut m, mut v, mut vmax) = (None, None, None);
        for (name, buf) in opt.iter_mut() {
            match name.as_str() {
                "exp_avg" => m = Some(buf),
                "exp_avg_sq" => v = Some(buf),
                "max_exp_avg_sq" => vmax = Some(buf),
                _ => {}
            }
        }
        let (m, v) = (m.expect("adam state has exp_avg"), v.expect("adam state has exp_avg_sq"));
        // AMSGrad's buffer exists only with amsgrad; without it the kernel never reads `vmax`.
        let vmax = vmax.unwrap_or(placeholder);
        let n = params.len();
        ecstrain_kernels::optim::adam::cuda::step(
            device,
            &mut params.slice_mut(..),
            &grads.slice(..),
            &mut m.slice_mut(..n),
            &mut v.slice_mut(..n),
            &mut vmax.slice_mut(..),
            segments,
        )
    };
    if let Err(e) = run() {
        fail(&mut failure, "optimizer step", e);
    }
    g.host_stale = true;
}
