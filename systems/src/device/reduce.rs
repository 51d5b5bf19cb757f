//! The Reduce stage of a data-parallel CUDA run: the device gradient arena averaged over the ranks before
//! device clipping and the optimizer, as [`all_reduce_gradients`](crate::parallel::all_reduce_gradients)
//! does for the host arena.
//!
//! Two ways, chosen by what the launch provided:
//! - a [`DeviceComm`] (NCCL, the engine's `nccl` feature): in-place averages on the device, on the
//!   communicator's stream, with no host round trip. With [`DeviceBuckets`] (`run.bucket_mb` > 0, the default)
//!   they overlap the backward: `gpu_backward` hands each bucket of the arena over as soon as the kernels
//!   writing it are issued, and joins the streams after the last one, so this system has nothing left to do;
//!   without, this system averages the whole arena after the backward;
//! - otherwise the host communicator (MPI): the arena is staged through the host [`Grads`] buffer (unused on a
//!   CUDA run), reduced there exactly as a CPU run reduces it, and copied back up.

use std::sync::Arc;
use std::time::Instant;

use bevy_ecs::prelude::*;
use ecstrain_components::{EmaWeights, Grads, RunFailure};
use ecstrain_kernels::cuda::cudarc::driver::{CudaSlice, CudaViewMut};
use ecstrain_kernels::cuda::GpuError;

use super::state::GpuState;
use super::systems::fail;
use crate::parallel::reduce::average_over_ranks;
use crate::parallel::{Comm, ReduceTiming};

/// A communication engine that reduces device buffers in place (NCCL).
pub trait DeviceCollective: Send + Sync {
    /// `buf` averaged over every rank, in place, after the compute stream's work issued so far, without
    /// holding the compute stream back (which must not write `buf` before [`join`](Self::join)).
    fn average_f32(&self, buf: &mut CudaViewMut<f32>) -> Result<(), GpuError>;
    /// Orders the compute stream's later work after every average issued so far.
    fn join(&self) -> Result<(), GpuError>;
    /// The engine, for messages ("NCCL").
    fn backend(&self) -> String;
}

/// The run's device communicator, when the launch set one up.
#[derive(Resource, Clone)]
pub struct DeviceComm(pub Arc<dyn DeviceCollective>);

/// The bucket plan of a data-parallel CUDA run whose gradient average overlaps the backward (a positive
/// `run.bucket_mb`): the graph's [`gradient_cuts`](crate::graph::exec::gradient_cuts) and the bucket size in elements.
/// Used when a [`DeviceComm`] exists; the host-staged reduction keeps one average after the backward.
#[derive(Resource, Clone, Debug)]
pub struct DeviceBuckets {
    /// Per node, the end of the arena prefix the backward may still write there.
    pub cuts: Arc<[usize]>,
    /// Bucket size in elements.
    pub bucket: usize,
}

/// Reduce (CUDA, data parallel, on accumulation boundaries): the device gradient arena averaged over ranks.
pub fn gpu_all_reduce_gradients(
    comm: Res<Comm>,
    device_comm: Option<Res<DeviceComm>>,
    buckets: Option<Res<DeviceBuckets>>,
    mut gpu: ResMut<GpuState>,
    mut host: ResMut<Grads>,
    mut timing: ResMut<ReduceTiming>,
    mut failure: ResMut<RunFailure>,
) {
    if device_comm.is_some() && buckets.is_some() {
        return; // averaged during the backward (gpu_backward)
    }
    let t0 = Instant::now();
    let g = &mut *gpu;
    let n = host.0.data.len();
    let result = match &device_comm {
        // Synchronised only to time it for the log; the overlapped path never waits.
        Some(dc) => {
            dc.0.average_f32(&mut g.grads.slice_mut(..n)).and_then(|()| dc.0.join()).and_then(|()| g.gpu.synchronize())
        }
        None => staged_average(&comm, g, &mut host.0.data),
    };
    if let Err(e) = result {
        fail(&mut failure, "gradient all-reduce", e);
        return;
    }
    let seconds = t0.elapsed().as_secs_f64();
    timing.record(seconds, seconds);
}

/// Down, the host all-reduce (the CPU run's arithmetic: a sum per bucket, then `* (1 / world)`), and up.
fn staged_average(comm: &Comm, g: &mut GpuState, host: &mut [f32]) -> Result<(), GpuError> {
    let s = g.gpu.stream().clone();
    let n = host.len();
    s.memcpy_dtoh(&g.grads.slice(..n), host)?;
    s.synchronize()?;
    average_over_ranks(comm.0.as_ref(), host);
    s.memcpy_htod(&*host, &mut g.grads.slice_mut(..n))?;
    Ok(())
}

/// ValidationStart (CUDA, data parallel; before the EMA swap): every rank takes rank 0's device buffers
/// (batch-norm running statistics, and their moving averages with EMA), staged through the host
/// [`Buffers`](ecstrain_components::Buffers) / [`EmaWeights`] arenas, as
/// [`broadcast_buffers`](crate::parallel::broadcast_buffers) does on the CPU.
pub fn gpu_broadcast_buffers(
    comm: Res<Comm>,
    mut gpu: ResMut<GpuState>,
    mut buffers: ResMut<ecstrain_components::Buffers>,
    mut ema: Option<ResMut<EmaWeights>>,
    mut failure: ResMut<RunFailure>,
) {
    let n = buffers.arena.len();
    if n == 0 {
        return;
    }
    let g = &mut *gpu;
    let s = g.gpu.stream().clone();
    let broadcast = |dev: &mut CudaSlice<f32>, host: &mut [f32]| -> Result<(), GpuError> {
        s.memcpy_dtoh(&dev.slice(..n), &mut *host)?;
        s.synchronize()?;
        comm.0.broadcast_f32(host);
        s.memcpy_htod(&*host, &mut dev.slice_mut(..n))?;
        Ok(())
    };
    let mut result = broadcast(&mut g.buffers, &mut buffers.arena.data[..n]);
    if let (Some(dev), Some(host)) = (g.ema.as_mut(), ema.as_deref_mut()) {
        result = result.and_then(|_| broadcast(&mut dev.buffers, &mut host.buffers.data[..n]));
    }
    if let Err(e) = result {
        fail(&mut failure, "buffer broadcast", e);
    }
}
