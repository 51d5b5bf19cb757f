//! A linear layer that computes only the outputs its reader needs: every row's output columns from `cols`
//! on, and the first `cols` columns only on the leading `rows` rows of every `group` rows ([`LeadColumns`]).
//!
//! A ViT whose last block attends from the class token alone
//! (`ops::attention::attention_fused_forward_queries` with one query row) reads the query columns of that
//! block's q/k/v projection on the class token only, while it reads keys and values on every token. At W3's
//! shapes (50 tokens, width 128, q/k/v 384 wide) a third of the projection's products, forward and
//! backward, are never read.
//!
//! Forward and input gradient are bitwise the full layer's on the outputs they compute, given an output
//! gradient that is 0 on the skipped outputs (the attention's backward writes it so): with a depth of at
//! most 512 `gemm` makes each output one chain of multiply-adds in depth order, and a chain that starts on
//! exact zeros is the chain without them. The leading columns' weight and bias gradients sum the leading
//! rows only, where the full layer also adds the zeros of the other rows: equal up to rounding.
//!
//! Shapes as [`super::linear`]: inp [B, C], weight [OC, C] (PyTorch layout), bias [OC], out [B, OC].

use rayon::prelude::*;

use super::gemm::{gemm_strided, Mat};
use super::par::PAR_MIN_ELEMS;
use crate::Float;

/// Which outputs of a [B, OC] linear layer are computed: columns `cols..OC` on every row, columns `0..cols`
/// on rows `g * group + r` for `r < rows` (the leading rows of every group of `group` rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeadColumns {
    /// Leading output columns needed on the leading rows only.
    pub cols: usize,
    /// Leading rows of each group that need them.
    pub rows: usize,
    /// Rows per group (a sample's tokens).
    pub group: usize,
}

impl LeadColumns {
    /// Panics unless the layout fits a [B, OC] output.
    fn check(&self, b: usize, oc: usize) {
        assert!(self.cols <= oc, "linear_lead: {} leading columns of {oc}", self.cols);
        assert!(self.group > 0 && self.rows <= self.group, "linear_lead: {} leading rows of {}", self.rows, self.group);
        assert!(b.is_multiple_of(self.group), "linear_lead: {b} rows are not whole groups of {}", self.group);
    }
}

/// `out = inp @ weight^T + bias` on the outputs `lead` names (overwritten); the others are not written.
#[allow(clippy::too_many_arguments)]
pub fn linear_lead_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    lead: LeadColumns,
    b: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), b * oc, "linear_lead_forward: out must be [B, OC]");
    assert_eq!(inp.len(), b * c, "linear_lead_forward: inp must be [B, C]");
    assert_eq!(weight.len(), oc * c, "linear_lead_forward: weight must be [OC, C]");
    assert!(bias.is_none_or(|x| x.len() == oc), "linear_lead_forward: bias must be [OC]");
    lead.check(b, oc);
    if b == 0 || oc == 0 {
        return;
    }
    let (cols, groups) = (lead.cols, b / lead.group);
    let (w_lead, w_rest) = weight.split_at(cols * c);
    // weight^T as [C, OC']: element (k, j) at weight[j * C + k].
    gemm_strided(
        b,
        oc - cols,
        c,
        &mut out[cols..],
        oc,
        1,
        false,
        Mat::rows(inp, c),
        Mat::rows_t(w_rest, c),
        T::ONE,
        true,
    );
    for r in 0..lead.rows {
        let x = Mat { data: &inp[r * c..], rs: lead.group * c, cs: 1 };
        let dst = &mut out[r * oc..];
        gemm_strided(groups, cols, c, dst, lead.group * oc, 1, false, x, Mat::rows_t(w_lead, c), T::ONE, true);
    }
    // The bias after the product (`product + bias`), as the full layer's threaded forward adds it.
    if let Some(bias) = bias {
        let add = |row: &mut [T], r: usize| {
            let from = if r % lead.group < lead.rows { 0 } else { cols };
            for (o, &x) in row[from..].iter_mut().zip(&bias[from..]) {
                *o += x;
            }
        };
        if b * oc >= PAR_MIN_ELEMS {
            out.par_chunks_mut(oc).enumerate().with_min_len(64).for_each(|(r, row)| add(row, r));
        } else {
            out.chunks_mut(oc).enumerate().for_each(|(r, row)| add(row, r));
        }
    }
}

/// Backward of [`linear_lead_forward`], reading `dout` only on the outputs `lead` names. `dinp` (None when
/// the input needs no gradient) is overwritten; `dweight` and `dbias` accumulate. `scratch` as
/// [`super::linear::linear_backward_split_scratch_len`]: when the layer is large enough for the split
/// backward, the columns every row has run as two fixed halves of the rows on two rayon tasks, as
/// [`super::linear::linear_backward_split`] runs a whole layer (so nothing depends on the thread count).
#[allow(clippy::too_many_arguments)]
pub fn linear_lead_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    scratch: &mut [T],
    lead: LeadColumns,
    b: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(dout.len(), b * oc, "linear_lead_backward: dout must be [B, OC]");
    assert_eq!(inp.len(), b * c, "linear_lead_backward: inp must be [B, C]");
    assert_eq!(weight.len(), oc * c, "linear_lead_backward: weight must be [OC, C]");
    assert_eq!(dweight.len(), oc * c, "linear_lead_backward: dweight must be [OC, C]");
    assert!(dinp.as_ref().is_none_or(|d| d.len() == b * c), "linear_lead_backward: dinp must be [B, C]");
    assert!(dbias.as_ref().is_none_or(|d| d.len() == oc), "linear_lead_backward: dbias must be [OC]");
    lead.check(b, oc);
    if b == 0 {
        return;
    }
    let (cols, groups, stride) = (lead.cols, b / lead.group, lead.group);
    let rest = oc - cols;
    let mut dbias = dbias;
    let mut dinp = dinp;
    // The columns every row has: rows [r0, r1) give their input gradient rows (over these columns only) and
    // add their part of the weight and bias gradients onto `dw` / `db` (or write it when not `acc`).
    let part = |dx: Option<&mut [T]>, dw: &mut [T], db: Option<&mut [T]>, acc: bool, (r0, r1): (usize, usize)| {
        // Two halves each run their products on their own thread (see `linear::backward_split`).
        let (rows, nested) = (r1 - r0, rayon::current_num_threads() > 2 || r1 - r0 == b);
        let g = Mat { data: &dout[r0 * oc + cols..], rs: oc, cs: 1 };
        if let Some(dx) = dx {
            gemm_strided(rows, c, rest, dx, c, 1, false, g, Mat::rows(&weight[cols * c..], c), T::ONE, nested);
        }
        // dweight[OC', C] += dout^T[OC', rows] @ inp[rows, C].
        let gt = Mat { data: &dout[r0 * oc + cols..], rs: 1, cs: oc };
        gemm_strided(rest, c, rows, dw, c, 1, acc, gt, Mat::rows(&inp[r0 * c..r1 * c], c), T::ONE, nested);
        if let Some(db) = db {
            super::bias_add::column_sums_on(db, &dout[r0 * oc..r1 * oc], cols, oc, nested);
        }
    };
    let dw_rest = &mut dweight[cols * c..];
    if super::linear::splits_rows(b, c, oc) {
        let h = b / 2;
        assert!(scratch.len() >= rest * (c + 1), "linear_lead_backward: scratch must hold OC * (C + 1)");
        let (dw1, db1) = scratch[..rest * (c + 1)].split_at_mut(rest * c);
        db1.fill(T::ZERO);
        let (dx0, dx1) = match dinp.as_deref_mut() {
            Some(d) => {
                let (x, y) = d.split_at_mut(h * c);
                (Some(x), Some(y))
            }
            None => (None, None),
        };
        let db0 = dbias.as_deref_mut().map(|d| &mut d[cols..]);
        let db1 = db0.is_some().then_some(&mut *db1);
        rayon::join(|| part(dx0, dw_rest, db0, true, (0, h)), || part(dx1, &mut *dw1, db1, false, (h, b)));
        for (d, &p) in dw_rest.iter_mut().zip(&*dw1) {
            *d += p;
        }
        if let Some(d) = dbias.as_deref_mut() {
            for (d, &p) in d[cols..].iter_mut().zip(&scratch[rest * c..rest * (c + 1)]) {
                *d += p;
            }
        }
    } else {
        part(dinp.as_deref_mut(), dw_rest, dbias.as_deref_mut().map(|d| &mut d[cols..]), true, (0, b));
    }
    // The leading rows' input gradients again over all their columns (the full layer's chain for them, and
    // for the other rows the chain above is the full one without its leading zeros).
    if let Some(dinp) = dinp {
        for r in 0..lead.rows {
            let g = Mat { data: &dout[r * oc..], rs: stride * oc, cs: 1 };
            gemm_strided(
                groups,
                c,
                oc,
                &mut dinp[r * c..],
                stride * c,
                1,
                false,
                g,
                Mat::rows(weight, c),
                T::ONE,
                true,
            );
        }
    }
    let dw_lead = &mut dweight[..cols * c];
    for r in 0..lead.rows {
        let g = Mat { data: &dout[r * oc..], rs: 1, cs: stride * oc };
        let x = Mat { data: &inp[r * c..], rs: stride * c, cs: 1 };
        gemm_strided(cols, c, groups, dw_lead, c, 1, true, g, x, T::ONE, true);
    }
    if let Some(dbias) = dbias {
        // The leading columns over the leading rows, in row order, summed apart and added once (as the
        // column sums do), a stack block of columns at a time.
        const BLOCK: usize = 64;
        for (blk, db) in dbias[..cols].chunks_mut(BLOCK).enumerate() {
            let (lo, mut acc) = (blk * BLOCK, [T::ZERO; BLOCK]);
            for row in dout.chunks_exact(oc).enumerate().filter(|(i, _)| i % stride < lead.rows).map(|(_, r)| r) {
                for (a, &x) in acc.iter_mut().zip(&row[lo..lo + db.len()]) {
                    *a += x;
                }
            }
            for (d, &a) in db.iter_mut().zip(&acc) {
                *d += a;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;
    use crate::ops::linear::{linear_backward_split, linear_backward_split_scratch_len, linear_forward};

    /// Whether output (i, j) is computed.
    fn needed(lead: LeadColumns, i: usize, j: usize) -> bool {
        j >= lead.cols || i % lead.group < lead.rows
    }

    /// Forward and input gradient bitwise the full layer's on the computed outputs; the parameter gradients
    /// within rounding of the full layer's (given a gradient that is 0 on the skipped outputs) and of a f64
    /// reference; the skipped outputs untouched; on 1 and 2 threads, with and without a bias, with the W3
    /// shape (64 samples of 50 tokens, 128 -> 384, one leading row) among them.
    fn check(samples: usize, group: usize, lead_rows: usize, c: usize, oc: usize, cols: usize, with_bias: bool) {
        let b = samples * group;
        let lead = LeadColumns { cols, rows: lead_rows, group };
        let x64 = uniform(1, b * c, -1.0, 1.0);
        let w64 = uniform(2, oc * c, -0.3, 0.3);
        let bias64 = uniform(3, oc, -0.5, 0.5);
        // The output gradient, 0 where nothing is computed (as the reader writes it).
        let dy64: Vec<f64> = uniform(4, b * oc, -1.0, 1.0)
            .into_iter()
            .enumerate()
            .map(|(k, v)| if needed(lead, k / oc, k % oc) { v } else { 0.0 })
            .collect();
        let (x, w, bias, dy) = (to_f32(&x64), to_f32(&w64), to_f32(&bias64), to_f32(&dy64));
        let bias = with_bias.then_some(&bias[..]);
        let what =
            format!("{samples} x {group} rows ({lead_rows} leading), {c} -> {oc} ({cols} leading), bias {with_bias}");

        let mut full = vec![0.0f32; b * oc];
        linear_forward(&mut full, &x, &w, bias, b, c, oc);
        let (mut fdx, mut fdw, mut fdb) = (vec![0.0f32; b * c], vec![0.0f32; oc * c], vec![0.0f32; oc]);
        let mut scratch = vec![0.0f32; linear_backward_split_scratch_len(b, c, oc)];
        let fdb_arg = with_bias.then_some(&mut fdb[..]);
        linear_backward_split(Some(&mut fdx), &mut fdw, fdb_arg, &dy, &x, &w, &mut scratch, b, c, oc);

        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut out = vec![f32::NAN; b * oc];
                linear_lead_forward(&mut out, &x, &w, bias, lead, b, c, oc);
                for (k, (&o, &f)) in out.iter().zip(&full).enumerate() {
                    let (i, j) = (k / oc, k % oc);
                    if needed(lead, i, j) {
                        assert_eq!(o.to_bits(), f.to_bits(), "{what}, {threads} threads: output ({i}, {j})");
                    } else {
                        assert!(o.is_nan(), "{what}: skipped output ({i}, {j}) was written");
                    }
                }
                // Garbage on the skipped outputs of the gradient must not be read.
                let dy_garbage: Vec<f32> = dy
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| if needed(lead, k / oc, k % oc) { v } else { f32::NAN })
                    .collect();
                let (mut dx, mut dw, mut db) = (vec![f32::NAN; b * c], vec![0.25f32; oc * c], vec![0.5f32; oc]);
                let db_arg = with_bias.then_some(&mut db[..]);
                let mut scratch2 = vec![f32::NAN; linear_backward_split_scratch_len(b, c, oc)];
                linear_lead_backward(
                    Some(&mut dx),
                    &mut dw,
                    db_arg,
                    &dy_garbage,
                    &x,
                    &w,
                    &mut scratch2,
                    lead,
                    b,
                    c,
                    oc,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&dx), bits(&fdx), "{what}, {threads} threads: input gradient");
                // dw started at 0.25, db at 0.5: accumulated onto.
                let (dw, db): (Vec<f32>, Vec<f32>) =
                    (dw.iter().map(|v| v - 0.25).collect(), db.iter().map(|v| v - 0.5).collect());
                // f64 reference of the parameter gradients.
                for o in 0..oc {
                    let rows = (0..b).filter(|&i| needed(lead, i, o));
                    // An f32 sum of n terms is off by up to about n * 2^-24 of the terms' magnitudes (sum of
                    // |term|); leaving a row out is off by a whole term.
                    let want_b: f64 = rows.clone().map(|i| dy64[i * oc + o]).sum();
                    let tol_b = 1e-6 + 4e-7 * rows.clone().map(|i| dy64[i * oc + o].abs()).sum::<f64>();
                    if with_bias {
                        assert_close(db[o] as f64, want_b, tol_b, &format!("{what}: dbias[{o}]"));
                        assert_close(db[o] as f64, fdb[o] as f64, tol_b, &format!("{what}: dbias[{o}] vs full"));
                    }
                    for k in (0..c).step_by(7) {
                        let term = |i: usize| dy64[i * oc + o] * x64[i * c + k];
                        let want: f64 = rows.clone().map(term).sum();
                        let tol = 1e-6 + 4e-7 * rows.clone().map(|i| term(i).abs()).sum::<f64>();
                        let got = dw[o * c + k] as f64;
                        assert_close(got, want, tol, &format!("{what}: dweight[{o}, {k}]"));
                        assert_close(got, fdw[o * c + k] as f64, tol, &format!("{what}: dweight[{o}, {k}] vs full"));
                    }
                }
                if !with_bias {
                    assert!(db.iter().all(|&v| v == 0.0), "{what}: dbias touched without a bias");
                }
            });
        }
    }

    /// `|got - want| <= tol`.
    fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
        assert!((got - want).abs() <= tol, "{what}: {got} vs {want} (tolerance {tol:e})");
    }

    #[test]
    fn computes_the_full_layers_bits_on_the_outputs_it_keeps() {
        check(64, 50, 1, 128, 384, 128, true);
        check(3, 5, 2, 7, 9, 3, true);
        check(4, 6, 6, 5, 8, 4, false);
        check(2, 4, 0, 6, 6, 2, true);
        check(3, 3, 1, 4, 5, 0, true);
        check(2, 5, 1, 4, 5, 5, false);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let run = |lead: LeadColumns| {
            std::panic::catch_unwind(|| {
                let mut out = vec![0.0f32; 12];
                linear_lead_forward(&mut out, &[0.0; 8], &[0.0; 6], None, lead, 4, 2, 3);
            })
            .is_err()
        };
        assert!(run(LeadColumns { cols: 4, rows: 1, group: 2 }), "more leading columns than outputs");
        assert!(run(LeadColumns { cols: 1, rows: 3, group: 2 }), "more leading rows than a group");
        assert!(run(LeadColumns { cols: 1, rows: 1, group: 3 }), "rows not whole groups");
        assert!(!run(LeadColumns { cols: 1, rows: 1, group: 2 }));
    }
}
