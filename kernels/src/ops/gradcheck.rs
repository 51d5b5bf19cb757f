//! Test helpers shared by the op tests: deterministic random inputs, tolerant comparisons and a central
//! finite-difference gradient checker (all in f64).
//!
//! A kernel with vector output `y = f(x)` is checked through the scalar `L = sum_i w_i * y_i` for a random
//! weighting `w`: the analytical gradient is the kernel's backward with `dout = w`, the numerical one is
//! `(L(x + h e_k) - L(x - h e_k)) / 2h` for every coordinate `k`.

use crate::rng::Rng;

/// Finite-difference step. With f64 and O(1) values the central difference has truncation error ~h^2 and
/// rounding error ~1e-16 / h, both well below the 1e-6 tolerances.
pub const H: f64 = 1e-6;

/// Relative tolerance of gradient checks.
pub const GRAD_RTOL: f64 = 1e-6;

/// Absolute tolerance of gradient checks.
pub const GRAD_ATOL: f64 = 1e-6;

/// `n` values uniform in `[lo, hi)` from a seeded stream, so every test run sees the same inputs.
pub fn uniform(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.next_f64()).collect()
}

/// `n` values uniform in `[lo, hi)` that stay at least `gap` away from `kink` (for piecewise ops such as
/// ReLU, where a finite difference straddling the kink is meaningless).
pub fn uniform_avoiding(seed: u64, n: usize, lo: f64, hi: f64, kink: f64, gap: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| loop {
            let x = lo + (hi - lo) * rng.next_f64();
            if (x - kink).abs() >= gap {
                break x;
            }
        })
        .collect()
}

/// Rounds to f32 and back, so an f64 reference sees exactly the inputs the f32 kernel sees.
pub fn round_f32(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

/// Narrows to f32.
pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Asserts `|got - want| <= atol + rtol * |want|` element by element, naming the first offender.
pub fn assert_close<G: Copy + Into<f64>>(what: &str, got: &[G], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g: f64 = g.into();
        let tol = atol + rtol * w.abs();
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w} (|diff| {} > tol {tol})", (g - w).abs());
    }
}

/// Like [`assert_close`] with the absolute tolerance scaled by the largest `|want|`: the right yardstick
/// for f32 results of long sums, whose rounding error follows the size of the terms, not of the result.
pub fn assert_close_scaled<G: Copy + Into<f64>>(what: &str, got: &[G], want: &[f64], rtol: f64) {
    let scale = want.iter().fold(1.0f64, |m, &w| m.max(w.abs()));
    assert_close(what, got, want, rtol, rtol * scale);
}

/// Central-difference gradient of the scalar `loss` with respect to every coordinate of `x`.
/// `x` is perturbed in place and restored exactly.
pub fn numerical_grad(x: &mut [f64], mut loss: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut g = vec![0.0; x.len()];
    for k in 0..x.len() {
        let orig = x[k];
        x[k] = orig + H;
        let lp = loss(x);
        x[k] = orig - H;
        let lm = loss(x);
        x[k] = orig;
        g[k] = (lp - lm) / (2.0 * H);
    }
    g
}

/// Checks an analytical gradient of `loss` with respect to `x` against the central difference.
pub fn check_grad(what: &str, x: &mut [f64], analytical: &[f64], loss: impl FnMut(&[f64]) -> f64) {
    let numerical = numerical_grad(x, loss);
    assert_close(what, analytical, &numerical, GRAD_RTOL, GRAD_ATOL);
}

/// `sum_i w_i * y_i`: turns a vector output into the scalar the gradient checker differentiates.
pub fn dot(w: &[f64], y: &[f64]) -> f64 {
    assert_eq!(w.len(), y.len());
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Reference functions of an elementwise activation, written in the test from the math definition.
pub struct UnaryReference<'a> {
    /// y = f(x).
    pub f: &'a dyn Fn(f64) -> f64,
    /// f'(x).
    pub df: &'a dyn Fn(f64) -> f64,
}

/// An activation backward `(dinp, dout, inp)`.
pub type BackwardFn<'a, T> = &'a dyn Fn(&mut [T], &[T], &[T]);

/// The f32 and f64 instantiations of an activation's forward and backward (`backward(dinp, dout, inp)`).
pub struct UnaryKernels<'a> {
    /// forward, f32.
    pub fwd32: &'a dyn Fn(&mut [f32], &[f32]),
    /// forward, f64.
    pub fwd64: &'a dyn Fn(&mut [f64], &[f64]),
    /// backward, f32.
    pub bwd32: BackwardFn<'a, f32>,
    /// backward, f64.
    pub bwd64: BackwardFn<'a, f64>,
}

/// The float64 reference check and the finite-difference check every activation runs:
/// forward and backward of the f64 kernel against the reference (1e-12), of the f32 kernel on the same
/// (f32-rounded) inputs (1e-5 relative, 1e-6 absolute for cancellation near zero), once on a small and once
/// on a large buffer (so both the sequential and the rayon path are covered), then the f64 backward against
/// central differences of the f64 forward on the small buffer. `x` holds the small inputs, `x_large`
/// the large ones; both should avoid non-differentiable points by more than [`H`].
pub fn check_unary(name: &str, k: &UnaryKernels<'_>, r: &UnaryReference<'_>, x: &[f64], x_large: &[f64]) {
    for (xs, seed) in [(x, 100u64), (x_large, 200)] {
        let xs = round_f32(xs);
        let n = xs.len();
        let dout = round_f32(&uniform(seed, n, -1.0, 1.0));
        let want: Vec<f64> = xs.iter().map(|&v| (r.f)(v)).collect();
        let want_d: Vec<f64> = xs.iter().zip(&dout).map(|(&v, &g)| g * (r.df)(v)).collect();

        let mut y = vec![0.0f64; n];
        (k.fwd64)(&mut y, &xs);
        assert_close(&format!("{name} f64 forward"), &y, &want, 1e-12, 1e-12);
        let mut d = vec![f64::NAN; n];
        (k.bwd64)(&mut d, &dout, &xs);
        assert_close(&format!("{name} f64 backward"), &d, &want_d, 1e-12, 1e-12);

        let (xs32, dout32) = (to_f32(&xs), to_f32(&dout));
        let mut y = vec![0.0f32; n];
        (k.fwd32)(&mut y, &xs32);
        assert_close(&format!("{name} f32 forward"), &y, &want, 1e-5, 1e-6);
        let mut d = vec![f32::NAN; n];
        (k.bwd32)(&mut d, &dout32, &xs32);
        assert_close(&format!("{name} f32 backward"), &d, &want_d, 1e-5, 1e-6);
    }

    let mut xs = x.to_vec();
    let dout = uniform(300, xs.len(), -1.0, 1.0);
    let mut d = vec![0.0; xs.len()];
    (k.bwd64)(&mut d, &dout, &xs);
    check_grad(&format!("{name} dinp"), &mut xs, &d, |v| {
        let mut y = vec![0.0; v.len()];
        (k.fwd64)(&mut y, v);
        dot(&dout, &y)
    });
}
