//! A linear layer whose output is added to a residual stream: `out = residual + (inp @ weight^T + bias)`, as
//! a transformer block's attention projection and second MLP layer feed `x + f(x)`.
//!
//! Forward only: the threaded product adds the bias and the residual to each chunk of rows right after
//! multiplying it, while the chunk is in L2, so the layer's own output never goes through memory and the
//! separate add (two reads and a write of `[B, OC]`) disappears. The additions are the separate ops'
//! (`product + bias`, then `residual +`), so the result is bitwise the linear layer followed by the add. The
//! backward is the pair's: the add hands its output gradient to both inputs, and the linear layer's backward
//! reads only its input, so nothing of the skipped output is needed.

use crate::Float;

/// `out = residual + (inp @ weight^T + bias)` (overwrites `out`), bitwise [`super::linear::linear_forward`]
/// followed by [`super::add::add_forward`] with the residual.
///
/// inp: [B, C], weight: [OC, C], bias: [OC] or None, residual: [B, OC], out: [B, OC].
#[allow(clippy::too_many_arguments)]
pub fn linear_residual_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    residual: &[T],
    b: usize,
    c: usize,
    oc: usize,
) {
    super::linear::forward_onto(out, inp, weight, bias, super::linear::FusedTail::Residual(residual), b, c, oc);
}

/// [`linear_residual_forward`] followed by the layer norm of each row of its output (`OC` wide) into
/// `norm`, bitwise that function and then [`super::layer_norm::layer_norm_forward`] on the sum: each block of
/// rows is normalised right after its sum is written, while it is in cache, so the layer norm does not read
/// the sum back from memory. A transformer's residual stream feeds the next block's first layer norm so.
///
/// inp: [B, C], weight: [OC, C], bias: [OC] or None, residual: [B, OC], out: [B, OC]; the norm's output
/// [B, OC] and statistics [B] are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn linear_residual_norm_forward<T: Float>(
    out: &mut [T],
    norm: super::linear::NormOut<'_, T>,
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    residual: &[T],
    b: usize,
    c: usize,
    oc: usize,
) {
    let tail = super::linear::FusedTail::ResidualNorm { residual, norm };
    super::linear::forward_onto(out, inp, weight, bias, tail, b, c, oc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::add::add_forward;
    use crate::ops::gemm::GEMM_PAR_MIN_FLOPS;
    use crate::ops::gradcheck::*;
    use crate::ops::layer_norm::layer_norm_forward;
    use crate::ops::linear::{linear_forward, NormOut};

    fn same(x: &[f32], y: &[f32]) -> bool {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
    }

    /// The fused forward against the pair (linear, then add) bit for bit, and against a float64 reference:
    /// small shapes (one thread's seeded path), W3's projection and MLP shapes and a wider one (the threaded
    /// row blocks, one chunk or several with an uneven last chunk), a deep product (gemm's own split), with and
    /// without a bias, on 1-3 threads.
    #[test]
    fn fused_forward_is_the_linear_layer_then_the_add() {
        for (b, c, oc, with_bias) in [
            (5usize, 7usize, 3usize, true),
            (3200, 128, 128, true),
            (3200, 256, 128, true),
            (3200, 128, 128, false),
            (3200, 128, 384, true),
            (601, 512, 160, true),
            (600, 600, 150, true),
            (600, 600, 150, false),
        ] {
            let seed = (b * 31 + c * 7 + oc) as u64;
            let (inp, w, bias, res) = (
                uniform(seed, b * c, -1.0, 1.0),
                uniform(seed + 1, oc * c, -1.0, 1.0),
                uniform(seed + 2, oc, -1.0, 1.0),
                uniform(seed + 3, b * oc, -2.0, 2.0),
            );
            // f64 reference: res + (inp @ w^T + bias).
            let mut want = vec![0.0f64; b * oc];
            for i in 0..b {
                for j in 0..oc {
                    let dot: f64 = (0..c).map(|k| inp[i * c + k] * w[j * c + k]).sum();
                    want[i * oc + j] = res[i * oc + j] + dot + if with_bias { bias[j] } else { 0.0 };
                }
            }
            let (inp, w, bias, res) = (to_f32(&inp), to_f32(&w), to_f32(&bias), to_f32(&res));
            let bias = with_bias.then_some(bias.as_slice());
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (fused, pair) = pool.install(|| {
                    let mut fused = vec![f32::NAN; b * oc];
                    linear_residual_forward(&mut fused, &inp, &w, bias, &res, b, c, oc);
                    let (mut lin, mut pair) = (vec![f32::NAN; b * oc], vec![f32::NAN; b * oc]);
                    linear_forward(&mut lin, &inp, &w, bias, b, c, oc);
                    add_forward(&mut pair, &res, &lin);
                    (fused, pair)
                });
                let what = format!("{b}x{c}->{oc}, bias {with_bias}, {threads} threads");
                assert!(same(&fused, &pair), "{what}: not the pair");
                assert_close_scaled(&what, &fused, &want, 1e-5);
                // With the layer norm of the sum (with and without its affine parameters): the sum and the
                // norm's output and statistics are bitwise the separate ops'.
                let (ln_w, ln_b) =
                    (to_f32(&uniform(seed + 4, oc, 0.5, 1.5)), to_f32(&uniform(seed + 5, oc, -0.5, 0.5)));
                for affine in [true, false] {
                    let (w_opt, b_opt) = if affine { (Some(&ln_w[..]), Some(&ln_b[..])) } else { (None, None) };
                    let (got, want_ln) = pool.install(|| {
                        let mut sum = vec![f32::NAN; b * oc];
                        let (mut y, mut m, mut r) = (vec![f32::NAN; b * oc], vec![f32::NAN; b], vec![f32::NAN; b]);
                        let norm = NormOut {
                            out: &mut y,
                            save_mean: &mut m,
                            save_rstd: &mut r,
                            weight: w_opt,
                            bias: b_opt,
                            eps: 1e-6,
                        };
                        linear_residual_norm_forward(&mut sum, norm, &inp, &w, bias, &res, b, c, oc);
                        let (mut y2, mut m2, mut r2) = (vec![f32::NAN; b * oc], vec![f32::NAN; b], vec![f32::NAN; b]);
                        layer_norm_forward(&mut y2, &mut m2, &mut r2, &pair, w_opt, b_opt, b, oc, 1e-6);
                        ((sum, y, m, r), (y2, m2, r2))
                    });
                    let what = format!("{what}, layer norm affine {affine}");
                    assert!(same(&got.0, &pair), "{what}: sum");
                    assert!(same(&got.1, &want_ln.0), "{what}: norm output");
                    assert!(same(&got.2, &want_ln.1) && same(&got.3, &want_ln.2), "{what}: statistics");
                }
            }
        }
        // The shapes above reach the threaded chunks.
        const { assert!(3200 * 128 * 128 >= GEMM_PAR_MIN_FLOPS) };
    }
}
