//! Mean squared error loss, PyTorch's `F.mse_loss(pred, target, reduction='mean')`.

use super::par::{blocked_sum, map_binary, PAR_MIN_ELEMS};
use crate::Float;

/// MSE forward: `mean_i (pred[i] - target[i])^2` over all elements.
///
/// pred, target: [N] (any shape, flattened). The sum is accumulated in f64 over fixed ranges, so the
/// result does not depend on the thread count. Returns 0 for empty inputs (PyTorch gives NaN).
pub fn mse_forward<T: Float>(pred: &[T], target: &[T]) -> T {
    assert_eq!(pred.len(), target.len(), "mse_forward: pred and target lengths differ");
    let n = pred.len();
    if n == 0 {
        return T::ZERO;
    }
    let total = blocked_sum(n, n >= PAR_MIN_ELEMS, |lo, hi| {
        pred[lo..hi]
            .iter()
            .zip(&target[lo..hi])
            .map(|(&p, &t)| {
                let d = (p - t).to_f64();
                d * d
            })
            .sum()
    });
    T::from_f64(total / n as f64)
}

/// MSE backward with respect to the prediction: `dpred = dloss * 2 (pred - target) / N` (overwrites).
///
/// dpred, pred, target: [N].
pub fn mse_backward<T: Float>(dpred: &mut [T], pred: &[T], target: &[T], dloss: T) {
    let n = pred.len();
    if n == 0 {
        return;
    }
    let scale = dloss * T::from_f64(2.0 / n as f64);
    map_binary(dpred, pred, target, |p: T, t: T| (p - t) * scale);
}

/// The CUDA kernels of the MSE loss (`mse.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "mse",
    code: include_str!("mse.cu"),
    kernels: &[
        "mse_forward_f32",
        "mse_backward_f32",
        "mse_forward_f16",
        "mse_backward_f16",
        "mse_forward_bf16",
        "mse_backward_bf16",
    ],
};

/// Host side of `mse.cu`.
#[path = "mse_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    #[test]
    fn hand_checked_values() {
        let pred = [1.0f32, 2.0, 3.0, 4.0];
        let target = [1.0f32, 0.0, 4.0, 0.0];
        // (0 + 4 + 1 + 16) / 4
        assert_eq!(mse_forward(&pred, &target), 5.25);
        let mut d = [9.0f32; 4];
        mse_backward(&mut d, &pred, &target, 2.0);
        // 2 * 2 (p - t) / 4
        assert_eq!(d, [0.0, 2.0, -1.0, 4.0]);
        assert_eq!(mse_forward::<f64>(&[], &[]), 0.0);
    }

    #[test]
    fn matches_f64_reference_on_both_paths() {
        for (n, seed) in [(13usize, 1u64), (70_000, 2)] {
            let pred = round_f32(&uniform(seed, n, -2.0, 2.0));
            let target = round_f32(&uniform(seed + 1, n, -2.0, 2.0));
            let mut s = 0.0;
            for i in 0..n {
                s += (pred[i] - target[i]) * (pred[i] - target[i]);
            }
            let want = s / n as f64;
            let want_d: Vec<f64> = (0..n).map(|i| 0.5 * 2.0 * (pred[i] - target[i]) / n as f64).collect();

            assert!((mse_forward(&pred, &target) - want).abs() <= 1e-12 * want);
            let mut d = vec![0.0f64; n];
            mse_backward(&mut d, &pred, &target, 0.5);
            assert_close("f64 dpred", &d, &want_d, 1e-12, 0.0);

            let got = mse_forward(&to_f32(&pred), &to_f32(&target)) as f64;
            assert!((got - want).abs() <= 1e-5 * want, "f32 {got} vs {want}");
            let mut d = vec![0.0f32; n];
            mse_backward(&mut d, &to_f32(&pred), &to_f32(&target), 0.5);
            assert_close("f32 dpred", &d, &want_d, 1e-5, 0.0);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut pred = uniform(3, 10, -1.0, 1.0);
        let target = uniform(4, 10, -1.0, 1.0);
        let mut d = vec![0.0; 10];
        mse_backward(&mut d, &pred, &target, 1.7);
        check_grad("dpred", &mut pred, &d, |p| 1.7 * mse_forward(p, &target));
    }
}
