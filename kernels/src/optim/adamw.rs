//! Adam with decoupled weight decay, numerically equivalent to `torch.optim.AdamW` (non-amsgrad,
//! single-tensor path).
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

use super::for_each_chunk4;
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

/// Scalars of one AdamW step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    decay: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    bias_correction2_sqrt: T,
    eps: T,
    neg_step_size: T,
}

/// One AdamW update of `param` in place, given its `grad`, first moment `exp_avg` and second moment
/// `exp_avg_sq` (both zero before step 1).
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
    let n = param.len();
    assert!(
        grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n,
        "adamw_step: param, grad, exp_avg and exp_avg_sq lengths differ"
    );
    assert!(step >= 1, "adamw_step: step is 1-based");
    // Python's `beta ** step` with a float step is C `pow`, hence powf rather than powi (which rounds
    // differently): keeps the f64 run within ulps of torch's.
    let t = step as f64;
    let bias_correction1 = 1.0 - cfg.beta1.powf(t);
    let bias_correction2 = 1.0 - cfg.beta2.powf(t);
    let c = Coeffs {
        decay: T::from_f64(1.0 - cfg.lr * cfg.weight_decay),
        one_minus_beta1: T::from_f64(1.0 - cfg.beta1),
        beta2: T::from_f64(cfg.beta2),
        one_minus_beta2: T::from_f64(1.0 - cfg.beta2),
        bias_correction2_sqrt: T::from_f64(bias_correction2.sqrt()),
        eps: T::from_f64(cfg.eps),
        neg_step_size: T::from_f64(-(cfg.lr / bias_correction1)),
    };
    // As in torch, the decay multiply is skipped when disabled (no rounding, no inf * 1 surprises).
    let kernel = if cfg.weight_decay != 0.0 { update::<T, true> } else { update::<T, false> };
    for_each_chunk4(param, grad, exp_avg, exp_avg_sq, |p, g, m, v| kernel(p, g, m, v, c));
}

/// The fused per-element loop over one chunk. Each line mirrors one torch tensor op, in torch's order, so
/// that the f32 rounding follows the reference.
#[inline(always)]
fn update_body<T: Float, const WD: bool>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    c: Coeffs<T>,
) {
    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()) {
        let mut pv = *p;
        if WD {
            pv *= c.decay; // param.mul_(1 - lr * wd)
        }
        let mv = *m + c.one_minus_beta1 * (g - *m); // exp_avg.lerp_(grad, 1 - beta1), weight < 0.5 branch
        let vv = *v * c.beta2 + c.one_minus_beta2 * g * g; // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
        let denom = vv.sqrt() / c.bias_correction2_sqrt + c.eps;
        pv += c.neg_step_size * mv / denom; // param.addcdiv_(exp_avg, denom, value=-step_size)
        *m = mv;
        *v = vv;
        *p = pv;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const WD: bool>(param: &mut [T], grad: &[T], exp_avg: &mut [T], exp_avg_sq: &mut [T], c: Coeffs<T>) => update_body
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::test_support::{check_trajectory, Reference};

    fn config(hp: &serde_json::Value) -> AdamWConfig {
        let f = |k: &str| hp[k].as_f64().unwrap_or_else(|| panic!("hyper_parameters.{k}"));
        assert_eq!(hp["amsgrad"], false, "amsgrad is not supported by adamw_step");
        assert_eq!(hp["maximize"], false);
        AdamWConfig {
            lr: f("lr"),
            beta1: hp["betas"][0].as_f64().unwrap(),
            beta2: hp["betas"][1].as_f64().unwrap(),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        }
    }

    fn run<T: Float>(cfg: &AdamWConfig, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let mut p: Vec<T> = init.iter().map(|&x| T::from_f64(x)).collect();
        let mut m = vec![T::ZERO; p.len()];
        let mut v = vec![T::ZERO; p.len()];
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            let g: Vec<T> = g.iter().map(|&x| T::from_f64(x)).collect();
            adamw_step(&mut p, &g, &mut m, &mut v, cfg, t as u64 + 1);
            out.push(p.iter().map(|x| x.to_f64()).collect());
        }
        out
    }

    fn check_case(name: &str) {
        let r = Reference::load();
        let case = r.case(name);
        let cfg = config(&case.hyper_parameters);
        let f32_run = run::<f32>(&cfg, &r.initial_params, &r.grads);
        let f64_run = run::<f64>(&cfg, &r.initial_params, &r.grads);
        check_trajectory(name, &f32_run, &f64_run, &case);
    }

    #[test]
    fn adamw_matches_torch() {
        check_case("adamw");
    }

    #[test]
    fn adamw_betas_eps_wd_matches_torch() {
        check_case("adamw_lr1e-2_betas");
    }

    /// Adam without weight decay is AdamW with weight_decay 0: the same kernel reproduces torch.optim.Adam.
    #[test]
    fn adam_as_adamw_without_decay_matches_torch() {
        check_case("adam");
    }

    /// Every non-amsgrad AdamW case in the reference file is covered by a test above.
    #[test]
    fn all_adamw_reference_cases_are_tested() {
        let r = Reference::load();
        for name in r.names_of_class("torch.optim.AdamW") {
            if r.case(&name).hyper_parameters["amsgrad"] == true {
                continue;
            }
            assert!(["adamw", "adamw_lr1e-2_betas"].contains(&name.as_str()), "untested AdamW case {name}");
        }
    }

    /// The rayon path (one call on a long slice) equals the sequential path (the same data fed in pieces below
    /// the threshold) bit for bit, over several steps.
    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        let n = 3 * super::super::PAR_THRESHOLD + 1234;
        assert!(n >= super::super::PAR_THRESHOLD);
        let piece = super::super::PAR_THRESHOLD / 2 - 7; // deliberately not aligned with PAR_CHUNK
        let cfg = AdamWConfig { lr: 1e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };
        let mut p_par: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut m_par = vec![0.0f32; n];
        let mut v_par = vec![0.0f32; n];
        let (mut p_seq, mut m_seq, mut v_seq) = (p_par.clone(), m_par.clone(), v_par.clone());
        for step in 1..=3u64 {
            let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11 + step as f32).cos()).collect();
            adamw_step(&mut p_par, &g, &mut m_par, &mut v_par, &cfg, step);
            let pieces =
                p_seq.chunks_mut(piece).zip(g.chunks(piece)).zip(m_seq.chunks_mut(piece)).zip(v_seq.chunks_mut(piece));
            for (((p, g), m), v) in pieces {
                adamw_step(p, g, m, v, &cfg, step);
            }
        }
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&p_par, &p_seq) && same(&m_par, &m_seq) && same(&v_par, &v_seq));
    }
}
