//! The training loss on the device, for the built-in tasks: the loss and its gradient run as kernels on the
//! compute stream, so a training step never waits for the device.
//!
//! On the host path the forward's output comes down, the task computes the loss, and the output's gradient
//! goes back up: a host wait per step, with the GPU idle while the host computes and then launches the
//! backward. Here the targets go up with the batch (same staging, same events: [`super::upload`]), the
//! loss kernels write each micro-batch's values into a row of a device ring and the output's gradient, and
//! the backward follows at once. The host learns the values only when something reads the training meters:
//! [`gpu_flush_train_loss`] copies the ring's pending rows down in one transfer and adds them to [`Metrics`]
//! in step order, with the host task's arithmetic (log records, the epoch record, checkpoints and the stop
//! path flush first; a full ring flushes on its own).
//!
//! The kinds ([`LossKind`]) and the host tasks they stand for:
//! - `classification`: the fused softmax + cross-entropy kernels (label smoothing included), on a model
//!   without VQ layers. The loss is the device kernel's (its softmax uses CUDA's `expf`, a few ulp from the
//!   CPU's polynomial); the gradient is the same f32 arithmetic.
//! - `regression`: MSE against the dense targets, on a model without VQ layers.
//! - `embedding`: the cosine loss against the dense targets, on a model without VQ layers. The host keeps the
//!   loss in f64; the ring holds it rounded to f32.
//! - `reconstruction`: MSE or L1 against the input (an autoencoder) or the dense targets, weighted, plus the
//!   VQ layers' auxiliary losses, whose statistics the ring keeps beside the MSE (each VQ
//!   layer's `[mse, perplexity]`), so `recon_loss`, `vq_loss` and `perplexity` are logged as on the host.
//!
//! A plugin's task keeps the host path. The L1 loss, like the embedding's, is an f64 on the host and an f32 in
//! the ring. [`Metrics::last_loss`] is current only after a flush.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, Graph, Metrics, OpKind, RunFailure, Targets};
use ecstrain_kernels::cuda::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PinnedHostSlice};
use ecstrain_kernels::cuda::{AnyView, AnyViewMut, Gpu, GpuError, Store};
use ecstrain_kernels::ops::cosine_loss::cuda::{cosine_loss, cosine_loss_backward};
use ecstrain_kernels::ops::l1_loss::cuda::{l1_loss_backward, l1_loss_forward};
use ecstrain_kernels::ops::mse::cuda::{mse_backward, mse_forward};
use ecstrain_kernels::ops::softmax_cross_entropy::cuda::{
    softmax_cross_entropy_backward, softmax_cross_entropy_forward,
};
use ecstrain_kernels::ops::softmax_cross_entropy::CrossEntropyOptions;

use super::state::GpuState;
use super::systems::fail;
use super::upload::BatchTargets;
use crate::graph::Activations;

/// Training micro-batches whose losses can wait on the device before the ring is flushed by itself (a host
/// wait every this many steps at most, when nothing reads the meters sooner).
pub const RING: usize = 1024;

/// Which loss the device computes, with the host task's options.
#[derive(Clone, Debug, PartialEq)]
pub enum LossKind {
    /// Softmax cross-entropy over `classes` logits (`tasks::classification`).
    Classification {
        /// Number of classes (the model's output size).
        classes: usize,
        /// Label smoothing and ignore index.
        options: CrossEntropyOptions,
    },
    /// MSE over `outputs` values per sample against the dense targets (`tasks::regression`).
    Regression {
        /// Values per sample.
        outputs: usize,
    },
    /// The cosine loss over embeddings of `dim` values against the dense targets (`tasks::embedding`).
    Embedding {
        /// Embedding length.
        dim: usize,
        /// Norm clamp of the cosine.
        eps: f64,
    },
    /// `recon_weight * (MSE or L1) + vq_weight * (VQ losses)` (`tasks::reconstruction`).
    Reconstruction {
        /// The L1 loss (`recon_loss: l1`) instead of the MSE.
        l1: bool,
        /// Values per sample of the output and the target.
        numel: usize,
        /// The target is the batch input (an autoencoder), not the dense targets.
        from_input: bool,
        /// Weight of the reconstruction term.
        recon_weight: f64,
        /// Weight of the VQ layers' auxiliary losses.
        vq_weight: f64,
        /// The graph's VQ layers: (node index, commitment `beta`), in node order.
        vq: Vec<(usize, f64)>,
    },
}

impl LossKind {
    /// f32 values one micro-batch leaves in the ring: the loss, then each VQ layer's `[mse, perplexity]`.
    fn width(&self) -> usize {
        match self {
            LossKind::Reconstruction { vq, .. } => 1 + 2 * vq.len(),
            _ => 1,
        }
    }

    /// The graph's VQ layers as (node index, beta).
    pub fn vq_layers(graph: &Graph) -> Vec<(usize, f64)> {
        let vq = graph.nodes.iter().enumerate().filter_map(|(i, n)| match &n.op {
            OpKind::VectorQuantize { beta, .. } => Some((i, *beta)),
            _ => None,
        });
        vq.collect()
    }
}

/// Device state of the training loss (see the module docs).
#[derive(Resource)]
pub struct DeviceLoss {
    kind: LossKind,
    /// Softmax probabilities `[capacity, classes]` (classification), kept from the loss for its gradient.
    probs: CudaSlice<f32>,
    /// [`LossKind::width`] values per training micro-batch since the last flush, in step order.
    ring: CudaSlice<f32>,
    /// Page-locked landing place of the ring's copy down.
    host: PinnedHostSlice<f32>,
    /// The batch size of each pending row (the meters' weight).
    pending: Vec<usize>,
    /// Rows the ring holds before it flushes itself.
    rows: usize,
}

impl std::fmt::Debug for DeviceLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLoss").field("kind", &self.kind).field("pending", &self.pending.len()).finish()
    }
}

impl DeviceLoss {
    /// Device buffers for batches of up to `capacity` samples and a ring of [`RING`] rows.
    pub fn new(gpu: &Gpu, kind: LossKind, capacity: usize) -> Result<DeviceLoss, GpuError> {
        Self::with_ring(gpu, kind, capacity, RING)
    }

    /// [`new`](Self::new) with a ring of `rows` rows (at least one): a full ring flushes itself, so a small
    /// one makes a test reach that path in a few steps.
    pub fn with_ring(gpu: &Gpu, kind: LossKind, capacity: usize, rows: usize) -> Result<DeviceLoss, GpuError> {
        let s = gpu.stream();
        let probs_len = match &kind {
            LossKind::Classification { classes, .. } => capacity * classes,
            _ => 0,
        };
        let rows = rows.max(1);
        let ring_len = rows * kind.width();
        Ok(DeviceLoss {
            probs: s.alloc_zeros(probs_len.max(1))?,
            ring: s.alloc_zeros(ring_len)?,
            // SAFETY: the host reads only the rows a flush has just copied down and waited for.
            host: unsafe { gpu.context().alloc_pinned::<f32>(ring_len)? },
            pending: Vec::with_capacity(rows),
            rows,
            kind,
        })
    }

    /// Micro-batches whose values are still on the device.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The loss this state computes.
    pub fn kind(&self) -> &LossKind {
        &self.kind
    }

    /// What the batch upload carries for this loss: the labels, the dense targets, or nothing (an
    /// autoencoder's target is its input, already on the device).
    pub fn targets<'a>(&self, batch: &'a Batch) -> Option<BatchTargets<'a>> {
        let n = batch.size;
        match (&self.kind, &batch.targets) {
            (LossKind::Classification { .. }, Targets::Classes(c)) => Some(BatchTargets::Labels(&c[..n])),
            (
                LossKind::Regression { .. }
                | LossKind::Embedding { .. }
                | LossKind::Reconstruction { from_input: false, .. },
                Targets::Dense { values, target_len },
            ) => Some(BatchTargets::Dense(&values[..n * target_len])),
            (LossKind::Reconstruction { from_input: true, .. }, _) => None,
            _ => unreachable!("the targets' kind is checked against the task when the run is built"),
        }
    }

    /// Copies the pending rows down (one transfer, one wait) and adds them to the training meters in step
    /// order, each weighted by its batch size, with the host task's arithmetic.
    pub fn flush(&mut self, gpu: &Gpu, metrics: &mut Metrics) -> Result<(), GpuError> {
        let (k, w) = (self.pending.len(), self.kind.width());
        if k == 0 {
            return Ok(());
        }
        gpu.stream().memcpy_dtoh(&self.ring.slice(..k * w), &mut self.host)?;
        gpu.stream().synchronize()?;
        let rows = self.host.as_slice()?;
        for (row, &n) in rows.chunks_exact(w).zip(&self.pending) {
            add_row(&self.kind, row, n as f64, metrics);
        }
        self.pending.clear();
        Ok(())
    }
}

/// One micro-batch's ring row into the meters, as the host task adds its values.
fn add_row(kind: &LossKind, row: &[f32], w: f64, metrics: &mut Metrics) {
    let loss = row[0] as f64;
    let LossKind::Reconstruction { recon_weight, vq_weight, vq, .. } = kind else {
        metrics.last_loss = loss;
        metrics.add_train("loss", loss, w);
        return;
    };
    // tasks::reconstruction's aux_summary over graph::exec's AuxStats: each layer's (1 + beta) * mse, the mean
    // perplexity.
    let (mut aux, mut perplexity) = (0.0, 0.0);
    for (stats, &(_, beta)) in row[1..].chunks_exact(2).zip(vq) {
        aux += (1.0 + beta) * stats[0] as f64;
        perplexity += stats[1] as f64;
    }
    let total = recon_weight * loss + vq_weight * if vq.is_empty() { 0.0 } else { aux };
    metrics.last_loss = total;
    metrics.add_train("loss", total, w);
    if !vq.is_empty() {
        metrics.add_train("recon_loss", loss, w);
        metrics.add_train("vq_loss", aux, w);
        metrics.add_train("perplexity", perplexity / vq.len() as f64, w);
    }
}

/// Loss (training, on the device): the micro-batch's loss values into the next ring row and d(loss /
/// accumulate)/d(output) into the output's device gradient, which the device backward then reads (after
/// multiplying it by the f16 loss scale, [`super::amp`]); for a reconstruction, the VQ layers' gradient
/// weight into [`Activations::aux_weight`] as the host task sets it.
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn gpu_task_loss(
    mut gpu: ResMut<GpuState>,
    mut loss: ResMut<DeviceLoss>,
    mut acts: ResMut<Activations>,
    graph: Res<Graph>,
    batch: Res<Batch>,
    clock: Res<Clock>,
    mut metrics: ResMut<Metrics>,
    mut failure: ResMut<RunFailure>,
) {
    let n = batch.size;
    let acc = clock.accumulate.max(1);
    let (g, dl) = (&mut *gpu, &mut *loss);
    if let LossKind::Reconstruction { vq_weight, .. } = dl.kind {
        acts.aux_weight = (vq_weight / acc as f64) as f32;
    }
    let mut run = || -> Result<(), GpuError> {
        if n == 0 && !matches!(dl.kind, LossKind::Classification { .. }) {
            return Ok(()); // the host MSE tasks add nothing for an empty batch
        }
        if dl.pending.len() == dl.rows {
            dl.flush(&g.gpu, &mut metrics)?;
        }
        let (w, slot) = (dl.kind.width(), dl.pending.len());
        let out = graph.output.0;
        let len = n * graph.values[out].numel();
        let mut row = dl.ring.slice_mut(slot * w..(slot + 1) * w);
        let target = match &dl.kind {
            LossKind::Classification { .. } => None,
            LossKind::Reconstruction { from_input: true, .. } => Some(g.acts.input.slice(..len)),
            _ => Some(g.upload.dense().expect("assembly enables dense uploads").slice(..len)),
        };
        let labels = match dl.kind {
            LossKind::Classification { .. } => {
                Some(g.upload.labels().expect("assembly enables label uploads").slice(..n))
            }
            _ => None,
        };
        let inputs = LossInputs { n, acc, labels, target, loss_scale: g.loss_scale.as_view() };
        let output = g.acts.values[out].as_ref().expect("the output is produced").view(len);
        let out_grad = g.acts.grads[out].as_mut().expect("the output has a gradient buffer").view_mut(len);
        // The output in its planned type (half under autocast when its producer writes half, as torch's
        // logits are); the kernels read it exactly and round its gradient once.
        match (output, out_grad) {
            (AnyView::F32(p), AnyViewMut::F32(mut d)) => {
                loss_kernels(&g.gpu, &dl.kind, &mut dl.probs, &mut row, &p, &mut d, &inputs)
            }
            (AnyView::F16(p), AnyViewMut::F16(mut d)) => {
                loss_kernels(&g.gpu, &dl.kind, &mut dl.probs, &mut row, &p, &mut d, &inputs)
            }
            (AnyView::Bf16(p), AnyViewMut::Bf16(mut d)) => {
                loss_kernels(&g.gpu, &dl.kind, &mut dl.probs, &mut row, &p, &mut d, &inputs)
            }
            _ => unreachable!("a value's gradient has the value's type"),
        }?;
        if let LossKind::Reconstruction { vq, .. } = &dl.kind {
            for (k, &(node, _)) in vq.iter().enumerate() {
                let stats = g.acts.stats[node].as_ref().expect("VQ plans its statistics");
                g.gpu.stream().memcpy_dtod(&stats.slice(..2), &mut row.slice_mut(1 + 2 * k..3 + 2 * k))?;
            }
        }
        dl.pending.push(n);
        Ok(())
    };
    if let Err(e) = run() {
        fail(&mut failure, "loss", e);
    }
}

/// What the loss kernels read beside the prediction, for one micro-batch of `n` samples.
struct LossInputs<'a> {
    n: usize,
    /// Micro-batches per optimizer step (the loss is divided by it, as the host task's is).
    acc: u64,
    /// The class labels (classification).
    labels: Option<CudaView<'a, i64>>,
    /// The dense target, or the input (an autoencoder's reconstruction).
    target: Option<CudaView<'a, f32>>,
    /// The f16 loss-scale state (`[1, 0]` outside f16 autocast): the gradient kernels multiply it in before
    /// rounding into the output's type, so no separate scaling pass runs.
    loss_scale: CudaView<'a, f64>,
}

/// The loss into `row[0]` and d(loss / accumulate)/d(output), times the loss scale, into `dpred`, for an
/// output stored in `T` (`probs`: the softmax kept for a classification's gradient).
fn loss_kernels<T: Store>(
    gpu: &Gpu,
    kind: &LossKind,
    probs: &mut CudaSlice<f32>,
    row: &mut CudaViewMut<f32>,
    pred: &CudaView<T>,
    dpred: &mut CudaViewMut<T>,
    inp: &LossInputs,
) -> Result<(), GpuError> {
    let (n, acc, ls) = (inp.n, inp.acc as f32, Some(&inp.loss_scale));
    let loss = &mut row.slice_mut(..1);
    match kind {
        LossKind::Classification { classes: v, options } => {
            let (v, targets) = (*v, inp.labels.as_ref().expect("classification uploads labels"));
            softmax_cross_entropy_forward(gpu, &mut probs.slice_mut(..n * v), pred, targets, n, v, options, loss)?;
            // The host task's arithmetic: the gradient of loss / accumulate.
            let probs = probs.slice(..n * v);
            softmax_cross_entropy_backward(gpu, dpred, &probs, targets, n, v, options, 1.0 / acc, ls)?;
        }
        LossKind::Regression { .. } => {
            let target = inp.target.as_ref().expect("regression uploads dense targets");
            mse_forward(gpu, pred, target, loss)?;
            mse_backward(gpu, dpred, pred, target, 1.0 / acc, ls)?;
        }
        LossKind::Embedding { dim, eps } => {
            let target = inp.target.as_ref().expect("embedding uploads dense targets");
            cosine_loss(gpu, pred, target, n, *dim, *eps, loss)?;
            cosine_loss_backward(gpu, dpred, pred, target, n, *dim, *eps, 1.0 / acc, ls)?;
        }
        LossKind::Reconstruction { l1, recon_weight, .. } => {
            let target = inp.target.as_ref().expect("a reconstruction has a target");
            let dloss = (recon_weight / inp.acc as f64) as f32;
            if *l1 {
                l1_loss_forward(gpu, pred, target, loss)?;
                l1_loss_backward(gpu, dpred, pred, target, dloss, ls)?;
            } else {
                mse_forward(gpu, pred, target, loss)?;
                mse_backward(gpu, dpred, pred, target, dloss, ls)?;
            }
        }
    }
    Ok(())
}

/// Before anything reads the training meters (log and epoch records, checkpoints, the summary): the
/// device's pending loss values into [`Metrics`].
pub fn gpu_flush_train_loss(
    gpu: Res<GpuState>,
    mut loss: ResMut<DeviceLoss>,
    mut metrics: ResMut<Metrics>,
    mut failure: ResMut<RunFailure>,
) {
    if let Err(e) = loss.flush(&gpu.gpu, &mut metrics) {
        fail(&mut failure, "training loss read", e);
    }
}

/// Run condition: the task's loss runs on the host (no [`DeviceLoss`]): the host task's systems and the
/// host-side loss scaling.
pub fn host_loss(device_loss: Option<Res<DeviceLoss>>) -> bool {
    device_loss.is_none()
}
