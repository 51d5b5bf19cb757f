//! Fused optimizer update kernels over flat parameter / gradient / state slices.
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

pub mod adamw;
pub mod clip;
pub mod ema;
pub mod sgd;

pub use adamw::{adamw_step, AdamWConfig};
pub use sgd::{sgd_step, SgdConfig};

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

#[cfg(test)]
pub(crate) mod test_support;
