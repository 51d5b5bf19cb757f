//! Adagrad, numerically equivalent to `torch.optim.Adagrad` (dense single-tensor path).
//!
//! Per element, at 1-based step `t`:
//! ```text
//! g   = g + weight_decay * p                     (only when weight_decay != 0)
//! clr = lr / (1 + (t - 1) * lr_decay)
//! sum = sum + g * g                              (sum starts at initial_accumulator_value)
//! p   = p + (-clr) * g / (sqrt(sum) + eps)
//! ```
//! The accumulator does not start at zero: the caller fills `sum` with `initial_accumulator_value` before
//! step 1, as torch's `full_like` does.

use super::{check_len, for_each_chunk3};
use crate::Float;

/// Hyper-parameters of [`adagrad_step`], named and defaulted as in `torch.optim.Adagrad`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate.
    pub lr: f64,
    /// Learning-rate decay: step `t` uses `lr / (1 + (t - 1) * lr_decay)`.
    pub lr_decay: f64,
    /// Coupled L2 penalty: the gradient becomes `grad + weight_decay * param`.
    pub weight_decay: f64,
    /// Value the accumulator starts at (used by the caller to fill it; the step itself does not read it).
    pub initial_accumulator_value: f64,
    /// Added to the root of the accumulator.
    pub eps: f64,
}

impl Default for AdagradConfig {
    /// torch's defaults: lr 1e-2, no lr decay, no weight decay, accumulator 0, eps 1e-10.
    fn default() -> Self {
        Self { lr: 1e-2, lr_decay: 0.0, weight_decay: 0.0, initial_accumulator_value: 0.0, eps: 1e-10 }
    }
}

/// Scalars of one Adagrad step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    weight_decay: T,
    eps: T,
    neg_clr: T,
}

/// One Adagrad update of `param` in place, given its `grad` and accumulator `sum` (filled with
/// `cfg.initial_accumulator_value` before step 1), at 1-based `step`. All slices have the same length.
/// Runs in parallel for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn adagrad_step<T: Float>(param: &mut [T], grad: &[T], sum: &mut [T], cfg: &AdagradConfig, step: u64) {
    let n = param.len();
    check_len("adagrad_step grad", grad, n);
    check_len("adagrad_step sum", sum, n);
    assert!(step >= 1, "adagrad_step: step is 1-based");
    let clr = cfg.lr / (1.0 + (step as f64 - 1.0) * cfg.lr_decay);
    let c =
        Coeffs { weight_decay: T::from_f64(cfg.weight_decay), eps: T::from_f64(cfg.eps), neg_clr: T::from_f64(-clr) };
    let kernel = if cfg.weight_decay != 0.0 { update::<T, true> } else { update::<T, false> };
    for_each_chunk3(param, grad, sum, |p, g, s| kernel(p, g, s, c));
}

/// The fused per-element loop over one chunk, one line per torch op in torch's order.
#[inline(always)]
fn update_body<T: Float, const WD: bool>(param: &mut [T], grad: &[T], sum: &mut [T], c: Coeffs<T>) {
    for ((p, &g), s) in param.iter_mut().zip(grad).zip(sum.iter_mut()) {
        let g = if WD { g + c.weight_decay * *p } else { g }; // grad.add(param, alpha=wd)
        let sv = *s + g * g; // state_sum.addcmul_(grad, grad, value=1)
        let std = sv.sqrt() + c.eps; // state_sum.sqrt().add_(eps)
        *p += c.neg_clr * g / std; // param.addcdiv_(grad, std, value=-clr)
        *s = sv;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const WD: bool>(param: &mut [T], grad: &[T], sum: &mut [T], c: Coeffs<T>) => update_body
);

/// The CUDA kernel of Adagrad (`adagrad.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "adagrad", code: include_str!("adagrad.cu"), kernels: &["adagrad_step_f32"] };

/// Host side of `adagrad.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{AdagradConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};

    /// The segment of elements `start..end` updated with `cfg` at 1-based `step`: the coefficients
    /// [`adagrad_step`](super::adagrad_step) computes, in the same f64 arithmetic.
    pub fn segment(cfg: &AdagradConfig, step: u64, start: usize, end: usize) -> Segment {
        let clr = cfg.lr / (1.0 + (step as f64 - 1.0) * cfg.lr_decay);
        let mut c = [0.0f32; 12];
        c[0] = cfg.weight_decay as f32;
        c[1] = cfg.eps as f32;
        c[2] = (-clr) as f32;
        let flags = u32::from(cfg.weight_decay != 0.0);
        Segment { start: start as u64, end: end as u64, coeffs: c, flags, pad: 0 }
    }

    /// One update of every segment in `table` (already uploaded); `sum` starts filled with each
    /// parameter's `initial_accumulator_value`, as on the CPU. All buffers hold the arena.
    pub fn step(
        gpu: &Gpu,
        param: &mut CudaViewMut<f32>,
        grad: &CudaView<f32>,
        sum: &mut CudaViewMut<f32>,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = param.len();
        assert!(grad.len() == n && sum.len() == n, "adagrad step: arena lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "adagrad step: a segment lies outside the arena");
        let f = gpu.function(&CUDA, "adagrad_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(param).arg(grad).arg(sum).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match adagrad_step_f32's signature (float*, const float*, float*,
        // const Segment*, int, size_t); every buffer holds n elements and the table nsegs sorted segments
        // inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::optim::cuda_check::check_fused_bitwise;

        /// Defaults, lr decay, weight decay and a large eps, from a non-zero accumulator: bitwise the CPU's.
        #[test]
        fn fused_adagrad_matches_cpu_bitwise() {
            let base = AdagradConfig { initial_accumulator_value: 0.1, ..AdagradConfig::default() };
            let cfgs = [
                base,
                AdagradConfig { lr: 3e-2, lr_decay: 0.05, ..base },
                AdagradConfig { lr: 1e-2, weight_decay: 0.1, ..base },
                AdagradConfig { lr: 0.5, eps: 1e-3, lr_decay: 1e-3, weight_decay: 1e-4, ..base },
            ];
            check_fused_bitwise(
                "fused_adagrad_matches_cpu_bitwise",
                1,
                0.1,
                6,
                &mut |k, p, g, s, t| super::super::adagrad_step(p, g, &mut s[0][..], &cfgs[k], t),
                &mut |k, t, a, b| segment(&cfgs[k], t, a, b),
                &mut |gpu, p, g, s, table| {
                    let [sum] = s else { unreachable!() };
                    step(gpu, &mut p.as_view_mut(), &g.as_view(), &mut sum.as_view_mut(), table).unwrap()
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

    /// Runs one reference case through [`adagrad_step`].
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let cfg = AdagradConfig {
            lr: hp_f64(hp, "lr"),
            lr_decay: hp_f64(hp, "lr_decay"),
            weight_decay: hp_f64(hp, "weight_decay"),
            initial_accumulator_value: hp_f64(hp, "initial_accumulator_value"),
            eps: hp_f64(hp, "eps"),
        };
        let mut p: Vec<T> = to_t(init);
        let mut sum = vec![T::from_f64(cfg.initial_accumulator_value); p.len()];
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            adagrad_step(&mut p, &to_t(g), &mut sum, &cfg, t as u64 + 1);
            out.push(to_f64(&p));
        }
        out
    }

    #[test]
    fn matches_every_torch_adagrad_case() {
        check_class("torch.optim.Adagrad");
    }

    /// lr_decay, weight decay and the initial accumulator (not in the reference file) against the formula
    /// evaluated directly in f64.
    #[test]
    fn lr_decay_weight_decay_and_initial_accumulator() {
        let cfg =
            AdagradConfig { lr: 0.1, lr_decay: 0.5, weight_decay: 0.2, initial_accumulator_value: 0.3, eps: 1e-10 };
        let (mut p, mut sum) = (vec![1.0f64, -2.0], vec![0.3f64; 2]);
        let (mut q, mut s2) = (p.clone(), sum.clone());
        for t in 1..=4u64 {
            let g = [0.5 * t as f64, -0.25];
            adagrad_step(&mut p, &g, &mut sum, &cfg, t);
            let clr = 0.1 / (1.0 + (t as f64 - 1.0) * 0.5);
            for i in 0..2 {
                let gi = g[i] + 0.2 * q[i];
                s2[i] += gi * gi;
                q[i] -= clr * gi / (s2[i].sqrt() + 1e-10);
            }
        }
        for i in 0..2 {
            assert!((p[i] - q[i]).abs() < 1e-15 && (sum[i] - s2[i]).abs() < 1e-15, "{p:?} vs {q:?}");
        }
    }

    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        let cfg = AdagradConfig { lr_decay: 0.1, weight_decay: 0.01, ..Default::default() };
        check_parallel_matches_sequential("adagrad", 1, |p, g, s, t| adagrad_step(p, g, s[0], &cfg, t));
    }
}
