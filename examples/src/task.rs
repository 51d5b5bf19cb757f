//! Task `margin_classification`: torch's `nn.MultiMarginLoss` (p = 1) on the model's logits,
//! `loss_i = sum_{j != y_i} max(0, margin - x_{y_i} + x_j) / classes`, averaged over the batch; validation
//! reports `loss` and `accuracy` (the fitness) and fills the engine's [`ConfusionMatrix`], which the plots
//! draw as `confusion_matrix.png`. A task is a resource for its state plus a loss system in the train step
//! and a metric system in the validation step, both in `StepSet::Loss`.

use bevy_ecs::prelude::*;
use ecstrain::components::{Batch, Clock, Graph, Metrics, Targets};
use ecstrain::engine::registry::{TaskContext, TaskEntry};
use ecstrain::engine::App;
use ecstrain::systems::data::TargetSpec;
use ecstrain::systems::graph::Activations;
use ecstrain::systems::sets::{StepSet, TrainStep, ValidationStart, ValidationStep};
use ecstrain::systems::tasks::classification::{reset_confusion, ConfusionMatrix};

/// The task's settings.
#[derive(Resource)]
pub struct MarginTask {
    /// Classes (the model's outputs).
    pub classes: usize,
    /// The margin (torch's default 1).
    pub margin: f32,
}

fn labels(batch: &Batch) -> &[i64] {
    match &batch.targets {
        Targets::Classes(c) => c,
        Targets::Dense { .. } => unreachable!("checked at install: the targets are class labels"),
    }
}

/// The batch's mean loss, accumulating `d loss / d logits * scale` into `grad` when given.
fn margin_loss(logits: &[f32], y: &[i64], task: &MarginTask, mut grad: Option<&mut [f32]>, scale: f32) -> f64 {
    let (n, v) = (y.len(), task.classes);
    let mut total = 0.0f64;
    let unit = scale / (v as f32 * n as f32);
    for (i, (row, &t)) in logits.chunks_exact(v).zip(y).enumerate() {
        let t = t as usize;
        for j in (0..v).filter(|&j| j != t) {
            let hinge = task.margin - row[t] + row[j];
            if hinge > 0.0 {
                total += hinge as f64;
                if let Some(g) = grad.as_deref_mut() {
                    g[i * v + j] += unit;
                    g[i * v + t] -= unit;
                }
            }
        }
    }
    total / (v as f64 * n as f64)
}

/// Loss (training): the loss of the batch, and its gradient (divided by the accumulation steps) into the
/// output's gradient buffer, which the backward pass reads.
pub fn margin_train(
    graph: Res<Graph>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    task: Res<MarginTask>,
    clock: Res<Clock>,
    mut metrics: ResMut<Metrics>,
) {
    let (n, v, out) = (batch.size, task.classes, graph.output.0);
    let acts = &mut *acts;
    let grad = &mut acts.grads[out][..n * v];
    grad.fill(0.0);
    let scale = 1.0 / clock.accumulate.max(1) as f32;
    let loss = margin_loss(&acts.values[out][..n * v], labels(&batch), &task, Some(grad), scale);
    metrics.last_loss = loss;
    metrics.add_train("loss", loss, n as f64);
}

/// Validation: loss and accuracy of the batch, and its predictions into the confusion matrix.
pub fn margin_eval(
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    task: Res<MarginTask>,
    mut metrics: ResMut<Metrics>,
    mut confusion: ResMut<ConfusionMatrix>,
) {
    let (n, v) = (batch.size, task.classes);
    if n == 0 {
        return;
    }
    let logits = acts.output(&graph, n);
    let y = labels(&batch);
    let loss = margin_loss(logits, y, &task, None, 1.0);
    confusion.add(logits, y, n);
    let correct = logits
        .chunks_exact(v)
        .zip(y)
        .filter(|(row, &t)| {
            let best = row.iter().enumerate().fold(0, |b, (j, &x)| if x > row[b] { j } else { b });
            best == t as usize
        })
        .count();
    metrics.add_val("loss", loss, n as f64);
    metrics.add_val("accuracy", correct as f64 / n as f64, n as f64);
}

/// Checks that the model and the data fit the task, then installs it.
fn install(app: &mut App, ctx: &TaskContext) -> Result<(), String> {
    let [classes] = *ctx.output_shape else {
        return Err(format!("margin_classification needs a model output [classes], got {:?}", ctx.output_shape));
    };
    for ds in [Some(ctx.train), ctx.val].into_iter().flatten() {
        match ds.target_spec() {
            TargetSpec::Classes { num_classes } if num_classes <= classes => {}
            other => {
                return Err(format!(
                    "margin_classification needs labels below {classes}; {} has {other:?}",
                    ds.describe()
                ))
            }
        }
    }
    app.insert_resource(MarginTask { classes, margin: 1.0 });
    // The engine's confusion matrix, cleared before every validation pass; the plots draw it.
    app.insert_resource(ConfusionMatrix::new(classes));
    app.add_systems(ValidationStart, reset_confusion);
    app.add_systems(TrainStep, margin_train.in_set(StepSet::Loss));
    app.add_systems(ValidationStep, margin_eval.in_set(StepSet::Loss));
    Ok(())
}

/// Registers `margin_classification` (fitness: accuracy, larger is better).
pub fn register(app: &mut App) {
    app.registry.register_task(
        "margin_classification",
        TaskEntry {
            install,
            fitness: ("accuracy", true),
            doc: "multi-class hinge loss (torch MultiMarginLoss); accuracy (ecstrain-examples)",
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torch_multi_margin_loss() {
        // torch.nn.MultiMarginLoss()(tensor([[0.1, 0.2, 0.4, 0.8]]), tensor([3])) = 0.325 (the torch docs' example)
        let task = MarginTask { classes: 4, margin: 1.0 };
        let loss = margin_loss(&[0.1, 0.2, 0.4, 0.8], &[3], &task, None, 1.0);
        assert!((loss - 0.325).abs() < 1e-6, "{loss}");
    }
}
