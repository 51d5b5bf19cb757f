//! Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and coupled (L2) weight
//! decay, numerically equivalent to `torch.optim.SGD` (single-tensor path).
//!
//! Per element, at 1-based step `t`:
//! ```text
//! g = grad + weight_decay * p                     (only when weight_decay != 0)
//! if momentum != 0:
//!     buf = g                                     (t == 1: no dampening, as torch)
//!     buf = momentum * buf + (1 - dampening) * g  (t > 1)
//!     g = g + momentum * buf  if nesterov  else  buf
//! p = p - lr * g
//! ```

use super::{for_each_chunk2, for_each_chunk3};
use crate::Float;

/// Hyper-parameters of [`sgd_step`], named and defaulted as in `torch.optim.SGD`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor; 0 disables the momentum buffer entirely.
    pub momentum: f64,
    /// Dampening applied to the gradient when it is added to the momentum buffer (not on the first step).
    pub dampening: f64,
    /// Coupled L2 penalty: the gradient becomes `grad + weight_decay * param`.
    pub weight_decay: f64,
    /// Use Nesterov momentum (`g + momentum * buf` instead of `buf`).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// torch's defaults, except `lr`, which torch requires explicitly: 1e-3 here.
    fn default() -> Self {
        Self { lr: 1e-3, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

/// Scalars of one SGD step, cast once to the element type.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    neg_lr: T,
    weight_decay: T,
    momentum: T,
    /// `1 - dampening`.
    grad_scale: T,
}

/// One SGD update of `param` in place, given its `grad` and its `momentum_buf`.
///
/// `step` is the 1-based number of this optimizer step: at step 1 the momentum buffer is overwritten with the
/// (weight-decayed) gradient, as torch initialises it lazily; afterwards it is accumulated. With
/// `cfg.momentum == 0` the buffer is not touched and may be empty. All non-empty slices must have the same
/// length. Runs in parallel for slices of at least [`PAR_THRESHOLD`](super::PAR_THRESHOLD) elements.
pub fn sgd_step<T: Float>(param: &mut [T], grad: &[T], momentum_buf: &mut [T], cfg: &SgdConfig, step: u64) {
    assert_eq!(param.len(), grad.len(), "sgd_step: param and grad lengths differ");
    assert!(step >= 1, "sgd_step: step is 1-based");
    let c = Coeffs {
        neg_lr: T::from_f64(-cfg.lr),
        weight_decay: T::from_f64(cfg.weight_decay),
        momentum: T::from_f64(cfg.momentum),
        grad_scale: T::from_f64(1.0 - cfg.dampening),
    };
    // Weight decay is skipped (not multiplied by 0) when disabled, as torch does, so inf/NaN parameters do not
    // leak into the gradient. Each configuration gets its own monomorphised loop free of per-element branches.
    let wd = cfg.weight_decay != 0.0;
    if cfg.momentum == 0.0 {
        let kernel = if wd { update::<T, true, false, false, false> } else { update::<T, false, false, false, false> };
        for_each_chunk2(param, grad, |p, g| kernel(p, g, &mut [], c));
        return;
    }
    assert_eq!(param.len(), momentum_buf.len(), "sgd_step: param and momentum_buf lengths differ");
    let first = step == 1;
    let kernel = match (wd, first, cfg.nesterov) {
        (false, false, false) => update::<T, false, true, false, false>,
        (false, false, true) => update::<T, false, true, false, true>,
        (false, true, false) => update::<T, false, true, true, false>,
        (false, true, true) => update::<T, false, true, true, true>,
        (true, false, false) => update::<T, true, true, false, false>,
        (true, false, true) => update::<T, true, true, false, true>,
        (true, true, false) => update::<T, true, true, true, false>,
        (true, true, true) => update::<T, true, true, true, true>,
    };
    for_each_chunk3(param, grad, momentum_buf, |p, g, b| kernel(p, g, b, c));
}

/// The fused per-element loop over one chunk. `MOMENTUM == false` ignores `buf` (it may be empty);
/// `FIRST` selects the buffer initialisation of step 1.
#[inline(always)]
fn update_body<T: Float, const WD: bool, const MOMENTUM: bool, const FIRST: bool, const NESTEROV: bool>(
    param: &mut [T],
    grad: &[T],
    buf: &mut [T],
    c: Coeffs<T>,
) {
    if !MOMENTUM {
        for (p, &g) in param.iter_mut().zip(grad) {
            let g = if WD { g + c.weight_decay * *p } else { g };
            *p += c.neg_lr * g;
        }
        return;
    }
    for ((p, &g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
        let g = if WD { g + c.weight_decay * *p } else { g };
        // torch: buf.mul_(momentum).add_(g, alpha=1 - dampening), i.e. the product is rounded before the add.
        let nb = if FIRST { g } else { *b * c.momentum + c.grad_scale * g };
        *b = nb;
        let d = if NESTEROV { g + c.momentum * nb } else { nb };
        *p += c.neg_lr * d;
    }
}

crate::multiversion!(
    /// [`update_body`] compiled for the best instruction set of the CPU.
    fn update<T: Float; const WD: bool; const MOMENTUM: bool; const FIRST: bool; const NESTEROV: bool>(
        param: &mut [T], grad: &[T], buf: &mut [T], c: Coeffs<T>
    ) => update_body
);

/// The CUDA kernel of SGD (`sgd.cu`).
pub static CUDA: crate::cuda::KernelSource =
    crate::cuda::KernelSource { name: "sgd", code: include_str!("sgd.cu"), kernels: &["sgd_step_f32"] };

/// Host side of `sgd.cu`: one launch updates every segment of the arenas.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::{SgdConfig, CUDA};
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};

    /// The segment of elements `start..end` updated with `cfg` at 1-based `step`: the coefficients and
    /// branches [`sgd_step`](super::sgd_step) uses (step 1 initialises the momentum buffer).
    pub fn segment(cfg: &SgdConfig, step: u64, start: usize, end: usize) -> Segment {
        let mut flags = 0;
        if cfg.weight_decay != 0.0 {
            flags |= 1;
        }
        if cfg.momentum != 0.0 {
            flags |= 2;
        }
        if step == 1 {
            flags |= 4;
        }
        if cfg.nesterov {
            flags |= 8;
        }
        let mut c = [0.0f32; 12];
        c[0] = (-cfg.lr) as f32;
        c[1] = cfg.weight_decay as f32;
        c[2] = cfg.momentum as f32;
        c[3] = (1.0 - cfg.dampening) as f32;
        Segment { start: start as u64, end: end as u64, coeffs: c, flags, pad: 0 }
    }

    /// One update of every segment in `table` (already uploaded). `momentum_buf` is read and written only
    /// by segments with momentum; when none has, any buffer may be passed (it is not touched).
    pub fn step(
        gpu: &Gpu,
        param: &mut CudaViewMut<f32>,
        grad: &CudaView<f32>,
        momentum_buf: &mut CudaViewMut<f32>,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = param.len();
        assert_eq!(grad.len(), n, "sgd step: param and grad lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "sgd step: a segment lies outside the arena");
        let uses_buf = table.host.iter().any(|s| s.flags & 2 != 0);
        assert!(!uses_buf || momentum_buf.len() == n, "sgd step: momentum needs a buffer of the arena's length");
        let f = gpu.function(&CUDA, "sgd_step_f32")?;
        let nsegs = table.host.len() as i32;
        let mut b = gpu.launch_builder(&f);
        b.arg(param).arg(grad).arg(momentum_buf).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: the arguments match sgd_step_f32's signature (float*, const float*, float*, const Segment*,
        // int, size_t); param and grad hold n elements, momentum_buf too wherever a segment reads it, and the
        // table holds nsegs sorted segments inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::optim::cuda_check::check_fused_bitwise;

        /// Plain SGD with decay, momentum with dampening, Nesterov with decay, and heavy-ball momentum on a
        /// one-element parameter, over several steps (step 1 initialises the buffers): bitwise the CPU's.
        #[test]
        fn fused_sgd_matches_cpu_bitwise() {
            let cfgs = [
                SgdConfig { lr: 0.1, momentum: 0.0, dampening: 0.0, weight_decay: 1e-2, nesterov: false },
                SgdConfig { lr: 3e-2, momentum: 0.9, dampening: 0.3, weight_decay: 0.0, nesterov: false },
                SgdConfig { lr: 1e-2, momentum: 0.95, dampening: 0.0, weight_decay: 5e-4, nesterov: true },
                SgdConfig { lr: 0.7, momentum: 0.5, dampening: 0.0, weight_decay: 0.0, nesterov: false },
            ];
            check_fused_bitwise(
                "fused_sgd_matches_cpu_bitwise",
                1,
                0.0,
                6,
                &mut |k, p, g, s, t| super::super::sgd_step(p, g, &mut s[0][..], &cfgs[k], t),
                &mut |k, t, a, b| segment(&cfgs[k], t, a, b),
                &mut |gpu, p, g, s, table| {
                    let [buf] = s else { unreachable!() };
                    step(gpu, &mut p.as_view_mut(), &g.as_view(), &mut buf.as_view_mut(), table).unwrap()
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

    fn config(hp: &Value) -> SgdConfig {
        SgdConfig {
            lr: hp_f64(hp, "lr"),
            momentum: hp_f64(hp, "momentum"),
            dampening: hp_f64(hp, "dampening"),
            weight_decay: hp_f64(hp, "weight_decay"),
            nesterov: hp_bool(hp, "nesterov"),
        }
    }

    /// Runs one reference case through [`sgd_step`].
    pub(crate) fn run_case<T: Float>(hp: &Value, init: &[f64], grads: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let cfg = config(hp);
        let mut p: Vec<T> = to_t(init);
        let mut buf = vec![T::ZERO; if cfg.momentum != 0.0 { p.len() } else { 0 }];
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            sgd_step(&mut p, &to_t(g), &mut buf, &cfg, t as u64 + 1);
            out.push(to_f64(&p));
        }
        out
    }

    fn check_case(name: &str) {
        let r = Reference::load();
        assert_eq!(r.case(name).class, "torch.optim.SGD");
        check_reference_case(&r, name);
    }

    #[test]
    fn sgd_matches_torch() {
        check_case("sgd");
    }

    #[test]
    fn sgd_momentum_matches_torch() {
        check_case("sgd_momentum");
    }

    #[test]
    fn sgd_nesterov_matches_torch() {
        check_case("sgd_nesterov");
    }

    #[test]
    fn sgd_weight_decay_matches_torch() {
        check_case("sgd_weight_decay");
    }

    #[test]
    fn sgd_momentum_dampening_wd_matches_torch() {
        check_case("sgd_momentum_dampening_wd");
    }

    #[test]
    fn sgd_nesterov_wd_matches_torch() {
        check_case("sgd_nesterov_wd");
    }

    #[test]
    fn matches_every_torch_sgd_case() {
        check_class("torch.optim.SGD");
    }

    #[test]
    fn momentum_zero_accepts_empty_buffer() {
        let cfg = SgdConfig { lr: 0.5, ..Default::default() };
        let mut p = [1.0f32, 2.0];
        sgd_step(&mut p, &[2.0, -2.0], &mut [], &cfg, 3);
        assert_eq!(p, [0.0, 3.0]);
    }

    /// The rayon path (one call on a long slice) equals the sequential path (the same data fed in pieces below
    /// the threshold) bit for bit, for every momentum variant and over several steps.
    #[test]
    fn parallel_path_is_bit_identical_to_sequential() {
        let n = 3 * super::super::PAR_THRESHOLD + 1234;
        assert!(n >= super::super::PAR_THRESHOLD);
        let piece = super::super::PAR_THRESHOLD / 2 - 7; // deliberately not aligned with PAR_CHUNK
        for nesterov in [false, true] {
            let cfg = SgdConfig { lr: 0.01, momentum: 0.9, dampening: 0.1, weight_decay: 0.01, nesterov };
            let mut p_par: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
            let mut b_par = vec![0.0f32; n];
            let mut p_seq = p_par.clone();
            let mut b_seq = b_par.clone();
            for step in 1..=3u64 {
                let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11 + step as f32).cos()).collect();
                sgd_step(&mut p_par, &g, &mut b_par, &cfg, step);
                for ((p, g), b) in p_seq.chunks_mut(piece).zip(g.chunks(piece)).zip(b_seq.chunks_mut(piece)) {
                    sgd_step(p, g, b, &cfg, step);
                }
            }
            assert!(p_par.iter().zip(&p_seq).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(b_par.iter().zip(&b_seq).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
