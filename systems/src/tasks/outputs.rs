//! Model outputs kept over an evaluation pass, for `engine predict`: the caller inserts [`CollectedOutputs`]
//! and [`collect_outputs`] (in ValidationStep, after the forward) appends every batch's output rows to it, on
//! either device (a CUDA forward in evaluation mode leaves its output in the host activations too). Runs
//! without the resource (training, `engine eval`) collect nothing.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Graph};

use crate::graph::Activations;

/// The output rows of every sample evaluated so far, in the order the loader delivered them.
#[derive(Resource, Default, Debug)]
pub struct CollectedOutputs {
    /// `[samples, row_len]` row-major.
    pub values: Vec<f32>,
    /// The dataset index of each row.
    pub indices: Vec<usize>,
}

/// Appends the batch's model output to [`CollectedOutputs`].
pub fn collect_outputs(
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    mut out: ResMut<CollectedOutputs>,
) {
    let n = batch.size;
    if n == 0 {
        return;
    }
    out.values.extend_from_slice(acts.output(&graph, n));
    out.indices.extend_from_slice(&batch.indices[..n]);
}

/// The `k` most probable classes of one row of logits, most probable first, with their softmax probability
/// (computed in f64, stable for any logits; ties keep the lower class first, as `torch.topk` does on CPU).
pub fn top_classes(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let exps: Vec<f64> = logits.iter().map(|&v| (f64::from(v) - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|c| (c, exps[c] / sum)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_classes_are_softmax_ranked() {
        let top = top_classes(&[1.0, 3.0, 2.0, 3.0], 3);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        let want = [(1, 3f64.exp() / z), (3, 3f64.exp() / z), (2, 2f64.exp() / z)];
        for ((c, p), (wc, wp)) in top.iter().zip(want) {
            assert_eq!(*c, wc);
            assert!((p - wp).abs() < 1e-15, "{p} vs {wp}");
        }
        // Large logits do not overflow; k past the class count gives every class.
        let top = top_classes(&[1000.0, 0.0], 5);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, 0);
        assert!((top[0].1 - 1.0).abs() < 1e-12 && top[1].1 >= 0.0);
    }
}
