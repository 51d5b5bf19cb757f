//! Attention from a few query rows, computed through its q/k/v projection instead of after it.
//!
//! A ViT's last block feeds only its class token to the head, so its attention needs one query row
//! (`ops::attention::attention_fused_forward_queries`), yet its q/k/v projection still projects keys and
//! values on every token: at W3's shapes (50 tokens, width 128, 4 heads of 32) that is 1.6M multiply-adds per
//! sample forward and twice that backward, for an output of 128 numbers. With `z` the projection's input
//! rows, `W_k,h` / `W_v,h` head `h`'s key / value rows of the weight and `q` one query row:
//!
//! - the scores are `s_j = scale * q_h . (W_k,h z_j + b_k,h) = scale * a_h . z_j + const`, with
//!   `a_h = W_k,h^T q_h` (a C-vector); the constant is the same for every key, so the softmax drops it;
//! - the output is `sum_j p_j (W_v,h z_j + b_v,h) = W_v,h zbar_h + b_v,h`, with `zbar_h = sum_j p_j z_j`
//!   (the probabilities sum to 1).
//!
//! So per sample and (query row, head) pair (a "group", `G = NQ * H` of them): one C-vector `a`, T scores,
//! one weighted mean `zbar`: about `NQ * H * 2C(D + T)` multiply-adds instead of `T * C * 2HD` (83k instead
//! of 1.6M at W3's shapes, one query row). The backward is the chain rule through the same steps. The key
//! bias gets no gradient: the scores do not depend on it (the unpruned computation sums `dS_j q` over the
//! keys, which is 0 up to rounding since a softmax gradient sums to 0).
//!
//! The result equals the projection followed by the attention (a different summation order: within float
//! rounding, tested against both in f64 and by finite differences). Every sample is computed on one rayon
//! task with its own products, and the cross-sample sums (weight and bias gradients) run in a fixed order:
//! the bits do not depend on the thread count.
//!
//! Layouts: z `[B, T, C]`; weight `[3HD, C]` (rows: q, k, v, each `[H, D]`, as the fused projection);
//! bias `[3HD]`; out `[B, T, HD]` with only rows `0..NQ` of each sample written (the attention's other rows
//! are never read); `saved` and `scratch` [`PoolShape::state_len`] each.

use rayon::prelude::*;

use super::gemm::{gemm_strided, Mat};
use crate::Float;

/// The sizes of a pooled attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// Samples (B).
    pub samples: usize,
    /// Tokens per sample (T): keys and values.
    pub tokens: usize,
    /// Input features of the projection (C).
    pub width: usize,
    /// Heads (H).
    pub heads: usize,
    /// Head size (D).
    pub head_dim: usize,
    /// Leading query rows computed per sample (NQ).
    pub queries: usize,
}

impl PoolShape {
    fn hd(&self) -> usize {
        self.heads * self.head_dim
    }

    /// (query row, head) pairs per sample.
    fn groups(&self) -> usize {
        self.queries * self.heads
    }

    /// Length of the forward's saved state, and of the backward's scratch: per sample the query rows
    /// (`NQ * HD`), `a` and `zbar` (`G * C` each) and the probabilities (`G * T`).
    pub fn state_len(&self) -> usize {
        let (g, c) = (self.groups(), self.width);
        self.samples * (self.queries * self.hd() + 2 * g * c + g * self.tokens)
    }

    /// Whether the pooled form does fewer multiply-adds than projecting every token, by a margin of two:
    /// `NQ * H * 2C(D + T) * 2 <= T * C * 2HD`.
    pub fn pays(&self) -> bool {
        self.queries > 0 && 2 * self.queries * (self.head_dim + self.tokens) <= self.tokens * self.head_dim
    }
}

/// The regions of a [`PoolShape::state_len`] buffer, each over all samples: `q [B, NQ, HD]`, `a [B, G, C]`,
/// `p [B, G, T]`, `zbar [B, G, C]` (in the backward's scratch: dq, da, ds, dzbar).
struct State<S> {
    q: S,
    a: S,
    p: S,
    zbar: S,
}

fn split_state<'a, T>(buf: &'a mut [T], s: &PoolShape) -> State<&'a mut [T]> {
    assert!(buf.len() >= s.state_len(), "attention_pool: state needs {} elements, got {}", s.state_len(), buf.len());
    let (b, g, c) = (s.samples, s.groups(), s.width);
    let (q, rest) = buf.split_at_mut(b * s.queries * s.hd());
    let (a, rest) = rest.split_at_mut(b * g * c);
    let (p, rest) = rest.split_at_mut(b * g * s.tokens);
    State { q, a, p, zbar: &mut rest[..b * g * c] }
}

fn state_ref<'a, T>(buf: &'a [T], s: &PoolShape) -> State<&'a [T]> {
    assert!(buf.len() >= s.state_len(), "attention_pool: state needs {} elements, got {}", s.state_len(), buf.len());
    let (b, g, c) = (s.samples, s.groups(), s.width);
    let (q, rest) = buf.split_at(b * s.queries * s.hd());
    let (a, rest) = rest.split_at(b * g * c);
    let (p, rest) = rest.split_at(b * g * s.tokens);
    State { q, a, p, zbar: &rest[..b * g * c] }
}

fn check_shapes<T>(s: &PoolShape, out_len: usize, z: &[T], weight: &[T], bias: Option<&[T]>) {
    let (b, t, c, hd) = (s.samples, s.tokens, s.width, s.hd());
    assert!(s.queries >= 1 && s.queries <= t, "attention_pool: {} query rows of {t} tokens", s.queries);
    assert!(s.head_dim > 0, "attention_pool: head size must be at least 1");
    assert_eq!(out_len, b * t * hd, "attention_pool: out must be [B, T, HD]");
    assert_eq!(z.len(), b * t * c, "attention_pool: z must be [B, T, C]");
    assert_eq!(weight.len(), 3 * hd * c, "attention_pool: weight must be [3HD, C]");
    assert!(bias.is_none_or(|x| x.len() == 3 * hd), "attention_pool: bias must be [3HD]");
}

/// `dst (+)= lhs @ rhs` on the calling thread (every product here is small, or one of a sample's).
#[allow(clippy::too_many_arguments)]
fn product<T: Float>(m: usize, n: usize, k: usize, dst: &mut [T], rs: usize, acc: bool, l: Mat<'_, T>, r: Mat<'_, T>) {
    gemm_strided(m, n, k, dst, rs, 1, acc, l, r, T::ONE, false);
}

/// Forward: the first `NQ` rows of every sample's attention output (others untouched), and `saved` for the
/// backward.
pub fn attention_pool_forward<T: Float>(
    out: &mut [T],
    saved: &mut [T],
    z: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    s: PoolShape,
) {
    check_shapes(&s, out.len(), z, weight, bias);
    let (b, t, c, h, d, nq) = (s.samples, s.tokens, s.width, s.heads, s.head_dim, s.queries);
    let (hd, g) = (s.hd(), s.groups());
    if b == 0 {
        return;
    }
    let st = split_state(saved, &s);
    // q rows: q[b, i] = W_q z[b, i] + b_q, one product per query row over every sample.
    for i in 0..nq {
        let lhs = Mat { data: &z[i * c..], rs: t * c, cs: 1 };
        product(b, hd, c, &mut st.q[i * hd..], nq * hd, false, lhs, Mat::rows_t(weight, c));
    }
    if let Some(bias) = bias {
        st.q.chunks_exact_mut(hd).for_each(|q| q.iter_mut().zip(&bias[..hd]).for_each(|(q, &bb)| *q += bb));
    }
    // a[b, i, h] = W_k,h^T q[b, i, h]: per head, over every (sample, query row).
    for hh in 0..h {
        let lhs = Mat { data: &st.q[hh * d..], rs: hd, cs: 1 };
        let w_k = Mat::rows(&weight[(hd + hh * d) * c..], c);
        product(b * nq, c, d, &mut st.a[hh * c..], h * c, false, lhs, w_k);
    }
    // Per sample: the probabilities over its tokens and the weighted means of its rows.
    let scale = super::attention::default_scale::<T>(d);
    let per_sample = st.p.par_chunks_mut(g * t).zip(st.zbar.par_chunks_mut(g * c));
    per_sample.enumerate().for_each(|(bi, (p, zbar))| {
        let (zs, a) = (&z[bi * t * c..(bi + 1) * t * c], &st.a[bi * g * c..(bi + 1) * g * c]);
        // p [G, T] = softmax(scale * a [G, C] @ z^T [C, T]).
        gemm_strided(g, t, c, p, t, 1, false, Mat::rows(a, c), Mat::rows_t(zs, c), scale, false);
        super::softmax::softmax_rows_in_place(p, t);
        // zbar [G, C] = p [G, T] @ z [T, C].
        product(g, c, t, zbar, c, false, Mat::rows(p, t), Mat::rows(zs, c));
    });
    // out[b, i, h] = W_v,h zbar[b, i, h] + b_v,h.
    for i in 0..nq {
        for hh in 0..h {
            let lhs = Mat { data: &st.zbar[(i * h + hh) * c..], rs: nq * h * c, cs: 1 };
            let w_v = Mat::rows_t(&weight[(2 * hd + hh * d) * c..], c);
            product(b, d, c, &mut out[i * hd + hh * d..], t * hd, false, lhs, w_v);
        }
    }
    if let Some(bias) = bias {
        for ys in out.chunks_exact_mut(t * hd) {
            let y = &mut ys[..nq * hd];
            y.chunks_exact_mut(hd).for_each(|y| y.iter_mut().zip(&bias[2 * hd..]).for_each(|(y, &bb)| *y += bb));
        }
    }
}

/// Backward of [`attention_pool_forward`]: `dz` (`[B, T, C]`; `None` when the input needs no gradient)
/// overwritten, `dweight` / `dbias` accumulated, from `dout`'s first `NQ` rows of every sample (the others are
/// not read).
#[allow(clippy::too_many_arguments)]
pub fn attention_pool_backward<T: Float>(
    mut dz: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    z: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    saved: &[T],
    scratch: &mut [T],
    s: PoolShape,
) {
    check_shapes(&s, dout.len(), z, weight, bias);
    assert!(dz.as_ref().is_none_or(|d| d.len() == z.len()), "attention_pool_backward: dz must be [B, T, C]");
    assert_eq!(dweight.len(), weight.len(), "attention_pool_backward: dweight must be [3HD, C]");
    assert_eq!(dbias.is_some(), bias.is_some(), "attention_pool_backward: dbias exactly when there is a bias");
    let (b, t, c, h, d, nq) = (s.samples, s.tokens, s.width, s.heads, s.head_dim, s.queries);
    let (hd, g) = (s.hd(), s.groups());
    if b == 0 {
        return;
    }
    let sv = state_ref(saved, &s);
    // The scratch's regions hold the gradients of the saved ones: dq, da, ds (dp first), dzbar.
    let State { q: dq, a: da, p: ds, zbar: dzbar } = split_state(scratch, &s);
    let (dw_q, dw_rest) = dweight.split_at_mut(hd * c);
    let (dw_k, dw_v) = dw_rest.split_at_mut(hd * c);
    // Output side, per (query row, head) over every sample: dzbar = W_v,h^T dout, dW_v,h += dout^T zbar.
    for i in 0..nq {
        for hh in 0..h {
            let (dy, zb) = (&dout[i * hd + hh * d..], &sv.zbar[(i * h + hh) * c..]);
            let w_v = Mat::rows(&weight[(2 * hd + hh * d) * c..], c);
            let dst = &mut dzbar[(i * h + hh) * c..];
            product(b, c, d, dst, nq * h * c, false, Mat { data: dy, rs: t * hd, cs: 1 }, w_v);
            let (dy_t, zb) = (Mat { data: dy, rs: 1, cs: t * hd }, Mat { data: zb, rs: nq * h * c, cs: 1 });
            product(d, c, b, &mut dw_v[hh * d * c..], c, true, dy_t, zb);
        }
    }
    // Per sample: dp, the softmax backward, da and dz.
    let scale = super::attention::default_scale::<T>(d);
    let sample = |bi: usize, dp: &mut [T], da: &mut [T], dzs: Option<&mut [T]>| {
        let zs = &z[bi * t * c..(bi + 1) * t * c];
        let (p, a) = (&sv.p[bi * g * t..(bi + 1) * g * t], &sv.a[bi * g * c..(bi + 1) * g * c]);
        let dzb = &dzbar[bi * g * c..(bi + 1) * g * c];
        // dp [G, T] = dzbar [G, C] @ z^T [C, T]; then dS = scale * p * (dp - sum p dp), in place.
        product(g, t, c, dp, t, false, Mat::rows(dzb, c), Mat::rows_t(zs, c));
        super::softmax::softmax_rows_backward_in_place(dp, p, t, scale);
        let dsm = &*dp;
        // da [G, C] = dS [G, T] @ z [T, C].
        product(g, c, t, da, c, false, Mat::rows(dsm, t), Mat::rows(zs, c));
        // dz [T, C] = dS^T [T, G] @ a [G, C] + p^T [T, G] @ dzbar [G, C].
        if let Some(dzs) = dzs {
            product(t, c, g, dzs, c, false, Mat::rows_t(dsm, t), Mat::rows(a, c));
            product(t, c, g, dzs, c, true, Mat::rows_t(p, t), Mat::rows(dzb, c));
        }
    };
    let per_sample = ds.par_chunks_mut(g * t).zip(da.par_chunks_mut(g * c)).enumerate();
    match dz.as_deref_mut() {
        Some(dz) => {
            per_sample.zip(dz.par_chunks_mut(t * c)).for_each(|((bi, (dp, da)), dzs)| sample(bi, dp, da, Some(dzs)))
        }
        None => per_sample.for_each(|(bi, (dp, da))| sample(bi, dp, da, None)),
    }
    // Key side, per head over every (sample, query row): dq = W_k,h da, dW_k,h += q^T da.
    for hh in 0..h {
        let da_h = Mat { data: &da[hh * c..], rs: h * c, cs: 1 };
        let w_k_t = Mat::rows_t(&weight[(hd + hh * d) * c..], c);
        product(b * nq, d, c, &mut dq[hh * d..], hd, false, da_h, w_k_t);
        let q_t = Mat { data: &sv.q[hh * d..], rs: 1, cs: hd };
        product(d, c, b * nq, &mut dw_k[hh * d * c..], c, true, q_t, da_h);
    }
    // The query projection: dW_q += dq^T z_lead, dz_lead += dq W_q.
    for i in 0..nq {
        let (dq_i, z_i) = (&dq[i * hd..], Mat { data: &z[i * c..], rs: t * c, cs: 1 });
        product(hd, c, b, dw_q, c, true, Mat { data: dq_i, rs: 1, cs: nq * hd }, z_i);
        if let Some(dz) = dz.as_deref_mut() {
            let lhs = Mat { data: dq_i, rs: nq * hd, cs: 1 };
            product(b, c, hd, &mut dz[i * c..], t * c, true, lhs, Mat::rows(&weight[..hd * c], c));
        }
    }
    // Bias gradients in sample order: b_q from dq, b_v from the output rows; b_k gets none.
    if let Some(db) = dbias {
        let (db_q, db_kv) = db.split_at_mut(hd);
        for row in dq.chunks_exact(hd) {
            db_q.iter_mut().zip(row).for_each(|(x, &y)| *x += y);
        }
        let db_v = &mut db_kv[hd..];
        for dys in dout.chunks_exact(t * hd) {
            dys[..nq * hd].chunks_exact(hd).for_each(|dy| db_v.iter_mut().zip(dy).for_each(|(x, &y)| *x += y));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{attention_fused_backward_queries, attention_fused_forward_queries};
    use crate::ops::gradcheck::{assert_close_scaled, check_grad, dot, round_f32, to_f32, uniform};
    use crate::ops::linear::{linear_backward, linear_forward};

    /// Inputs of one case: z, weight, bias and an output gradient that is 0 past the query rows.
    struct Case {
        s: PoolShape,
        z: Vec<f64>,
        w: Vec<f64>,
        bias: Option<Vec<f64>>,
        dout: Vec<f64>,
    }

    fn case(s: PoolShape, with_bias: bool, seed: u64) -> Case {
        let (b, t, c, hd) = (s.samples, s.tokens, s.width, s.heads * s.head_dim);
        let z = round_f32(&uniform(seed, b * t * c, -1.5, 1.5));
        let w = round_f32(&uniform(seed + 1, 3 * hd * c, -0.6, 0.6));
        let bias = with_bias.then(|| round_f32(&uniform(seed + 2, 3 * hd, -0.5, 0.5)));
        let mut dout = round_f32(&uniform(seed + 3, b * t * hd, -1.0, 1.0));
        for row in dout.chunks_exact_mut(hd).enumerate().filter(|(r, _)| r % t >= s.queries).map(|(_, x)| x) {
            row.fill(0.0);
        }
        Case { s, z, w, bias, dout }
    }

    /// The projection of every token followed by the attention of the query rows (the unpruned ops), in
    /// f64: (out, dz, dweight, dbias).
    fn reference(k: &Case) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = k.s;
        let (b, t, c, h, d, hd) = (s.samples, s.tokens, s.width, s.heads, s.head_dim, s.heads * s.head_dim);
        let mut qkv = vec![0.0; b * t * 3 * hd];
        linear_forward(&mut qkv, &k.z, &k.w, k.bias.as_deref(), b * t, c, 3 * hd);
        let (mut out, mut att) = (vec![0.0; b * t * hd], vec![0.0; b * h * t * t]);
        attention_fused_forward_queries(&mut out, &mut att, &qkv, b, h, t, d, false, s.queries);
        let (mut dqkv, mut sc) = (vec![0.0; qkv.len()], vec![0.0; b * h * t * t]);
        attention_fused_backward_queries(&mut dqkv, &k.dout, &qkv, &att, &mut sc, b, h, t, d, false, s.queries);
        let (mut dz, mut dw, mut db) = (vec![0.0; k.z.len()], vec![0.0; k.w.len()], vec![0.0; 3 * hd]);
        let dbias = k.bias.as_ref().map(|_| &mut db[..]);
        linear_backward(Some(&mut dz), &mut dw, dbias, &dqkv, &k.z, &k.w, b * t, c, 3 * hd);
        (keep_queries(&out, &s), dz, dw, db)
    }

    /// Only the query rows of every sample (the rest of an output is not written).
    fn keep_queries<T: Copy + Into<f64>>(out: &[T], s: &PoolShape) -> Vec<f64> {
        let hd = s.heads * s.head_dim;
        out.chunks_exact(s.tokens * hd).flat_map(|x| x[..s.queries * hd].iter().map(|&v| v.into())).collect()
    }

    /// The pooled op in `T`: (out, dz, dweight, dbias).
    fn pooled<T: Float + Into<f64>>(k: &Case, conv: fn(&[f64]) -> Vec<T>) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
        let s = k.s;
        let hd = s.heads * s.head_dim;
        let (z, w, bias, dout) = (conv(&k.z), conv(&k.w), k.bias.as_deref().map(conv), conv(&k.dout));
        let mut out = vec![T::from_f64(f64::NAN); dout.len()];
        let (mut saved, mut scratch) = (vec![T::ZERO; s.state_len()], vec![T::from_f64(f64::NAN); s.state_len()]);
        attention_pool_forward(&mut out, &mut saved, &z, &w, bias.as_deref(), s);
        let mut dz = vec![T::from_f64(f64::NAN); z.len()];
        let (mut dw, mut db) = (vec![T::ZERO; w.len()], vec![T::ZERO; 3 * hd]);
        let dbias = bias.as_ref().map(|_| &mut db[..]);
        attention_pool_backward(Some(&mut dz), &mut dw, dbias, &dout, &z, &w, bias.as_deref(), &saved, &mut scratch, s);
        (out, dz, dw, db)
    }

    const W3: PoolShape = PoolShape { samples: 4, tokens: 50, width: 128, heads: 4, head_dim: 32, queries: 1 };
    const ODD: PoolShape = PoolShape { samples: 3, tokens: 7, width: 10, heads: 2, head_dim: 3, queries: 2 };

    #[test]
    fn matches_the_projection_then_the_attention() {
        for (s, with_bias, seed) in [(W3, true, 10), (W3, false, 20), (ODD, true, 30), (ODD, false, 40)] {
            let k = case(s, with_bias, seed);
            let (out, dz, dw, db) = reference(&k);
            let (o64, dz64, dw64, db64) = pooled::<f64>(&k, |v| v.to_vec());
            let what = |x: &str| format!("{s:?} bias {with_bias}: {x}");
            assert_close_scaled(&what("f64 out"), &keep_queries(&o64, &s), &out, 1e-12);
            assert_close_scaled(&what("f64 dz"), &dz64, &dz, 1e-12);
            assert_close_scaled(&what("f64 dweight"), &dw64, &dw, 1e-12);
            assert_close_scaled(&what("f64 dbias"), &db64, &db, 1e-12);
            let (o32, dz32, dw32, db32) = pooled::<f32>(&k, to_f32);
            assert_close_scaled(&what("f32 out"), &keep_queries(&o32, &s), &out, 2e-5);
            assert_close_scaled(&what("f32 dz"), &dz32, &dz, 2e-5);
            assert_close_scaled(&what("f32 dweight"), &dw32, &dw, 2e-5);
            assert_close_scaled(&what("f32 dbias"), &db32, &db, 2e-5);
            // Rows past the query rows are never written.
            let hd = s.heads * s.head_dim;
            let untouched = o32.chunks_exact(s.tokens * hd).all(|x| x[s.queries * hd..].iter().all(|v| v.is_nan()));
            assert!(untouched, "{s:?}: wrote rows past the query rows");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s = PoolShape { samples: 2, tokens: 5, width: 4, heads: 2, head_dim: 2, queries: 2 };
        let k = case(s, true, 50);
        let (_, dz, dw, db) = pooled::<f64>(&k, |v| v.to_vec());
        let loss = |z: &[f64], w: &[f64], bias: &[f64]| {
            let mut out = vec![0.0; k.dout.len()];
            let mut saved = vec![0.0; s.state_len()];
            attention_pool_forward(&mut out, &mut saved, z, w, Some(bias), s);
            // Only the query rows are outputs (the rest of `out` stays 0, as is `dout` there).
            dot(&k.dout, &out)
        };
        let (z, w, bias) = (&k.z, &k.w, k.bias.as_deref().expect("a bias"));
        // Each check perturbs its own copy; the other two arguments stay the case's.
        check_grad("dz", &mut z.clone(), &dz, |v| loss(v, w, bias));
        check_grad("dweight", &mut w.clone(), &dw, |v| loss(z, v, bias));
        check_grad("dbias", &mut bias.to_vec(), &db, |v| loss(z, w, v));
    }

    #[test]
    fn bits_do_not_depend_on_the_thread_count() {
        let k = case(PoolShape { samples: 9, ..W3 }, true, 60);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
            pool.install(|| pooled::<f32>(&k, to_f32))
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (one, two) = (run(1), run(2));
        assert_eq!(bits(&one.0), bits(&two.0), "out");
        assert_eq!(bits(&one.1), bits(&two.1), "dz");
        assert_eq!(bits(&one.2), bits(&two.2), "dweight");
        assert_eq!(bits(&one.3), bits(&two.3), "dbias");
    }

    #[test]
    fn parameter_gradients_without_the_input_gradient() {
        let k = case(ODD, true, 70);
        let (z, w, bias, dout) =
            (to_f32(&k.z), to_f32(&k.w), to_f32(k.bias.as_ref().expect("a bias")), to_f32(&k.dout));
        let mut out = vec![0.0f32; dout.len()];
        let (mut saved, mut scratch) = (vec![0.0f32; ODD.state_len()], vec![0.0f32; ODD.state_len()]);
        attention_pool_forward(&mut out, &mut saved, &z, &w, Some(&bias), ODD);
        let (_, _, want_dw, want_db) = pooled::<f32>(&k, to_f32);
        let (mut dw, mut db) = (vec![0.0f32; w.len()], vec![0.0f32; bias.len()]);
        attention_pool_backward(None, &mut dw, Some(&mut db), &dout, &z, &w, Some(&bias), &saved, &mut scratch, ODD);
        assert_eq!(dw, want_dw);
        assert_eq!(db, want_db);
    }

    #[test]
    fn pays_only_for_few_query_rows() {
        assert!(W3.pays(), "one query row of 50 tokens");
        assert!(!PoolShape { queries: 50, ..W3 }.pays(), "every token a query");
        assert!(!PoolShape { queries: 0, ..W3 }.pays());
        assert_eq!(W3.state_len(), 4 * (128 + 2 * 4 * 128 + 4 * 50));
    }
}
