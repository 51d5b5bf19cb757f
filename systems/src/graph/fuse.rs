//! Graph rewrites that merge adjacent nodes into fused kernels, applied once after a model is built.
//!
//! Builders describe models one PyTorch module at a time (`Linear`, then `ReLU`); a rewrite runs a pair as one
//! kernel (here: one gradient buffer fewer, the activation backward in place). A rewrite changes only how the
//! graph is executed: parameter names, shapes and
//! every computed number stay the same (the fused kernels are bit-identical to the pairs they replace).

use ecstrain_components::{Graph, OpKind, ValueId};

/// Folds every activation that is the only reader of a linear layer's output into that linear node
/// (`OpKind::Linear { act: Some(..) }`, run by `ops::linear_act`). The linear's own output value is left
/// without a producer and gets no buffer. Returns the number of pairs fused.
///
/// A linear output that is also the graph's output, or is read by more than one node (a residual branch),
/// keeps its node as it is: its value is needed as such.
pub fn fuse_linear_activation(graph: &mut Graph) -> usize {
    let mut fused = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let node = &graph.nodes[i];
        let candidate = matches!(node.op, OpKind::Linear { act: None, .. }) && node.output != graph.output;
        if candidate {
            let v = node.output;
            if let Some(j) = sole_reader(graph, v) {
                if let OpKind::Activation(a) = graph.nodes[j].op {
                    let act_out = graph.nodes[j].output;
                    graph.nodes.remove(j);
                    let node = &mut graph.nodes[i];
                    if let OpKind::Linear { act, .. } = &mut node.op {
                        *act = Some(a);
                    }
                    node.output = act_out;
                    fused += 1;
                }
            }
        }
        i += 1;
    }
    fused
}

/// The index of the one node that reads `v`, if exactly one does.
fn sole_reader(graph: &Graph, v: ValueId) -> Option<usize> {
    let mut readers = graph.nodes.iter().enumerate().filter(|(_, n)| n.inputs.contains(&v));
    let (first, _) = readers.next()?;
    readers.next().is_none().then_some(first)
}
