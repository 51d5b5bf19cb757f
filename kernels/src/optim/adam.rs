//! The Adam family, numerically equivalent to `torch.optim.Adam` and `torch.optim.AdamW` (single-tensor path),
//! with coupled (L2) or decoupled weight decay and the AMSGrad variant.
//!
//! Per element, at 1-based step `t`, with coefficients computed in f64 as torch computes them in Python:
//! ```text
//! p  = p * (1 - lr * weight_decay)                  (decoupled: AdamW, or Adam(decoupled_weight_decay=True))
//! g  = g + weight_decay * p                         (coupled: Adam's default)
//! m  = lerp(m, g, 1 - beta1)
//! v  = v * beta2 + (1 - beta2) * g * g
//! vmax = maximum(vmax, v)                           (amsgrad; the denominator then uses vmax)
//! denom = sqrt(v) / (1 - beta2^t)^0.5 + eps
//! p  = p + (-(lr / (1 - beta1^t)) * m) / denom     (torch's addcdiv order)
//! ```
//! Parameters that must not be decayed (biases, norms) are passed with `weight_decay = 0`.

use super::{check_len, for_each_chunk4, for_each_chunk5, maximum, LerpWeight};
use crate::Float;

/// Hyper-parameters of [`adam_step`], named and defaulted as in `torch.optim.Adam`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay rate of the first moment (torch `betas[0]`).
    pub beta1: f64,
    /// Decay rate of the second moment (torch `betas[1]`).
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment, after the square root.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient, or (decoupled) a shrink of the parameter.
    pub weight_decay: f64,
    /// Decay the parameter by `1 - lr * weight_decay` instead of adding `weight_decay * p` to the gradient
    /// (AdamW; torch's `decoupled_weight_decay`).
    pub decoupled_weight_decay: bool,
    /// Normalise by the running maximum of the second moment (AMSGrad); needs the `max_exp_avg_sq` buffer.
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    /// torch's `Adam` defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay, no AMSGrad.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
        }
    }
}

/// Scalars of one Adam step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    decay: T,
    weight_decay: T,
    lerp: LerpWeight<T>,
    beta2: T,
    one_minus_beta2: T,
    bias_correction2_sqrt: T,
    eps: T,
    neg_step_size: T,
}

/// One Adam / AdamW update of `param` in place, given its `grad`, first moment `exp_avg`, second moment
/// `exp_avg_sq` and, with `cfg.amsgrad`, the running maximum `max_exp_avg_sq` (all zero before step 1;
/// without AMSGrad `max_exp_avg_sq` is not touched and may be empty).
///
/// `step` is the 1-based number of this optimizer step. All used slices must have the same length. Runs in
/// parallel for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn adam_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    max_exp_avg_sq: &mut [T],
    cfg: &AdamConfig,
    step: u64,
) {
    let n = param.len();
    check_len("adam_step grad", grad, n);
    check_len("adam_step exp_avg", exp_avg, n);
    check_len("adam_step exp_avg_sq", exp_avg_sq, n);
    assert!(step >= 1, "adam_step: step is 1-based");
    // Python's `beta ** step` with a float step is C `pow`, hence powf rather than powi (which rounds
    // differently); `** 0.5` likewise is pow, not sqrt.
    let t = step as f64;
    let bias_correction1 = 1.0 - cfg.beta1.powf(t);
    let bias_correction2 = 1.0 - cfg.beta2.powf(t);
    let c = Coeffs {
        decay: T::from_f64(1.0 - cfg.lr * cfg.weight_decay),
        weight_decay: T::from_f64(cfg.weight_decay),
        lerp: LerpWeight::new(1.0 - cfg.beta1),
        beta2: T::from_f64(cfg.beta2),
        one_minus_beta2: T::from_f64(1.0 - cfg.beta2),
        bias_correction2_sqrt: T::from_f64(bias_correction2.powf(0.5)),
        eps: T::from_f64(cfg.eps),
        neg_step_size: T::from_f64(-(cfg.lr / bias_correction1)),
    };
    // As in torch, decay is skipped (not multiplied by 1 or added as 0) when disabled, so inf / NaN
    // parameters do not leak. Each configuration gets its own loop free of per-element branches.
    let wd = cfg.weight_decay != 0.0;
    let (coupled, decoupled) = (wd && !cfg.decoupled_weight_decay, wd && cfg.decoupled_weight_decay);
    if cfg.amsgrad {
        check_len("adam_step max_exp_avg_sq", max_exp_avg_sq, n);
        let kernel = match (coupled, decoupled) {
            (false, false) => update::<T, false, false, true>,
            (true, _) => update::<T, true, false, true>,
            (false, true) => update::<T, false, true, true>,
        };
        for_each_chunk5(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, |p, g, m, v, vm| kernel(p, g, m, v, vm, c));
    } else {
        let kernel = match (coupled, decoupled) {
            (false, false) => update::<T, false, false, false>,
            (true, _) => update::<T, true, false, false>,
            (false, true) => update::<T, false, true, false>,
        };
        for_each_chunk4(param, grad, exp_avg, exp_avg_sq, |p, g, m, v| kernel(p, g, m, v, &mut [], c));
    }
}

/// The fused per-element loop over one chunk. Each line mirrors one torch tensor op, in torch's order, so
/// that the f32 rounding follows the reference. `AMSGRAD == false` ignores `max_sq` (it may be empty).
#[inline(always)]
fn update_body<T: Float, const COUPLED: bool, const DECOUPLED: bool, const AMSGRAD: bool>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    max_sq: &mut [T],
    c: Coeffs<T>,
) {
    let n = param.len();
    let (grad, exp_avg, exp_avg_sq) = (&grad[..n], &mut exp_avg[..n], &mut exp_avg_sq[..n]);
    let max_sq = if AMSGRAD { &mut max_sq[..n] } else { max_sq };
    for i in 0..n {
        let mut p = param[i];
        let mut g = grad[i];
        if DECOUPLED {
            p *= c.decay; // param.mul_(1 - lr * wd)
        }
        if COUPLED {
            g += c.weight_decay * p; // grad.add(param, alpha=wd)
        }
        let m = c.lerp.apply(exp_avg[i], g); // exp_avg.lerp_(grad, 1 - beta1)
        let v = exp_avg_sq[i] * c.beta2 + c.one_minus_beta2 * g * g; // mul_(beta2).addcmul_(g, g, 1 - beta2)
        let v_norm = if AMSGRAD {
            let vm = maximum(max_sq[i], v); // torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            max_sq[i] = vm;
            vm
        } else {
            v
        };
        let denom = v_norm.sqrt() / c.bias_correction2_sqrt + c.eps;
        p += c.neg_step_size * m / denom; // param.addcdiv_(exp_avg, denom, value=-step_size)
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const COUPLED: bool; const DECOUPLED: bool; const AMSGRAD: bool>(
        param: &mut [T], grad: &[T], exp_avg: &mut [T], exp_avg_sq: &mut [T], max_sq: &mut [T], c: Coeffs<T>
    ) => update_body
);

/// The CUDA kernel of Adam / AdamW / AMSGrad (`adam.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "adam", code: include_str!("adam.cu"), kernels: &["adam_step_f32"] };

/// Host side of `adam.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{AdamConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};

    /// The segment of elements `start..end` updated with `cfg` at 1-based `step`: the coefficients
    /// [`adam_step`](super::adam_step) computes, in the same f64 arithmetic.
    pub fn segment(cfg: &AdamConfig, step: u64, start: usize, end: usize) -> Segment {
        let t = step as f64;
        let bc1 = 1.0 - cfg.beta1.powf(t);
        let bc2 = 1.0 - cfg.beta2.powf(t);
        let w = (1.0 - cfg.beta1) as f32;
        let from_start = w.abs() < 0.5;
        let wd = cfg.weight_decay != 0.0;
        let mut flags = 0;
        if wd && !cfg.decoupled_weight_decay {
            flags |= 1;
        }
        if wd && cfg.decoupled_weight_decay {
            flags |= 2;
        }
        if cfg.amsgrad {
            flags |= 4;
        }
        if from_start {
            flags |= 8;
        }
        let mut c = [0.0f32; 12];
        c[0] = (1.0 - cfg.lr * cfg.weight_decay) as f32;
        c[1] = cfg.weight_decay as f32;
        c[2] = if from_start { w } else { w - 1.0 };
        c[3] = cfg.beta2 as f32;
        c[4] = (1.0 - cfg.beta2) as f32;
        c[5] = bc2.powf(0.5) as f32;
        c[6] = cfg.eps as f32;
        c[7] = (-(cfg.lr / bc1)) as f32;
        Segment { start: start as u64, end: end as u64, coeffs: c, flags, pad: 0 }
    }

    /// One update of every segment in `table` (already uploaded). `vmax` is read and written only by
    /// AMSGrad segments; pass any buffer of the arena's length otherwise.
    pub fn step(
        gpu: &Gpu,
        p: &mut CudaViewMut<f32>,
        g: &CudaView<f32>,
        m: &mut CudaViewMut<f32>,
        v: &mut CudaViewMut<f32>,
        vmax: &mut CudaViewMut<f32>,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = p.len();
        assert!(g.len() == n && m.len() == n && v.len() == n, "adam step: arena lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "adam step: a segment lies outside the arena");
        assert!(!table.host.iter().any(|s| s.flags & 4 != 0) || vmax.len() == n, "adam step: AMSGrad needs vmax");
        let f = gpu.function(&CUDA, "adam_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(p).arg(g).arg(m).arg(v).arg(vmax).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match adam_step_f32's signature; every buffer holds n elements (vmax only
        // where AMSGrad reads it) and the table holds nsegs sorted segments inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cuda::testing::*;
        use crate::rng::Rng;

        /// Several steps over an arena of three segments (Adam with coupled decay, AdamW, AMSGrad) and one
        /// frozen gap equal the CPU kernel bit for bit.
        #[test]
        fn fused_adam_matches_cpu_bitwise() {
            let Some(gpu) = gpu_or_skip("fused_adam_matches_cpu_bitwise") else { return };
            let mut rng = Rng::new(test_seed("fused_adam_matches_cpu_bitwise"));
            let n = 70_000;
            let ranges = [(0usize, 30_000usize), (30_000, 50_000), (60_000, 70_000)];
            let cfgs = [
                AdamConfig {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    decoupled_weight_decay: false,
                    amsgrad: false,
                },
                AdamConfig {
                    lr: 3e-3,
                    beta1: 0.6,
                    beta2: 0.99,
                    eps: 1e-6,
                    weight_decay: 0.05,
                    decoupled_weight_decay: true,
                    amsgrad: false,
                },
                AdamConfig {
                    lr: 1e-2,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.0,
                    decoupled_weight_decay: true,
                    amsgrad: true,
                },
            ];
            let mut p: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let (mut m, mut v, mut vm) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
            let (mut dp, mut dm, mut dv, mut dvm) =
                (gpu.upload(&p).unwrap(), gpu.upload(&m).unwrap(), gpu.upload(&v).unwrap(), gpu.upload(&vm).unwrap());
            let mut table = SegmentTable::new(gpu, ranges.len()).unwrap();
            for step in 1..=5u64 {
                let g: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                for (&(a, b), cfg) in ranges.iter().zip(&cfgs) {
                    super::super::adam_step(
                        &mut p[a..b],
                        &g[a..b],
                        &mut m[a..b],
                        &mut v[a..b],
                        &mut vm[a..b],
                        cfg,
                        step,
                    );
                }
                for (k, (&(a, b), cfg)) in ranges.iter().zip(&cfgs).enumerate() {
                    table.host[k] = segment(cfg, step, a, b);
                }
                table.upload(gpu).unwrap();
                let dg = gpu.upload(&g).unwrap();
                step_fn(gpu, &mut dp, &dg, &mut dm, &mut dv, &mut dvm, &table);
            }
            for (what, d, h) in [("param", &dp, &p), ("exp_avg", &dm, &m), ("exp_avg_sq", &dv, &v)] {
                let got = gpu.download(d).unwrap();
                let diff = got.iter().zip(h.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(diff, 0, "{what}: {diff} elements differ from the CPU");
            }
            let got = gpu.download(&dvm).unwrap();
            assert_eq!(&got[60_000..], &vm[60_000..], "max_exp_avg_sq differs");
        }

        fn step_fn(
            gpu: &Gpu,
            p: &mut cudarc::driver::CudaSlice<f32>,
            g: &cudarc::driver::CudaSlice<f32>,
            m: &mut cudarc::driver::CudaSlice<f32>,
            v: &mut cudarc::driver::CudaSlice<f32>,
            vm: &mut cudarc::driver::CudaSlice<f32>,
            table: &SegmentTable,
        ) {
            step(
                gpu,
                &mut p.as_view_mut(),
                &g.as_view(),
                &mut m.as_view_mut(),
                &mut v.as_view_mut(),
                &mut vm.as_view_mut(),
                table,
            )
            .unwrap();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::optim::test_support::*;
    use serde_json::Value;

    /// The config of a torch `Adam` / `AdamW` case (AdamW's `decoupled_weight_decay` is true).
    fn config(hp: &Value) -> AdamConfig {
        let (beta1, beta2) = hp_betas(hp);
        AdamConfig {
            lr: hp_f64(hp, "lr"),
            beta1,
            beta2,
            eps: hp_f64(hp, "eps"),
            weight_decay: hp_f64(hp, "weight_decay"),
            decoupled_weight_decay: hp_bool(hp, "decoupled_weight_decay"),
            amsgrad: hp_bool(hp, "amsgrad"),
        }
    }

    /// Runs one reference case through [`adam_step`].
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let cfg = config(hp);
        let mut p: Vec<T> = to_t(init);
        let (mut m, mut v) = (vec![T::ZERO; p.len()], vec![T::ZERO; p.len()]);
        // State only when AMSGrad is on, as torch keeps `max_exp_avg_sq` only then.
        let mut vmax = vec![T::ZERO; if cfg.amsgrad { p.len() } else { 0 }];
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            adam_step(&mut p, &to_t(g), &mut m, &mut v, &mut vmax, &cfg, t as u64 + 1);
            out.push(to_f64(&p));
        }
        out
    }

    #[test]
    fn matches_every_torch_adam_case() {
        check_class("torch.optim.Adam");
    }

    #[test]
    fn matches_every_torch_adamw_case() {
        check_class("torch.optim.AdamW");
    }

    /// The AMSGrad cases exist and are covered (they need the third buffer).
    #[test]
    fn amsgrad_cases_match_torch() {
        let r = Reference::load();
        for name in ["adam_amsgrad", "adamw_amsgrad"] {
            assert_eq!(r.case(name).hyper_parameters["amsgrad"], true);
            check_reference_case(&r, name);
        }
    }

    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        for (decoupled, amsgrad) in [(false, false), (false, true), (true, false), (true, true)] {
            let cfg = AdamConfig {
                lr: 1e-2,
                beta1: 0.8,
                beta2: 0.95,
                eps: 1e-6,
                weight_decay: 0.1,
                decoupled_weight_decay: decoupled,
                amsgrad,
            };
            check_parallel_matches_sequential("adam", 3, |p, g, s, t| {
                let [m, v, vm] = s else { unreachable!() };
                let vm: &mut [f32] = if amsgrad { vm } else { &mut [] };
                adam_step(p, g, m, v, vm, &cfg, t);
            });
        }
    }

    #[test]
    fn amsgrad_without_its_buffer_panics() {
        let cfg = AdamConfig { amsgrad: true, ..Default::default() };
        let r = std::panic::catch_unwind(|| {
            let mut p = [1.0f32; 4];
            adam_step(&mut p, &[1.0; 4], &mut [0.0; 4], &mut [0.0; 4], &mut [], &cfg, 1);
        });
        assert!(r.is_err());
    }
}
