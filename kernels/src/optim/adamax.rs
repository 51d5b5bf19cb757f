//! Adamax (Adam with an infinity-norm second moment), numerically equivalent to `torch.optim.Adamax`
//! (single-tensor path).
//!
//! Per element, at 1-based step `t`:
//! ```text
//! g = g + weight_decay * p                      (coupled L2, only when weight_decay != 0)
//! m = lerp(m, g, 1 - beta1)
//! u = maximum(u * beta2, |g| + eps)
//! p = p + (-(lr / (1 - beta1^t)) * m) / u
//! ```

use super::{check_len, for_each_chunk4, maximum, LerpWeight};
use crate::Float;

/// Hyper-parameters of [`adamax_step`], named as in `torch.optim.Adamax`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamaxConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay rate of the first moment (torch `betas[0]`).
    pub beta1: f64,
    /// Decay of the infinity norm (torch `betas[1]`).
    pub beta2: f64,
    /// Added to `|g|` before the maximum, so the norm never reaches zero.
    pub eps: f64,
    /// Coupled L2 penalty: the gradient becomes `grad + weight_decay * param`.
    pub weight_decay: f64,
}

impl Default for AdamaxConfig {
    /// torch's defaults: lr 2e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        Self { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Scalars of one Adamax step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    weight_decay: T,
    lerp: LerpWeight<T>,
    beta2: T,
    eps: T,
    neg_clr: T,
}

/// One Adamax update of `param` in place, given its `grad`, first moment `exp_avg` and infinity norm
/// `exp_inf` (both zero before step 1). `step` is 1-based; all slices have the same length. Runs in parallel
/// for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn adamax_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_inf: &mut [T],
    cfg: &AdamaxConfig,
    step: u64,
) {
    let n = param.len();
    check_len("adamax_step grad", grad, n);
    check_len("adamax_step exp_avg", exp_avg, n);
    check_len("adamax_step exp_inf", exp_inf, n);
    assert!(step >= 1, "adamax_step: step is 1-based");
    let bias_correction = 1.0 - cfg.beta1.powf(step as f64);
    let c = Coeffs {
        weight_decay: T::from_f64(cfg.weight_decay),
        lerp: LerpWeight::new(1.0 - cfg.beta1),
        beta2: T::from_f64(cfg.beta2),
        eps: T::from_f64(cfg.eps),
        neg_clr: T::from_f64(-(cfg.lr / bias_correction)),
    };
    let kernel = if cfg.weight_decay != 0.0 { update::<T, true> } else { update::<T, false> };
    for_each_chunk4(param, grad, exp_avg, exp_inf, |p, g, m, u| kernel(p, g, m, u, c));
}

/// The fused per-element loop over one chunk, one line per torch op in torch's order.
#[inline(always)]
fn update_body<T: Float, const WD: bool>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_inf: &mut [T],
    c: Coeffs<T>,
) {
    for (((p, &g), m), u) in param.iter_mut().zip(grad).zip(exp_avg.iter_mut()).zip(exp_inf.iter_mut()) {
        let g = if WD { g + c.weight_decay * *p } else { g }; // grad.add(param, alpha=wd)
        let mv = c.lerp.apply(*m, g); // exp_avg.lerp_(grad, 1 - beta1)
        let uv = maximum(*u * c.beta2, g.abs() + c.eps); // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps))
        *p += c.neg_clr * mv / uv; // param.addcdiv_(exp_avg, exp_inf, value=-clr)
        *m = mv;
        *u = uv;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const WD: bool>(param: &mut [T], grad: &[T], exp_avg: &mut [T], exp_inf: &mut [T], c: Coeffs<T>) => update_body
);

/// The CUDA kernel of Adamax (`adamax.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "adamax", code: include_str!("adamax.cu"), kernels: &["adamax_step_f32"] };

/// Host side of `adamax.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{AdamaxConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};
    use crate::optim::LerpWeight;

    /// The segment of elements `start..end` updated with `cfg` at 1-based `step`: the coefficients
    /// [`adamax_step`](super::adamax_step) computes, in the same f64 arithmetic.
    pub fn segment(cfg: &AdamaxConfig, step: u64, start: usize, end: usize) -> Segment {
        let bias_correction = 1.0 - cfg.beta1.powf(step as f64);
        let lerp = LerpWeight::<f32>::new(1.0 - cfg.beta1);
        let mut flags = 0;
        if cfg.weight_decay != 0.0 {
            flags |= 1;
        }
        if lerp.from_start {
            flags |= 8;
        }
        let mut c = [0.0f32; 12];
        c[0] = cfg.weight_decay as f32;
        c[1] = lerp.coeff;
        c[2] = cfg.beta2 as f32;
        c[3] = cfg.eps as f32;
        c[4] = (-(cfg.lr / bias_correction)) as f32;
        Segment { start: start as u64, end: end as u64, coeffs: c, flags, pad: 0 }
    }

    /// One update of every segment in `table` (already uploaded); all buffers hold the arena.
    pub fn step(
        gpu: &Gpu,
        param: &mut CudaViewMut<f32>,
        grad: &CudaView<f32>,
        exp_avg: &mut CudaViewMut<f32>,
        exp_inf: &mut CudaViewMut<f32>,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = param.len();
        assert!(grad.len() == n && exp_avg.len() == n && exp_inf.len() == n, "adamax step: arena lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "adamax step: a segment lies outside the arena");
        let f = gpu.function(&CUDA, "adamax_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(param).arg(grad).arg(exp_avg).arg(exp_inf).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match adamax_step_f32's signature (float*, const float*, float*, float*,
        // const Segment*, int, size_t); every buffer holds n elements and the table nsegs sorted segments
        // inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::optim::cuda_check::check_fused_bitwise;

        /// Defaults, coupled decay with a lerp weight above 0.5 (lerp from the end), and two more: bitwise.
        #[test]
        fn fused_adamax_matches_cpu_bitwise() {
            let cfgs = [
                AdamaxConfig::default(),
                AdamaxConfig { lr: 1e-2, beta1: 0.3, beta2: 0.99, eps: 1e-6, weight_decay: 0.1 },
                AdamaxConfig { lr: 5e-3, beta1: 0.9, beta2: 0.9, eps: 1e-8, weight_decay: 1e-3 },
                AdamaxConfig { lr: 0.1, beta1: 0.5, beta2: 0.999, eps: 1e-3, weight_decay: 0.0 },
            ];
            check_fused_bitwise(
                "fused_adamax_matches_cpu_bitwise",
                2,
                0.0,
                6,
                &mut |k, p, g, s, t| {
                    let [m, u] = s else { unreachable!() };
                    super::super::adamax_step(p, g, m, u, &cfgs[k], t)
                },
                &mut |k, t, a, b| segment(&cfgs[k], t, a, b),
                &mut |gpu, p, g, s, table| {
                    let [m, u] = s else { unreachable!() };
                    step(gpu, &mut p.as_view_mut(), &g.as_view(), &mut m.as_view_mut(), &mut u.as_view_mut(), table)
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

    /// Runs one reference case through [`adamax_step`].
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let (beta1, beta2) = hp_betas(hp);
        let cfg = AdamaxConfig {
            lr: hp_f64(hp, "lr"),
            beta1,
            beta2,
            eps: hp_f64(hp, "eps"),
            weight_decay: hp_f64(hp, "weight_decay"),
        };
        let mut p: Vec<T> = to_t(init);
        let (mut m, mut u) = (vec![T::ZERO; p.len()], vec![T::ZERO; p.len()]);
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            adamax_step(&mut p, &to_t(g), &mut m, &mut u, &cfg, t as u64 + 1);
            out.push(to_f64(&p));
        }
        out
    }

    #[test]
    fn matches_every_torch_adamax_case() {
        check_class("torch.optim.Adamax");
    }

    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        let cfg = AdamaxConfig { lr: 1e-2, beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };
        check_parallel_matches_sequential("adamax", 2, |p, g, s, t| {
            let [m, u] = s else { unreachable!() };
            adamax_step(p, g, m, u, &cfg, t);
        });
    }
}
