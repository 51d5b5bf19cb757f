//! Layer normalisation over the last dimension (PyTorch's `nn.LayerNorm(dim)`): per row
//! `out = (x - mean) * rstd * weight + bias` with `rstd = 1 / sqrt(var + eps)` and the biased variance.
//!
//! The forward saves each row's mean and rstd so the backward need not recompute them.

use rayon::prelude::*;

use super::par::{rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Columns per block in the parameter-gradient pass: each block's f64 accumulators live in a fixed stack
/// array, and 64 columns of a row span a few cache lines.
const COL_BLOCK: usize = 64;

/// Fixed number of row ranges the parameter-gradient pass splits the rows into when there is a single
/// column block (small `dim`, many rows). Fixed, not the thread count, so the summation order (hence the
/// rounded gradient) does not depend on the machine.
const ROW_RANGES: usize = 16;

/// A group of rows in the forward, as zipped by rayon: (out, inp), (save_mean, save_rstd).
type FwdGroup<'a, T> = ((&'a mut [T], &'a [T]), (&'a mut [T], &'a mut [T]));

/// A group of rows in the input-gradient pass: (dinp, dout), (inp, (save_mean, save_rstd)).
type BwdGroup<'a, T> = ((&'a mut [T], &'a [T]), (&'a [T], (&'a [T], &'a [T])));

/// f64 accumulators per row reduction: interleaved so the loop vectorises (a single chain of float adds
/// cannot be reordered by the compiler; 16 f64 lanes are two AVX-512 registers); the order is fixed, so
/// results do not depend on the instruction set or the machine.
const LANES: usize = 16;

/// Rows the row kernels take at a time. One row's reduction ends in a chain of 16 dependent f64 adds (the
/// lanes folded in order, about 64 cycles) and the mean feeds the variance, so a row on its own waits on
/// latencies: about 200 cycles a row at width 128 against about 60 of work. Four rows' chains interleaved
/// keep the adders busy; each row's arithmetic is unchanged, so the bits are the one-row kernel's.
const ROW_GROUP: usize = 4;

/// Row `r` of a `[R, dim]` operand, or the shared `[dim]` row.
#[inline(always)]
fn operand_row<T>(x: &[T], per_row: bool, r: usize, dim: usize) -> &[T] {
    if per_row {
        &x[r * dim..(r + 1) * dim]
    } else {
        &x[..dim]
    }
}

/// For each of the `R` rows of `a` (`[R, dim]`), `sum_j f(r, a[r, j], b[r, j], c[r, j])` over [`LANES`]
/// interleaved f64 accumulators, folded in lane order, plus the tail past the last whole chunk in order.
/// `b` and `c` are `[R, dim]` too, or one `[dim]` row shared by every row (`b_rows` / `c_rows` false). The
/// rows' loops are interleaved, so their dependency chains overlap; each row's sum is the same whatever `R`.
/// The loops run over fixed-size chunks, never element indices, so they vectorise.
#[inline(always)]
fn lane_sums<T: Float, const R: usize>(
    dim: usize,
    a: &[T],
    (b, b_rows): (&[T], bool),
    (c, c_rows): (&[T], bool),
    f: impl Fn(usize, T, T, T) -> f64,
) -> [f64; R] {
    let full = dim / LANES * LANES;
    // Each row's chunk loop on its own (it vectorises as the one-row loop); the rows do not depend on each
    // other, so the out-of-order core overlaps one row's chains with the next one's. Plain loops, not
    // `array::from_fn`: its closure calls are not inlined, and out of line they lose the caller's target
    // features (the multiversioned kernels ran as baseline SSE2 code).
    let mut acc = [[0.0f64; LANES]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        let (x, y, z) = (operand_row(a, true, r, dim), operand_row(b, b_rows, r, dim), operand_row(c, c_rows, r, dim));
        let chunks =
            x[..full].chunks_exact(LANES).zip(y[..full].chunks_exact(LANES)).zip(z[..full].chunks_exact(LANES));
        for ((x, y), z) in chunks {
            let x: &[T; LANES] = x.try_into().expect("LANES");
            let y: &[T; LANES] = y.try_into().expect("LANES");
            let z: &[T; LANES] = z.try_into().expect("LANES");
            for l in 0..LANES {
                acc[l] += f(r, x[l], y[l], z[l]);
            }
        }
    }
    let mut sums = [0.0f64; R];
    for (r, (sum, acc)) in sums.iter_mut().zip(&acc).enumerate() {
        let (x, y, z) = (operand_row(a, true, r, dim), operand_row(b, b_rows, r, dim), operand_row(c, c_rows, r, dim));
        let tail: f64 = x[full..].iter().zip(&y[full..]).zip(&z[full..]).map(|((&x, &y), &z)| f(r, x, y, z)).sum();
        *sum = acc.iter().sum::<f64>() + tail;
    }
    sums
}

/// One row normalised: `(x - mean) * rstd`, scaled and shifted by the affine parameters when present.
#[inline(always)]
fn normalize_row<T: Float>(y: &mut [T], x: &[T], weight: Option<&[T]>, bias: Option<&[T]>, mean: T, rstd: T) {
    let rows = y.iter_mut().zip(x);
    match (weight, bias) {
        (Some(w), Some(b)) => {
            for ((y, &x), (&w, &b)) in rows.zip(w.iter().zip(b)) {
                *y = (x - mean) * rstd * w + b;
            }
        }
        (Some(w), None) => {
            for ((y, &x), &w) in rows.zip(w) {
                *y = (x - mean) * rstd * w;
            }
        }
        (None, Some(b)) => {
            for ((y, &x), &b) in rows.zip(b) {
                *y = (x - mean) * rstd + b;
            }
        }
        (None, None) => {
            for (y, &x) in rows {
                *y = (x - mean) * rstd;
            }
        }
    }
}

/// `R` rows of the forward (`y`, `x`: `[R, dim]`; `sm`, `sr`: `[R]`): per row the mean and variance in f64
/// (two passes), then the normalised, scaled row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_rows_body<T: Float, const R: usize>(
    y: &mut [T],
    x: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
    sm: &mut [T],
    sr: &mut [T],
    dim: usize,
) {
    let (x, y, sm, sr) = (&x[..R * dim], &mut y[..R * dim], &mut sm[..R], &mut sr[..R]);
    let inv_dim = 1.0 / dim as f64;
    let shared = (x, false);
    let mut mean = lane_sums::<T, R>(dim, x, shared, shared, |_, v, _, _| v.to_f64());
    mean.iter_mut().for_each(|m| *m *= inv_dim);
    let var = lane_sums::<T, R>(dim, x, shared, shared, |r, v, _, _| {
        let d = v.to_f64() - mean[r];
        d * d
    });
    for (r, (y, x)) in y.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).enumerate() {
        let (mean, rstd) = (T::from_f64(mean[r]), T::from_f64(1.0 / (var[r] * inv_dim + eps).sqrt()));
        (sm[r], sr[r]) = (mean, rstd);
        normalize_row(y, x, weight, bias, mean, rstd);
    }
}
crate::multiversion!(
    #[allow(clippy::too_many_arguments)]
    fn fwd_rows<T: Float; const R: usize>(
        y: &mut [T],
        x: &[T],
        weight: Option<&[T]>,
        bias: Option<&[T]>,
        eps: f64,
        sm: &mut [T],
        sr: &mut [T],
        dim: usize,
    ) => fwd_rows_body
);

/// `R` rows of the input gradient (`dx`, `dy`, `x`: `[R, dim]`; `mean`, `rstd`: `[R]`): per row the two row
/// reductions in f64 (they are differences of O(dim) terms), then `rstd * (g - mean(g) - xhat * mean(g xhat))`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_rows_body<T: Float, const R: usize>(
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    weight: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    acc: bool,
    dim: usize,
) {
    let (dx, dy, x, mean, rstd) = (&mut dx[..R * dim], &dy[..R * dim], &x[..R * dim], &mean[..R], &rstd[..R]);
    let inv_dim = 1.0 / dim as f64;
    // Two passes over the rows (they are in L1): sum g and sum g * xhat, g = dy * w.
    let xhat = |r: usize, x: T| ((x - mean[r]) * rstd[r]).to_f64();
    let (s_g, s_gx) = match weight {
        // Unused operands are `dy` again, so no ones vector is needed.
        Some(w) => (
            lane_sums::<T, R>(dim, dy, (w, false), (dy, true), |_, dy, w, _| (dy * w).to_f64()),
            lane_sums::<T, R>(dim, dy, (w, false), (x, true), |r, dy, w, x| (dy * w).to_f64() * xhat(r, x)),
        ),
        None => (
            lane_sums::<T, R>(dim, dy, (dy, true), (dy, true), |_, dy, _, _| dy.to_f64()),
            lane_sums::<T, R>(dim, dy, (x, true), (dy, true), |r, dy, x, _| dy.to_f64() * xhat(r, x)),
        ),
    };
    let rows = dx.chunks_exact_mut(dim).zip(dy.chunks_exact(dim)).zip(x.chunks_exact(dim));
    for (r, ((dx, dy), x)) in rows.enumerate() {
        let (mean_g, mean_gx) = (T::from_f64(s_g[r] * inv_dim), T::from_f64(s_gx[r] * inv_dim));
        input_grad_row(dx, dy, x, weight, mean[r], rstd[r], mean_g, mean_gx, acc);
    }
}

/// One row of the input gradient from its two means: `rstd * (g - mean_g - xhat * mean_gx)`, written, or
/// added onto `dx` when `acc` (the value's gradient already holds another reader's part) with the same
/// rounding as writing the term to a buffer and adding it: `dx + term`. The branch is outside the loops.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_grad_row<T: Float>(
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    weight: Option<&[T]>,
    mean: T,
    rstd: T,
    mean_g: T,
    mean_gx: T,
    acc: bool,
) {
    let rows = dx.iter_mut().zip(dy).zip(x);
    match (weight, acc) {
        (Some(w), false) => {
            for (((dx, &dy), &x), &w) in rows.zip(w) {
                let xhat = (x - mean) * rstd;
                *dx = rstd * (dy * w - mean_g - xhat * mean_gx);
            }
        }
        (Some(w), true) => {
            for (((dx, &dy), &x), &w) in rows.zip(w) {
                let xhat = (x - mean) * rstd;
                *dx += rstd * (dy * w - mean_g - xhat * mean_gx);
            }
        }
        (None, false) => {
            for ((dx, &dy), &x) in rows {
                let xhat = (x - mean) * rstd;
                *dx = rstd * (dy - mean_g - xhat * mean_gx);
            }
        }
        (None, true) => {
            for ((dx, &dy), &x) in rows {
                let xhat = (x - mean) * rstd;
                *dx += rstd * (dy - mean_g - xhat * mean_gx);
            }
        }
    }
}
crate::multiversion!(
    #[allow(clippy::too_many_arguments)]
    fn bwd_rows<T: Float; const R: usize>(
        dx: &mut [T],
        dy: &[T],
        x: &[T],
        weight: Option<&[T]>,
        mean: &[T],
        rstd: &[T],
        acc: bool,
        dim: usize,
    ) => bwd_rows_body
);

/// The input gradient of consecutive rows (`dx`, `dy`, `x`: `[rows, dim]`; `mean`, `rstd`: `[rows]`) on
/// the calling thread: [`ROW_GROUP`] rows at a time, the rest one by one (the same bits either way).
#[allow(clippy::too_many_arguments)]
fn bwd_rows_serial<T: Float>(
    dx: &mut [T],
    dy: &[T],
    x: &[T],
    weight: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    acc: bool,
    dim: usize,
) {
    let g = ROW_GROUP * dim;
    let groups =
        dx.chunks_mut(g).zip(dy.chunks(g)).zip(x.chunks(g)).zip(mean.chunks(ROW_GROUP).zip(rstd.chunks(ROW_GROUP)));
    for (((dx, dy), x), (m, s)) in groups {
        if m.len() == ROW_GROUP {
            bwd_rows::<T, ROW_GROUP>(dx, dy, x, weight, m, s, acc, dim);
        } else {
            for (((dx, dy), x), (m, s)) in dx
                .chunks_exact_mut(dim)
                .zip(dy.chunks_exact(dim))
                .zip(x.chunks_exact(dim))
                .zip(m.chunks(1).zip(s.chunks(1)))
            {
                bwd_rows::<T, 1>(dx, dy, x, weight, m, s, acc, dim);
            }
        }
    }
}

/// Layer norm forward (overwrites `out`, `save_mean`, `save_rstd`). Mean and variance are accumulated in
/// f64 (two passes, so no cancellation from `E[x^2] - E[x]^2`). `weight` / `bias` are `None` for
/// `elementwise_affine=False` (or `bias=False`).
///
/// inp: [rows, dim], weight: [dim], bias: [dim], out: [rows, dim], save_mean: [rows], save_rstd: [rows].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward<T: Float>(
    out: &mut [T],
    save_mean: &mut [T],
    save_rstd: &mut [T],
    inp: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    rows: usize,
    dim: usize,
    eps: f64,
) {
    assert_eq!(inp.len(), rows * dim, "layer_norm_forward: inp must be [rows, dim]");
    assert_eq!(out.len(), rows * dim, "layer_norm_forward: out must be [rows, dim]");
    assert_eq!(save_mean.len(), rows, "layer_norm_forward: save_mean must be [rows]");
    assert_eq!(save_rstd.len(), rows, "layer_norm_forward: save_rstd must be [rows]");
    assert!(weight.is_none_or(|w| w.len() == dim), "layer_norm_forward: weight must be [dim]");
    assert!(bias.is_none_or(|b| b.len() == dim), "layer_norm_forward: bias must be [dim]");
    if dim == 0 {
        return;
    }
    let group = |((y, x), (sm, sr)): FwdGroup<'_, T>| forward_rows_serial(y, sm, sr, x, weight, bias, dim, eps);
    if rows > 1 && rows * dim >= PAR_MIN_ELEMS {
        let r = rows_per_task(dim);
        out.par_chunks_mut(r * dim)
            .zip(inp.par_chunks(r * dim))
            .zip(save_mean.par_chunks_mut(r).zip(save_rstd.par_chunks_mut(r)))
            .for_each(group);
    } else {
        group(((out, inp), (save_mean, save_rstd)));
    }
}

/// [`layer_norm_forward`] of whole rows on the calling thread, row by row with the same row kernel (so the
/// bits are its bits): for a fused producer that normalises each block of rows right after writing it.
///
/// out, inp: [rows, dim]; save_mean, save_rstd: [rows].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_rows_serial<T: Float>(
    out: &mut [T],
    save_mean: &mut [T],
    save_rstd: &mut [T],
    inp: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    dim: usize,
    eps: f64,
) {
    let rows = save_mean.len();
    assert!(out.len() == rows * dim && inp.len() == rows * dim && save_rstd.len() == rows, "layer norm rows");
    let g = ROW_GROUP * dim;
    let groups =
        out.chunks_mut(g).zip(inp.chunks(g)).zip(save_mean.chunks_mut(ROW_GROUP).zip(save_rstd.chunks_mut(ROW_GROUP)));
    for ((y, x), (sm, sr)) in groups {
        if sm.len() == ROW_GROUP {
            fwd_rows::<T, ROW_GROUP>(y, x, weight, bias, eps, sm, sr, dim);
            continue;
        }
        let rows = y.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(sm.chunks_mut(1).zip(sr.chunks_mut(1)));
        for ((y, x), (sm, sr)) in rows {
            fwd_rows::<T, 1>(y, x, weight, bias, eps, sm, sr, dim);
        }
    }
}

/// Layer norm backward. Overwrites `dinp` with
/// `rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))`, `g = dout * weight`, `xhat = (x - mean) * rstd`;
/// accumulates `dweight += sum_rows dout * xhat` and `dbias += sum_rows dout` (pass `None` to skip either).
///
/// dout, inp: [rows, dim], save_mean, save_rstd: [rows] (from the forward), weight: [dim],
/// dinp: [rows, dim], dweight, dbias: [dim].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<T: Float>(
    dinp: &mut [T],
    dweight: Option<&mut [T]>,
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    save_mean: &[T],
    save_rstd: &[T],
    weight: Option<&[T]>,
    rows: usize,
    dim: usize,
) {
    layer_norm_backward_acc(dinp, false, dweight, dbias, dout, inp, save_mean, save_rstd, weight, rows, dim);
}

/// [`layer_norm_backward`] that adds the input gradient onto `dinp` when `accumulate` (`dinp += ...`, bitwise
/// the result of computing it into a separate buffer and adding that) instead of overwriting it. The executor
/// uses it where the input has another reader whose gradient arrived first (the residual stream of a
/// pre-norm transformer block), which saves a staging buffer and a pass over it.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_acc<T: Float>(
    dinp: &mut [T],
    accumulate: bool,
    dweight: Option<&mut [T]>,
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    save_mean: &[T],
    save_rstd: &[T],
    weight: Option<&[T]>,
    rows: usize,
    dim: usize,
) {
    assert_eq!(inp.len(), rows * dim, "layer_norm_backward: inp must be [rows, dim]");
    assert_eq!(dout.len(), rows * dim, "layer_norm_backward: dout must be [rows, dim]");
    assert_eq!(dinp.len(), rows * dim, "layer_norm_backward: dinp must be [rows, dim]");
    assert_eq!(save_mean.len(), rows, "layer_norm_backward: save_mean must be [rows]");
    assert_eq!(save_rstd.len(), rows, "layer_norm_backward: save_rstd must be [rows]");
    assert!(weight.is_none_or(|w| w.len() == dim), "layer_norm_backward: weight must be [dim]");
    assert!(dweight.as_ref().is_none_or(|w| w.len() == dim), "layer_norm_backward: dweight must be [dim]");
    assert!(dbias.as_ref().is_none_or(|b| b.len() == dim), "layer_norm_backward: dbias must be [dim]");
    if dim == 0 {
        return;
    }
    let parallel = rows * dim >= PAR_MIN_ELEMS;
    if (dweight.is_some() || dbias.is_some()) && parallel && rows > 1 && dim <= FUSED_MAX_DIM {
        let ctx = ParamCtx { dout, inp, save_mean, save_rstd, rows, dim };
        fused_row_ranges(dinp, accumulate, dweight, dbias, weight, &ctx);
        return;
    }
    input_grad(dinp, accumulate, dout, inp, save_mean, save_rstd, weight, rows, dim, parallel);
    if dweight.is_some() || dbias.is_some() {
        let ctx = ParamCtx { dout, inp, save_mean, save_rstd, rows, dim };
        if dim <= COL_BLOCK && parallel && rows > 1 {
            param_grads_row_split(dweight, dbias, &ctx);
        } else {
            param_grads_cols(dweight, dbias, 0, dim, &ctx, parallel);
        }
    }
}

/// The `dinp` part of [`layer_norm_backward`], row by row (rows are independent: parallel over groups).
#[allow(clippy::too_many_arguments)]
fn input_grad<T: Float>(
    dinp: &mut [T],
    acc: bool,
    dout: &[T],
    inp: &[T],
    save_mean: &[T],
    save_rstd: &[T],
    weight: Option<&[T]>,
    rows: usize,
    dim: usize,
    parallel: bool,
) {
    let group = |((dx, dy), (x, (sm, sr))): BwdGroup<'_, T>| bwd_rows_serial(dx, dy, x, weight, sm, sr, acc, dim);
    if parallel && rows > 1 {
        let r = rows_per_task(dim);
        dinp.par_chunks_mut(r * dim)
            .zip(dout.par_chunks(r * dim))
            .zip(inp.par_chunks(r * dim).zip(save_mean.par_chunks(r).zip(save_rstd.par_chunks(r))))
            .for_each(group);
    } else {
        group(((dinp, dout), (inp, (save_mean, save_rstd))));
    }
}

/// Read-only inputs of the parameter-gradient pass.
struct ParamCtx<'a, T> {
    dout: &'a [T],
    inp: &'a [T],
    save_mean: &'a [T],
    save_rstd: &'a [T],
    rows: usize,
    dim: usize,
}

/// f64 partial sums `(sum dout * xhat, sum dout)` of up to [`COL_BLOCK`] columns.
type BlockSums = ([f64; COL_BLOCK], [f64; COL_BLOCK]);

/// Partial sums of columns `[lo, lo + w)` (`w <= COL_BLOCK`) over rows `[r0, r1)`, rows in order.
fn block_sums<T: Float>(ctx: &ParamCtx<'_, T>, lo: usize, w: usize, r0: usize, r1: usize) -> BlockSums {
    let mut out = ([0.0f64; COL_BLOCK], [0.0f64; COL_BLOCK]);
    block_sums_into(&mut out, ctx, lo, w, r0, r1);
    out
}

/// [`block_sums`] as index loops compiled per instruction set: each column keeps its own f64 chain in row
/// order, so every version gives the same bits.
#[inline(always)]
fn block_sums_body<T: Float>(out: &mut BlockSums, ctx: &ParamCtx<'_, T>, lo: usize, w: usize, r0: usize, r1: usize) {
    let w = w.min(COL_BLOCK);
    let (sw, sb) = (&mut out.0[..w], &mut out.1[..w]);
    for r in r0..r1 {
        let (mean, rstd) = (ctx.save_mean[r], ctx.save_rstd[r]);
        let base = r * ctx.dim + lo;
        let (g, v) = (&ctx.dout[base..base + w], &ctx.inp[base..base + w]);
        for k in 0..w {
            sw[k] += (g[k] * ((v[k] - mean) * rstd)).to_f64();
            sb[k] += g[k].to_f64();
        }
    }
}
crate::multiversion!(
    fn block_sums_into<T: Float>(
        out: &mut BlockSums,
        ctx: &ParamCtx<'_, T>,
        lo: usize,
        w: usize,
        r0: usize,
        r1: usize,
    ) => block_sums_body
);

/// Adds block sums to the (optional) gradient slices of one column block.
fn add_block<T: Float>(dw: Option<&mut [T]>, db: Option<&mut [T]>, sums: &BlockSums) {
    if let Some(dw) = dw {
        for (d, &s) in dw.iter_mut().zip(&sums.0) {
            *d += T::from_f64(s);
        }
    }
    if let Some(db) = db {
        for (d, &s) in db.iter_mut().zip(&sums.1) {
            *d += T::from_f64(s);
        }
    }
}

/// Parameter gradients of columns `[lo, hi)`, whose gradient slices are `dw` / `db`. In parallel it halves
/// the column range (at a block boundary) with `rayon::join` until one block is left: every column is summed
/// over all rows in order either way, so both paths give the same bits. Recursion instead of `par_chunks`
/// because the two optional slices must be split together.
fn param_grads_cols<T: Float>(
    dw: Option<&mut [T]>,
    db: Option<&mut [T]>,
    lo: usize,
    hi: usize,
    ctx: &ParamCtx<'_, T>,
    parallel: bool,
) {
    let blocks = (hi - lo).div_ceil(COL_BLOCK);
    if parallel && blocks > 1 {
        let mid = (blocks / 2) * COL_BLOCK;
        let (dw0, dw1) = match dw {
            Some(d) => {
                let (a, b) = d.split_at_mut(mid);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let (db0, db1) = match db {
            Some(d) => {
                let (a, b) = d.split_at_mut(mid);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        rayon::join(
            || param_grads_cols(dw0, db0, lo, lo + mid, ctx, parallel),
            || param_grads_cols(dw1, db1, lo + mid, hi, ctx, parallel),
        );
        return;
    }
    let (mut dw, mut db) = (dw, db);
    for b in 0..blocks {
        let (c0, c1) = (b * COL_BLOCK, ((b + 1) * COL_BLOCK).min(hi - lo));
        let sums = block_sums(ctx, lo + c0, c1 - c0, 0, ctx.rows);
        add_block(dw.as_deref_mut().map(|d| &mut d[c0..c1]), db.as_deref_mut().map(|d| &mut d[c0..c1]), &sums);
    }
}

/// Parameter gradients when `dim <= 64` (one column block) and there are many rows: [`ROW_RANGES`] fixed row
/// ranges summed in parallel, their partials then added in range order (deterministic).
fn param_grads_row_split<T: Float>(dw: Option<&mut [T]>, db: Option<&mut [T]>, ctx: &ParamCtx<'_, T>) {
    let per_range = ctx.rows.div_ceil(ROW_RANGES);
    let mut partial = [([0.0f64; COL_BLOCK], [0.0f64; COL_BLOCK]); ROW_RANGES];
    partial.par_iter_mut().enumerate().for_each(|(k, p)| {
        let r0 = (k * per_range).min(ctx.rows);
        let r1 = (r0 + per_range).min(ctx.rows);
        *p = block_sums(ctx, 0, ctx.dim, r0, r1);
    });
    let mut total = ([0.0f64; COL_BLOCK], [0.0f64; COL_BLOCK]);
    for p in &partial {
        for k in 0..ctx.dim {
            total.0[k] += p.0[k];
            total.1[k] += p.1[k];
        }
    }
    add_block(dw, db, &total);
}

/// Largest `dim` whose backward computes the parameter gradients in the same pass over the rows as the input
/// gradient ([`fused_row_ranges`]; the per-range partial sums live on the stack).
const FUSED_MAX_DIM: usize = 256;

/// f64 partial column sums `(sum dout * xhat, sum dout)` of up to [`FUSED_MAX_DIM`] columns.
type RowRangeSums = ([f64; FUSED_MAX_DIM], [f64; FUSED_MAX_DIM]);

/// Adds one row's terms to the column sums, each column its own f64 chain (the expression of
/// [`block_sums_body`], so the same bits for the same row order).
#[inline(always)]
fn add_row_body<T: Float>(sums: &mut RowRangeSums, g: &[T], v: &[T], mean: T, rstd: T) {
    let w = g.len().min(v.len()).min(FUSED_MAX_DIM);
    let (sw, sb, g, v) = (&mut sums.0[..w], &mut sums.1[..w], &g[..w], &v[..w]);
    for k in 0..w {
        sw[k] += (g[k] * ((v[k] - mean) * rstd)).to_f64();
        sb[k] += g[k].to_f64();
    }
}
crate::multiversion!(
    fn add_row<T: Float>(sums: &mut RowRangeSums, g: &[T], v: &[T], mean: T, rstd: T) => add_row_body
);

/// The whole backward for `dim <= FUSED_MAX_DIM`: [`ROW_RANGES`] fixed row ranges in parallel, each computing
/// its rows' input gradients and, while each row is still in L1, its partial parameter sums; the partials are
/// then added in range order. One pass over `dout` and `inp` instead of two. The partition is
/// [`param_grads_row_split`]'s, so for `dim <= COL_BLOCK` the parameter gradients are bitwise that function's;
/// the ranges are fixed, so nothing depends on the thread count.
fn fused_row_ranges<T: Float>(
    dinp: &mut [T],
    acc: bool,
    dweight: Option<&mut [T]>,
    dbias: Option<&mut [T]>,
    weight: Option<&[T]>,
    ctx: &ParamCtx<'_, T>,
) {
    let (rows, dim) = (ctx.rows, ctx.dim);
    let per_range = rows.div_ceil(ROW_RANGES);
    let mut partial = [([0.0f64; FUSED_MAX_DIM], [0.0f64; FUSED_MAX_DIM]); ROW_RANGES];
    dinp.par_chunks_mut(per_range * dim).zip(partial.par_iter_mut().enumerate()).for_each(|(dx, (k, sums))| {
        // The range's rows in groups: the input gradients of a group, then its rows' parameter terms in row
        // order (while the rows are in L1), so the sums are the row-by-row pass's.
        let r0 = k * per_range;
        let rows = dx.len() / dim;
        let (dy, x) = (&ctx.dout[r0 * dim..(r0 + rows) * dim], &ctx.inp[r0 * dim..(r0 + rows) * dim]);
        let (sm, sr) = (&ctx.save_mean[r0..r0 + rows], &ctx.save_rstd[r0..r0 + rows]);
        let (g, step) = (ROW_GROUP * dim, ROW_GROUP);
        let groups = dx.chunks_mut(g).zip(dy.chunks(g)).zip(x.chunks(g)).zip(sm.chunks(step).zip(sr.chunks(step)));
        for (((dx, dy), x), (m, s)) in groups {
            bwd_rows_serial(dx, dy, x, weight, m, s, acc, dim);
            let rows = dy.chunks_exact(dim).zip(x.chunks_exact(dim)).zip(m.iter().zip(s));
            for ((dy, x), (&mean, &rstd)) in rows {
                add_row(sums, dy, x, mean, rstd);
            }
        }
    });
    // Ranges past the last row (rows < ROW_RANGES * per_range) stayed zero; adding them changes nothing.
    let mut total = ([0.0f64; FUSED_MAX_DIM], [0.0f64; FUSED_MAX_DIM]);
    for p in &partial {
        for k in 0..dim {
            total.0[k] += p.0[k];
            total.1[k] += p.1[k];
        }
    }
    if let Some(dw) = dweight {
        for (d, &s) in dw.iter_mut().zip(&total.0[..dim]) {
            *d += T::from_f64(s);
        }
    }
    if let Some(db) = dbias {
        for (d, &s) in db.iter_mut().zip(&total.1[..dim]) {
            *d += T::from_f64(s);
        }
    }
}

/// The CUDA kernels of layer normalisation (`layer_norm.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "layer_norm",
    code: include_str!("layer_norm.cu"),
    // Per (input, output) storage pair, in common.cuh's FOR_STORE_PAIRS order.
    kernels: &[
        "ln_forward_f32_f32",
        "ln_forward_f32_f16",
        "ln_forward_f16_f32",
        "ln_forward_f16_f16",
        "ln_forward_f32_bf16",
        "ln_forward_bf16_f32",
        "ln_forward_bf16_bf16",
        "ln_forward_warp_f32_f32",
        "ln_forward_warp_f32_f16",
        "ln_forward_warp_f16_f32",
        "ln_forward_warp_f16_f16",
        "ln_forward_warp_f32_bf16",
        "ln_forward_warp_bf16_f32",
        "ln_forward_warp_bf16_bf16",
        "ln_backward_input_f32_f32",
        "ln_backward_input_f32_f16",
        "ln_backward_input_f16_f32",
        "ln_backward_input_f16_f16",
        "ln_backward_input_f32_bf16",
        "ln_backward_input_bf16_f32",
        "ln_backward_input_bf16_bf16",
        "ln_backward_input_warp_f32_f32",
        "ln_backward_input_warp_f32_f16",
        "ln_backward_input_warp_f16_f32",
        "ln_backward_input_warp_f16_f16",
        "ln_backward_input_warp_f32_bf16",
        "ln_backward_input_warp_bf16_f32",
        "ln_backward_input_warp_bf16_bf16",
        "ln_params_partials_f32_f32",
        "ln_params_partials_f32_f16",
        "ln_params_partials_f16_f32",
        "ln_params_partials_f16_f16",
        "ln_params_partials_f32_bf16",
        "ln_params_partials_bf16_f32",
        "ln_params_partials_bf16_bf16",
        "ln_params_sum_f32",
    ],
};

/// Host side of `layer_norm.cu`.
#[path = "layer_norm_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    const EPS: f64 = 1e-5;

    struct Reference {
        out: Vec<f64>,
        mean: Vec<f64>,
        rstd: Vec<f64>,
        dinp: Vec<f64>,
        dweight: Vec<f64>,
        dbias: Vec<f64>,
    }

    /// Naive f64 reference from the definition, with the backward derived by the textbook chain rule
    /// through var and mean (a different route from the kernel's closed form):
    /// dxhat = dy * w, dvar = sum dxhat (x - mu) (-1/2) (var + eps)^(-3/2),
    /// dmu = -sum dxhat * rstd + dvar * sum -2 (x - mu) / D, dx = dxhat * rstd + dvar * 2 (x - mu) / D + dmu / D.
    fn reference(x: &[f64], w: &[f64], b: &[f64], dy: &[f64], rows: usize, d: usize) -> Reference {
        let mut r = Reference {
            out: vec![0.0; rows * d],
            mean: vec![0.0; rows],
            rstd: vec![0.0; rows],
            dinp: vec![0.0; rows * d],
            dweight: vec![0.0; d],
            dbias: vec![0.0; d],
        };
        let df = d as f64;
        for i in 0..rows {
            let x = &x[i * d..(i + 1) * d];
            let dy = &dy[i * d..(i + 1) * d];
            let mu = x.iter().sum::<f64>() / df;
            let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / df;
            let rstd = 1.0 / (var + EPS).sqrt();
            r.mean[i] = mu;
            r.rstd[i] = rstd;
            let mut dvar = 0.0;
            for j in 0..d {
                let xhat = (x[j] - mu) * rstd;
                r.out[i * d + j] = xhat * w[j] + b[j];
                r.dweight[j] += dy[j] * xhat;
                r.dbias[j] += dy[j];
                dvar += dy[j] * w[j] * (x[j] - mu) * -0.5 * (var + EPS).powf(-1.5);
            }
            let mut dmu = 0.0;
            for j in 0..d {
                dmu += -dy[j] * w[j] * rstd + dvar * -2.0 * (x[j] - mu) / df;
            }
            for j in 0..d {
                r.dinp[i * d + j] = dy[j] * w[j] * rstd + dvar * 2.0 * (x[j] - mu) / df + dmu / df;
            }
        }
        r
    }

    #[test]
    fn hand_checked_values() {
        // Row [1, 2, 3, 4]: mean 2.5, biased var 1.25; with eps = 1e-5 the values are (x - 2.5) / sqrt(1.25001)
        // (numpy float64).
        let x = [1.0f64, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0];
        let (mut y, mut m, mut r) = ([0.0; 8], [0.0; 2], [0.0; 2]);
        layer_norm_forward(&mut y, &mut m, &mut r, &x, None, None, 2, 4, 1e-5);
        let want = [-1.3416354199689269, -0.447211806656309, 0.447211806656309, 1.3416354199689269];
        assert_close("row 0", &y[..4], &want, 1e-14, 0.0);
        // A constant row normalises to 0 (variance 0, rstd = 1/sqrt(eps)), not NaN.
        assert_eq!(&y[4..], &[0.0; 4]);
        assert_eq!(m, [2.5, 5.0]);
        assert_close("rstd", &r, &[1.0 / 1.25001f64.sqrt(), 1.0 / 1e-5f64.sqrt()], 1e-15, 0.0);
        // With affine parameters: out = xhat * w + b.
        let (w, b) = ([2.0, 0.0, -1.0, 1.0], [0.5, 0.5, 0.5, -0.5]);
        layer_norm_forward(&mut y, &mut m, &mut r, &x, Some(&w), Some(&b), 2, 4, 1e-5);
        let want_aff: Vec<f64> = (0..4).map(|j| want[j] * w[j] + b[j]).collect();
        assert_close("affine row 0", &y[..4], &want_aff, 1e-14, 1e-16);
        // dout = 1 everywhere: dinp = 0 (a shift of the row changes nothing), dbias = rows, dweight = sum xhat.
        let mut dx = [9.0; 8];
        let (mut dw, mut db) = ([0.0; 4], [0.0; 4]);
        layer_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &[1.0; 8], &x, &m, &r, None, 2, 4);
        assert_close("dinp", &dx, &[0.0; 8], 0.0, 1e-12);
        assert_eq!(db, [2.0; 4]);
        assert_close("dweight", &dw, &want, 1e-14, 0.0);
    }

    fn case(seed: u64, rows: usize, d: usize) -> [Vec<f64>; 4] {
        [
            round_f32(&uniform(seed, rows * d, -2.0, 3.0)),
            round_f32(&uniform(seed + 1, d, 0.5, 1.5)),
            round_f32(&uniform(seed + 2, d, -0.5, 0.5)),
            round_f32(&uniform(seed + 3, rows * d, -1.0, 1.0)),
        ]
    }

    #[test]
    fn matches_f64_reference() {
        // Sequential; 300 x 500 (parallel rows, parallel column blocks); 3000 x 48 and 3001 x 128 (one fused
        // pass over fixed row ranges; 3001 leaves the last range short); dim 1 (output = bias).
        for (rows, d, seed) in [(5usize, 7usize, 1u64), (300, 500, 2), (3000, 48, 3), (3001, 128, 6), (4, 1, 4)] {
            let [x, w, b, dy] = case(seed, rows, d);
            let r = reference(&x, &w, &b, &dy, rows, d);
            let init_w = round_f32(&uniform(seed + 4, d, -1.0, 1.0));
            let init_b = round_f32(&uniform(seed + 5, d, -1.0, 1.0));
            let want_dw: Vec<f64> = r.dweight.iter().zip(&init_w).map(|(a, b)| a + b).collect();
            let want_db: Vec<f64> = r.dbias.iter().zip(&init_b).map(|(a, b)| a + b).collect();

            let (mut y, mut m, mut s) = (vec![0.0f64; rows * d], vec![0.0f64; rows], vec![0.0f64; rows]);
            layer_norm_forward(&mut y, &mut m, &mut s, &x, Some(&w), Some(&b), rows, d, EPS);
            assert_close("f64 out", &y, &r.out, 1e-12, 1e-12);
            assert_close("f64 mean", &m, &r.mean, 1e-12, 1e-14);
            assert_close("f64 rstd", &s, &r.rstd, 1e-12, 0.0);
            let mut dx = vec![f64::NAN; rows * d];
            let (mut dw, mut db) = (init_w.clone(), init_b.clone());
            layer_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &dy, &x, &m, &s, Some(&w), rows, d);
            assert_close_scaled("f64 dinp", &dx, &r.dinp, 1e-12);
            assert_close_scaled("f64 dweight", &dw, &want_dw, 1e-12);
            assert_close_scaled("f64 dbias", &db, &want_db, 1e-12);

            let (x32, w32, b32, dy32) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&dy));
            let (mut y, mut m, mut s) = (vec![0.0f32; rows * d], vec![0.0f32; rows], vec![0.0f32; rows]);
            layer_norm_forward(&mut y, &mut m, &mut s, &x32, Some(&w32), Some(&b32), rows, d, EPS);
            assert_close_scaled("f32 out", &y, &r.out, 1e-5);
            assert_close("f32 rstd", &s, &r.rstd, 1e-6, 0.0);
            let mut dx = vec![f32::NAN; rows * d];
            let (mut dw, mut db) = (to_f32(&init_w), to_f32(&init_b));
            layer_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &dy32, &x32, &m, &s, Some(&w32), rows, d);
            assert_close_scaled("f32 dinp", &dx, &r.dinp, 1e-5);
            assert_close_scaled("f32 dweight", &dw, &want_dw, 1e-5);
            assert_close_scaled("f32 dbias", &db, &want_db, 1e-5);

            // No affine parameters: same as weight 1, bias 0; dinp is written even without dweight/dbias.
            let (ones, zeros) = (vec![1.0; d], vec![0.0; d]);
            let r = reference(&x, &ones, &zeros, &dy, rows, d);
            let (mut y, mut m, mut s) = (vec![0.0f64; rows * d], vec![0.0f64; rows], vec![0.0f64; rows]);
            layer_norm_forward(&mut y, &mut m, &mut s, &x, None, None, rows, d, EPS);
            assert_close("f64 out, no affine", &y, &r.out, 1e-12, 1e-12);
            let mut dx = vec![f64::NAN; rows * d];
            layer_norm_backward(&mut dx, None, None, &dy, &x, &m, &s, None, rows, d);
            assert_close_scaled("f64 dinp, no affine", &dx, &r.dinp, 1e-12);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (rows, d) = (3, 5);
        let [mut x, mut w, mut b, _] = case(5, rows, d);
        let g = uniform(9, rows * d, -1.0, 1.0);
        let (mut y, mut m, mut s) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
        layer_norm_forward(&mut y, &mut m, &mut s, &x, Some(&w), Some(&b), rows, d, EPS);
        let (mut dx, mut dw, mut db) = (vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
        layer_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &g, &x, &m, &s, Some(&w), rows, d);

        let mut loss = |x: &[f64], w: &[f64], b: &[f64]| {
            layer_norm_forward(&mut y, &mut m, &mut s, x, Some(w), Some(b), rows, d, EPS);
            dot(&g, &y)
        };
        let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
        check_grad("dinp", &mut x, &dx, |v| loss(v, &w0, &b0));
        check_grad("dweight", &mut w, &dw, |v| loss(&x0, v, &b0));
        check_grad("dbias", &mut b, &db, |v| loss(&x0, &w0, v));
    }

    #[test]
    fn parameter_gradients_accumulate_and_are_deterministic() {
        // Calling the backward twice doubles the parameter gradients (+=) but leaves dinp as one call's
        // value (=); the row-split and column-block reductions give the same bits on every run.
        for (rows, d) in [(4usize, 6usize), (3000, 48), (3001, 128), (300, 500)] {
            let [x, w, b, dy] = case(11, rows, d);
            let (x, w, b, dy) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&dy));
            let (mut y, mut m, mut s) = (vec![0.0f32; rows * d], vec![0.0f32; rows], vec![0.0f32; rows]);
            layer_norm_forward(&mut y, &mut m, &mut s, &x, Some(&w), Some(&b), rows, d, EPS);
            let run = |dw: &mut [f32], db: &mut [f32]| {
                let mut dx = vec![0.0f32; rows * d];
                layer_norm_backward(&mut dx, Some(dw), Some(db), &dy, &x, &m, &s, Some(&w), rows, d);
                dx
            };
            let (mut dw1, mut db1) = (vec![0.0f32; d], vec![0.0f32; d]);
            let dx1 = run(&mut dw1, &mut db1);
            let (mut dw2, mut db2) = (vec![0.0f32; d], vec![0.0f32; d]);
            let _ = run(&mut dw2, &mut db2);
            assert_eq!((&dw1, &db1), (&dw2, &db2), "repeatable bit for bit");
            let dx2 = run(&mut dw2, &mut db2);
            assert_eq!(dx1, dx2);
            let twice = |v: &[f32]| v.iter().map(|&a| 2.0 * a).collect::<Vec<f32>>();
            assert_eq!(dw2, twice(&dw1));
            assert_eq!(db2, twice(&db1));
            // Only one of the two parameter gradients requested.
            let mut db3 = vec![0.0f32; d];
            let mut dx3 = vec![0.0f32; rows * d];
            layer_norm_backward(&mut dx3, None, Some(&mut db3), &dy, &x, &m, &s, Some(&w), rows, d);
            assert_eq!(db3, db1);
            // The same bits on one thread as on the pool.
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let (mut dw4, mut db4) = (vec![0.0f32; d], vec![0.0f32; d]);
            let dx4 = one.install(|| run(&mut dw4, &mut db4));
            assert_eq!((&dx4, &dw4, &db4), (&dx1, &dw1, &db1), "{rows} x {d}: one thread differs");
        }
    }

    #[test]
    fn fused_pass_keeps_the_row_split_sums_for_narrow_rows() {
        // For dim <= COL_BLOCK the fused pass sums each column over the same row ranges in the same order as
        // param_grads_row_split, so the parameter gradients are bit for bit that function's.
        let (rows, d) = (3000, 48);
        let [x, w, b, dy] = case(12, rows, d);
        let (x, w, b, dy) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&dy));
        let (mut y, mut m, mut s) = (vec![0.0f32; rows * d], vec![0.0f32; rows], vec![0.0f32; rows]);
        layer_norm_forward(&mut y, &mut m, &mut s, &x, Some(&w), Some(&b), rows, d, EPS);
        let (mut dw, mut db, mut dx) = (vec![0.5f32; d], vec![0.25f32; d], vec![0.0f32; rows * d]);
        layer_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &dy, &x, &m, &s, Some(&w), rows, d);
        let ctx = ParamCtx { dout: &dy, inp: &x, save_mean: &m, save_rstd: &s, rows, dim: d };
        let (mut dw2, mut db2) = (vec![0.5f32; d], vec![0.25f32; d]);
        param_grads_row_split(Some(&mut dw2), Some(&mut db2), &ctx);
        assert_eq!((dw, db), (dw2, db2));
        let mut dx2 = vec![0.0f32; rows * d];
        input_grad(&mut dx2, false, &dy, &x, &m, &s, Some(&w), rows, d, true);
        assert_eq!(dx, dx2);
    }

    #[test]
    fn accumulating_input_gradient_is_the_written_one_added() {
        // `accumulate` must give exactly `base + dinp` (what staging the gradient and adding it gave), on the
        // fused pass (parameters, many rows), the plain row pass (no parameters; dim over the fused limit)
        // and serially (few rows), with and without a weight; the parameter gradients do not change.
        for (rows, d, params, weight) in
            [(3001, 128, true, true), (3000, 48, true, false), (300, 300, true, true), (5, 7, false, true)]
        {
            let [x, w, b, dy] = case(13, rows, d);
            let (x, w, b, dy) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&dy));
            let w = weight.then_some(&w[..]);
            let (mut y, mut m, mut s) = (vec![0.0f32; rows * d], vec![0.0f32; rows], vec![0.0f32; rows]);
            layer_norm_forward(&mut y, &mut m, &mut s, &x, w, Some(&b), rows, d, EPS);
            let base: Vec<f32> = to_f32(&uniform(14, rows * d, -1.0, 1.0));
            let run = |dx: &mut [f32], acc: bool| {
                let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
                let (dwo, dbo) = if params { (Some(&mut dw[..]), Some(&mut db[..])) } else { (None, None) };
                layer_norm_backward_acc(dx, acc, dwo, dbo, &dy, &x, &m, &s, w, rows, d);
                (dw, db)
            };
            let mut written = vec![f32::NAN; rows * d];
            let p1 = run(&mut written, false);
            let mut added = base.clone();
            let p2 = run(&mut added, true);
            let want: Vec<u32> = base.iter().zip(&written).map(|(a, b)| (a + b).to_bits()).collect();
            let got: Vec<u32> = added.iter().map(|v| v.to_bits()).collect();
            assert!(got == want, "{rows} x {d}: accumulate is not base + dinp");
            assert_eq!(p1, p2, "{rows} x {d}: parameter gradients changed");
        }
    }

    /// The rows of a group give the one-row kernel's bits: forward (statistics and output) and input
    /// gradient (written and accumulated), with and without the affine parameters, for widths with and
    /// without a tail past the last 16-lane chunk and row counts with and without a partial group.
    fn groups_case<T: Float + std::fmt::Debug>(to_t: impl Fn(&[f64]) -> Vec<T>) {
        let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<u64>>();
        for (rows, d) in [(4, 128), (13, 128), (9, 7), (6, 16), (11, 130), (5, 1), (8, 200)] {
            let [x, w, b, dy] = case(rows as u64 * 31 + d as u64, rows, d);
            // Rows far from zero too, where the variance's cancellation matters.
            let x: Vec<f64> = x.iter().enumerate().map(|(i, v)| v + if (i / d) % 3 == 1 { 1e3 } else { 0.0 }).collect();
            let (x, w, b, dy) = (to_t(&x), to_t(&w), to_t(&b), to_t(&dy));
            for (weight, bias) in
                [(Some(&w[..]), Some(&b[..])), (None, Some(&b[..])), (Some(&w[..]), None), (None, None)]
            {
                let (mut y, mut m, mut s) = (vec![T::ZERO; rows * d], vec![T::ZERO; rows], vec![T::ZERO; rows]);
                forward_rows_serial(&mut y, &mut m, &mut s, &x, weight, bias, d, EPS);
                let (mut y1, mut m1, mut s1) = (vec![T::ZERO; rows * d], vec![T::ZERO; rows], vec![T::ZERO; rows]);
                for r in 0..rows {
                    let (yr, xr) = (&mut y1[r * d..(r + 1) * d], &x[r * d..(r + 1) * d]);
                    fwd_rows::<T, 1>(yr, xr, weight, bias, EPS, &mut m1[r..r + 1], &mut s1[r..r + 1], d);
                }
                assert_eq!((bits(&y), bits(&m), bits(&s)), (bits(&y1), bits(&m1), bits(&s1)), "forward {rows} x {d}");
                for acc in [false, true] {
                    let start = to_t(&uniform(15, rows * d, -1.0, 1.0));
                    let (mut dx, mut dx1) = (start.clone(), start);
                    bwd_rows_serial(&mut dx, &dy, &x, weight, &m, &s, acc, d);
                    for r in 0..rows {
                        let (dxr, dyr, xr) =
                            (&mut dx1[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d], &x[r * d..(r + 1) * d]);
                        bwd_rows::<T, 1>(dxr, dyr, xr, weight, &m[r..r + 1], &s[r..r + 1], acc, d);
                    }
                    assert_eq!(bits(&dx), bits(&dx1), "input gradient {rows} x {d}, accumulate {acc}");
                }
            }
        }
    }

    #[test]
    fn row_groups_give_the_one_row_bits() {
        groups_case::<f32>(to_f32);
        groups_case::<f64>(|v| v.to_vec());
    }
}
