//! Softmax and log-softmax over the last axis of a `[rows, dim]` buffer (PyTorch's `softmax(x, dim=-1)` and
//! `log_softmax(x, dim=-1)`), with backwards that use the forward output, as PyTorch's do.
//!
//! Both forwards subtract the row max first: every exponent is then <= 0 (no overflow) and the largest term
//! is exactly 1, so the row sum is >= 1 and its log is finite. Row sums are accumulated in f64, since a
//! vocabulary-sized row (50k terms) would otherwise lose several digits in f32.

use rayon::prelude::*;

use super::par::{rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Runs `f(out_row, a_row, b_row)` on every row of three `[rows, dim]` buffers, in parallel over groups of
/// rows when the buffers are large. Rows are independent, so the result does not depend on the split.
fn for_rows<T, F>(out: &mut [T], a: &[T], b: &[T], rows: usize, dim: usize, f: F)
where
    T: Float,
    F: Fn(&mut [T], &[T], &[T]) + Sync,
{
    if dim == 0 {
        return;
    }
    let body = |(o, (a, b)): (&mut [T], (&[T], &[T]))| {
        for ((o, a), b) in o.chunks_exact_mut(dim).zip(a.chunks_exact(dim)).zip(b.chunks_exact(dim)) {
            f(o, a, b);
        }
    };
    if rows > 1 && rows * dim >= PAR_MIN_ELEMS {
        let chunk = rows_per_task(dim) * dim;
        out.par_chunks_mut(chunk).zip(a.par_chunks(chunk).zip(b.par_chunks(chunk))).for_each(body);
    } else {
        body((out, (a, b)));
    }
}

/// Checks the shapes shared by every function here.
fn check_shapes(what: &str, lens: [usize; 3], rows: usize, dim: usize) {
    for len in lens {
        assert_eq!(len, rows * dim, "{what}: every buffer must be [rows, dim]");
    }
}

/// Row max, NaN-ignoring (a NaN still reaches the output through its own `exp`).
#[inline(always)]
fn row_max<T: Float>(x: &[T]) -> T {
    x.iter().fold(x[0], |m, &v| m.max(v))
}

/// Independent accumulators per reduction: a serial chain of `max` or `+` cannot be vectorised (the compiler
/// may not reorder float operations), sixteen interleaved ones can. The order is fixed, so results are the
/// same on every machine.
const LANES: usize = 16;

/// [`row_max`] over [`LANES`] interleaved accumulators (the same value: max is exact in any order).
#[inline(always)]
fn lane_max<T: Float>(x: &[T]) -> T {
    let mut acc = [x[0]; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    rem.iter().fold(acc.iter().fold(x[0], |m, &v| m.max(v)), |m, &v| m.max(v))
}

/// `y = e^(x - m)` element-wise, returning the f64 sum of `y` over [`LANES`] interleaved accumulators.
#[inline(always)]
fn exp_shift_sum<T: Float>(y: &mut [T], x: &[T], m: T) -> f64 {
    for (y, &v) in y.iter_mut().zip(x) {
        *y = (v - m).exp();
    }
    let mut acc = [0.0f64; LANES];
    let chunks = y.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v.to_f64();
        }
    }
    acc.iter().sum::<f64>() + rem.iter().map(|v| v.to_f64()).sum::<f64>()
}

/// [`softmax_row_body`] that also returns the row's log-sum-exp `m + ln(sum_j e^(x_j - m))` (the sum in f64),
/// for the fused softmax + cross-entropy.
#[inline(always)]
fn softmax_row_lse_body<T: Float>(y: &mut [T], x: &[T]) -> T {
    let m = lane_max(x);
    let sum = exp_shift_sum(y, x, m);
    let inv = T::from_f64(1.0 / sum);
    for y in y.iter_mut() {
        *y *= inv;
    }
    m + T::from_f64(sum.ln())
}
crate::multiversion!(
    /// Softmax of the non-empty row `x` into `y`, returning its log-sum-exp (see [`softmax_row_lse_body`]).
    pub(crate) fn softmax_row_lse<T: Float>(y: &mut [T], x: &[T]) -> T => softmax_row_lse_body
);

#[inline(always)]
fn softmax_row_body<T: Float>(y: &mut [T], x: &[T]) {
    let m = lane_max(x);
    let inv = T::from_f64(1.0 / exp_shift_sum(y, x, m));
    for y in y.iter_mut() {
        *y *= inv;
    }
}
crate::multiversion!(fn softmax_row<T: Float>(y: &mut [T], x: &[T]) => softmax_row_body);

#[inline(always)]
fn softmax_in_place_body<T: Float>(row: &mut [T]) {
    let m = lane_max(row);
    // e^(x - m) in place: the same loop as `exp_shift_sum`, reading and writing one buffer.
    for v in row.iter_mut() {
        *v = (*v - m).exp();
    }
    let mut acc = [0.0f64; LANES];
    let chunks = row.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v.to_f64();
        }
    }
    let sum = acc.iter().sum::<f64>() + rem.iter().map(|v| v.to_f64()).sum::<f64>();
    let inv = T::from_f64(1.0 / sum);
    for v in row.iter_mut() {
        *v *= inv;
    }
}
/// `ds = scale * p * (ds - sum_j p_j ds_j)`: the softmax backward of one row in place (`ds` holds the
/// gradient with respect to the probabilities `p` on entry), with the dot product over [`LANES`] interleaved
/// accumulators so the loop vectorises.
#[inline(always)]
fn softmax_backward_in_place_body<T: Float>(ds: &mut [T], p: &[T], scale: T) {
    let n = ds.len().min(p.len());
    let (ds, p) = (&mut ds[..n], &p[..n]);
    // Fixed-size chunks, not indices: no bounds checks, so the dot product and the update vectorise.
    let mut acc = [T::ZERO; LANES];
    let (cd, cp) = (ds.chunks_exact(LANES), p.chunks_exact(LANES));
    let (td, tp) = (cd.remainder(), cp.remainder());
    for (d, q) in cd.zip(cp) {
        let d: &[T; LANES] = d.try_into().expect("LANES");
        let q: &[T; LANES] = q.try_into().expect("LANES");
        for l in 0..LANES {
            acc[l] += q[l] * d[l];
        }
    }
    // The lanes in order, then the tail element by element: the order of the index loop this replaced.
    let dot = td.iter().zip(tp).fold(acc.iter().fold(T::ZERO, |s, &v| s + v), |s, (&d, &q)| s + q * d);
    for (d, &q) in ds.iter_mut().zip(p) {
        *d = scale * q * (*d - dot);
    }
}
/// [`softmax_backward_in_place_body`] over every `row_len`-long row of `ds` (with the matching rows of `p`):
/// one dispatch for a block of attention rows instead of one per row.
#[inline(always)]
fn softmax_rows_backward_in_place_body<T: Float>(ds: &mut [T], p: &[T], row_len: usize, scale: T) {
    if row_len == 0 {
        return;
    }
    for (d, q) in ds.chunks_exact_mut(row_len).zip(p.chunks_exact(row_len)) {
        softmax_backward_in_place_body(d, q, scale);
    }
}
crate::multiversion!(
    /// Softmax backward of each `row_len`-long row of `ds` in place, scaled (see
    /// [`softmax_backward_in_place`]).
    pub(crate) fn softmax_rows_backward_in_place<T: Float>(ds: &mut [T], p: &[T], row_len: usize, scale: T) => softmax_rows_backward_in_place_body
);
crate::multiversion!(
    /// Softmax backward of one row in place, scaled (the row primitive attention's backward uses).
    pub(crate) fn softmax_backward_in_place<T: Float>(ds: &mut [T], p: &[T], scale: T) => softmax_backward_in_place_body
);

/// Rows up to this long go through [`softmax_short_rows_in_place`].
const SHORT_ROW: usize = 64;

/// Reduces the lanes pairwise (lane `l` with lane `l + 8`, then `l + 4`, ...): four dependent steps of
/// vector shuffles instead of a chain of 15 dependent scalar operations.
#[inline(always)]
fn tree_reduce<T: Float>(mut lanes: [T; LANES], f: impl Fn(T, T) -> T) -> T {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] = f(lanes[l], lanes[l + width]);
        }
        width /= 2;
    }
    lanes[0]
}

/// [`softmax_rows_in_place_body`] for rows of at most [`SHORT_ROW`]: each row is copied into a
/// `SHORT_ROW`-wide buffer padded with -inf, so the max, the exponentials and the sum run over whole vectors
/// with no scalar tail (a ViT's 50-key rows would otherwise spend most of their time in tails and
/// reductions). The padded lanes are set to exactly 0 after the exponential. Rows go in groups of
/// [`SHORT_GROUP`], whose independent dependency chains (max, exponential, sum) overlap in the CPU.
#[inline(always)]
fn softmax_short_rows_in_place<T: Float>(buf: &mut [T], row_len: usize) {
    let mut groups = buf.chunks_exact_mut(row_len * SHORT_GROUP);
    for group in &mut groups {
        softmax_short_group::<T, SHORT_GROUP>(group, row_len);
    }
    for row in groups.into_remainder().chunks_exact_mut(row_len) {
        softmax_short_group::<T, 1>(row, row_len);
    }
}

/// Rows of a short softmax processed together (see [`softmax_short_rows_in_place`]).
const SHORT_GROUP: usize = 4;

/// The softmax of the `G` rows of `row_len <= SHORT_ROW` in `rows`, in place.
#[inline(always)]
fn softmax_short_group<T: Float, const G: usize>(rows: &mut [T], row_len: usize) {
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    let mut x = [[neg_inf; SHORT_ROW]; G];
    for (xg, row) in x.iter_mut().zip(rows.chunks_exact(row_len)) {
        xg[..row_len].copy_from_slice(row);
    }
    let mut m = [neg_inf; G];
    for (mg, xg) in m.iter_mut().zip(&x) {
        let mut mx = [neg_inf; LANES];
        for c in xg.chunks_exact(LANES) {
            for (a, &v) in mx.iter_mut().zip(c) {
                *a = a.max(v);
            }
        }
        *mg = tree_reduce(mx, T::max);
    }
    let mut inv = [T::ZERO; G];
    for ((xg, &mg), ig) in x.iter_mut().zip(&m).zip(inv.iter_mut()) {
        for (j, v) in xg.iter_mut().enumerate() {
            let e = (*v - mg).exp();
            *v = if j < row_len { e } else { T::ZERO };
        }
        let mut acc = [T::ZERO; LANES];
        for c in xg.chunks_exact(LANES) {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        *ig = T::ONE / tree_reduce(acc, |a, b| a + b);
    }
    for ((row, xg), &ig) in rows.chunks_exact_mut(row_len).zip(&x).zip(&inv) {
        for (y, &e) in row.iter_mut().zip(xg) {
            *y = e * ig;
        }
    }
}

/// Softmax of each `row_len`-long row of `buf` in place, with the row sum accumulated in `T` over
/// [`LANES`] interleaved accumulators: attention's rows (one per query, a few hundred keys at most) need no
/// f64 sum, and one dispatch for all rows of a head instead of one per row keeps short rows cheap.
#[inline(always)]
fn softmax_rows_in_place_body<T: Float>(buf: &mut [T], row_len: usize) {
    if row_len == 0 {
        return;
    }
    if row_len <= SHORT_ROW {
        return softmax_short_rows_in_place(buf, row_len);
    }
    for row in buf.chunks_exact_mut(row_len) {
        let m = lane_max(row);
        for v in row.iter_mut() {
            *v = (*v - m).exp();
        }
        let mut acc = [T::ZERO; LANES];
        let chunks = row.chunks_exact(LANES);
        let rem = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        let sum = acc.iter().fold(T::ZERO, |s, &v| s + v) + rem.iter().fold(T::ZERO, |s, &v| s + v);
        let inv = T::ONE / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}
crate::multiversion!(
    /// See [`softmax_rows_in_place_body`].
    pub(crate) fn softmax_rows_in_place<T: Float>(buf: &mut [T], row_len: usize) => softmax_rows_in_place_body
);

crate::multiversion!(
    /// Softmax of one row in place (max subtracted, f64 sum): the row primitive of [`softmax_forward`],
    /// shared with attention.
    pub(crate) fn softmax_in_place<T: Float>(row: &mut [T]) => softmax_in_place_body
);

/// Softmax forward: `out[r, j] = e^(x[r, j] - m_r) / sum_k e^(x[r, k] - m_r)` with `m_r` the row max
/// (overwrites `out`). A row of all `-inf` gives NaN, as in PyTorch.
///
/// inp: [rows, dim], out: [rows, dim].
pub fn softmax_forward<T: Float>(out: &mut [T], inp: &[T], rows: usize, dim: usize) {
    check_shapes("softmax_forward", [out.len(), inp.len(), inp.len()], rows, dim);
    for_rows(out, inp, inp, rows, dim, |y, x, _| softmax_row(y, x));
}

/// Softmax backward from the forward output: `dinp = y * (dout - sum_j dout_j * y_j)` per row
/// (overwrites `dinp`).
///
/// dinp: [rows, dim], dout: [rows, dim], out: [rows, dim] (the output of [`softmax_forward`]).
pub fn softmax_backward<T: Float>(dinp: &mut [T], dout: &[T], out: &[T], rows: usize, dim: usize) {
    check_shapes("softmax_backward", [dinp.len(), dout.len(), out.len()], rows, dim);
    for_rows(dinp, dout, out, rows, dim, |dx, dy, y| {
        let dot: f64 = dy.iter().zip(y).map(|(&g, &p)| g.to_f64() * p.to_f64()).sum();
        let dot = T::from_f64(dot);
        for ((dx, &g), &p) in dx.iter_mut().zip(dy).zip(y) {
            *dx = p * (g - dot);
        }
    });
}

/// Log-softmax forward: `out[r, j] = x[r, j] - m_r - ln(sum_k e^(x[r, k] - m_r))` (overwrites `out`).
/// Computed from the log-sum-exp, never as `ln` of a probability, so a class whose probability underflows
/// still gets a finite log-probability.
///
/// inp: [rows, dim], out: [rows, dim].
pub fn log_softmax_forward<T: Float>(out: &mut [T], inp: &[T], rows: usize, dim: usize) {
    check_shapes("log_softmax_forward", [out.len(), inp.len(), inp.len()], rows, dim);
    for_rows(out, inp, inp, rows, dim, |y, x, _| log_softmax_row(y, x));
}

#[inline(always)]
fn log_softmax_row_body<T: Float>(y: &mut [T], x: &[T]) {
    let m = row_max(x);
    let sum: f64 = x.iter().map(|&v| (v - m).exp().to_f64()).sum();
    // (x - m) - ln(sum) rather than x - (m + ln(sum)): x - m is exact for entries near the max, whereas
    // rounding the full log-sum-exp first would lose the low bits of ln(sum) when |m| is large.
    let log_sum = T::from_f64(sum.ln());
    for (y, &v) in y.iter_mut().zip(x) {
        *y = (v - m) - log_sum;
    }
}
// Per instruction set, like every loop that calls `exp` (its polynomial uses fused multiply-adds).
crate::multiversion!(fn log_softmax_row<T: Float>(y: &mut [T], x: &[T]) => log_softmax_row_body);

/// Log-softmax backward from the forward output: `dinp = dout - e^y * sum_j dout_j` per row
/// (overwrites `dinp`; `e^y` is the softmax).
///
/// dinp: [rows, dim], dout: [rows, dim], out: [rows, dim] (the output of [`log_softmax_forward`]).
pub fn log_softmax_backward<T: Float>(dinp: &mut [T], dout: &[T], out: &[T], rows: usize, dim: usize) {
    check_shapes("log_softmax_backward", [dinp.len(), dout.len(), out.len()], rows, dim);
    for_rows(dinp, dout, out, rows, dim, log_softmax_backward_row);
}

#[inline(always)]
fn log_softmax_backward_row_body<T: Float>(dx: &mut [T], dy: &[T], y: &[T]) {
    let sum = T::from_f64(dy.iter().map(|&g| g.to_f64()).sum::<f64>());
    for ((dx, &g), &ly) in dx.iter_mut().zip(dy).zip(y) {
        *dx = g - ly.exp() * sum;
    }
}
crate::multiversion!(
    fn log_softmax_backward_row<T: Float>(dx: &mut [T], dy: &[T], y: &[T]) => log_softmax_backward_row_body
);

/// The CUDA kernels of softmax and log-softmax (`softmax.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "softmax",
    code: include_str!("softmax.cu"),
    kernels: &["softmax_forward_f32", "softmax_backward_f32", "log_softmax_forward_f32", "log_softmax_backward_f32"],
};

/// Host side of `softmax.cu`.
#[path = "softmax_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Naive f64 reference from the definitions (no max subtraction: the test inputs are small):
    /// softmax, log-softmax, and both Jacobian-vector products written out as sums over the Jacobian
    /// `dy_j/dx_k = y_j (delta_jk - y_k)` and `d log y_j / dx_k = delta_jk - y_k`.
    struct Reference {
        y: Vec<f64>,
        logy: Vec<f64>,
        dx: Vec<f64>,
        dx_log: Vec<f64>,
    }

    fn reference(x: &[f64], dy: &[f64], rows: usize, dim: usize) -> Reference {
        let mut r = Reference {
            y: vec![0.0; rows * dim],
            logy: vec![0.0; rows * dim],
            dx: vec![0.0; rows * dim],
            dx_log: vec![0.0; rows * dim],
        };
        for i in 0..rows {
            let o = i * dim;
            let z: f64 = x[o..o + dim].iter().map(|v| v.exp()).sum();
            for j in 0..dim {
                r.y[o + j] = x[o + j].exp() / z;
                r.logy[o + j] = x[o + j] - z.ln();
            }
            for k in 0..dim {
                let (mut a, mut b) = (0.0, 0.0);
                for j in 0..dim {
                    let delta = if j == k { 1.0 } else { 0.0 };
                    a += dy[o + j] * r.y[o + j] * (delta - r.y[o + k]);
                    b += dy[o + j] * (delta - r.y[o + k]);
                }
                r.dx[o + k] = a;
                r.dx_log[o + k] = b;
            }
        }
        r
    }

    #[test]
    fn hand_checked_values() {
        // softmax([1, 2, 3]) and log_softmax([1, 2, 3]) in Python float64; the second row is the first
        // shifted by 1000, which a softmax without the max subtraction would overflow.
        let want = [0.09003057317038046, 0.24472847105479767, 0.6652409557748219];
        let want_log = [-2.40760596444438, -1.4076059644443801, -0.40760596444438013];
        let x = [1.0f64, 2.0, 3.0, 1001.0, 1002.0, 1003.0];
        let mut y = [0.0; 6];
        softmax_forward(&mut y, &x, 2, 3);
        assert_close("softmax row 0", &y[..3], &want, 1e-15, 0.0);
        assert_close("softmax row 1", &y[3..], &want, 1e-15, 0.0);
        let mut ly = [0.0; 6];
        log_softmax_forward(&mut ly, &x, 2, 3);
        assert_close("log_softmax row 0", &ly[..3], &want_log, 1e-15, 0.0);
        assert_close("log_softmax row 1", &ly[3..], &want_log, 1e-13, 0.0);

        // Upstream one-hot on class 0: dx = y_0 (e_0 - y), and for log-softmax e_0 - y.
        let dy = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let mut dx = [9.0; 6];
        softmax_backward(&mut dx, &dy, &y, 2, 3);
        let y0 = want[0];
        let want_dx = [y0 * (1.0 - y0), -y0 * want[1], -y0 * want[2]];
        assert_close("dsoftmax", &dx[..3], &want_dx, 1e-14, 0.0);
        log_softmax_backward(&mut dx, &dy, &ly, 2, 3);
        assert_close("dlog_softmax", &dx[3..], &[1.0 - want[0], -want[1], -want[2]], 1e-13, 0.0);

        // A constant shift leaves softmax unchanged; a row of -inf except one entry is a one-hot, and the
        // -inf entries get log-probability -inf, not NaN.
        let x = [f32::NEG_INFINITY, 5.0, f32::NEG_INFINITY];
        let mut y = [9.0f32; 3];
        softmax_forward(&mut y, &x, 1, 3);
        assert_eq!(y, [0.0, 1.0, 0.0]);
        log_softmax_forward(&mut y, &x, 1, 3);
        assert_eq!(y, [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
        // Extreme spread: the tiny class has probability 0 in f32 but a finite log-probability.
        log_softmax_forward(&mut y, &[0.0, -200.0, 0.0], 1, 3);
        assert!((y[1] + 200.0 + 2f32.ln()).abs() < 1e-4, "{}", y[1]);
    }

    #[test]
    fn matches_f64_reference() {
        // Sequential, and 300 x 500 = 150k elements for the rayon path.
        for (rows, dim, seed) in [(5usize, 7usize, 1u64), (300, 500, 2), (3, 1, 3)] {
            let x = round_f32(&uniform(seed, rows * dim, -5.0, 5.0));
            let dy = round_f32(&uniform(seed + 10, rows * dim, -1.0, 1.0));
            let r = reference(&x, &dy, rows, dim);

            let mut y = vec![0.0f64; rows * dim];
            softmax_forward(&mut y, &x, rows, dim);
            assert_close("f64 softmax", &y, &r.y, 1e-12, 1e-15);
            let mut dx = vec![f64::NAN; rows * dim];
            softmax_backward(&mut dx, &dy, &y, rows, dim);
            assert_close_scaled("f64 dsoftmax", &dx, &r.dx, 1e-12);
            let mut ly = vec![0.0f64; rows * dim];
            log_softmax_forward(&mut ly, &x, rows, dim);
            assert_close("f64 log_softmax", &ly, &r.logy, 1e-12, 1e-14);
            log_softmax_backward(&mut dx, &dy, &ly, rows, dim);
            assert_close_scaled("f64 dlog_softmax", &dx, &r.dx_log, 1e-12);

            let (x32, dy32) = (to_f32(&x), to_f32(&dy));
            let mut y = vec![0.0f32; rows * dim];
            softmax_forward(&mut y, &x32, rows, dim);
            assert_close("f32 softmax", &y, &r.y, 1e-5, 1e-8);
            let mut dx = vec![f32::NAN; rows * dim];
            softmax_backward(&mut dx, &dy32, &y, rows, dim);
            assert_close_scaled("f32 dsoftmax", &dx, &r.dx, 1e-5);
            let mut ly = vec![0.0f32; rows * dim];
            log_softmax_forward(&mut ly, &x32, rows, dim);
            assert_close("f32 log_softmax", &ly, &r.logy, 1e-5, 1e-6);
            log_softmax_backward(&mut dx, &dy32, &ly, rows, dim);
            assert_close_scaled("f32 dlog_softmax", &dx, &r.dx_log, 1e-5);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (rows, dim) = (3, 6);
        let mut x = uniform(4, rows * dim, -3.0, 3.0);
        let w = uniform(5, rows * dim, -1.0, 1.0);
        let mut scratch = vec![0.0; rows * dim];

        let mut y = vec![0.0; rows * dim];
        softmax_forward(&mut y, &x, rows, dim);
        let mut dx = vec![0.0; rows * dim];
        softmax_backward(&mut dx, &w, &y, rows, dim);
        check_grad("softmax dinp", &mut x, &dx, |v| {
            softmax_forward(&mut scratch, v, rows, dim);
            dot(&w, &scratch)
        });

        log_softmax_forward(&mut y, &x, rows, dim);
        log_softmax_backward(&mut dx, &w, &y, rows, dim);
        check_grad("log_softmax dinp", &mut x, &dx, |v| {
            log_softmax_forward(&mut scratch, v, rows, dim);
            dot(&w, &scratch)
        });
    }

    #[test]
    fn parallel_and_sequential_paths_agree_bitwise() {
        // Rows are independent, so splitting them across threads must not change a single bit.
        let (rows, dim) = (200, 700);
        let x = to_f32(&uniform(6, rows * dim, -8.0, 8.0));
        let mut big = vec![0.0f32; rows * dim];
        softmax_forward(&mut big, &x, rows, dim);
        let mut one = vec![0.0f32; dim];
        for r in [0, 57, rows - 1] {
            softmax_forward(&mut one, &x[r * dim..(r + 1) * dim], 1, dim);
            assert_eq!(&big[r * dim..(r + 1) * dim], &one[..]);
        }
    }

    #[test]
    fn rows_in_place_matches_the_forward() {
        // The attention row primitive (T-precision lanes, one call per block of rows) against the f64-summed
        // forward: identical in f64 up to rounding, within f32 rounding in f32.
        for (rows, dim) in [(3usize, 1usize), (4, 15), (5, 50), (2, 333)] {
            let x = uniform(77, rows * dim, -6.0, 6.0);
            let mut want = vec![0.0; rows * dim];
            softmax_forward(&mut want, &x, rows, dim);
            let mut got = x.clone();
            softmax_rows_in_place(&mut got, dim);
            assert_close("rows in place f64", &got, &want, 1e-12, 1e-15);
            let mut got32 = to_f32(&x);
            softmax_rows_in_place(&mut got32, dim);
            assert_close("rows in place f32", &got32, &want, 1e-5, 1e-7);
        }
    }
}
