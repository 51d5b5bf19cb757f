//! Graph rewrites that merge adjacent nodes into fused kernels, applied once after a model is built.
//!
//! Builders describe models one PyTorch module at a time (`Linear`, then `ReLU`); a rewrite runs a pair as one
//! kernel (here: one gradient buffer fewer, the activation backward in place). A rewrite changes only how the
//! graph is executed: parameter names, shapes and
//! every computed number stay the same (the fused kernels are bit-identical to the pairs they replace).

use ecstrain_components::{Graph, OpKind};

/// Folds every activation that is the only reader of a linear layer's output into that linear node
/// (`OpKind::Linear { act: Some(..) }`, run by `ops::linear_act`). The linear's own output value is left
/// without a producer and gets no buffer. Returns the number of pairs fused.
///
/// A linear output that is also the graph's output, or is read by more than one node (a residual branch),
/// keeps its node as it is: its value is needed as such.
pub fn fuse_linear_activation(graph: &mut Graph) -> usize {
    // Pairs found on the graph as built (one pass over a reader index: the rewrite does not change who reads
    // a linear's output, it only removes activations that were such sole readers), then applied in one go.
    let readers = super::exec::readers_of(graph);
    let mut removed = vec![false; graph.nodes.len()];
    let mut fused = 0;
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        if !matches!(node.op, OpKind::Linear { act: None, .. }) || node.output == graph.output {
            continue;
        }
        let [j] = readers[node.output.0][..] else { continue };
        let OpKind::Activation(a) = graph.nodes[j].op else { continue };
        let act_out = graph.nodes[j].output;
        removed[j] = true;
        let node = &mut graph.nodes[i];
        if let OpKind::Linear { act, .. } = &mut node.op {
            *act = Some(a);
        }
        node.output = act_out;
        fused += 1;
    }
    let mut index = 0;
    graph.nodes.retain(|_| {
        index += 1;
        !removed[index - 1]
    });
    fused
}
