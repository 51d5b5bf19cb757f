//! NAdam (Adam with Nesterov momentum and a momentum-decay schedule), numerically equivalent to
//! `torch.optim.NAdam` (single-tensor path), with coupled or decoupled (NAdamW) weight decay.
//!
//! At 1-based step `t`, with `mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))` and the running product
//! `mu_product = mu_1 * ... * mu_t`, per element:
//! ```text
//! p = p * (1 - lr * weight_decay)            (decoupled)        g = g + weight_decay * p   (coupled)
//! m = lerp(m, g, 1 - beta1)
//! v = v * beta2 + (1 - beta2) * g * g
//! denom = sqrt(v / (1 - beta2^t)) + eps
//! p = p + (-lr * (1 - mu_t) / (1 - mu_product)) * g / denom
//! p = p + (-lr * mu_{t+1} / (1 - mu_product * mu_{t+1})) * m / denom
//! ```
//! torch keeps `mu_product` in a float32 scalar tensor whatever the parameters' dtype, so the product is
//! rounded to f32 at every step ([`advance_mu_product`]); the f64 reference depends on that rounding (~2e-11).
//! It is one value per optimizer, not per element: the caller keeps it (the engine in `OptimizerState`'s
//! scalars, so it survives a checkpoint) and advances it once per step, before the parameters are updated.

use super::{check_len, for_each_chunk4, LerpWeight};
use crate::Float;

/// Hyper-parameters of [`nadam_step`], named as in `torch.optim.NAdam`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NadamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay rate of the first moment (torch `betas[0]`), the scale of every `mu_t`.
    pub beta1: f64,
    /// Decay rate of the second moment (torch `betas[1]`).
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient, or (decoupled) a shrink of the parameter.
    pub weight_decay: f64,
    /// psi of the momentum schedule `mu_t = beta1 * (1 - 0.5 * 0.96^(t * psi))`.
    pub momentum_decay: f64,
    /// Decay the parameter by `1 - lr * weight_decay` instead of adding an L2 term (NAdamW).
    pub decoupled_weight_decay: bool,
}

impl Default for NadamConfig {
    /// torch's defaults: lr 2e-3, betas (0.9, 0.999), eps 1e-8, no weight decay, momentum_decay 4e-3.
    fn default() -> Self {
        Self {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
        }
    }
}

/// The initial value of the running momentum product (torch's `state['mu_product']`).
pub const MU_PRODUCT_INIT: f32 = 1.0;

/// `mu_t` of the momentum schedule, as torch computes it in Python floats.
fn mu(cfg: &NadamConfig, t: f64) -> f64 {
    cfg.beta1 * (1.0 - 0.5 * 0.96f64.powf(t * cfg.momentum_decay))
}

/// The running momentum product after step `step` (1-based), from the product before it:
/// `mu_product * mu_step`, computed in f32 as torch's `mu_product *= mu` on its float32 scalar tensor.
pub fn advance_mu_product(mu_product: f32, cfg: &NadamConfig, step: u64) -> f32 {
    mu_product * mu(cfg, step as f64) as f32
}

/// Scalars of one NAdam step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    decay: T,
    weight_decay: T,
    lerp: LerpWeight<T>,
    beta2: T,
    one_minus_beta2: T,
    bias_correction2: T,
    eps: T,
    grad_step: T,
    avg_step: T,
}

/// One NAdam update of `param` in place, given its `grad`, first moment `exp_avg` and second moment
/// `exp_avg_sq` (both zero before step 1), at 1-based `step`, with `mu_product` the running product
/// already advanced to this step ([`advance_mu_product`]). All slices have the same length. Runs in
/// parallel for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn nadam_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    cfg: &NadamConfig,
    step: u64,
    mu_product: f32,
) {
    let n = param.len();
    check_len("nadam_step grad", grad, n);
    check_len("nadam_step exp_avg", exp_avg, n);
    check_len("nadam_step exp_avg_sq", exp_avg_sq, n);
    assert!(step >= 1, "nadam_step: step is 1-based");
    let t = step as f64;
    let (mu, mu_next) = (mu(cfg, t), mu(cfg, t + 1.0));
    let mu_product = mu_product as f64; // torch: _get_value(mu_product), the f32 value as a Python float
    let mu_product_next = mu_product * mu_next;
    let c = Coeffs {
        decay: T::from_f64(1.0 - cfg.lr * cfg.weight_decay),
        weight_decay: T::from_f64(cfg.weight_decay),
        lerp: LerpWeight::new(1.0 - cfg.beta1),
        beta2: T::from_f64(cfg.beta2),
        one_minus_beta2: T::from_f64(1.0 - cfg.beta2),
        bias_correction2: T::from_f64(1.0 - cfg.beta2.powf(t)),
        eps: T::from_f64(cfg.eps),
        grad_step: T::from_f64(-cfg.lr * (1.0 - mu) / (1.0 - mu_product)),
        avg_step: T::from_f64((-cfg.lr * mu_next) / (1.0 - mu_product_next)),
    };
    let wd = cfg.weight_decay != 0.0;
    let kernel = match (wd && !cfg.decoupled_weight_decay, wd && cfg.decoupled_weight_decay) {
        (false, false) => update::<T, false, false>,
        (true, _) => update::<T, true, false>,
        (false, true) => update::<T, false, true>,
    };
    for_each_chunk4(param, grad, exp_avg, exp_avg_sq, |p, g, m, v| kernel(p, g, m, v, c));
}

/// The fused per-element loop over one chunk, one line per torch op in torch's order.
#[inline(always)]
fn update_body<T: Float, const COUPLED: bool, const DECOUPLED: bool>(
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
        let denom = (vv / c.bias_correction2).sqrt() + c.eps; // exp_avg_sq.div(bc2).sqrt().add_(eps)
        pv += c.grad_step * g / denom; // param.addcdiv_(grad, denom, value=-lr (1 - mu) / (1 - mu_product))
        pv += c.avg_step * mv / denom; // param.addcdiv_(exp_avg, denom, value=-lr mu_next / (1 - mu_product_next))
        *m = mv;
        *v = vv;
        *p = pv;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const COUPLED: bool; const DECOUPLED: bool>(
        param: &mut [T], grad: &[T], exp_avg: &mut [T], exp_avg_sq: &mut [T], c: Coeffs<T>
    ) => update_body
);

/// The CUDA kernel of NAdam (`nadam.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "nadam", code: include_str!("nadam.cu"), kernels: &["nadam_step_f32"] };

/// Host side of `nadam.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{mu, NadamConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};
    use crate::optim::LerpWeight;

    /// The segment of elements `start..end` updated with `cfg` at 1-based `step`, with `mu_product` the
    /// running product already advanced to this step ([`advance_mu_product`](super::advance_mu_product), on
    /// the host, once per step): the coefficients [`nadam_step`](super::nadam_step) computes, in f64.
    pub fn segment(cfg: &NadamConfig, step: u64, mu_product: f32, start: usize, end: usize) -> Segment {
        let t = step as f64;
        let (mu, mu_next) = (mu(cfg, t), mu(cfg, t + 1.0));
        let mu_product = mu_product as f64;
        let mu_product_next = mu_product * mu_next;
        let lerp = LerpWeight::<f32>::new(1.0 - cfg.beta1);
        let wd = cfg.weight_decay != 0.0;
        let mut flags = 0;
        if wd && !cfg.decoupled_weight_decay {
            flags |= 1;
        }
        if wd && cfg.decoupled_weight_decay {
            flags |= 2;
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
        c[5] = (1.0 - cfg.beta2.powf(t)) as f32;
        c[6] = cfg.eps as f32;
        c[7] = (-cfg.lr * (1.0 - mu) / (1.0 - mu_product)) as f32;
        c[8] = ((-cfg.lr * mu_next) / (1.0 - mu_product_next)) as f32;
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
        assert!(grad.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n, "nadam step: arena lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "nadam step: a segment lies outside the arena");
        let f = gpu.function(&CUDA, "nadam_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(param).arg(grad).arg(exp_avg).arg(exp_avg_sq).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match nadam_step_f32's signature (float*, const float*, float*, float*,
        // const Segment*, int, size_t); every buffer holds n elements and the table nsegs sorted segments
        // inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::optim::advance_mu_product;
        use crate::optim::cuda_check::{check_fused_bitwise, RANGES};

        /// Defaults, NAdamW, coupled decay and a fast momentum schedule, each with its own mu_product
        /// advanced on the host once per step as the engine does: bitwise the CPU's.
        #[test]
        fn fused_nadam_matches_cpu_bitwise() {
            let base = NadamConfig::default();
            let cfgs = [
                base,
                NadamConfig { lr: 1e-2, weight_decay: 0.05, decoupled_weight_decay: true, ..base },
                NadamConfig { lr: 3e-3, beta1: 0.3, beta2: 0.99, weight_decay: 0.1, ..base },
                NadamConfig { lr: 5e-2, momentum_decay: 0.5, eps: 1e-6, ..base },
            ];
            // The product after each step, per segment (segments share a step but not a config here).
            let mut mu_products = vec![[super::super::MU_PRODUCT_INIT; RANGES.len()]];
            for t in 1..=6u64 {
                let prev = *mu_products.last().unwrap();
                mu_products.push(std::array::from_fn(|k| advance_mu_product(prev[k], &cfgs[k], t)));
            }
            check_fused_bitwise(
                "fused_nadam_matches_cpu_bitwise",
                2,
                0.0,
                6,
                &mut |k, p, g, s, t| {
                    let [m, v] = s else { unreachable!() };
                    super::super::nadam_step(p, g, m, v, &cfgs[k], t, mu_products[t as usize][k])
                },
                &mut |k, t, a, b| segment(&cfgs[k], t, mu_products[t as usize][k], a, b),
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

    fn config(hp: &Value) -> NadamConfig {
        let (beta1, beta2) = hp_betas(hp);
        NadamConfig {
            lr: hp_f64(hp, "lr"),
            beta1,
            beta2,
            eps: hp_f64(hp, "eps"),
            weight_decay: hp_f64(hp, "weight_decay"),
            momentum_decay: hp_f64(hp, "momentum_decay"),
            decoupled_weight_decay: hp_bool(hp, "decoupled_weight_decay"),
        }
    }

    /// Runs one reference case through [`nadam_step`]; also returns the final `mu_product`.
    fn run<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> (Vec<Vec<f64>>, f32) {
        let cfg = config(hp);
        let mut p: Vec<T> = to_t(init);
        let (mut m, mut v) = (vec![T::ZERO; p.len()], vec![T::ZERO; p.len()]);
        let mut mu_product = MU_PRODUCT_INIT;
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            let step = t as u64 + 1;
            mu_product = advance_mu_product(mu_product, &cfg, step);
            nadam_step(&mut p, &to_t(g), &mut m, &mut v, &cfg, step, mu_product);
            out.push(to_f64(&p));
        }
        (out, mu_product)
    }

    /// Runs one reference case through [`nadam_step`].
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        run::<T>(hp, init, grads).0
    }

    #[test]
    fn matches_every_torch_nadam_case() {
        check_class("torch.optim.NAdam");
    }

    /// The f32 running product equals torch's final `mu_product` bit for bit (an f32 value in both).
    #[test]
    fn mu_product_is_torchs_float32_product() {
        let r = Reference::load();
        for name in r.names_of_class("torch.optim.NAdam") {
            let (_, mu_product) = run::<f64>(&r.case(&name).hyper_parameters, &r.initial_params, &r.grads);
            // Compared in f32: serde_json's default float parser may be an ulp off in f64, never in f32.
            let want = r.final_state(&name, "mu_product").as_f64().unwrap() as f32;
            assert_eq!(mu_product.to_bits(), want.to_bits(), "{name}: {mu_product:e} vs {want:e}");
        }
    }

    /// Keeping the product in f64 instead misses the f64 reference by more than the 1e-12 tolerance: the
    /// float32 rounding is part of torch's algorithm, not noise.
    #[test]
    fn an_f64_product_would_miss_the_reference() {
        let r = Reference::load();
        let case = r.case("nadam");
        let cfg = config(&case.hyper_parameters);
        let mut p = r.initial_params.clone();
        let (mut m, mut v) = (vec![0.0; 8], vec![0.0; 8]);
        let mut mu_product = 1.0f64;
        let mut worst = 0.0f64;
        for (t, g) in r.grads.iter().enumerate() {
            let step = t as u64 + 1;
            mu_product *= mu(&cfg, step as f64);
            // The same update written out in f64; only the product differs from the kernel (never rounded to f32).
            let exact = mu_product;
            let t64 = step as f64;
            let (mu_t, mu_next) = (mu(&cfg, t64), mu(&cfg, t64 + 1.0));
            let bc2 = 1.0 - cfg.beta2.powf(t64);
            for i in 0..8 {
                m[i] += (1.0 - cfg.beta1) * (g[i] - m[i]);
                v[i] = v[i] * cfg.beta2 + (1.0 - cfg.beta2) * g[i] * g[i];
                let denom = (v[i] / bc2).sqrt() + cfg.eps;
                p[i] += (-cfg.lr * (1.0 - mu_t) / (1.0 - exact)) * g[i] / denom;
                p[i] += (-cfg.lr * mu_next / (1.0 - exact * mu_next)) * m[i] / denom;
            }
            for (a, b) in p.iter().zip(&case.params_f64[t]) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst > 1e-12, "an f64 mu_product unexpectedly matches ({worst:e})");
    }

    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        for decoupled in [false, true] {
            let cfg = NadamConfig { weight_decay: 0.1, decoupled_weight_decay: decoupled, ..Default::default() };
            check_parallel_matches_sequential("nadam", 2, |p, g, s, t| {
                let [m, v] = s else { unreachable!() };
                // Recomputed from 1 for each call so the full and the piecewise runs see the same product.
                let mu_product = (1..=t).fold(MU_PRODUCT_INIT, |mp, k| advance_mu_product(mp, &cfg, k));
                nadam_step(p, g, m, v, &cfg, t, mu_product);
            });
        }
    }
}
