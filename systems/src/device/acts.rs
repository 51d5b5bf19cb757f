//! Device twin of [`Activations`](crate::graph::Activations): one buffer per produced value and per value
//! gradient, per-node saved state, shared scratch; planned once for the largest batch, never reallocated.
//! Under autocast some values (and their gradients) are stored in half precision ([`storage_plan`]).

use ecstrain_components::{Graph, OpKind, ValueId};
use ecstrain_kernels::cuda::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PinnedHostSlice};
use ecstrain_kernels::cuda::{AnyBuf, Gpu, GpuError, MatmulPrecision, StoreKind};
use ecstrain_kernels::ops;

use super::storage::storage_plan;

use crate::graph::exec::{attention_len, conv_geom};

/// Planned device buffers of a graph.
pub struct GpuActivations {
    /// Rows (samples) each buffer can hold.
    pub capacity: usize,
    /// The batch input `[capacity, numel(input)]`, copied up each step.
    pub input: CudaSlice<f32>,
    /// The storage type of each value and its gradient ([`storage_plan`] at the device's autocast type).
    pub kinds: Vec<StoreKind>,
    /// `values[v]`; `None` for values no node writes, and for the input unless the plan keeps it in half
    /// (then its half copy, written from [`Self::input`] at each forward).
    pub values: Vec<Option<AnyBuf>>,
    /// `grads[v]`, same shapes and types as `values`.
    pub grads: Vec<Option<AnyBuf>>,
    /// Per node: float state its backward reads (normalisation statistics, attention probabilities, in f32;
    /// a fused linear's pre-activation, in its output's type), as the host's `saved`.
    pub saved: Vec<Option<AnyBuf>>,
    /// Per node: integer state (max-pool argmax; VQ code indices of `capacity * positions` followed by the
    /// per-code counts), as the host's `indices`.
    pub indices: Vec<Option<CudaSlice<u32>>>,
    /// Per node: an embedding's token ids of the last forward, converted on the device from the float input.
    pub ids: Vec<Option<CudaSlice<i64>>>,
    /// Per node: a VQ layer's `[mse, perplexity]` of the last forward, read back by [`super::exec::queue_aux`].
    pub stats: Vec<Option<CudaSlice<f32>>>,
    /// Page-locked host copies of `stats` (same nodes), so their copy down is queued with the output's and
    /// the step waits for the device once.
    pub stats_host: Vec<Option<PinnedHostSlice<f32>>>,
    /// Scratch shared by the ops that need it in turn (convolution columns, attention score gradients, a
    /// class token's gathered gradient rows).
    pub scratch: Option<CudaSlice<f32>>,
    /// Gradient staging for values with several consumers.
    pub grad_tmp: CudaSlice<f32>,
    /// The same for values stored in half precision (`None` when none is).
    pub grad_tmp_half: Option<AnyBuf>,
    /// Per value: whether the current backward has written its gradient yet.
    pub written: Vec<bool>,
    /// Per value: whether the backward computes its gradient at all
    /// ([`gradient_needed`](crate::graph::exec::gradient_needed): not for values computed from the input
    /// alone, as the host skips them).
    pub needed: Vec<bool>,
    /// Under autocast: the parameter arena rounded into the half type once per forward (torch's autocast
    /// weight cache), which the products read their weights from instead of rounding each weight at each
    /// use; `None` otherwise.
    pub params_half: Option<AnyBuf>,
    /// A single 1.0 (the increment of batch norm's `num_batches_tracked`).
    pub ones: CudaSlice<f32>,
}

impl std::fmt::Debug for GpuActivations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuActivations").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// A zeroed device buffer of `n` elements, `None` when `n` is 0.
fn buffer<T>(gpu: &Gpu, n: usize) -> Result<Option<CudaSlice<T>>, GpuError>
where
    T: ecstrain_kernels::cuda::cudarc::driver::DeviceRepr + ecstrain_kernels::cuda::cudarc::driver::ValidAsZeroBits,
{
    if n == 0 {
        Ok(None)
    } else {
        Ok(Some(gpu.stream().alloc_zeros::<T>(n)?))
    }
}

/// A zeroed device buffer of `n` elements of type `kind`, `None` when `n` is 0.
fn any_buffer(gpu: &Gpu, kind: StoreKind, n: usize) -> Result<Option<AnyBuf>, GpuError> {
    if n == 0 {
        Ok(None)
    } else {
        Ok(Some(AnyBuf::zeros(gpu.stream(), kind, n)?))
    }
}

/// Scratch of a convolution on the device: the column matrices of the whole batch when they fit in 64M
/// elements (one batched GEMM per group instead of one per couple of samples), never less than the CPU
/// kernel's minimum [`Conv2dGeom::col_len`](ops::conv2d::Conv2dGeom::col_len).
pub fn conv_col_len(g: &ops::conv2d::Conv2dGeom) -> usize {
    const CAP: usize = 64 << 20;
    let per_sample = match g.out_hw() {
        Ok((oh, ow)) => g.c / g.groups.max(1) * g.kh * g.kw * oh * ow,
        Err(_) => 0,
    };
    g.col_len().max((g.n * per_sample).min(CAP))
}

impl GpuActivations {
    /// Plans device buffers for batches of up to `capacity` samples (the same plan as the host's), with the
    /// storage types autocast at the device's matmul precision asks for.
    pub fn plan(gpu: &Gpu, graph: &Graph, capacity: usize) -> Result<GpuActivations, GpuError> {
        let half = match gpu.matmul_precision() {
            MatmulPrecision::F16 => Some(StoreKind::F16),
            MatmulPrecision::Bf16 => Some(StoreKind::Bf16),
            MatmulPrecision::F32 | MatmulPrecision::Tf32 => None,
        };
        let kinds = storage_plan(graph, half);
        let numel = |v: ValueId| graph.values[v.0].numel();
        let mut produced = vec![false; graph.values.len()];
        graph.nodes.iter().for_each(|n| produced[n.output.0] = true);
        let sizes: Vec<usize> =
            (0..graph.values.len()).map(|i| if produced[i] { numel(ValueId(i)) * capacity } else { 0 }).collect();
        let mut saved = Vec::with_capacity(graph.nodes.len());
        let mut indices = Vec::with_capacity(graph.nodes.len());
        let mut ids = Vec::with_capacity(graph.nodes.len());
        let mut stats = Vec::with_capacity(graph.nodes.len());
        let mut scratch = 0;
        for node in &graph.nodes {
            let (mut s, mut ix, mut id, mut st) = (0, 0, 0, 0);
            // Saved state is f32 but for a fused linear's pre-activation, kept in its output's type.
            let mut saved_kind = StoreKind::F32;
            match &node.op {
                OpKind::MaxPool2d { .. } => ix = sizes[node.output.0],
                // A fused activation's input (the pre-activation) is kept for the backward.
                OpKind::Linear { act: Some(_), .. } => {
                    s = sizes[node.output.0];
                    saved_kind = kinds[node.output.0];
                }
                OpKind::Attention { heads, tokens, .. } => {
                    s = attention_len(*heads, *tokens, capacity);
                    scratch = scratch.max(s);
                }
                OpKind::Embedding { .. } => id = capacity * numel(node.inputs[0]),
                OpKind::VectorQuantize { codes, positions, .. } => {
                    ix = capacity * positions + codes;
                    st = 2;
                }
                // The backward gathers the token's gradient rows into a contiguous block for the column sums.
                OpKind::PrependToken { token } => scratch = scratch.max(capacity * token.slice.len),
                OpKind::Conv2d { spec, in_hw, .. } => {
                    scratch = scratch.max(conv_col_len(&conv_geom(spec, *in_hw, capacity)))
                }
                OpKind::BatchNorm2d { channels, .. } => s = 2 * channels,
                OpKind::LayerNorm { dim, .. } => s = 2 * capacity * numel(node.output) / dim,
                _ => {}
            }
            saved.push(any_buffer(gpu, saved_kind, s)?);
            indices.push(buffer(gpu, ix)?);
            ids.push(buffer(gpu, id)?);
            stats.push(buffer(gpu, st)?);
        }
        let largest = sizes.iter().copied().max().unwrap_or(0).max(capacity * numel(ValueId(0))).max(1);
        let mut values = Vec::with_capacity(sizes.len());
        let mut grads = Vec::with_capacity(sizes.len());
        for (&n, &kind) in sizes.iter().zip(&kinds) {
            values.push(any_buffer(gpu, kind, n)?);
            grads.push(any_buffer(gpu, kind, n)?);
        }
        // A half input (read only by linear layers): its half copy, cast from `input` by each forward; the
        // input has no gradient.
        if kinds[0] != StoreKind::F32 {
            values[0] = any_buffer(gpu, kinds[0], capacity * numel(ValueId(0)))?;
        }
        let largest_half = sizes.iter().zip(&kinds).filter(|(_, &k)| k != StoreKind::F32).map(|(&n, _)| n).max();
        let grad_tmp_half = match (largest_half, half) {
            (Some(n), Some(h)) => any_buffer(gpu, h, n)?,
            _ => None,
        };
        // The arena's extent the graph's parameters reach.
        let param_end = graph.nodes.iter().flat_map(|n| n.op.params()).map(|r| r.slice.offset + r.slice.len).max();
        let params_half = match (param_end, half) {
            (Some(n), Some(h)) => any_buffer(gpu, h, n)?,
            _ => None,
        };
        Ok(GpuActivations {
            capacity,
            kinds,
            grad_tmp_half,
            params_half,
            input: gpu.stream().alloc_zeros(capacity * numel(ValueId(0)).max(1))?,
            values,
            grads,
            saved,
            indices,
            ids,
            stats_host: stats
                .iter()
                .map(|st| match st {
                    // SAFETY: read only after the copy down that fills it has completed (exec::read_aux).
                    Some(b) => unsafe { gpu.context().alloc_pinned::<f32>(b.len()) }.map(Some).map_err(Into::into),
                    None => Ok(None),
                })
                .collect::<Result<_, GpuError>>()?,
            stats,
            scratch: buffer(gpu, scratch)?,
            grad_tmp: gpu.stream().alloc_zeros(largest)?,
            written: vec![false; graph.values.len()],
            needed: crate::graph::exec::gradient_needed(graph),
            ones: gpu.upload(&[1.0f32])?,
        })
    }

    /// Device bytes held by the plan.
    pub fn bytes(&self) -> usize {
        let f = |b: &Option<CudaSlice<f32>>| b.as_ref().map_or(0, |s| s.len());
        let any = |b: &Option<AnyBuf>| b.as_ref().map_or(0, AnyBuf::bytes);
        self.activation_bytes()
            + self.saved.iter().map(any).sum::<usize>()
            + any(&self.grad_tmp_half)
            + any(&self.params_half)
            + 4 * (self.input.len()
                + self.indices.iter().map(|b| b.as_ref().map_or(0, |s| s.len())).sum::<usize>()
                + 2 * self.ids.iter().map(|b| b.as_ref().map_or(0, |s| s.len())).sum::<usize>()
                + self.stats.iter().map(f).sum::<usize>()
                + f(&self.scratch)
                + self.grad_tmp.len())
    }

    /// Under autocast, the start-up line saying what the storage plan keeps in half, e.g. `autocast bf16:
    /// 16 of 18 activation buffers in bf16, 2.6 MiB with their gradients (5.2 MiB in f32)`; `None` when
    /// every buffer is f32.
    pub fn autocast_notice(&self) -> Option<String> {
        let half = self.kinds.iter().copied().find(|&k| k != StoreKind::F32)?;
        let planned: Vec<&AnyBuf> = self.values.iter().flatten().collect();
        let in_half = planned.iter().filter(|b| b.kind() == half).count();
        // What the same buffers (and their gradients) would take in f32.
        let f32_bytes = 4
            * (planned.iter().map(|b| b.len()).sum::<usize>()
                + self.grads.iter().flatten().map(AnyBuf::len).sum::<usize>());
        let mib = |b: usize| b as f64 / 1048576.0;
        Some(format!(
            "autocast {}: {in_half} of {} activation buffers in {}, {:.1} MiB with their gradients ({:.1} MiB in f32)",
            half.name(),
            planned.len(),
            half.name(),
            mib(self.activation_bytes()),
            mib(f32_bytes)
        ))
    }

    /// Device bytes of the value and value-gradient buffers alone (what half storage halves).
    pub fn activation_bytes(&self) -> usize {
        let any = |b: &Option<AnyBuf>| b.as_ref().map_or(0, AnyBuf::bytes);
        self.values.iter().map(any).sum::<usize>() + self.grads.iter().map(any).sum::<usize>()
    }
}

/// The first `len` values of the graph's output as f32, for the host task: its own buffer when it is f32;
/// a half output (autocast) widened exactly into `staging` (one launch: an evaluation, or a plugin task's
/// loss on the host).
pub fn output_as_f32<'a>(
    gpu: &Gpu,
    out: &'a AnyBuf,
    staging: &'a mut CudaSlice<f32>,
    len: usize,
) -> Result<CudaView<'a, f32>, GpuError> {
    let mut wide = staging.slice_mut(..len);
    match out {
        AnyBuf::F32(b) => return Ok(b.slice(..len)),
        AnyBuf::F16(b) => ops::cast::cuda::f16_to_f32(gpu, &mut wide, &b.slice(..len))?,
        AnyBuf::Bf16(b) => ops::cast::cuda::bf16_to_f32(gpu, &mut wide, &b.slice(..len))?,
    }
    Ok(staging.slice(..len))
}

/// A host task's output gradient (`host`, f32) into the output's device gradient `dst`: copied up, multiplied
/// by the f16 loss scale when `loss_scale` is given (the state `[scale, ..]`, read on the device), and for a
/// half output rounded into its type after the scaling, through `staging`, as the device loss kernels do.
pub fn upload_output_gradient(
    gpu: &Gpu,
    host: &[f32],
    dst: &mut AnyBuf,
    staging: &mut CudaSlice<f32>,
    loss_scale: Option<&CudaSlice<f64>>,
) -> Result<(), GpuError> {
    use ecstrain_kernels::optim::loss_scale::cuda::scale_gradient;
    let len = host.len();
    let scaled = |wide: &mut CudaViewMut<f32>| -> Result<(), GpuError> {
        gpu.stream().memcpy_htod(host, wide)?;
        match loss_scale {
            Some(scale) => scale_gradient(gpu, wide, scale),
            None => Ok(()),
        }
    };
    match dst {
        AnyBuf::F32(d) => scaled(&mut d.slice_mut(..len))?,
        AnyBuf::F16(d) => {
            scaled(&mut staging.slice_mut(..len))?;
            ops::cast::cuda::f32_to_f16(gpu, &mut d.slice_mut(..len), &staging.slice(..len))?
        }
        AnyBuf::Bf16(d) => {
            scaled(&mut staging.slice_mut(..len))?;
            ops::cast::cuda::f32_to_bf16(gpu, &mut d.slice_mut(..len), &staging.slice(..len))?
        }
    }
    Ok(())
}
