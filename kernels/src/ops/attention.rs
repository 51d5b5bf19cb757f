//! Multi-head scaled dot-product attention (PyTorch `F.scaled_dot_product_attention` on already-projected
//! heads, no dropout, no additive mask), plus the head split / merge reshapes around it.
//!
//! Per (batch, head): `att = softmax(q @ k^T / sqrt(D))` row-wise, with an optional causal mask (query `i`
//! sees keys `j <= i`; masked probabilities are exactly 0), then `out = att @ v`. Query and key/value
//! lengths are the same `T` (self-attention), which keeps the causal mask the plain lower triangle that
//! PyTorch's `is_causal=True` builds.
//!
//! The products go through the `gemm` crate with strided (copy-free) transposes. The work is split across
//! rayon tasks by (batch, head), and every `gemm` call runs on its task's thread, so each head is computed by
//! the same sequence of operations whatever the thread count: results are bitwise reproducible.
//! With a causal mask the rows are processed in blocks of [`CAUSAL_BLOCK`] queries, each block only
//! multiplying against the keys it can see, which skips most of the masked half of the work.

use rayon::prelude::*;

use super::attention_small as small;
use super::bmm::BATCH_PAR_MIN_FLOPS;
use super::gemm::{gemm_strided, Mat};
use super::par::{rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Queries per block when the causal mask is on: a block of rows `[r0, r1)` only needs keys `[0, r1)`.
/// Smaller blocks skip more masked work but make the `gemm` calls thinner.
pub const CAUSAL_BLOCK: usize = 64;

/// Length of the saved softmax probabilities `att`: [B, H, T, T].
pub fn attention_att_len(b: usize, h: usize, t: usize) -> usize {
    b * h * t * t
}

/// Length of the `scratch` buffer [`attention_backward`] needs: one [T, T] score-gradient matrix per
/// (batch, head), so every rayon task owns its own slice and results do not depend on the thread count.
pub fn attention_backward_scratch_len(b: usize, h: usize, t: usize) -> usize {
    b * h * t * t
}

/// The blocks `[r0, r1)` the `t` rows are processed in: one block without the mask, [`CAUSAL_BLOCK`]-row
/// blocks with it.
fn row_blocks(t: usize, causal: bool) -> impl Iterator<Item = (usize, usize)> {
    let step = if causal { CAUSAL_BLOCK } else { t.max(1) };
    (0..t).step_by(step).map(move |r0| (r0, (r0 + step).min(t)))
}

/// The [`row_blocks`] of the first `nq` query rows only (each block cut at `nq`).
fn query_blocks(t: usize, nq: usize, causal: bool) -> impl Iterator<Item = (usize, usize)> {
    row_blocks(t, causal).filter(move |&(r0, _)| r0 < nq).map(move |(r0, r1)| (r0, r1.min(nq)))
}

/// Whether (batch, head) pairs are worth spreading across rayon threads: more than one of them, and enough
/// multiply-adds in total (about `B*H*T*T*D` per product) to pay for the fork/join.
fn split_heads_across_threads(bh: usize, t: usize, d: usize) -> bool {
    bh > 1 && bh.saturating_mul(t).saturating_mul(t).saturating_mul(d) >= BATCH_PAR_MIN_FLOPS
}

/// `1 / sqrt(D)`, computed in f64 and rounded once, like PyTorch's default `scale`.
pub(crate) fn default_scale<T: Float>(d: usize) -> T {
    T::from_f64(1.0 / (d as f64).sqrt())
}

/// The q, k, v rows of one (batch, head): row `i` of q is `q[i * rs .. i * rs + D]` (and so for k, v). With
/// the `[B, H, T, D]` layout `rs = D`; read straight out of a fused `[B, T, 3, H, D]` projection, `rs = 3HD`.
#[derive(Clone, Copy)]
struct HeadInputs<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    rs: usize,
}

/// Softmax in place over rows `r0..r1` of the `[T, T]` scores `att`, over the keys each row can see; the rest
/// of a causal row (masked, or never written by a block's product) becomes exactly 0.
fn softmax_block<T: Float>(att: &mut [T], t: usize, r0: usize, r1: usize, causal: bool) {
    if causal {
        for i in r0..r1 {
            let row = &mut att[i * t..(i + 1) * t];
            let (seen, masked) = row.split_at_mut(i + 1);
            super::softmax::softmax_in_place(seen);
            masked.fill(T::ZERO);
        }
    } else {
        // Every key is visible: the whole block of rows in one call.
        super::softmax::softmax_rows_in_place(&mut att[r0 * t..r1 * t], t);
    }
}

/// Softmax backward in place over rows `r0..r1` of `ds` (holding dP = dout @ v^T on entry, with the saved
/// probabilities `att`): dS = P * (dP - sum_j P dP), times the score `scale` so the products after it need no
/// extra pass. Masked (and never written) entries become exactly 0, which the key-side products rely on.
fn softmax_backward_block<T: Float>(ds: &mut [T], att: &[T], t: usize, r0: usize, r1: usize, causal: bool, scale: T) {
    if causal {
        for i in r0..r1 {
            let p = &att[i * t..(i + 1) * t];
            let row = &mut ds[i * t..(i + 1) * t];
            let (seen, masked) = row.split_at_mut(i + 1);
            super::softmax::softmax_backward_in_place(seen, &p[..i + 1], scale);
            masked.fill(T::ZERO);
        }
    } else {
        // Every key is visible: the whole block of rows in one call.
        let rows = r0 * t..r1 * t;
        super::softmax::softmax_rows_backward_in_place(&mut ds[rows.clone()], &att[rows], t, scale);
    }
}

/// [`head_forward`] for a head that [`small::fits`] (f32 on AVX-512): the two products through [`small::matmul_packed`]
/// (k^T, then v, packed on the stack); without a mask the scores and the softmax are one kernel
/// ([`small::scores_softmax_packed`]). With the causal mask the scores are computed for every key and the
/// masked ones dropped by the softmax; the product with v then adds exact zeros for them.
#[allow(clippy::too_many_arguments)]
fn head_forward_small<T: Float>(
    out: &mut [T],
    out_rs: usize,
    att: &mut [T],
    x: HeadInputs<'_, T>,
    t: usize,
    nq: usize,
    d: usize,
    causal: bool,
    ws: &mut small::HeadScratch<T>,
) {
    let pk = &mut ws.pk;
    pk.transpose_of(x.k, x.rs, d, t);
    let (q, scale) = (small::Strided { data: x.q, rs: x.rs, cs: 1 }, default_scale::<T>(d));
    if causal {
        small::matmul_packed(att, t, nq, t, q, pk, scale);
        softmax_block(att, t, 0, nq, causal);
    } else {
        // The scores never leave the registers before the softmax (bitwise the two steps above).
        small::scores_softmax_packed(att, t, nq, t, q, pk, scale);
    }
    let p = small::Strided { data: att, rs: t, cs: 1 };
    if small::reads_in_place(d) {
        // Rows of whole vectors need no padding: v is read where it is.
        small::matmul_in_place(out, out_rs, nq, d, p, x.v, x.rs, t, T::ONE);
    } else {
        pk.rows_of(x.v, x.rs, t, d);
        small::matmul_packed(out, out_rs, nq, d, p, pk, T::ONE);
    }
}

/// [`head_backward`] for a head that [`small::fits`] (which leaves the caller's scratch untouched): dP =
/// dout @ v^T and the softmax backward (one kernel without a mask, [`small::softmax_backward_packed`]), then
/// dq = dS @ k, dv = P^T @ dout and dk = dS^T @ q, each right-hand side packed on the stack in turn. The
/// transposed left-hand sides are read in place (column stride `T`).
#[allow(clippy::too_many_arguments)]
fn head_backward_small<T: Float>(
    mut g: HeadGrads<'_, T>,
    dout: &[T],
    dout_rs: usize,
    x: HeadInputs<'_, T>,
    att: &[T],
    t: usize,
    nq: usize,
    d: usize,
    causal: bool,
    ws: &mut small::HeadScratch<T>,
) {
    use small::{matmul_packed, Strided};
    // The score gradient stays in the thread's workspace (in cache) instead of going through the
    // [B, H, T, T] scratch. Its first `nq` rows, the only ones read, are written first.
    let small::HeadScratch { pk, ds } = ws;
    let ds = &mut ds[..t * t];
    pk.transpose_of(x.v, x.rs, d, t);
    let dout_rows = Strided { data: dout, rs: dout_rs, cs: 1 };
    if causal {
        matmul_packed(ds, t, nq, t, dout_rows, pk, T::ONE);
        softmax_backward_block(ds, att, t, 0, nq, causal, default_scale::<T>(d));
    } else {
        // dP never leaves the registers before the softmax backward (bitwise the two steps above).
        small::softmax_backward_packed(ds, t, nq, t, dout_rows, pk, att, t, default_scale::<T>(d));
    }
    for which in [0, 2, 1] {
        // The right-hand side, its row stride, its rows (the inner dimension), and the left-hand side.
        let (rhs, rhs_rs, inner, lhs): (&[T], usize, usize, &[T]) = match which {
            0 => (x.k, x.rs, t, &*ds),
            2 => (dout, dout_rs, nq, att),
            _ => (x.q, x.rs, nq, &*ds),
        };
        // dq reads dS by rows (its first nq); dv and dk read P and dS by columns, over the first nq queries.
        let (a, m) = if which == 0 {
            (Strided { data: lhs, rs: t, cs: 1 }, nq)
        } else {
            (Strided { data: lhs, rs: 1, cs: t }, t)
        };
        let (dst, dst_rs) = g.rows(which, 0, d);
        if small::reads_in_place(d) {
            // Rows of whole vectors need no padding: the right-hand side is read where it is.
            small::matmul_in_place(dst, dst_rs, m, d, a, rhs, rhs_rs, inner, T::ONE);
        } else {
            pk.rows_of(rhs, rhs_rs, inner, d);
            matmul_packed(dst, dst_rs, m, d, a, pk, T::ONE);
        }
    }
    g.zero_rows(0, nq, t, d);
}

/// Attention forward for one (batch, head): q, k, v as [`HeadInputs`]; `out` row `i` at `out[i * out_rs..]`
/// (D elements written per row); att: [T, T]. Only the first `nq` query rows of `out` and `att` are written.
#[allow(clippy::too_many_arguments)]
fn head_forward<T: Float>(
    out: &mut [T],
    out_rs: usize,
    att: &mut [T],
    x: HeadInputs<'_, T>,
    t: usize,
    nq: usize,
    d: usize,
    causal: bool,
    ws: &mut small::HeadScratch<T>,
) {
    if small::fits::<T>(t, d) {
        return head_forward_small(out, out_rs, att, x, t, nq, d, causal, ws);
    }
    let scale = default_scale::<T>(d);
    for (r0, r1) in query_blocks(t, nq, causal) {
        // Keys this block of queries can see.
        let kn = if causal { r1 } else { t };
        // att[r0..r1, 0..kn] = scale * q[r0..r1] @ k[0..kn]^T (the scale rides on gemm's product factor).
        gemm_strided(
            r1 - r0,
            kn,
            d,
            &mut att[r0 * t..],
            t,
            1,
            false,
            Mat { data: &x.q[r0 * x.rs..], rs: x.rs, cs: 1 },
            Mat { data: x.k, rs: 1, cs: x.rs },
            scale,
            false,
        );
        // Softmax in place over the visible keys, while the scores are still in cache.
        softmax_block(att, t, r0, r1, causal);
        // out[r0..r1] = att[r0..r1, 0..kn] @ v[0..kn]
        gemm_strided(
            r1 - r0,
            d,
            kn,
            &mut out[r0 * out_rs..],
            out_rs,
            1,
            false,
            Mat { data: &att[r0 * t..], rs: t, cs: 1 },
            Mat { data: x.v, rs: x.rs, cs: 1 },
            T::ONE,
            false,
        );
    }
}

/// Multi-head scaled dot-product attention forward (overwrites `out` and `att`):
/// `att = softmax(q @ k^T / sqrt(D))` (lower-triangular when `causal`), `out = att @ v`, per (batch, head).
///
/// q, k, v, out: [B, H, T, D] (query and key/value lengths are both `T`); att: [B, H, T, T], the softmax
/// probabilities saved for [`attention_backward`] (see [`attention_att_len`]). `D` must be at least 1.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Float>(
    out: &mut [T],
    att: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) {
    let (td, tt) = (t * d, t * t);
    assert!(d > 0, "attention_forward: head size D must be at least 1");
    assert_eq!(out.len(), b * h * td, "attention_forward: out must be [B, H, T, D]");
    assert_eq!(att.len(), b * h * tt, "attention_forward: att must be [B, H, T, T]");
    assert_eq!(q.len(), b * h * td, "attention_forward: q must be [B, H, T, D]");
    assert_eq!(k.len(), b * h * td, "attention_forward: k must be [B, H, T, D]");
    assert_eq!(v.len(), b * h * td, "attention_forward: v must be [B, H, T, D]");
    if t == 0 {
        return;
    }
    let per_head = |ws: &mut small::HeadScratch<T>, (i, (out_h, att_h)): (usize, (&mut [T], &mut [T]))| {
        let s = i * td..(i + 1) * td;
        let x = HeadInputs { q: &q[s.clone()], k: &k[s.clone()], v: &v[s], rs: d };
        head_forward(out_h, d, att_h, x, t, t, d, causal, ws);
    };
    if split_heads_across_threads(b * h, t, d) {
        out.par_chunks_mut(td).zip(att.par_chunks_mut(tt)).enumerate().for_each_init(small::HeadScratch::new, per_head);
    } else {
        let mut ws = small::HeadScratch::new();
        out.chunks_mut(td).zip(att.chunks_mut(tt)).enumerate().for_each(|item| per_head(&mut ws, item));
    }
}

/// Where one (batch, head) writes dq, dk, dv: three `[T, D]` buffers, or the q / k / v slots of one fused
/// `[T, 3, H, D]` gradient (row stride `rs`, slot offsets `off`), written in turn.
enum HeadGrads<'a, T> {
    Split { dq: &'a mut [T], dk: &'a mut [T], dv: &'a mut [T] },
    Fused { buf: &'a mut [T], off: [usize; 3], rs: usize },
}

impl<T> HeadGrads<'_, T> {
    /// Rows `r0..` of gradient `which` (0 = q, 1 = k, 2 = v) and their row stride.
    fn rows(&mut self, which: usize, r0: usize, d: usize) -> (&mut [T], usize) {
        match self {
            HeadGrads::Split { dq, dk, dv } => {
                let buf: &mut [T] = [dq, dk, dv].into_iter().nth(which).expect("0..3");
                (&mut buf[r0 * d..], d)
            }
            HeadGrads::Fused { buf, off, rs } => (&mut buf[off[which] + r0 * *rs..], *rs),
        }
    }

    /// Writes 0 into rows `r0..r1` (`D` elements each) of gradient `which`.
    fn zero_rows(&mut self, which: usize, r0: usize, r1: usize, d: usize)
    where
        T: crate::Float,
    {
        if r0 >= r1 {
            return;
        }
        let (buf, rs) = self.rows(which, r0, d);
        for i in 0..r1 - r0 {
            buf[i * rs..i * rs + d].fill(T::ZERO);
        }
    }
}

/// Attention backward for one (batch, head): `dout` row `i` at `dout[i * dout_rs..]`; q, k, v as
/// [`HeadInputs`]; att: [T, T] (saved probabilities); ds: [T, T] scratch. Only the first `nq` queries
/// contribute (their rows of `dout` and `att` are read); dq's other rows are written as 0.
#[allow(clippy::too_many_arguments)]
fn head_backward<T: Float>(
    mut g: HeadGrads<'_, T>,
    ds: &mut [T],
    dout: &[T],
    dout_rs: usize,
    x: HeadInputs<'_, T>,
    att: &[T],
    t: usize,
    nq: usize,
    d: usize,
    causal: bool,
    ws: &mut small::HeadScratch<T>,
) {
    if small::fits::<T>(t, d) {
        return head_backward_small(g, dout, dout_rs, x, att, t, nq, d, causal, ws);
    }
    let scale = default_scale::<T>(d);
    for (r0, r1) in query_blocks(t, nq, causal) {
        let kn = if causal { r1 } else { t };
        // dP[r0..r1, 0..kn] = dout[r0..r1] @ v[0..kn]^T, into the scratch.
        gemm_strided(
            r1 - r0,
            kn,
            d,
            &mut ds[r0 * t..],
            t,
            1,
            false,
            Mat { data: &dout[r0 * dout_rs..], rs: dout_rs, cs: 1 },
            Mat { data: x.v, rs: 1, cs: x.rs },
            T::ONE,
            false,
        );
        softmax_backward_block(ds, att, t, r0, r1, causal, scale);
        // dq[r0..r1] = dS[r0..r1, 0..kn] @ k[0..kn]
        let (dq, dq_rs) = g.rows(0, r0, d);
        gemm_strided(
            r1 - r0,
            d,
            kn,
            dq,
            dq_rs,
            1,
            false,
            Mat { data: &ds[r0 * t..], rs: t, cs: 1 },
            Mat { data: x.k, rs: x.rs, cs: 1 },
            T::ONE,
            false,
        );
    }
    g.zero_rows(0, nq, t, d);
    // Key-side gradients by blocks of key columns [c0, c1): only queries i >= c0 can see those keys (and
    // only the first nq queries count).
    for (c0, c1) in row_blocks(t, causal) {
        let qs = if causal { c0 } else { 0 };
        if qs >= nq {
            // No counted query sees these keys.
            g.zero_rows(1, c0, c1, d);
            g.zero_rows(2, c0, c1, d);
            continue;
        }
        // dv[c0..c1] = P[qs..nq, c0..c1]^T @ dout[qs..nq]; dk[c0..c1] = dS[qs..nq, c0..c1]^T @ q[qs..nq].
        let sources: [(usize, &[T], &[T], usize); 2] = [(2, att, dout, dout_rs), (1, &*ds, x.q, x.rs)];
        for (which, probs, rhs, rhs_rs) in sources {
            let (dst, dst_rs) = g.rows(which, c0, d);
            gemm_strided(
                c1 - c0,
                d,
                nq - qs,
                dst,
                dst_rs,
                1,
                false,
                Mat { data: &probs[qs * t + c0..], rs: 1, cs: t },
                Mat { data: &rhs[qs * rhs_rs..], rs: rhs_rs, cs: 1 },
                T::ONE,
                false,
            );
        }
    }
}

/// Multi-head scaled dot-product attention backward (overwrites `dq`, `dk`, `dv` and `scratch`).
///
/// dout, q, k, v, dq, dk, dv: [B, H, T, D]; att: [B, H, T, T], the probabilities saved by
/// [`attention_forward`] with the same `causal`; scratch: [B, H, T, T] (see
/// [`attention_backward_scratch_len`]), contents ignored.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    att: &[T],
    scratch: &mut [T],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) {
    let (td, tt) = (t * d, t * t);
    assert!(d > 0, "attention_backward: head size D must be at least 1");
    for (buf, name) in [(&*dq, "dq"), (&*dk, "dk"), (&*dv, "dv"), (dout, "dout"), (q, "q"), (k, "k"), (v, "v")] {
        assert_eq!(buf.len(), b * h * td, "attention_backward: {name} must be [B, H, T, D]");
    }
    assert_eq!(att.len(), b * h * tt, "attention_backward: att must be [B, H, T, T]");
    assert_eq!(scratch.len(), attention_backward_scratch_len(b, h, t), "attention_backward: scratch length");
    if t == 0 {
        return;
    }
    type Item<'a, T> = (usize, (((&'a mut [T], &'a mut [T]), &'a mut [T]), &'a mut [T]));
    let per_head = |ws: &mut small::HeadScratch<T>, (i, (((dq, dk), dv), ds)): Item<'_, T>| {
        let s = i * td..(i + 1) * td;
        let g = HeadGrads::Split { dq, dk, dv };
        let att_h = &att[i * tt..(i + 1) * tt];
        let x = HeadInputs { q: &q[s.clone()], k: &k[s.clone()], v: &v[s.clone()], rs: d };
        head_backward(g, ds, &dout[s], d, x, att_h, t, t, d, causal, ws);
    };
    if split_heads_across_threads(b * h, t, d) {
        dq.par_chunks_mut(td)
            .zip(dk.par_chunks_mut(td))
            .zip(dv.par_chunks_mut(td))
            .zip(scratch.par_chunks_mut(tt))
            .enumerate()
            .for_each_init(small::HeadScratch::new, per_head);
    } else {
        let mut ws = small::HeadScratch::new();
        dq.chunks_mut(td)
            .zip(dk.chunks_mut(td))
            .zip(dv.chunks_mut(td))
            .zip(scratch.chunks_mut(tt))
            .enumerate()
            .for_each(|item| per_head(&mut ws, item));
    }
}

/// Multi-head self-attention straight from a fused projection, without materialising the heads: `qkv` is
/// `[B, T, 3, H, D]` (PyTorch's `qkv(x).reshape(B, T, 3, H, D)`: q, k, v of head `h` at channel offsets
/// `h*D`, `HD + h*D`, `2HD + h*D`), `out` is `[B, T, H*D]` with the heads merged (overwritten); att:
/// [B, H, T, T] (saved for [`attention_fused_backward`]). Equal to split + [`attention_forward`] +
/// [`merge_heads`], minus the copies. Parallel over batch items.
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_forward<T: Float>(
    out: &mut [T],
    att: &mut [T],
    qkv: &[T],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) {
    attention_fused_forward_queries(out, att, qkv, b, h, t, d, causal, t);
}

/// [`attention_fused_forward`] for the first `queries` query rows of every item only (1 ..= T): a layer
/// whose output is read only at its leading tokens (a ViT's last block feeding its class token alone to the
/// head) skips the other rows' scores, softmax and products. Every key and value is still used. Rows
/// `queries..T` of `out` and of each head's `att` are left as they were; rows below are what the full
/// forward writes: bit for bit on the small-head path (each output the same sequence of operations), to
/// rounding on the `gemm` path (gemm picks its kernel by the product's shape).
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_forward_queries<T: Float>(
    out: &mut [T],
    att: &mut [T],
    qkv: &[T],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
    queries: usize,
) {
    assert!(queries <= t, "attention_fused_forward: {queries} queries of {t} tokens");
    let (hd, tt) = (h * d, t * t);
    assert!(d > 0, "attention_fused_forward: head size D must be at least 1");
    assert_eq!(qkv.len(), b * t * 3 * hd, "attention_fused_forward: qkv must be [B, T, 3, H, D]");
    assert_eq!(out.len(), b * t * hd, "attention_fused_forward: out must be [B, T, H*D]");
    assert_eq!(att.len(), b * h * tt, "attention_fused_forward: att must be [B, H, T, T]");
    if t == 0 {
        return;
    }
    let per_item = |ws: &mut small::HeadScratch<T>, (i, (out_i, att_i)): (usize, (&mut [T], &mut [T]))| {
        let x_i = &qkv[i * t * 3 * hd..(i + 1) * t * 3 * hd];
        for (hh, att_h) in att_i.chunks_exact_mut(tt).enumerate() {
            let o = hh * d;
            let x = HeadInputs { q: &x_i[o..], k: &x_i[hd + o..], v: &x_i[2 * hd + o..], rs: 3 * hd };
            head_forward(&mut out_i[o..], hd, att_h, x, t, queries, d, causal, ws);
        }
    };
    if split_heads_across_threads(b, t, d * h) {
        let items = out.par_chunks_mut(t * hd).zip(att.par_chunks_mut(h * tt)).enumerate();
        items.for_each_init(small::HeadScratch::new, per_item);
    } else {
        let mut ws = small::HeadScratch::new();
        out.chunks_mut(t * hd).zip(att.chunks_mut(h * tt)).enumerate().for_each(|item| per_item(&mut ws, item));
    }
}

/// Backward of [`attention_fused_forward`]: writes the q / k / v gradients into `dqkv` (`[B, T, 3, H, D]`,
/// overwritten) from `dout` (`[B, T, H*D]`); scratch: [B, H, T, T] (see [`attention_backward_scratch_len`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_backward<T: Float>(
    dqkv: &mut [T],
    dout: &[T],
    qkv: &[T],
    att: &[T],
    scratch: &mut [T],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) {
    attention_fused_backward_queries(dqkv, dout, qkv, att, scratch, b, h, t, d, causal, t);
}

/// Backward of [`attention_fused_forward_queries`]: as [`attention_fused_backward`] with the gradient
/// reaching only the first `queries` rows of every item's output (their `dout` and `att` rows are read, the
/// others never); the q gradient of the other rows is written as 0. Equal to the full backward given a
/// `dout` that is 0 past those rows (its extra terms are exact zeros): bit for bit on the small-head path.
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_backward_queries<T: Float>(
    dqkv: &mut [T],
    dout: &[T],
    qkv: &[T],
    att: &[T],
    scratch: &mut [T],
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
    queries: usize,
) {
    assert!(queries <= t, "attention_fused_backward: {queries} queries of {t} tokens");
    let (hd, tt) = (h * d, t * t);
    assert!(d > 0, "attention_fused_backward: head size D must be at least 1");
    assert_eq!(qkv.len(), b * t * 3 * hd, "attention_fused_backward: qkv must be [B, T, 3, H, D]");
    assert_eq!(dqkv.len(), b * t * 3 * hd, "attention_fused_backward: dqkv must be [B, T, 3, H, D]");
    assert_eq!(dout.len(), b * t * hd, "attention_fused_backward: dout must be [B, T, H*D]");
    assert_eq!(att.len(), b * h * tt, "attention_fused_backward: att must be [B, H, T, T]");
    assert_eq!(scratch.len(), attention_backward_scratch_len(b, h, t), "attention_fused_backward: scratch length");
    if t == 0 {
        return;
    }
    let per_item = |ws: &mut small::HeadScratch<T>, (i, (dx_i, ds_i)): (usize, (&mut [T], &mut [T]))| {
        let x_i = &qkv[i * t * 3 * hd..(i + 1) * t * 3 * hd];
        let dout_i = &dout[i * t * hd..(i + 1) * t * hd];
        for (hh, ds) in ds_i.chunks_exact_mut(tt).enumerate() {
            let o = hh * d;
            let x = HeadInputs { q: &x_i[o..], k: &x_i[hd + o..], v: &x_i[2 * hd + o..], rs: 3 * hd };
            let g = HeadGrads::Fused { buf: &mut *dx_i, off: [o, hd + o, 2 * hd + o], rs: 3 * hd };
            let att_h = &att[(i * h + hh) * tt..(i * h + hh + 1) * tt];
            head_backward(g, ds, &dout_i[o..], hd, x, att_h, t, queries, d, causal, ws);
        }
    };
    if split_heads_across_threads(b, t, d * h) {
        let items = dqkv.par_chunks_mut(t * 3 * hd).zip(scratch.par_chunks_mut(h * tt)).enumerate();
        items.for_each_init(small::HeadScratch::new, per_item);
    } else {
        let mut ws = small::HeadScratch::new();
        let items = dqkv.chunks_mut(t * 3 * hd).zip(scratch.chunks_mut(h * tt)).enumerate();
        items.for_each(|item| per_item(&mut ws, item));
    }
}

/// Runs `f(first_row, rows)` over `buf` split into rows of `row_len`, in parallel when `buf` is large.
fn for_each_rows<T: Send>(buf: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if row_len == 0 {
        return;
    }
    if buf.len() < PAR_MIN_ELEMS {
        f(0, buf);
    } else {
        let per = rows_per_task(row_len);
        buf.par_chunks_mut(per * row_len).enumerate().for_each(|(c, rows)| f(c * per, rows));
    }
}

/// Splits the heads out of the channel axis (overwrites `out`):
/// `out[b, h, t, :] = inp[b, t, h*D .. (h+1)*D]`, i.e. `inp.view(B, T, H, D).transpose(1, 2)`.
///
/// inp: [B, T, H*D], out: [B, H, T, D].
pub fn split_heads<T: Float>(out: &mut [T], inp: &[T], b: usize, h: usize, t: usize, d: usize) {
    assert_eq!(out.len(), b * h * t * d, "split_heads: out must be [B, H, T, D]");
    assert_eq!(inp.len(), b * t * h * d, "split_heads: inp must be [B, T, H*D]");
    let hd = h * d;
    // Rows of out are the contiguous [T, D] heads; each copies T strided D-length runs of inp.
    for_each_rows(out, t * d, |first, heads| {
        for (r, head) in heads.chunks_exact_mut(t * d).enumerate() {
            let (bi, hi) = ((first + r) / h, (first + r) % h);
            for (ti, run) in head.chunks_exact_mut(d).enumerate() {
                let src = (bi * t + ti) * hd + hi * d;
                run.copy_from_slice(&inp[src..src + d]);
            }
        }
    });
}

/// Merges the heads back into the channel axis (overwrites `out`):
/// `out[b, t, h*D .. (h+1)*D] = inp[b, h, t, :]`, i.e. `inp.transpose(1, 2).reshape(B, T, H*D)`.
///
/// inp: [B, H, T, D], out: [B, T, H*D].
pub fn merge_heads<T: Float>(out: &mut [T], inp: &[T], b: usize, h: usize, t: usize, d: usize) {
    assert_eq!(out.len(), b * t * h * d, "merge_heads: out must be [B, T, H*D]");
    assert_eq!(inp.len(), b * h * t * d, "merge_heads: inp must be [B, H, T, D]");
    // Rows of out are the contiguous [H*D] channel vectors of one (batch, position).
    for_each_rows(out, h * d, |first, rows| {
        for (r, row) in rows.chunks_exact_mut(h * d).enumerate() {
            let (bi, ti) = ((first + r) / t, (first + r) % t);
            for (hi, run) in row.chunks_exact_mut(d).enumerate() {
                let src = ((bi * h + hi) * t + ti) * d;
                run.copy_from_slice(&inp[src..src + d]);
            }
        }
    });
}

/// Backward of [`split_heads`]: the inverse permutation, `dinp = merge_heads(dout)` (overwrites `dinp`).
///
/// dout: [B, H, T, D], dinp: [B, T, H*D].
pub fn split_heads_backward<T: Float>(dinp: &mut [T], dout: &[T], b: usize, h: usize, t: usize, d: usize) {
    merge_heads(dinp, dout, b, h, t, d);
}

/// Backward of [`merge_heads`]: the inverse permutation, `dinp = split_heads(dout)` (overwrites `dinp`).
///
/// dout: [B, T, H*D], dinp: [B, H, T, D].
pub fn merge_heads_backward<T: Float>(dinp: &mut [T], dout: &[T], b: usize, h: usize, t: usize, d: usize) {
    split_heads(dinp, dout, b, h, t, d);
}

/// The CUDA kernels of attention (`attention.cu`: the masked softmax and its backward for the product path,
/// and whole small heads in one block, forward and backward).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "attention",
    code: include_str!("attention.cu"),
    kernels: &[
        "attn_softmax_f32",
        "attn_softmax_warp_f32",
        "attn_softmax_backward_f32",
        "attn_softmax_backward_warp_f32",
        "attn_small_forward_f32",
        "attn_small_backward_f32",
        "attn_small_forward_f16",
        "attn_small_backward_f16",
        "attn_small_forward_bf16",
        "attn_small_backward_bf16",
    ],
};

/// Host side of attention on the GPU (cuBLAS + `attention.cu`).
#[path = "attention_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Shapes of one test case.
    #[derive(Clone, Copy, Debug)]
    struct Dims {
        b: usize,
        h: usize,
        t: usize,
        d: usize,
        causal: bool,
    }

    /// Naive f64 reference from the definition: returns (out, att).
    fn ref_forward(q: &[f64], k: &[f64], v: &[f64], s: Dims) -> (Vec<f64>, Vec<f64>) {
        let Dims { b, h, t, d, causal } = s;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0; b * h * t * d];
        let mut att = vec![0.0; b * h * t * t];
        for bh in 0..b * h {
            let x = |buf: &[f64], i: usize, c: usize| buf[(bh * t + i) * d + c];
            for i in 0..t {
                let visible = |j: usize| !causal || j <= i;
                // Scores over the visible keys, then a max-shifted softmax.
                let mut scores = vec![f64::NEG_INFINITY; t];
                for (j, sc) in scores.iter_mut().enumerate().filter(|(j, _)| visible(*j)) {
                    *sc = (0..d).map(|c| x(q, i, c) * x(k, j, c)).sum::<f64>() * scale;
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = (0..t).map(|j| if visible(j) { (scores[j] - max).exp() } else { 0.0 }).collect();
                let z: f64 = e.iter().sum();
                for j in 0..t {
                    let p = e[j] / z;
                    att[(bh * t + i) * t + j] = p;
                    for c in 0..d {
                        out[(bh * t + i) * d + c] += p * x(v, j, c);
                    }
                }
            }
        }
        (out, att)
    }

    /// Naive f64 reference gradients (dq, dk, dv) for the loss sum(dout * out), by the chain rule through
    /// out = P v, P = softmax(S) row-wise, S = scale * q k^T.
    fn ref_backward(dout: &[f64], q: &[f64], k: &[f64], v: &[f64], s: Dims) -> [Vec<f64>; 3] {
        let Dims { b, h, t, d, .. } = s;
        let (_, att) = ref_forward(q, k, v, s);
        let scale = 1.0 / (d as f64).sqrt();
        let n = b * h * t * d;
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for bh in 0..b * h {
            let x = |buf: &[f64], i: usize, c: usize| buf[(bh * t + i) * d + c];
            let p = |i: usize, j: usize| att[(bh * t + i) * t + j];
            for i in 0..t {
                // dP[i, j] = dout[i] . v[j]; dS[i, j] = P[i, j] (dP[i, j] - sum_l P[i, l] dP[i, l]).
                let dp: Vec<f64> = (0..t).map(|j| (0..d).map(|c| x(dout, i, c) * x(v, j, c)).sum()).collect();
                let sum: f64 = (0..t).map(|j| p(i, j) * dp[j]).sum();
                for j in 0..t {
                    let ds = p(i, j) * (dp[j] - sum);
                    for c in 0..d {
                        dv[(bh * t + j) * d + c] += p(i, j) * x(dout, i, c);
                        dq[(bh * t + i) * d + c] += scale * ds * x(k, j, c);
                        dk[(bh * t + j) * d + c] += scale * ds * x(q, i, c);
                    }
                }
            }
        }
        [dq, dk, dv]
    }

    /// Runs the f64 and f32 kernels on the same (f32-representable) inputs and compares every output with
    /// the naive reference. Output and scratch buffers start as NaN to prove they are overwritten.
    fn check_against_reference(s: Dims, seed: u64) {
        let Dims { b, h, t, d, causal } = s;
        let n = b * h * t * d;
        let q = round_f32(&uniform(seed, n, -1.5, 1.5));
        let k = round_f32(&uniform(seed + 1, n, -1.5, 1.5));
        let v = round_f32(&uniform(seed + 2, n, -1.0, 1.0));
        let dout = round_f32(&uniform(seed + 3, n, -1.0, 1.0));
        let (want_out, want_att) = ref_forward(&q, &k, &v, s);
        let want_grads = ref_backward(&dout, &q, &k, &v, s);
        let names = ["dq", "dk", "dv"];

        let mut out = vec![f64::NAN; n];
        let mut att = vec![f64::NAN; attention_att_len(b, h, t)];
        attention_forward(&mut out, &mut att, &q, &k, &v, b, h, t, d, causal);
        assert_close(&format!("{s:?} f64 att"), &att, &want_att, 1e-12, 1e-14);
        assert_close_scaled(&format!("{s:?} f64 out"), &out, &want_out, 1e-12);
        let mut g = [vec![f64::NAN; n], vec![f64::NAN; n], vec![f64::NAN; n]];
        let mut scratch = vec![f64::NAN; attention_backward_scratch_len(b, h, t)];
        let [dq, dk, dv] = &mut g;
        attention_backward(dq, dk, dv, &dout, &q, &k, &v, &att, &mut scratch, b, h, t, d, causal);
        for ((got, want), name) in g.iter().zip(&want_grads).zip(names) {
            assert_close_scaled(&format!("{s:?} f64 {name}"), got, want, 1e-12);
        }

        let (q32, k32, v32, dout32) = (to_f32(&q), to_f32(&k), to_f32(&v), to_f32(&dout));
        let mut out = vec![f32::NAN; n];
        let mut att = vec![f32::NAN; attention_att_len(b, h, t)];
        attention_forward(&mut out, &mut att, &q32, &k32, &v32, b, h, t, d, causal);
        assert_close(&format!("{s:?} f32 att"), &att, &want_att, 1e-5, 1e-7);
        assert_close_scaled(&format!("{s:?} f32 out"), &out, &want_out, 1e-5);
        let mut g = [vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]];
        let mut scratch = vec![f32::NAN; attention_backward_scratch_len(b, h, t)];
        let [dq, dk, dv] = &mut g;
        attention_backward(dq, dk, dv, &dout32, &q32, &k32, &v32, &att, &mut scratch, b, h, t, d, causal);
        for ((got, want), name) in g.iter().zip(&want_grads).zip(names) {
            assert_close_scaled(&format!("{s:?} f32 {name}"), got, want, 1e-5);
        }
    }

    #[test]
    fn hand_checked_values() {
        // B = H = 1, T = 2, D = 1 (scale 1): q = [1, 2], k = [0, 1], v = [10, 20].
        // Row 0 scores [0, 1], row 1 scores [0, 2].
        let (q, k, v) = ([1.0f64, 2.0], [0.0f64, 1.0], [10.0f64, 20.0]);
        let e = std::f64::consts::E;
        let (p0, p1) = (1.0 / (1.0 + e), 1.0 / (1.0 + e * e));
        let mut out = [f64::NAN; 2];
        let mut att = [f64::NAN; 4];
        attention_forward(&mut out, &mut att, &q, &k, &v, 1, 1, 2, 1, false);
        assert_close("att", &att, &[p0, 1.0 - p0, p1, 1.0 - p1], 1e-15, 0.0);
        assert_close("out", &out, &[10.0 * p0 + 20.0 * (1.0 - p0), 10.0 * p1 + 20.0 * (1.0 - p1)], 1e-15, 0.0);
        // Causal: query 0 sees only key 0; query 1 is unchanged.
        attention_forward(&mut out, &mut att, &q, &k, &v, 1, 1, 2, 1, true);
        assert_eq!(att[..2], [1.0, 0.0]);
        assert_close("causal att", &att[2..], &[p1, 1.0 - p1], 1e-15, 0.0);
        assert_eq!(out[0], 10.0);

        // Equal keys give uniform weights, so causal attention returns prefix means of v (D = 4, scale 1/2).
        let (t, d) = (3, 4);
        let q: Vec<f32> = (0..t * d).map(|i| i as f32 * 0.3 - 1.0).collect();
        let k = vec![0.5f32; t * d];
        let v: Vec<f32> = (0..t * d).map(|i| (i % 5) as f32).collect();
        let mut out = vec![f32::NAN; t * d];
        let mut att = vec![f32::NAN; t * t];
        attention_forward(&mut out, &mut att, &q, &k, &v, 1, 1, t, d, true);
        for i in 0..t {
            for c in 0..d {
                let mean = (0..=i).map(|j| v[j * d + c]).sum::<f32>() / (i + 1) as f32;
                assert!((out[i * d + c] - mean).abs() < 1e-6, "prefix mean ({i}, {c}): {} vs {mean}", out[i * d + c]);
            }
        }

        // Backward of the first case with dout = [1, 0]: only row 0 matters. P0 = [p0, 1 - p0], dP = v,
        // dS = P0 * (v - P0 . v); dq[0] = dS . k, dk[j] = dS[j] * q[0], dv[j] = P0[j].
        let (q, k, v) = ([1.0f64, 2.0], [0.0f64, 1.0], [10.0f64, 20.0]);
        let mut att = [0.0; 4];
        attention_forward(&mut [0.0; 2], &mut att, &q, &k, &v, 1, 1, 2, 1, false);
        let (mut dq, mut dk, mut dv, mut scratch) = ([9.0; 2], [9.0; 2], [9.0; 2], [9.0; 4]);
        attention_backward(&mut dq, &mut dk, &mut dv, &[1.0, 0.0], &q, &k, &v, &att, &mut scratch, 1, 1, 2, 1, false);
        let mean = 10.0 * p0 + 20.0 * (1.0 - p0);
        let ds = [p0 * (10.0 - mean), (1.0 - p0) * (20.0 - mean)];
        assert_close("dq", &dq, &[ds[1], 0.0], 1e-14, 1e-14);
        assert_close("dk", &dk, &ds, 1e-14, 1e-14);
        assert_close("dv", &dv, &[p0, 1.0 - p0], 1e-15, 0.0);
    }

    #[test]
    fn matches_f64_reference_small() {
        for causal in [false, true] {
            check_against_reference(Dims { b: 2, h: 3, t: 5, d: 4, causal }, 10);
            check_against_reference(Dims { b: 1, h: 1, t: 1, d: 1, causal }, 20);
            check_against_reference(Dims { b: 1, h: 2, t: 7, d: 3, causal }, 30);
        }
    }

    #[test]
    fn causal_blocks_match_reference() {
        // T spans three CAUSAL_BLOCK row blocks, the last one partial.
        const { assert!(2 * CAUSAL_BLOCK < 150 && 150 < 3 * CAUSAL_BLOCK) };
        check_against_reference(Dims { b: 1, h: 2, t: 150, d: 3, causal: true }, 40);
    }

    #[test]
    fn matches_f64_reference_on_the_parallel_path() {
        let (b, h, t, d) = (4, 4, 50, 32);
        assert!(split_heads_across_threads(b * h, t, d));
        for causal in [false, true] {
            check_against_reference(Dims { b, h, t, d, causal }, 50);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // T = 70 takes the gemm path, T = 50 the small one.
        for (b, h, t, d) in [(2, 4, 70, 16), (4, 4, 50, 32)] {
            assert_eq!(small::fits::<f32>(t, d), t == 50 && small::kernel_available::<f32>());
            thread_count_independent(b, h, t, d);
        }
    }

    fn thread_count_independent(b: usize, h: usize, t: usize, d: usize) {
        assert!(split_heads_across_threads(b * h, t, d));
        let n = b * h * t * d;
        let (q, k, v, dout) = (
            to_f32(&uniform(1, n, -1.0, 1.0)),
            to_f32(&uniform(2, n, -1.0, 1.0)),
            to_f32(&uniform(3, n, -1.0, 1.0)),
            to_f32(&uniform(4, n, -1.0, 1.0)),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (mut out, mut att) = (vec![0.0f32; n], vec![0.0f32; b * h * t * t]);
                attention_forward(&mut out, &mut att, &q, &k, &v, b, h, t, d, true);
                let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
                let mut scratch = vec![0.0f32; attention_backward_scratch_len(b, h, t)];
                attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &att, &mut scratch, b, h, t, d, true);
                [out, att, dq, dk, dv].map(|x| x.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
            })
        };
        assert!(run(1) == run(3), "attention results differ between 1 and 3 threads");
    }

    #[test]
    fn causal_mask_leaves_no_weight_on_future_keys() {
        let (b, h, t, d) = (2, 2, 6, 3);
        let n = b * h * t * d;
        let q = uniform(1, n, -2.0, 2.0);
        let mut k = uniform(2, n, -2.0, 2.0);
        let mut v = uniform(3, n, -2.0, 2.0);
        let (mut out, mut att) = (vec![0.0; n], vec![0.0; b * h * t * t]);
        attention_forward(&mut out, &mut att, &q, &k, &v, b, h, t, d, true);
        for (row_idx, row) in att.chunks_exact(t).enumerate() {
            let i = row_idx % t;
            assert!(row[i + 1..].iter().all(|&p| p == 0.0), "row {row_idx} has weight on future keys: {row:?}");
            assert!(row[..=i].iter().all(|&p| p > 0.0));
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        }
        // Changing the last key and value of every head leaves every earlier query's output bit-identical.
        for bh in 0..b * h {
            for c in 0..d {
                k[(bh * t + t - 1) * d + c] += 10.0;
                v[(bh * t + t - 1) * d + c] -= 7.0;
            }
        }
        let (mut out2, mut att2) = (vec![0.0; n], vec![0.0; b * h * t * t]);
        attention_forward(&mut out2, &mut att2, &q, &k, &v, b, h, t, d, true);
        for bh in 0..b * h {
            let s = bh * t * d..(bh * t + t - 1) * d;
            assert_eq!(out[s.clone()], out2[s], "head {bh}: a past output moved");
        }
        // And the gradient reaching that last key and value from earlier queries is exactly 0.
        let mut dout = vec![0.0; n];
        for bh in 0..b * h {
            dout[bh * t * d..(bh * t + t - 1) * d].fill(1.0);
        }
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let mut scratch = vec![0.0; attention_backward_scratch_len(b, h, t)];
        attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &att2, &mut scratch, b, h, t, d, true);
        for bh in 0..b * h {
            let last = (bh * t + t - 1) * d..(bh * t + t) * d;
            assert!(dk[last.clone()].iter().chain(&dv[last]).all(|&g| g == 0.0));
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (b, h, t, d) = (1, 2, 4, 3);
        let n = b * h * t * d;
        for causal in [false, true] {
            let mut qkv = [uniform(1, n, -1.5, 1.5), uniform(2, n, -1.5, 1.5), uniform(3, n, -1.0, 1.0)];
            let dout = uniform(4, n, -1.0, 1.0);
            let (mut out, mut att) = (vec![0.0; n], vec![0.0; b * h * t * t]);
            let [q, k, v] = &qkv;
            attention_forward(&mut out, &mut att, q, k, v, b, h, t, d, causal);
            let mut g = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
            let mut scratch = vec![0.0; attention_backward_scratch_len(b, h, t)];
            let [dq, dk, dv] = &mut g;
            attention_backward(dq, dk, dv, &dout, q, k, v, &att, &mut scratch, b, h, t, d, causal);

            for (which, name) in ["dq", "dk", "dv"].iter().enumerate() {
                let mut x = qkv[which].clone();
                let others = qkv.clone();
                check_grad(&format!("{name} causal={causal}"), &mut x, &g[which], |x| {
                    let mut args = [&others[0][..], &others[1][..], &others[2][..]];
                    args[which] = x;
                    let (mut out, mut att) = (vec![0.0; n], vec![0.0; b * h * t * t]);
                    attention_forward(&mut out, &mut att, args[0], args[1], args[2], b, h, t, d, causal);
                    dot(&dout, &out)
                });
                qkv[which] = x;
            }
        }
    }

    #[test]
    fn split_and_merge_heads_are_inverse_permutations() {
        let (b, h, t, d) = (2, 3, 4, 5);
        let n = b * h * t * d;
        let inp: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let mut split = vec![f64::NAN; n];
        split_heads(&mut split, &inp, b, h, t, d);
        // Index arithmetic straight from the definition.
        for (bi, hi, ti, c) in (0..b)
            .flat_map(|bi| (0..h).flat_map(move |hi| (0..t).flat_map(move |ti| (0..d).map(move |c| (bi, hi, ti, c)))))
        {
            assert_eq!(split[((bi * h + hi) * t + ti) * d + c], inp[(bi * t + ti) * h * d + hi * d + c]);
        }
        let mut merged = vec![f64::NAN; n];
        merge_heads(&mut merged, &split, b, h, t, d);
        assert_eq!(merged, inp);
        // The backward of each is the other: for a permutation, dinp[src(i)] = dout[i].
        let mut dinp = vec![f64::NAN; n];
        split_heads_backward(&mut dinp, &split, b, h, t, d);
        assert_eq!(dinp, inp);
        let mut dinp = vec![f64::NAN; n];
        merge_heads_backward(&mut dinp, &inp, b, h, t, d);
        assert_eq!(dinp, split);
        // Above PAR_MIN_ELEMS the rayon path gives the same permutation.
        let (b, h, t, d) = (4, 8, 64, 80);
        let n = b * h * t * d;
        assert!(n >= PAR_MIN_ELEMS);
        let inp: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let (mut split, mut merged) = (vec![0.0f32; n], vec![0.0f32; n]);
        split_heads(&mut split, &inp, b, h, t, d);
        assert_eq!(split[((h + 2) * t + 5) * d + 7], inp[(t + 5) * h * d + 2 * d + 7]);
        merge_heads(&mut merged, &split, b, h, t, d);
        assert!(merged == inp);
    }

    /// The fused-layout entry points equal permute + [`attention_forward`] / [`attention_backward`] + merge.
    #[test]
    fn fused_layout_matches_split_heads() {
        for (b, h, t, d, causal) in
            [(2usize, 3usize, 5usize, 4usize, false), (3, 2, 70, 8, true), (8, 4, 50, 32, false)]
        {
            let hd = h * d;
            let qkv = uniform(31, b * t * 3 * hd, -1.0, 1.0);
            let dout = uniform(32, b * t * hd, -1.0, 1.0);
            // Reference: [B, T, 3, H, D] -> [3, B, H, T, D], the plain kernels, heads merged back.
            let mut split = vec![0.0; qkv.len()];
            crate::ops::permute::permute(&mut split, &qkv, &[b, t, 3, h, d], &[2, 0, 3, 1, 4]).unwrap();
            let n = b * h * t * d;
            let (q, k, v) = (&split[..n], &split[n..2 * n], &split[2 * n..]);
            let (mut heads, mut att) = (vec![0.0; n], vec![0.0; b * h * t * t]);
            attention_forward(&mut heads, &mut att, q, k, v, b, h, t, d, causal);
            let mut want = vec![0.0; b * t * hd];
            merge_heads(&mut want, &heads, b, h, t, d);
            let mut dheads = vec![0.0; n];
            split_heads(&mut dheads, &dout, b, h, t, d);
            let mut dsplit = vec![0.0; 3 * n];
            let mut scratch = vec![0.0; attention_backward_scratch_len(b, h, t)];
            {
                let (dq, rest) = dsplit.split_at_mut(n);
                let (dk, dv) = rest.split_at_mut(n);
                attention_backward(dq, dk, dv, &dheads, q, k, v, &att, &mut scratch, b, h, t, d, causal);
            }
            let mut want_dqkv = vec![0.0; qkv.len()];
            crate::ops::permute::permute_backward(&mut want_dqkv, &dsplit, &[b, t, 3, h, d], &[2, 0, 3, 1, 4]).unwrap();

            let (mut out, mut att2) = (vec![f64::NAN; b * t * hd], vec![f64::NAN; b * h * t * t]);
            attention_fused_forward(&mut out, &mut att2, &qkv, b, h, t, d, causal);
            assert_close("fused forward", &out, &want, 1e-12, 1e-12);
            assert_close("fused probabilities", &att2, &att, 1e-12, 1e-12);
            let mut dqkv = vec![f64::NAN; qkv.len()];
            attention_fused_backward(&mut dqkv, &dout, &qkv, &att2, &mut scratch, b, h, t, d, causal);
            assert_close("fused backward", &dqkv, &want_dqkv, 1e-12, 1e-12);
        }
    }

    /// Computing only the first `queries` rows gives the full attention's values on those rows, and the full
    /// backward's gradients when the output gradient is 0 on the other rows: bit for bit on the small path
    /// (T = 50), to f32 rounding on the gemm path (T = 70, and 150 in three causal row blocks), where gemm
    /// picks its kernel by the product's shape.
    #[test]
    fn leading_queries_match_the_full_attention() {
        for (b, h, t, d, causal, queries) in [
            (4usize, 4usize, 50usize, 32usize, false, 1usize),
            (4, 4, 50, 32, true, 3),
            (2, 2, 70, 8, false, 1),
            (2, 2, 150, 8, true, 70),
            (2, 2, 150, 8, true, 1),
        ] {
            let hd = h * d;
            let qkv = to_f32(&uniform(41, b * t * 3 * hd, -1.0, 1.0));
            let mut dout = to_f32(&uniform(42, b * t * hd, -1.0, 1.0));
            for item in dout.chunks_exact_mut(t * hd) {
                item[queries * hd..].fill(0.0);
            }
            let (mut out, mut att) = (vec![0.0f32; b * t * hd], vec![0.0f32; b * h * t * t]);
            attention_fused_forward(&mut out, &mut att, &qkv, b, h, t, d, causal);
            let mut scratch = vec![0.0f32; attention_backward_scratch_len(b, h, t)];
            let mut dqkv = vec![0.0f32; qkv.len()];
            attention_fused_backward(&mut dqkv, &dout, &qkv, &att, &mut scratch, b, h, t, d, causal);

            let (mut out_q, mut att_q) = (vec![f32::NAN; out.len()], vec![f32::NAN; att.len()]);
            attention_fused_forward_queries(&mut out_q, &mut att_q, &qkv, b, h, t, d, causal, queries);
            let exact = small::fits::<f32>(t, d);
            let same = |what: &str, got: &[f32], want: &[f32]| {
                if exact {
                    assert!(got == want, "({t}, {causal}, {queries}): {what} differ");
                } else {
                    let (g, w): (Vec<f64>, Vec<f64>) =
                        (got.iter().map(|&v| v as f64).collect(), want.iter().map(|&v| v as f64).collect());
                    assert_close(what, &g, &w, 1e-5, 1e-6);
                }
            };
            for (got, want) in att_q.chunks_exact(t * t).zip(att.chunks_exact(t * t)) {
                same("probability rows", &got[..queries * t], &want[..queries * t]);
            }
            for (i, (got, want)) in out_q.chunks_exact(t * hd).zip(out.chunks_exact(t * hd)).enumerate() {
                same("output rows", &got[..queries * hd], &want[..queries * hd]);
                assert!(got[queries * hd..].iter().all(|v| v.is_nan()), "item {i}: rows past the queries written");
            }
            let mut dqkv_q = vec![f32::NAN; qkv.len()];
            let mut scratch_q = vec![0.0f32; scratch.len()];
            attention_fused_backward_queries(
                &mut dqkv_q,
                &dout,
                &qkv,
                &att_q,
                &mut scratch_q,
                b,
                h,
                t,
                d,
                causal,
                queries,
            );
            same("q / k / v gradients", &dqkv_q, &dqkv);
        }
    }
}
