//! Training on a CUDA device: the model's state and activations live on the GPU, the same graph runs there.
//!
//! What stays on the host: the data loader (batches are assembled on the CPU and copied up), validation
//! metrics and the losses without a device kernel (the graph output is copied down and its gradient back up:
//! a `[batch, outputs]` transfer per step; the built-in tasks' training losses run on the device, [`loss`],
//! so their steps never wait), logging and checkpoints (the arenas are copied down before anything reads them on the host).
//! What runs on the device: the graph forward and backward ([`exec`]), gradient zeroing and the fused
//! optimizer update (one launch over the arenas), and in a data-parallel run the gradient average
//! ([`reduce`]: NCCL on the device, or staged through the host communicator).
//!
//! Every system here runs only when [`on_cuda`] holds; their CPU twins are gated by [`on_cpu`], so one
//! schedule serves both devices.

pub mod acts;
pub mod amp;
pub mod ema;
pub mod exec;
pub mod loss;
pub mod optim;
pub mod reduce;
pub mod state;
pub mod storage;
pub mod support;
pub mod systems;
pub mod upload;

use bevy_ecs::prelude::*;
use ecstrain_kernels::Device;

/// The GPU whose memory a CUDA run's records report (`gpu_mem`: GiB this run holds on it, read when a record is
/// written; `gpu_mem_peak` in `summary.json`), inserted by assembly.
#[derive(Resource, Clone, Debug)]
pub struct DeviceMemory(pub std::sync::Arc<ecstrain_kernels::cuda::Gpu>);

impl DeviceMemory {
    /// GiB the run holds on the device now and at most so far; `None` if the driver cannot say.
    pub fn gib(&self) -> Option<(f64, f64)> {
        use ecstrain_kernels::cuda::memory::gib;
        self.0.memory().ok().map(|m| (gib(m.held), gib(m.peak)))
    }
}

/// The device a run computes on (`run.device`), inserted by assembly.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComputeDevice(pub Device);

/// Run condition: the run computes on the CPU (also when no device was set, as in unit tests).
pub fn on_cpu(device: Option<Res<ComputeDevice>>) -> bool {
    device.is_none_or(|d| d.0 == Device::Cpu)
}

/// Run condition: the run computes on a CUDA device.
pub fn on_cuda(device: Option<Res<ComputeDevice>>) -> bool {
    device.is_some_and(|d| matches!(d.0, Device::Cuda(_)))
}
