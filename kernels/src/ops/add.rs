//! Element-wise sum of two tensors (residual connections) and in-place accumulation (a value read by several
//! ops receives the sum of their gradients).

use super::par::map_binary;
use crate::Float;

/// `out = a + b` (overwrites `out`).
///
/// a, b, out: [N] (any shape, flattened).
pub fn add_forward<T: Float>(out: &mut [T], a: &[T], b: &[T]) {
    map_binary(out, a, b, |x: T, y: T| x + y);
}

/// `dst += src`. The backward of [`add_forward`] routes `dout` unchanged to both inputs; this adds it to a
/// gradient that another consumer of the same input has already written.
///
/// dst, src: [N].
pub fn add_assign<T: Float>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "add_assign: dst and src differ in length");
    // `map_binary` writes a third buffer; accumulation reads and writes `dst`, so chunk it here.
    use rayon::prelude::*;
    if dst.len() >= super::par::PAR_MIN_ELEMS {
        dst.par_chunks_mut(super::par::PAR_CHUNK)
            .zip(src.par_chunks(super::par::PAR_CHUNK))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s));
    } else {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
    }
}

/// The CUDA kernels of this op (`add.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "add",
    code: include_str!("add.cu"),
    kernels: &[
        "add_forward_f32",
        "add_assign_f32",
        "add_forward_f16",
        "add_assign_f16",
        "add_forward_bf16",
        "add_assign_bf16",
        "add_mixed_f32_f16_f32",
        "add_mixed_f16_f32_f32",
        "add_mixed_f16_f16_f32",
        "add_assign_f16_f32",
        "add_mixed_f32_bf16_f32",
        "add_mixed_bf16_f32_f32",
        "add_mixed_bf16_bf16_f32",
        "add_assign_bf16_f32",
    ],
};

/// Host side of `add.cu`.
#[path = "add_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;
    use crate::ops::par::PAR_MIN_ELEMS;

    #[test]
    fn add_values_small_and_large() {
        for n in [7, PAR_MIN_ELEMS + 3] {
            let a = uniform(1, n, -2.0, 2.0);
            let b = uniform(2, n, -2.0, 2.0);
            let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let mut y = vec![0.0; n];
            add_forward(&mut y, &a, &b);
            assert_close("add f64", &y, &want, 1e-15, 0.0);
            let mut y32 = vec![0.0f32; n];
            add_forward(&mut y32, &to_f32(&a), &to_f32(&b));
            assert_close("add f32", &y32, &want, 1e-6, 1e-6);
            let mut acc = a.clone();
            add_assign(&mut acc, &b);
            assert_close("add_assign", &acc, &want, 1e-15, 0.0);
        }
    }

    #[test]
    fn add_gradient_is_identity_to_both_inputs() {
        // L = w . (a + b): dL/da = dL/db = w, which the executor realises as a copy (or add_assign) of dout.
        let w = uniform(3, 5, -1.0, 1.0);
        let b = uniform(4, 5, -1.0, 1.0);
        let mut a = uniform(5, 5, -1.0, 1.0);
        check_grad("add da", &mut a, &w, |a| {
            let mut y = vec![0.0; 5];
            add_forward(&mut y, a, &b);
            dot(&w, &y)
        });
    }
}
