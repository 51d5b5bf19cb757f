//! The CUDA twins of the step's systems, each gated by [`on_cuda`](super::on_cuda) where it is scheduled.
//!
//! A train step on the device: sync up (only when the host arenas changed) -> upload batch -> forward ->
//! output down to the host [`Activations`] -> the task's loss on the host -> output gradient up -> backward
//! -> optimizer (one fused launch) -> zero gradients. With a device-side loss ([`super::loss`]) the targets go
//! up with the batch and the loss and output gradient are computed on the device instead: no copy down, no
//! host wait. A device error stops the run through [`RunFailure`]
//! like a data error does.

use bevy_ecs::prelude::*;
use ecstrain_components::{
    Batch, Buffers, Clock, EmaWeights, Graph, Mode, OptimizerState, Params, RunFailure, RunSettings,
};
use ecstrain_kernels::cuda::cudarc::driver::CudaViewMut;
use ecstrain_kernels::cuda::GpuError;
use ecstrain_kernels::rng::Rng;

use super::exec;
use super::loss::DeviceLoss;
use super::reduce::{DeviceBuckets, DeviceComm};
use super::state::GpuState;
use super::upload::BatchInputs;
use crate::graph::Activations;

/// Records the first device error of the step (later stages are gated on no failure). Running out of memory
/// is said in words with the way out: start-up's warm-up step ([`GpuState::warm_up`]) sized the run's
/// buffers, so it most likely means something else took the device's memory during the run.
pub(super) fn fail(failure: &mut RunFailure, what: &str, e: GpuError) {
    if failure.0.is_some() {
        return;
    }
    failure.0 = Some(if e.is_out_of_memory() {
        format!(
            "CUDA {what}: out of device memory ({}; start-up already sized the run's buffers, so another \
             process may be using this GPU); lower run.batch or set run.amp to need less",
            ecstrain_kernels::cuda::memory::current_device_report()
        )
    } else {
        format!("CUDA {what}: {e}")
    });
}

/// Per-micro-batch seed of stochastic ops: the host executor's, so dropout masks match the CPU's.
fn step_seed(settings: &RunSettings, clock: &Clock) -> u64 {
    Rng::derive(settings.seed, &[0x57E9, clock.micro_step]).next_u64()
}

/// Load (first): uploads the host arenas when they changed (a new run, a resume, loaded weights), and the
/// f16 loss scale with them.
pub fn gpu_sync_up(
    mut gpu: ResMut<GpuState>,
    params: Res<Params>,
    buffers: Res<Buffers>,
    opt: Res<OptimizerState>,
    ema: Option<Res<EmaWeights>>,
    scaler: Option<Res<ecstrain_components::LossScaler>>,
    mut failure: ResMut<RunFailure>,
) {
    if gpu.device_stale {
        let g = &mut *gpu;
        let mut run = || -> Result<(), GpuError> {
            g.upload(&params, &buffers, &opt, ema.as_deref())?;
            // f16 loss scaling: the scale the run starts (or resumes) with.
            if let Some(s) = &scaler {
                g.gpu.stream().memcpy_htod(&s.state()[..], &mut g.loss_scale)?;
            }
            Ok(())
        };
        if let Err(e) = run() {
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
    mut ema: Option<ResMut<EmaWeights>>,
    mut failure: ResMut<RunFailure>,
) {
    if gpu.host_stale {
        if let Err(e) = gpu.download(&mut params, &mut buffers, &mut opt, ema.as_deref_mut()) {
            fail(&mut failure, "download of the model state", e);
        }
    }
}

/// Preprocess: stages the batch's inputs in page-locked memory and copies them up on the copy stream, into
/// the input buffer the previous step did not use ([`InputUpload`](super::upload::InputUpload)); with the
/// training split on the device (`run.device_cache`), a training batch's row indices instead.
/// A training step with a device-side loss takes its targets along.
pub fn gpu_upload_batch(
    mut gpu: ResMut<GpuState>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    device_loss: Option<Res<DeviceLoss>>,
    mut failure: ResMut<RunFailure>,
) {
    let len = batch.size * batch.input_len;
    let targets = device_loss.as_ref().filter(|_| *mode == Mode::Train).and_then(|dl| dl.targets(&batch));
    let GpuState { gpu: device, upload, acts, .. } = &mut *gpu;
    // With `run.device_cache` a training batch carries no rows (its loader skips them): they are on the device.
    let inputs = if *mode == Mode::Train && upload.has_device_rows() {
        BatchInputs::Rows(&batch.indices[..batch.size])
    } else {
        BatchInputs::Values(&batch.inputs[..len])
    };
    if let Err(e) = upload.upload(device, &mut acts.input, inputs, targets) {
        fail(&mut failure, "batch upload", e);
    }
}

/// Forward on the device; the output rows are copied into the host [`Activations`] for the task, except in
/// a training step whose loss runs on the device ([`DeviceLoss`]): that step does not wait for the device.
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn gpu_forward(
    mut gpu: ResMut<GpuState>,
    graph: Res<Graph>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    clock: Res<Clock>,
    settings: Res<RunSettings>,
    device_loss: Option<Res<DeviceLoss>>,
    mut failure: ResMut<RunFailure>,
) {
    let n = batch.size;
    let g = &mut *gpu;
    let device = g.gpu.clone();
    let mut run = || -> Result<(), GpuError> {
        exec::forward(&device, &graph, &g.params, &mut g.buffers, &mut g.acts, n, *mode, step_seed(&settings, &clock))?;
        if device_loss.is_some() && *mode == Mode::Train {
            return Ok(());
        }
        let out = graph.output.0;
        let len = n * graph.values[out].numel();
        // VQ statistics for the task's loss and metrics (queued first: the output's copy into pageable memory
        // returns only once done, and then so are they).
        exec::queue_aux(&device, &mut g.acts)?;
        let dev_out = g.acts.values[out].as_ref().expect("the output is produced");
        let staged = super::acts::output_as_f32(&device, dev_out, &mut g.acts.grad_tmp, len)?;
        device.stream().memcpy_dtoh(&staged, &mut acts.values[out][..len])?;
        device.stream().synchronize()?;
        exec::read_aux(&graph, &g.acts, &mut acts.aux)
    };
    if let Err(e) = run() {
        fail(&mut failure, "forward", e);
    }
}

/// Backward on the device, after the task wrote d loss / d output into the host [`Activations`] (copied up
/// here) or, with a [`DeviceLoss`], into the output's device gradient.
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn gpu_backward(
    mut gpu: ResMut<GpuState>,
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    clock: Res<Clock>,
    settings: Res<RunSettings>,
    params_host: Res<ecstrain_components::Params>,
    device_comm: Option<Res<DeviceComm>>,
    buckets: Option<Res<DeviceBuckets>>,
    device_loss: Option<Res<DeviceLoss>>,
    scaler: Option<Res<super::amp::DeviceScaler>>,
    mut failure: ResMut<RunFailure>,
) {
    let n = batch.size;
    let g = &mut *gpu;
    let device = g.gpu.clone();
    let overlap = device_comm.zip(buckets);
    let host_len = params_host.0.len();
    let mut run = || -> Result<(), GpuError> {
        // The device loss wrote the output gradient already, scaled; the host task's goes up and is scaled
        // here (in f32, before a half output's rounding).
        if device_loss.is_none() {
            let out = graph.output.0;
            let len = n * graph.values[out].numel();
            let scale = scaler.is_some().then_some(&g.loss_scale);
            let dst = g.acts.grads[out].as_mut().expect("the output has a gradient buffer");
            super::acts::upload_output_gradient(&device, &acts.grads[out][..len], dst, &mut g.acts.grad_tmp, scale)?;
        }
        let seed = step_seed(&settings, &clock);
        let (params, grads, dacts) = (&g.params, &mut g.grads, &mut g.acts);
        let aux = exec::AuxWeight { weight: acts.aux_weight, loss_scale: &g.loss_scale };
        match (&overlap, clock.at_accumulation_boundary()) {
            // Data parallel over NCCL: each bucket is averaged on the communicator's stream as soon as its
            // kernels are issued, and the compute stream waits for the last before anything reads the arena.
            (Some((dc, buckets)), true) => {
                let mut on_ready = |bucket: &mut CudaViewMut<f32>| dc.0.average_f32(bucket);
                let release = exec::DeviceRelease {
                    cuts: &buckets.cuts,
                    len: host_len,
                    bucket: buckets.bucket,
                    on_ready: &mut on_ready,
                };
                exec::backward_releasing(&device, &graph, params, grads, dacts, n, *mode, seed, aux, Some(release))?;
                dc.0.join()
            }
            _ => exec::backward(&device, &graph, params, grads, dacts, n, *mode, seed, aux),
        }
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

/// Reduce (on accumulation boundaries, with `run.clip_grad_*`): clamps and / or rescales the device
/// gradients of the trainable parameters (the host system's semantics). The norm stays on the device until
/// a log record wants it ([`gpu_read_grad_norm`]): reading it every step would make the host wait for the
/// backward every step.
pub fn gpu_clip_gradients(
    mut gpu: ResMut<GpuState>,
    settings: Res<crate::optim::clip::GradClip>,
    mut failure: ResMut<RunFailure>,
) {
    let g = &mut *gpu;
    let GpuState { gpu: device, grads, clip, .. } = g;
    let Some((table, ws)) = clip.as_mut() else { return };
    let result = ecstrain_kernels::optim::clip::cuda::clip_gradients(
        device,
        &mut grads.slice_mut(..),
        table,
        settings.max_value,
        settings.max_norm,
        ws,
    );
    if let Err(e) = result {
        fail(&mut failure, "gradient clipping", e);
    }
}

/// Log (at log intervals, with `run.clip_grad_*`, before the train record): the gradient norm of the last
/// clipping, copied down for the record.
pub fn gpu_read_grad_norm(
    gpu: Res<GpuState>,
    mut norm: ResMut<crate::optim::clip::GradNorm>,
    mut failure: ResMut<RunFailure>,
) {
    let Some((_, ws)) = gpu.clip.as_ref() else { return };
    match ws.download_norm(&gpu.gpu) {
        Ok(n) => norm.0 = Some(n),
        Err(e) => fail(&mut failure, "gradient norm read", e),
    }
}
