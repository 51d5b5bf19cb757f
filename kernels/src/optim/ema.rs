//! The moving-average update of model weights: `shadow = d * shadow + (1 - d) * value`.
//!
//! Written as Ultralytics' ModelEMA does it on f32 tensors (`v *= d; v += (1 - d) * model_v`): two
//! roundings of the products and one of the sum, in that order, so the averages follow PyTorch's bit for bit.

use rayon::prelude::*;

use super::{PAR_CHUNK, PAR_THRESHOLD};
use crate::Float;

/// One EMA update of `shadow` towards `value` with decay `d` (in `[0, 1)`).
///
/// shadow, value: [N].
pub fn ema_update<T: Float>(shadow: &mut [T], value: &[T], d: f64) {
    assert_eq!(shadow.len(), value.len(), "ema_update: shadow and value lengths differ");
    let (d, one_minus_d) = (T::from_f64(d), T::from_f64(1.0 - d));
    let body = |s: &mut [T], v: &[T]| {
        for (s, &v) in s.iter_mut().zip(v) {
            *s = *s * d + one_minus_d * v;
        }
    };
    if shadow.len() >= PAR_THRESHOLD {
        shadow.par_chunks_mut(PAR_CHUNK).zip(value.par_chunks(PAR_CHUNK)).for_each(|(s, v)| body(s, v));
    } else {
        body(shadow, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_in_f64_and_torch_in_f32() {
        let mut s = [1.0f64, -2.0, 0.5];
        ema_update(&mut s, &[3.0, 2.0, 0.5], 0.75);
        assert_eq!(s, [1.5, -1.0, 0.5]);
        // torch 2.15 prints [0.2997002899646759, 0.24857622385025024] for v = torch.tensor([0.1, -0.7], dtype=float32); v *= d; v += (1-d)*m
        // with d = 0.9999 * (1 - exp(-3 / 2000)), m = [0.3, 0.25].
        let d = 0.9999 * (1.0 - (-3.0f64 / 2000.0).exp());
        let mut s = [0.1f32, -0.7];
        ema_update(&mut s, &[0.3, 0.25], d);
        // (the f64 repr of the f32 results; compared after rounding to f32, which is exact).
        assert_eq!(s, [0.2997002899646759f64 as f32, 0.24857622385025024f64 as f32]);
    }

    #[test]
    fn parallel_path_is_bit_identical() {
        let n = 2 * PAR_THRESHOLD + 5;
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).cos()).collect();
        let mut a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.02).sin()).collect();
        let mut b = a.clone();
        ema_update(&mut a, &v, 0.9);
        for (s, x) in b.chunks_mut(1000).zip(v.chunks(1000)) {
            ema_update(s, x, 0.9);
        }
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
