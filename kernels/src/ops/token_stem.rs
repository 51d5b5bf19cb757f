//! A ViT's token stem in one pass: patch features `[C, P]` transposed into tokens `[P, C]`, the class token
//! prepended, the position embedding added (`y = [cls; x^T] + pos`, `[P + 1, C]` per sample). Separately these
//! are three passes over the batch's tokens forward and three backward; here one forward and two backward.
//!
//! Bitwise the three ops (`permute`, prepending, `add`): the transposes and the prepend are copies, and the
//! additions are theirs in their order (forward `x + pos` per element; backward the embedding's and the class
//! token's gradients summed over the samples in sample order).

use rayon::prelude::*;

use super::par::PAR_MIN_ELEMS;
use super::permute::{permute, permute_backward};

/// Forward (overwrites `y`).
///
/// x: [B, C, P], cls: [C], pos: [P + 1, C], y: [B, P + 1, C].
pub fn token_stem_forward(y: &mut [f32], x: &[f32], cls: &[f32], pos: &[f32], c: usize, positions: usize) {
    let (out_len, in_len) = ((positions + 1) * c, c * positions);
    assert_eq!(cls.len(), c, "token_stem_forward: cls must be [C]");
    assert_eq!(pos.len(), out_len, "token_stem_forward: pos must be [P + 1, C]");
    assert_eq!(x.len() * out_len, y.len() * in_len, "token_stem_forward: x and y hold different batches");
    if out_len == 0 {
        return;
    }
    let stem = |(ys, xs): (&mut [f32], &[f32])| {
        ys[..c].copy_from_slice(cls);
        permute(&mut ys[c..], xs, &[c, positions], &[1, 0]).expect("the shapes were checked");
        for (o, &q) in ys.iter_mut().zip(pos) {
            *o += q;
        }
    };
    if y.len() >= PAR_MIN_ELEMS {
        y.par_chunks_mut(out_len).zip(x.par_chunks(in_len.max(1))).for_each(stem);
    } else {
        y.chunks_mut(out_len).zip(x.chunks(in_len.max(1))).for_each(stem);
    }
}

/// Backward: `dpos += sum_b dy[b]`, `dcls += sum_b dy[b, 0]` (accumulated: parameter gradients), and, when
/// given, `dx[b] = dy[b, 1..]^T` (overwritten).
///
/// dy: [B, P + 1, C], dpos: [P + 1, C], dcls: [C], dx: [B, C, P] or None.
pub fn token_stem_backward(
    dx: Option<&mut [f32]>,
    dcls: &mut [f32],
    dpos: &mut [f32],
    dy: &[f32],
    c: usize,
    positions: usize,
) {
    let out_len = (positions + 1) * c;
    assert_eq!(dcls.len(), c, "token_stem_backward: dcls must be [C]");
    assert_eq!(dpos.len(), out_len, "token_stem_backward: dpos must be [P + 1, C]");
    if out_len == 0 {
        return;
    }
    assert_eq!(dy.len() % out_len, 0, "token_stem_backward: dy must be [B, P + 1, C]");
    for ys in dy.chunks_exact(out_len) {
        super::add::add_assign(dpos, ys);
    }
    for ys in dy.chunks_exact(out_len) {
        super::add::add_assign(dcls, &ys[..c]);
    }
    if let Some(dx) = dx {
        assert_eq!(dx.len() * out_len, dy.len() * c * positions, "token_stem_backward: dx must be [B, C, P]");
        let unstem = |(xs, ys): (&mut [f32], &[f32])| {
            permute_backward(xs, &ys[c..], &[c, positions], &[1, 0]).expect("the shapes were checked")
        };
        if dy.len() >= PAR_MIN_ELEMS {
            dx.par_chunks_mut((c * positions).max(1)).zip(dy.par_chunks(out_len)).for_each(unstem);
        } else {
            dx.chunks_mut((c * positions).max(1)).zip(dy.chunks(out_len)).for_each(unstem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::add::{add_assign, add_forward};
    use crate::ops::gradcheck::uniform;

    /// Forward and backward bit for bit against the three separate ops (a transpose, a prepend written out, an
    /// add), on the sequential and the parallel path, with parameter gradients accumulating onto nonzero
    /// values; and against a float64 reference.
    #[test]
    fn equals_the_transpose_the_prepend_and_the_add() {
        for (b, c, positions) in [(3usize, 4usize, 5usize), (64, 128, 49), (2, 1, 1)] {
            let f = |seed, n| uniform(seed, n, -2.0, 2.0).iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (x, cls, pos) = (f(1, b * c * positions), f(2, c), f(3, (positions + 1) * c));
            let (out_len, in_len) = ((positions + 1) * c, c * positions);
            // The separate ops.
            let mut want = vec![0.0f32; b * out_len];
            for (ys, xs) in want.chunks_mut(out_len).zip(x.chunks(in_len)) {
                let mut tokens = vec![0.0f32; out_len];
                tokens[..c].copy_from_slice(&cls);
                permute(&mut tokens[c..], xs, &[c, positions], &[1, 0]).unwrap();
                add_forward(ys, &tokens, &pos);
            }
            let mut got = vec![f32::NAN; b * out_len];
            token_stem_forward(&mut got, &x, &cls, &pos, c, positions);
            assert!(got.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()), "forward {b}x{c}x{positions}");
            for i in 0..b {
                for p in 0..positions {
                    for ch in 0..c {
                        let r = x[i * in_len + ch * positions + p] as f64 + pos[(p + 1) * c + ch] as f64;
                        assert!((got[i * out_len + (p + 1) * c + ch] as f64 - r).abs() <= 1e-6 * r.abs().max(1.0));
                    }
                }
            }
            // Backward.
            let dy = f(4, b * out_len);
            let (dcls0, dpos0) = (f(5, c), f(6, out_len));
            let (mut want_dcls, mut want_dpos, mut want_dx) = (dcls0.clone(), dpos0.clone(), vec![0.0f32; b * in_len]);
            for ys in dy.chunks(out_len) {
                add_assign(&mut want_dpos, ys);
            }
            for ys in dy.chunks(out_len) {
                add_assign(&mut want_dcls, &ys[..c]);
            }
            for (xs, ys) in want_dx.chunks_mut(in_len).zip(dy.chunks(out_len)) {
                permute_backward(xs, &ys[c..], &[c, positions], &[1, 0]).unwrap();
            }
            let (mut dcls, mut dpos, mut dx) = (dcls0.clone(), dpos0.clone(), vec![f32::NAN; b * in_len]);
            token_stem_backward(Some(&mut dx), &mut dcls, &mut dpos, &dy, c, positions);
            let same = |a: &[f32], w: &[f32]| a.iter().zip(w).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(&dx, &want_dx) && same(&dcls, &want_dcls) && same(&dpos, &want_dpos), "backward");
            // dx[i, ch, p] = dy[i, p + 1, ch]; dcls and dpos sums against f64.
            for i in 0..b {
                assert_eq!(dx[i * in_len + (c - 1) * positions], dy[i * out_len + c + c - 1]);
            }
            let sum0: f64 = (0..b).map(|i| dy[i * out_len] as f64).sum::<f64>() + dcls0[0] as f64;
            assert!((dcls[0] as f64 - sum0).abs() <= 1e-5 * sum0.abs().max(1.0));
        }
    }
}
