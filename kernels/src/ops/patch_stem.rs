//! A ViT's patch embedding and token stem as one op: the non-overlapping patch convolution, its output
//! flattened and transposed into tokens, the class token prepended and the position embedding added
//! (`y = [cls; conv(x)^T] + pos`, `[P + 1, D]` per sample).
//!
//! Written as the convolution and the stem, the patch features are produced channel-major (`[D, P]`) and
//! transposed afterwards: three passes over the batch's tokens forward and three backward, around a
//! convolution whose products are tiny (W3: 16 inputs per output). Here the patches are gathered into a
//! `[B, P + 1, K]` matrix (K = C * kh * kw; the class token's row is zeros), one product writes every token
//! row directly, and one pass adds the bias, the class token and the position embedding. Backward: one product
//! gives the weight gradient (the zero rows add nothing), and one pass over the output gradient gives the
//! position, class-token and bias gradients. The input gradient is not computed: the op is planned only where
//! the image needs none (`exec::patch_stems`).
//!
//! The same function as the separate ops up to float rounding (the products' order differs from the
//! convolution kernel's); deterministic, and independent of the thread count.

use rayon::prelude::*;

use super::conv2d::Conv2dGeom;
use super::gemm::{gemm_strided, Mat};
use super::par::PAR_MIN_ELEMS;

/// Whether `g` is a convolution this op runs: kernel equal to the stride, no padding, no dilation, one
/// group (a patch embedding).
pub fn is_patch_embedding(g: &Conv2dGeom) -> bool {
    (g.kh, g.kw) == g.stride && g.padding == (0, 0) && g.dilation == (1, 1) && g.groups == 1 && g.kh * g.kw > 0
}

/// Patches per sample (P) and inputs per patch (K).
fn patch_counts(g: &Conv2dGeom) -> (usize, usize) {
    ((g.h / g.kh) * (g.w / g.kw), g.c * g.kh * g.kw)
}

/// Scratch [`patch_stem_forward`] and [`patch_stem_backward`] need: the patch matrix, and room for the
/// per-position sums of the backward.
pub fn patch_stem_scratch_len(g: &Conv2dGeom) -> usize {
    let (p, k) = patch_counts(g);
    (g.n * (p + 1) * k).max((p + 1) * g.oc)
}

/// `patches[b, 1 + i * ow + j, (ch * kh + u) * kw + v] = x[b, ch, i * kh + u, j * kw + v]` (the weight's
/// `[C, kh, kw]` order), and row 0 of every sample (the class token's) zero.
fn gather(patches: &mut [f32], x: &[f32], g: &Conv2dGeom) {
    let ((p, k), (ow, plane)) = (patch_counts(g), (g.w / g.kw, g.h * g.w));
    let sample = |(pb, xb): (&mut [f32], &[f32])| {
        pb[..k].fill(0.0);
        for (q, row) in pb[k..].chunks_exact_mut(k).enumerate() {
            let (i, j) = (q / ow, q % ow);
            for ch in 0..g.c {
                for u in 0..g.kh {
                    let src = ch * plane + (i * g.kh + u) * g.w + j * g.kw;
                    // An element loop: a patch row is a few floats, too short for a `memcpy` call.
                    for (o, &v) in row[(ch * g.kh + u) * g.kw..][..g.kw].iter_mut().zip(&xb[src..src + g.kw]) {
                        *o = v;
                    }
                }
            }
        }
    };
    // Gathering is a few operations per element, not a streaming pass: worth splitting from a smaller size.
    if patches.len() >= PAR_MIN_ELEMS / 8 {
        patches.par_chunks_mut((p + 1) * k).zip(x.par_chunks(g.c * plane)).for_each(sample);
    } else {
        patches.chunks_mut((p + 1) * k).zip(x.chunks(g.c * plane)).for_each(sample);
    }
}

/// Checks the shapes shared by the forward and the backward; returns (P, K).
fn check(
    g: &Conv2dGeom,
    x: &[f32],
    y_len: usize,
    weight_len: usize,
    cls: usize,
    pos: usize,
    scratch: usize,
) -> (usize, usize) {
    assert!(is_patch_embedding(g), "patch_stem: not a patch embedding: {g:?}");
    let (p, k) = patch_counts(g);
    assert_eq!(x.len(), g.n * g.c * g.h * g.w, "patch_stem: x must be [B, C, H, W]");
    assert_eq!(y_len, g.n * (p + 1) * g.oc, "patch_stem: y must be [B, P + 1, D]");
    assert_eq!(weight_len, g.oc * k, "patch_stem: weight must be [D, C, kh, kw]");
    assert_eq!(cls, g.oc, "patch_stem: the class token must be [D]");
    assert_eq!(pos, (p + 1) * g.oc, "patch_stem: the position embedding must be [P + 1, D]");
    assert!(scratch >= patch_stem_scratch_len(g), "patch_stem: scratch too short");
    (p, k)
}

/// Forward (overwrites `y`): `y[b, 0] = cls + pos[0]`, `y[b, 1 + q] = (W patch_q(x_b) + bias) + pos[1 + q]`.
///
/// x: [B, C, H, W], weight: [D, C, kh, kw], bias: [D] or None, cls: [D], pos: [P + 1, D], y: [B, P + 1, D].
#[allow(clippy::too_many_arguments)]
pub fn patch_stem_forward(
    y: &mut [f32],
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    cls: &[f32],
    pos: &[f32],
    scratch: &mut [f32],
    g: &Conv2dGeom,
) {
    let (p, k) = check(g, x, y.len(), weight.len(), cls.len(), pos.len(), scratch.len());
    assert!(bias.is_none_or(|b| b.len() == g.oc), "patch_stem_forward: bias must be [D]");
    let (rows, d) = (g.n * (p + 1), g.oc);
    if rows == 0 || d == 0 {
        return;
    }
    let patches = &mut scratch[..rows * k];
    gather(patches, x, g);
    // y[R, D] = patches[R, K] @ weight^T (weight^T element (k, j) at weight[j * K + k]).
    gemm_strided(rows, d, k, y, d, 1, false, Mat::rows(patches, k), Mat::rows_t(weight, k), 1.0, true);
    let stem = |ys: &mut [f32]| {
        for (t, (row, pos)) in ys.chunks_exact_mut(d).zip(pos.chunks_exact(d)).enumerate() {
            if t == 0 {
                for ((o, &c), &q) in row.iter_mut().zip(cls).zip(pos) {
                    *o = c + q;
                }
                continue;
            }
            match bias {
                Some(b) => row.iter_mut().zip(b).zip(pos).for_each(|((o, &b), &q)| *o = (*o + b) + q),
                None => row.iter_mut().zip(pos).for_each(|(o, &q)| *o += q),
            }
        }
    };
    if y.len() >= PAR_MIN_ELEMS {
        y.par_chunks_mut((p + 1) * d).for_each(stem);
    } else {
        y.chunks_mut((p + 1) * d).for_each(stem);
    }
}

/// Backward, every gradient accumulated (they are parameter gradients): `dweight += sum dy[b, 1 + q] ⊗
/// patch_q(x_b)`, `dbias += sum_{b, t > 0} dy[b, t]`, `dcls += sum_b dy[b, 0]`, `dpos += sum_b dy[b]`. The
/// sums over the samples run in sample order per position (in parallel over positions), then the bias sums
/// the positions in order.
///
/// dy: [B, P + 1, D]; the others as [`patch_stem_forward`].
#[allow(clippy::too_many_arguments)]
pub fn patch_stem_backward(
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dcls: &mut [f32],
    dpos: &mut [f32],
    dy: &[f32],
    x: &[f32],
    scratch: &mut [f32],
    g: &Conv2dGeom,
) {
    let (p, k) = check(g, x, dy.len(), dweight.len(), dcls.len(), dpos.len(), scratch.len());
    assert!(dbias.as_ref().is_none_or(|b| b.len() == g.oc), "patch_stem_backward: dbias must be [D]");
    let (rows, d) = (g.n * (p + 1), g.oc);
    if rows == 0 || d == 0 {
        return;
    }
    {
        let patches = &mut scratch[..rows * k];
        gather(patches, x, g);
        // dweight[D, K] += dy^T[D, R] @ patches[R, K]; the class token's zero rows add nothing.
        gemm_strided(d, k, rows, dweight, k, 1, true, Mat::rows_t(dy, d), Mat::rows(patches, k), 1.0, true);
    }
    // Per position t, the sum over the samples in order.
    let sums = &mut scratch[..(p + 1) * d];
    let position = |(t, s): (usize, &mut [f32])| {
        s.fill(0.0);
        for ys in dy.chunks_exact((p + 1) * d) {
            for (a, &v) in s.iter_mut().zip(&ys[t * d..(t + 1) * d]) {
                *a += v;
            }
        }
    };
    if dy.len() >= PAR_MIN_ELEMS {
        sums.par_chunks_mut(d).enumerate().for_each(position);
    } else {
        sums.chunks_mut(d).enumerate().for_each(position);
    }
    super::add::add_assign(dpos, sums);
    super::add::add_assign(dcls, &sums[..d]);
    if let Some(db) = dbias {
        // The patch positions' sums added in position order, onto zero, then onto the gradient once.
        let mut acc = [0.0f32; 64];
        for (blk, db) in db.chunks_mut(64).enumerate() {
            let acc = &mut acc[..db.len()];
            acc.fill(0.0);
            for s in sums[d..].chunks_exact(d) {
                for (a, &v) in acc.iter_mut().zip(&s[blk * 64..]) {
                    *a += v;
                }
            }
            for (o, &a) in db.iter_mut().zip(acc.iter()) {
                *o += a;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::{conv2d_backward, conv2d_forward};
    use crate::ops::gradcheck::*;
    use crate::ops::token_stem::{token_stem_backward, token_stem_forward};

    fn geom(n: usize, c: usize, (h, w): (usize, usize), oc: usize, (kh, kw): (usize, usize)) -> Conv2dGeom {
        Conv2dGeom { n, c, h, w, oc, kh, kw, stride: (kh, kw), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }

    /// Against the separate ops (convolution, then the token stem, which is bitwise the flatten, transpose,
    /// prepend and add) on the same inputs, on 1 and 2 threads: the output and every parameter gradient
    /// within float rounding; W3's shape among them, a non-square patch over several channels, sizes that
    /// leave image rows and columns past the last patch, with and without a bias.
    fn check_against_the_separate_ops(g: Conv2dGeom, with_bias: bool) {
        let (p, k) = patch_counts(&g);
        let (oh, ow) = g.out_hw().unwrap();
        assert_eq!(oh * ow, p);
        let d = g.oc;
        let x = to_f32(&uniform(1, g.n * g.c * g.h * g.w, -1.0, 1.0));
        let w = to_f32(&uniform(2, d * k, -0.5, 0.5));
        let b = to_f32(&uniform(3, d, -0.5, 0.5));
        let cls = to_f32(&uniform(4, d, -0.5, 0.5));
        let pos = to_f32(&uniform(5, (p + 1) * d, -0.5, 0.5));
        let dy = to_f32(&uniform(6, g.n * (p + 1) * d, -1.0, 1.0));
        let bias = with_bias.then_some(&b[..]);
        let what = format!("{g:?}, bias {with_bias}");

        // The separate ops.
        let mut feat = vec![0.0f32; g.n * d * p];
        let mut col = vec![0.0f32; g.col_len()];
        conv2d_forward(&mut feat, &x, &w, bias, &mut col, &g);
        let mut want = vec![0.0f32; g.n * (p + 1) * d];
        token_stem_forward(&mut want, &feat, &cls, &pos, d, p);
        let (mut w_dcls, mut w_dpos, mut dfeat) =
            (vec![0.0f32; d], vec![0.0f32; (p + 1) * d], vec![0.0f32; feat.len()]);
        token_stem_backward(Some(&mut dfeat), &mut w_dcls, &mut w_dpos, &dy, d, p);
        let (mut w_dw, mut w_db) = (vec![0.0f32; w.len()], vec![0.0f32; d]);
        let w_db_arg = with_bias.then_some(&mut w_db[..]);
        conv2d_backward(None, &mut w_dw, w_db_arg, &dfeat, &x, &w, &mut col, &g);

        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut scratch = vec![f32::NAN; patch_stem_scratch_len(&g)];
                let mut y = vec![f32::NAN; want.len()];
                patch_stem_forward(&mut y, &x, &w, bias, &cls, &pos, &mut scratch, &g);
                for (i, (&a, &e)) in y.iter().zip(&want).enumerate() {
                    assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "{what}: y[{i}] {a} vs {e}");
                }
                // Accumulated onto existing gradients.
                let (mut dw, mut db, mut dcls, mut dpos) =
                    (vec![1.0f32; w.len()], vec![1.0f32; d], vec![1.0f32; d], vec![1.0f32; (p + 1) * d]);
                let db_arg = with_bias.then_some(&mut db[..]);
                patch_stem_backward(&mut dw, db_arg, &mut dcls, &mut dpos, &dy, &x, &mut scratch, &g);
                let close = |got: &[f32], want: &[f32], name: &str| {
                    // Sums of up to B * (P + 1) terms of magnitude 1 in f32.
                    let tol = 2e-6 * (g.n * (p + 1)) as f32;
                    for (i, (&a, &e)) in got.iter().zip(want).enumerate() {
                        assert!((a - 1.0 - e).abs() <= tol, "{what}: {name}[{i}] {} vs {e}", a - 1.0);
                    }
                };
                close(&dw, &w_dw, "dweight");
                close(&dcls, &w_dcls, "dcls");
                close(&dpos, &w_dpos, "dpos");
                if with_bias {
                    close(&db, &w_db, "dbias");
                } else {
                    assert!(db.iter().all(|&v| v == 1.0), "{what}: dbias touched without a bias");
                }
            });
        }
    }

    #[test]
    fn matches_the_convolution_and_the_token_stem() {
        check_against_the_separate_ops(geom(64, 1, (28, 28), 128, (4, 4)), true);
        check_against_the_separate_ops(geom(3, 3, (9, 10), 5, (2, 3)), true);
        check_against_the_separate_ops(geom(2, 2, (8, 8), 70, (4, 4)), false);
        check_against_the_separate_ops(geom(1, 1, (5, 5), 3, (5, 5)), true);
    }

    #[test]
    fn only_patch_embeddings_qualify() {
        let g = geom(2, 1, (8, 8), 4, (2, 2));
        assert!(is_patch_embedding(&g));
        assert!(!is_patch_embedding(&Conv2dGeom { stride: (1, 1), ..g }));
        assert!(!is_patch_embedding(&Conv2dGeom { padding: (1, 0), ..g }));
        assert!(!is_patch_embedding(&Conv2dGeom { dilation: (2, 2), ..g }));
        assert!(!is_patch_embedding(&Conv2dGeom { groups: 2, c: 2, oc: 4, ..g }));
    }
}
