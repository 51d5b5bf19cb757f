//! Fused optimizer update kernels over flat parameter / gradient / state slices: SGD, Adam / AdamW (with
//! AMSGrad), Adamax, NAdam, RAdam, RMSprop, Adagrad and Adadelta, each equivalent to its `torch.optim` class.
//!
//! The engine keeps parameters, gradients and every piece of optimizer state (momentum buffers, first and
//! second moments) in separate arenas, so a kernel here receives one contiguous slice per buffer, all of the
//! same length, and updates them elementwise. Each optimizer is written as a single fused pass: one read of
//! every input and one write of every output per element, instead of the chain of whole-tensor operations
//! `torch.optim` runs (that chain is what the reference trajectories were produced with, so the per-element
//! operation order below follows it closely enough to match torch's float32 results within 1e-6).
//!
//! Scalar coefficients (bias corrections, step sizes, decay factors) are computed once per step in f64, exactly
//! as PyTorch computes them in Python floats, and cast to the element type once. Kernels are generic over
//! [`Float`](crate::Float) and run on `f32` and `f64`. Long slices are split into fixed chunks processed by
//! rayon; since every element is independent the parallel and sequential paths give bit-identical results.
//! No kernel allocates.

pub mod adadelta;
pub mod adagrad;
pub mod adam;
pub mod adamax;
pub mod adamw;
pub mod clip;
pub mod ema;
pub mod loss_scale;
pub mod nadam;
pub mod radam;
pub mod rmsprop;
pub mod sgd;

pub use adadelta::{adadelta_step, AdadeltaConfig};
pub use adagrad::{adagrad_step, AdagradConfig};
pub use adam::{adam_step, AdamConfig};
pub use adamax::{adamax_step, AdamaxConfig};
pub use adamw::{adamw_step, AdamWConfig};
pub use nadam::{advance_mu_product, nadam_step, NadamConfig};
pub use radam::{radam_step, RadamConfig};
pub use rmsprop::{rmsprop_step, RmspropConfig};
pub use sgd::{sgd_step, SgdConfig};

use crate::Float;

use rayon::prelude::*;

/// Slices at least this long are updated in parallel; below it the rayon overhead outweighs the gain.
pub const PAR_THRESHOLD: usize = 128 * 1024;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance across cores and
/// to keep each task's working set within L2.
pub const PAR_CHUNK: usize = 16 * 1024;

/// Runs `f` over matching chunks of `param` and `grad` (in parallel when long).
pub(crate) fn for_each_chunk2<T, F>(param: &mut [T], grad: &[T], f: F)
where
    T: Send + Sync,
    F: Fn(&mut [T], &[T]) + Sync,
{
    if param.len() >= PAR_THRESHOLD {
        param.par_chunks_mut(PAR_CHUNK).zip(grad.par_chunks(PAR_CHUNK)).for_each(|(p, g)| f(p, g));
    } else {
        f(param, grad);
    }
}

/// Runs `f` over matching chunks of `param`, `grad` and one state buffer (in parallel when long).
pub(crate) fn for_each_chunk3<T, F>(param: &mut [T], grad: &[T], s1: &mut [T], f: F)
where
    T: Send + Sync,
    F: Fn(&mut [T], &[T], &mut [T]) + Sync,
{
    if param.len() >= PAR_THRESHOLD {
        param
            .par_chunks_mut(PAR_CHUNK)
            .zip(grad.par_chunks(PAR_CHUNK))
            .zip(s1.par_chunks_mut(PAR_CHUNK))
            .for_each(|((p, g), a)| f(p, g, a));
    } else {
        f(param, grad, s1);
    }
}

/// Runs `f` over matching chunks of `param`, `grad` and two state buffers (in parallel when long).
pub(crate) fn for_each_chunk4<T, F>(param: &mut [T], grad: &[T], s1: &mut [T], s2: &mut [T], f: F)
where
    T: Send + Sync,
    F: Fn(&mut [T], &[T], &mut [T], &mut [T]) + Sync,
{
    if param.len() >= PAR_THRESHOLD {
        param
            .par_chunks_mut(PAR_CHUNK)
            .zip(grad.par_chunks(PAR_CHUNK))
            .zip(s1.par_chunks_mut(PAR_CHUNK))
            .zip(s2.par_chunks_mut(PAR_CHUNK))
            .for_each(|(((p, g), a), b)| f(p, g, a, b));
    } else {
        f(param, grad, s1, s2);
    }
}

/// Runs `f` over matching chunks of `param`, `grad` and three state buffers (in parallel when long).
pub(crate) fn for_each_chunk5<T, F>(param: &mut [T], grad: &[T], s1: &mut [T], s2: &mut [T], s3: &mut [T], f: F)
where
    T: Send + Sync,
    F: Fn(&mut [T], &[T], &mut [T], &mut [T], &mut [T]) + Sync,
{
    if param.len() >= PAR_THRESHOLD {
        param
            .par_chunks_mut(PAR_CHUNK)
            .zip(grad.par_chunks(PAR_CHUNK))
            .zip(s1.par_chunks_mut(PAR_CHUNK))
            .zip(s2.par_chunks_mut(PAR_CHUNK))
            .zip(s3.par_chunks_mut(PAR_CHUNK))
            .for_each(|((((p, g), a), b), c)| f(p, g, a, b, c));
    } else {
        f(param, grad, s1, s2, s3);
    }
}

/// Panics unless `buf` has `n` elements: the kernels index optional state buffers by position, so a short
/// buffer must be caught before the loop.
pub(crate) fn check_len<T>(what: &str, buf: &[T], n: usize) {
    assert_eq!(buf.len(), n, "{what}: buffer has {} elements, the parameter {n}", buf.len());
}

/// The weight of `torch.lerp(start, end, weight)` prepared once per step, in the element type (torch casts
/// the Python weight to it first).
///
/// torch computes `start + w * (end - start)` for |w| < 0.5 and `end - (end - start) * (1 - w)` otherwise;
/// the second form is written here as `end + (w - 1) * (end - start)`, which rounds identically (`w - 1` is
/// exactly `-(1 - w)`), so both cases are one multiply-add on a base chosen once per step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LerpWeight<T> {
    coeff: T,
    from_start: bool,
}

impl<T: Float> LerpWeight<T> {
    /// The weight `w` (e.g. `1 - beta1`).
    pub(crate) fn new(w: f64) -> Self {
        let w = T::from_f64(w);
        if w.abs() < T::from_f64(0.5) {
            Self { coeff: w, from_start: true }
        } else {
            Self { coeff: w - T::ONE, from_start: false }
        }
    }

    /// `torch.lerp(start, end, w)`.
    #[inline(always)]
    pub(crate) fn apply(self, start: T, end: T) -> T {
        let base = if self.from_start { start } else { end };
        base + self.coeff * (end - start)
    }
}

/// `torch.maximum(a, b)`: the larger value, NaN if either is NaN (unlike `f32::max`, which drops a NaN, so a
/// diverged state stays visible as it does in torch).
#[inline(always)]
pub(crate) fn maximum<T: Float>(a: T, b: T) -> T {
    #[allow(clippy::eq_op)] // a != a is the NaN test available on `Float`
    let a_nan = a != a;
    if a_nan || a > b {
        a
    } else {
        b
    }
}

#[cfg(test)]
pub(crate) mod cuda_check;
#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::{check_reference_case, Reference};
    use super::*;

    /// Every case of the reference file, of every torch class, is reproduced by its kernel (f32 within 1e-6,
    /// f64 within 1e-12); a class without a kernel fails here.
    #[test]
    fn every_reference_case_is_reproduced() {
        let r = Reference::load();
        let mut names = r.all_names();
        names.sort();
        assert_eq!(names.len(), 23, "the reference file should hold 23 cases");
        for name in names {
            check_reference_case(&r, &name);
        }
    }

    #[test]
    fn lerp_matches_both_torch_formulas() {
        let (s, e) = (0.3f32, -1.7f32);
        let small = LerpWeight::<f32>::new(0.1);
        assert_eq!(small.apply(s, e).to_bits(), (s + 0.1f32 * (e - s)).to_bits());
        let large = LerpWeight::<f32>::new(0.8);
        assert_eq!(large.apply(s, e).to_bits(), (e - (e - s) * (1.0 - 0.8f32)).to_bits());
    }

    #[test]
    fn maximum_propagates_nan_like_torch() {
        assert!(maximum(f32::NAN, 1.0).is_nan() && maximum(1.0, f32::NAN).is_nan());
        assert_eq!(maximum(1.0f32, 2.0), 2.0);
        assert_eq!(maximum(3.0f64, -2.0), 3.0);
    }
}
