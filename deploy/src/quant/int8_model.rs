//! The int8 model: every quantizable node's weights quantized per output channel and packed once, its
//! input scale from calibration, and scratch for the largest batch. As a [`NodeOverride`] it computes those
//! nodes with the int8 kernels inside the ordinary forward pass, so the task's metrics, the validation loop
//! and every other op stay exactly as for the float model.

use std::collections::HashMap;

use bevy_ecs::prelude::Resource;
use ecstrain_components::{Graph, Node, OpKind};
use ecstrain_kernels::ops;
use ecstrain_kernels::quant::conv2d_i8::{conv2d_i8_forward, conv2d_i8_scratch_len, ConvI8Weights};
use ecstrain_kernels::quant::gemm_i8::PackedI8Weights;
use ecstrain_kernels::quant::linear_i8::linear_i8_forward;
use ecstrain_kernels::quant::qparams::{channel_scales, quantize_per_channel, scale_from_amax};
use ecstrain_systems::graph::exec::conv_geom;
use ecstrain_systems::graph::NodeOverride;

use crate::onnx::{QdqNode, QdqPlan};

/// The packed weights of one node.
enum Packed {
    Linear(PackedI8Weights),
    Conv(ConvI8Weights),
}

/// The weight layout of a quantizable node.
enum Layout {
    /// `[n, k]`.
    Linear { n: usize, k: usize },
    /// `[oc, kg]` with `kg = ic / groups * kh * kw`.
    Conv { oc: usize, groups: usize, kg: usize },
}

impl Layout {
    fn channels(&self) -> usize {
        match self {
            Layout::Linear { n, .. } => *n,
            Layout::Conv { oc, .. } => *oc,
        }
    }

    fn pack(&self, q: &[i8], scales: &[f32]) -> Packed {
        match *self {
            Layout::Linear { n, k } => Packed::Linear(PackedI8Weights::from_i8(q, scales, n, k)),
            Layout::Conv { oc, groups, kg } => Packed::Conv(ConvI8Weights::from_i8(q, scales, oc, groups, kg)),
        }
    }
}

/// One quantized node.
struct QuantNode {
    /// Input scale (`amax / 127`).
    input_scale: f32,
    /// The weight, quantized, in its own layout, and its per-channel scales (what the QDQ export writes).
    q: Vec<i8>,
    scales: Vec<f32>,
    packed: Packed,
    bias: Option<Vec<f32>>,
}

/// The int8 model of a graph (see the module doc).
#[derive(Resource)]
pub struct Int8Model {
    nodes: HashMap<usize, QuantNode>,
    capacity: usize,
    scratch_q: Vec<i8>,
    scratch_acc: Vec<i32>,
    /// Pre-activation of a fused linear + activation node.
    scratch_pre: Vec<f32>,
}

impl Int8Model {
    /// Quantizes the weights of the nodes in `amaxes` (`(node index, calibrated input amax)`, as
    /// [`Calibration::amaxes`](super::Calibration::amaxes) returns) and plans scratch for batches of up to
    /// `capacity` rows.
    pub fn new(graph: &Graph, params: &[f32], amaxes: &[(usize, f32)], capacity: usize) -> Int8Model {
        let (mut q_len, mut acc_len, mut pre_len) = (0, 0, 0);
        let mut nodes = HashMap::new();
        for &(idx, amax) in amaxes {
            let node = &graph.nodes[idx];
            let out = capacity * graph.values[node.output.0].numel();
            let (weight, bias) = match &node.op {
                OpKind::Linear { weight, bias, .. } | OpKind::Conv2d { weight, bias, .. } => (weight, bias),
                _ => continue,
            };
            let w = &params[weight.slice.range()];
            let bias = bias.map(|b| params[b.slice.range()].to_vec());
            let layout = match &node.op {
                OpKind::Linear { rows, in_features, out_features, act, .. } => {
                    let (k, n, r) = (*in_features, *out_features, *rows);
                    q_len = q_len.max(capacity * r * k);
                    acc_len = acc_len.max(capacity * r * n);
                    if act.is_some() {
                        pre_len = pre_len.max(out);
                    }
                    Layout::Linear { n, k }
                }
                OpKind::Conv2d { spec, in_hw, .. } => {
                    let (ql, al) = conv2d_i8_scratch_len(&conv_geom(spec, *in_hw, capacity));
                    q_len = q_len.max(ql);
                    acc_len = acc_len.max(al);
                    let oc = spec.out_channels;
                    Layout::Conv { oc, groups: spec.groups, kg: w.len() / oc }
                }
                _ => unreachable!("matched above"),
            };
            let oc = layout.channels();
            let mut scales = vec![0.0f32; oc];
            channel_scales(&mut scales, w, w.len() / oc);
            let mut q = vec![0i8; w.len()];
            quantize_per_channel(&mut q, w, &scales, w.len() / oc);
            let packed = layout.pack(&q, &scales);
            nodes.insert(idx, QuantNode { input_scale: scale_from_amax(amax), q, scales, packed, bias });
        }
        Int8Model {
            nodes,
            capacity,
            scratch_q: vec![0; q_len],
            scratch_acc: vec![0; acc_len],
            scratch_pre: vec![0.0; pre_len],
        }
    }

    /// Quantized nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is quantized.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The input scale of node `idx`, when it is quantized.
    pub fn input_scale(&self, idx: usize) -> Option<f32> {
        self.nodes.get(&idx).map(|n| n.input_scale)
    }

    /// The same quantization as a QDQ plan for the ONNX export.
    pub fn qdq_plan(&self) -> QdqPlan {
        let nodes = self
            .nodes
            .iter()
            .map(|(&i, n)| {
                (i, QdqNode { input_scale: n.input_scale, weight: n.q.clone(), weight_scales: n.scales.clone() })
            })
            .collect();
        QdqPlan { nodes }
    }
}

impl NodeOverride for Int8Model {
    fn run(&mut self, idx: usize, node: &Node, x: &[f32], y: &mut [f32], n: usize) -> bool {
        let Some(qn) = self.nodes.get(&idx) else { return false };
        assert!(n <= self.capacity, "int8 model: batch of {n} exceeds the planned {}", self.capacity);
        let bias = qn.bias.as_deref();
        match (&node.op, &qn.packed) {
            (OpKind::Linear { rows, in_features, out_features, act, .. }, Packed::Linear(w)) => {
                let (r, k, o) = (n * rows, *in_features, *out_features);
                let (sq, sa) = (&mut self.scratch_q[..r * k], &mut self.scratch_acc[..r * o]);
                match act {
                    None => linear_i8_forward(y, x, w, bias, qn.input_scale, sq, sa, r, k, o),
                    Some(a) => {
                        let pre = &mut self.scratch_pre[..y.len()];
                        linear_i8_forward(pre, x, w, bias, qn.input_scale, sq, sa, r, k, o);
                        ops::activation::activation_forward(*a, y, pre);
                    }
                }
            }
            (OpKind::Conv2d { spec, in_hw, .. }, Packed::Conv(w)) => {
                let g = conv_geom(spec, *in_hw, n);
                let (ql, al) = conv2d_i8_scratch_len(&g);
                let (sq, sa) = (&mut self.scratch_q[..ql], &mut self.scratch_acc[..al]);
                conv2d_i8_forward(y, x, w, bias, qn.input_scale, &g, sq, sa);
            }
            _ => return false,
        }
        true
    }
}
