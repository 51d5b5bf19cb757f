//! Batched matrix product (PyTorch `torch.bmm`), with optional transposed operands:
//! `out[i] = op(a[i]) @ op(b[i])` for every batch item `i`, where `op` is the identity or the transpose.
//!
//! Every product goes through the `gemm` crate. Transposed operands are never materialised: they are
//! expressed with row / column strides, which `gemm` packs anyway.

use rayon::prelude::*;

use super::gemm::GEMM_PAR_MIN_FLOPS;
use super::gemm::{gemm_strided, Mat};
use crate::Float;

/// Below this many multiply-adds in the whole batch, batch items run one after the other on the calling
/// thread: a rayon fork/join costs a few microseconds, as much as a batch of tiny products.
pub const BATCH_PAR_MIN_FLOPS: usize = 1 << 18;

/// Strides `(rs, cs)` of `op(x)` for one batch item of a row-major operand whose logical (post-`op`) shape
/// is `[rows, cols]`: stored `[rows, cols]` when not transposed, `[cols, rows]` when transposed.
fn op_strides(rows: usize, cols: usize, trans: bool) -> (usize, usize) {
    if trans {
        (1, rows)
    } else {
        (cols, 1)
    }
}

/// Runs `f(i, dst_item)` for every batch item `i`, where `dst` is split into `batch` items of `item_len`.
/// Items are spread across rayon threads when each product is small (so `gemm` itself stays sequential)
/// but the batch as a whole is worth splitting; a large product instead parallelises inside `gemm`.
fn for_each_item<T: Float>(
    dst: &mut [T],
    item_len: usize,
    flops_per_item: usize,
    f: impl Fn(usize, &mut [T], bool) + Sync,
) {
    if item_len == 0 {
        return;
    }
    let batch = dst.len() / item_len;
    let total = flops_per_item.saturating_mul(batch);
    if batch > 1 && flops_per_item < GEMM_PAR_MIN_FLOPS && total >= BATCH_PAR_MIN_FLOPS {
        dst.par_chunks_mut(item_len).enumerate().for_each(|(i, d)| f(i, d, false));
    } else {
        dst.chunks_mut(item_len).enumerate().for_each(|(i, d)| f(i, d, true));
    }
}

/// Batched matrix product: `out[i] = op_a(a[i]) @ op_b(b[i])` (overwrites `out`), or `out[i] += ...` when
/// `accumulate`.
///
/// a: [B, M, K] (or [B, K, M] when `trans_a`: `op_a` transposes each item), b: [B, K, N] (or [B, N, K] when
/// `trans_b`), out: [B, M, N]. `torch.bmm(a, b)` is `trans_a = trans_b = false`; `torch.bmm(a, b.mT)` is
/// `trans_b = true`.
#[allow(clippy::too_many_arguments)]
pub fn bmm<T: Float>(
    out: &mut [T],
    a: &[T],
    b: &[T],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    assert_eq!(out.len(), batch * m * n, "bmm: out must be [B, M, N]");
    assert_eq!(a.len(), batch * m * k, "bmm: a must be [B, M, K] (or [B, K, M] when trans_a)");
    assert_eq!(b.len(), batch * k * n, "bmm: b must be [B, K, N] (or [B, N, K] when trans_b)");
    let (ars, acs) = op_strides(m, k, trans_a);
    let (brs, bcs) = op_strides(k, n, trans_b);
    for_each_item(out, m * n, m * n * k, |i, out_i, par| {
        let a_i = Mat { data: &a[i * m * k..(i + 1) * m * k], rs: ars, cs: acs };
        let b_i = Mat { data: &b[i * k * n..(i + 1) * k * n], rs: brs, cs: bcs };
        gemm_strided(m, n, k, out_i, n, 1, accumulate, a_i, b_i, T::ONE, par);
    });
}

/// Backward of [`bmm`] for the loss's gradient `dout`. With `A = op_a(a[i])`, `B = op_b(b[i])`:
/// `dA = dout @ B^T` and `dB = A^T @ dout`, each written back in its operand's stored layout
/// (so `da` is [B, K, M] when `trans_a`). Both overwrite; pass `None` for an operand needing no gradient.
///
/// dout: [B, M, N], a and da: like `a` in [`bmm`], b and db: like `b` in [`bmm`].
#[allow(clippy::too_many_arguments)]
pub fn bmm_backward<T: Float>(
    da: Option<&mut [T]>,
    db: Option<&mut [T]>,
    dout: &[T],
    a: &[T],
    b: &[T],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) {
    assert_eq!(dout.len(), batch * m * n, "bmm_backward: dout must be [B, M, N]");
    assert_eq!(a.len(), batch * m * k, "bmm_backward: a must be [B, M, K] (or [B, K, M] when trans_a)");
    assert_eq!(b.len(), batch * k * n, "bmm_backward: b must be [B, K, N] (or [B, N, K] when trans_b)");
    let (ars, acs) = op_strides(m, k, trans_a);
    let (brs, bcs) = op_strides(k, n, trans_b);
    if let Some(da) = da {
        assert_eq!(da.len(), a.len(), "bmm_backward: da must have the shape of a");
        // dA[M, K] = dout[M, N] @ B^T[N, K], stored with A's strides (so a transposed `a` gets a transposed
        // gradient without a copy). B^T swaps B's strides.
        for_each_item(da, m * k, m * n * k, |i, da_i, par| {
            let dout_i = Mat::rows(&dout[i * m * n..(i + 1) * m * n], n);
            let bt_i = Mat { data: &b[i * k * n..(i + 1) * k * n], rs: bcs, cs: brs };
            gemm_strided(m, k, n, da_i, ars, acs, false, dout_i, bt_i, T::ONE, par);
        });
    }
    if let Some(db) = db {
        assert_eq!(db.len(), b.len(), "bmm_backward: db must have the shape of b");
        // dB[K, N] = A^T[K, M] @ dout[M, N], stored with B's strides.
        for_each_item(db, k * n, m * n * k, |i, db_i, par| {
            let at_i = Mat { data: &a[i * m * k..(i + 1) * m * k], rs: acs, cs: ars };
            let dout_i = Mat::rows(&dout[i * m * n..(i + 1) * m * n], n);
            gemm_strided(k, n, m, db_i, brs, bcs, false, at_i, dout_i, T::ONE, par);
        });
    }
}

/// Host side of the batched product on the GPU (cuBLAS strided batches).
#[path = "bmm_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Element `(r, c)` of `op(x[item])` for a logical `[rows, cols]` item, straight from the layout.
    fn at(x: &[f64], item: usize, rows: usize, cols: usize, r: usize, c: usize, trans: bool) -> f64 {
        let base = item * rows * cols;
        if trans {
            x[base + c * rows + r]
        } else {
            x[base + r * cols + c]
        }
    }

    /// Naive f64 reference: out[i, r, c] = sum_p op_a(a)[i, r, p] * op_b(b)[i, p, c].
    #[allow(clippy::too_many_arguments)]
    fn ref_bmm(a: &[f64], b: &[f64], bs: usize, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut out = vec![0.0; bs * m * n];
        for i in 0..bs {
            for r in 0..m {
                for c in 0..n {
                    let mut s = 0.0;
                    for p in 0..k {
                        s += at(a, i, m, k, r, p, ta) * at(b, i, k, n, p, c, tb);
                    }
                    out[(i * m + r) * n + c] = s;
                }
            }
        }
        out
    }

    /// Naive f64 reference gradients (da, db) in the stored layouts, for the loss sum(dout * out).
    #[allow(clippy::too_many_arguments)]
    fn ref_bmm_backward(
        dout: &[f64],
        a: &[f64],
        b: &[f64],
        bs: usize,
        m: usize,
        k: usize,
        n: usize,
        ta: bool,
        tb: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut da = vec![0.0; a.len()];
        let mut db = vec![0.0; b.len()];
        // Stored index of logical element (r, c) of a [rows, cols] item.
        let idx = |item: usize, rows: usize, cols: usize, r: usize, c: usize, t: bool| {
            item * rows * cols + if t { c * rows + r } else { r * cols + c }
        };
        for i in 0..bs {
            for r in 0..m {
                for c in 0..n {
                    let g = dout[(i * m + r) * n + c];
                    for p in 0..k {
                        da[idx(i, m, k, r, p, ta)] += g * at(b, i, k, n, p, c, tb);
                        db[idx(i, k, n, p, c, tb)] += g * at(a, i, m, k, r, p, ta);
                    }
                }
            }
        }
        (da, db)
    }

    #[test]
    fn hand_checked_values() {
        // Item 0: [[1, 2], [3, 4]] @ [[5, 6], [7, 8]] = [[19, 22], [43, 50]];
        // item 1: [[1, 0], [0, 1]] @ [[2, 3], [4, 5]] = itself.
        let a = [1.0f32, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 1.0];
        let b = [5.0f32, 6.0, 7.0, 8.0, 2.0, 3.0, 4.0, 5.0];
        let mut out = [f32::NAN; 8];
        bmm(&mut out, &a, &b, 2, 2, 2, 2, false, false, false);
        assert_eq!(out, [19.0, 22.0, 43.0, 50.0, 2.0, 3.0, 4.0, 5.0]);
        bmm(&mut out, &a, &b, 2, 2, 2, 2, false, false, true);
        assert_eq!(out, [38.0, 44.0, 86.0, 100.0, 4.0, 6.0, 8.0, 10.0]);
        // a^T @ b for item 0: [[1, 3], [2, 4]] @ [[5, 6], [7, 8]] = [[26, 30], [38, 44]].
        bmm(&mut out[..4], &a[..4], &b[..4], 1, 2, 2, 2, true, false, false);
        assert_eq!(out[..4], [26.0, 30.0, 38.0, 44.0]);
        // a @ b^T for item 0: [[1, 2], [3, 4]] @ [[5, 7], [6, 8]] = [[17, 23], [39, 53]].
        bmm(&mut out[..4], &a[..4], &b[..4], 1, 2, 2, 2, false, true, false);
        assert_eq!(out[..4], [17.0, 23.0, 39.0, 53.0]);
        // Non-square: [1, 3] @ [3, 2] with a stored as [3, 1] (trans_a) and b stored as [2, 3] (trans_b).
        let mut out = [0.0f64; 2];
        bmm(&mut out, &[1.0, 2.0, 3.0], &[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], 1, 1, 3, 2, true, true, false);
        assert_eq!(out, [4.0, 5.0]);

        // Backward of item 0 (no transposes) with dout = ones: da = 1 @ b^T (row sums of b), db = a^T @ 1.
        let mut da = [9.0f32; 4];
        let mut db = [9.0f32; 4];
        bmm_backward(Some(&mut da), Some(&mut db), &[1.0; 4], &a[..4], &b[..4], 1, 2, 2, 2, false, false);
        assert_eq!(da, [11.0, 15.0, 11.0, 15.0]);
        assert_eq!(db, [4.0, 4.0, 6.0, 6.0]);
    }

    fn check_against_reference(bs: usize, m: usize, k: usize, n: usize, seed: u64) {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = round_f32(&uniform(seed, bs * m * k, -1.0, 1.0));
            let b = round_f32(&uniform(seed + 1, bs * k * n, -1.0, 1.0));
            let dout = round_f32(&uniform(seed + 2, bs * m * n, -1.0, 1.0));
            let want = ref_bmm(&a, &b, bs, m, k, n, ta, tb);
            let (want_da, want_db) = ref_bmm_backward(&dout, &a, &b, bs, m, k, n, ta, tb);
            let tag = format!("bmm B={bs} M={m} K={k} N={n} ta={ta} tb={tb}");

            let mut out = vec![f64::NAN; bs * m * n];
            bmm(&mut out, &a, &b, bs, m, k, n, ta, tb, false);
            assert_close_scaled(&format!("{tag} f64 out"), &out, &want, 1e-12);
            let (mut da, mut db) = (vec![f64::NAN; a.len()], vec![f64::NAN; b.len()]);
            bmm_backward(Some(&mut da), Some(&mut db), &dout, &a, &b, bs, m, k, n, ta, tb);
            assert_close_scaled(&format!("{tag} f64 da"), &da, &want_da, 1e-12);
            assert_close_scaled(&format!("{tag} f64 db"), &db, &want_db, 1e-12);

            let (a32, b32, dout32) = (to_f32(&a), to_f32(&b), to_f32(&dout));
            let mut out = vec![f32::NAN; bs * m * n];
            bmm(&mut out, &a32, &b32, bs, m, k, n, ta, tb, false);
            assert_close_scaled(&format!("{tag} f32 out"), &out, &want, 1e-5);
            let (mut da, mut db) = (vec![f32::NAN; a.len()], vec![f32::NAN; b.len()]);
            bmm_backward(Some(&mut da), Some(&mut db), &dout32, &a32, &b32, bs, m, k, n, ta, tb);
            assert_close_scaled(&format!("{tag} f32 da"), &da, &want_da, 1e-5);
            assert_close_scaled(&format!("{tag} f32 db"), &db, &want_db, 1e-5);
        }
    }

    #[test]
    fn matches_f64_reference_small() {
        check_against_reference(3, 4, 5, 6, 10);
        check_against_reference(1, 1, 1, 1, 20);
        check_against_reference(2, 7, 1, 3, 30);
        check_against_reference(2, 1, 9, 1, 40);
    }

    #[test]
    fn matches_f64_reference_on_the_parallel_batch_path() {
        // Each product is small (sequential gemm) but the batch is above the rayon threshold.
        const { assert!(16 * 24 * 40 < GEMM_PAR_MIN_FLOPS && 32 * 16 * 24 * 40 >= BATCH_PAR_MIN_FLOPS) };
        check_against_reference(32, 16, 24, 40, 50);
    }

    #[test]
    fn accumulate_adds_and_degenerate_sizes() {
        let (bs, m, k, n) = (2, 3, 4, 5);
        let a = uniform(1, bs * m * k, -1.0, 1.0);
        let b = uniform(2, bs * k * n, -1.0, 1.0);
        let want = ref_bmm(&a, &b, bs, m, k, n, false, true);
        let mut out = vec![1.0; bs * m * n];
        bmm(&mut out, &a, &b, bs, m, k, n, false, true, true);
        assert_close("accumulated", &out, &want.iter().map(|w| w + 1.0).collect::<Vec<_>>(), 1e-12, 1e-12);
        // K = 0: an empty sum, so out becomes 0 (left alone when accumulating) and dout produces no gradient.
        let mut out = vec![7.0f32; 4];
        bmm(&mut out, &[], &[], 2, 1, 0, 2, true, true, true);
        assert_eq!(out, [7.0; 4]);
        bmm(&mut out, &[], &[], 2, 1, 0, 2, false, false, false);
        assert_eq!(out, [0.0; 4]);
        // N = 0: da = dout @ B^T is an empty sum, so da is overwritten with 0.
        let mut da = vec![3.0f64; 6];
        bmm_backward(Some(&mut da), None, &[], &[1.0; 6], &[], 2, 1, 3, 0, false, false);
        assert_eq!(da, [0.0; 6]);
    }

    #[test]
    fn gradients_match_finite_differences_for_every_transpose() {
        let (bs, m, k, n) = (2, 3, 4, 2);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut a = uniform(1, bs * m * k, -1.0, 1.0);
            let mut b = uniform(2, bs * k * n, -1.0, 1.0);
            let dout = uniform(3, bs * m * n, -1.0, 1.0);
            let (mut da, mut db) = (vec![f64::NAN; a.len()], vec![f64::NAN; b.len()]);
            bmm_backward(Some(&mut da), Some(&mut db), &dout, &a, &b, bs, m, k, n, ta, tb);
            let loss = |a: &[f64], b: &[f64]| {
                let mut out = vec![0.0; bs * m * n];
                bmm(&mut out, a, b, bs, m, k, n, ta, tb, false);
                dot(&dout, &out)
            };
            let b0 = b.clone();
            check_grad(&format!("da ta={ta} tb={tb}"), &mut a, &da, |x| loss(x, &b0));
            let a0 = a.clone();
            check_grad(&format!("db ta={ta} tb={tb}"), &mut b, &db, |x| loss(&a0, x));
            // Each gradient on its own overwrites the same values.
            let mut db_only = vec![5.0; b.len()];
            bmm_backward(None, Some(&mut db_only), &dout, &a, &b, bs, m, k, n, ta, tb);
            assert_close("db alone", &db_only, &db, 0.0, 0.0);
        }
    }
}
