//! Calibration: a streaming histogram of the input of every quantizable node, fed from the activations of
//! ordinary eval-mode forward passes, and the per-tensor `amax` each method picks from it.

use ecstrain_components::{Graph, OpKind, ValueId};
use ecstrain_kernels::quant::calibrate::{CalibMethod, Calibrator, CalibratorConfig};
use ecstrain_systems::graph::Activations;

/// Indices of the nodes int8 quantization covers: linear layers and 2-D convolutions (the matrix products,
/// where nearly all the compute is).
pub fn quantizable_nodes(graph: &Graph) -> Vec<usize> {
    graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, OpKind::Linear { .. } | OpKind::Conv2d { .. }))
        .map(|(i, _)| i)
        .collect()
}

/// The ranges quantization-aware training learned: `(node index, amax)` of every quantizable node whose input
/// is the output of a `FakeQuantize` node (its moving-average amax, read from the buffers).
pub fn qat_ranges(graph: &Graph, buffers: &[f32]) -> Vec<(usize, f32)> {
    quantizable_nodes(graph)
        .into_iter()
        .filter_map(|i| {
            let input = graph.nodes[i].inputs[0];
            graph.nodes.iter().find(|n| n.output == input).and_then(|n| match &n.op {
                OpKind::FakeQuantize { amax, .. } => buffers.get(amax.offset).map(|a| (i, *a)),
                _ => None,
            })
        })
        .collect()
}

/// One calibrator per quantizable node's input.
pub struct Calibration {
    nodes: Vec<(usize, ValueId, Calibrator)>,
    batches: usize,
}

impl Calibration {
    /// Empty histograms for every quantizable node of `graph`.
    pub fn new(graph: &Graph) -> Calibration {
        let nodes = quantizable_nodes(graph)
            .into_iter()
            .map(|i| (i, graph.nodes[i].inputs[0], Calibrator::new(CalibratorConfig::default())))
            .collect();
        Calibration { nodes, batches: 0 }
    }

    /// Observes the inputs of the last forward pass over `n` rows of `input` (the batch, for nodes that read
    /// the model input).
    pub fn observe(&mut self, graph: &Graph, acts: &Activations, input: &[f32], n: usize) {
        for (_, v, cal) in &mut self.nodes {
            cal.observe(acts.value(graph, input, *v, n));
        }
        self.batches += 1;
    }

    /// Batches observed so far.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// `(node index, amax)` of every quantizable node by `method`.
    pub fn amaxes(&self, method: CalibMethod) -> Vec<(usize, f32)> {
        self.nodes.iter().map(|(i, _, c)| (*i, c.amax(method))).collect()
    }
}

#[cfg(test)]
mod tests {
    use ecstrain_kernels::quant::calibrate::{CalibMethod, Calibrator, CalibratorConfig};

    #[test]
    fn methods_differ_on_a_heavy_tail() {
        let mut c = Calibrator::new(CalibratorConfig::default());
        let x: Vec<f32> = (0..10000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).chain([50.0]).collect();
        c.observe(&x);
        let m: Vec<f32> = [CalibMethod::Max, CalibMethod::Percentile(99.9), CalibMethod::Entropy, CalibMethod::Mse]
            .iter()
            .map(|&k| c.amax(k))
            .collect();
        println!("{m:?}");
        assert!(m[0] == 50.0 && m[1] < 2.0, "{m:?}");
    }
}
