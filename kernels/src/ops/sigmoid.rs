//! Logistic sigmoid activation: `out = 1 / (1 + e^-x)`.

use super::par::{map_binary, map_unary};
use crate::Float;

/// Sigmoid in a form that never overflows: `e^-|x|` is at most 1, so no `exp` of a large positive number.
#[inline(always)]
pub(crate) fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// Sigmoid forward (overwrites `out`).
///
/// inp: [N], out: [N].
pub fn sigmoid_forward<T: Float>(out: &mut [T], inp: &[T]) {
    map_unary(out, inp, sigmoid);
}

/// Sigmoid backward: `dinp = dout * (s * (1 - s))` with `s = sigmoid(inp)` recomputed from the input
/// (overwrites `dinp`).
///
/// dinp, dout, inp: [N].
pub fn sigmoid_backward<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) {
    map_binary(dinp, dout, inp, backward_elem);
}

/// One element of [`sigmoid_backward`].
#[inline(always)]
pub(crate) fn backward_elem<T: Float>(g: T, x: T) -> T {
    g * grad_elem(x)
}

/// s (1 - s) for one element: what [`backward_elem`] multiplies the gradient by (and what the fused linear +
/// sigmoid keeps from its forward).
#[inline(always)]
pub(crate) fn grad_elem<T: Float>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::ONE - s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    #[test]
    fn hand_checked_values() {
        let x = [0.0f64, 2.0, -2.0, -800.0, 800.0];
        let mut y = [0.0; 5];
        sigmoid_forward(&mut y, &x);
        // sigmoid(2) = 0.8807970779778823; extreme inputs saturate without overflow or NaN.
        assert_close("sigmoid", &y, &[0.5, 0.8807970779778823, 0.11920292202211755, 0.0, 1.0], 1e-15, 1e-300);
        let mut d = [9.0; 5];
        sigmoid_backward(&mut d, &[1.0, 1.0, 1.0, 1.0, 1.0], &x);
        assert_close("dsigmoid", &d, &[0.25, 0.10499358540350652, 0.10499358540350652, 0.0, 0.0], 1e-14, 1e-300);
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        let f = |x: f64| 1.0 / (1.0 + (-x).exp());
        let df = |x: f64| (-x).exp() / (1.0 + (-x).exp()).powi(2);
        let k = UnaryKernels {
            fwd32: &|o, i| sigmoid_forward(o, i),
            fwd64: &|o, i| sigmoid_forward(o, i),
            bwd32: &|d, g, i| sigmoid_backward(d, g, i),
            bwd64: &|d, g, i| sigmoid_backward(d, g, i),
        };
        let x = uniform(1, 64, -6.0, 6.0);
        let x_large = uniform(2, 50_000, -6.0, 6.0);
        check_unary("sigmoid", &k, &UnaryReference { f: &f, df: &df }, &x, &x_large);
    }
}
