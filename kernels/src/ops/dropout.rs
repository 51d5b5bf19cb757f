//! Inverted dropout as PyTorch's `nn.Dropout` in training mode: each element is zeroed with probability
//! `p` and the kept ones are scaled by `1 / (1 - p)`, so the expected activation is unchanged and
//! evaluation needs no rescaling.
//!
//! The mask is counter-based: element `i` is kept iff a hash of `(seed, i)` is >= `p`. No mask buffer is
//! stored, the backward recomputes it, and the result does not depend on how the work is split across
//! threads (unlike a sequential random stream).

use super::par::map_indexed;
use crate::Float;

/// Golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Odd multiplier spreading consecutive element indices over the whole 64-bit space before mixing.
const INDEX_MUL: u64 = 0xD6E8_FEB8_6659_FD93;

/// SplitMix64's output function applied to `x + GOLDEN`: a strong 64-bit mixer.
#[inline(always)]
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The per-call key: the seed is mixed once so that nearby seeds give unrelated masks.
#[inline(always)]
fn seed_key(seed: u64) -> u64 {
    splitmix64(seed)
}

/// Whether element `i` survives under the key from [`seed_key`]: a 53-bit uniform in [0, 1) compared
/// against `p`.
#[inline(always)]
fn keep_with_key(key: u64, i: usize, p: f64) -> bool {
    let bits = splitmix64(key ^ (i as u64).wrapping_mul(INDEX_MUL));
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64) >= p
}

/// Whether element `index` is kept by a dropout with probability `p` and this `seed` (the mask used by
/// [`dropout_forward`] and [`dropout_backward`]; exposed so other backends can reproduce it).
pub fn dropout_keep(seed: u64, index: usize, p: f64) -> bool {
    keep_with_key(seed_key(seed), index, p)
}

/// Checks `p` and returns the scale of kept elements, or None when everything is dropped (`p == 1`,
/// where PyTorch returns zeros rather than multiplying by infinity).
fn scale_for<T: Float>(p: f64) -> Option<T> {
    assert!((0.0..=1.0).contains(&p), "dropout probability must be in [0, 1], got {p}");
    if p >= 1.0 {
        None
    } else {
        Some(T::from_f64(1.0 / (1.0 - p)))
    }
}

/// Dropout forward: `out[i] = keep(seed, i) ? inp[i] / (1 - p) : 0` (overwrites `out`). `p == 0` copies.
/// Pass a fresh `seed` every step (and per layer); the backward must get the same one.
///
/// inp: [N], out: [N].
pub fn dropout_forward<T: Float>(out: &mut [T], inp: &[T], p: f64, seed: u64) {
    assert_eq!(out.len(), inp.len(), "dropout_forward: out and inp lengths differ");
    let Some(scale) = scale_for::<T>(p) else {
        out.fill(T::ZERO);
        return;
    };
    if p == 0.0 {
        out.copy_from_slice(inp);
        return;
    }
    let key = seed_key(seed);
    map_indexed(out, inp, |i, x: T| if keep_with_key(key, i, p) { x * scale } else { T::ZERO });
}

/// Dropout backward: `dinp[i] = keep(seed, i) ? dout[i] / (1 - p) : 0` with the mask recomputed from
/// `seed` (overwrites `dinp`).
///
/// dinp, dout: [N].
pub fn dropout_backward<T: Float>(dinp: &mut [T], dout: &[T], p: f64, seed: u64) {
    // The op is linear with a fixed mask, so its backward is the forward applied to the gradient.
    dropout_forward(dinp, dout, p, seed);
}

/// The CUDA kernel of dropout (`dropout.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "dropout",
    code: include_str!("dropout.cu"),
    kernels: &["dropout_f32", "dropout_f16", "dropout_bf16"],
};

/// Host side of `dropout.cu`.
#[path = "dropout_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// The mask from its definition, written out again: splitmix64(splitmix64(seed) ^ i * INDEX_MUL) as a
    /// 53-bit uniform, kept when >= p.
    fn ref_keep(seed: u64, i: usize, p: f64) -> bool {
        fn mix(x: u64) -> u64 {
            let mut z = x.wrapping_add(0x9E3779B97F4A7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^ (z >> 31)
        }
        let u = (mix(mix(seed) ^ (i as u64).wrapping_mul(0xD6E8FEB86659FD93)) >> 11) as f64 / 2f64.powi(53);
        u >= p
    }

    #[test]
    fn hand_checked_values() {
        let x = [1.0f32, -2.0, 3.0, 4.0];
        let mut y = [9.0f32; 4];
        dropout_forward(&mut y, &x, 0.0, 1);
        assert_eq!(y, x);
        dropout_forward(&mut y, &x, 1.0, 1);
        assert_eq!(y, [0.0; 4]);
        dropout_forward(&mut y, &x, 0.5, 1);
        for i in 0..4 {
            assert_eq!(y[i], if dropout_keep(1, i, 0.5) { 2.0 * x[i] } else { 0.0 });
        }
        let mut d = [9.0f32; 4];
        dropout_backward(&mut d, &[1.0; 4], 0.5, 1);
        for i in 0..4 {
            assert_eq!(d[i], if y[i] != 0.0 { 2.0 } else { 0.0 });
        }
    }

    #[test]
    fn matches_reference_on_both_paths_and_keeps_about_one_minus_p() {
        for (n, p, seed) in [(37usize, 0.3, 5u64), (100_000, 0.25, 6)] {
            let x = round_f32(&uniform(seed, n, -1.0, 1.0));
            let want: Vec<f64> = (0..n).map(|i| if ref_keep(seed, i, p) { x[i] / (1.0 - p) } else { 0.0 }).collect();
            let mut y = vec![0.0f64; n];
            dropout_forward(&mut y, &x, p, seed);
            assert_close("f64 forward", &y, &want, 1e-12, 0.0);
            let mut d = vec![0.0f64; n];
            dropout_backward(&mut d, &x, p, seed);
            assert_close("f64 backward", &d, &want, 1e-12, 0.0);
            let mut y = vec![0.0f32; n];
            dropout_forward(&mut y, &to_f32(&x), p, seed);
            assert_close("f32 forward", &y, &want, 1e-6, 0.0);
            let mut d = vec![0.0f32; n];
            dropout_backward(&mut d, &to_f32(&x), p, seed);
            assert_close("f32 backward", &d, &want, 1e-6, 0.0);
            if n >= 100_000 {
                // Binomial(n, 0.75): standard deviation ~137, so 1% is > 7 sigma.
                let kept = (0..n).filter(|&i| dropout_keep(seed, i, p)).count() as f64 / n as f64;
                assert!((kept - (1.0 - p)).abs() < 0.01, "kept fraction {kept}");
                let other = (0..n).filter(|&i| dropout_keep(seed + 1, i, p) != dropout_keep(seed, i, p)).count();
                assert!(other > n / 4, "a new seed must give a new mask");
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (p, seed) = (0.4, 11);
        let mut x = uniform(1, 40, -1.0, 1.0);
        let dout = uniform(2, 40, -1.0, 1.0);
        let mut d = vec![0.0; 40];
        dropout_backward(&mut d, &dout, p, seed);
        check_grad("dinp", &mut x, &d, |v| {
            let mut y = vec![0.0; v.len()];
            dropout_forward(&mut y, v, p, seed);
            dot(&dout, &y)
        });
    }
}
