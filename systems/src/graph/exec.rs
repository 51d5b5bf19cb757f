//! Forward and backward execution of a [`Graph`] on planned buffers.
//!
//! [`Activations`] holds one buffer per value and one gradient buffer per value, sized once for the largest
//! batch (`capacity`); a smaller batch uses the leading rows. Nothing is allocated per step. Value 0 (the
//! input) has no buffer: it is read from the batch, and no gradient flows into it.
//!
//! Gradient conventions (as the kernels): parameter gradients accumulate into the [`Grads`] arena (so
//! micro-batches of an accumulation window add up); activation gradients overwrite.

use bevy_ecs::prelude::*;
use ecstrain_components::{Activation, Conv2dSpec, Graph, Mode, OpKind, Pool2dSpec, ValueId};
use ecstrain_kernels::ops;
use ecstrain_kernels::rng::Rng;

/// Planned activation and activation-gradient buffers for a graph.
#[derive(Resource, Debug)]
pub struct Activations {
    /// Rows (samples) each buffer can hold.
    pub capacity: usize,
    /// `values[v]`: `[capacity, numel(v)]`; empty for the input value.
    pub values: Vec<Vec<f32>>,
    /// `grads[v]`: same shapes as `values`.
    pub grads: Vec<Vec<f32>>,
    /// `argmax[v]`: for max-pool outputs, the input position of each output element; empty otherwise.
    pub argmax: Vec<Vec<u32>>,
    /// Scratch shared by the ops that need it in turn (convolution column buffers), sized for the largest.
    pub scratch: Vec<f32>,
}

impl Activations {
    /// Plans buffers for batches of up to `capacity` samples.
    pub fn plan(graph: &Graph, capacity: usize) -> Activations {
        let sizes: Vec<usize> =
            graph.values.iter().enumerate().map(|(i, v)| if i == 0 { 0 } else { v.numel() * capacity }).collect();
        let mut argmax = vec![Vec::new(); graph.values.len()];
        let mut scratch = 0;
        for node in &graph.nodes {
            match &node.op {
                OpKind::MaxPool2d { .. } => argmax[node.output.0] = vec![0; sizes[node.output.0]],
                OpKind::Conv2d { spec, in_hw, .. } => {
                    scratch = scratch.max(conv_geom(spec, *in_hw, capacity).col_len())
                }
                _ => {}
            }
        }
        Activations {
            capacity,
            values: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            grads: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            argmax,
            scratch: vec![0.0; scratch],
        }
    }

    /// Bytes held by the plan (for the model summary).
    pub fn bytes(&self) -> usize {
        4 * (self.values.iter().map(Vec::len).sum::<usize>()
            + self.grads.iter().map(Vec::len).sum::<usize>()
            + self.argmax.iter().map(Vec::len).sum::<usize>()
            + self.scratch.len())
    }

    /// The valid part of the graph output for a batch of `n` rows.
    pub fn output<'a>(&'a self, graph: &Graph, n: usize) -> &'a [f32] {
        &self.values[graph.output.0][..n * graph.values[graph.output.0].numel()]
    }
}

/// Kernel geometry of a convolution node for a batch of `n`.
pub fn conv_geom(spec: &Conv2dSpec, in_hw: (usize, usize), n: usize) -> ops::conv2d::Conv2dGeom {
    ops::conv2d::Conv2dGeom {
        n,
        c: spec.in_channels,
        h: in_hw.0,
        w: in_hw.1,
        oc: spec.out_channels,
        kh: spec.kernel.0,
        kw: spec.kernel.1,
        stride: spec.stride,
        padding: spec.padding,
        dilation: spec.dilation,
        groups: spec.groups,
    }
}

/// Kernel geometry of a pooling node for a batch of `n`.
pub fn pool_geom(spec: &Pool2dSpec, in_chw: (usize, usize, usize), n: usize) -> ops::pool::Pool2dGeom {
    ops::pool::Pool2dGeom {
        n,
        c: in_chw.0,
        h: in_chw.1,
        w: in_chw.2,
        kh: spec.kernel.0,
        kw: spec.kernel.1,
        stride: spec.stride,
        padding: spec.padding,
    }
}

/// Seed of the dropout mask of node `node` at micro-step `micro_step`: a pure function so backward recomputes
/// the forward mask and a resumed run draws the same masks.
pub fn dropout_seed(run_seed: u64, micro_step: u64, node: usize) -> u64 {
    Rng::derive(run_seed, &[0xD0, micro_step, node as u64]).next_u64()
}

/// `(input rows, output rows)` of a node: the input borrowed from the batch for value 0.
fn io<'a>(
    bufs: &'a mut [Vec<f32>],
    batch_input: &'a [f32],
    input: ValueId,
    output: ValueId,
) -> (&'a [f32], &'a mut [f32]) {
    debug_assert!(input.0 < output.0, "graph values are created in topological order");
    let (lo, hi) = bufs.split_at_mut(output.0);
    let x: &[f32] = if input.0 == 0 { batch_input } else { &lo[input.0] };
    (x, &mut hi[0])
}

/// Runs the graph forward on `n` rows of `input` (`[n, numel(input)]`) with parameters `params`.
pub fn forward(graph: &Graph, params: &[f32], acts: &mut Activations, input: &[f32], n: usize, mode: Mode, seed: u64) {
    assert!(n <= acts.capacity, "batch of {n} exceeds the planned capacity {}", acts.capacity);
    let input = &input[..n * graph.values[0].numel()];
    let Activations { values, argmax, scratch, .. } = acts;
    for (idx, node) in graph.nodes.iter().enumerate() {
        let out_len = n * graph.values[node.output.0].numel();
        let in_len = n * graph.values[node.input.0].numel();
        let (x, y) = io(values, input, node.input, node.output);
        let (x, y) = (&x[..in_len], &mut y[..out_len]);
        match &node.op {
            OpKind::Linear { in_features, out_features, weight, bias } => {
                let w = &params[weight.slice.range()];
                let b = bias.map(|b| &params[b.slice.range()]);
                ops::linear::linear_forward(y, x, w, b, n, *in_features, *out_features);
            }
            OpKind::Conv2d { spec, in_hw, weight, bias, .. } => {
                let g = conv_geom(spec, *in_hw, n);
                let w = &params[weight.slice.range()];
                let b = bias.map(|b| &params[b.slice.range()]);
                ops::conv2d::conv2d_forward(y, x, w, b, &mut scratch[..g.col_len()], &g);
            }
            OpKind::MaxPool2d { spec, in_chw } => {
                ops::pool::max_pool2d_forward(y, &mut argmax[node.output.0][..out_len], x, &pool_geom(spec, *in_chw, n))
            }
            OpKind::AvgPool2d { spec, in_chw } => ops::pool::avg_pool2d_forward(y, x, &pool_geom(spec, *in_chw, n)),
            OpKind::GlobalAvgPool { in_chw: (c, h, w) } => ops::pool::global_avg_pool_forward(y, x, n, *c, *h, *w),
            OpKind::Reshape => y.copy_from_slice(x),
            OpKind::Activation(act) => activation_forward(*act, y, x),
            OpKind::Dropout { p } => {
                if mode == Mode::Train && *p > 0.0 {
                    ops::dropout::dropout_forward(y, x, *p, dropout_seed(seed, 0, idx));
                } else {
                    y.copy_from_slice(x);
                }
            }
        }
    }
}

fn activation_forward(act: Activation, y: &mut [f32], x: &[f32]) {
    match act {
        Activation::Relu => ops::relu::relu_forward(y, x),
        Activation::Gelu => ops::gelu::gelu_forward(y, x, ops::gelu::GeluApprox::None),
        Activation::GeluTanh => ops::gelu::gelu_forward(y, x, ops::gelu::GeluApprox::Tanh),
        Activation::Tanh => ops::tanh::tanh_forward(y, x),
        Activation::Sigmoid => ops::sigmoid::sigmoid_forward(y, x),
    }
}

fn activation_backward(act: Activation, dx: &mut [f32], dy: &[f32], x: &[f32]) {
    match act {
        Activation::Relu => ops::relu::relu_backward(dx, dy, x),
        Activation::Gelu => ops::gelu::gelu_backward(dx, dy, x, ops::gelu::GeluApprox::None),
        Activation::GeluTanh => ops::gelu::gelu_backward(dx, dy, x, ops::gelu::GeluApprox::Tanh),
        Activation::Tanh => ops::tanh::tanh_backward(dx, dy, x),
        Activation::Sigmoid => ops::sigmoid::sigmoid_backward(dx, dy, x),
    }
}

/// Two disjoint mutable parameter-gradient slices (a weight and its bias) from one arena.
fn weight_and_bias(
    grads: &mut [f32],
    w: std::ops::Range<usize>,
    b: Option<std::ops::Range<usize>>,
) -> (&mut [f32], Option<&mut [f32]>) {
    match b {
        None => (&mut grads[w], None),
        Some(b) if b.start >= w.end => {
            let (lo, hi) = grads.split_at_mut(b.start);
            (&mut lo[w], Some(&mut hi[..b.len()]))
        }
        Some(b) => {
            assert!(w.start >= b.end, "weight and bias slices overlap");
            let (lo, hi) = grads.split_at_mut(w.start);
            (&mut hi[..w.len()], Some(&mut lo[b]))
        }
    }
}

/// Runs the graph backward for `n` rows. The caller (the task's loss system) has written the gradient of the
/// loss with respect to the output into `acts.grads[graph.output]`. Parameter gradients accumulate into `grads`.
/// `seed` must be the one given to [`forward`] for the same micro-batch.
#[allow(clippy::too_many_arguments)] // the buffers of one pass; a struct would only rename them
pub fn backward(
    graph: &Graph,
    params: &[f32],
    grads: &mut [f32],
    acts: &mut Activations,
    input: &[f32],
    n: usize,
    mode: Mode,
    seed: u64,
) {
    let Activations { values, grads: dvals, argmax, scratch, .. } = acts;
    let input = &input[..n * graph.values[0].numel()];
    for (idx, node) in graph.nodes.iter().enumerate().rev() {
        let out_len = n * graph.values[node.output.0].numel();
        let in_len = n * graph.values[node.input.0].numel();
        let x: &[f32] = if node.input.0 == 0 { input } else { &values[node.input.0][..in_len] };
        // The input's gradient is needed unless the input is the data itself.
        let needs_dx = node.input.0 != 0;
        let (lo, hi) = dvals.split_at_mut(node.output.0);
        let dy = &hi[0][..out_len];
        let dx: Option<&mut [f32]> = if needs_dx { Some(&mut lo[node.input.0][..in_len]) } else { None };
        match &node.op {
            OpKind::Linear { in_features, out_features, weight, bias } => {
                let w = &params[weight.slice.range()];
                let (dw, db) = weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()));
                ops::linear::linear_backward(dx, dw, db, dy, x, w, n, *in_features, *out_features);
            }
            OpKind::Conv2d { spec, in_hw, weight, bias, .. } => {
                let g = conv_geom(spec, *in_hw, n);
                let w = &params[weight.slice.range()];
                let (dw, db) = weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()));
                ops::conv2d::conv2d_backward(dx, dw, db, dy, x, w, &mut scratch[..g.col_len()], &g);
            }
            OpKind::MaxPool2d { spec, in_chw } => {
                if let Some(dx) = dx {
                    let am = &argmax[node.output.0][..out_len];
                    ops::pool::max_pool2d_backward(dx, dy, am, &pool_geom(spec, *in_chw, n));
                }
            }
            OpKind::AvgPool2d { spec, in_chw } => {
                if let Some(dx) = dx {
                    ops::pool::avg_pool2d_backward(dx, dy, &pool_geom(spec, *in_chw, n));
                }
            }
            OpKind::GlobalAvgPool { in_chw: (c, h, w) } => {
                if let Some(dx) = dx {
                    ops::pool::global_avg_pool_backward(dx, dy, n, *c, *h, *w);
                }
            }
            OpKind::Reshape => {
                if let Some(dx) = dx {
                    dx.copy_from_slice(dy);
                }
            }
            OpKind::Activation(act) => {
                if let Some(dx) = dx {
                    activation_backward(*act, dx, dy, x);
                }
            }
            OpKind::Dropout { p } => {
                if let Some(dx) = dx {
                    if mode == Mode::Train && *p > 0.0 {
                        ops::dropout::dropout_backward(dx, dy, *p, dropout_seed(seed, 0, idx));
                    } else {
                        dx.copy_from_slice(dy);
                    }
                }
            }
        }
    }
}
