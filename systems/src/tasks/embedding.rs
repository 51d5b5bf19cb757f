//! `embedding`: regress an embedding vector per sample (the image-to-prompt task) with the cosine loss
//! `mean_i (1 - cos(out_i, t_i))`, PyTorch's `CosineEmbeddingLoss` with target 1, where
//! `cos(x, y) = x.y / (max(|x|, eps) * max(|y|, eps))` (`F.cosine_similarity`, eps 1e-8). Validation: loss and
//! the mean cosine similarity.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, Graph, Metrics};
pub use ecstrain_kernels::ops::cosine_loss::{cosine, cosine_loss, cosine_loss_backward, cosine_sums, COSINE_EPS};

use super::regression::dense_targets;
use crate::graph::Activations;

/// State of the embedding task.
#[derive(Resource, Debug)]
pub struct EmbeddingTask {
    /// Embedding length (values per sample of the output and the targets).
    pub dim: usize,
    /// Norm clamp of the cosine.
    pub eps: f64,
}

impl EmbeddingTask {
    /// A task for embeddings of `dim` values.
    pub fn new(dim: usize) -> Self {
        EmbeddingTask { dim, eps: COSINE_EPS }
    }
}

/// Loss (training): mean `1 - cos` of the batch; writes d(loss / accumulate)/d(out).
pub fn embedding_loss(
    graph: Res<Graph>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    task: Res<EmbeddingTask>,
    clock: Res<Clock>,
    mut metrics: ResMut<Metrics>,
) {
    let (n, d) = (batch.size, task.dim);
    if n == 0 {
        return;
    }
    let t = dense_targets(&batch, "embedding");
    let out = graph.output.0;
    let acts = &mut *acts;
    let pred = &acts.values[out][..n * d];
    let loss = cosine_loss(pred, t, n, d, task.eps);
    let scale = 1.0 / clock.accumulate.max(1) as f32;
    cosine_loss_backward(&mut acts.grads[out][..n * d], pred, t, n, d, task.eps, scale);
    metrics.last_loss = loss;
    metrics.add_train("loss", loss, n as f64);
}

/// Validation: loss and mean cosine similarity of the batch.
pub fn embedding_eval(
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    task: Res<EmbeddingTask>,
    mut metrics: ResMut<Metrics>,
) {
    let (n, d) = (batch.size, task.dim);
    if n == 0 {
        return;
    }
    let t = dense_targets(&batch, "embedding");
    let (loss_sum, cos_sum) = cosine_sums(acts.output(&graph, n), t, n, d, task.eps);
    let w = n as f64;
    metrics.add_val("loss", loss_sum / w, w);
    metrics.add_val("cosine", cos_sum / w, w);
}
