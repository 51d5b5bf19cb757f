//! The 2x2 / stride-2 max pool of an f32 plane with AVX2, eight outputs per step (the window of nearly every
//! CNN's pools; at the W2 shapes the scalar scan took longer than the convolution it follows).
//!
//! Eight outputs read 16 consecutive floats of each of the two window rows; the even and odd columns are
//! split with two shuffles and a cross-lane permute, and the compare-and-select tree is the scalar one's
//! (`max_pool_row_body`): `b > a`, `d > c`, then `lower > upper`, all strict and ordered, so ties keep the
//! earlier element in row-major window order and every output and index is bitwise the scalar path's. A NaN
//! is only detected (an unordered compare OR-ed across the plane); the caller then redoes the plane on the
//! general path, where a NaN wins as in PyTorch.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether [`plane`] can run here: an x86-64 CPU with AVX2.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Max-pools one unpadded plane with a 2x2 window and stride 2: `out`, `idx`: [OH, OW] (flat input indices
/// `iy*W + ix`), `x`: [H, W] with `2*OH <= H`, `2*OW <= W` and `OW >= 8` (the last block of a row overlaps the
/// one before it and rewrites the same values). Returns whether the plane holds a NaN in a window.
///
/// # Safety
/// The CPU must have AVX2 ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn plane(out: &mut [f32], idx: &mut [u32], x: &[f32], w: usize, ow: usize) -> bool {
    assert!(ow >= 8 && 2 * ow <= w, "pool_2x2_avx2::plane: needs 8 <= OW <= W/2");
    let oh = out.len() / ow;
    assert!(out.len() == oh * ow && idx.len() == out.len() && x.len() >= 2 * oh * w);
    // Lane k of a block starting at output `ox` reads columns 2*(ox + k) and 2*(ox + k) + 1.
    let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let (one, below) = (_mm256_set1_epi32(1), _mm256_set1_epi32(w as i32));
    let mut unordered = _mm256_setzero_ps();
    for oy in 0..oh {
        let (r0, r1) = (2 * oy * w, (2 * oy + 1) * w);
        let mut ox = 0;
        loop {
            let (s0, s1) = (r0 + 2 * ox, r1 + 2 * ox);
            debug_assert!(s1 + 16 <= x.len());
            // SAFETY: columns 2*ox .. 2*ox + 16 <= 2*OW <= W lie inside rows r0 and r1 of the plane.
            let (a, b) = unsafe { split_even_odd(x.as_ptr().add(s0)) };
            let (c, d) = unsafe { split_even_odd(x.as_ptr().add(s1)) };
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b));
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(c, d));
            let ia = _mm256_add_epi32(_mm256_set1_epi32(s0 as i32), lanes);
            let ic = _mm256_add_epi32(ia, below);
            let gt_ab = _mm256_cmp_ps::<_CMP_GT_OQ>(b, a);
            let (m01, j01) = select(gt_ab, a, b, ia, _mm256_add_epi32(ia, one));
            let gt_cd = _mm256_cmp_ps::<_CMP_GT_OQ>(d, c);
            let (m23, j23) = select(gt_cd, c, d, ic, _mm256_add_epi32(ic, one));
            let lower = _mm256_cmp_ps::<_CMP_GT_OQ>(m23, m01);
            let (m, j) = select(lower, m01, m23, j01, j23);
            // Indices are within the plane, so i32 arithmetic is exact (planes fit u32: checked by the geometry,
            // and the caller only takes this path for planes below 2^31 elements).
            let at = oy * ow + ox;
            // SAFETY: at + 8 <= (oy + 1) * OW <= out.len() = idx.len().
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr().add(at), m);
                _mm256_storeu_si256(idx.as_mut_ptr().add(at) as *mut __m256i, j);
            }
            if ox + 8 == ow {
                break;
            }
            ox = (ox + 8).min(ow - 8);
        }
    }
    _mm256_movemask_ps(unordered) != 0
}

/// 16 consecutive floats at `p` split into the even and the odd ones, each in order.
///
/// # Safety
/// `p` must be valid for reading 16 floats; AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn split_even_odd(p: *const f32) -> (__m256, __m256) {
    // SAFETY: the caller guarantees 16 readable floats.
    let (lo, hi) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
    // Within each 128-bit lane: [lo0, lo2, hi0, hi2 | lo4, lo6, hi4, hi6]; the 64-bit permute puts the halves
    // in order.
    let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
    let odd = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
    let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
    (order(even), order(odd))
}

/// `(take ? v1 : v0, take ? i1 : i0)` lane by lane (`take` all-ones or all-zeros per lane).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn select(take: __m256, v0: __m256, v1: __m256, i0: __m256i, i1: __m256i) -> (__m256, __m256i) {
    let v = _mm256_blendv_ps(v0, v1, take);
    let i = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i0), _mm256_castsi256_ps(i1), take));
    (v, i)
}

/// Never called off x86-64 ([`available`] is false there).
///
/// # Safety
/// Unreachable.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn plane(_: &mut [f32], _: &mut [u32], _: &[f32], _: usize, _: usize) -> bool {
    unreachable!("pool_2x2_avx2 needs x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The scalar scan the vector path must reproduce: (outputs, indices, saw a NaN).
    fn scalar(x: &[f32], w: usize, oh: usize, ow: usize) -> (Vec<f32>, Vec<u32>, bool) {
        let (mut o, mut i) = (vec![f32::NAN; oh * ow], vec![u32::MAX; oh * ow]);
        let nan = super::super::max_pool_plane_body(&mut o, &mut i, x, ow, 2, w, 2, 2, 2);
        (o, i, nan)
    }

    #[test]
    fn equals_the_scalar_scan_bit_for_bit() {
        if !available() {
            eprintln!("SKIPPED pool_2x2_avx2: this CPU has no AVX2");
            return;
        }
        let mut rng = Rng::new(3);
        // Widths with and without an overlapping last block, odd sizes (a last row / column no window reads),
        // and inputs with ties: ReLU'd (half exact zeros, +0 and -0) and few distinct values.
        for (h, w) in [(16, 16), (2, 17), (28, 28), (9, 33), (4, 18), (6, 40)] {
            let (oh, ow) = (h / 2, w / 2);
            for kind in 0..3 {
                let x: Vec<f32> = (0..h * w)
                    .map(|_| {
                        let v = rng.normal() as f32;
                        match kind {
                            0 => v,
                            1 if v < 0.0 => {
                                if v < -1.0 {
                                    -0.0
                                } else {
                                    0.0
                                }
                            }
                            1 => v,
                            _ => (v * 2.0).round(),
                        }
                    })
                    .collect();
                let want = scalar(&x, w, oh, ow);
                let (mut o, mut i) = (vec![f32::NAN; oh * ow], vec![u32::MAX; oh * ow]);
                // SAFETY: AVX2 checked above.
                let nan = unsafe { plane(&mut o, &mut i, &x, w, ow) };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o), bits(&want.0), "{h}x{w} kind {kind}: outputs");
                assert_eq!(i, want.1, "{h}x{w} kind {kind}: indices");
                assert!(!nan && !want.2);
            }
        }
    }

    #[test]
    fn reports_a_nan_inside_a_window_only() {
        if !available() {
            eprintln!("SKIPPED pool_2x2_avx2: this CPU has no AVX2");
            return;
        }
        let (h, w) = (5, 19);
        let (oh, ow) = (2, 9);
        for at in [0, 17, 2 * w + 5, 3 * w + 17] {
            let mut x = vec![1.0f32; h * w];
            x[at] = f32::NAN;
            let (mut o, mut i) = (vec![0.0; oh * ow], vec![0; oh * ow]);
            // SAFETY: AVX2 checked above.
            assert!(unsafe { plane(&mut o, &mut i, &x, w, ow) }, "NaN at {at}");
        }
        // Outside every window: the last column (18) and the last row (4).
        for at in [18, 4 * w + 3] {
            let mut x = vec![1.0f32; h * w];
            x[at] = f32::NAN;
            let (mut o, mut i) = (vec![0.0; oh * ow], vec![0; oh * ow]);
            // SAFETY: AVX2 checked above.
            assert!(!unsafe { plane(&mut o, &mut i, &x, w, ow) }, "NaN at {at} is in no window");
        }
    }
}
