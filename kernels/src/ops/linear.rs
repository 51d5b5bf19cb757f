//! Fully connected layer (PyTorch `nn.Linear`): `out = inp @ weight^T + bias`, and a plain matmul.
//!
//! The matrix products go through the `gemm` crate (packed, SIMD, optionally rayon-parallel microkernels).
//! Transposes are never materialised: they are expressed with row/column strides, which `gemm` packs anyway.

use crate::Float;

use super::activation::Activation;
use super::bias_add::bias_add_backward;

use super::gemm::Mat;
pub use super::gemm::GEMM_PAR_MIN_FLOPS;
use rayon::prelude::*;

/// Largest reduction depth `gemm` always runs as one block (its depth blocking never goes below 512): up to
/// it, each output element is one multiply-add chain in depth order, whatever the row blocking.
const GEMM_ONE_DEPTH_BLOCK: usize = 512;

/// `dst[m, n] = lhs[m, k] @ rhs[k, n]` (or `+=` when `accumulate`), every matrix given by its slice and its
/// row / column strides in elements, through the shared gemm wrapper.
#[allow(clippy::too_many_arguments)]
fn gemm_strided<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: &[T],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[T],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    let lhs = Mat { data: lhs, rs: lhs_rs, cs: lhs_cs };
    let rhs = Mat { data: rhs, rs: rhs_rs, cs: rhs_cs };
    super::gemm::gemm_strided(m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, rhs, T::ONE, true);
}

/// Output bytes the threaded biased forward multiplies before adding the bias (see [`linear_forward`]): half
/// of this machine class's 2 MiB L2, so most of the block is still there when the bias is added. Each chunk
/// is one gemm call, which packs the weight again: W3's linear forwards ran 3-4% faster with 1 MiB chunks
/// than with 400 KiB (three alternating runs; 200 KiB was slower still, 2 MiB and whole row blocks the same).
const BIAS_CHUNK_BYTES: usize = 1024 * 1024;

/// Plain row-major matrix product.
///
/// a: [M, K], b: [K, N], out: [M, N]. `out = a @ b`, or `out += a @ b` when `accumulate`.
pub fn matmul<T: Float>(out: &mut [T], a: &[T], b: &[T], m: usize, k: usize, n: usize, accumulate: bool) {
    assert_eq!(out.len(), m * n, "matmul: out must be [M, N]");
    assert_eq!(a.len(), m * k, "matmul: a must be [M, K]");
    assert_eq!(b.len(), k * n, "matmul: b must be [K, N]");
    gemm_strided(m, n, k, out, n, 1, accumulate, a, k, 1, b, n, 1);
}

/// Linear layer forward: `out = inp @ weight^T + bias` (overwrites `out`).
///
/// inp: [B, C], weight: [OC, C] (PyTorch layout), bias: [OC] or None, out: [B, OC].
pub fn linear_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    b: usize,
    c: usize,
    oc: usize,
) {
    forward_onto(out, inp, weight, bias, FusedTail::None, b, c, oc);
}

/// What [`forward_onto`] does to the product besides the bias, fused into the same pass over it.
pub(crate) enum FusedTail<'a, T> {
    /// Nothing: the linear layer alone.
    None,
    /// `residual + (product + bias)` ([B, OC]): the linear layer followed by an add (`ops::linear_residual`).
    Residual(&'a [T]),
    /// `act(product + bias)` in place, keeping what the backward needs in `keep` when given ([B, OC]):
    /// the linear layer followed by an activation (`ops::linear_act`).
    Act { act: Activation, keep: Option<&'a mut [T]> },
    /// `Residual`, then the layer norm of every row of the sum into `norm`: the linear layer, the add and the
    /// layer norm that reads the add (`ops::linear_residual::linear_residual_norm_forward`).
    ResidualNorm { residual: &'a [T], norm: NormOut<'a, T> },
}

/// A layer norm over the rows of a fused producer's output (`OC` wide): its output and saved statistics, and
/// its parameters.
pub struct NormOut<'a, T> {
    /// [B, OC], overwritten.
    pub out: &'a mut [T],
    /// [B], overwritten.
    pub save_mean: &'a mut [T],
    /// [B], overwritten.
    pub save_rstd: &'a mut [T],
    /// [OC] or None.
    pub weight: Option<&'a [T]>,
    /// [OC] or None.
    pub bias: Option<&'a [T]>,
    /// Added to the variance.
    pub eps: f64,
}

/// Per-row-block outputs of [`forward_onto`]'s tail besides the product itself.
enum TailOut<'a, T> {
    None,
    Keep(&'a mut [T]),
    Norm(&'a mut [T], &'a mut [T], &'a mut [T]),
}

/// [`linear_forward`] followed by `tail`, bitwise the linear layer followed by the separate op: the tail
/// runs on each chunk of rows right after the chunk is multiplied (threaded path) or over the whole output
/// after it (otherwise), with the separate ops' expressions.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_onto<T: Float>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    tail: FusedTail<'_, T>,
    b: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), b * oc, "linear_forward: out must be [B, OC]");
    assert_eq!(inp.len(), b * c, "linear_forward: inp must be [B, C]");
    assert_eq!(weight.len(), oc * c, "linear_forward: weight must be [OC, C]");
    assert!(bias.is_none_or(|x| x.len() == oc), "linear_forward: bias must be [OC]");
    let (residual, act, keep, norm) = match tail {
        FusedTail::None => (None, None, None, None),
        FusedTail::Residual(r) => (Some(r), None, None, None),
        FusedTail::Act { act, keep } => (None, Some(act), keep, None),
        FusedTail::ResidualNorm { residual, norm } => (Some(residual), None, None, Some(norm)),
    };
    assert!(residual.is_none_or(|r| r.len() == b * oc), "linear_forward: residual must be [B, OC]");
    assert!(keep.as_ref().is_none_or(|k| k.len() == b * oc), "linear_forward: keep must be [B, OC]");
    if let Some(n) = &norm {
        assert!(n.out.len() == b * oc && n.save_mean.len() == b && n.save_rstd.len() == b, "layer norm shapes");
        assert!(n.weight.is_none_or(|w| w.len() == oc) && n.bias.is_none_or(|x| x.len() == oc), "layer norm params");
    }
    let (norm_params, norm_eps) = norm.as_ref().map_or(((None, None), 0.0), |n| ((n.weight, n.bias), n.eps));
    // weight^T as a [C, OC] matrix: element (k, j) is weight[j * C + k], i.e. row stride 1, column stride C.
    let product = |out: &mut [T], inp: &[T], rows: usize, accumulate: bool, parallel: bool| {
        let (lhs, rhs) = (Mat { data: inp, rs: c, cs: 1 }, Mat { data: weight, rs: 1, cs: c });
        super::gemm::gemm_strided(rows, oc, c, out, oc, 1, accumulate, lhs, rhs, T::ONE, parallel);
    };
    if bias.is_none() && residual.is_none() && act.is_none() {
        product(out, inp, b, false, true);
        return;
    }
    if oc == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if threads > 1 && c <= GEMM_ONE_DEPTH_BLOCK && b >= 2 * threads && b * oc * c >= GEMM_PAR_MIN_FLOPS {
        // One row block per thread; each multiplies chunks of about `BIAS_CHUNK_BYTES` of output and adds the
        // bias (and the residual) to a chunk right after, while it is in L2. Seeding the rows with the bias
        // first wrote the (cold) output once more before gemm read it back: about 10-25% slower at W3's shapes
        // with data out of cache. With a single depth block gemm adds its whole product to the destination
        // once, so `product + bias` here is bitwise the seeded `bias + product`, and every output is the same
        // chain however the rows are split: the result does not depend on the thread count.
        let per = b.div_ceil(threads);
        let chunk = (BIAS_CHUNK_BYTES / (oc * std::mem::size_of::<T>())).max(1);
        let empty: &[T] = &[];
        let bias = bias.unwrap_or(empty);
        // Thread `t`'s row block: its output, input and its part of the tail's other outputs.
        let block = |t: usize, o: &mut [T], x: &[T], mut extra: TailOut<'_, T>| {
            for (i, (o, x)) in o.chunks_mut(chunk * oc).zip(x.chunks(chunk * c)).enumerate() {
                let rows = o.len() / oc;
                product(o, x, rows, false, false);
                let (local, at) = (i * chunk, (t * per + i * chunk) * oc);
                if let Some(a) = act {
                    let k = match &mut extra {
                        TailOut::Keep(k) => Some(&mut k[local * oc..local * oc + o.len()]),
                        _ => None,
                    };
                    super::linear_act::epilogue_serial(a, o, k, bias);
                    continue;
                }
                let r = residual.map_or(empty, |r| &r[at..at + o.len()]);
                super::bias_add::epilogue_rows_serial(o, bias, r);
                if let TailOut::Norm(y, m, s) = &mut extra {
                    let (y, m, s) = (&mut y[local * oc..][..o.len()], &mut m[local..][..rows], &mut s[local..][..rows]);
                    let (w, nb) = norm_params;
                    super::layer_norm::forward_rows_serial(y, m, s, o, w, nb, oc, norm_eps);
                }
            }
        };
        let blocks = out.par_chunks_mut(per * oc).zip(inp.par_chunks(per * c));
        match (keep, norm) {
            (Some(k), _) => blocks
                .zip(k.par_chunks_mut(per * oc))
                .enumerate()
                .for_each(|(t, ((o, x), k))| block(t, o, x, TailOut::Keep(k))),
            (None, Some(n)) => blocks
                .zip(n.out.par_chunks_mut(per * oc))
                .zip(n.save_mean.par_chunks_mut(per).zip(n.save_rstd.par_chunks_mut(per)))
                .enumerate()
                .for_each(|(t, (((o, x), y), (m, s)))| block(t, o, x, TailOut::Norm(y, m, s))),
            (None, None) => blocks.enumerate().for_each(|(t, (o, x))| block(t, o, x, TailOut::None)),
        }
        return;
    }
    match bias {
        // One thread or a deeper product: seed every row with the bias and let gemm accumulate onto it, which
        // saves a pass over `out` compared with adding the bias after.
        Some(bias) => {
            for row in out.chunks_exact_mut(oc) {
                row.copy_from_slice(bias);
            }
            product(out, inp, b, true, true);
        }
        None => product(out, inp, b, false, true),
    }
    if let Some(r) = residual {
        super::add::add_assign(out, r);
    }
    if let Some(a) = act {
        super::linear_act::epilogue_par(a, out, keep);
    }
    if let Some(n) = norm {
        super::layer_norm::layer_norm_forward(n.out, n.save_mean, n.save_rstd, out, n.weight, n.bias, b, oc, n.eps);
    }
}

/// Linear layer backward.
///
/// dout: [B, OC], inp: [B, C], weight: [OC, C]; dinp: [B, C] (overwritten; None when the input needs no
/// gradient, e.g. the first layer), dweight: [OC, C] (accumulated: `+= dout^T @ inp`), dbias: [OC]
/// (accumulated: `+=` column sums of dout; None when the layer has no bias).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    b: usize,
    c: usize,
    oc: usize,
) {
    check_backward_shapes(dinp.as_deref(), dweight, dbias.as_deref(), dout.len(), inp, weight, b, c, oc);
    if let Some(dinp) = dinp {
        // dinp[B, C] = dout[B, OC] @ weight[OC, C]
        gemm_strided(b, c, oc, dinp, c, 1, false, dout, oc, 1, weight, c, 1);
    }
    // dweight[OC, C] += dout^T[OC, B] @ inp[B, C]; dout^T element (o, i) is dout[i * OC + o].
    gemm_strided(oc, c, b, dweight, c, 1, true, dout, 1, oc, inp, c, 1);
    if let Some(dbias) = dbias {
        bias_add_backward(dbias, dout, b, oc);
    }
}

/// The shape contract of [`linear_backward`] and [`linear_backward_split`], checked once for both.
#[allow(clippy::too_many_arguments)]
fn check_backward_shapes<T>(
    dinp: Option<&[T]>,
    dweight: &[T],
    dbias: Option<&[T]>,
    dout_len: usize,
    inp: &[T],
    weight: &[T],
    b: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(dout_len, b * oc, "linear_backward: dout must be [B, OC]");
    assert_eq!(inp.len(), b * c, "linear_backward: inp must be [B, C]");
    assert_eq!(weight.len(), oc * c, "linear_backward: weight must be [OC, C]");
    assert_eq!(dweight.len(), oc * c, "linear_backward: dweight must be [OC, C]");
    assert!(dinp.is_none_or(|d| d.len() == b * c), "linear_backward: dinp must be [B, C]");
    assert!(dbias.is_none_or(|d| d.len() == oc), "linear_backward: dbias must be [OC]");
}

/// Fewest rows for which [`linear_backward_split`] splits the batch: the weight gradient's depth is the row
/// count, and `gemm` runs a long, thin product (e.g. W3's 3,200 x 128 -> 128) better as two halves on two
/// threads than split across its output blocks.
pub const SPLIT_MIN_ROWS: usize = 1024;

/// Length of the `scratch` [`linear_backward_split`] needs for a layer of `rows` rows, `c` inputs and `oc`
/// outputs: `OC * (C + 1)` when it splits (the second half's weight and bias gradients), 0 otherwise.
pub fn linear_backward_split_scratch_len(rows: usize, c: usize, oc: usize) -> usize {
    if splits_rows(rows, c, oc) {
        oc * (c + 1)
    } else {
        0
    }
}

/// Whether [`linear_backward_split`] splits a layer of `rows` rows, `c` inputs and `oc` outputs.
pub(crate) fn splits_rows(rows: usize, c: usize, oc: usize) -> bool {
    rows >= SPLIT_MIN_ROWS && rows.saturating_mul(c).saturating_mul(oc) >= GEMM_PAR_MIN_FLOPS
}

/// The output gradient a linear backward reads: as it is, or an activation's output gradient (`dout`, [B, OC])
/// that is first turned into the pre-activation gradient in place from what the fused forward kept
/// (`ops::linear_act`).
pub(crate) enum OutGrad<'a, T> {
    /// The linear layer's own output gradient.
    Ready(&'a [T]),
    /// `dout * act'(pre)` is computed in place (rows by rows, right before they are multiplied).
    ThroughAct { dout: &'a mut [T], kept: &'a [T], act: Activation },
}

impl<'a, T: Float> OutGrad<'a, T> {
    fn len(&self) -> usize {
        match self {
            OutGrad::Ready(d) => d.len(),
            OutGrad::ThroughAct { dout, .. } => dout.len(),
        }
    }

    /// The first `mid` elements and the rest.
    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            OutGrad::Ready(d) => {
                let (x, y) = d.split_at(mid);
                (OutGrad::Ready(x), OutGrad::Ready(y))
            }
            OutGrad::ThroughAct { dout, kept, act } => {
                let ((d0, d1), (k0, k1)) = (dout.split_at_mut(mid), kept.split_at(mid));
                (OutGrad::ThroughAct { dout: d0, kept: k0, act }, OutGrad::ThroughAct { dout: d1, kept: k1, act })
            }
        }
    }

    /// The gradient to multiply, converted on the calling thread (`parallel`: or across the pool) first.
    fn ready(self, parallel: bool) -> &'a [T] {
        match self {
            OutGrad::Ready(d) => d,
            OutGrad::ThroughAct { dout, kept, act } => {
                if parallel {
                    super::linear_act::grad_in_place(act, dout, kept);
                } else {
                    super::linear_act::grad_in_place_serial(act, dout, kept);
                }
                dout
            }
        }
    }
}

/// [`linear_backward`] with the rows in two fixed halves on two rayon tasks (from [`SPLIT_MIN_ROWS`] rows and
/// [`GEMM_PAR_MIN_FLOPS`] multiply-adds; otherwise it is [`linear_backward`]): each half computes its rows of
/// `dinp` and its part of the weight gradient, the first onto `dweight`, the second into `scratch` (at least
/// [`linear_backward_split_scratch_len`] long), which is then added. The halves do not depend on the thread
/// count, so neither does the result. Same arguments and contract as [`linear_backward`].
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_split<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    scratch: &mut [T],
    b: usize,
    c: usize,
    oc: usize,
) {
    backward_split(dinp, dweight, dbias, OutGrad::Ready(dout), inp, weight, scratch, b, c, oc);
}

/// Widest layer whose split backward sums the bias gradient while converting an [`OutGrad::ThroughAct`]
/// (the sums live on the stack).
const FUSED_SUMS_MAX: usize = 1024;

/// [`linear_backward_split`] of an [`OutGrad`]: with [`OutGrad::ThroughAct`], each half first converts its
/// rows of the output gradient (so they are in cache for its products), summing its bias gradient on the way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_split<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    mut dbias: Option<&mut [T]>,
    dout: OutGrad<'_, T>,
    inp: &[T],
    weight: &[T],
    scratch: &mut [T],
    b: usize,
    c: usize,
    oc: usize,
) {
    if !splits_rows(b, c, oc) {
        linear_backward(dinp, dweight, dbias, dout.ready(true), inp, weight, b, c, oc);
        return;
    }
    check_backward_shapes(dinp.as_deref(), dweight, dbias.as_deref(), dout.len(), inp, weight, b, c, oc);
    let (dout0, dout1) = dout.split_at(b / 2 * oc);
    assert!(scratch.len() >= oc * (c + 1), "linear_backward_split: scratch must hold OC * (C + 1)");
    let (part, part_bias) = scratch[..oc * (c + 1)].split_at_mut(oc * c);
    let (dbias0, dbias1) = match dbias.as_deref_mut() {
        Some(d) => {
            part_bias.fill(T::ZERO);
            (Some(d), Some(&mut *part_bias))
        }
        None => (None, None),
    };
    let h = b / 2;
    let (inp0, inp1) = inp.split_at(h * c);
    let (dinp0, dinp1) = match dinp {
        Some(d) => {
            let (x, y) = d.split_at_mut(h * c);
            (Some(x), Some(y))
        }
        None => (None, None),
    };
    // One half: dinp rows = dout rows @ weight; dst (+)= dout rows^T @ inp rows. With two threads each product
    // runs on its task's thread: letting gemm split a half again nested its rayon jobs inside the two halves'
    // (about 4% slower over W3's layers, three interleaved runs), since both threads are already busy. With
    // more threads gemm may use the rest. gemm splits outputs, never the depth, so the bits are the same.
    let nested = rayon::current_num_threads() > 2;
    // The bias gradient's column sums too, while the half's rows are still in cache from the products.
    let half = |dinp: Option<&mut [T]>,
                (dst, dst_bias): (&mut [T], Option<&mut [T]>),
                accumulate: bool,
                dout: OutGrad<'_, T>,
                inp: &[T],
                rows: usize| {
        let mut dst_bias = dst_bias;
        let dout = match (dout, dst_bias.as_deref_mut()) {
            // The bias gradient's column sums in the same pass as the conversion through the activation
            // (the same sums in the same order as `bias_add_backward_serial`'s).
            (OutGrad::ThroughAct { dout, kept, act }, Some(db)) if oc <= FUSED_SUMS_MAX => {
                let mut sums = [T::ZERO; FUSED_SUMS_MAX];
                super::linear_act::grad_in_place_serial_sums(act, dout, kept, &mut sums[..oc]);
                for (d, &s) in db.iter_mut().zip(&sums[..oc]) {
                    *d += s;
                }
                dst_bias = None;
                &*dout
            }
            (dout, _) => dout.ready(false),
        };
        let product = |m, n, k, dst: &mut [T], drs, acc, lhs: Mat<'_, T>, rhs: Mat<'_, T>| {
            super::gemm::gemm_strided(m, n, k, dst, drs, 1, acc, lhs, rhs, T::ONE, nested)
        };
        if let Some(dinp) = dinp {
            product(rows, c, oc, dinp, c, false, Mat::rows(dout, oc), Mat::rows(weight, c));
        }
        product(oc, c, rows, dst, c, accumulate, Mat::rows_t(dout, oc), Mat::rows(inp, c));
        if let Some(db) = dst_bias {
            super::bias_add::bias_add_backward_serial(db, dout, rows, oc);
        }
    };
    rayon::join(
        || half(dinp0, (dweight, dbias0), true, dout0, inp0, h),
        || half(dinp1, (part, dbias1), false, dout1, inp1, b - h),
    );
    for (d, &p) in dweight.iter_mut().zip(part.iter()) {
        *d += p;
    }
    if let Some(dbias) = dbias {
        for (d, &p) in dbias.iter_mut().zip(part_bias.iter()) {
            *d += p;
        }
    }
}

/// Host side of the linear layer on the GPU (cuBLAS + the bias kernels).
#[path = "linear_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Naive f64 reference straight from the definition: out[i, o] = bias[o] + sum_k inp[i, k] * w[o, k].
    fn ref_forward(inp: &[f64], w: &[f64], bias: Option<&[f64]>, b: usize, c: usize, oc: usize) -> Vec<f64> {
        let mut out = vec![0.0; b * oc];
        for i in 0..b {
            for o in 0..oc {
                let mut s = bias.map_or(0.0, |bb| bb[o]);
                for k in 0..c {
                    s += inp[i * c + k] * w[o * c + k];
                }
                out[i * oc + o] = s;
            }
        }
        out
    }

    /// Naive f64 reference gradients: (dinp, dweight, dbias) for the loss sum(dout * out).
    fn ref_backward(
        dout: &[f64],
        inp: &[f64],
        w: &[f64],
        b: usize,
        c: usize,
        oc: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut dinp = vec![0.0; b * c];
        let mut dw = vec![0.0; oc * c];
        let mut db = vec![0.0; oc];
        for i in 0..b {
            for o in 0..oc {
                let g = dout[i * oc + o];
                db[o] += g;
                for k in 0..c {
                    dinp[i * c + k] += g * w[o * c + k];
                    dw[o * c + k] += g * inp[i * c + k];
                }
            }
        }
        (dinp, dw, db)
    }

    #[test]
    fn hand_checked_values() {
        // inp [[1, 2], [3, 4]], weight rows [1, 0], [0, 1], [1, 1], bias [0.5, -1, 2].
        let inp = [1.0f32, 2.0, 3.0, 4.0];
        let w = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let bias = [0.5f32, -1.0, 2.0];
        let mut out = [0.0f32; 6];
        linear_forward(&mut out, &inp, &w, Some(&bias), 2, 2, 3);
        assert_eq!(out, [1.5, 1.0, 5.0, 3.5, 3.0, 9.0]);
        linear_forward(&mut out, &inp, &w, None, 2, 2, 3);
        assert_eq!(out, [1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);

        let dout = [1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0];
        let mut dinp = [9.0f32; 4];
        let mut dw = [0.0f32; 6];
        let mut db = [0.0f32; 3];
        linear_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, 2, 2, 3);
        assert_eq!(dinp, [2.0, 1.0, 0.0, 1.0]);
        assert_eq!(dw, [1.0, 2.0, 3.0, 4.0, 1.0, 2.0]);
        assert_eq!(db, [1.0, 1.0, 1.0]);
    }

    #[test]
    fn matmul_hand_checked_and_accumulates() {
        // [[1, 2, 3], [4, 5, 6]] @ [[1, 0], [0, 1], [1, 1]] = [[4, 5], [10, 11]]
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut out = [f64::NAN; 4];
        matmul(&mut out, &a, &b, 2, 3, 2, false);
        assert_eq!(out, [4.0, 5.0, 10.0, 11.0]);
        matmul(&mut out, &a, &b, 2, 3, 2, true);
        assert_eq!(out, [8.0, 10.0, 20.0, 22.0]);
        // K = 0: the product is empty, so out becomes 0 (or is left alone when accumulating).
        let mut out = [7.0f32; 4];
        matmul(&mut out, &[], &[], 2, 0, 2, true);
        assert_eq!(out, [7.0; 4]);
        matmul(&mut out, &[], &[], 2, 0, 2, false);
        assert_eq!(out, [0.0; 4]);
    }

    fn check_against_reference(b: usize, c: usize, oc: usize, seed: u64) {
        let inp = round_f32(&uniform(seed, b * c, -1.0, 1.0));
        let w = round_f32(&uniform(seed + 1, oc * c, -1.0, 1.0));
        let bias = round_f32(&uniform(seed + 2, oc, -1.0, 1.0));
        let dout = round_f32(&uniform(seed + 3, b * oc, -1.0, 1.0));
        let want = ref_forward(&inp, &w, Some(&bias), b, c, oc);
        let (want_dinp, want_dw, want_db) = ref_backward(&dout, &inp, &w, b, c, oc);

        // f64 kernel: only reassociation differences.
        let mut out = vec![0.0f64; b * oc];
        linear_forward(&mut out, &inp, &w, Some(&bias), b, c, oc);
        assert_close_scaled("f64 out", &out, &want, 1e-12);
        let (mut dinp, mut dw, mut db) = (vec![0.0f64; b * c], vec![0.0f64; oc * c], vec![0.0f64; oc]);
        linear_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, b, c, oc);
        assert_close_scaled("f64 dinp", &dinp, &want_dinp, 1e-12);
        assert_close_scaled("f64 dweight", &dw, &want_dw, 1e-12);
        assert_close_scaled("f64 dbias", &db, &want_db, 1e-12);

        // f32 kernel: single-precision rounding of long sums.
        let (inp32, w32, bias32, dout32) = (to_f32(&inp), to_f32(&w), to_f32(&bias), to_f32(&dout));
        let mut out = vec![0.0f32; b * oc];
        linear_forward(&mut out, &inp32, &w32, Some(&bias32), b, c, oc);
        assert_close_scaled("f32 out", &out, &want, 1e-5);
        let (mut dinp, mut dw, mut db) = (vec![0.0f32; b * c], vec![0.0f32; oc * c], vec![0.0f32; oc]);
        linear_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout32, &inp32, &w32, b, c, oc);
        assert_close_scaled("f32 dinp", &dinp, &want_dinp, 1e-5);
        assert_close_scaled("f32 dweight", &dw, &want_dw, 1e-5);
        assert_close_scaled("f32 dbias", &db, &want_db, 1e-5);
    }

    #[test]
    fn matches_f64_reference_small() {
        check_against_reference(5, 7, 3, 10);
        check_against_reference(1, 1, 1, 20);
        check_against_reference(17, 33, 9, 30);
    }

    #[test]
    fn matches_f64_reference_on_the_parallel_gemm_path() {
        // 128 * 784 * 512 multiply-adds is far above GEMM_PAR_MIN_FLOPS in all three products.
        const { assert!(128 * 784 * 512 >= GEMM_PAR_MIN_FLOPS) };
        check_against_reference(128, 784, 512, 40);
    }

    #[test]
    fn row_split_forward_matches_reference_and_is_thread_count_independent() {
        // Shapes above GEMM_PAR_MIN_FLOPS with a bias: depth <= 512 takes the per-thread row blocks (W3's
        // qkv, and the 512 boundary), 600 gemm's own split. Every thread count gives the same bits, and the
        // values match the f64 reference.
        for (b, c, oc) in [(3200, 128, 384), (601, 512, 160), (600, 600, 150)] {
            assert!(b * c * oc >= GEMM_PAR_MIN_FLOPS);
            let (inp, w, bias) =
                (uniform(5, b * c, -1.0, 1.0), uniform(6, oc * c, -1.0, 1.0), uniform(7, oc, -1.0, 1.0));
            let want = ref_forward(&inp, &w, Some(&bias), b, c, oc);
            let (inp, w, bias) = (to_f32(&inp), to_f32(&w), to_f32(&bias));
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut out = vec![f32::NAN; b * oc];
                pool.install(|| linear_forward(&mut out, &inp, &w, Some(&bias), b, c, oc));
                out
            };
            let one = run(1);
            assert_close_scaled("row-split forward", &one, &want, 1e-5);
            for threads in [2, 3] {
                let other = run(threads);
                assert!(
                    one.iter().zip(&other).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{b}x{c}->{oc}: {threads} threads"
                );
            }
        }
    }

    #[test]
    fn split_backward_matches_reference_and_is_thread_count_independent() {
        // Above SPLIT_MIN_ROWS the rows run in two halves: the gradients match the f64 reference (dweight and
        // dbias onto nonzero initial gradients: they accumulate), any thread count gives the same bits, and below the
        // threshold it is exactly linear_backward.
        for (b, c, oc) in [(3200, 128, 384), (1025, 96, 200), (300, 64, 32)] {
            let (inp, w, dout) =
                (uniform(8, b * c, -1.0, 1.0), uniform(9, oc * c, -1.0, 1.0), uniform(10, b * oc, -1.0, 1.0));
            let (dw0, db0) = (uniform(11, oc * c, -1.0, 1.0), uniform(12, oc, -1.0, 1.0));
            let (want_dinp, mut want_dw, mut want_db) = ref_backward(&dout, &inp, &w, b, c, oc);
            want_dw.iter_mut().zip(&dw0).for_each(|(a, b)| *a += b);
            want_db.iter_mut().zip(&db0).for_each(|(a, b)| *a += b);
            let (inp, w, dout, dw0, db0) = (to_f32(&inp), to_f32(&w), to_f32(&dout), to_f32(&dw0), to_f32(&db0));
            let run = |threads: usize, split: bool| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (mut dinp, mut dw, mut db) = (vec![f32::NAN; b * c], dw0.clone(), db0.clone());
                let mut scratch = vec![f32::NAN; linear_backward_split_scratch_len(b, c, oc)];
                pool.install(|| {
                    if split {
                        linear_backward_split(
                            Some(&mut dinp),
                            &mut dw,
                            Some(&mut db),
                            &dout,
                            &inp,
                            &w,
                            &mut scratch,
                            b,
                            c,
                            oc,
                        )
                    } else {
                        linear_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, b, c, oc)
                    }
                });
                [dinp, dw, db]
            };
            let one = run(1, true);
            for (name, got, want) in
                [("dinp", &one[0], &want_dinp), ("dweight", &one[1], &want_dw), ("dbias", &one[2], &want_db)]
            {
                assert_close_scaled(name, got, want, 1e-5);
            }
            let bits = |a: &[Vec<f32>; 3], b: &[Vec<f32>; 3]| {
                a.iter().zip(b).all(|(x, y)| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()))
            };
            for threads in [2, 3] {
                assert!(bits(&one, &run(threads, true)), "{b}x{c}->{oc}: 1 vs {threads} threads");
            }
            assert_eq!(linear_backward_split_scratch_len(b, c, oc) > 0, b >= SPLIT_MIN_ROWS);
            if b < SPLIT_MIN_ROWS {
                assert!(bits(&one, &run(1, false)), "below the threshold it is linear_backward");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (b, c, oc) = (3, 4, 5);
        let mut inp = uniform(1, b * c, -1.0, 1.0);
        let mut w = uniform(2, oc * c, -1.0, 1.0);
        let mut bias = uniform(3, oc, -1.0, 1.0);
        let dout = uniform(4, b * oc, -1.0, 1.0);
        let (mut dinp, mut dw, mut db) = (vec![0.0; b * c], vec![0.0; oc * c], vec![0.0; oc]);
        linear_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, b, c, oc);

        let loss = |inp: &[f64], w: &[f64], bias: &[f64]| {
            let mut out = vec![0.0; b * oc];
            linear_forward(&mut out, inp, w, Some(bias), b, c, oc);
            dot(&dout, &out)
        };
        let (w0, bias0) = (w.clone(), bias.clone());
        check_grad("dinp", &mut inp, &dinp, |x| loss(x, &w0, &bias0));
        let inp0 = inp.clone();
        check_grad("dweight", &mut w, &dw, |x| loss(&inp0, x, &bias0));
        check_grad("dbias", &mut bias, &db, |x| loss(&inp0, &w0, x));
    }

    #[test]
    fn parameter_gradients_accumulate_and_input_gradient_overwrites() {
        let (b, c, oc) = (4, 6, 3);
        let inp = uniform(5, b * c, -1.0, 1.0);
        let w = uniform(6, oc * c, -1.0, 1.0);
        let dout = uniform(7, b * oc, -1.0, 1.0);
        let (mut dinp, mut dw, mut db) = (vec![0.0; b * c], vec![0.0; oc * c], vec![0.0; oc]);
        linear_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, b, c, oc);
        let (dinp1, dw1, db1) = (dinp.clone(), dw.clone(), db.clone());
        linear_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, b, c, oc);
        assert_close("dinp overwritten", &dinp, &dinp1, 0.0, 0.0);
        let twice = |v: &[f64]| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
        assert_close("dweight doubled", &dw, &twice(&dw1), 1e-15, 1e-15);
        assert_close("dbias doubled", &db, &twice(&db1), 1e-15, 1e-15);
        // Without dinp / dbias only dweight moves.
        linear_backward(None, &mut dw, None, &dout, &inp, &w, b, c, oc);
        assert_close("dweight tripled", &dw, &dw1.iter().map(|x| 3.0 * x).collect::<Vec<_>>(), 1e-14, 1e-15);
        assert_close("dbias untouched", &db, &twice(&db1), 0.0, 0.0);
    }
}
