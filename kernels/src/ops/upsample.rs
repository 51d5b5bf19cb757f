//! Nearest-neighbour 2-D upsampling by integer factors, PyTorch's `nn.Upsample(scale_factor=(sh, sw),
//! mode='nearest')` with integer factors: every input pixel becomes an `sh x sw` block of copies.
//!
//! Every (sample, channel) plane is independent, so both passes loop over planes and split them across rayon
//! threads when the buffers are large; a plane is computed the same way on either path, so the results are
//! bit-identical.

use rayon::prelude::*;

use super::par::{rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Runs `f(dst_plane, src_plane)` on every plane pair (`dst` planes of `dst_len`, `src` planes of `src_len`,
/// both non-zero), in parallel when the two buffers together hold at least [`PAR_MIN_ELEMS`] elements.
fn for_planes<A, B, F>(dst: &mut [A], dst_len: usize, src: &[B], src_len: usize, f: F)
where
    A: Send,
    B: Sync,
    F: Fn(&mut [A], &[B]) + Sync,
{
    let planes = dst.len() / dst_len;
    if planes > 1 && dst.len() + src.len() >= PAR_MIN_ELEMS {
        let per_task = rows_per_task(dst_len + src_len);
        dst.par_chunks_mut(per_task * dst_len).zip(src.par_chunks(per_task * src_len)).for_each(|(d, s)| {
            d.chunks_exact_mut(dst_len).zip(s.chunks_exact(src_len)).for_each(|(d, s)| f(d, s));
        });
    } else {
        dst.chunks_exact_mut(dst_len).zip(src.chunks_exact(src_len)).for_each(|(d, s)| f(d, s));
    }
}

/// Nearest-neighbour upsampling forward (overwrites `out`): `out[n, c, i, j] = inp[n, c, i / sh, j / sw]`.
///
/// inp: [N, C, H, W], out: [N, C, H*sh, W*sw]. Panics if a scale factor is 0 or a length is wrong.
#[allow(clippy::too_many_arguments)]
pub fn upsample_nearest2d_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    sh: usize,
    sw: usize,
) {
    assert!(sh > 0 && sw > 0, "upsample_nearest2d_forward: scale factors must be positive (got {sh}x{sw})");
    let (oh, ow) = (h * sh, w * sw);
    assert_eq!(inp.len(), n * c * h * w, "upsample_nearest2d_forward: inp must be [N, C, H, W]");
    assert_eq!(out.len(), n * c * oh * ow, "upsample_nearest2d_forward: out must be [N, C, H*sh, W*sw]");
    if out.is_empty() {
        return;
    }
    for_planes(out, oh * ow, inp, h * w, |o, x| {
        for (xr, block) in x.chunks_exact(w).zip(o.chunks_exact_mut(sh * ow)) {
            // Build the first of the `sh` output rows of this input row, then copy it: the copies are plain
            // memcpys instead of `sh` passes of scattered fills.
            let (first, rest) = block.split_at_mut(ow);
            for (dst, &v) in first.chunks_exact_mut(sw).zip(xr) {
                dst.fill(v);
            }
            for r in rest.chunks_exact_mut(ow) {
                r.copy_from_slice(first);
            }
        }
    });
}

/// Nearest-neighbour upsampling backward (overwrites `dinp`): every input element receives the sum of the
/// `sh * sw` output gradients of the block it was copied to, added row by row (block row `a` outer, column
/// `b` inner) on both the sequential and the parallel path.
///
/// dinp: [N, C, H, W], dout: [N, C, H*sh, W*sw]. Panics if a scale factor is 0 or a length is wrong.
#[allow(clippy::too_many_arguments)]
pub fn upsample_nearest2d_backward<T: Float>(
    dinp: &mut [T],
    dout: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    sh: usize,
    sw: usize,
) {
    assert!(sh > 0 && sw > 0, "upsample_nearest2d_backward: scale factors must be positive (got {sh}x{sw})");
    let (oh, ow) = (h * sh, w * sw);
    assert_eq!(dinp.len(), n * c * h * w, "upsample_nearest2d_backward: dinp must be [N, C, H, W]");
    assert_eq!(dout.len(), n * c * oh * ow, "upsample_nearest2d_backward: dout must be [N, C, H*sh, W*sw]");
    if dinp.is_empty() {
        return;
    }
    for_planes(dinp, h * w, dout, oh * ow, |dx, go| {
        for (dxr, block) in dx.chunks_exact_mut(w).zip(go.chunks_exact(sh * ow)) {
            dxr.fill(T::ZERO);
            // One whole output row at a time (contiguous reads) instead of one `sh x sw` block at a time; each
            // element still gets its terms in the same (a, b) order.
            for row in block.chunks_exact(ow) {
                for (d, g) in dxr.iter_mut().zip(row.chunks_exact(sw)) {
                    for &v in g {
                        *d += v;
                    }
                }
            }
        }
    });
}

/// The CUDA kernels of nearest upsampling (`upsample.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "upsample",
    code: include_str!("upsample.cu"),
    kernels: &[
        "upsample_nearest_forward_f32",
        "upsample_nearest_backward_f32",
        "upsample_nearest_forward_f16",
        "upsample_nearest_backward_f16",
        "upsample_nearest_forward_bf16",
        "upsample_nearest_backward_bf16",
    ],
};

/// Host side of `upsample.cu`.
#[path = "upsample_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Naive f64 reference from the definition: (out, dinp) for upstream gradient `dout`.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f64],
        dout: &[f64],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        sh: usize,
        sw: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let (oh, ow) = (h * sh, w * sw);
        let (mut out, mut dx) = (vec![0.0; n * c * oh * ow], vec![0.0; x.len()]);
        for pl in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let o = (pl * oh + i) * ow + j;
                    let s = (pl * h + i / sh) * w + j / sw;
                    out[o] = x[s];
                    dx[s] += dout[o];
                }
            }
        }
        (out, dx)
    }

    #[test]
    fn hand_checked_values() {
        // 2x2 plane [1, 2; 3, 4] scaled by (2, 3) into 4x6.
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [9.0f32; 24];
        upsample_nearest2d_forward(&mut out, &x, 1, 1, 2, 2, 2, 3);
        #[rustfmt::skip]
        let want = [
            1.0, 1.0, 1.0, 2.0, 2.0, 2.0,
            1.0, 1.0, 1.0, 2.0, 2.0, 2.0,
            3.0, 3.0, 3.0, 4.0, 4.0, 4.0,
            3.0, 3.0, 3.0, 4.0, 4.0, 4.0,
        ];
        assert_eq!(out, want);
        // dout = 0..24: input (0, 0) gets 0+1+2 + 6+7+8 = 24, (0, 1) 3+4+5 + 9+10+11 = 42,
        // (1, 0) 12+13+14 + 18+19+20 = 96, (1, 1) 15+16+17 + 21+22+23 = 114.
        let dout: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut dx = [9.0f32; 4];
        upsample_nearest2d_backward(&mut dx, &dout, 1, 1, 2, 2, 2, 3);
        assert_eq!(dx, [24.0, 42.0, 96.0, 114.0]);

        // Scale 1x1 is the identity; two planes stay separate.
        let x = [1.0f64, -2.0, 3.0, 5.0, 7.0, 11.0];
        let mut out = [0.0f64; 6];
        upsample_nearest2d_forward(&mut out, &x, 1, 2, 1, 3, 1, 1);
        assert_eq!(out, x);
        let mut dx = [0.0f64; 6];
        upsample_nearest2d_backward(&mut dx, &x, 1, 2, 1, 3, 1, 1);
        assert_eq!(dx, x);
    }

    #[test]
    fn matches_f64_reference_on_both_paths() {
        // (n, c, h, w, sh, sw); the last case has 4 * 32 * 64 * 64 > PAR_MIN_ELEMS outputs (rayon path).
        let cases = [
            (2, 3, 4, 5, 2, 2),
            (1, 2, 3, 2, 3, 1),
            (2, 1, 2, 3, 1, 4),
            (1, 1, 3, 3, 1, 1),
            (3, 2, 1, 1, 2, 5),
            (4, 32, 32, 32, 2, 2),
        ];
        assert!(cases.iter().any(|&(n, c, h, w, sh, sw)| n * c * h * sh * w * sw >= PAR_MIN_ELEMS));
        for (i, &(n, c, h, w, sh, sw)) in cases.iter().enumerate() {
            let what = format!("{:?}", (n, c, h, w, sh, sw));
            let x = round_f32(&uniform(10 + i as u64, n * c * h * w, -1.0, 1.0));
            let dout = round_f32(&uniform(20 + i as u64, n * c * h * sh * w * sw, -1.0, 1.0));
            let (want, want_dx) = reference(&x, &dout, n, c, h, w, sh, sw);

            let (mut out, mut dx) = (vec![f64::NAN; want.len()], vec![f64::NAN; x.len()]);
            upsample_nearest2d_forward(&mut out, &x, n, c, h, w, sh, sw);
            assert_eq!(out, want, "f64 out {what}");
            upsample_nearest2d_backward(&mut dx, &dout, n, c, h, w, sh, sw);
            assert_close(&format!("f64 dinp {what}"), &dx, &want_dx, 1e-12, 1e-12);

            let (mut out, mut dx) = (vec![f32::NAN; want.len()], vec![f32::NAN; x.len()]);
            upsample_nearest2d_forward(&mut out, &to_f32(&x), n, c, h, w, sh, sw);
            assert_close(&format!("f32 out {what}"), &out, &want, 0.0, 0.0);
            upsample_nearest2d_backward(&mut dx, &to_f32(&dout), n, c, h, w, sh, sw);
            assert_close(&format!("f32 dinp {what}"), &dx, &want_dx, 1e-5, 1e-6);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, c, h, w, sh, sw) = (2, 2, 3, 4, 2, 3);
        let mut x = uniform(1, n * c * h * w, -1.0, 1.0);
        let dout = uniform(2, n * c * h * sh * w * sw, -1.0, 1.0);
        let mut dx = vec![0.0; x.len()];
        upsample_nearest2d_backward(&mut dx, &dout, n, c, h, w, sh, sw);
        check_grad("upsample dinp", &mut x, &dx, |v| {
            let mut o = vec![0.0; dout.len()];
            upsample_nearest2d_forward(&mut o, v, n, c, h, w, sh, sw);
            dot(&dout, &o)
        });
    }

    #[test]
    fn empty_buffers_are_fine() {
        upsample_nearest2d_forward::<f32>(&mut [], &[], 0, 3, 4, 4, 2, 2);
        upsample_nearest2d_backward::<f32>(&mut [], &[], 2, 3, 0, 4, 2, 2);
    }

    #[test]
    #[should_panic(expected = "scale factors must be positive")]
    fn zero_scale_panics() {
        upsample_nearest2d_forward::<f32>(&mut [], &[0.0; 4], 1, 1, 2, 2, 0, 2);
    }
}
