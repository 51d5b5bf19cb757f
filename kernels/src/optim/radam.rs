//! RAdam (rectified Adam), numerically equivalent to `torch.optim.RAdam` (single-tensor path), with coupled
//! or decoupled (RAdamW) weight decay.
//!
//! At 1-based step `t`, with `rho_inf = 2 / (1 - beta2) - 1` and
//! `rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)`, per element:
//! ```text
//! p = p * (1 - lr * weight_decay)            (decoupled)        g = g + weight_decay * p   (coupled)
//! m = lerp(m, g, 1 - beta1)
//! v = v * beta2 + (1 - beta2) * g * g
//! m_hat = m / (1 - beta1^t)
//! rho_t > 5:  p = p - m_hat * lr * (reciprocal(sqrt(v) + eps) * sqrt(1 - beta2^t)) * rect_t
//! otherwise:  p = p - m_hat * lr                 (the un-adapted update while the variance is intractable)
//! rect_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
//! ```
//! The adaptive term is torch's `sqrt(bc2) / tensor`, which Python evaluates as `tensor.reciprocal() * sqrt(bc2)`.

use super::{check_len, for_each_chunk4, LerpWeight};
use crate::Float;

/// Hyper-parameters of [`radam_step`], named as in `torch.optim.RAdam`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RadamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay rate of the first moment (torch `betas[0]`).
    pub beta1: f64,
    /// Decay rate of the second moment (torch `betas[1]`).
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient, or (decoupled) a shrink of the parameter.
    pub weight_decay: f64,
    /// Decay the parameter by `1 - lr * weight_decay` instead of adding an L2 term (RAdamW).
    pub decoupled_weight_decay: bool,
}

impl Default for RadamConfig {
    /// torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled_weight_decay: false }
    }
}

/// The rectification factor of step `t` (1-based), or `None` while `rho_t <= 5` (torch's switch).
pub fn rectification(beta2: f64, step: u64) -> Option<f64> {
    let t = step as f64;
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    let rho_t = rho_inf - 2.0 * t * beta2.powf(t) / (1.0 - beta2.powf(t));
    (rho_t > 5.0)
        .then(|| ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).powf(0.5))
}

/// Scalars of one RAdam step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    decay: T,
    weight_decay: T,
    lerp: LerpWeight<T>,
    beta2: T,
    one_minus_beta2: T,
    bias_correction1: T,
    lr: T,
    bias_correction2_sqrt: T,
    eps: T,
    rect: T,
}

/// One RAdam update of `param` in place, given its `grad`, first moment `exp_avg` and second moment
/// `exp_avg_sq` (both zero before step 1), at 1-based `step`. All slices have the same length. Runs in
/// parallel for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn radam_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    cfg: &RadamConfig,
    step: u64,
) {
    let n = param.len();
    check_len("radam_step grad", grad, n);
    check_len("radam_step exp_avg", exp_avg, n);
    check_len("radam_step exp_avg_sq", exp_avg_sq, n);
    assert!(step >= 1, "radam_step: step is 1-based");
    let t = step as f64;
    let rect = rectification(cfg.beta2, step);
    let c = Coeffs {
        decay: T::from_f64(1.0 - cfg.lr * cfg.weight_decay),
        weight_decay: T::from_f64(cfg.weight_decay),
        lerp: LerpWeight::new(1.0 - cfg.beta1),
        beta2: T::from_f64(cfg.beta2),
        one_minus_beta2: T::from_f64(1.0 - cfg.beta2),
        bias_correction1: T::from_f64(1.0 - cfg.beta1.powf(t)),
        lr: T::from_f64(cfg.lr),
        bias_correction2_sqrt: T::from_f64((1.0 - cfg.beta2.powf(t)).powf(0.5)),
        eps: T::from_f64(cfg.eps),
        rect: T::from_f64(rect.unwrap_or(0.0)),
    };
    let wd = cfg.weight_decay != 0.0;
    let kernel = match (wd && !cfg.decoupled_weight_decay, wd && cfg.decoupled_weight_decay, rect.is_some()) {
        (false, false, false) => update::<T, false, false, false>,
        (false, false, true) => update::<T, false, false, true>,
        (true, _, false) => update::<T, true, false, false>,
        (true, _, true) => update::<T, true, false, true>,
        (false, true, false) => update::<T, false, true, false>,
        (false, true, true) => update::<T, false, true, true>,
    };
    for_each_chunk4(param, grad, exp_avg, exp_avg_sq, |p, g, m, v| kernel(p, g, m, v, c));
}

/// The fused per-element loop over one chunk, one line per torch op in torch's order; `RECT` selects the
/// rectified update.
#[inline(always)]
fn update_body<T: Float, const COUPLED: bool, const DECOUPLED: bool, const RECT: bool>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    c: Coeffs<T>,
) {
    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()) {
        let mut pv = *p;
        if DECOUPLED {
            pv *= c.decay; // param.mul_(1 - lr * wd)
        }
        let g = if COUPLED { g + c.weight_decay * pv } else { g }; // grad.add(param, alpha=wd)
        let mv = c.lerp.apply(*m, g); // exp_avg.lerp_(grad, 1 - beta1)
        let vv = *v * c.beta2 + c.one_minus_beta2 * g * g; // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
        let m_hat = mv / c.bias_correction1; // exp_avg / bias_correction1
        if RECT {
            // bc2**0.5 / (exp_avg_sq.sqrt() + eps) == (..).reciprocal() * bc2**0.5 in Python
            let adaptive = (T::ONE / (vv.sqrt() + c.eps)) * c.bias_correction2_sqrt;
            pv -= m_hat * c.lr * adaptive * c.rect; // param.add_(m_hat * lr * adaptive * rect, alpha=-1)
        } else {
            pv -= m_hat * c.lr; // param.add_(m_hat * lr, alpha=-1)
        }
        *m = mv;
        *v = vv;
        *p = pv;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const COUPLED: bool; const DECOUPLED: bool; const RECT: bool>(
        param: &mut [T], grad: &[T], exp_avg: &mut [T], exp_avg_sq: &mut [T], c: Coeffs<T>
    ) => update_body
);

/// The CUDA kernel of RAdam (`radam.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "radam", code: include_str!("radam.cu"), kernels: &["radam_step_f32"] };

/// Host side of `radam.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{rectification, RadamConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};
    use crate::optim::LerpWeight;

    /// The segment of elements `start..end` updated with `cfg` at 1-based `step`: the coefficients
    /// [`radam_step`](super::radam_step) computes in f64, and its rectification switch for this step.
    pub fn segment(cfg: &RadamConfig, step: u64, start: usize, end: usize) -> Segment {
        let t = step as f64;
        let rect = rectification(cfg.beta2, step);
        let lerp = LerpWeight::<f32>::new(1.0 - cfg.beta1);
        let wd = cfg.weight_decay != 0.0;
        let mut flags = 0;
        if wd && !cfg.decoupled_weight_decay {
            flags |= 1;
        }
        if wd && cfg.decoupled_weight_decay {
            flags |= 2;
        }
        if rect.is_some() {
            flags |= 4;
        }
        if lerp.from_start {
            flags |= 8;
        }
        let mut c = [0.0f32; 12];
        c[0] = (1.0 - cfg.lr * cfg.weight_decay) as f32;
        c[1] = cfg.weight_decay as f32;
        c[2] = lerp.coeff;
        c[3] = cfg.beta2 as f32;
        c[4] = (1.0 - cfg.beta2) as f32;
        c[5] = (1.0 - cfg.beta1.powf(t)) as f32;
        c[6] = cfg.lr as f32;
        c[7] = (1.0 - cfg.beta2.powf(t)).powf(0.5) as f32;
        c[8] = cfg.eps as f32;
        c[9] = rect.unwrap_or(0.0) as f32;
        Segment { start: start as u64, end: end as u64, coeffs: c, flags, pad: 0 }
    }

    /// One update of every segment in `table` (already uploaded); all buffers hold the arena.
    pub fn step(
        gpu: &Gpu,
        param: &mut CudaViewMut<f32>,
        grad: &CudaView<f32>,
        exp_avg: &mut CudaViewMut<f32>,
        exp_avg_sq: &mut CudaViewMut<f32>,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = param.len();
        assert!(grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n, "radam step: arena lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "radam step: a segment lies outside the arena");
        let f = gpu.function(&CUDA, "radam_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(param).arg(grad).arg(exp_avg).arg(exp_avg_sq).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match radam_step_f32's signature (float*, const float*, float*, float*,
        // const Segment*, int, size_t); every buffer holds n elements and the table nsegs sorted segments
        // inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::optim::cuda_check::check_fused_bitwise;

        /// Eight steps, so both branches run: with beta2 = 0.9, 0.99 and 0.999 alike the update is
        /// un-rectified for steps 1..=5 and rectified (rho_t > 5) from step 6; plus RAdamW and coupled decay.
        #[test]
        fn fused_radam_matches_cpu_bitwise() {
            let base = RadamConfig::default();
            for (beta2, t) in [(0.9, 5u64), (0.999, 5), (0.99, 5)] {
                assert!(rectification(beta2, t).is_none() && rectification(beta2, t + 1).is_some(), "{beta2}");
            }
            let cfgs = [
                base,
                RadamConfig { lr: 1e-2, beta2: 0.9, weight_decay: 0.05, decoupled_weight_decay: true, ..base },
                RadamConfig { lr: 3e-3, beta1: 0.3, beta2: 0.99, weight_decay: 0.1, ..base },
                RadamConfig { lr: 5e-2, eps: 1e-6, ..base },
            ];
            check_fused_bitwise(
                "fused_radam_matches_cpu_bitwise",
                2,
                0.0,
                8,
                &mut |k, p, g, s, t| {
                    let [m, v] = s else { unreachable!() };
                    super::super::radam_step(p, g, m, v, &cfgs[k], t)
                },
                &mut |k, t, a, b| segment(&cfgs[k], t, a, b),
                &mut |gpu, p, g, s, table| {
                    let [m, v] = s else { unreachable!() };
                    step(gpu, &mut p.as_view_mut(), &g.as_view(), &mut m.as_view_mut(), &mut v.as_view_mut(), table)
                        .unwrap()
                },
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::optim::test_support::*;
    use serde_json::Value;

    /// Runs one reference case through [`radam_step`].
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let (beta1, beta2) = hp_betas(hp);
        let cfg = RadamConfig {
            lr: hp_f64(hp, "lr"),
            beta1,
            beta2,
            eps: hp_f64(hp, "eps"),
            weight_decay: hp_f64(hp, "weight_decay"),
            decoupled_weight_decay: hp_bool(hp, "decoupled_weight_decay"),
        };
        let mut p: Vec<T> = to_t(init);
        let (mut m, mut v) = (vec![T::ZERO; p.len()], vec![T::ZERO; p.len()]);
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            radam_step(&mut p, &to_t(g), &mut m, &mut v, &cfg, t as u64 + 1);
            out.push(to_f64(&p));
        }
        out
    }

    #[test]
    fn matches_every_torch_radam_case() {
        check_class("torch.optim.RAdam");
    }

    /// With beta2 0.999 the rectified update starts at step 6 (the README's note), so the reference
    /// trajectories exercise both branches.
    #[test]
    fn rectification_switches_on_at_step_6() {
        assert!((1..=5).all(|t| rectification(0.999, t).is_none()));
        assert!((6..=50).all(|t| rectification(0.999, t).is_some_and(|r| r > 0.0 && r < 1.0)));
    }

    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        for decoupled in [false, true] {
            // Seven steps cover both branches (the rectified update starts at step 6 for beta2 0.95 too).
            let cfg = RadamConfig {
                lr: 1e-2,
                beta2: 0.95,
                weight_decay: 0.1,
                decoupled_weight_decay: decoupled,
                ..Default::default()
            };
            assert!(rectification(cfg.beta2, 5).is_none() && rectification(cfg.beta2, 7).is_some());
            check_parallel_matches_sequential_for("radam", 2, 7, |p, g, s, t| {
                let [m, v] = s else { unreachable!() };
                radam_step(p, g, m, v, &cfg, t);
            });
        }
    }
}
