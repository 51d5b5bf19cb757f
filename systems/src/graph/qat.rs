//! The graph rewrite of quantization-aware training (`run.qat`): a [`OpKind::FakeQuantize`] node in front of
//! the input of every linear and conv2d node, each with its own `amax` buffer
//! (`<node>.input_quant.amax`, saved in checkpoints). Weights are fake-quantized per output channel by the
//! QAT plugin's systems, not here: they are parameters, not graph values.

use ecstrain_components::{BufferEntry, Buffers, Graph, Node, OpKind, ParamSlice, ValueId, ValueInfo};

/// PyTorch's `MovingAverageMinMaxObserver` averaging constant.
pub const DEFAULT_AVERAGING: f64 = 0.01;

/// Inserts the fake quantization of every matrix-product node's input; returns how many were inserted.
/// Value ids of the existing values do not change (new values are appended), so dropout seeds and
/// checkpoints of the rest of the graph stay as they were.
pub fn insert_fake_quant(graph: &mut Graph, buffers: &mut Buffers, averaging: f64) -> usize {
    let mut nodes = Vec::with_capacity(graph.nodes.len() * 2);
    let mut inserted = 0;
    for mut node in std::mem::take(&mut graph.nodes) {
        if matches!(node.op, OpKind::Linear { .. } | OpKind::Conv2d { .. }) {
            let input = node.inputs[0];
            let out = ValueId(graph.values.len());
            graph.values.push(ValueInfo { shape: graph.values[input.0].shape.clone() });
            let name = format!("{}.input_quant", node.name);
            let slice = ParamSlice { offset: buffers.arena.data.len(), len: 1 };
            buffers.arena.data.push(0.0);
            buffers.entries.push(BufferEntry { name: format!("{name}.amax"), shape: vec![1], slice, integer: false });
            nodes.push(Node {
                name,
                op: OpKind::FakeQuantize { amax: slice, averaging },
                inputs: vec![input],
                output: out,
            });
            node.inputs[0] = out;
            inserted += 1;
        }
        nodes.push(node);
    }
    graph.nodes = nodes;
    inserted
}

#[cfg(test)]
mod tests {
    use bevy_ecs::world::World;
    use ecstrain_components::{Activation, Buffers, Mode, Params};
    use ecstrain_kernels::quant::fake_quant::fake_quant_per_tensor_forward;
    use ecstrain_kernels::quant::qparams::scale_from_amax;

    use super::*;
    use crate::graph::{backward, forward, Activations, GraphBuilder};

    /// input [6] -> fc1 (4) -> relu -> fc2 (3), with the QAT rewrite applied.
    fn qat_net(world: &mut World) -> Graph {
        let mut g = GraphBuilder::new("test", &[6]);
        let x = g.input();
        let x = g.linear("fc1", x, 4, true).unwrap();
        let x = g.activation("act", x, Activation::Relu);
        let out = g.linear("fc2", x, 3, true).unwrap();
        let mut graph = g.finish(world, out, 3);
        let mut buffers = world.resource_mut::<Buffers>();
        assert_eq!(insert_fake_quant(&mut graph, &mut buffers, DEFAULT_AVERAGING), 2);
        graph
    }

    #[test]
    fn the_rewrite_puts_a_fake_quantize_before_each_matrix_product() {
        let mut world = World::new();
        let graph = qat_net(&mut world);
        let names: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["fc1.input_quant", "fc1", "act", "fc2.input_quant", "fc2"]);
        assert_eq!(graph.nodes[0].inputs, [ValueId(0)]);
        assert_eq!(graph.nodes[1].inputs, [graph.nodes[0].output]);
        assert_eq!(graph.values[graph.nodes[3].output.0].shape, [4]);
        let b = world.resource::<Buffers>();
        let entries: Vec<&str> = b.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(entries, ["fc1.input_quant.amax", "fc2.input_quant.amax"]);
    }

    #[test]
    fn ranges_follow_a_moving_average_in_training_and_stay_fixed_in_eval() {
        let mut world = World::new();
        let graph = qat_net(&mut world);
        let params = world.resource::<Params>().0.data.clone();
        let mut buffers = world.resource::<Buffers>().arena.data.clone();
        let mut acts = Activations::plan(&graph, 2);
        let x: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.3).collect();
        forward(&graph, &params, &mut buffers, &mut acts, &x, 2, Mode::Train, 0);
        let first = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(buffers[0], first, "the first batch sets the range: max |x|");
        let fq_out = &acts.values[graph.nodes[0].output.0][..12];
        let mut want = vec![0.0; 12];
        fake_quant_per_tensor_forward(&mut want, &x, scale_from_amax(first));
        assert_eq!(fq_out, &want[..]);
        let x2: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
        forward(&graph, &params, &mut buffers, &mut acts, &x2, 2, Mode::Train, 0);
        assert_eq!(buffers[0], first + 0.01f32 * (2.0 * first - first));
        let frozen = buffers[0];
        forward(&graph, &params, &mut buffers, &mut acts, &x2, 2, Mode::Eval, 0);
        assert_eq!(buffers[0], frozen, "evaluation does not move the range");
    }

    #[test]
    fn the_gradient_passes_inside_the_range_and_stops_where_it_saturates() {
        let mut world = World::new();
        let graph = qat_net(&mut world);
        let params = world.resource::<Params>().0.data.clone();
        let mut buffers = world.resource::<Buffers>().arena.data.clone();
        buffers[1] = 0.05; // fc2's input range: small, so some of the relu outputs saturate
        let mut acts = Activations::plan(&graph, 1);
        let x = [0.5f32, -0.9, 1.5, -2.0, 0.0, 1.0];
        forward(&graph, &params, &mut buffers, &mut acts, &x, 1, Mode::Eval, 0);
        let out = graph.output;
        acts.grads[out.0][..3].copy_from_slice(&[1.0, -2.0, 0.5]);
        let mut grads = vec![0.0f32; params.len()];
        backward(&graph, &params, &mut grads, &mut acts, &x, 1, Mode::Eval, 0);
        // fc2's fake quantization passes its output gradient to the relu output inside the range only.
        let fc2_fq = &graph.nodes[3];
        let relu_out = fc2_fq.inputs[0];
        let dq_in = &acts.grads[fc2_fq.output.0][..4];
        let d_relu = &acts.grads[relu_out.0][..4];
        let relu = &acts.values[relu_out.0][..4];
        let scale = scale_from_amax(buffers[1]);
        let inside: Vec<bool> = relu.iter().map(|r| (r / scale).round().abs() <= 127.0).collect();
        assert!(inside.contains(&true) && inside.contains(&false), "relu {relu:?} vs range 0.05: want both cases");
        for i in 0..4 {
            assert_eq!(d_relu[i], if inside[i] { dq_in[i] } else { 0.0 }, "element {i}");
            assert!(!inside[i] || dq_in[i] != 0.0 || relu[i] == 0.0, "element {i}: no gradient to pass");
        }
    }
}
