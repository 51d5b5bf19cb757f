//! `regression`: mean squared error against dense float targets; validation loss, MSE, MAE and R^2.
//!
//! R^2 is computed over the whole validation set, not averaged over batches: the task keeps per-column
//! running statistics ([`R2Accumulator`]) that the validation batches feed and a `ValidationEnd` system
//! ([`regression_r2`], before `Summarize`) turns into the metric and resets.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, Graph, Metrics, Targets};
use ecstrain_kernels::ops::mse::{mse_backward, mse_forward};
use ecstrain_kernels::Float;

use super::reconstruction::{recon_loss, ReconLoss};
use crate::graph::Activations;

/// The valid dense target rows of the batch (`[size, target_len]`).
pub(crate) fn dense_targets<'a>(batch: &'a Batch, task: &str) -> &'a [f32] {
    match &batch.targets {
        Targets::Dense { values, target_len } => &values[..batch.size * target_len],
        Targets::Classes(_) => panic!("{task} needs dense float targets; checked when the run is built"),
    }
}

/// Running per-column statistics of a validation pass for R^2 (sklearn's `r2_score`, `uniform_average`).
///
/// Per column it keeps the mean and the sum of squared deviations of the targets (merged batch by batch with
/// Chan et al.'s parallel update, which avoids the cancellation of `sum y^2 - (sum y)^2 / n`) and the sum
/// of squared errors, all in f64. Buffers are sized once for the column count.
#[derive(Clone, Debug, PartialEq)]
pub struct R2Accumulator {
    /// Samples seen.
    pub count: f64,
    /// Per column: mean of the targets seen.
    pub mean: Vec<f64>,
    /// Per column: sum of squared deviations of the targets from `mean` (SS_tot).
    pub m2: Vec<f64>,
    /// Per column: sum of squared errors (SS_res).
    pub sse: Vec<f64>,
    batch_mean: Vec<f64>,
    batch_m2: Vec<f64>,
}

impl R2Accumulator {
    /// An empty accumulator for `cols` outputs.
    pub fn new(cols: usize) -> Self {
        R2Accumulator {
            count: 0.0,
            mean: vec![0.0; cols],
            m2: vec![0.0; cols],
            sse: vec![0.0; cols],
            batch_mean: vec![0.0; cols],
            batch_m2: vec![0.0; cols],
        }
    }

    /// Adds `n` samples. pred, target: [n, cols].
    pub fn add<T: Float>(&mut self, pred: &[T], target: &[T], n: usize) {
        let k = self.mean.len();
        assert_eq!(pred.len(), n * k, "R2Accumulator::add: pred length");
        assert_eq!(target.len(), n * k, "R2Accumulator::add: target length");
        if n == 0 || k == 0 {
            return;
        }
        self.batch_mean.fill(0.0);
        self.batch_m2.fill(0.0);
        for row in target.chunks_exact(k) {
            for (m, &y) in self.batch_mean.iter_mut().zip(row) {
                *m += y.to_f64();
            }
        }
        for m in &mut self.batch_mean {
            *m /= n as f64;
        }
        for (prow, trow) in pred.chunks_exact(k).zip(target.chunks_exact(k)) {
            for j in 0..k {
                let y = trow[j].to_f64();
                let d = y - self.batch_mean[j];
                self.batch_m2[j] += d * d;
                let e = prow[j].to_f64() - y;
                self.sse[j] += e * e;
            }
        }
        let (na, nb) = (self.count, n as f64);
        let total = na + nb;
        for j in 0..k {
            let delta = self.batch_mean[j] - self.mean[j];
            self.mean[j] += delta * nb / total;
            self.m2[j] += self.batch_m2[j] + delta * delta * na * nb / total;
        }
        self.count = total;
    }

    /// R^2 averaged uniformly over the columns; a column with no target variance scores 1 if predicted
    /// exactly and 0 otherwise (sklearn's `force_finite`). `None` before any sample.
    pub fn r2(&self) -> Option<f64> {
        if self.count == 0.0 || self.mean.is_empty() {
            return None;
        }
        let sum: f64 = self
            .m2
            .iter()
            .zip(&self.sse)
            .map(|(&tot, &res)| match (tot != 0.0, res != 0.0) {
                (true, _) => 1.0 - res / tot,
                (false, true) => 0.0,
                (false, false) => 1.0,
            })
            .sum();
        Some(sum / self.mean.len() as f64)
    }

    /// Forgets every sample (keeps the buffers).
    pub fn reset(&mut self) {
        self.count = 0.0;
        for v in [&mut self.mean, &mut self.m2, &mut self.sse] {
            v.fill(0.0);
        }
    }
}

/// State of the regression task.
#[derive(Resource, Debug)]
pub struct RegressionTask {
    /// Values per sample of the output and the targets.
    pub outputs: usize,
    /// R^2 statistics of the current validation pass.
    pub r2: R2Accumulator,
}

impl RegressionTask {
    /// A task for `outputs` values per sample.
    pub fn new(outputs: usize) -> Self {
        RegressionTask { outputs, r2: R2Accumulator::new(outputs) }
    }
}

/// Loss (training): MSE over all elements of the batch; writes d(loss / accumulate)/d(out).
pub fn regression_loss(
    graph: Res<Graph>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    task: Res<RegressionTask>,
    clock: Res<Clock>,
    mut metrics: ResMut<Metrics>,
) {
    let n = batch.size;
    if n == 0 {
        return;
    }
    let len = n * task.outputs;
    let t = dense_targets(&batch, "regression");
    let out = graph.output.0;
    let acts = &mut *acts;
    let pred = &acts.values[out][..len];
    let loss = mse_forward(pred, t) as f64;
    mse_backward(&mut acts.grads[out][..len], pred, t, 1.0 / clock.accumulate.max(1) as f32);
    metrics.last_loss = loss;
    metrics.add_train("loss", loss, n as f64);
}

/// Validation: loss, mse and mae of the batch into the meters; feeds the R^2 statistics.
pub fn regression_eval(
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    mut task: ResMut<RegressionTask>,
    mut metrics: ResMut<Metrics>,
) {
    let n = batch.size;
    if n == 0 {
        return;
    }
    let t = dense_targets(&batch, "regression");
    let pred = acts.output(&graph, n);
    let mse = recon_loss(ReconLoss::Mse, pred, t);
    let mae = recon_loss(ReconLoss::L1, pred, t);
    task.r2.add(pred, t, n);
    let w = n as f64;
    metrics.add_val("loss", mse, w);
    metrics.add_val("mse", mse, w);
    metrics.add_val("mae", mae, w);
}

/// ValidationEnd (before `Summarize`): R^2 of the whole pass into the `r2` meter; resets the statistics.
pub fn regression_r2(mut task: ResMut<RegressionTask>, mut metrics: ResMut<Metrics>) {
    if let Some(r2) = task.r2.r2() {
        metrics.add_val("r2", r2, 1.0);
    }
    task.r2.reset();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sklearn's r2_score(y, p) (uniform_average), two-pass in f64.
    fn reference(pred: &[f64], target: &[f64], k: usize) -> f64 {
        let n = target.len() / k;
        let mut total = 0.0;
        for j in 0..k {
            let mean = (0..n).map(|i| target[i * k + j]).sum::<f64>() / n as f64;
            let tot: f64 = (0..n).map(|i| (target[i * k + j] - mean).powi(2)).sum();
            let res: f64 = (0..n).map(|i| (target[i * k + j] - pred[i * k + j]).powi(2)).sum();
            total += if tot != 0.0 {
                1.0 - res / tot
            } else if res != 0.0 {
                0.0
            } else {
                1.0
            };
        }
        total / k as f64
    }

    #[test]
    fn hand_checked_r2() {
        // y = [1, 2, 3, 4], p = [1, 2, 3, 5]: SS_tot = 5, SS_res = 1.
        let mut a = R2Accumulator::new(1);
        assert_eq!(a.r2(), None);
        a.add(&[1.0f32, 2.0], &[1.0, 2.0], 2);
        a.add(&[3.0f32, 5.0], &[3.0, 4.0], 2);
        assert!((a.r2().unwrap() - 0.8).abs() < 1e-12);
        a.reset();
        assert_eq!(a.r2(), None);
        // Constant columns: exact -> 1, inexact -> 0; averaged with a perfect column.
        let mut a = R2Accumulator::new(3);
        a.add(&[2.0f64, 2.0, 0.0, 2.0, 1.5, 1.0], &[2.0, 1.0, 0.0, 2.0, 1.0, 1.0], 2);
        assert_eq!(a.r2().unwrap(), (1.0 + 0.0 + 1.0) / 3.0);
    }

    #[test]
    fn batched_r2_matches_the_whole_set() {
        let mut rng = ecstrain_kernels::rng::Rng::new(7);
        let (n, k) = (103, 4);
        // Offsets far from zero exercise the cancellation the merge avoids.
        let target: Vec<f64> = (0..n * k).map(|i| 1e4 * (i % k) as f64 + rng.normal()).collect();
        let pred: Vec<f64> = target.iter().map(|&y| y + 0.3 * rng.normal()).collect();
        let want = reference(&pred, &target, k);
        for batch in [1, 7, 64, 103] {
            let mut a = R2Accumulator::new(k);
            for (p, t) in pred.chunks(batch * k).zip(target.chunks(batch * k)) {
                a.add(p, t, t.len() / k);
            }
            let got = a.r2().unwrap();
            assert!((got - want).abs() < 1e-10, "batch {batch}: {got} vs {want}");
        }
    }

    #[test]
    fn mse_gradient_matches_central_differences() {
        let mut rng = ecstrain_kernels::rng::Rng::new(3);
        let pred: Vec<f64> = (0..12).map(|_| rng.normal()).collect();
        let target: Vec<f64> = (0..12).map(|_| rng.normal()).collect();
        let mut d = vec![0.0; 12];
        mse_backward(&mut d, &pred, &target, 0.5);
        for i in 0..12 {
            let (mut a, mut b) = (pred.clone(), pred.clone());
            a[i] += 1e-6;
            b[i] -= 1e-6;
            let fd = 0.5 * (mse_forward(&a, &target) - mse_forward(&b, &target)) / 2e-6;
            assert!((fd - d[i]).abs() < 1e-6, "[{i}] {} vs {fd}", d[i]);
        }
    }
}
