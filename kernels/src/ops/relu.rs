//! ReLU: `out = max(x, 0)`.

use super::par::{map_binary, map_unary};
use crate::Float;

/// ReLU forward (overwrites `out`). NaN inputs propagate, as in PyTorch.
///
/// inp: [N], out: [N] (any shape, flattened).
pub fn relu_forward<T: Float>(out: &mut [T], inp: &[T]) {
    // `x <= 0 ? 0 : x` rather than `max`: a NaN fails the comparison and passes through.
    map_unary(out, inp, forward_elem);
}

/// One element of [`relu_forward`].
#[inline(always)]
pub(crate) fn forward_elem<T: Float>(x: T) -> T {
    if x <= T::ZERO {
        T::ZERO
    } else {
        x
    }
}

/// ReLU backward: `dinp = dout` where `inp > 0`, else 0 (overwrites `dinp`; the subgradient at 0 is 0,
/// as in PyTorch).
///
/// dinp, dout, inp: [N].
pub fn relu_backward<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) {
    map_binary(dinp, dout, inp, backward_elem);
}

/// One element of [`relu_backward`].
#[inline(always)]
pub(crate) fn backward_elem<T: Float>(g: T, x: T) -> T {
    if x > T::ZERO {
        g
    } else {
        T::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    #[test]
    fn hand_checked_values() {
        let x = [-2.0f32, -0.0, 0.0, 0.5, 3.0];
        let mut y = [9.0f32; 5];
        relu_forward(&mut y, &x);
        assert_eq!(y, [0.0, 0.0, 0.0, 0.5, 3.0]);
        let mut d = [9.0f32; 5];
        relu_backward(&mut d, &[1.0, 1.0, 1.0, 2.0, -3.0], &x);
        assert_eq!(d, [0.0, 0.0, 0.0, 2.0, -3.0]);
        relu_forward(&mut y[..1], &[f32::NAN]);
        assert!(y[0].is_nan());
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        let f = |x: f64| if x > 0.0 { x } else { 0.0 };
        let df = |x: f64| if x > 0.0 { 1.0 } else { 0.0 };
        let k = UnaryKernels {
            fwd32: &|o, i| relu_forward(o, i),
            fwd64: &|o, i| relu_forward(o, i),
            bwd32: &|d, g, i| relu_backward(d, g, i),
            bwd64: &|d, g, i| relu_backward(d, g, i),
        };
        // Stay 1e-3 away from the kink so no finite difference straddles it.
        let x = uniform_avoiding(1, 64, -3.0, 3.0, 0.0, 1e-3);
        let x_large = uniform(2, 50_000, -3.0, 3.0);
        check_unary("relu", &k, &UnaryReference { f: &f, df: &df }, &x, &x_large);
    }
}
