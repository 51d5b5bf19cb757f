//! `classification`: softmax cross-entropy on logits; validation loss, accuracy and top-k accuracy.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, Graph, Metrics, Targets};
use ecstrain_kernels::ops::softmax_cross_entropy::{
    softmax_cross_entropy_backward, softmax_cross_entropy_forward, top_k_correct, CrossEntropyOptions,
};

use crate::graph::Activations;

/// State of the classification task: options and a scratch buffer for probabilities (planned once).
#[derive(Resource)]
pub struct ClassificationTask {
    /// Number of classes (the model's output size).
    pub num_classes: usize,
    /// k of the top-k accuracy metric.
    pub top_k: usize,
    /// Label smoothing and ignore index.
    pub options: CrossEntropyOptions,
    /// Softmax probabilities `[capacity, num_classes]`.
    pub probs: Vec<f32>,
}

impl ClassificationTask {
    /// A task for `num_classes` classes and batches of up to `capacity` samples.
    pub fn new(num_classes: usize, top_k: usize, options: CrossEntropyOptions, capacity: usize) -> Self {
        ClassificationTask { num_classes, top_k, options, probs: vec![0.0; capacity * num_classes] }
    }
}

/// The confusion matrix of the current (or last) validation pass: `counts[true * classes + predicted]`, the
/// prediction being the arg-max of the logits (the first on ties, as torch's `argmax`). Cleared at the start
/// of every pass; the plots draw it.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct ConfusionMatrix {
    /// Number of classes.
    pub classes: usize,
    /// Row-major counts.
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix { classes, counts: vec![0; classes * classes] }
    }

    /// Counts the `n` samples of `logits` (`[n, classes]`) against their `targets`.
    pub fn add(&mut self, logits: &[f32], targets: &[i64], n: usize) {
        let v = self.classes;
        for (row, &t) in logits.chunks_exact(v).take(n).zip(targets) {
            let mut best = 0;
            for (j, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = j;
                }
            }
            if let Ok(t) = usize::try_from(t) {
                if t < v {
                    self.counts[t * v + best] += 1;
                }
            }
        }
    }
}

/// ValidationStart: an empty confusion matrix for the pass.
pub fn reset_confusion(mut cm: ResMut<ConfusionMatrix>) {
    cm.counts.iter_mut().for_each(|c| *c = 0);
}

fn classes(batch: &Batch) -> &[i64] {
    match &batch.targets {
        Targets::Classes(c) => c,
        Targets::Dense { .. } => panic!("classification needs class labels; checked when the run is built"),
    }
}

/// Loss (training): mean cross-entropy of the batch; writes d(loss / accumulate)/d(logits) to the output's
/// gradient buffer so an accumulation window averages its micro-batches.
pub fn classification_loss(
    graph: Res<Graph>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    mut task: ResMut<ClassificationTask>,
    clock: Res<Clock>,
    mut metrics: ResMut<Metrics>,
) {
    let (n, v) = (batch.size, task.num_classes);
    let targets = classes(&batch);
    let task = &mut *task;
    let probs = &mut task.probs[..n * v];
    let out = graph.output.0;
    let logits = &acts.values[out][..n * v];
    let loss = softmax_cross_entropy_forward(probs, logits, targets, n, v, &task.options)
        .expect("labels are checked against the class count when the run is built");
    let scale = 1.0 / clock.accumulate.max(1) as f32;
    softmax_cross_entropy_backward(&mut acts.grads[out][..n * v], probs, targets, n, v, &task.options, scale);
    metrics.last_loss = loss as f64;
    metrics.add_train("loss", loss as f64, n as f64);
}

/// Validation: loss, accuracy and top-k accuracy of the batch into the validation meters, and its predictions
/// into the confusion matrix.
pub fn classification_eval(
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    mut task: ResMut<ClassificationTask>,
    mut metrics: ResMut<Metrics>,
    confusion: Option<ResMut<ConfusionMatrix>>,
) {
    let (n, v) = (batch.size, task.num_classes);
    if n == 0 {
        return;
    }
    let targets = classes(&batch);
    let task = &mut *task;
    let logits = acts.output(&graph, n);
    let loss = softmax_cross_entropy_forward(&mut task.probs[..n * v], logits, targets, n, v, &task.options)
        .expect("labels are checked against the class count when the run is built");
    let top1 = top_k_correct(logits, targets, n, v, 1);
    if let Some(mut cm) = confusion {
        cm.add(logits, targets, n);
    }
    metrics.add_val("loss", loss as f64, n as f64);
    metrics.add_val("accuracy", top1 as f64 / n as f64, n as f64);
    if task.top_k > 1 && task.top_k <= v {
        let topk = top_k_correct(logits, targets, n, v, task.top_k);
        metrics.add_val(&format!("top{}_accuracy", task.top_k), topk as f64 / n as f64, n as f64);
    }
}
