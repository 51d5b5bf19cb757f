//! Forward and backward of a [`Graph`] on the device: the host executor ([`crate::graph::exec`]) op for op,
//! with every kernel call replaced by its CUDA twin (`ops::<op>::cuda::<fn>`, same arguments) on
//! [`GpuActivations`]. The gradient conventions are the host's: parameter gradients accumulate, a value read
//! by several ops receives the sum of their gradients (the first writes, later ones go through `grad_tmp`
//! and an add).
//!
//! Only the ops of [`super::support::op_supported`] are implemented; assembly rejects the others before a
//! run starts, so meeting one here is a bug.

use std::ops::Range;

use ecstrain_components::{Graph, Mode, OpKind, ParamRef, ValueId};
use ecstrain_kernels::cuda::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use ecstrain_kernels::cuda::{AnyBuf, AnyView, AnyViewMut, Gpu, GpuError, Store, StoreKind};
use ecstrain_kernels::{any_view, ops};

use super::acts::GpuActivations;
use crate::graph::exec::{attention_len, batched_perm, concat_runs, conv_geom, dropout_seed, pool_geom, AuxStats};

/// The first `n` rows of value `v`: the uploaded batch for value 0, its planned buffer otherwise.
fn rows<'a>(
    graph: &Graph,
    values: &'a [Option<AnyBuf>],
    input: &'a CudaSlice<f32>,
    v: ValueId,
    n: usize,
) -> AnyView<'a> {
    let len = n * graph.values[v.0].numel();
    match (v.0, &values[v.0]) {
        (_, Some(buf)) => buf.view(len),
        (0, None) => AnyView::F32(input.slice(..len)),
        _ => unreachable!("every value a node reads was produced and planned"),
    }
}

/// The batch input rounded into its half copy, when the storage plan keeps one (an input read only by
/// linear layers): one launch, which every product of the step then reads instead of rounding the input
/// itself.
fn round_input(gpu: &Gpu, graph: &Graph, acts: &mut GpuActivations, n: usize) -> Result<(), GpuError> {
    let len = n * graph.values[0].numel();
    let src = acts.input.slice(..len);
    match acts.values[0].as_mut() {
        Some(AnyBuf::F16(d)) => ops::cast::cuda::f32_to_f16(gpu, &mut d.slice_mut(..len), &src),
        Some(AnyBuf::Bf16(d)) => ops::cast::cuda::f32_to_bf16(gpu, &mut d.slice_mut(..len), &src),
        Some(AnyBuf::F32(_)) | None => Ok(()),
    }
}

/// Expands `$body` for the storage type two views share, `$x` and `$y` bound to their typed views. The
/// storage plan keeps an element-wise op's operands in one type, so differing types are a bug.
macro_rules! same_kind {
    ($ta:ident, $a:expr, $tb:ident, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            ($ta::F32($x), $tb::F32($y)) => $body,
            ($ta::F16($x), $tb::F16($y)) => $body,
            ($ta::Bf16($x), $tb::Bf16($y)) => $body,
            _ => unreachable!("the storage plan keeps an element-wise op's operands in one type"),
        }
    };
}

/// [`same_kind!`] for three views.
macro_rules! same_kind3 {
    ($ta:ident, $a:expr, $tb:ident, $b:expr, $tc:ident, $c:expr, |$x:ident, $y:ident, $z:ident| $body:expr) => {
        match ($a, $b, $c) {
            ($ta::F32($x), $tb::F32($y), $tc::F32($z)) => $body,
            ($ta::F16($x), $tb::F16($y), $tc::F16($z)) => $body,
            ($ta::Bf16($x), $tb::Bf16($y), $tc::Bf16($z)) => $body,
            _ => unreachable!("the storage plan keeps an element-wise op's operands in one type"),
        }
    };
}

/// Expands `$body` for the storage type of the mutable view `$e`, `$v` bound to its typed view.
macro_rules! any_mut {
    ($e:expr, |$v:ident| $body:expr) => {
        match $e {
            AnyViewMut::F32($v) => $body,
            AnyViewMut::F16($v) => $body,
            AnyViewMut::Bf16($v) => $body,
        }
    };
}

/// Expands `$body` for the storage types a product's weight and two activation operands can have together:
/// all f32 (no autocast), or the weight in the autocast type beside operands each in f32 or that type. Nine
/// arms instead of every combination of three types: each product kernel is instantiated for these alone.
macro_rules! product_kinds {
    ($tw:ident, $w:expr, $ta:ident, $a:expr, $tb:ident, $b:expr, |$wv:ident, $av:ident, $bv:ident| $body:expr) => {
        match ($w, $a, $b) {
            ($tw::F32($wv), $ta::F32($av), $tb::F32($bv)) => $body,
            ($tw::F16($wv), $ta::F32($av), $tb::F32($bv)) => $body,
            ($tw::F16($wv), $ta::F16($av), $tb::F32($bv)) => $body,
            ($tw::F16($wv), $ta::F32($av), $tb::F16($bv)) => $body,
            ($tw::F16($wv), $ta::F16($av), $tb::F16($bv)) => $body,
            ($tw::Bf16($wv), $ta::F32($av), $tb::F32($bv)) => $body,
            ($tw::Bf16($wv), $ta::Bf16($av), $tb::F32($bv)) => $body,
            ($tw::Bf16($wv), $ta::F32($av), $tb::Bf16($bv)) => $body,
            ($tw::Bf16($wv), $ta::Bf16($av), $tb::Bf16($bv)) => $body,
            _ => unreachable!("a product's operands are f32, or the autocast type's weight beside f32 or that type"),
        }
    };
}

/// The storage type of a typed view, for [`like`] and [`like_mut`].
trait Typed {
    /// The element type.
    type T: Store;
}

impl<T: Store> Typed for CudaView<'_, T> {
    type T = T;
}

impl<T: Store> Typed for CudaViewMut<'_, T> {
    type T = T;
}

/// `v` as a typed view in `_of`'s storage type: a saved pre-activation has its output's type.
fn like<'b, 'a, V: Typed>(_of: &V, v: &'b AnyView<'a>) -> &'b CudaView<'a, V::T> {
    V::T::of(v).expect("the storage plan gives a saved value its value's type")
}

/// `v` as a typed mutable view in `_of`'s storage type: a gradient has its value's type.
fn like_mut<'b, 'a, V: Typed>(_of: &V, v: &'b mut AnyViewMut<'a>) -> &'b mut CudaViewMut<'a, V::T> {
    V::T::of_mut(v).expect("the storage plan gives a gradient its value's type")
}

/// A product's weight: its slice of the autocast copy of the arena when there is one (rounded once per
/// forward, [`refresh_half_params`]), of the f32 arena otherwise.
fn weight_view<'a>(params: &'a CudaSlice<f32>, params_half: Option<&'a AnyBuf>, r: &ParamRef) -> AnyView<'a> {
    match params_half {
        Some(h) => h.view_range(r.slice.range()),
        None => AnyView::F32(params.slice(r.slice.range())),
    }
}

/// Rounds the parameter arena into its autocast copy (one launch), so every product of this forward and of
/// its backward reads its weight in the half type without rounding it again (torch's autocast weight cache).
/// Done at each forward: the weights cannot change between a forward and its backward, and whatever changed
/// them before (an optimizer step, an upload, a checkpoint, evaluation on other weights) is caught.
fn refresh_half_params(gpu: &Gpu, params: &CudaSlice<f32>, params_half: &mut Option<AnyBuf>) -> Result<(), GpuError> {
    let Some(h) = params_half.as_mut() else { return Ok(()) };
    let len = h.len();
    let src = params.slice(..len);
    match h {
        AnyBuf::F16(d) => ops::cast::cuda::f32_to_f16(gpu, &mut d.slice_mut(..), &src),
        AnyBuf::Bf16(d) => ops::cast::cuda::f32_to_bf16(gpu, &mut d.slice_mut(..), &src),
        AnyBuf::F32(_) => unreachable!("the autocast copy is half"),
    }
}

/// The forward of the ops that run in any storage type (the linear layers, whose input and output types
/// may differ, and the element-wise ops that keep their input's type); `None` for the other ops, which run
/// on f32 values.
#[allow(clippy::too_many_arguments)] // one node's buffers
fn forward_any_storage(
    gpu: &Gpu,
    node: &ecstrain_components::Node,
    (params, params_half): (&CudaSlice<f32>, Option<&AnyBuf>),
    x: &AnyView<'_>,
    y: &mut AnyViewMut<'_>,
    (saved, indices, scratch): (Option<&mut AnyBuf>, Option<&mut CudaSlice<u32>>, Option<&mut CudaSlice<f32>>),
    n: usize,
    mode: Mode,
    seed: u64,
) -> Option<Result<(), GpuError>> {
    let p = |r: &ParamRef| params.slice(r.slice.range());
    Some(match &node.op {
        OpKind::Conv2d { spec, in_hw, weight, bias, .. } => {
            let g = conv_geom(spec, *in_hw, n);
            let b = bias.as_ref().map(p);
            let (w, b) = (weight_view(params, params_half, weight), b.as_ref());
            let mut col = scratch.expect("convolutions plan scratch").slice_mut(..super::acts::conv_col_len(&g));
            product_kinds!(AnyView, &w, AnyView, x, AnyViewMut, y, |w, x, y| {
                ops::conv2d::cuda::conv2d_forward(gpu, y, x, w, b, &mut col, &g)
            })
        }
        OpKind::Attention { heads, tokens: t, dim: d, causal } => {
            // Heads are read straight out of the fused [T, 3, H, D/H] projection and written merged.
            let len = attention_len(*heads, *t, n);
            let sv = saved.expect("attention plans its probabilities").f32_mut();
            let mut att = sv.slice_mut(..len);
            let (h, t, dh, causal) = (*heads, *t, d / heads, *causal);
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| {
                ops::attention::cuda::attention_fused_forward(gpu, y, &mut att, x, n, h, t, dh, causal)
            })
        }
        OpKind::MaxPool2d { spec, in_chw } => {
            let mut am = indices.expect("max pools plan argmax").slice_mut(..y.len());
            let g = pool_geom(spec, *in_chw, n);
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| ops::pool::cuda::max_pool2d_forward(gpu, y, &mut am, x, &g))
        }
        OpKind::Linear { rows: r, in_features, out_features, weight, bias, act: None } => {
            let b = bias.as_ref().map(p);
            let (w, b) = (weight_view(params, params_half, weight), b.as_ref());
            let (rws, inf, outf) = (n * r, *in_features, *out_features);
            product_kinds!(AnyView, &w, AnyView, x, AnyViewMut, y, |w, x, y| {
                ops::linear::cuda::linear_forward(gpu, y, x, w, b, rws, inf, outf)
            })
        }
        OpKind::Linear { rows: r, in_features, out_features, weight, bias, act: Some(a) } => {
            let b = bias.as_ref().map(p);
            let (w, b) = (weight_view(params, params_half, weight), b.as_ref());
            let (rws, inf, outf) = (n * r, *in_features, *out_features);
            let mut pre = saved.expect("fused linears plan the pre-activation").view_mut(y.len());
            product_kinds!(AnyView, &w, AnyView, x, AnyViewMut, y, |w, x, y| {
                let pre = like_mut(&*y, &mut pre);
                ops::linear_act::cuda::linear_act_forward(gpu, y, pre, x, w, b, *a, rws, inf, outf)
            })
        }
        OpKind::LayerNorm { dim, eps, weight, bias } => {
            // Reads either type (autocast's f32 op reads a half input) and writes the planned one (half only
            // where every reader is a product, which would round it on load anyway).
            let r = y.len() / dim;
            let sv = saved.expect("layer norms plan saved statistics").f32_mut();
            let half = sv.len() / 2;
            let (mut sm, mut sr) = sv.split_at_mut(half);
            let (mut sm, mut sr) = (sm.slice_mut(..r), sr.slice_mut(..r));
            let (w, b) = (weight.as_ref().map(p), bias.as_ref().map(p));
            any_view!(x, |x| any_mut!(y, |y| {
                ops::layer_norm::cuda::layer_norm_forward(
                    gpu,
                    y,
                    &mut sm,
                    &mut sr,
                    x,
                    w.as_ref(),
                    b.as_ref(),
                    r,
                    *dim,
                    *eps,
                )
            }))
        }
        OpKind::Permute { in_shape, perm } => {
            let (shape, perm, r) = batched_perm(n, in_shape, perm);
            any_view!(x, |x| any_mut!(y, |y| ops::permute::cuda::permute(gpu, y, x, &shape[..r], &perm[..r])))
        }
        OpKind::PrependToken { token } => {
            let (d, per_in) = (token.slice.len, x.len() / n.max(1));
            let w = per_in + d;
            // Row r: the token (a source stride of 0 repeats it), then sample r's tokens.
            any_mut!(y, |y| {
                ops::concat::cuda::strided_copy(gpu, y, &p(token), n, d, (w, 0), (0, 0)).and_then(|()| {
                    any_view!(x, |x| ops::concat::cuda::strided_copy(gpu, y, x, n, per_in, (w, d), (per_in, 0)))
                })
            })
        }
        OpKind::SelectToken { index } => {
            let (d, per_in) = (y.len() / n.max(1), x.len() / n.max(1));
            any_view!(x, |x| any_mut!(y, |y| {
                ops::concat::cuda::strided_copy(gpu, y, x, n, d, (d, 0), (per_in, index * d))
            }))
        }
        OpKind::AvgPool2d { spec, in_chw } => {
            let g = pool_geom(spec, *in_chw, n);
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| ops::pool::cuda::avg_pool2d_forward(gpu, y, x, &g))
        }
        OpKind::GlobalAvgPool { in_chw: (c, h, w) } => same_kind!(AnyView, x, AnyViewMut, y, |x, y| {
            ops::pool::cuda::global_avg_pool_forward(gpu, y, x, n, *c, *h, *w)
        }),
        OpKind::AdaptiveAvgPool2d { in_chw: (c, h, w), out_hw: (oh, ow) } => {
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| {
                ops::pool::cuda::adaptive_avg_pool2d_forward(gpu, y, x, n, *c, *h, *w, *oh, *ow)
            })
        }
        OpKind::TokenMean => {
            let (d, per_in) = (y.len() / n.max(1), x.len() / n.max(1));
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| {
                ops::token_mean::cuda::token_mean_forward(gpu, y, x, n, per_in / d.max(1), d)
            })
        }
        OpKind::Upsample { factor: (fh, fw), in_chw: (c, h, w) } => same_kind!(AnyView, x, AnyViewMut, y, |x, y| {
            ops::upsample::cuda::upsample_nearest2d_forward(gpu, y, x, n, *c, *h, *w, *fh, *fw)
        }),
        OpKind::Activation(act) => {
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| ops::activation::cuda::forward(gpu, *act, y, x))
        }
        OpKind::Dropout { p: prob } if mode == Mode::Train && *prob > 0.0 => {
            let s = dropout_seed(seed, 0, node.output.0);
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| ops::dropout::cuda::dropout_forward(gpu, y, x, *prob, s))
        }
        OpKind::Reshape | OpKind::Dropout { .. } => {
            same_kind!(AnyView, x, AnyViewMut, y, |x, y| gpu.stream().memcpy_dtod(x, y).map_err(GpuError::from))
        }
        _ => return None,
    })
}

fn unsupported(op: &OpKind) -> ! {
    unreachable!("assembly rejects ops the CUDA executor does not run: {op:?}")
}

/// Runs the graph forward on the first `n` rows of `acts.input`; in training mode batch norms update their
/// running statistics in `buffers` (the device buffer arena).
#[allow(clippy::too_many_arguments)] // the buffers of one pass, as the host executor's
pub fn forward(
    gpu: &Gpu,
    graph: &Graph,
    params: &CudaSlice<f32>,
    buffers: &mut CudaSlice<f32>,
    acts: &mut GpuActivations,
    n: usize,
    mode: Mode,
    seed: u64,
) -> Result<(), GpuError> {
    assert!(n <= acts.capacity, "batch of {n} exceeds the planned capacity {}", acts.capacity);
    let cap = acts.capacity;
    round_input(gpu, graph, acts, n)?;
    let GpuActivations { input, values, saved, indices, ids, stats, scratch, ones, params_half, .. } = acts;
    refresh_half_params(gpu, params, params_half)?;
    let params_half = params_half.as_ref();
    let numel = |v: ValueId| graph.values[v.0].numel();
    let p = |r: &ParamRef| params.slice(r.slice.range());
    for (idx, node) in graph.nodes.iter().enumerate() {
        // The output buffer is moved out while the node runs, so the inputs can be borrowed from `values`.
        let mut out_buf = values[node.output.0].take().expect("every produced value has a buffer");
        let result = (|| -> Result<(), GpuError> {
            let len = n * numel(node.output);
            let read = |i: usize| rows(graph, values, input, node.inputs[i], n);
            let xa = read(0);
            let any = forward_any_storage(
                gpu,
                node,
                (params, params_half),
                &xa,
                &mut out_buf.view_mut(len),
                (saved[idx].as_mut(), indices[idx].as_mut(), scratch.as_mut()),
                n,
                mode,
                seed,
            );
            if let Some(result) = any {
                return result;
            }
            if let OpKind::Concat { axis } = &node.op {
                // Each piece copied into its columns, rounded on store where its type differs from the
                // output's (half only when every piece is half, as torch's cat promotes).
                let mut y = out_buf.view_mut(len);
                let (rws, _) = concat_runs(&graph.values[node.output.0].shape, *axis, n);
                let row_len = len / rws.max(1);
                let mut at = 0;
                for (i, &v) in node.inputs.iter().enumerate() {
                    let (_, run) = concat_runs(&graph.values[v.0].shape, *axis, n);
                    let x = read(i);
                    any_view!(&x, |x| any_mut!(&mut y, |y| {
                        ops::concat::cuda::strided_copy(gpu, y, x, rws, run, (row_len, at), (run, 0))
                    }))?;
                    at += run;
                }
                return Ok(());
            }
            if let OpKind::Add = node.op {
                // Autocast's promotion: a half and an f32 operand (a residual branch joining an f32 stream)
                // add into f32; two half ones into the planned type.
                let (b, mut y) = (read(1), out_buf.view_mut(len));
                return any_view!(&xa, |a| any_view!(&b, |b| any_mut!(&mut y, |y| {
                    ops::add::cuda::add_forward_mixed(gpu, y, a, b)
                })));
            }
            if let OpKind::BatchNorm2d { channels: c, hw, eps, momentum, weight, bias, stats } = &node.op {
                // Input and output in one storage type (torch's batch norm keeps a half input's type); the
                // statistics, running buffers and parameters are f32.
                let mut y = out_buf.view_mut(len);
                return same_kind!(AnyView, &xa, AnyViewMut, &mut y, |x, y| {
                    let (w, b) = (weight.as_ref().map(p), bias.as_ref().map(p));
                    let mut st = buffers.slice_mut(stats.range());
                    let (mut rm, mut rest) = st.split_at_mut(*c);
                    let (mut rv, mut tracked) = rest.split_at_mut(*c);
                    if mode == Mode::Train {
                        let sv = saved[idx].as_mut().expect("batch norms plan saved statistics").f32_mut();
                        let (mut sm, mut si) = sv.split_at_mut(*c);
                        ops::batch_norm::cuda::batch_norm_forward_train(
                            gpu,
                            y,
                            &mut sm,
                            &mut si,
                            &mut rm,
                            &mut rv,
                            x,
                            w.as_ref(),
                            b.as_ref(),
                            n,
                            *c,
                            *hw,
                            *eps,
                            *momentum,
                        )?;
                        // num_batches_tracked += 1, on the device like the statistics it counts.
                        ops::add::cuda::add_assign(gpu, &mut tracked.slice_mut(..1), &ones.slice(..1))
                    } else {
                        ops::batch_norm::cuda::batch_norm_forward_eval(
                            gpu,
                            y,
                            x,
                            &rm.slice(..),
                            &rv.slice(..),
                            w.as_ref(),
                            b.as_ref(),
                            n,
                            *c,
                            *hw,
                            *eps,
                        )
                    }
                });
            }
            if let OpKind::VectorQuantize { codebook, codes, dim, positions, .. } = &node.op {
                // Reads either type and writes the planned one (half where every reader is a product, as
                // layer norm); the codebook, the distances and the statistics are f32.
                let ix = indices[idx].as_mut().expect("VQ plans its indices and counts");
                let (mut ind, mut counts) = ix.split_at_mut(cap * positions);
                let mut ind = ind.slice_mut(..n * positions);
                let mut st = stats[idx].as_mut().expect("VQ plans its statistics").slice_mut(..2);
                let (cb, mut y) = (p(codebook), out_buf.view_mut(len));
                return any_view!(&xa, |x| any_mut!(&mut y, |y| {
                    let (d, pos, k) = (*dim, *positions, *codes);
                    ops::vector_quantize::cuda::vq_forward(gpu, y, &mut ind, &mut counts, x, &cb, n, d, pos, k, &mut st)
                }));
            }
            // The other ops run on f32 values (the storage plan keeps their inputs and outputs f32).
            let mut y = out_buf.f32_mut().slice_mut(..len);
            let x = xa.f32();
            match &node.op {
                OpKind::Softmax { dim } => {
                    let r = y.len() / dim;
                    ops::softmax::cuda::softmax_forward(gpu, &mut y, x, r, *dim)
                }
                OpKind::Embedding { vocab, dim, weight } => {
                    // The ids arrive as floats (the batch is f32); converted on the device as the host does.
                    let mut id = ids[idx].as_mut().expect("embeddings plan their ids").slice_mut(..x.len());
                    ops::embedding::cuda::ids_from_f32(gpu, &mut id, x)?;
                    ops::embedding::cuda::embedding_forward(gpu, &mut y, &id.slice(..), &p(weight), *vocab, *dim)
                }
                OpKind::AddParam { param } => {
                    // x + param broadcast over rows: a copy and a bias add (the host's one f32 addition).
                    let plen = param.slice.len;
                    let rws = y.len() / plen;
                    gpu.stream().memcpy_dtod(x, &mut y)?;
                    ops::bias_add::cuda::bias_add_forward(gpu, &mut y, &p(param), rws, plen)
                }
                op => unsupported(op),
            }
        })();
        values[node.output.0] = Some(out_buf);
        result?;
    }
    Ok(())
}

/// Queues the copy of each VQ layer's statistics of the last forward into its page-locked host copy; the
/// caller synchronises the stream (once, with the output's copy) before [`read_aux`].
pub fn queue_aux(gpu: &Gpu, acts: &mut GpuActivations) -> Result<(), GpuError> {
    for (dev, host) in acts.stats.iter().zip(acts.stats_host.iter_mut()) {
        if let (Some(dev), Some(host)) = (dev, host) {
            gpu.stream().memcpy_dtoh(dev, host)?;
        }
    }
    Ok(())
}

/// Fills the host's `aux` (per node) from the statistics [`queue_aux`] copied down, as the host executor
/// fills them: loss `(1 + beta) * mse`, the codebook perplexity.
pub fn read_aux(graph: &Graph, acts: &GpuActivations, aux: &mut [Option<AuxStats>]) -> Result<(), GpuError> {
    for (idx, node) in graph.nodes.iter().enumerate() {
        if let OpKind::VectorQuantize { beta, .. } = &node.op {
            let st = acts.stats_host[idx].as_ref().expect("VQ plans its statistics").as_slice()?;
            aux[idx] = Some(AuxStats { loss: (1.0 + beta) * st[0] as f64, perplexity: st[1] as f64 });
        }
    }
    Ok(())
}

/// Calls `f` with the gradient views of a weight and its optional bias, both inside the gradient arena.
fn with_weight_and_bias<R>(
    grads: &mut CudaSlice<f32>,
    w: Range<usize>,
    b: Option<Range<usize>>,
    f: impl FnOnce(&mut CudaViewMut<f32>, Option<&mut CudaViewMut<f32>>) -> R,
) -> R {
    match b {
        None => f(&mut grads.slice_mut(w), None),
        Some(b) if b.start >= w.end => {
            let (mut lo, mut hi) = grads.split_at_mut(b.start);
            let (mut dw, mut db) = (lo.slice_mut(w), hi.slice_mut(..b.len()));
            f(&mut dw, Some(&mut db))
        }
        Some(b) => {
            assert!(w.start >= b.end, "weight and bias slices overlap");
            let (mut lo, mut hi) = grads.split_at_mut(w.start);
            let (mut dw, mut db) = (hi.slice_mut(..w.len()), lo.slice_mut(b));
            f(&mut dw, Some(&mut db))
        }
    }
}

/// Calls `f` with the gradient views of a norm's optional weight and bias.
fn with_optional_pair<R>(
    grads: &mut CudaSlice<f32>,
    w: Option<&ParamRef>,
    b: Option<&ParamRef>,
    f: impl FnOnce(Option<&mut CudaViewMut<f32>>, Option<&mut CudaViewMut<f32>>) -> R,
) -> R {
    match (w, b) {
        (Some(w), b) => {
            with_weight_and_bias(grads, w.slice.range(), b.map(|b| b.slice.range()), |dw, db| f(Some(dw), db))
        }
        (None, Some(b)) => f(None, Some(&mut grads.slice_mut(b.slice.range()))),
        (None, None) => f(None, None),
    }
}

/// Where an input's gradient goes during the backward (the host's `GradSink`, on device buffers). A
/// value's gradient has the value's storage type.
struct GradSink<'a> {
    gpu: &'a Gpu,
    dvals: &'a mut [Option<AnyBuf>],
    tmp: &'a mut CudaSlice<f32>,
    tmp_half: &'a mut Option<AnyBuf>,
    written: &'a mut [bool],
    /// [`GpuActivations::needed`].
    needed: &'a [bool],
}

impl GradSink<'_> {
    /// Calls `f` with the gradient view of value `v` (`len` elements, in `v`'s storage type), or `None` for
    /// the model input and values whose gradient is not needed.
    fn with_any(
        &mut self,
        v: ValueId,
        len: usize,
        f: impl FnOnce(Option<&mut AnyViewMut<'_>>) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        if v.0 == 0 || !self.needed[v.0] {
            return f(None);
        }
        let dst = self.dvals[v.0].as_mut().expect("planned gradient");
        if !self.written[v.0] {
            f(Some(&mut dst.view_mut(len)))?;
            self.written[v.0] = true;
            return Ok(());
        }
        // A later reader's share: staged, then added.
        let gpu = self.gpu;
        match dst.kind() {
            StoreKind::F32 => {
                f(Some(&mut AnyViewMut::F32(self.tmp.slice_mut(..len))))?;
                ops::add::cuda::add_assign(gpu, &mut dst.f32_mut().slice_mut(..len), &self.tmp.slice(..len))
            }
            _ => {
                let tmp = self.tmp_half.as_mut().expect("half values plan half staging");
                f(Some(&mut tmp.view_mut(len)))?;
                same_kind!(AnyViewMut, &mut dst.view_mut(len), AnyView, &tmp.view(len), |d, t| {
                    ops::add::cuda::add_assign(gpu, d, t)
                })
            }
        }
    }

    /// Like [`Self::with_any`] for kernels that always write an input gradient: the model input's (f32, as
    /// the plan keeps the input) and an unneeded one go to the staging buffer of their type and are dropped.
    fn with_any_required(
        &mut self,
        v: ValueId,
        len: usize,
        f: impl FnOnce(&mut AnyViewMut<'_>) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        let f32_value = v.0 == 0 || self.dvals[v.0].as_ref().is_none_or(|d| d.kind() == StoreKind::F32);
        if (v.0 == 0 || !self.needed[v.0]) && f32_value {
            f(&mut AnyViewMut::F32(self.tmp.slice_mut(..len)))
        } else if !self.needed[v.0] {
            f(&mut self.tmp_half.as_mut().expect("half values plan half staging").view_mut(len))
        } else {
            self.with_any(v, len, |dx| f(dx.expect("not the input")))
        }
    }

    /// [`Self::with_any`] for a value the storage plan keeps in f32.
    fn with(
        &mut self,
        v: ValueId,
        len: usize,
        f: impl FnOnce(Option<&mut CudaViewMut<f32>>) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        self.with_any(v, len, |dx| f(dx.map(|d| d.f32())))
    }

    /// Routes `dy` unchanged into `v`'s gradient (an identity's backward): a copy or an add.
    fn pass_through(&mut self, v: ValueId, dy: &AnyView<'_>) -> Result<(), GpuError> {
        if v.0 == 0 || !self.needed[v.0] {
            return Ok(());
        }
        let len = dy.len();
        let gpu = self.gpu;
        let dst = self.dvals[v.0].as_mut().expect("planned gradient");
        let written = std::mem::replace(&mut self.written[v.0], true);
        let mut d = dst.view_mut(len);
        if d.kind() != dy.kind() {
            // An f32 gradient reaching a half value (a sum that promoted it): rounded into its type.
            return match (&mut d, dy) {
                (d, AnyView::F32(s)) if written => any_mut!(d, |d| ops::add::cuda::add_assign_mixed(gpu, d, s)),
                (AnyViewMut::F16(d), AnyView::F32(s)) => ops::cast::cuda::f32_to_f16(gpu, d, s),
                (AnyViewMut::Bf16(d), AnyView::F32(s)) => ops::cast::cuda::f32_to_bf16(gpu, d, s),
                _ => unreachable!("only an f32 gradient reaches a value of another type"),
            };
        }
        same_kind!(AnyViewMut, &mut d, AnyView, dy, |d, dy| {
            if written {
                ops::add::cuda::add_assign(gpu, d, dy)
            } else {
                gpu.stream().memcpy_dtod(dy, d).map_err(GpuError::from)
            }
        })
    }

    /// Hands the whole output gradient buffer on to `v` when `v` has none written yet and the buffers have
    /// the same size and type (a swap instead of a copy); otherwise a copy or an add.
    fn pass_through_owned(&mut self, v: ValueId, dy_buf: &mut AnyBuf, len: usize) -> Result<(), GpuError> {
        if v.0 != 0 && self.needed[v.0] && !self.written[v.0] {
            if let Some(dst) = self.dvals[v.0].as_mut() {
                if dst.len() == dy_buf.len() && dst.kind() == dy_buf.kind() {
                    std::mem::swap(dst, dy_buf);
                    self.written[v.0] = true;
                    return Ok(());
                }
            }
        }
        self.pass_through(v, &dy_buf.view(len))
    }
}

/// The backward of the ops that run in any storage type ([`forward_any_storage`]'s), but for the fused
/// linear + activation, which [`backward_releasing`] runs itself; `None` for the other ops.
#[allow(clippy::too_many_arguments)] // one node's buffers
fn backward_any_storage(
    gpu: &Gpu,
    node: &ecstrain_components::Node,
    (params, params_half): (&CudaSlice<f32>, Option<&AnyBuf>),
    grads: &mut CudaSlice<f32>,
    sink: &mut GradSink<'_>,
    x: &AnyView<'_>,
    dy: &AnyView<'_>,
    (saved, indices, scratch): (Option<&AnyBuf>, Option<&CudaSlice<u32>>, Option<&mut CudaSlice<f32>>),
    n: usize,
    mode: Mode,
    seed: u64,
) -> Option<Result<(), GpuError>> {
    let xv = node.inputs[0];
    Some(match &node.op {
        OpKind::Conv2d { spec, in_hw, weight, bias, .. } => {
            let g = conv_geom(spec, *in_hw, n);
            let w = weight_view(params, params_half, weight);
            let mut col = scratch.expect("convolutions plan scratch").slice_mut(..super::acts::conv_col_len(&g));
            sink.with_any(xv, x.len(), |dx| {
                with_weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()), |dw, db| {
                    product_kinds!(AnyView, &w, AnyView, dy, AnyView, x, |w, dy, x| {
                        let dx = dx.map(|dx| like_mut(x, dx));
                        ops::conv2d::cuda::conv2d_backward(gpu, dx, dw, db, dy, x, w, &mut col, &g)
                    })
                })
            })
        }
        OpKind::Attention { heads, tokens: t, dim: d, causal } => sink.with_any_required(xv, x.len(), |dx| {
            let len = attention_len(*heads, *t, n);
            let att = saved.expect("attention plans its probabilities").f32().slice(..len);
            let mut ds = scratch.expect("attention plans scratch").slice_mut(..len);
            let (h, t, dh, causal) = (*heads, *t, d / heads, *causal);
            same_kind3!(AnyViewMut, dx, AnyView, dy, AnyView, x, |dx, dy, x| {
                ops::attention::cuda::attention_fused_backward(gpu, dx, dy, x, &att, &mut ds, n, h, t, dh, causal)
            })
        }),
        OpKind::MaxPool2d { spec, in_chw } => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => {
                let am = indices.expect("max pools plan argmax").slice(..dy.len());
                let g = pool_geom(spec, *in_chw, n);
                same_kind!(AnyViewMut, dx, AnyView, dy, |dx, dy| {
                    ops::pool::cuda::max_pool2d_backward(gpu, dx, dy, &am, &g)
                })
            }
            None => Ok(()),
        }),
        OpKind::Linear { rows: r, in_features, out_features, weight, bias, act: None } => {
            let (w, rws, inf, outf) = (weight_view(params, params_half, weight), n * r, *in_features, *out_features);
            sink.with_any(xv, x.len(), |dx| {
                with_weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()), |dw, db| {
                    product_kinds!(AnyView, &w, AnyView, dy, AnyView, x, |w, dy, x| {
                        let dx = dx.map(|dx| like_mut(x, dx));
                        ops::linear::cuda::linear_backward(gpu, dx, dw, db, dy, x, w, rws, inf, outf)
                    })
                })
            })
        }
        OpKind::LayerNorm { dim, weight, bias, .. } => sink.with_any_required(xv, x.len(), |dx| {
            let r = dy.len() / dim;
            let sv = saved.expect("layer norms plan saved statistics").f32();
            let (sm, sr) = sv.split_at(sv.len() / 2);
            let (sm, sr) = (sm.slice(..r), sr.slice(..r));
            let w = weight.as_ref().map(|r| params.slice(r.slice.range()));
            with_optional_pair(grads, weight.as_ref(), bias.as_ref(), |dw, db| {
                same_kind!(AnyViewMut, dx, AnyView, x, |dx, x| any_view!(dy, |dy| {
                    ops::layer_norm::cuda::layer_norm_backward(gpu, dx, dw, db, dy, x, &sm, &sr, w.as_ref(), r, *dim)
                }))
            })
        }),
        OpKind::Permute { in_shape, perm } => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => {
                let (shape, perm, r) = batched_perm(n, in_shape, perm);
                any_mut!(dx, |dx| any_view!(dy, |dy| {
                    ops::permute::cuda::permute_backward(gpu, dx, dy, &shape[..r], &perm[..r])
                }))
            }
            None => Ok(()),
        }),
        OpKind::PrependToken { token } => {
            let (d, per_in) = (token.slice.len, x.len() / n.max(1));
            let w = per_in + d;
            // The token's gradient: the column sums of every row's first d entries, gathered into a
            // contiguous f32 [n, d] block first (the bias-gradient kernel reads dense f32 rows).
            let s = scratch.expect("prepend_token plans scratch");
            let mut rows_d = s.slice_mut(..n * d);
            any_view!(dy, |dy| ops::concat::cuda::strided_copy(gpu, &mut rows_d, dy, n, d, (d, 0), (w, 0)))
                .and_then(|()| {
                    let mut dt = grads.slice_mut(token.slice.range());
                    ops::bias_add::cuda::bias_add_backward(gpu, &mut dt, &rows_d.slice(..), n, d)
                })
                .and_then(|()| {
                    sink.with_any(xv, x.len(), |dx| match dx {
                        Some(dx) => any_mut!(dx, |dx| any_view!(dy, |dy| {
                            ops::concat::cuda::strided_copy(gpu, dx, dy, n, per_in, (per_in, 0), (w, d))
                        })),
                        None => Ok(()),
                    })
                })
        }
        OpKind::SelectToken { index } => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => {
                let (d, per_in) = (dy.len() / n.max(1), x.len() / n.max(1));
                any_mut!(dx, |dx| {
                    gpu.stream().memset_zeros(dx)?;
                    any_view!(dy, |dy| ops::concat::cuda::strided_copy(gpu, dx, dy, n, d, (per_in, index * d), (d, 0)))
                })
            }
            None => Ok(()),
        }),
        OpKind::AvgPool2d { spec, in_chw } => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => {
                let g = pool_geom(spec, *in_chw, n);
                same_kind!(AnyViewMut, dx, AnyView, dy, |dx, dy| ops::pool::cuda::avg_pool2d_backward(gpu, dx, dy, &g))
            }
            None => Ok(()),
        }),
        OpKind::AdaptiveAvgPool2d { in_chw: (c, h, w), out_hw: (oh, ow) } => {
            sink.with_any(xv, x.len(), |dx| match dx {
                Some(dx) => same_kind!(AnyViewMut, dx, AnyView, dy, |dx, dy| {
                    ops::pool::cuda::adaptive_avg_pool2d_backward(gpu, dx, dy, n, *c, *h, *w, *oh, *ow)
                }),
                None => Ok(()),
            })
        }
        OpKind::GlobalAvgPool { in_chw: (c, h, w) } => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => same_kind!(AnyViewMut, dx, AnyView, dy, |dx, dy| {
                ops::pool::cuda::global_avg_pool_backward(gpu, dx, dy, n, *c, *h, *w)
            }),
            None => Ok(()),
        }),
        OpKind::BatchNorm2d { channels: c, hw, weight, bias, .. } => sink.with_any_required(xv, x.len(), |dx| {
            let sv = saved.expect("batch norms plan saved statistics").f32();
            let (sm, si) = sv.split_at(*c);
            let si = si.slice(..*c);
            let w = weight.as_ref().map(|r| params.slice(r.slice.range()));
            with_optional_pair(grads, weight.as_ref(), bias.as_ref(), |dw, db| {
                same_kind3!(AnyViewMut, dx, AnyView, dy, AnyView, x, |dx, dy, x| {
                    ops::batch_norm::cuda::batch_norm_backward(gpu, dx, dw, db, dy, x, &sm, &si, w.as_ref(), n, *c, *hw)
                })
            })
        }),
        OpKind::TokenMean => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => {
                let (d, per_in) = (dy.len() / n.max(1), x.len() / n.max(1));
                same_kind!(AnyViewMut, dx, AnyView, dy, |dx, dy| {
                    ops::token_mean::cuda::token_mean_backward(gpu, dx, dy, n, per_in / d.max(1), d)
                })
            }
            None => Ok(()),
        }),
        OpKind::Upsample { factor: (fh, fw), in_chw: (c, h, w) } => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => same_kind!(AnyViewMut, dx, AnyView, dy, |dx, dy| {
                ops::upsample::cuda::upsample_nearest2d_backward(gpu, dx, dy, n, *c, *h, *w, *fh, *fw)
            }),
            None => Ok(()),
        }),
        OpKind::Activation(act) => sink.with_any(xv, x.len(), |dx| match dx {
            Some(dx) => same_kind3!(AnyViewMut, dx, AnyView, dy, AnyView, x, |dx, dy, x| {
                ops::activation::cuda::backward(gpu, *act, dx, dy, x)
            }),
            None => Ok(()),
        }),
        OpKind::Dropout { p: prob } if mode == Mode::Train && *prob > 0.0 => {
            let s = dropout_seed(seed, 0, node.output.0);
            sink.with_any(xv, x.len(), |dx| match dx {
                Some(dx) => same_kind!(AnyViewMut, dx, AnyView, dy, |dx, dy| {
                    ops::dropout::cuda::dropout_backward(gpu, dx, dy, *prob, s)
                }),
                None => Ok(()),
            })
        }
        OpKind::Dropout { .. } => sink.pass_through(xv, dy),
        _ => return None,
    })
}

/// Runs the graph backward for `n` rows. The gradient of the loss with respect to the output is in
/// `acts.grads[graph.output]` (copied up from the task); parameter gradients accumulate into `grads`.
/// `seed` must be the one given to [`forward`] for the same micro-batch; `aux` is the weight the task gives
/// the auxiliary (VQ) losses.
#[allow(clippy::too_many_arguments)] // the buffers of one pass, as the host executor's
pub fn backward(
    gpu: &Gpu,
    graph: &Graph,
    params: &CudaSlice<f32>,
    grads: &mut CudaSlice<f32>,
    acts: &mut GpuActivations,
    n: usize,
    mode: Mode,
    seed: u64,
    aux: AuxWeight<'_>,
) -> Result<(), GpuError> {
    backward_releasing(gpu, graph, params, grads, acts, n, mode, seed, aux, None)
}

/// The weight of the auxiliary (VQ) losses' gradients: the host's `Activations::aux_weight` (unscaled),
/// times the f16 loss scale the device keeps ([`GpuState::loss_scale`](super::state::GpuState::loss_scale),
/// `[1, 0]` outside f16 autocast), which the kernels multiply in as the host's `scale_loss_gradient` does.
#[derive(Clone, Copy)]
pub struct AuxWeight<'a> {
    /// The task's weight (`vq_weight / accumulate` for a reconstruction).
    pub weight: f32,
    /// The device loss-scale state.
    pub loss_scale: &'a CudaSlice<f64>,
}

/// Hands buckets of the device gradient arena to a consumer as soon as the backward has issued every kernel
/// that writes them (the data-parallel average overlapped with the backward, on another stream), as the host
/// executor's [`Release`](crate::graph::exec::Release) does.
pub struct DeviceRelease<'c> {
    /// [`gradient_cuts`](crate::graph::exec::gradient_cuts) of the graph.
    pub cuts: &'c [usize],
    /// Elements of the arena (the host [`Params`](ecstrain_components::Params) length).
    pub len: usize,
    /// Bucket size in elements: a bucket goes out once the final pieces gathered reach it (the first at most
    /// [`FIRST_BUCKET`](crate::parallel::overlap::FIRST_BUCKET), as DDP's), the rest after the last node.
    pub bucket: usize,
    /// Called with each bucket, from the end of the arena down, each right below the last, all of it in the
    /// end. The kernels writing a bucket are issued (not necessarily done) when it is called, and none issued
    /// later writes it.
    pub on_ready: &'c mut dyn FnMut(&mut CudaViewMut<f32>) -> Result<(), GpuError>,
}

/// [`backward`], handing each bucket of the gradient arena to `release` once its last writer is issued. The
/// kernels and their order are [`backward`]'s.
#[allow(clippy::too_many_arguments)] // the buffers of one pass, as the host executor's
pub fn backward_releasing(
    gpu: &Gpu,
    graph: &Graph,
    params: &CudaSlice<f32>,
    grads: &mut CudaSlice<f32>,
    acts: &mut GpuActivations,
    n: usize,
    mode: Mode,
    seed: u64,
    aux: AuxWeight<'_>,
    mut release: Option<DeviceRelease<'_>>,
) -> Result<(), GpuError> {
    let GpuActivations {
        input,
        values,
        grads: dvals,
        saved,
        indices,
        ids,
        scratch,
        grad_tmp,
        grad_tmp_half,
        written,
        needed,
        params_half,
        ..
    } = acts;
    let numel = |v: ValueId| graph.values[v.0].numel();
    let p = |r: &ParamRef| params.slice(r.slice.range());
    written.fill(false);
    // The start of the released part of the arena (everything from it on is handed out) and the size at which
    // the next bucket goes.
    let mut released = release.as_ref().map_or(0, |r| r.len);
    let mut cap = release.as_ref().map_or(0, |r| crate::parallel::overlap::FIRST_BUCKET.min(r.bucket.max(1)));
    for (idx, node) in graph.nodes.iter().enumerate().rev() {
        if let Some(r) = release.as_mut() {
            // Nodes past idx are issued: what only they write is final.
            let cut = r.cuts[idx];
            if released.saturating_sub(cut) >= cap {
                (r.on_ready)(&mut grads.slice_mut(cut..released))?;
                released = cut;
                cap = r.bucket.max(1);
            }
        }
        if !needed[node.output.0] {
            // Computed from the input alone: no parameter upstream needs this node's input gradients.
            continue;
        }
        let mut dy_buf = dvals[node.output.0].take().expect("every produced value has a gradient buffer");
        let out_len = n * numel(node.output);
        let result = (|| -> Result<(), GpuError> {
            let mut sink = GradSink { gpu, dvals, tmp: grad_tmp, tmp_half: grad_tmp_half, written, needed };
            // Identity backwards hand the buffer itself on: the output gradient is read by no other node.
            match node.op {
                OpKind::Reshape => return sink.pass_through_owned(node.inputs[0], &mut dy_buf, out_len),
                OpKind::Add => {
                    sink.pass_through(node.inputs[0], &dy_buf.view(out_len))?;
                    return sink.pass_through_owned(node.inputs[1], &mut dy_buf, out_len);
                }
                _ => {}
            }
            if let OpKind::Linear { rows: r, in_features, out_features, weight, bias, act: Some(a) } = &node.op {
                // The output gradient is read by no other node (its readers ran before this one in the
                // backward), so the fused kernel turns it into the pre-activation gradient in place.
                let (xv, x) = (node.inputs[0], rows(graph, values, input, node.inputs[0], n));
                let pre = saved[idx].as_ref().expect("fused linears plan the pre-activation").view(out_len);
                let mut dy = dy_buf.view_mut(out_len);
                let w = weight_view(params, params_half.as_ref(), weight);
                let (rws, inf, outf) = (n * r, *in_features, *out_features);
                return sink.with_any(xv, x.len(), |dx| {
                    with_weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()), |dw, db| {
                        product_kinds!(AnyView, &w, AnyViewMut, &mut dy, AnyView, &x, |w, dy, x| {
                            let (pre, dx) = (like(&*dy, &pre), dx.map(|dx| like_mut(x, dx)));
                            ops::linear_act::cuda::linear_act_backward(
                                gpu, dx, dw, db, dy, pre, x, w, *a, rws, inf, outf,
                            )
                        })
                    })
                });
            }
            let xa = rows(graph, values, input, node.inputs[0], n);
            let any = backward_any_storage(
                gpu,
                node,
                (params, params_half.as_ref()),
                grads,
                &mut sink,
                &xa,
                &dy_buf.view(out_len),
                (saved[idx].as_ref(), indices[idx].as_ref(), scratch.as_mut()),
                n,
                mode,
                seed,
            );
            if let Some(result) = any {
                return result;
            }
            if let OpKind::Concat { axis } = &node.op {
                // Each input's gradient copied out of its columns, in the input's type.
                let (rws, _) = concat_runs(&graph.values[node.output.0].shape, *axis, n);
                let dy = dy_buf.view(out_len);
                let row_len = out_len / rws.max(1);
                let mut at = 0;
                for &v in &node.inputs {
                    let (_, run) = concat_runs(&graph.values[v.0].shape, *axis, n);
                    sink.with_any(v, rws * run, |dx| match dx {
                        Some(dx) => any_mut!(dx, |dx| any_view!(&dy, |dy| {
                            ops::concat::cuda::strided_copy(gpu, dx, dy, rws, run, (run, 0), (row_len, at))
                        })),
                        None => Ok(()),
                    })?;
                    at += run;
                }
                return Ok(());
            }
            if let OpKind::VectorQuantize { codebook, codes, dim, positions, beta } = &node.op {
                // z and its gradient in one type, the output gradient in its own (the forward's pair).
                let (xv, dy) = (node.inputs[0], dy_buf.view(out_len));
                return sink.with_any_required(xv, xa.len(), |dx| {
                    let ind = indices[idx].as_ref().expect("VQ plans its indices").slice(..n * positions);
                    let mut dcb = grads.slice_mut(codebook.slice.range());
                    let (cb, (d, pos, k)) = (p(codebook), (*dim, *positions, *codes));
                    same_kind!(AnyViewMut, dx, AnyView, &xa, |dx, x| any_view!(&dy, |dy| {
                        ops::vector_quantize::cuda::vq_backward(
                            gpu,
                            dx,
                            &mut dcb,
                            dy,
                            x,
                            &cb,
                            &ind,
                            n,
                            d,
                            pos,
                            k,
                            *beta as f32,
                            aux.weight,
                            aux.loss_scale,
                        )
                    }))
                });
            }
            // The other ops run on f32 values and gradients (the storage plan keeps them f32).
            let dy = dy_buf.f32().slice(..out_len);
            let (xv, x) = (node.inputs[0], xa.f32());
            let in_len = x.len();
            match &node.op {
                OpKind::Softmax { dim } => sink.with(xv, in_len, |dx| match dx {
                    Some(dx) => {
                        // The backward reads the forward's output (the probabilities), as PyTorch's does.
                        let y = values[node.output.0].as_ref().expect("planned value").f32().slice(..dy.len());
                        ops::softmax::cuda::softmax_backward(gpu, dx, &dy, &y, dy.len() / dim, *dim)
                    }
                    None => Ok(()),
                }),
                OpKind::Embedding { vocab, dim, weight } => {
                    // Ids are not differentiable: only the table gets a gradient.
                    let id = ids[idx].as_ref().expect("embeddings plan their ids").slice(..in_len);
                    let mut dt = grads.slice_mut(weight.slice.range());
                    ops::embedding::cuda::embedding_backward(gpu, &mut dt, &dy, &id, *vocab, *dim)
                }
                OpKind::AddParam { param } => {
                    let plen = param.slice.len;
                    let mut dp = grads.slice_mut(param.slice.range());
                    ops::bias_add::cuda::bias_add_backward(gpu, &mut dp, &dy, dy.len() / plen, plen)?;
                    sink.pass_through(xv, &AnyView::F32(dy))
                }
                op => unsupported(op),
            }
        })();
        dvals[node.output.0] = Some(dy_buf);
        result?;
    }
    if let Some(r) = release.as_mut() {
        if released > 0 {
            (r.on_ready)(&mut grads.slice_mut(..released))?;
        }
    }
    Ok(())
}
