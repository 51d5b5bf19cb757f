//! Adam with decoupled weight decay, numerically equivalent to `torch.optim.AdamW` (non-amsgrad,
//! single-tensor path): the common special case of [`adam_step`](super::adam::adam_step), kept as its own
//! entry point with its own config.
//!
//! Per element, at 1-based step `t`, with coefficients computed in f64 as torch computes them in Python:
//! ```text
//! p  = p * (1 - lr * weight_decay)
//! m  = m + (1 - beta1) * (g - m)                    (torch's lerp)
//! v  = v * beta2 + (1 - beta2) * g * g
//! denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//! p  = p + (-(lr / (1 - beta1^t)) * m) / denom     (torch's addcdiv order)
//! ```
//! Parameters that must not be decayed (biases, norms) are passed with `weight_decay = 0`.

use super::adam::{adam_step, AdamConfig};
use crate::Float;

/// Hyper-parameters of [`adamw_step`], named and defaulted as in `torch.optim.AdamW`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay rate of the first moment (torch `betas[0]`).
    pub beta1: f64,
    /// Decay rate of the second moment (torch `betas[1]`).
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment, after the square root.
    pub eps: f64,
    /// Decoupled weight decay: the parameter is scaled by `1 - lr * weight_decay` before the Adam update.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl From<AdamWConfig> for AdamConfig {
    /// The same update as an [`AdamConfig`]: decoupled decay, no AMSGrad.
    fn from(c: AdamWConfig) -> Self {
        AdamConfig {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled_weight_decay: true,
            amsgrad: false,
        }
    }
}

/// One AdamW update of `param` in place, given its `grad`, first moment `exp_avg` and second moment
/// `exp_avg_sq` (both zero before step 1): [`adam_step`] with decoupled weight decay and without AMSGrad
/// (for AMSGrad call [`adam_step`] with `amsgrad: true` and the `max_exp_avg_sq` buffer).
///
/// `step` is the 1-based number of this optimizer step (it drives the bias corrections). All slices must have
/// the same length. Runs in parallel for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn adamw_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    cfg: &AdamWConfig,
    step: u64,
) {
    adam_step(param, grad, exp_avg, exp_avg_sq, &mut [], &AdamConfig::from(*cfg), step);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::test_support::*;

    fn run<T: Float>(name: &str) -> Vec<Vec<f64>> {
        let r = Reference::load();
        let hp = r.case(name).hyper_parameters;
        assert_eq!(hp["amsgrad"], false, "adamw_step has no AMSGrad");
        let (beta1, beta2) = hp_betas(&hp);
        let cfg = AdamWConfig {
            lr: hp_f64(&hp, "lr"),
            beta1,
            beta2,
            eps: hp_f64(&hp, "eps"),
            weight_decay: hp_f64(&hp, "weight_decay"),
        };
        let mut p: Vec<T> = to_t(&r.initial_params);
        let (mut m, mut v) = (vec![T::ZERO; p.len()], vec![T::ZERO; p.len()]);
        let mut out = Vec::new();
        for (t, g) in r.grads.iter().enumerate() {
            adamw_step(&mut p, &to_t(g), &mut m, &mut v, &cfg, t as u64 + 1);
            out.push(to_f64(&p));
        }
        out
    }

    fn check_case(name: &str) {
        let case = Reference::load().case(name);
        check_trajectory(name, &run::<f32>(name), &run::<f64>(name), &case);
    }

    #[test]
    fn adamw_matches_torch() {
        check_case("adamw");
    }

    #[test]
    fn adamw_betas_eps_wd_matches_torch() {
        check_case("adamw_lr1e-2_betas");
    }

    /// Adam without weight decay is AdamW with weight_decay 0: the same entry point reproduces torch.optim.Adam.
    #[test]
    fn adam_as_adamw_without_decay_matches_torch() {
        check_case("adam");
    }

    /// The rayon path (one call on a long slice) equals the sequential path (the same data fed in pieces below
    /// the threshold) bit for bit, over several steps.
    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        let cfg = AdamWConfig { lr: 1e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };
        check_parallel_matches_sequential("adamw", 2, |p, g, s, t| {
            let [m, v] = s else { unreachable!() };
            adamw_step(p, g, m, v, &cfg, t);
        });
    }
}
