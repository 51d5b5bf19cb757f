//! Adadelta, numerically equivalent to `torch.optim.Adadelta` (single-tensor path).
//!
//! Per element:
//! ```text
//! g     = g + weight_decay * p                    (only when weight_decay != 0)
//! sq    = sq * rho + (1 - rho) * g * g
//! delta = sqrt(acc + eps) / sqrt(sq + eps) * g
//! acc   = acc * rho + (1 - rho) * delta * delta
//! p     = p + (-lr) * delta
//! ```
//! The update does not depend on the step number.

use super::{check_len, for_each_chunk4};
use crate::Float;

/// Hyper-parameters of [`adadelta_step`], named and defaulted as in `torch.optim.Adadelta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdadeltaConfig {
    /// Scale of the delta applied to the parameters.
    pub lr: f64,
    /// Decay of both running averages.
    pub rho: f64,
    /// Added inside both square roots.
    pub eps: f64,
    /// Coupled L2 penalty: the gradient becomes `grad + weight_decay * param`.
    pub weight_decay: f64,
}

impl Default for AdadeltaConfig {
    /// torch's defaults: lr 1.0, rho 0.9, eps 1e-6, no weight decay.
    fn default() -> Self {
        Self { lr: 1.0, rho: 0.9, eps: 1e-6, weight_decay: 0.0 }
    }
}

/// Scalars of one Adadelta step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    weight_decay: T,
    rho: T,
    one_minus_rho: T,
    eps: T,
    neg_lr: T,
}

/// One Adadelta update of `param` in place, given its `grad`, the running average of squared gradients
/// `square_avg` and of squared updates `acc_delta` (both zero before step 1). All slices have the same
/// length. Runs in parallel for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn adadelta_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    square_avg: &mut [T],
    acc_delta: &mut [T],
    cfg: &AdadeltaConfig,
) {
    let n = param.len();
    check_len("adadelta_step grad", grad, n);
    check_len("adadelta_step square_avg", square_avg, n);
    check_len("adadelta_step acc_delta", acc_delta, n);
    let c = Coeffs {
        weight_decay: T::from_f64(cfg.weight_decay),
        rho: T::from_f64(cfg.rho),
        one_minus_rho: T::from_f64(1.0 - cfg.rho),
        eps: T::from_f64(cfg.eps),
        neg_lr: T::from_f64(-cfg.lr),
    };
    let kernel = if cfg.weight_decay != 0.0 { update::<T, true> } else { update::<T, false> };
    for_each_chunk4(param, grad, square_avg, acc_delta, |p, g, s, a| kernel(p, g, s, a, c));
}

/// The fused per-element loop over one chunk, one line per torch op in torch's order.
#[inline(always)]
fn update_body<T: Float, const WD: bool>(
    param: &mut [T],
    grad: &[T],
    square_avg: &mut [T],
    acc_delta: &mut [T],
    c: Coeffs<T>,
) {
    for (((p, &g), s), a) in param.iter_mut().zip(grad).zip(square_avg.iter_mut()).zip(acc_delta.iter_mut()) {
        let g = if WD { g + c.weight_decay * *p } else { g }; // grad.add(param, alpha=wd)
        let sv = *s * c.rho + c.one_minus_rho * g * g; // square_avg.mul_(rho).addcmul_(g, g, 1 - rho)
        let std = (sv + c.eps).sqrt(); // square_avg.add(eps).sqrt_()
        let delta = (*a + c.eps).sqrt() / std * g; // acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
        *a = *a * c.rho + c.one_minus_rho * delta * delta; // acc_delta.mul_(rho).addcmul_(delta, delta, 1 - rho)
        *p += c.neg_lr * delta; // param.add_(delta, alpha=-lr)
        *s = sv;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const WD: bool>(param: &mut [T], grad: &[T], square_avg: &mut [T], acc_delta: &mut [T], c: Coeffs<T>) => update_body
);

/// The CUDA kernel of Adadelta (`adadelta.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "adadelta", code: include_str!("adadelta.cu"), kernels: &["adadelta_step_f32"] };

/// Host side of `adadelta.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{AdadeltaConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};

    /// The segment of elements `start..end` updated with `cfg` (Adadelta does not depend on the step): the
    /// coefficients [`adadelta_step`](super::adadelta_step) computes, in the same f64 arithmetic.
    pub fn segment(cfg: &AdadeltaConfig, start: usize, end: usize) -> Segment {
        let mut c = [0.0f32; 12];
        c[0] = cfg.weight_decay as f32;
        c[1] = cfg.rho as f32;
        c[2] = (1.0 - cfg.rho) as f32;
        c[3] = cfg.eps as f32;
        c[4] = (-cfg.lr) as f32;
        let flags = u32::from(cfg.weight_decay != 0.0);
        Segment { start: start as u64, end: end as u64, coeffs: c, flags, pad: 0 }
    }

    /// One update of every segment in `table` (already uploaded); all buffers hold the arena.
    pub fn step(
        gpu: &Gpu,
        param: &mut CudaViewMut<f32>,
        grad: &CudaView<f32>,
        square_avg: &mut CudaViewMut<f32>,
        acc_delta: &mut CudaViewMut<f32>,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = param.len();
        assert!(grad.len() == n && square_avg.len() == n && acc_delta.len() == n, "adadelta step: lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "adadelta step: a segment lies outside the arena");
        let f = gpu.function(&CUDA, "adadelta_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(param).arg(grad).arg(square_avg).arg(acc_delta).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match adadelta_step_f32's signature (float*, const float*, float*, float*,
        // const Segment*, int, size_t); every buffer holds n elements and the table nsegs sorted segments
        // inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::optim::cuda_check::check_fused_bitwise;

        /// Defaults, weight decay, a small rho and a large eps: bitwise the CPU's over several steps.
        #[test]
        fn fused_adadelta_matches_cpu_bitwise() {
            let base = AdadeltaConfig::default();
            let cfgs = [
                base,
                AdadeltaConfig { weight_decay: 0.1, ..base },
                AdadeltaConfig { lr: 0.5, rho: 0.3, ..base },
                AdadeltaConfig { lr: 2.0, rho: 0.95, eps: 1e-3, weight_decay: 1e-3 },
            ];
            check_fused_bitwise(
                "fused_adadelta_matches_cpu_bitwise",
                2,
                0.0,
                6,
                &mut |k, p, g, s, _| {
                    let [sq, acc] = s else { unreachable!() };
                    super::super::adadelta_step(p, g, sq, acc, &cfgs[k])
                },
                &mut |k, _, a, b| segment(&cfgs[k], a, b),
                &mut |gpu, p, g, s, table| {
                    let [sq, acc] = s else { unreachable!() };
                    let (mut sq, mut acc) = (sq.as_view_mut(), acc.as_view_mut());
                    step(gpu, &mut p.as_view_mut(), &g.as_view(), &mut sq, &mut acc, table).unwrap()
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

    /// Runs one reference case through [`adadelta_step`].
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let cfg = AdadeltaConfig {
            lr: hp_f64(hp, "lr"),
            rho: hp_f64(hp, "rho"),
            eps: hp_f64(hp, "eps"),
            weight_decay: hp_f64(hp, "weight_decay"),
        };
        let mut p: Vec<T> = to_t(init);
        let (mut sq, mut acc) = (vec![T::ZERO; p.len()], vec![T::ZERO; p.len()]);
        let mut out = Vec::new();
        for g in grads {
            adadelta_step(&mut p, &to_t(g), &mut sq, &mut acc, &cfg);
            out.push(to_f64(&p));
        }
        out
    }

    #[test]
    fn matches_every_torch_adadelta_case() {
        check_class("torch.optim.Adadelta");
    }

    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        let cfg = AdadeltaConfig { weight_decay: 0.01, ..Default::default() };
        check_parallel_matches_sequential("adadelta", 2, |p, g, s, _| {
            let [sq, acc] = s else { unreachable!() };
            adadelta_step(p, g, sq, acc, &cfg);
        });
    }
}
