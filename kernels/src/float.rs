//! The floating-point element trait the CPU kernels are generic over.
//!
//! Kernels are written once for `T: Float` and instantiated for `f32` (training) and `f64` (the reference
//! used by gradient checks and float64 comparisons).

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// A real floating-point scalar usable by every CPU kernel (`f32` or `f64`).
pub trait Float:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Converts from f64 (rounding for f32).
    fn from_f64(v: f64) -> Self;
    /// Widens to f64.
    fn to_f64(self) -> f64;
    /// e^self.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// The larger of two values (NaN-ignoring like `f32::max`).
    fn max(self, other: Self) -> Self;
    /// The smaller of two values.
    fn min(self, other: Self) -> Self;
    /// self^n for an integer n.
    fn powi(self, n: i32) -> Self;
    /// self^e.
    fn powf(self, e: Self) -> Self;
    /// The error function (needed by the exact GELU).
    fn erf(self) -> Self;
    /// `(erf(self), e^(-self^2))`: the exact GELU's derivative needs both, and the f32 erf computes the
    /// Gaussian on its way (the first is bitwise [`Float::erf`]).
    fn erf_gauss(self) -> (Self, Self);
    /// `self * a + b` with one rounding (a fused multiply-add). Correctly rounded on every target, so the
    /// bits never depend on the instruction set; only fast where the compiled code may use FMA instructions
    /// (the AVX2 and AVX-512 versions of `multiversion!`), a libm call otherwise.
    fn mul_add(self, a: Self, b: Self) -> Self;
}

/// Implements [`Float`] for a primitive type, with the given functions for `exp`, `tanh` and `erf` (f32 uses
/// the vectorisable approximations below, f64 the exact reference implementations).
macro_rules! impl_float {
    ($t:ty, exp: $exp:path, tanh: $tanh:path, erf: $erf:path, erf_gauss: $erf_gauss:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            #[inline(always)]
            fn powi(self, n: i32) -> Self {
                <$t>::powi(self, n)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn erf_gauss(self) -> (Self, Self) {
                $erf_gauss(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}
impl_float!(f32, exp: exp_f32, tanh: tanh_f32, erf: erf_f32, erf_gauss: erf_gauss_f32);
impl_float!(f64, exp: f64::exp, tanh: f64::tanh, erf: erf_f64, erf_gauss: erf_gauss_f64);

/// `(erf(x), e^(-x^2))` in float64.
fn erf_gauss_f64(x: f64) -> (f64, f64) {
    (erf_f64(x), (-(x * x)).exp())
}

// ---------------------------------------------------------------------------------------------------------
// Vectorisable f32 exp / tanh / erf.
//
// libm's `expf` / `tanhf` and the f64 `erf` are opaque scalar calls, so an element-wise loop that uses them
// cannot be vectorised. The functions below are straight-line code: polynomials, comparisons that LLVM turns
// into selects (both sides are always computed), bit casts and integer adds, with no table lookups and no
// branches on the value, so the loops in `ops::par` vectorise (and `multiversion!` can widen them to AVX2 /
// AVX-512). Their polynomials' Horner steps are `mul_add`s (fewer roundings, and one instruction each where
// FMA is available): a fused multiply-add is correctly rounded on every target, so every instruction set
// gives bit-identical results. Code compiled without FMA (the SSE2 baseline) gets a libm `fmaf` call per
// step, correct but slow, so every hot loop that calls these is compiled per instruction set
// (`multiversion!`), whose AVX2 and AVX-512 copies have FMA.
// ---------------------------------------------------------------------------------------------------------

/// 1.5 * 2^23. For |v| < 2^22, `v + ROUND_MAGIC` rounds v to the nearest integer (ties to even) and leaves
/// that integer in the low mantissa bits, so `(v + ROUND_MAGIC).to_bits() - ROUND_MAGIC.to_bits()` is it as
/// an i32 (no `round`, which is a libm call on SSE2, and no saturating float-to-int conversion).
const ROUND_MAGIC: f32 = 12_582_912.0;
/// ln 2 split for Cody–Waite reduction: `LN2_HI` is exactly 355/512 = 0.693359375 (9 significant bits), so
/// `n * LN2_HI` is exact for |n| <= 2^15 and `x - n * LN2_HI` is exact; `LN2_LO` = ln 2 - `LN2_HI` in f32.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -0.000_212_194_44;
/// e^r = 1 + r + r^2 (P0 + P1 r + P2 r^2 + P3 r^3 + P4 r^4) on |r| <= ln2/2: a degree-6 minimax fit for
/// relative error (3.7e-9 with these f32 coefficients, about 0.06 ulp).
const EXP_P0: f32 = 0.5;
const EXP_P1: f32 = 0.166_665_35;
const EXP_P2: f32 = 0.041_667_24;
const EXP_P3: f32 = 0.008_367_435;
const EXP_P4: f32 = 0.001_386_342_7;
/// Inputs above this give +inf: e^x overflows f32 for x > 88.7228... (the clamp only keeps n <= 128).
const EXP_HI: f32 = 88.8;
/// Inputs below this give +0: e^-104 < 2^-150, half the smallest subnormal.
const EXP_LO: f32 = -104.0;

/// Cody–Waite reduction x = n ln2 + r (|r| <= ln2/2 up to rounding) and the polynomial: returns (e^r, n).
/// Accurate for |x| <= about 2e4 (n * `LN2_HI` exact); the callers clamp to [-104, 88.8] or less.
#[inline(always)]
fn exp_reduce_f32(x: f32) -> (f32, i32) {
    let k = x * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let ni = (k.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Horner steps as fused multiply-adds (one rounding each); the last step stays two roundings: fused, it
    // measured 1.031 ulp at worst instead of 0.990.
    let q = r.mul_add(r.mul_add(r.mul_add(r.mul_add(EXP_P4, EXP_P3), EXP_P2), EXP_P1), EXP_P0);
    (1.0 + (r + (r * r) * q), ni)
}

/// 2^n for -126 <= n <= 127, from the exponent bits (a shift and an add, no table).
#[inline(always)]
fn pow2i_f32(n: i32) -> f32 {
    f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

/// e^x for x in [-87, 88] (n stays in the normal-exponent range): the core shared by `tanh` and `erf`.
#[inline(always)]
fn exp_core_f32(x: f32) -> f32 {
    let (p, n) = exp_reduce_f32(x);
    p * pow2i_f32(n)
}

/// e^x in f32: error below 1 ulp of the exact value over the whole range, subnormal results included
/// (max 0.990 ulp over every f32, checked exhaustively against f64; correct rounding would be 0.5); +inf
/// for x > 88.7228, +0 below about -103.97, NaN for NaN.
///
/// The scale 2^n is applied in two steps, 2^(n>>1) then 2^(n - (n>>1)), so n may range over [-150, 128]:
/// results in the subnormal range are rounded once (not flushed to zero), and e^x just below f32::MAX does
/// not overflow early. The clamps compare so that NaN passes through unchanged.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = if x > EXP_HI { EXP_HI } else { x };
    let x = if x < EXP_LO { EXP_LO } else { x };
    let (p, n) = exp_reduce_f32(x);
    let n1 = n >> 1;
    p * pow2i_f32(n1) * pow2i_f32(n.wrapping_sub(n1))
}

/// [`exp_f32`] on 16 lanes with AVX-512F intrinsics: the same operations in the same order (fused
/// multiply-adds exactly where it has them), so every lane is bit for bit `exp_f32` of its input (tested). For kernels written with
/// intrinsics, where the scalar function cannot be inlined into vector code.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let set = _mm512_set1_ps;
    // min(HI, x) / max(LO, x) return their second operand when either is NaN: NaN passes, as in exp_f32.
    let x = _mm512_max_ps(set(EXP_LO), _mm512_min_ps(set(EXP_HI), x));
    let k = _mm512_add_ps(_mm512_mul_ps(x, set(std::f32::consts::LOG2_E)), set(ROUND_MAGIC));
    let n = _mm512_sub_ps(k, set(ROUND_MAGIC));
    let ni = _mm512_sub_epi32(_mm512_castps_si512(k), _mm512_set1_epi32(ROUND_MAGIC.to_bits() as i32));
    let r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, set(LN2_HI))), _mm512_mul_ps(n, set(LN2_LO)));
    let horner = |c: f32, acc: __m512| _mm512_fmadd_ps(r, acc, set(c));
    let q = horner(EXP_P0, horner(EXP_P1, horner(EXP_P2, horner(EXP_P3, set(EXP_P4)))));
    let p = _mm512_add_ps(set(1.0), _mm512_add_ps(r, _mm512_mul_ps(_mm512_mul_ps(r, r), q)));
    let n1 = _mm512_srai_epi32::<1>(ni);
    let pow2i = |n: __m512i| _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127))));
    _mm512_mul_ps(_mm512_mul_ps(p, pow2i(n1)), pow2i(_mm512_sub_epi32(ni, n1)))
}

/// Below this |x|, tanh uses its odd polynomial; above, 1 - 2 / (e^(2|x|) + 1).
const TANH_SMALL: f32 = 0.625;
/// tanh(x) rounds to 1 in f32 for x > 9.01 (1 - tanh x < 2^-25); clamping keeps e^(2x) finite.
const TANH_CLAMP: f32 = 9.1;
/// tanh x = x + x^3 (T0 + T1 x^2 + ... + T4 x^8) on |x| <= 0.625: minimax for relative error (4.5e-9).
const TANH_T0: f32 = -0.333_332_8;
const TANH_T1: f32 = 0.133_314_06;
const TANH_T2: f32 = -0.053_736_515;
const TANH_T3: f32 = 0.020_628_167;
const TANH_T4: f32 = -0.005_692_296_7;

/// tanh in f32, within 1.34 ulp of the exact value (max 1.332 ulp, 7.9e-8 absolute over every f32, checked
/// exhaustively): an odd polynomial for |x| < 0.625 (no cancellation near 0, tanh(-0) = -0), else
/// 1 - 2 / (e^(2|x|) + 1) with the vectorisable exp; the sign is copied from x, |x| > 9.01 gives exactly
/// +-1, NaN gives NaN.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let ax = x.abs();
    let ax = if ax > TANH_CLAMP { TANH_CLAMP } else { ax };
    let a2 = ax * ax;
    let p = a2.mul_add(a2.mul_add(a2.mul_add(a2.mul_add(TANH_T4, TANH_T3), TANH_T2), TANH_T1), TANH_T0);
    let small = ax + ax * a2 * p;
    let big = 1.0 - 2.0 / (exp_core_f32(2.0 * ax) + 1.0);
    let r = if ax < TANH_SMALL { small } else { big };
    r.copysign(x)
}

/// Below this |x|, erf uses its odd polynomial; above, 1 - e^(-x^2) Q(x).
const ERF_SMALL: f32 = 0.875;
/// erf(x) rounds to 1 in f32 for x > 3.93 (erfc(3.95) = 2.3e-8 < 2^-25); the clamp keeps the fit's range.
const ERF_CLAMP: f32 = 3.95;
/// erf x = x + x (S0 + S1 x^2 + ... + S5 x^10) on |x| <= 0.875 (S0 = 2/sqrt(pi) - 1, so the leading term
/// x is exact): minimax for relative error (1.4e-8).
const ERF_S0: f32 = 0.128_379_15;
const ERF_S1: f32 = -0.376_125_07;
const ERF_S2: f32 = 0.112_819_63;
const ERF_S3: f32 = -0.026_772_28;
const ERF_S4: f32 = 0.005_002_021;
const ERF_S5: f32 = -0.000_603_880_6;
/// erfc(x) e^(x^2) = Q0 + Q1 t + ... + Q8 t^8 with t = x - 2, on 0.875 <= x <= 3.95: minimax for the
/// absolute error of erfc (6e-9); centring at 2 keeps the coefficients small, so Horner does not cancel.
const ERF_Q0: f32 = 0.255_395_35;
const ERF_Q1: f32 = -0.106_798_19;
const ERF_Q2: f32 = 0.041_810_818;
const ERF_Q3: f32 = -0.015_418_32;
const ERF_Q4: f32 = 0.005_459_005;
const ERF_Q5: f32 = -0.001_944_415_5;
const ERF_Q6: f32 = 0.000_465_808_12;
const ERF_Q7: f32 = -0.000_148_784_78;
const ERF_Q8: f32 = 0.000_142_869_83;

/// The error function in f32, within 1.22 ulp of the exact value (max 1.211 ulp, 7.2e-8 absolute over every
/// f32 in (0, 4), checked exhaustively against `erf_f64`): an odd polynomial for |x| < 0.875 (full relative
/// accuracy near 0, erf(-0) = -0), else 1 - e^(-x^2) Q(|x|) (the rounding of x^2 costs under 1e-9
/// absolute); the sign is copied from x, |x| >= 3.95 gives exactly +-1, NaN gives NaN.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    erf_gauss_f32(x).0
}

/// `(erf(x), e^(-x^2))` in f32: [`erf_f32`] and the Gaussian its tail branch multiplies by, computed once
/// (the exact GELU's derivative needs both). The Gaussian is [`exp_f32`] of `-(x * x)` (under 1 ulp; +0 for
/// |x| > about 10.2). erf clamps |x| to 3.95 for its fit, but not the Gaussian: beyond the clamp
/// e^(-x^2) Q < 2.4e-8 still rounds `1 - e^(-x^2) Q` to exactly 1, and within it `x * x` is the clamped
/// square, so erf keeps its bits (checked exhaustively).
#[inline(always)]
fn erf_gauss_f32(x: f32) -> (f32, f32) {
    let gauss = exp_f32(-(x * x));
    (erf_with_gauss_f32(x, gauss), gauss)
}

/// erf(x) given `gauss` = e^(-x^2) for the tail branch (used where |x| >= [`ERF_SMALL`]).
#[inline(always)]
fn erf_with_gauss_f32(x: f32, gauss: f32) -> f32 {
    let ax = x.abs();
    let ax = if ax > ERF_CLAMP { ERF_CLAMP } else { ax };
    let a2 = ax * ax;
    let s = a2.mul_add(a2.mul_add(a2.mul_add(a2.mul_add(a2.mul_add(ERF_S5, ERF_S4), ERF_S3), ERF_S2), ERF_S1), ERF_S0);
    let small = ax + ax * s;
    let t = ax - 2.0;
    let q = t.mul_add(ERF_Q8, ERF_Q7);
    let q = t.mul_add(
        t.mul_add(t.mul_add(t.mul_add(t.mul_add(t.mul_add(q, ERF_Q6), ERF_Q5), ERF_Q4), ERF_Q3), ERF_Q2),
        ERF_Q1,
    );
    let q = t.mul_add(q, ERF_Q0);
    let big = 1.0 - gauss * q;
    let r = if ax < ERF_SMALL { small } else { big };
    r.copysign(x)
}

/// The error function in float64, to about 1e-15 relative (W. J. Cody's rational approximations, as in
/// most libm implementations), so the exact GELU matches PyTorch's `erf` form.
pub fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    if ax.is_nan() {
        return f64::NAN;
    }
    let r = if ax < 3.0 {
        // erf(x) = 2/sqrt(pi) * e^(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)): every term is positive, so
        // there is no cancellation; about 60 terms reach 1e-17 relative at |x| = 3.
        let x2 = ax * ax;
        let mut term = ax;
        let mut sum = ax;
        let mut n = 0.0f64;
        while term > 1e-17 * sum && n < 200.0 {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
        }
        std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum
    } else {
        1.0 - erfc_pos(ax)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// erfc for x >= 3 by a continued fraction (Lentz), accurate to ~1e-15.
fn erfc_pos(x: f64) -> f64 {
    if x > 27.0 {
        return 0.0;
    }
    // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + 2/(x + ...)))))
    let tiny = 1e-300;
    let mut f = x;
    if f == 0.0 {
        f = tiny;
    }
    let mut c = f;
    let mut d = 0.0;
    for k in 1..500 {
        let a = k as f64 * 0.5;
        d = x + a * d;
        if d == 0.0 {
            d = tiny;
        }
        c = x + a / c;
        if c == 0.0 {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
}

#[cfg(test)]
mod tests {
    /// The vector twin gives exp_f32's bits on every lane: a sweep over the whole useful range (both clamps,
    /// the subnormal results, the rounding boundaries of n), the special values, and random inputs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp16_is_exp_f32_bit_for_bit() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("SKIPPED: this CPU has no AVX-512F, so exp16 is never used here");
            return;
        }
        let mut xs: Vec<f32> = (0..400_000).map(|i| -120.0 + i as f32 * 0.000_53).collect();
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 88.72, 88.73, -103.97, -104.0, 1e-30]);
        let mut s = 0x2545_f491_4f6c_dd1du64;
        xs.extend((0..100_000).map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            f32::from_bits(s as u32)
        }));
        while !xs.len().is_multiple_of(16) {
            xs.push(1.0);
        }
        for chunk in xs.chunks_exact(16) {
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F is present (checked above); both pointers address 16 f32.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), super::exp16(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = super::exp_f32(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp16({x:e}) = {g:e}, exp_f32 {want:e}"
                );
            }
        }
    }

    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from a float64 reference (scipy.special.erf).
        let cases = [
            (0.0, 0.0),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (1.5, 0.9661051464753108),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (-0.7, -0.6778011938374184),
            (4.0, 0.9999999845827421),
            (2.5, 0.999_593_047_982_555),
        ];
        for (x, want) in cases {
            let got = erf_f64(x);
            assert!((got - want).abs() < 1e-14, "erf({x}) = {got}, want {want}");
        }
    }

    /// Distance from `got` to the exact value `want`, in units of the f32 ulp at `want` (2^-149 in the
    /// subnormal range; +-inf counts as +-2^128, one ulp past f32::MAX).
    fn ulp_err(got: f32, want: f64) -> f64 {
        let g = if got.is_infinite() { got.signum() as f64 * 2f64.powi(128) } else { got as f64 };
        let w = want.clamp(-(2f64.powi(128)), 2f64.powi(128));
        let e = (w.abs().max(f32::MIN_POSITIVE as f64)).log2().floor() as i32;
        (g - w).abs() / 2f64.powi(e.max(-126) - 23)
    }

    /// A splitmix64 stream of f32 bit patterns (deterministic).
    fn random_f32s(n: usize, seed: u64) -> impl Iterator<Item = f32> {
        let mut s = seed;
        (0..n).map(move |_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            f32::from_bits((z ^ (z >> 31)) as u32)
        })
    }

    /// Max ulp and absolute error of `f` against `reference` over `xs` (NaN inputs skipped).
    fn max_errors(xs: impl Iterator<Item = f32>, f: impl Fn(f32) -> f32, reference: impl Fn(f64) -> f64) -> (f64, f64) {
        let (mut ulp, mut abs) = (0.0f64, 0.0f64);
        for x in xs.filter(|x| !x.is_nan()) {
            let (got, want) = (f(x), reference(x as f64));
            let u = ulp_err(got, want);
            assert!(u.is_finite(), "f({x:e}) = {got:e}, want {want:e}");
            ulp = ulp.max(u);
            if want.is_finite() && got.is_finite() {
                abs = abs.max((got as f64 - want).abs());
            }
        }
        (ulp, abs)
    }

    /// Maps random bits to a uniform f32 in [lo, hi).
    fn uniform(bits: f32, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((bits.to_bits() >> 8) as f32 / 16_777_216.0)
    }

    fn sweep(lo: f64, hi: f64, step: f64) -> impl Iterator<Item = f32> {
        let n = ((hi - lo) / step).round() as usize;
        (0..=n).map(move |i| (lo + i as f64 * step) as f32)
    }

    #[test]
    fn f32_exp_is_within_one_ulp() {
        let e = |x: f32| <f32 as Float>::exp(x);
        let (u1, _) = max_errors(sweep(-100.0, 100.0, 1e-3), e, f64::exp);
        // Random bit patterns over the whole f32 line, and densely over the range where e^x is finite.
        let (u2, _) = max_errors(random_f32s(2_000_000, 1), e, f64::exp);
        let (u3, _) = max_errors(
            random_f32s(3_000_000, 2).map(|v| (v.to_bits() >> 9) as f32 / 8_388_608.0 * 193.0 - 104.0),
            e,
            f64::exp,
        );
        println!("exp max ulp: sweep {u1:.3}, random bits {u2:.3}, random in [-104, 89] {u3:.3}");
        assert!(u1.max(u2).max(u3) <= 1.0, "exp max ulp {u1} {u2} {u3}");
    }

    #[test]
    fn f32_tanh_is_within_one_and_a_half_ulp() {
        let t = |x: f32| <f32 as Float>::tanh(x);
        let (u1, a1) = max_errors(sweep(-6.0, 6.0, 1e-4), t, f64::tanh);
        let (u2, a2) = max_errors(sweep(-12.0, 12.0, 1e-3), t, f64::tanh);
        let (u3, a3) = max_errors(random_f32s(2_000_000, 3), t, f64::tanh);
        let (u4, a4) = max_errors(random_f32s(2_000_000, 5).map(|v| uniform(v, -10.0, 10.0)), t, f64::tanh);
        println!("tanh max ulp {u1:.3} {u2:.3} {u3:.3} {u4:.3}, max abs {a1:.3e} {a2:.3e} {a3:.3e} {a4:.3e}");
        assert!(u1.max(u2).max(u3).max(u4) <= 1.5, "tanh max ulp {u1} {u2} {u3} {u4}");
        assert!(a1.max(a2).max(a3).max(a4) <= 1e-7, "tanh max abs {a1} {a2} {a3} {a4}");
    }

    #[test]
    fn f32_erf_is_within_one_and_a_half_ulp() {
        let f = |x: f32| <f32 as Float>::erf(x);
        let (u1, a1) = max_errors(sweep(-6.0, 6.0, 1e-4), f, erf_f64);
        let (u2, a2) = max_errors(random_f32s(1_000_000, 4), f, erf_f64);
        let (u3, a3) = max_errors(random_f32s(1_000_000, 6).map(|v| uniform(v, -4.5, 4.5)), f, erf_f64);
        println!("erf max ulp {u1:.3} {u2:.3} {u3:.3}, max abs {a1:.3e} {a2:.3e} {a3:.3e}");
        assert!(u1.max(u2).max(u3) <= 1.5, "erf max ulp {u1} {u2} {u3}");
        assert!(a1.max(a2).max(a3) <= 1e-7, "erf max abs {a1} {a2} {a3}");
    }

    /// The erf that shares its Gaussian ([`erf_gauss_f32`], unclamped) is bitwise the erf it replaced (the
    /// Gaussian of the clamped argument), on every 61st positive f32 and on every f32 around the clamp; the
    /// Gaussian itself is e^(-x^2) to within the rounding of `x * x` plus 1.5 ulp.
    #[test]
    fn erf_keeps_its_bits_with_the_shared_gaussian() {
        fn erf_clamped_gauss(x: f32) -> f32 {
            let ax = x.abs().min(ERF_CLAMP);
            erf_with_gauss_f32(x, exp_core_f32(-(ax * ax)))
        }
        let around_clamp = 3.8f32.to_bits()..4.6f32.to_bits();
        for bits in (0..f32::INFINITY.to_bits()).step_by(61).chain(around_clamp) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let (erf, gauss) = erf_gauss_f32(x);
                assert_eq!(erf.to_bits(), erf_clamped_gauss(x).to_bits(), "erf({x:e})");
                let want = (-(x as f64) * (x as f64)).exp();
                let tol = want * (1.5 * f32::EPSILON as f64 + (x as f64) * (x as f64) * f32::EPSILON as f64 / 2.0);
                // Subnormal results are rounded once to the spacing 2^-149 (1.4e-45).
                assert!((gauss as f64 - want).abs() <= tol + 2.1e-45, "gauss({x:e}) = {gauss:e}, want {want:e}");
            }
        }
        assert!(erf_gauss_f32(f32::NAN).0.is_nan() && erf_gauss_f32(f32::NAN).1.is_nan());
        assert_eq!(erf_gauss_f32(f32::INFINITY), (1.0, 0.0));
    }

    /// Every f32 (every positive one for the odd tanh and erf, whose sign is copied): the figures the doc
    /// comments state. About four minutes in release on two threads (the test loop is compiled without FMA, so
    /// each polynomial step is a libm `fmaf` call); run with
    /// `cargo test --release -p ecstrain-kernels --lib exhaustive -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn exhaustive_f32_errors() {
        use rayon::prelude::*;
        let all = |lo: u32, hi: u32, f: fn(f32) -> f32, reference: fn(f64) -> f64| -> (f64, f64) {
            (lo..hi)
                .into_par_iter()
                .step_by(1 << 20)
                .map(|start| max_errors((start..(start + (1 << 20)).min(hi)).map(f32::from_bits), f, reference))
                .reduce(|| (0.0, 0.0), |a, b| (a.0.max(b.0), a.1.max(b.1)))
        };
        let inf = f32::INFINITY.to_bits();
        let (e_pos, _) = all(0, inf + 1, <f32 as Float>::exp, f64::exp);
        let (e_neg, _) = all(0x8000_0000, 0x8000_0000 | (inf + 1), <f32 as Float>::exp, f64::exp);
        let (t_u, t_a) = all(0, inf + 1, <f32 as Float>::tanh, f64::tanh);
        let (f_u, f_a) = all(0, 4.0f32.to_bits(), <f32 as Float>::erf, erf_f64);
        println!(
            "exp max ulp {:.3}; tanh {t_u:.3} ulp, {t_a:.2e} abs; erf on (0, 4) {f_u:.3} ulp, {f_a:.2e} abs",
            e_pos.max(e_neg)
        );
        assert!(e_pos.max(e_neg) < 1.0 && t_u < 1.34 && f_u < 1.22);
    }

    #[test]
    fn f32_special_values() {
        let exp = <f32 as Float>::exp;
        let tanh = <f32 as Float>::tanh;
        let erf = <f32 as Float>::erf;
        for f in [exp, tanh, erf] {
            assert!(f(f32::NAN).is_nan() && f(-f32::NAN).is_nan());
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(1.0), std::f32::consts::E);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::MAX), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(88.72284), f32::INFINITY);
        assert!(exp(88.72283).is_finite() && exp(88.72283) > 3.4e38);
        assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0);
        assert_eq!(exp(f32::MIN).to_bits(), 0);
        assert_eq!(exp(-104.0).to_bits(), 0);
        assert_eq!(exp(-103.98).to_bits(), 0);
        // Subnormal results are rounded, not flushed: e^-103.97 is about 0.51 * 2^-149.
        assert_eq!(exp(-103.97).to_bits(), 1);
        assert!(ulp_err(exp(-100.0), (-100f64).exp()) <= 1.0);
        assert!(exp(-88.0) > 0.0 && exp(-88.0) < f32::MIN_POSITIVE);
        assert_eq!(exp(1e-30), 1.0);
        for (x, want) in [(0.0f32, 0.0f32), (-0.0, -0.0), (f32::INFINITY, 1.0), (f32::NEG_INFINITY, -1.0)] {
            assert_eq!(tanh(x).to_bits(), want.to_bits(), "tanh({x})");
            assert_eq!(erf(x).to_bits(), want.to_bits(), "erf({x})");
        }
        assert_eq!(tanh(9.02), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
        assert_eq!(tanh(f32::MAX), 1.0);
        assert_eq!(tanh(1e-30), 1e-30);
        assert_eq!(tanh(f32::from_bits(1)), f32::from_bits(1));
        assert_eq!(erf(3.95), 1.0);
        assert_eq!(erf(-10.0), -1.0);
        assert_eq!(erf(f32::MIN), -1.0);
        assert!(erf(3.8) < 1.0);
        let tiny = 1e-20f32;
        assert!(ulp_err(erf(tiny), erf_f64(tiny as f64)) <= 1.0);
    }

    #[test]
    fn f64_functions_are_the_exact_references() {
        for x in sweep(-30.0, 30.0, 1e-3).map(f64::from).chain([f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 710.0]) {
            assert_eq!(<f64 as Float>::exp(x).to_bits(), x.exp().to_bits());
            assert_eq!(<f64 as Float>::tanh(x).to_bits(), x.tanh().to_bits());
            assert_eq!(<f64 as Float>::erf(x).to_bits(), erf_f64(x).to_bits());
        }
        assert!(<f64 as Float>::erf(f64::NAN).is_nan());
    }
}
