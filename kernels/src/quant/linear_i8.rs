//! Quantized linear layer forward: quantize the f32 input per tensor, multiply exactly in int8 / i32
//! ([`gemm_i8_packed`]), dequantize each output channel with `x_scale * w_scale[o]` and add the f32 bias.
//!
//! The integer product is exact, so the result equals the f64 linear of the dequantized input and weights
//! up to the final f32 operations: the i32 → f32 conversion, the scale product, its multiply and the bias add.

use rayon::prelude::*;

use super::gemm_i8::{gemm_i8_packed, PackedI8Weights};
use super::qparams::quantize_per_tensor;
use crate::ops::par::{rows_per_task, PAR_MIN_ELEMS};

/// `y = dequant(quant(x) · W_q^T) + bias` (overwrites `y`).
///
/// y: [rows, out], x: [rows, in], w: packed `[out, in]` with per-channel scales, bias: `[out]` or None,
/// `x_scale`: the input's per-tensor scale (from calibration, finite and positive),
/// scratch_q: at least `rows * in` i8, scratch_acc: at least `rows * out` i32 (contents ignored and
/// clobbered). Allocates nothing. Panics on mismatched lengths or a bad scale.
#[allow(clippy::too_many_arguments)]
pub fn linear_i8_forward(
    y: &mut [f32],
    x: &[f32],
    w: &PackedI8Weights,
    bias: Option<&[f32]>,
    x_scale: f32,
    scratch_q: &mut [i8],
    scratch_acc: &mut [i32],
    rows: usize,
    in_features: usize,
    out_features: usize,
) {
    assert_eq!(y.len(), rows * out_features, "linear_i8_forward: y must be [rows, out]");
    assert_eq!(x.len(), rows * in_features, "linear_i8_forward: x must be [rows, in]");
    assert_eq!((w.n(), w.k()), (out_features, in_features), "linear_i8_forward: weights must be [out, in]");
    assert!(scratch_q.len() >= rows * in_features, "linear_i8_forward: scratch_q needs rows * in elements");
    assert!(scratch_acc.len() >= rows * out_features, "linear_i8_forward: scratch_acc needs rows * out elements");
    if let Some(b) = bias {
        assert_eq!(b.len(), out_features, "linear_i8_forward: bias must be [out]");
    }
    if rows == 0 || out_features == 0 {
        return;
    }
    let q = &mut scratch_q[..rows * in_features];
    let acc = &mut scratch_acc[..rows * out_features];
    quantize_per_tensor(q, x, x_scale);
    gemm_i8_packed(acc, q, w, rows);
    dequantize_rows(y, acc, w.scales(), bias, x_scale, out_features);
}

/// `y[r, o] = acc[r, o] * (x_scale * w_scales[o]) + bias[o]` for `[rows, out]` buffers, in parallel when
/// large. Shared with the int8 convolution's pointwise layout.
pub(crate) fn dequantize_rows(
    y: &mut [f32],
    acc: &[i32],
    w_scales: &[f32],
    bias: Option<&[f32]>,
    x_scale: f32,
    out: usize,
) {
    let row = |(y, acc): (&mut [f32], &[i32])| {
        for (o, (y, &a)) in y.iter_mut().zip(acc).enumerate() {
            let v = a as f32 * (x_scale * w_scales[o]);
            *y = match bias {
                Some(b) => v + b[o],
                None => v,
            };
        }
    };
    if y.len() >= PAR_MIN_ELEMS {
        let chunk = rows_per_task(out) * out;
        y.par_chunks_mut(chunk)
            .zip(acc.par_chunks(chunk))
            .for_each(|(y, acc)| y.chunks_exact_mut(out).zip(acc.chunks_exact(out)).for_each(row));
    } else {
        y.chunks_exact_mut(out).zip(acc.chunks_exact(out)).for_each(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::qparams::{amax, quantize_one, scale_from_amax};
    use crate::rng::Rng;

    /// Max error of `linear_i8_forward` against the f64 linear of the dequantized operands, relative to
    /// `|Σ x_deq w_deq| + |bias|` (the magnitudes the final f32 operations round).
    fn max_rel_err(rows: usize, cin: usize, cout: usize, with_bias: bool, seed: u64) -> f64 {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..rows * cin).map(|_| rng.normal() as f32).collect();
        let wf: Vec<f32> = (0..cout * cin).map(|_| rng.normal() as f32 * 0.1).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rng.normal() as f32).collect();
        let w = PackedI8Weights::quantize(&wf, cout, cin);
        let xs = scale_from_amax(amax(&x) * 0.8); // clip some inputs: saturation is part of the scheme
        let (mut q, mut acc) = (vec![0i8; rows * cin], vec![0i32; rows * cout]);
        let mut y = vec![f32::NAN; rows * cout];
        let b = with_bias.then_some(&bias[..]);
        linear_i8_forward(&mut y, &x, &w, b, xs, &mut q, &mut acc, rows, cin, cout);
        let wq = w.to_i8();
        let mut worst = 0.0f64;
        for r in 0..rows {
            for o in 0..cout {
                let mut s = 0.0f64;
                for i in 0..cin {
                    let xd = quantize_one(x[r * cin + i], xs) as f64 * xs as f64;
                    let wd = wq[o * cin + i] as f64 * w.scales()[o] as f64;
                    s += xd * wd;
                }
                let bo = if with_bias { bias[o] as f64 } else { 0.0 };
                let err = (y[r * cout + o] as f64 - (s + bo)).abs() / (s.abs() + bo.abs() + 1e-30);
                worst = worst.max(err);
            }
        }
        worst
    }

    #[test]
    fn equals_the_f64_linear_of_the_dequantized_operands() {
        for &(rows, cin, cout, bias) in &[(1, 1, 1, true), (5, 7, 3, false), (37, 65, 33, true), (300, 130, 70, true)] {
            let e = max_rel_err(rows, cin, cout, bias, rows as u64);
            eprintln!("linear_i8 {rows}x{cin}x{cout}: max relative error {e:.3e}");
            // Four f32 roundings (i32 -> f32, scale product, multiply, bias add): at most ~4 * 2^-24 relative.
            assert!(e < 4.0 * f32::EPSILON as f64, "{rows}x{cin}x{cout}: relative error {e:e}");
        }
    }

    #[test]
    fn scratch_may_be_longer_and_rows_zero_is_a_no_op() {
        let w = PackedI8Weights::quantize(&[1.0, -1.0], 1, 2);
        let (mut q, mut acc) = (vec![0i8; 10], vec![0i32; 10]);
        let mut y = [0.0f32; 2];
        linear_i8_forward(&mut y, &[1.0, 0.0, 0.5, 0.5], &w, Some(&[0.25]), 1.0 / 127.0, &mut q, &mut acc, 2, 2, 1);
        assert_eq!(y, [1.25, 0.25]);
        linear_i8_forward(&mut [], &[], &w, None, 1.0, &mut q, &mut acc, 0, 2, 1);
    }
}
