//! RMSprop, plain or centered, with optional momentum and coupled weight decay, numerically equivalent to
//! `torch.optim.RMSprop` (single-tensor path).
//!
//! Per element:
//! ```text
//! g  = g + weight_decay * p                        (only when weight_decay != 0)
//! sq = sq * alpha + (1 - alpha) * g * g
//! centered:  ga = lerp(ga, g, 1 - alpha);  avg = sqrt(sq - ga * ga) + eps
//! otherwise: avg = sqrt(sq) + eps                  (eps after the root, as torch; TensorFlow differs)
//! momentum > 0: buf = buf * momentum + g / avg;  p = p - lr * buf
//! otherwise:    p = p + (-lr) * g / avg
//! ```
//! Unlike SGD, the momentum buffer starts at zero (torch creates it with `zeros_like`), so step 1 needs no
//! special case; the update does not depend on the step number at all.

use super::{check_len, for_each_chunk3, for_each_chunk4, for_each_chunk5, LerpWeight};
use crate::Float;

/// Hyper-parameters of [`rmsprop_step`], named and defaulted as in `torch.optim.RMSprop`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmspropConfig {
    /// Learning rate.
    pub lr: f64,
    /// Smoothing constant of the running averages.
    pub alpha: f64,
    /// Added to the root of the (centered) second moment.
    pub eps: f64,
    /// Coupled L2 penalty: the gradient becomes `grad + weight_decay * param`.
    pub weight_decay: f64,
    /// Momentum factor; 0 disables the momentum buffer entirely.
    pub momentum: f64,
    /// Normalise by an estimate of the variance (needs the `grad_avg` buffer).
    pub centered: bool,
}

impl Default for RmspropConfig {
    /// torch's defaults: lr 1e-2, alpha 0.99, eps 1e-8, no weight decay, no momentum, not centered.
    fn default() -> Self {
        Self { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.0, centered: false }
    }
}

/// Scalars of one RMSprop step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    weight_decay: T,
    alpha: T,
    one_minus_alpha: T,
    lerp: LerpWeight<T>,
    eps: T,
    momentum: T,
    neg_lr: T,
}

/// One RMSprop update of `param` in place, given its `grad` and the state buffers (zero before step 1):
/// `square_avg` always, `grad_avg` when `cfg.centered`, `momentum_buffer` when `cfg.momentum > 0`; a buffer
/// that is not used is not touched and may be empty. All used slices have the same length. Runs in parallel
/// for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn rmsprop_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    square_avg: &mut [T],
    grad_avg: &mut [T],
    momentum_buffer: &mut [T],
    cfg: &RmspropConfig,
) {
    let n = param.len();
    check_len("rmsprop_step grad", grad, n);
    check_len("rmsprop_step square_avg", square_avg, n);
    let c = Coeffs {
        weight_decay: T::from_f64(cfg.weight_decay),
        alpha: T::from_f64(cfg.alpha),
        one_minus_alpha: T::from_f64(1.0 - cfg.alpha),
        lerp: LerpWeight::new(1.0 - cfg.alpha),
        eps: T::from_f64(cfg.eps),
        momentum: T::from_f64(cfg.momentum),
        neg_lr: T::from_f64(-cfg.lr),
    };
    let wd = cfg.weight_decay != 0.0;
    let momentum = cfg.momentum > 0.0;
    if cfg.centered {
        check_len("rmsprop_step grad_avg", grad_avg, n);
    }
    if momentum {
        check_len("rmsprop_step momentum_buffer", momentum_buffer, n);
    }
    macro_rules! kernel {
        ($c:literal, $m:literal) => {
            if wd {
                update::<T, true, $c, $m>
            } else {
                update::<T, false, $c, $m>
            }
        };
    }
    match (cfg.centered, momentum) {
        (false, false) => {
            let k = kernel!(false, false);
            for_each_chunk3(param, grad, square_avg, |p, g, s| k(p, g, s, &mut [], &mut [], c));
        }
        (true, false) => {
            let k = kernel!(true, false);
            for_each_chunk4(param, grad, square_avg, grad_avg, |p, g, s, a| k(p, g, s, a, &mut [], c));
        }
        (false, true) => {
            let k = kernel!(false, true);
            for_each_chunk4(param, grad, square_avg, momentum_buffer, |p, g, s, b| k(p, g, s, &mut [], b, c));
        }
        (true, true) => {
            let k = kernel!(true, true);
            for_each_chunk5(param, grad, square_avg, grad_avg, momentum_buffer, |p, g, s, a, b| k(p, g, s, a, b, c));
        }
    }
}

/// The fused per-element loop over one chunk, one line per torch op in torch's order. Buffers of disabled
/// features are never indexed (they may be empty); the others are re-sliced to the chunk length first so
/// the loop carries no bounds checks and vectorises.
#[inline(always)]
fn update_body<T: Float, const WD: bool, const CENTERED: bool, const MOMENTUM: bool>(
    param: &mut [T],
    grad: &[T],
    square_avg: &mut [T],
    grad_avg: &mut [T],
    buf: &mut [T],
    c: Coeffs<T>,
) {
    let n = param.len();
    let (grad, square_avg) = (&grad[..n], &mut square_avg[..n]);
    let grad_avg = if CENTERED { &mut grad_avg[..n] } else { grad_avg };
    let buf = if MOMENTUM { &mut buf[..n] } else { buf };
    for i in 0..n {
        let mut p = param[i];
        let g = if WD { grad[i] + c.weight_decay * p } else { grad[i] }; // grad.add(param, alpha=wd)
        let sq = square_avg[i] * c.alpha + c.one_minus_alpha * g * g; // mul_(alpha).addcmul_(g, g, 1 - alpha)
        square_avg[i] = sq;
        let avg = if CENTERED {
            let ga = c.lerp.apply(grad_avg[i], g); // grad_avg.lerp_(grad, 1 - alpha)
            grad_avg[i] = ga;
            (sq + -ga * ga).sqrt() + c.eps // square_avg.addcmul(ga, ga, value=-1).sqrt_().add_(eps)
        } else {
            sq.sqrt() + c.eps // square_avg.sqrt().add_(eps)
        };
        if MOMENTUM {
            let b = buf[i] * c.momentum + g / avg; // buf.mul_(momentum).addcdiv_(grad, avg)
            buf[i] = b;
            p += c.neg_lr * b; // param.add_(buf, alpha=-lr)
        } else {
            p += c.neg_lr * g / avg; // param.addcdiv_(grad, avg, value=-lr)
        }
        param[i] = p;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const WD: bool; const CENTERED: bool; const MOMENTUM: bool>(
        param: &mut [T], grad: &[T], square_avg: &mut [T], grad_avg: &mut [T], buf: &mut [T], c: Coeffs<T>
    ) => update_body
);

/// The CUDA kernel of RMSprop (`rmsprop.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "rmsprop", code: include_str!("rmsprop.cu"), kernels: &["rmsprop_step_f32"] };

/// Host side of `rmsprop.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{RmspropConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};
    use crate::optim::LerpWeight;

    /// The segment of elements `start..end` updated with `cfg` (RMSprop does not depend on the step): the
    /// coefficients [`rmsprop_step`](super::rmsprop_step) computes, in the same f64 arithmetic.
    pub fn segment(cfg: &RmspropConfig, start: usize, end: usize) -> Segment {
        let lerp = LerpWeight::<f32>::new(1.0 - cfg.alpha);
        let mut flags = 0;
        if cfg.weight_decay != 0.0 {
            flags |= 1;
        }
        if cfg.centered {
            flags |= 2;
        }
        if cfg.momentum > 0.0 {
            flags |= 4;
        }
        if lerp.from_start {
            flags |= 8;
        }
        let mut c = [0.0f32; 12];
        c[0] = cfg.weight_decay as f32;
        c[1] = cfg.alpha as f32;
        c[2] = (1.0 - cfg.alpha) as f32;
        c[3] = lerp.coeff;
        c[4] = cfg.eps as f32;
        c[5] = cfg.momentum as f32;
        c[6] = (-cfg.lr) as f32;
        Segment { start: start as u64, end: end as u64, coeffs: c, flags, pad: 0 }
    }

    /// One update of every segment in `table` (already uploaded). `grad_avg` is touched only by centered
    /// segments and `momentum_buffer` only by segments with momentum; when no segment uses one, any buffer
    /// may be passed for it.
    pub fn step(
        gpu: &Gpu,
        param: &mut CudaViewMut<f32>,
        grad: &CudaView<f32>,
        square_avg: &mut CudaViewMut<f32>,
        grad_avg: &mut CudaViewMut<f32>,
        momentum_buffer: &mut CudaViewMut<f32>,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = param.len();
        assert!(grad.len() == n && square_avg.len() == n, "rmsprop step: arena lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "rmsprop step: a segment lies outside the arena");
        let uses = |bit: u32| table.host.iter().any(|s| s.flags & bit != 0);
        assert!(!uses(2) || grad_avg.len() == n, "rmsprop step: centered segments need grad_avg");
        assert!(!uses(4) || momentum_buffer.len() == n, "rmsprop step: momentum needs momentum_buffer");
        let f = gpu.function(&CUDA, "rmsprop_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(param).arg(grad).arg(square_avg).arg(grad_avg).arg(momentum_buffer);
        b.arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match rmsprop_step_f32's signature (float*, const float*, float*, float*,
        // float*, const Segment*, int, size_t); every buffer a segment reads holds n elements and the table
        // nsegs sorted segments inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::optim::cuda_check::check_fused_bitwise;

        /// Every combination of centered and momentum (one per segment), with and without decay, and an
        /// alpha below 0.5 (lerp from the end): bitwise the CPU's, and unused buffers stay untouched.
        #[test]
        fn fused_rmsprop_matches_cpu_bitwise() {
            let base = RmspropConfig::default();
            let cfgs = [
                RmspropConfig { weight_decay: 1e-2, ..base },
                RmspropConfig { lr: 1e-3, centered: true, ..base },
                RmspropConfig { lr: 3e-3, alpha: 0.3, momentum: 0.9, weight_decay: 0.1, ..base },
                RmspropConfig { lr: 1e-3, alpha: 0.9, eps: 1e-6, momentum: 0.5, centered: true, ..base },
            ];
            check_fused_bitwise(
                "fused_rmsprop_matches_cpu_bitwise",
                3,
                0.0,
                5,
                &mut |k, p, g, s, _| {
                    let [sq, ga, buf] = s else { unreachable!() };
                    super::super::rmsprop_step(p, g, sq, ga, buf, &cfgs[k])
                },
                &mut |k, _, a, b| segment(&cfgs[k], a, b),
                &mut |gpu, p, g, s, table| {
                    let [sq, ga, buf] = s else { unreachable!() };
                    let (mut sq, mut ga, mut buf) = (sq.as_view_mut(), ga.as_view_mut(), buf.as_view_mut());
                    step(gpu, &mut p.as_view_mut(), &g.as_view(), &mut sq, &mut ga, &mut buf, table).unwrap()
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

    /// Runs one reference case through [`rmsprop_step`], with only the buffers torch would create.
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let cfg = RmspropConfig {
            lr: hp_f64(hp, "lr"),
            alpha: hp_f64(hp, "alpha"),
            eps: hp_f64(hp, "eps"),
            weight_decay: hp_f64(hp, "weight_decay"),
            momentum: hp_f64(hp, "momentum"),
            centered: hp_bool(hp, "centered"),
        };
        let mut p: Vec<T> = to_t(init);
        let n = p.len();
        let mut sq = vec![T::ZERO; n];
        let mut ga = vec![T::ZERO; if cfg.centered { n } else { 0 }];
        let mut buf = vec![T::ZERO; if cfg.momentum > 0.0 { n } else { 0 }];
        let mut out = Vec::new();
        for g in grads {
            rmsprop_step(&mut p, &to_t(g), &mut sq, &mut ga, &mut buf, &cfg);
            out.push(to_f64(&p));
        }
        out
    }

    #[test]
    fn matches_every_torch_rmsprop_case() {
        check_class("torch.optim.RMSprop");
    }

    /// The reference covers plain, momentum, centered and centered + momentum + weight decay.
    #[test]
    fn reference_covers_every_variant() {
        let r = Reference::load();
        let mut seen = std::collections::BTreeSet::new();
        for name in r.names_of_class("torch.optim.RMSprop") {
            let hp = r.case(&name).hyper_parameters;
            seen.insert((hp_bool(&hp, "centered"), hp_f64(&hp, "momentum") > 0.0));
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        for (centered, momentum) in [(false, 0.0), (true, 0.0), (false, 0.9), (true, 0.9)] {
            let cfg = RmspropConfig { weight_decay: 0.01, momentum, centered, ..Default::default() };
            check_parallel_matches_sequential("rmsprop", 3, |p, g, s, _| {
                let [sq, ga, b] = s else { unreachable!() };
                rmsprop_step(p, g, sq, ga, b, &cfg);
            });
        }
    }
}
