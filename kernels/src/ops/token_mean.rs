//! Mean over the token axis of a `[N, T, D]` sequence (a ViT's mean pooling head), and its backward.
//!
//! The forward sums each column in f64 in token order and rounds once, so the mean of a few hundred tokens
//! is the correctly rounded f32 of an almost exact sum; the backward spreads `dy / T` (an f32 product) over
//! every token. Both are small next to the blocks around them, so they stay on the calling thread.

/// `y[n, j] = mean_i x[n, i, j]` (overwrites `y`). x: [N, T, D], y: [N, D]. Panics on wrong lengths.
pub fn token_mean_forward(y: &mut [f32], x: &[f32], n: usize, t: usize, d: usize) {
    assert_eq!(x.len(), n * t * d, "token_mean_forward: x must be [N, T, D]");
    assert_eq!(y.len(), n * d, "token_mean_forward: y must be [N, D]");
    if d == 0 {
        return;
    }
    if t == 0 {
        // 0 / 0, as the CUDA twin computes it.
        y.fill(f32::NAN);
        return;
    }
    for (ys, xs) in y.chunks_exact_mut(d).zip(x.chunks_exact(t * d)) {
        for (j, yv) in ys.iter_mut().enumerate() {
            // An explicit fold from +0.0: the order and start the CUDA twin uses.
            let sum = (0..t).fold(0.0f64, |s, i| s + xs[i * d + j] as f64);
            *yv = (sum / t as f64) as f32;
        }
    }
}

/// Backward of [`token_mean_forward`]: `dx[n, i, j] = dy[n, j] * (1 / T)` (overwrites `dx`).
/// dy: [N, D], dx: [N, T, D]. Panics on wrong lengths.
pub fn token_mean_backward(dx: &mut [f32], dy: &[f32], n: usize, t: usize, d: usize) {
    assert_eq!(dx.len(), n * t * d, "token_mean_backward: dx must be [N, T, D]");
    assert_eq!(dy.len(), n * d, "token_mean_backward: dy must be [N, D]");
    if d == 0 || t == 0 {
        return;
    }
    let inv = 1.0 / t as f32;
    for (ys, xs) in dy.chunks_exact(d).zip(dx.chunks_exact_mut(t * d)) {
        for row in xs.chunks_exact_mut(d) {
            row.iter_mut().zip(ys).for_each(|(g, &gy)| *g = gy * inv);
        }
    }
}

/// The CUDA kernels of the token mean (`token_mean.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "token_mean",
    code: include_str!("token_mean.cu"),
    kernels: &[
        "token_mean_forward_f32",
        "token_mean_backward_f32",
        "token_mean_forward_f16",
        "token_mean_backward_f16",
        "token_mean_forward_bf16",
        "token_mean_backward_bf16",
    ],
};

/// Host side of `token_mean.cu`.
#[path = "token_mean_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values, and the backward is the adjoint of the forward: <dy, f(x)> = <b(dy), x> for the
    /// linear map f (in f64, up to f32 rounding).
    #[test]
    fn token_mean_values_and_adjoint() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, 0.5, 0.0, 0.0, 1.0, 1.5];
        let mut y = [0.0f32; 4];
        token_mean_forward(&mut y, &x, 2, 3, 2);
        assert_eq!(y, [3.0, 4.0, 0.0, 2.0 / 3.0]);
        let dy = [0.3f32, -0.7, 1.1, 2.0];
        let mut dx = [0.0f32; 12];
        token_mean_backward(&mut dx, &dy, 2, 3, 2);
        let lhs: f64 = dy.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        let rhs: f64 = dx.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((lhs - rhs).abs() < 1e-6, "adjoint: {lhs} vs {rhs}");
        assert_eq!(dx[0], 0.3 * (1.0 / 3.0f32));
    }
}
