//! GELU activation, exact (erf) or tanh-approximated, as PyTorch's `nn.GELU(approximate=...)`.

use super::par::{map_binary_chunks, map_unary_chunks};
use crate::Float;

/// Which GELU formula to use (PyTorch's `approximate` argument).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluApprox {
    /// Exact: `0.5 * x * (1 + erf(x / sqrt 2))` (PyTorch `approximate='none'`, the default).
    #[default]
    None,
    /// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))` (PyTorch `approximate='tanh'`, GPT-2).
    Tanh,
}

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi): the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
/// sqrt(2 / pi).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_COEFF: f64 = 0.044715;

/// Exact GELU of one element: `x * Phi(x)`.
#[inline(always)]
pub(crate) fn gelu_exact<T: Float>(x: T) -> T {
    T::from_f64(0.5) * x * (T::ONE + (x * T::from_f64(FRAC_1_SQRT_2)).erf())
}

/// Tanh-approximated GELU of one element.
#[inline(always)]
pub(crate) fn gelu_tanh<T: Float>(x: T) -> T {
    let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_COEFF) * x * x * x);
    T::from_f64(0.5) * x * (T::ONE + u.tanh())
}

/// d/dx [x Phi(x)] = Phi(x) + x phi(x), with phi(x) = e^(-z^2) / sqrt(2 pi) for z = x / sqrt 2: the Gaussian
/// erf(z) computes on its way ([`Float::erf_gauss`]), so one exponential serves both terms, and the fused
/// linear + GELU forward, which evaluates this beside [`gelu_exact`], shares erf(z) between the two.
#[inline(always)]
pub(crate) fn gelu_exact_grad<T: Float>(x: T) -> T {
    let (erf, gauss) = (x * T::from_f64(FRAC_1_SQRT_2)).erf_gauss();
    let cdf = T::from_f64(0.5) * (T::ONE + erf);
    let pdf = T::from_f64(INV_SQRT_2PI) * gauss;
    cdf + x * pdf
}

/// d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u'.
#[inline(always)]
pub(crate) fn gelu_tanh_grad<T: Float>(x: T) -> T {
    let half = T::from_f64(0.5);
    let x2 = x * x;
    let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_COEFF) * x2 * x);
    let du = T::from_f64(SQRT_2_OVER_PI) * (T::ONE + T::from_f64(3.0 * GELU_COEFF) * x2);
    let t = u.tanh();
    half * (T::ONE + t) + half * x * (T::ONE - t * t) * du
}

/// One element of the exact GELU backward: `g * gelu'(x)`.
#[inline(always)]
pub(crate) fn backward_exact_elem<T: Float>(g: T, x: T) -> T {
    g * gelu_exact_grad(x)
}

/// One element of the tanh-approximated GELU backward.
#[inline(always)]
pub(crate) fn backward_tanh_elem<T: Float>(g: T, x: T) -> T {
    g * gelu_tanh_grad(x)
}

// One loop per formula, each compiled for AVX-512 / AVX2 / baseline: the per-element bodies (erf, exp, tanh
// polynomials) are too large to be inlined into a generic closure-taking loop, and a call per element keeps
// the loop scalar.
// Index loops, not `zip().for_each()`: the iterator adapter's `fold` is a separate generic function that is
// not always inlined into the AVX-512 copy, and would then run at the baseline width.
#[inline(always)]
fn fwd_exact_body<T: Float>(out: &mut [T], inp: &[T]) {
    let n = out.len().min(inp.len());
    for i in 0..n {
        out[i] = gelu_exact(inp[i]);
    }
}
#[inline(always)]
fn fwd_tanh_body<T: Float>(out: &mut [T], inp: &[T]) {
    let n = out.len().min(inp.len());
    for i in 0..n {
        out[i] = gelu_tanh(inp[i]);
    }
}
#[inline(always)]
fn bwd_exact_body<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) {
    let n = dinp.len().min(dout.len()).min(inp.len());
    for i in 0..n {
        dinp[i] = backward_exact_elem(dout[i], inp[i]);
    }
}
#[inline(always)]
fn bwd_tanh_body<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) {
    let n = dinp.len().min(dout.len()).min(inp.len());
    for i in 0..n {
        dinp[i] = backward_tanh_elem(dout[i], inp[i]);
    }
}
crate::multiversion!(fn fwd_exact<T: Float>(out: &mut [T], inp: &[T]) => fwd_exact_body);
crate::multiversion!(fn fwd_tanh<T: Float>(out: &mut [T], inp: &[T]) => fwd_tanh_body);
crate::multiversion!(fn bwd_exact<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) => bwd_exact_body);
crate::multiversion!(fn bwd_tanh<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) => bwd_tanh_body);

/// GELU forward (overwrites `out`).
///
/// inp: [N], out: [N].
pub fn gelu_forward<T: Float>(out: &mut [T], inp: &[T], approx: GeluApprox) {
    match approx {
        GeluApprox::None => map_unary_chunks(out, inp, fwd_exact::<T>),
        GeluApprox::Tanh => map_unary_chunks(out, inp, fwd_tanh::<T>),
    }
}

/// GELU backward: `dinp = dout * gelu'(inp)` (overwrites `dinp`).
///
/// dinp, dout, inp: [N].
pub fn gelu_backward<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T], approx: GeluApprox) {
    match approx {
        GeluApprox::None => map_binary_chunks(dinp, dout, inp, bwd_exact::<T>),
        GeluApprox::Tanh => map_binary_chunks(dinp, dout, inp, bwd_tanh::<T>),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::erf_f64;
    use crate::ops::gradcheck::*;

    #[test]
    fn hand_checked_values() {
        // The formulas in float64 (Python math.erf / math.tanh) at x = 1, -1, 0, 2:
        // exact 0.8413447460685429, -0.15865525393145707, 0, 1.9544997361036416
        // tanh  0.8411919906082768, -0.15880800939172324, 0, 1.954597694087775
        let x = [1.0f64, -1.0, 0.0, 2.0];
        let mut y = [0.0; 4];
        gelu_forward(&mut y, &x, GeluApprox::None);
        assert_close("exact", &y, &[0.8413447460685429, -0.15865525393145707, 0.0, 1.9544997361036416], 1e-14, 1e-16);
        gelu_forward(&mut y, &x, GeluApprox::Tanh);
        assert_close("tanh", &y, &[0.8411919906082768, -0.15880800939172324, 0.0, 1.954597694087775], 1e-14, 1e-16);
        // The derivative at 0 is 1/2 for both forms.
        let mut d = [0.0; 1];
        gelu_backward(&mut d, &[1.0], &[0.0], GeluApprox::None);
        assert_eq!(d[0], 0.5);
        gelu_backward(&mut d, &[1.0], &[0.0], GeluApprox::Tanh);
        assert_eq!(d[0], 0.5);
    }

    #[test]
    fn exact_matches_reference_and_finite_differences() {
        // Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = e^(-x^2/2) / sqrt(2 pi)
        let phi_cdf = |x: f64| 0.5 * (1.0 + erf_f64(x / 2f64.sqrt()));
        let f = |x: f64| x * phi_cdf(x);
        let df = |x: f64| phi_cdf(x) + x * (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let k = UnaryKernels {
            fwd32: &|o, i| gelu_forward(o, i, GeluApprox::None),
            fwd64: &|o, i| gelu_forward(o, i, GeluApprox::None),
            bwd32: &|d, g, i| gelu_backward(d, g, i, GeluApprox::None),
            bwd64: &|d, g, i| gelu_backward(d, g, i, GeluApprox::None),
        };
        let x = uniform(1, 64, -4.0, 4.0);
        let x_large = uniform(2, 40_000, -4.0, 4.0);
        check_unary("gelu exact", &k, &UnaryReference { f: &f, df: &df }, &x, &x_large);
    }

    #[test]
    fn tanh_matches_reference_and_finite_differences() {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let f = |x: f64| 0.5 * x * (1.0 + (c * (x + 0.044715 * x.powi(3))).tanh());
        let df = |x: f64| {
            let t = (c * (x + 0.044715 * x.powi(3))).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        };
        let k = UnaryKernels {
            fwd32: &|o, i| gelu_forward(o, i, GeluApprox::Tanh),
            fwd64: &|o, i| gelu_forward(o, i, GeluApprox::Tanh),
            bwd32: &|d, g, i| gelu_backward(d, g, i, GeluApprox::Tanh),
            bwd64: &|d, g, i| gelu_backward(d, g, i, GeluApprox::Tanh),
        };
        let x = uniform(1, 64, -4.0, 4.0);
        let x_large = uniform(2, 40_000, -4.0, 4.0);
        check_unary("gelu tanh", &k, &UnaryReference { f: &f, df: &df }, &x, &x_large);
    }
}
