//! The cosine embedding loss `mean_i (1 - cos(pred_i, target_i))` (PyTorch's `CosineEmbeddingLoss` with
//! target 1), where `cos(x, y) = x.y / (max(|x|, eps) * max(|y|, eps))` (`F.cosine_similarity`, eps 1e-8): the
//! embedding task's training loss. Sums in f64.

use crate::Float;

/// `eps` of `F.cosine_similarity`.
pub const COSINE_EPS: f64 = 1e-8;

/// `(x.y, |x|, |y|)` in f64.
fn dot_norms<T: Float>(x: &[T], y: &[T]) -> (f64, f64, f64) {
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = (a.to_f64(), b.to_f64());
        xy += a * b;
        xx += a * a;
        yy += b * b;
    }
    (xy, xx.sqrt(), yy.sqrt())
}

/// Cosine similarity `x.y / (max(|x|, eps) * max(|y|, eps))`, accumulated in f64. x, y: [d].
pub fn cosine<T: Float>(x: &[T], y: &[T], eps: f64) -> f64 {
    assert_eq!(x.len(), y.len(), "cosine: lengths differ");
    let (xy, nx, ny) = dot_norms(x, y);
    xy / (nx.max(eps) * ny.max(eps))
}

/// `(sum_i (1 - cos(pred_i, target_i)), sum_i cos(pred_i, target_i))` over the `n` rows.
/// pred, target: [n, d].
pub fn cosine_sums<T: Float>(pred: &[T], target: &[T], n: usize, d: usize, eps: f64) -> (f64, f64) {
    assert_eq!(pred.len(), n * d, "cosine_sums: pred length");
    assert_eq!(target.len(), n * d, "cosine_sums: target length");
    if d == 0 {
        return (n as f64, 0.0);
    }
    let c: f64 = pred.chunks_exact(d).zip(target.chunks_exact(d)).map(|(x, y)| cosine(x, y, eps)).sum();
    (n as f64 - c, c)
}

/// The cosine loss `mean_i (1 - cos(pred_i, target_i))` (0 for an empty batch). pred, target: [n, d].
pub fn cosine_loss<T: Float>(pred: &[T], target: &[T], n: usize, d: usize, eps: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    cosine_sums(pred, target, n, d, eps).0 / n as f64
}

/// Gradient of `scale * cosine_loss(pred, target)` with respect to `pred` (overwrites `dpred`): per row
/// `-scale / n * (y / (Nx Ny) - cos * x / (Nx |x|))` with `Nx = max(|x|, eps)`, where the second term is
/// absent while `|x| <= eps` (the clamp is constant there). dpred, pred, target: [n, d].
pub fn cosine_loss_backward<T: Float>(
    dpred: &mut [T],
    pred: &[T],
    target: &[T],
    n: usize,
    d: usize,
    eps: f64,
    scale: T,
) {
    assert_eq!(dpred.len(), n * d, "cosine_loss_backward: dpred length");
    assert_eq!(pred.len(), n * d, "cosine_loss_backward: pred length");
    assert_eq!(target.len(), n * d, "cosine_loss_backward: target length");
    if n == 0 || d == 0 {
        return;
    }
    let g = -scale.to_f64() / n as f64;
    for ((dx, x), y) in dpred.chunks_exact_mut(d).zip(pred.chunks_exact(d)).zip(target.chunks_exact(d)) {
        let (xy, nx, ny) = dot_norms(x, y);
        let (cx, cy) = (nx.max(eps), ny.max(eps));
        let cos = xy / (cx * cy);
        let a = g / (cx * cy);
        let b = if nx > eps { -g * cos / (cx * nx) } else { 0.0 };
        for ((o, &xv), &yv) in dx.iter_mut().zip(x).zip(y) {
            *o = T::from_f64(a * yv.to_f64() + b * xv.to_f64());
        }
    }
}

/// The CUDA kernels of the cosine loss (`cosine_loss.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "cosine_loss",
    code: include_str!("cosine_loss.cu"),
    kernels: &[
        "cosine_loss_f32",
        "cosine_loss_backward_f32",
        "cosine_loss_f16",
        "cosine_loss_backward_f16",
        "cosine_loss_bf16",
        "cosine_loss_backward_bf16",
    ],
};

/// Host side of `cosine_loss.cu`.
#[path = "cosine_loss_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_values() {
        assert_eq!(cosine(&[1.0f32, 0.0], &[0.0, 2.0], COSINE_EPS), 0.0);
        assert!((cosine(&[3.0f64, 4.0], &[6.0, 8.0], COSINE_EPS) - 1.0).abs() < 1e-15);
        assert!((cosine(&[1.0f64, 1.0], &[-1.0, 0.0], COSINE_EPS) + 0.5f64.sqrt()).abs() < 1e-15);
        // A zero vector: the clamped norm gives 0, not NaN.
        assert_eq!(cosine(&[0.0f32, 0.0], &[1.0, 2.0], COSINE_EPS), 0.0);
        // Rows: cos = 1 and cos = -1 -> loss (0 + 2) / 2.
        let p = [1.0f64, 2.0, 1.0, 0.0];
        let t = [2.0f64, 4.0, -3.0, 0.0];
        assert!((cosine_loss(&p, &t, 2, 2, COSINE_EPS) - 1.0).abs() < 1e-15);
        let (l, c) = cosine_sums(&p, &t, 2, 2, COSINE_EPS);
        assert!((l - 2.0).abs() < 1e-15 && c.abs() < 1e-15);
        // d/dx (1 - cos) at x = (1, 0), y = (0, 1): -(y - 0 * x) = (0, -1).
        let mut d = [9.0f64; 2];
        cosine_loss_backward(&mut d, &[1.0, 0.0], &[0.0, 1.0], 1, 2, COSINE_EPS, 1.0);
        assert_eq!(d, [0.0, -1.0]);
    }

    #[test]
    fn gradient_matches_central_differences() {
        let mut rng = crate::rng::Rng::new(11);
        let (n, d) = (4, 6);
        let pred: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
        let target: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
        let scale = 0.25;
        let mut g = vec![0.0; n * d];
        cosine_loss_backward(&mut g, &pred, &target, n, d, COSINE_EPS, scale);
        let h = 1e-6;
        for i in 0..n * d {
            let (mut a, mut b) = (pred.clone(), pred.clone());
            a[i] += h;
            b[i] -= h;
            let fd = scale * (cosine_loss(&a, &target, n, d, COSINE_EPS) - cosine_loss(&b, &target, n, d, COSINE_EPS))
                / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-8, "[{i}] analytic {} vs numeric {fd}", g[i]);
        }
        // f32 agrees with the f64 gradient.
        let p32: Vec<f32> = pred.iter().map(|&v| v as f32).collect();
        let t32: Vec<f32> = target.iter().map(|&v| v as f32).collect();
        let mut g32 = vec![0.0f32; n * d];
        cosine_loss_backward(&mut g32, &p32, &t32, n, d, COSINE_EPS, scale as f32);
        for (a, b) in g32.iter().zip(&g) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn zero_prediction_gets_the_clamped_gradient() {
        // |x| < eps: cos = x.y / (eps |y|) is linear in x, so the gradient is -y / (n eps |y|).
        let mut g = [0.0f64; 2];
        cosine_loss_backward(&mut g, &[0.0, 0.0], &[3.0, 4.0], 1, 2, COSINE_EPS, 1.0);
        assert!((g[0] + 0.6 / COSINE_EPS).abs() < 1e-3 && (g[1] + 0.8 / COSINE_EPS).abs() < 1e-3, "{g:?}");
    }
}
