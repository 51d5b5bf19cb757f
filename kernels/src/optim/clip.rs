//! Gradient clipping over flat gradient slices, as `torch.nn.utils.clip_grad_norm_` and `clip_grad_value_`.
//!
//! Clipping by norm needs the L2 norm over *all* trainable gradients before any is scaled, so it is two
//! steps: [`sum_of_squares`] per slice (added up by the caller), then [`scale`] of every slice by
//! [`clip_coefficient`]. The sums run in f64 over fixed blocks, so the norm does not depend on the thread
//! count (torch sums in the gradient's precision; the difference is far below f32 resolution of the result).

use rayon::prelude::*;

use crate::ops::par::{blocked_sum, PAR_CHUNK, PAR_MIN_ELEMS};
use crate::Float;

/// `sum(x^2)` in f64, deterministic (fixed blocks added in order).
pub fn sum_of_squares<T: Float>(x: &[T]) -> f64 {
    blocked_sum(x.len(), x.len() >= PAR_MIN_ELEMS, |lo, hi| {
        x[lo..hi]
            .iter()
            .map(|v| {
                let v = v.to_f64();
                v * v
            })
            .sum()
    })
}

/// torch's factor for a gradient of total L2 norm `total_norm`: `min(max_norm / (total_norm + 1e-6), 1)`.
/// torch multiplies by it even when it is 1, which changes nothing.
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// `x *= coef` in place.
pub fn scale<T: Float>(x: &mut [T], coef: f64) {
    let c = T::from_f64(coef);
    in_place(x, |v| v * c);
}

/// Clamps every element to `[-max_value, max_value]` in place (NaN stays NaN, as `torch.clamp`).
pub fn clamp<T: Float>(x: &mut [T], max_value: f64) {
    let (lo, hi) = (T::from_f64(-max_value), T::from_f64(max_value));
    in_place(x, |v| {
        if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }
    });
}

/// `x[i] = f(x[i])`, in parallel chunks for long slices (elements are independent: same bits either way).
fn in_place<T: Float>(x: &mut [T], f: impl Fn(T) -> T + Sync) {
    if x.len() < PAR_MIN_ELEMS {
        x.iter_mut().for_each(|v| *v = f(*v));
    } else {
        x.par_chunks_mut(PAR_CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_and_coefficient_as_torch() {
        // grads [3, 4] and [12]: total norm 13; max_norm 1 -> coef 1 / (13 + 1e-6).
        let (a, b) = ([3.0f32, 4.0], [12.0f32]);
        let total = (sum_of_squares(&a) + sum_of_squares(&b)).sqrt();
        assert_eq!(total, 13.0);
        let coef = clip_coefficient(total, 1.0);
        assert!((coef - 1.0 / 13.000001).abs() < 1e-15);
        let mut g = a;
        scale(&mut g, coef);
        assert!((g[0] as f64 - 3.0 / 13.000001).abs() < 1e-7 && (g[1] as f64 - 4.0 / 13.000001).abs() < 1e-7);
        // Below the threshold the coefficient is exactly 1.
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    }

    #[test]
    fn clamp_bounds_every_element() {
        let mut g = [-3.0f64, -0.5, 0.0, 0.25, 7.0, f64::NAN];
        clamp(&mut g, 0.5);
        assert_eq!(&g[..5], &[-0.5, -0.5, 0.0, 0.25, 0.5]);
        assert!(g[5].is_nan());
    }

    #[test]
    fn long_slices_give_the_same_bits_as_short_ones() {
        let n = 3 * PAR_MIN_ELEMS + 17;
        let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.013).sin()).collect();
        // Same blocks, sequential: the sum must not depend on whether rayon ran it.
        let seq = blocked_sum(n, false, |lo, hi| x[lo..hi].iter().map(|v| (*v as f64) * (*v as f64)).sum());
        assert_eq!(sum_of_squares(&x).to_bits(), seq.to_bits());
        let mut a = x.clone();
        scale(&mut a, 0.3);
        let b: Vec<f32> = x.iter().map(|v| v * 0.3f32).collect();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}
