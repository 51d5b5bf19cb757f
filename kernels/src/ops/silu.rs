//! SiLU (swish): `out = x * sigmoid(x)`, PyTorch's `nn.SiLU`.

use super::par::{map_binary, map_unary};
use crate::Float;

/// Sigmoid in a form that never overflows: `e^-|x|` is at most 1, so no `exp` of a large positive number.
#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// SiLU forward: `out = x * sigmoid(x)` (overwrites `out`). Large negative inputs give -0 rather than NaN;
/// NaN inputs propagate.
///
/// inp: [N], out: [N] (any shape, flattened).
pub fn silu_forward<T: Float>(out: &mut [T], inp: &[T]) {
    map_unary(out, inp, forward_elem);
}

/// One element of [`silu_forward`].
#[inline(always)]
pub(crate) fn forward_elem<T: Float>(x: T) -> T {
    x * sigmoid(x)
}

/// d/dx [x s(x)] = s (1 + x (1 - s)) for one element: what [`backward_elem`] multiplies the gradient by (and what
/// the fused linear + SiLU keeps from its forward).
#[inline(always)]
pub(crate) fn grad_elem<T: Float>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::ONE + x * (T::ONE - s))
}

/// SiLU backward: `dinp = dout * (s * (1 + x * (1 - s)))` with `s = sigmoid(inp)` recomputed from the input
/// (overwrites `dinp`). This is d/dx [x s(x)] = s + x s (1 - s), factored as PyTorch does.
///
/// dinp, dout, inp: [N].
pub fn silu_backward<T: Float>(dinp: &mut [T], dout: &[T], inp: &[T]) {
    map_binary(dinp, dout, inp, backward_elem);
}

/// One element of [`silu_backward`].
#[inline(always)]
pub(crate) fn backward_elem<T: Float>(g: T, x: T) -> T {
    g * grad_elem(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;
    use crate::ops::par::PAR_MIN_ELEMS;

    #[test]
    fn hand_checked_values() {
        // Python float64: x * (1 / (1 + exp(-x))) and s * (1 + x * (1 - s)) at x = 1, -1, 2, 0, -3.
        let x = [1.0f64, -1.0, 2.0, 0.0, -3.0];
        let mut y = [9.0; 5];
        silu_forward(&mut y, &x);
        assert_close(
            "silu",
            &y,
            &[0.7310585786300049, -0.2689414213699951, 1.7615941559557646, 0.0, -0.14227761953270035],
            1e-15,
            1e-300,
        );
        let mut d = [9.0; 5];
        silu_backward(&mut d, &[1.0; 5], &x);
        assert_close(
            "dsilu",
            &d,
            &[0.9276705118714869, 0.07232948812851325, 1.0907842487848955, 0.5, -0.08810410601516962],
            1e-14,
            1e-300,
        );
        // Saturation: no overflow, no NaN; silu(x) -> x for large x, -> 0 for very negative x.
        let x = [-800.0f32, 800.0, f32::NAN];
        let mut y = [9.0f32; 3];
        silu_forward(&mut y, &x);
        assert_eq!(&y[..2], &[0.0, 800.0]);
        assert!(y[2].is_nan());
        let mut d = [9.0f32; 3];
        silu_backward(&mut d, &[2.0; 3], &x);
        assert_eq!(&d[..2], &[0.0, 2.0]);
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let f = |x: f64| x * s(x);
        // Product rule on x * s(x), with s' = s (1 - s).
        let df = |x: f64| s(x) + x * s(x) * (1.0 - s(x));
        let k = UnaryKernels {
            fwd32: &|o, i| silu_forward(o, i),
            fwd64: &|o, i| silu_forward(o, i),
            bwd32: &|d, g, i| silu_backward(d, g, i),
            bwd64: &|d, g, i| silu_backward(d, g, i),
        };
        let x = uniform(1, 64, -6.0, 6.0);
        // Larger than PAR_MIN_ELEMS so the rayon path runs too.
        let x_large = uniform(2, PAR_MIN_ELEMS + 1001, -6.0, 6.0);
        check_unary("silu", &k, &UnaryReference { f: &f, df: &df }, &x, &x_large);
    }
}
