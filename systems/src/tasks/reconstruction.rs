//! `reconstruction`: the model reproduces its input (autoencoders, VQ-VAEs) or dense targets of the same size.
//!
//! Training loss: `recon_weight * recon + vq_weight * aux`, where `recon` is the mean over all elements of
//! `(out - target)^2` (`F.mse_loss`) or `|out - target|` (`F.l1_loss`) and `aux` the graph's auxiliary losses
//! ([`Activations::aux_loss`], a VQ layer's codebook + commitment loss; 0 without one). The task writes
//! d(loss / accumulate)/d(out) and sets [`Activations::aux_weight`] to `vq_weight / accumulate` before the
//! backward, which adds the auxiliary gradients scaled by it. Validation: loss, recon_loss, mse, PSNR and
//! (for `[C, H, W]` outputs) SSIM, each image weighted equally.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, Graph, Metrics, Targets};
use ecstrain_kernels::metrics::{psnr_sum, ssim_scratch_len, ssim_sum};
use ecstrain_kernels::ops::l1_loss::{l1_loss_backward, l1_loss_forward};
use ecstrain_kernels::ops::mse::{mse_backward, mse_forward};
use ecstrain_kernels::Float;

use crate::graph::exec::AuxStats;
use crate::graph::Activations;
use crate::logging::plots::samples::ReconstructionSamples;

/// The elementwise reconstruction loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconLoss {
    /// Mean squared error (`F.mse_loss`).
    Mse,
    /// Mean absolute error (`F.l1_loss`).
    L1,
}

impl ReconLoss {
    /// Names accepted by `run.recon_loss`.
    pub const NAMES: [&'static str; 2] = ["mse", "l1"];

    /// Parses `run.recon_loss` (case-insensitive).
    pub fn parse(name: &str) -> Result<ReconLoss, String> {
        match name.to_ascii_lowercase().as_str() {
            "mse" => Ok(ReconLoss::Mse),
            "l1" => Ok(ReconLoss::L1),
            _ => Err(format!(
                "run.recon_loss: unknown reconstruction loss `{name}`; valid choices: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// `mean_i loss(pred[i] - target[i])` over all elements: squared error for [`ReconLoss::Mse`], absolute
/// error for [`ReconLoss::L1`], accumulated in f64. pred, target: [N] (any shape, flattened). 0 when empty.
pub fn recon_loss<T: Float>(kind: ReconLoss, pred: &[T], target: &[T]) -> f64 {
    assert_eq!(pred.len(), target.len(), "recon_loss: pred and target lengths differ");
    match kind {
        ReconLoss::Mse => mse_forward(pred, target).to_f64(),
        ReconLoss::L1 => l1_loss_forward(pred, target),
    }
}

/// Gradient of `scale * recon_loss(kind, pred, target)` with respect to `pred` (overwrites `dpred`):
/// `scale * 2 (p - t) / N` for MSE, `scale * sign(p - t) / N` for L1 (0 where `p == t`, as PyTorch's sign).
pub fn recon_loss_backward<T: Float>(kind: ReconLoss, dpred: &mut [T], pred: &[T], target: &[T], scale: T) {
    assert_eq!(pred.len(), target.len(), "recon_loss_backward: pred and target lengths differ");
    assert_eq!(dpred.len(), pred.len(), "recon_loss_backward: dpred length");
    match kind {
        ReconLoss::Mse => mse_backward(dpred, pred, target, scale),
        ReconLoss::L1 => l1_loss_backward(dpred, pred, target, scale),
    }
}

/// Where the reconstruction target comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconTarget {
    /// The batch input itself (an autoencoder).
    Input,
    /// The dataset's dense targets.
    Dense,
}

/// State of the reconstruction task: options and the SSIM scratch (planned once).
#[derive(Resource, Debug)]
pub struct ReconstructionTask {
    /// Elementwise loss.
    pub loss: ReconLoss,
    /// Weight of the reconstruction term.
    pub recon_weight: f64,
    /// Weight of the graph's auxiliary (VQ) losses.
    pub vq_weight: f64,
    /// Peak value for PSNR and SSIM.
    pub data_range: f64,
    /// Input or dense targets.
    pub target: ReconTarget,
    /// Values per sample of the output (and of the target).
    pub numel: usize,
    /// `(C, H, W)` when the output is an image: SSIM is reported.
    pub image: Option<(usize, usize, usize)>,
    /// SSIM scratch, [`ssim_scratch_len`] values (empty without `image`).
    pub ssim_scratch: Vec<f64>,
}

impl ReconstructionTask {
    /// A task for outputs of per-sample shape `output_shape`.
    pub fn new(
        loss: ReconLoss,
        recon_weight: f64,
        vq_weight: f64,
        data_range: f64,
        target: ReconTarget,
        output_shape: &[usize],
    ) -> Self {
        let image = match *output_shape {
            [c, h, w] if c >= 1 && h >= 1 && w >= 1 => Some((c, h, w)),
            _ => None,
        };
        let ssim_scratch = image.map_or(Vec::new(), |(c, h, w)| vec![0.0; ssim_scratch_len(c, h, w)]);
        ReconstructionTask {
            loss,
            recon_weight,
            vq_weight,
            data_range,
            target,
            numel: output_shape.iter().product(),
            image,
            ssim_scratch,
        }
    }
}

/// The valid target rows of the batch for a task with `numel` values per sample.
fn target(batch: &Batch, kind: ReconTarget, numel: usize) -> &[f32] {
    let len = batch.size * numel;
    match (kind, &batch.targets) {
        (ReconTarget::Input, _) => &batch.inputs[..len],
        (ReconTarget::Dense, Targets::Dense { values, .. }) => &values[..len],
        (ReconTarget::Dense, Targets::Classes(_)) => {
            panic!("reconstruction with dense targets got class labels; checked when the run is built")
        }
    }
}

/// `(sum of auxiliary losses, mean perplexity)` when the graph has auxiliary ops.
fn aux_summary(aux: &[Option<AuxStats>]) -> Option<(f64, f64)> {
    let (mut loss, mut perplexity, mut count) = (0.0, 0.0, 0usize);
    for a in aux.iter().flatten() {
        loss += a.loss;
        perplexity += a.perplexity;
        count += 1;
    }
    (count > 0).then(|| (loss, perplexity / count as f64))
}

/// Loss (training): the weighted reconstruction + auxiliary loss; writes d(loss / accumulate)/d(out) to the
/// output's gradient buffer and sets the auxiliary gradient weight for the backward.
pub fn reconstruction_loss(
    graph: Res<Graph>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    task: Res<ReconstructionTask>,
    clock: Res<Clock>,
    mut metrics: ResMut<Metrics>,
) {
    let n = batch.size;
    let len = n * task.numel;
    let acc = clock.accumulate.max(1) as f64;
    acts.aux_weight = (task.vq_weight / acc) as f32;
    if n == 0 {
        return;
    }
    let t = target(&batch, task.target, task.numel);
    let out = graph.output.0;
    let acts = &mut *acts;
    let pred = &acts.values[out][..len];
    let recon = recon_loss(task.loss, pred, t);
    recon_loss_backward(task.loss, &mut acts.grads[out][..len], pred, t, (task.recon_weight / acc) as f32);
    let aux = aux_summary(&acts.aux);
    let total = task.recon_weight * recon + task.vq_weight * aux.map_or(0.0, |a| a.0);
    metrics.last_loss = total;
    let w = n as f64;
    metrics.add_train("loss", total, w);
    if let Some((vq, perplexity)) = aux {
        metrics.add_train("recon_loss", recon, w);
        metrics.add_train("vq_loss", vq, w);
        metrics.add_train("perplexity", perplexity, w);
    }
}

/// Validation: loss, recon_loss, mse, PSNR, SSIM (image outputs) and the auxiliary statistics of the batch.
pub fn reconstruction_eval(
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    mut task: ResMut<ReconstructionTask>,
    mut metrics: ResMut<Metrics>,
) {
    let n = batch.size;
    if n == 0 {
        return;
    }
    let task = &mut *task;
    let t = target(&batch, task.target, task.numel);
    let pred = acts.output(&graph, n);
    let recon = recon_loss(task.loss, pred, t);
    let mse = match task.loss {
        ReconLoss::Mse => recon,
        ReconLoss::L1 => recon_loss(ReconLoss::Mse, pred, t),
    };
    let aux = aux_summary(&acts.aux);
    let total = task.recon_weight * recon + task.vq_weight * aux.map_or(0.0, |a| a.0);
    let w = n as f64;
    metrics.add_val("loss", total, w);
    metrics.add_val("recon_loss", recon, w);
    metrics.add_val("mse", mse, w);
    metrics.add_val("psnr", psnr_sum(pred, t, n, task.numel, task.data_range) / w, w);
    if let Some((c, h, wd)) = task.image {
        let s = ssim_sum(pred, t, n, c, h, wd, task.data_range, &mut task.ssim_scratch);
        metrics.add_val("ssim", s / w, w);
    }
    if let Some((vq, perplexity)) = aux {
        metrics.add_val("vq_loss", vq, w);
        metrics.add_val("perplexity", perplexity, w);
    }
}

/// ValidationStart: a new pass keeps its own first samples.
pub fn reset_reconstruction_samples(mut samples: ResMut<ReconstructionSamples>) {
    samples.kept = 0;
}

/// Validation: keeps the first samples of the pass and their reconstructions (`val_reconstructions.png`).
pub fn keep_reconstruction_samples(
    graph: Res<Graph>,
    acts: Res<Activations>,
    batch: Res<Batch>,
    task: Res<ReconstructionTask>,
    mut samples: ResMut<ReconstructionSamples>,
) {
    let n = batch.size;
    if samples.kept == 0 && n > 0 {
        samples.keep_first(target(&batch, task.target, task.numel), acts.output(&graph, n), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = ecstrain_kernels::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() * 4.0 - 2.0).collect()
    }

    #[test]
    fn parses_names_and_lists_the_valid_ones() {
        assert_eq!(ReconLoss::parse("MSE").unwrap(), ReconLoss::Mse);
        assert_eq!(ReconLoss::parse("l1").unwrap(), ReconLoss::L1);
        let e = ReconLoss::parse("huber").unwrap_err();
        assert!(e.contains("huber") && e.contains("mse, l1"), "{e}");
    }

    #[test]
    fn hand_checked_values() {
        let p = [1.0f32, 2.0, 3.0, 4.0];
        let t = [1.0f32, 0.0, 4.0, 0.0];
        assert_eq!(recon_loss(ReconLoss::Mse, &p, &t), 5.25);
        assert_eq!(recon_loss(ReconLoss::L1, &p, &t), 1.75);
        let mut d = [9.0f32; 4];
        recon_loss_backward(ReconLoss::L1, &mut d, &p, &t, 2.0);
        assert_eq!(d, [0.0, 0.5, -0.5, 0.5]);
        recon_loss_backward(ReconLoss::Mse, &mut d, &p, &t, 2.0);
        assert_eq!(d, [0.0, 2.0, -1.0, 4.0]);
        assert_eq!(recon_loss::<f32>(ReconLoss::L1, &[], &[]), 0.0);
    }

    #[test]
    fn gradient_matches_central_differences() {
        for kind in [ReconLoss::Mse, ReconLoss::L1] {
            let pred = data(1, 23);
            let target = data(2, 23);
            let scale = 0.7;
            let mut d = vec![0.0f64; pred.len()];
            recon_loss_backward(kind, &mut d, &pred, &target, scale);
            let h = 1e-6;
            for i in 0..pred.len() {
                let (mut a, mut b) = (pred.clone(), pred.clone());
                a[i] += h;
                b[i] -= h;
                let fd = scale * (recon_loss(kind, &a, &target) - recon_loss(kind, &b, &target)) / (2.0 * h);
                assert!((fd - d[i]).abs() < 1e-6, "{kind:?} [{i}]: analytic {} vs numeric {fd}", d[i]);
            }
        }
    }

    #[test]
    fn aux_summary_averages_perplexities() {
        assert_eq!(aux_summary(&[None, None]), None);
        let a = [Some(AuxStats { loss: 1.0, perplexity: 4.0 }), None, Some(AuxStats { loss: 0.5, perplexity: 8.0 })];
        assert_eq!(aux_summary(&a), Some((1.5, 6.0)));
    }

    #[test]
    fn plans_ssim_scratch_only_for_images() {
        let t = ReconstructionTask::new(ReconLoss::Mse, 1.0, 1.0, 1.0, ReconTarget::Input, &[64]);
        assert!(t.image.is_none() && t.ssim_scratch.is_empty() && t.numel == 64);
        let t = ReconstructionTask::new(ReconLoss::Mse, 1.0, 1.0, 1.0, ReconTarget::Input, &[3, 8, 8]);
        assert_eq!(t.image, Some((3, 8, 8)));
        assert_eq!(t.ssim_scratch.len(), ssim_scratch_len(3, 8, 8));
        assert_eq!(t.numel, 192);
    }
}
