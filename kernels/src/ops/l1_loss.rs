//! Mean absolute error, PyTorch's `F.l1_loss(pred, target, reduction='mean')`: the `l1` reconstruction loss.

use crate::Float;

/// L1 forward: `mean_i |pred[i] - target[i]|` over all elements, each difference rounded to `T` first and the
/// sum accumulated in f64 in element order. pred, target: [N] (any shape, flattened). 0 when empty.
pub fn l1_loss_forward<T: Float>(pred: &[T], target: &[T]) -> f64 {
    assert_eq!(pred.len(), target.len(), "l1_loss_forward: pred and target lengths differ");
    if pred.is_empty() {
        return 0.0;
    }
    let s: f64 = pred.iter().zip(target).map(|(&p, &t)| (p - t).to_f64().abs()).sum();
    s / pred.len() as f64
}

/// L1 backward with respect to the prediction: `dpred = scale * sign(pred - target) / N` (overwrites; 0 where
/// `pred == target`, as PyTorch's `sign`). dpred, pred, target: [N].
pub fn l1_loss_backward<T: Float>(dpred: &mut [T], pred: &[T], target: &[T], scale: T) {
    assert_eq!(pred.len(), target.len(), "l1_loss_backward: pred and target lengths differ");
    assert_eq!(dpred.len(), pred.len(), "l1_loss_backward: dpred length");
    if pred.is_empty() {
        return;
    }
    let g = scale * T::from_f64(1.0 / pred.len() as f64);
    for ((d, &p), &t) in dpred.iter_mut().zip(pred).zip(target) {
        *d = if p > t {
            g
        } else if p < t {
            -g
        } else {
            T::ZERO
        };
    }
}

/// The CUDA kernels of the L1 loss (`l1_loss.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "l1_loss",
    code: include_str!("l1_loss.cu"),
    kernels: &[
        "l1_loss_forward_f32",
        "l1_loss_backward_f32",
        "l1_loss_forward_f16",
        "l1_loss_backward_f16",
        "l1_loss_forward_bf16",
        "l1_loss_backward_bf16",
    ],
};

/// Host side of `l1_loss.cu`.
#[path = "l1_loss_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() * 4.0 - 2.0).collect()
    }

    #[test]
    fn hand_checked_values() {
        let p = [1.0f32, 2.0, 3.0, 4.0];
        let t = [1.0f32, 0.0, 4.0, 0.0];
        assert_eq!(l1_loss_forward(&p, &t), 1.75);
        let mut d = [9.0f32; 4];
        l1_loss_backward(&mut d, &p, &t, 2.0);
        assert_eq!(d, [0.0, 0.5, -0.5, 0.5]);
        assert_eq!(l1_loss_forward::<f32>(&[], &[]), 0.0);
    }

    /// The f32 loss against an f64 reference of the definition (each difference exact in f64).
    #[test]
    fn matches_f64_reference() {
        let (p, t) = (data(3, 101), data(4, 101));
        let (p32, t32): (Vec<f32>, Vec<f32>) =
            (p.iter().map(|&v| v as f32).collect(), t.iter().map(|&v| v as f32).collect());
        let want: f64 = p32.iter().zip(&t32).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / 101.0;
        assert!((l1_loss_forward(&p32, &t32) - want).abs() <= 1e-6 * want, "{} vs {want}", l1_loss_forward(&p32, &t32));
        assert!(
            (l1_loss_forward(&p, &t) - p.iter().zip(&t).map(|(a, b)| (a - b).abs()).sum::<f64>() / 101.0).abs() < 1e-15
        );
    }

    #[test]
    fn gradient_matches_central_differences() {
        let (pred, target) = (data(1, 23), data(2, 23));
        let scale = 0.7;
        let mut d = vec![0.0f64; pred.len()];
        l1_loss_backward(&mut d, &pred, &target, scale);
        let h = 1e-6;
        for i in 0..pred.len() {
            let (mut a, mut b) = (pred.clone(), pred.clone());
            a[i] += h;
            b[i] -= h;
            let fd = scale * (l1_loss_forward(&a, &target) - l1_loss_forward(&b, &target)) / (2.0 * h);
            assert!((fd - d[i]).abs() < 1e-6, "[{i}]: analytic {} vs numeric {fd}", d[i]);
        }
    }
}
