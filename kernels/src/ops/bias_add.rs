//! Broadcast bias add over rows: `out[i, j] += bias[j]`, and its backward (column sums).

use rayon::prelude::*;

use super::par::PAR_MIN_ELEMS;
use crate::Float;

/// Columns summed together per block in [`bias_add_backward`]: the block's partial sums live in a fixed
/// stack array, and a block of 64 columns keeps each row's slice within a few cache lines.
const COL_BLOCK: usize = 64;

/// Adds `bias` to every row, in place.
///
/// out_inplace: [B, N], bias: [N].
pub fn bias_add_forward<T: Float>(out_inplace: &mut [T], bias: &[T], b: usize, n: usize) {
    assert_eq!(out_inplace.len(), b * n, "bias_add_forward: out must be [B, N]");
    assert_eq!(bias.len(), n, "bias_add_forward: bias must be [N]");
    if n == 0 {
        return;
    }
    let add_row = |row: &mut [T]| {
        for (o, &bb) in row.iter_mut().zip(bias) {
            *o += bb;
        }
    };
    if b * n >= PAR_MIN_ELEMS && b > 1 {
        // Rows in groups so each task carries at least ~PAR_MIN_ELEMS / 4 elements.
        let rows_per_task = (PAR_MIN_ELEMS / 4).div_ceil(n).max(1);
        out_inplace.par_chunks_mut(rows_per_task * n).for_each(|rows| rows.chunks_exact_mut(n).for_each(add_row));
    } else {
        out_inplace.chunks_exact_mut(n).for_each(add_row);
    }
}

/// `out[i, j] += bias[j]` on the calling thread (rows of `bias.len()` columns), for the epilogue below.
#[inline(always)]
fn add_rows_body<T: Float>(out: &mut [T], bias: &[T]) {
    for row in out.chunks_exact_mut(bias.len()) {
        for (o, &b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// The linear layer's epilogue on rows it just wrote, on the calling thread: `out = (out + bias) + residual`
/// per element, either term skipped when its slice is empty (`bias` is one row, `residual` as long as `out`).
/// The additions are the separate ops' (bias add, then the residual add), so the bits are theirs.
#[inline(always)]
fn epilogue_rows_body<T: Float>(out: &mut [T], bias: &[T], residual: &[T]) {
    match (bias.is_empty(), residual.is_empty()) {
        (false, true) => add_rows_body(out, bias),
        (true, false) => {
            for (o, &r) in out.iter_mut().zip(residual) {
                *o += r;
            }
        }
        (false, false) => {
            for (row, res) in out.chunks_exact_mut(bias.len()).zip(residual.chunks_exact(bias.len())) {
                for ((o, &b), &r) in row.iter_mut().zip(bias).zip(res) {
                    *o = (*o + b) + r;
                }
            }
        }
        (true, true) => {}
    }
}
crate::multiversion!(
    pub(crate) fn epilogue_rows_serial<T: Float>(out: &mut [T], bias: &[T], residual: &[T]) => epilogue_rows_body
);

/// Sums the rows of `dout` over columns `[lo, lo + dbias_block.len())` into `dbias_block` (accumulating).
/// Index loops, compiled per instruction set (`multiversion!`): each column keeps its own chain of adds in
/// row order, so every version gives the same bits.
#[inline(always)]
fn column_sums_body<T: Float>(dbias_block: &mut [T], dout: &[T], lo: usize, n: usize) {
    let w = dbias_block.len().min(COL_BLOCK);
    let mut acc = [T::ZERO; COL_BLOCK];
    let acc = &mut acc[..w];
    // Sum into a zeroed block first and add once, so the accumulated gradient does not pick up B roundings
    // at its own (possibly large) magnitude.
    for r in 0..dout.len() / n {
        let row = &dout[r * n + lo..r * n + lo + w];
        for k in 0..w {
            acc[k] += row[k];
        }
    }
    for k in 0..w {
        dbias_block[k] += acc[k];
    }
}
crate::multiversion!(
    fn column_sums_block<T: Float>(dbias_block: &mut [T], dout: &[T], lo: usize, n: usize) => column_sums_body
);

/// [`bias_add_backward`] on the calling thread (the same sums, column block by column block).
pub(crate) fn bias_add_backward_serial<T: Float>(dbias: &mut [T], dout: &[T], b: usize, n: usize) {
    assert_eq!(dbias.len(), n, "bias_add_backward: dbias must be [N]");
    assert_eq!(dout.len(), b * n, "bias_add_backward: dout must be [B, N]");
    if n > 0 {
        dbias.chunks_mut(COL_BLOCK).enumerate().for_each(|(blk, d)| column_sums_block(d, dout, blk * COL_BLOCK, n));
    }
}

/// Bias gradient: `dbias[j] += sum_i dout[i, j]` (accumulates, it is a parameter gradient).
///
/// dbias: [N], dout: [B, N].
pub fn bias_add_backward<T: Float>(dbias: &mut [T], dout: &[T], b: usize, n: usize) {
    assert_eq!(dbias.len(), n, "bias_add_backward: dbias must be [N]");
    assert_eq!(dout.len(), b * n, "bias_add_backward: dout must be [B, N]");
    if n == 0 {
        return;
    }
    column_sums(dbias, dout, 0, n);
}

/// `sums[j] += sum_i dout[i, lo + j]` for the columns `[lo, lo + sums.len())` of `dout` (`[B, N]`): the bias
/// gradient of a column window. Parallel over column blocks: each task owns a disjoint piece of `sums`, so no
/// reduction is needed and the result is identical to the sequential one.
pub(crate) fn column_sums<T: Float>(sums: &mut [T], dout: &[T], lo: usize, n: usize) {
    column_sums_on(sums, dout, lo, n, true);
}

/// [`column_sums`] on the calling thread when not `parallel` (the same sums, block by block).
pub(crate) fn column_sums_on<T: Float>(sums: &mut [T], dout: &[T], lo: usize, n: usize, parallel: bool) {
    assert!(lo + sums.len() <= n && dout.len().is_multiple_of(n.max(1)), "column_sums: columns past the row");
    if sums.is_empty() {
        return;
    }
    let block = |(blk, d): (usize, &mut [T])| column_sums_block(d, dout, lo + blk * COL_BLOCK, n);
    if parallel && dout.len() / n * sums.len() >= PAR_MIN_ELEMS && sums.len() > COL_BLOCK {
        sums.par_chunks_mut(COL_BLOCK).enumerate().for_each(block);
    } else {
        sums.chunks_mut(COL_BLOCK).enumerate().for_each(block);
    }
}

/// The CUDA kernels of this op (`bias_add.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "bias_add",
    code: include_str!("bias_add.cu"),
    kernels: &[
        "bias_add_forward_f32",
        "bias_grad_partials_f32",
        "bias_grad_sum_f32",
        "bias_add_forward_f16",
        "bias_grad_partials_f16",
        "bias_add_forward_bf16",
        "bias_grad_partials_bf16",
    ],
};

/// Host side of `bias_add.cu`.
#[path = "bias_add_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    fn ref_forward(x: &[f64], bias: &[f64], n: usize) -> Vec<f64> {
        x.iter().enumerate().map(|(i, &v)| v + bias[i % n]).collect()
    }

    fn ref_backward(dout: &[f64], b: usize, n: usize) -> Vec<f64> {
        let mut db = vec![0.0; n];
        for i in 0..b {
            for j in 0..n {
                db[j] += dout[i * n + j];
            }
        }
        db
    }

    #[test]
    fn hand_checked_values() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        bias_add_forward(&mut x, &[10.0, 20.0, 30.0], 2, 3);
        assert_eq!(x, [11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        let mut db = [1.0f32, 1.0, 1.0];
        bias_add_backward(&mut db, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(db, [6.0, 8.0, 10.0]);
    }

    #[test]
    fn matches_f64_reference_on_both_paths() {
        // Small (sequential) and large (parallel, several column blocks plus a ragged one).
        for (b, n, seed) in [(3usize, 5usize, 1u64), (300, 200, 2)] {
            let x = round_f32(&uniform(seed, b * n, -1.0, 1.0));
            let bias = round_f32(&uniform(seed + 10, n, -1.0, 1.0));
            let want = ref_forward(&x, &bias, n);
            let want_db = ref_backward(&x, b, n);

            let mut got = x.clone();
            bias_add_forward(&mut got, &bias, b, n);
            assert_close("f64 forward", &got, &want, 1e-12, 1e-12);
            let mut db = vec![0.0f64; n];
            bias_add_backward(&mut db, &x, b, n);
            assert_close("f64 backward", &db, &want_db, 1e-12, 1e-12);

            let mut got = to_f32(&x);
            bias_add_forward(&mut got, &to_f32(&bias), b, n);
            assert_close("f32 forward", &got, &want, 1e-5, 1e-6);
            let mut db = vec![0.0f32; n];
            bias_add_backward(&mut db, &to_f32(&x), b, n);
            assert_close_scaled("f32 backward", &db, &want_db, 1e-5);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (b, n) = (4, 3);
        let x = uniform(3, b * n, -1.0, 1.0);
        let mut bias = uniform(4, n, -1.0, 1.0);
        let dout = uniform(5, b * n, -1.0, 1.0);
        let mut db = vec![0.0; n];
        bias_add_backward(&mut db, &dout, b, n);
        check_grad("dbias", &mut bias, &db, |bb| {
            let mut y = x.clone();
            bias_add_forward(&mut y, bb, b, n);
            dot(&dout, &y)
        });
    }

    #[test]
    fn backward_accumulates() {
        let dout = uniform(6, 8 * 100, -1.0, 1.0);
        let mut db = vec![0.0; 100];
        bias_add_backward(&mut db, &dout, 8, 100);
        let once = db.clone();
        bias_add_backward(&mut db, &dout, 8, 100);
        assert_close("doubled", &db, &once.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), 1e-15, 0.0);
    }
}
