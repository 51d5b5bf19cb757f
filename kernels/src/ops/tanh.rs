//! Hyperbolic tangent activation.

use super::par::{map_binary, map_unary};
use crate::Float;

/// tanh forward (overwrites `out`).
///
/// inp: [N], out: [N].
pub fn tanh_forward<T: Float>(out: &mut [T], inp: &[T]) {
    map_unary(out, inp, |x: T| x.tanh());
}

/// tanh backward: `dinp = dout * (1 - tanh(inp)^2)` (overwrites `dinp`). Takes the forward input like every
/// activation backward and recomputes tanh, so the executor need not keep the output alive.
///
/// dinp, dout, inp: [N].
pub fn tanh_backward<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) {
    map_binary(dinp, dout, inp, backward_elem);
}

/// One element of [`tanh_backward`].
#[inline(always)]
pub(crate) fn backward_elem<T: Float>(g: T, x: T) -> T {
    g * grad_elem(x)
}

/// 1 - tanh(x)^2 for one element: what [`backward_elem`] multiplies the gradient by (and what the fused
/// linear + tanh keeps from its forward).
#[inline(always)]
pub(crate) fn grad_elem<T: Float>(x: T) -> T {
    let t = x.tanh();
    T::ONE - t * t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    #[test]
    fn hand_checked_values() {
        let x = [0.0f64, 0.5, -1.0, 30.0];
        let mut y = [0.0; 4];
        tanh_forward(&mut y, &x);
        // tanh(0.5) = 0.46211715726000974, tanh(-1) = -0.7615941559557649, tanh(30) = 1 in f64.
        assert_close("tanh", &y, &[0.0, 0.46211715726000974, -0.7615941559557649, 1.0], 1e-15, 1e-16);
        let mut d = [0.0; 4];
        tanh_backward(&mut d, &[1.0, 1.0, 2.0, 1.0], &x);
        assert_close("dtanh", &d, &[1.0, 0.7864477329659274, 2.0 * 0.41997434161402614, 0.0], 1e-14, 1e-16);
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        // From the definition tanh x = (e^x - e^-x) / (e^x + e^-x), on inputs where that form is accurate.
        let f = |x: f64| (x.exp() - (-x).exp()) / (x.exp() + (-x).exp());
        let df = |x: f64| 4.0 / (x.exp() + (-x).exp()).powi(2);
        let k = UnaryKernels {
            fwd32: &|o, i| tanh_forward(o, i),
            fwd64: &|o, i| tanh_forward(o, i),
            bwd32: &|d, g, i| tanh_backward(d, g, i),
            bwd64: &|d, g, i| tanh_backward(d, g, i),
        };
        let x = uniform(1, 64, -4.0, 4.0);
        let x_large = uniform(2, 50_000, -4.0, 4.0);
        check_unary("tanh", &k, &UnaryReference { f: &f, df: &df }, &x, &x_large);
    }
}
