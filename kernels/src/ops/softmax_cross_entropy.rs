//! Fused softmax + cross-entropy over class logits, mean over the batch: PyTorch's
//! `F.cross_entropy(logits, target, ignore_index=..., label_smoothing=..., reduction='mean')`.
//!
//! Fusing the two is what makes it stable: the loss is computed from the log-sum-exp
//! (`-log p_j = lse - x_j`), never as `log` of a probability that may have underflowed to 0, and the
//! gradient collapses to `p - target distribution`.

use rayon::prelude::*;

use super::par::{blocked_sum_rows_mut, rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Options of [`softmax_cross_entropy_forward`] / [`softmax_cross_entropy_backward`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrossEntropyOptions {
    /// Rows whose target equals this are skipped: no loss, no gradient, and not counted in the mean
    /// (PyTorch's `ignore_index`, there -100 by default; here `None` means no row is ignored).
    pub ignore_index: Option<i64>,
    /// Label smoothing `eps` in [0, 1]: the target distribution is `(1 - eps) * one_hot + eps / V`.
    pub label_smoothing: f64,
}

/// Errors detected by [`softmax_cross_entropy_forward`] before anything is written.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CrossEntropyError {
    /// A target that is neither a class index in `[0, classes)` nor the ignore index.
    #[error("target {label} of row {row} is not a class index in [0, {classes})")]
    LabelOutOfRange {
        /// Batch row of the bad target.
        row: usize,
        /// The target value.
        label: i64,
        /// Number of classes V.
        classes: usize,
    },
    /// `label_smoothing` outside [0, 1] (PyTorch rejects it too).
    #[error("label_smoothing must be in [0, 1], got {value}")]
    LabelSmoothingOutOfRange {
        /// The rejected value.
        value: f64,
    },
}

/// Whether `target` marks an ignored row under `opts`.
#[inline(always)]
fn is_ignored(target: i64, opts: &CrossEntropyOptions) -> bool {
    opts.ignore_index == Some(target)
}

/// Number of rows that take part in the mean.
fn count_valid(targets: &[i64], opts: &CrossEntropyOptions) -> usize {
    targets.iter().filter(|&&t| !is_ignored(t, opts)).count()
}

/// Softmax + cross-entropy forward. Writes the softmax probabilities (all rows, ignored ones included) and
/// returns the loss averaged over the rows that are not ignored:
/// `loss_i = (1 - eps) * (-log p[i, t_i]) + eps * mean_j(-log p[i, j])`.
///
/// logits: [B, V], targets: [B] (class indices), probs: [B, V] (output, kept for the backward).
///
/// If every row is ignored PyTorch returns NaN (0/0); this returns 0 (and the backward gives zero
/// gradients) so that such a batch leaves the parameters untouched instead of poisoning them.
/// The targets and options are validated before anything is written; on error `probs` is unchanged.
pub fn softmax_cross_entropy_forward<T: Float>(
    probs: &mut [T],
    logits: &[T],
    targets: &[i64],
    b: usize,
    v: usize,
    opts: &CrossEntropyOptions,
) -> Result<T, CrossEntropyError> {
    assert_eq!(logits.len(), b * v, "softmax_cross_entropy_forward: logits must be [B, V]");
    assert_eq!(probs.len(), b * v, "softmax_cross_entropy_forward: probs must be [B, V]");
    assert_eq!(targets.len(), b, "softmax_cross_entropy_forward: targets must be [B]");
    let eps = opts.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(CrossEntropyError::LabelSmoothingOutOfRange { value: eps });
    }
    for (row, &label) in targets.iter().enumerate() {
        if !is_ignored(label, opts) && (label < 0 || label as u64 >= v as u64) {
            return Err(CrossEntropyError::LabelOutOfRange { row, label, classes: v });
        }
    }
    if v == 0 {
        // Only reachable when every row is ignored (otherwise a target was out of range above).
        return Ok(T::ZERO);
    }
    let n_valid = count_valid(targets, opts);

    let (keep, smooth) = (T::from_f64(1.0 - eps), T::from_f64(eps));
    let inv_v = T::from_f64(1.0 / v as f64);
    let parallel = b > 1 && b * v >= PAR_MIN_ELEMS;
    // Row losses are summed in f64 over fixed row ranges (see blocked_sum_rows_mut): the loss is the same
    // bits whatever the thread count.
    let total = blocked_sum_rows_mut(probs, v, b, parallel, |first, prows| {
        let mut acc = 0.0f64;
        for (r, p) in prows.chunks_exact_mut(v).enumerate() {
            let i = first + r;
            let x = &logits[i * v..(i + 1) * v];
            // Max subtracted first (every exponent <= 0, the largest term exactly 1, so the sum is >= 1 and
            // its log finite); vectorised, with the sum in f64.
            let lse = super::softmax::softmax_row_lse(p, x);
            let t = targets[i];
            if is_ignored(t, opts) {
                continue;
            }
            let nll = lse - x[t as usize];
            let loss = if eps > 0.0 {
                // mean_j(-log p_j) = lse - mean_j(x_j)
                let mean_x = x.iter().fold(T::ZERO, |s, &xj| s + xj) * inv_v;
                keep * nll + smooth * (lse - mean_x)
            } else {
                nll
            };
            acc += loss.to_f64();
        }
        acc
    });
    if n_valid == 0 {
        return Ok(T::ZERO);
    }
    Ok(T::from_f64(total / n_valid as f64))
}

/// Softmax + cross-entropy backward: `dlogits = dloss * d(mean loss)/dlogits` (overwrites `dlogits`).
/// For a row that is not ignored that is `(p - (1 - eps) * one_hot(t) - eps / V) * dloss / n_valid`;
/// ignored rows (and every row when all are ignored) get 0.
///
/// probs: [B, V] (from the forward), targets: [B], dlogits: [B, V], dloss: scalar upstream gradient.
///
/// Panics on a target out of range; the forward has already reported it as an error.
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy_backward<T: Float>(
    dlogits: &mut [T],
    probs: &[T],
    targets: &[i64],
    b: usize,
    v: usize,
    opts: &CrossEntropyOptions,
    dloss: T,
) {
    assert_eq!(dlogits.len(), b * v, "softmax_cross_entropy_backward: dlogits must be [B, V]");
    assert_eq!(probs.len(), b * v, "softmax_cross_entropy_backward: probs must be [B, V]");
    assert_eq!(targets.len(), b, "softmax_cross_entropy_backward: targets must be [B]");
    if v == 0 {
        return;
    }
    let n_valid = count_valid(targets, opts);
    if n_valid == 0 {
        dlogits.fill(T::ZERO);
        return;
    }
    let eps = opts.label_smoothing;
    let scale = dloss / T::from_f64(n_valid as f64);
    let keep = T::from_f64(1.0 - eps);
    let smooth_per_class = T::from_f64(eps / v as f64);

    let row = |d: &mut [T], p: &[T], t: i64| {
        if is_ignored(t, opts) {
            d.fill(T::ZERO);
            return;
        }
        assert!(t >= 0 && (t as u64) < v as u64, "softmax_cross_entropy_backward: target {t} not in [0, {v})");
        for (d, &p) in d.iter_mut().zip(p) {
            *d = (p - smooth_per_class) * scale;
        }
        d[t as usize] -= keep * scale;
    };
    let rows = |(d, (p, t)): (&mut [T], (&[T], &[i64]))| {
        for ((d, p), &t) in d.chunks_exact_mut(v).zip(p.chunks_exact(v)).zip(t) {
            row(d, p, t);
        }
    };
    if b > 1 && b * v >= PAR_MIN_ELEMS {
        let r = rows_per_task(v);
        dlogits.par_chunks_mut(r * v).zip(probs.par_chunks(r * v).zip(targets.par_chunks(r))).for_each(rows);
    } else {
        rows((dlogits, (probs, targets)));
    }
}

/// Number of rows whose target is among the `k` largest logits of its row (top-1 / top-5 accuracy).
///
/// logits: [B, V], targets: [B]. A row counts when fewer than `k` logits are strictly larger than the
/// target's, so ties are resolved in the target's favour. Targets outside `[0, V)` (e.g. an ignore index)
/// and rows whose target logit is NaN never count.
pub fn top_k_correct<T: Float>(logits: &[T], targets: &[i64], b: usize, v: usize, k: usize) -> usize {
    assert_eq!(logits.len(), b * v, "top_k_correct: logits must be [B, V]");
    assert_eq!(targets.len(), b, "top_k_correct: targets must be [B]");
    if v == 0 || k == 0 {
        return 0;
    }
    let hit = |x: &[T], t: i64| -> bool {
        if t < 0 || t as u64 >= v as u64 {
            return false;
        }
        let xt = x[t as usize];
        #[allow(clippy::eq_op)]
        if xt != xt {
            return false;
        }
        x.iter().filter(|&&xj| xj > xt).take(k).count() < k
    };
    if b > 1 && b * v >= PAR_MIN_ELEMS {
        logits.par_chunks_exact(v).zip(targets.par_iter()).filter(|(x, &t)| hit(x, t)).count()
    } else {
        logits.chunks_exact(v).zip(targets).filter(|(x, &t)| hit(x, t)).count()
    }
}

/// The CUDA kernels of the fused loss (`softmax_cross_entropy.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "softmax_cross_entropy",
    code: include_str!("softmax_cross_entropy.cu"),
    kernels: &[
        "sce_probs_f32",
        "sce_probs_warp_f32",
        "sce_loss_f32",
        "sce_backward_f32",
        "sce_probs_f16",
        "sce_probs_warp_f16",
        "sce_loss_f16",
        "sce_backward_f16",
        "sce_probs_bf16",
        "sce_probs_warp_bf16",
        "sce_loss_bf16",
        "sce_backward_bf16",
    ],
};

/// Host side of `softmax_cross_entropy.cu`.
#[path = "softmax_cross_entropy_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;
    use crate::rng::Rng;

    /// Naive f64 reference from the definitions: p = e^x / sum e^x, -log p, the smoothed per-row loss,
    /// the mean over non-ignored rows, and the gradient (p - q) / n_valid with q the target distribution.
    fn reference(
        logits: &[f64],
        targets: &[i64],
        b: usize,
        v: usize,
        ignore: Option<i64>,
        eps: f64,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let mut probs = vec![0.0; b * v];
        let mut dlogits = vec![0.0; b * v];
        let mut total = 0.0;
        let mut n_valid = 0usize;
        for i in 0..b {
            let x = &logits[i * v..(i + 1) * v];
            let z: f64 = x.iter().map(|&xj| xj.exp()).sum();
            for j in 0..v {
                probs[i * v + j] = x[j].exp() / z;
            }
            if Some(targets[i]) == ignore {
                continue;
            }
            n_valid += 1;
            let t = targets[i] as usize;
            let neg_logp: Vec<f64> = (0..v).map(|j| -(probs[i * v + j].ln())).collect();
            total += (1.0 - eps) * neg_logp[t] + eps * neg_logp.iter().sum::<f64>() / v as f64;
        }
        for i in 0..b {
            if Some(targets[i]) == ignore {
                continue;
            }
            for j in 0..v {
                let q = eps / v as f64 + if j == targets[i] as usize { 1.0 - eps } else { 0.0 };
                dlogits[i * v + j] = (probs[i * v + j] - q) / n_valid as f64;
            }
        }
        (total / n_valid as f64, probs, dlogits)
    }

    fn opts(ignore: Option<i64>, eps: f64) -> CrossEntropyOptions {
        CrossEntropyOptions { ignore_index: ignore, label_smoothing: eps }
    }

    #[test]
    fn pytorch_example_values() {
        // logits [[1, 2, 0.5], [-1, 0, 3]], targets [1, 2]. By the definition (lse_0 - 2 + lse_1 - 3) / 2
        // this is 0.2651263439326872 (Python float64); the 0.2798644187818713 quoted in the brief does not
        // match these inputs. With label smoothing 0.1 the formula gives 0.4234596772660205.
        let logits = [1.0f64, 2.0, 0.5, -1.0, 0.0, 3.0];
        let targets = [1i64, 2];
        let (want, want_p, _) = reference(&logits, &targets, 2, 3, None, 0.0);
        assert!((want - 0.2651263439326872).abs() < 1e-15, "reference gives {want}");
        let (want_s, _, _) = reference(&logits, &targets, 2, 3, None, 0.1);
        assert!((want_s - 0.4234596772660205).abs() < 1e-15, "reference gives {want_s}");

        let mut p = [0.0f64; 6];
        let loss = softmax_cross_entropy_forward(&mut p, &logits, &targets, 2, 3, &opts(None, 0.0)).unwrap();
        assert!((loss - 0.2651263439326872).abs() < 1e-15);
        assert_close("probs", &p, &want_p, 1e-15, 1e-16);
        // Row 0 softmax: e^[1, 2, 0.5] / (e + e^2 + e^0.5), in Python float64.
        assert_close(
            "probs row 0",
            &p[..3],
            &[0.23122389762214907, 0.6285317192117625, 0.1402443831660885],
            1e-12,
            0.0,
        );
        let loss = softmax_cross_entropy_forward(&mut p, &logits, &targets, 2, 3, &opts(None, 0.1)).unwrap();
        assert!((loss - 0.4234596772660205).abs() < 1e-15);

        let mut p32 = [0.0f32; 6];
        let l32 = softmax_cross_entropy_forward(&mut p32, &to_f32(&logits), &targets, 2, 3, &opts(None, 0.0));
        assert!((l32.unwrap() as f64 - 0.2651263439326872).abs() < 1e-6);
    }

    fn random_case(seed: u64, b: usize, v: usize, ignore: Option<i64>) -> (Vec<f64>, Vec<i64>) {
        let logits = round_f32(&uniform(seed, b * v, -4.0, 4.0));
        let mut rng = Rng::new(seed + 1);
        let mut targets: Vec<i64> = (0..b).map(|_| rng.below(v as u64) as i64).collect();
        if let Some(ig) = ignore {
            targets[1] = ig;
        }
        (logits, targets)
    }

    #[test]
    fn matches_f64_reference() {
        // Small (sequential) and 64 x 1000 (parallel rows) cases, with and without smoothing and ignores.
        for (b, v) in [(7usize, 11usize), (64, 1000)] {
            for (ignore, eps) in [(None, 0.0), (None, 0.1), (Some(-100), 0.0), (Some(-100), 0.25), (Some(3), 0.1)] {
                let (logits, targets) = random_case(b as u64 * 31 + v as u64, b, v, ignore);
                let o = opts(ignore, eps);
                let (want, want_p, want_d) = reference(&logits, &targets, b, v, ignore, eps);
                let dloss = 0.75;
                let want_d: Vec<f64> = want_d.iter().map(|d| d * dloss).collect();

                let mut p = vec![0.0f64; b * v];
                let loss = softmax_cross_entropy_forward(&mut p, &logits, &targets, b, v, &o).unwrap();
                assert!((loss - want).abs() <= 1e-12 * want.abs(), "f64 loss {loss} vs {want}");
                assert_close("f64 probs", &p, &want_p, 1e-12, 1e-15);
                let mut d = vec![f64::NAN; b * v];
                softmax_cross_entropy_backward(&mut d, &p, &targets, b, v, &o, dloss);
                assert_close("f64 dlogits", &d, &want_d, 1e-12, 1e-15);

                let logits32 = to_f32(&logits);
                let mut p = vec![0.0f32; b * v];
                let loss = softmax_cross_entropy_forward(&mut p, &logits32, &targets, b, v, &o).unwrap();
                assert!((loss as f64 - want).abs() <= 1e-5 * want.abs(), "f32 loss {loss} vs {want}");
                assert_close("f32 probs", &p, &want_p, 1e-5, 1e-7);
                let mut d = vec![f32::NAN; b * v];
                softmax_cross_entropy_backward(&mut d, &p, &targets, b, v, &o, dloss as f32);
                assert_close("f32 dlogits", &d, &want_d, 1e-5, 1e-7);
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (b, v) = (4, 5);
        for (ignore, eps) in [(None, 0.0), (None, 0.2), (Some(-100), 0.0), (Some(-100), 0.3), (Some(0), 0.1)] {
            let (mut logits, targets) = random_case(9, b, v, ignore);
            let o = opts(ignore, eps);
            let dloss = 1.3;
            let mut p = vec![0.0; b * v];
            softmax_cross_entropy_forward(&mut p, &logits, &targets, b, v, &o).unwrap();
            let mut d = vec![0.0; b * v];
            softmax_cross_entropy_backward(&mut d, &p, &targets, b, v, &o, dloss);
            let mut scratch = vec![0.0; b * v];
            check_grad(&format!("dlogits ignore={ignore:?} eps={eps}"), &mut logits, &d, |x| {
                dloss * softmax_cross_entropy_forward(&mut scratch, x, &targets, b, v, &o).unwrap()
            });
        }
    }

    #[test]
    fn label_out_of_range_is_an_error_and_writes_nothing() {
        let logits = [0.0f32; 6];
        let mut p = [7.0f32; 6];
        for (targets, o, bad_row, bad) in [
            ([0i64, 3], opts(None, 0.0), 1usize, 3i64),
            ([-1, 0], opts(None, 0.0), 0, -1),
            ([-100, 1], opts(None, 0.0), 0, -100),
            ([1, -100], opts(Some(-1), 0.0), 1, -100),
        ] {
            let err = softmax_cross_entropy_forward(&mut p, &logits, &targets, 2, 3, &o).unwrap_err();
            assert_eq!(err, CrossEntropyError::LabelOutOfRange { row: bad_row, label: bad, classes: 3 });
            assert!(err.to_string().contains("not a class index"));
        }
        assert_eq!(p, [7.0; 6]);
        let err = softmax_cross_entropy_forward(&mut p, &logits, &[0, 1], 2, 3, &opts(None, 1.5)).unwrap_err();
        assert_eq!(err, CrossEntropyError::LabelSmoothingOutOfRange { value: 1.5 });
    }

    #[test]
    fn all_rows_ignored_gives_zero_loss_and_zero_gradient() {
        let logits = [1.0f64, 2.0, 3.0, 4.0];
        let targets = [-100i64, -100];
        let o = opts(Some(-100), 0.1);
        let mut p = [0.0; 4];
        assert_eq!(softmax_cross_entropy_forward(&mut p, &logits, &targets, 2, 2, &o).unwrap(), 0.0);
        // probs are still written.
        assert!((p[0] + p[1] - 1.0).abs() < 1e-15);
        let mut d = [f64::NAN; 4];
        softmax_cross_entropy_backward(&mut d, &p, &targets, 2, 2, &o, 1.0);
        assert_eq!(d, [0.0; 4]);
    }

    #[test]
    fn stable_for_extreme_logits() {
        // Huge logits would overflow a naive exp; the -1000 class underflows to probability 0, whose log
        // would be -inf, yet its -log p = lse - x is finite, so the smoothed loss stays finite.
        let logits = [1000.0f32, -1000.0, 0.0];
        let mut p = [0.0f32; 3];
        let loss = softmax_cross_entropy_forward(&mut p, &logits, &[0], 1, 3, &opts(None, 0.3)).unwrap();
        assert_eq!(p, [1.0, 0.0, 0.0]);
        // (1 - 0.3) * 0 + 0.3 * mean(0, 2000, 1000) = 300
        assert!((loss - 300.0).abs() < 1e-3, "{loss}");
        let mut d = [0.0f32; 3];
        softmax_cross_entropy_backward(&mut d, &p, &[0], 1, 3, &opts(None, 0.3), 1.0);
        assert!(d.iter().all(|x| x.is_finite()));
        assert!((d.iter().sum::<f32>()).abs() < 1e-6, "softmax gradients sum to 0 per row");
    }

    fn top_k_reference(logits: &[f64], targets: &[i64], v: usize, k: usize) -> usize {
        let mut hits = 0;
        for (x, &t) in logits.chunks(v).zip(targets) {
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap());
            if order[..k.min(v)].contains(&(t as usize)) {
                hits += 1;
            }
        }
        hits
    }

    #[test]
    fn top_k_counts() {
        let logits = [0.1f32, 0.5, 0.4, 3.0, 1.0, 2.0, 0.0, 0.0, 0.0];
        // Row 0: target is the argmax; row 1: target is third; row 2: all ties (counted); then out-of-range targets.
        assert_eq!(top_k_correct(&logits, &[1, 1, 2], 3, 3, 1), 2);
        assert_eq!(top_k_correct(&logits, &[1, 1, 2], 3, 3, 2), 2);
        assert_eq!(top_k_correct(&logits, &[1, 1, 2], 3, 3, 3), 3);
        assert_eq!(top_k_correct(&logits, &[1, -100, 7], 3, 3, 3), 1);
        assert_eq!(top_k_correct(&logits, &[1, 1, 2], 3, 3, 0), 0);
        // Random (distinct) logits, small and parallel-sized, against a sort-based reference.
        for (b, v, seed) in [(9usize, 10usize, 1u64), (100, 1000, 2)] {
            let (logits, targets) = random_case(seed, b, v, None);
            for k in [1, 5] {
                assert_eq!(
                    top_k_correct(&to_f32(&logits), &targets, b, v, k),
                    top_k_reference(&logits, &targets, v, k)
                );
            }
        }
    }
}
