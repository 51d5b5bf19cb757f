//! The run's state on the device: parameter, gradient, buffer and optimizer-state arenas (one contiguous
//! allocation each, the host layout), the planned activations and the optimizer's segment table.
//!
//! The host arenas stay the copy that checkpoints, logging and resume read. Two flags keep the copies
//! honest: `device_stale` (the host changed: assembly, resume, loaded weights; the next step uploads) and
//! `host_stale` (the device trained; the arenas are copied down before validation ends, an epoch ends or
//! the run ends, i.e. before anything on the host reads them).

use std::sync::Arc;

use bevy_ecs::prelude::*;
use ecstrain_components::{Buffers, EmaWeights, Graph, OptimizerState, Params};
use ecstrain_kernels::cuda::cudarc::driver::CudaSlice;
use ecstrain_kernels::cuda::{Gpu, GpuError, SegmentTable};

use super::acts::GpuActivations;
use super::upload::InputUpload;

/// Device copies of the arenas and activations of one run.
#[derive(Resource)]
pub struct GpuState {
    /// The device.
    pub gpu: Arc<Gpu>,
    /// Parameter arena (the host [`Params`] layout).
    pub params: CudaSlice<f32>,
    /// Gradient arena.
    pub grads: CudaSlice<f32>,
    /// Non-trainable buffers (batch-norm running statistics); at least one element so it always exists.
    pub buffers: CudaSlice<f32>,
    /// Optimizer state buffers by name, in the host order.
    pub opt: Vec<(String, CudaSlice<f32>)>,
    /// One segment per trainable parameter, refilled each optimizer step.
    pub segments: SegmentTable,
    /// Planned activations.
    pub acts: GpuActivations,
    /// Gradient clipping on the device (`run.clip_grad_*`): the trainable ranges and the reduction buffers.
    pub clip: Option<(SegmentTable, ecstrain_kernels::optim::clip::cuda::ClipWorkspace)>,
    /// The batch input's staging, spare device buffer and copy-stream ordering (double-buffered: the next
    /// batch's copy overlaps the current step's compute).
    pub upload: InputUpload,
    /// One-element device flag of f16 loss scaling: set when an unscaled gradient was inf or NaN.
    pub found_inf: CudaSlice<f32>,
    /// f16 loss scaling's `[scale, growth tracker]` ([`ScaleState`](ecstrain_kernels::optim::loss_scale::ScaleState)),
    /// kept on the device between steps (see [`super::amp`]); `[1, 0]` outside f16 autocast, where the VQ
    /// layers' kernels still read it.
    pub loss_scale: CudaSlice<f64>,
    /// The model EMA's averages on the device (`run.ema`), when the run keeps them.
    pub ema: Option<GpuEma>,
    /// One-element buffers for kernel arguments a configuration never reads (AMSGrad's `vmax` without
    /// AMSGrad, RMSprop's `grad_avg` / `momentum_buffer` when off), so no step allocates.
    pub placeholders: [CudaSlice<f32>; 2],
    /// The host arenas changed since the last upload.
    pub device_stale: bool,
    /// The device arenas changed since the last download.
    pub host_stale: bool,
}

impl std::fmt::Debug for GpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuState").field("gpu", &self.gpu).field("params", &self.params.len()).finish_non_exhaustive()
    }
}

/// The moving averages of a `run.ema` run on the device, laid out as the parameter and buffer arenas (the
/// host [`EmaWeights`] stays the copy checkpoints read, kept honest by the same two flags).
pub struct GpuEma {
    /// Averaged parameters ([`GpuState::params`]' layout). Trades places with it for validation.
    pub params: CudaSlice<f32>,
    /// Averaged buffers ([`GpuState::buffers`]' layout).
    pub buffers: CudaSlice<f32>,
    /// The tracked parameters (`EmaShadow`), filled on the first update; the rest are copied.
    pub tracked: SegmentTable,
    /// Whether [`tracked`](Self::tracked) holds the tracked parameters yet.
    pub tracked_ready: bool,
    /// The floating-point buffers (averaged); integer buffers (batch counters) are copied.
    pub float_buffers: SegmentTable,
}

/// Elements of the planned input buffer: `[capacity, numel(input)]`, at least one.
fn acts_input_len(graph: &Graph, capacity: usize) -> usize {
    (capacity * graph.values[0].numel()).max(1)
}

impl GpuState {
    /// Allocates every arena and the activation plan on `gpu` (contents are uploaded by the first step).
    pub fn new(
        gpu: Arc<Gpu>,
        graph: &Graph,
        params: &Params,
        buffers: &Buffers,
        opt: &OptimizerState,
        trainable: usize,
        capacity: usize,
    ) -> Result<GpuState, GpuError> {
        let s = gpu.stream().clone();
        let n = params.0.len();
        let input_len = acts_input_len(graph, capacity);
        Ok(GpuState {
            clip: None,
            upload: InputUpload::new(&gpu, input_len)?,
            params: s.alloc_zeros(n.max(1))?,
            grads: s.alloc_zeros(n.max(1))?,
            buffers: s.alloc_zeros(buffers.arena.len().max(1))?,
            opt: opt
                .buffers
                .iter()
                .map(|(name, a)| Ok((name.clone(), s.alloc_zeros(a.len().max(1))?)))
                .collect::<Result<_, GpuError>>()?,
            segments: SegmentTable::new(&gpu, trainable)?,
            acts: GpuActivations::plan(&gpu, graph, capacity)?,
            placeholders: [s.alloc_zeros(1)?, s.alloc_zeros(1)?],
            ema: None,
            found_inf: s.alloc_zeros(1)?,
            loss_scale: s.clone_htod(&[1.0f64, 0.0])?,
            gpu,
            device_stale: true,
            host_stale: false,
        })
    }

    /// Copies the host arenas up (gradients are zeroed: a step starts from an empty accumulation window),
    /// the EMA's too when the run keeps one on the device.
    pub fn upload(
        &mut self,
        params: &Params,
        buffers: &Buffers,
        opt: &OptimizerState,
        ema: Option<&EmaWeights>,
    ) -> Result<(), GpuError> {
        let s = self.gpu.stream().clone();
        let n = params.0.len();
        s.memcpy_htod(&params.0.data[..], &mut self.params.slice_mut(..n))?;
        if let (Some(dev), Some(host)) = (self.ema.as_mut(), ema) {
            s.memcpy_htod(&host.params.data[..], &mut dev.params.slice_mut(..n))?;
            let nb = host.buffers.len();
            if nb > 0 {
                s.memcpy_htod(&host.buffers.data[..], &mut dev.buffers.slice_mut(..nb))?;
            }
        }
        s.memset_zeros(&mut self.grads)?;
        let nb = buffers.arena.len();
        if nb > 0 {
            s.memcpy_htod(&buffers.arena.data[..], &mut self.buffers.slice_mut(..nb))?;
        }
        for ((name, host), (dname, dev)) in opt.buffers.iter().zip(self.opt.iter_mut()) {
            debug_assert_eq!(name, dname);
            if !host.is_empty() {
                s.memcpy_htod(&host.data[..], &mut dev.slice_mut(..host.len()))?;
            }
        }
        self.device_stale = false;
        Ok(())
    }

    /// Copies the device arenas down into the host ones (waits for the stream), the EMA's too.
    pub fn download(
        &mut self,
        params: &mut Params,
        buffers: &mut Buffers,
        opt: &mut OptimizerState,
        ema: Option<&mut EmaWeights>,
    ) -> Result<(), GpuError> {
        let s = self.gpu.stream().clone();
        let n = params.0.len();
        s.memcpy_dtoh(&self.params.slice(..n), &mut params.0.data[..])?;
        if let (Some(dev), Some(host)) = (self.ema.as_ref(), ema) {
            s.memcpy_dtoh(&dev.params.slice(..n), &mut host.params.data[..])?;
            let nb = host.buffers.len();
            if nb > 0 {
                s.memcpy_dtoh(&dev.buffers.slice(..nb), &mut host.buffers.data[..])?;
            }
        }
        let nb = buffers.arena.len();
        if nb > 0 {
            s.memcpy_dtoh(&self.buffers.slice(..nb), &mut buffers.arena.data[..])?;
        }
        for ((_, host), (_, dev)) in opt.buffers.iter_mut().zip(self.opt.iter()) {
            let len = host.len();
            if len > 0 {
                s.memcpy_dtoh(&dev.slice(..len), &mut host.data[..])?;
            }
        }
        s.synchronize()?;
        self.host_stale = false;
        Ok(())
    }

    /// Prepares device gradient clipping over the trainable ranges `ranges` (sorted or not).
    pub fn enable_clipping(&mut self, ranges: &[std::ops::Range<usize>]) -> Result<(), GpuError> {
        use ecstrain_kernels::optim::clip::cuda::{segment, ClipWorkspace};
        let mut table = SegmentTable::new(&self.gpu, ranges.len())?;
        for (slot, r) in table.host.iter_mut().zip(ranges) {
            *slot = segment(r.start, r.end);
        }
        table.host.sort_unstable_by_key(|s| s.start);
        table.upload(&self.gpu)?;
        self.clip = Some((table, ClipWorkspace::new(&self.gpu)?));
        Ok(())
    }

    /// Keeps the model EMA on the device: allocates its arenas (uploaded with the others by the next step)
    /// and the table of `buffers`' floating-point entries; `tracked` is how many parameters it averages.
    pub fn enable_ema(&mut self, buffers: &Buffers, tracked: usize) -> Result<(), GpuError> {
        use ecstrain_kernels::cuda::Segment;
        let s = self.gpu.stream().clone();
        let floats: Vec<_> = buffers.entries.iter().filter(|e| !e.integer).map(|e| e.slice.range()).collect();
        let mut float_buffers = SegmentTable::new(&self.gpu, floats.len())?;
        for (slot, r) in float_buffers.host.iter_mut().zip(&floats) {
            *slot = Segment { start: r.start as u64, end: r.end as u64, ..Segment::default() };
        }
        float_buffers.host.sort_unstable_by_key(|s| s.start);
        float_buffers.upload(&self.gpu)?;
        self.ema = Some(GpuEma {
            params: s.alloc_zeros(self.params.len())?,
            buffers: s.alloc_zeros(self.buffers.len())?,
            tracked: SegmentTable::new(&self.gpu, tracked)?,
            tracked_ready: false,
            float_buffers,
        });
        self.device_stale = true;
        Ok(())
    }

    /// One training forward and backward and one evaluation forward over a full batch of the (zeroed) input
    /// buffer, before the run starts. The buffers that grow on first use (the shared scratch, the products'
    /// half-precision operand copies) reach their steady size and the kernel modules load here, so a batch
    /// too large for the device fails at start-up, before the run directory exists, instead of in the first
    /// step, and [`Gpu::memory`] then reports what the run will hold. The state it touches is put back:
    /// the gradients are zeroed, and the arenas (batch norm's running statistics moved) go up again with the
    /// next step's upload (`device_stale`). The losses are left out: their buffers are planned whole, and a
    /// loss would leave a training-loss row behind.
    pub fn warm_up(&mut self, graph: &Graph) -> Result<(), GpuError> {
        use ecstrain_components::Mode;
        use ecstrain_kernels::cuda::cudarc::driver::CudaSlice as Slice;
        let n = self.acts.capacity;
        let gpu = self.gpu.clone();
        let loss_scale: &Slice<f64> = &self.loss_scale;
        super::exec::forward(&gpu, graph, &self.params, &mut self.buffers, &mut self.acts, n, Mode::Train, 0)?;
        let aux = super::exec::AuxWeight { weight: 0.0, loss_scale };
        super::exec::backward(&gpu, graph, &self.params, &mut self.grads, &mut self.acts, n, Mode::Train, 0, aux)?;
        super::exec::forward(&gpu, graph, &self.params, &mut self.buffers, &mut self.acts, n, Mode::Eval, 0)?;
        gpu.stream().memset_zeros(&mut self.grads)?;
        gpu.stream().synchronize()?;
        self.device_stale = true;
        Ok(())
    }

    /// The optimizer state buffer called `name`.
    pub fn opt_buffer(&mut self, name: &str) -> Option<&mut CudaSlice<f32>> {
        self.opt.iter_mut().find(|(n, _)| n == name).map(|(_, b)| b)
    }
}
