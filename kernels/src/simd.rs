//! Runtime CPU-feature dispatch for element-wise loops.
//!
//! The crate is compiled for the baseline x86-64 target (SSE2), so a plain loop would use 4-wide SIMD on a
//! machine with AVX-512. [`multiversion!`] compiles one `#[inline(always)]` body three times (AVX-512F,
//! AVX2+FMA, baseline) and picks the best at run time (`is_x86_feature_detected!` is a cached load).
//! Rust never contracts `a * b + c` into an FMA on its own, so every version gives bit-identical results:
//! the choice of instruction set never changes a training run.

/// Defines `$vis fn $name<generics>(args)` that calls `$body::<generics>(args)` compiled for the best
/// instruction set available (optionally `-> Ret` after the arguments). Generics: type parameters with one
/// bound each, then `; const` parameters.
///
/// ```ignore
/// #[inline(always)]
/// fn scale_body<T: Float>(x: &mut [T], a: T) { for v in x { *v *= a } }
/// multiversion!(pub fn scale<T: Float>(x: &mut [T], a: T) => scale_body);
/// ```
#[macro_export]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$($g:ident : $b:path),* $(; const $c:ident : $ct:ty)*>($($a:ident : $t:ty),* $(,)?) => $body:ident) => {
        $crate::multiversion!($(#[$m])* $vis fn $name<$($g: $b),* $(; const $c: $ct)*>($($a: $t),*) -> () => $body);
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident<$($g:ident : $b:path),* $(; const $c:ident : $ct:ty)*>($($a:ident : $t:ty),* $(,)?) -> $r:ty => $body:ident) => {
        $(#[$m])*
        $vis fn $name<$($g: $b),* $(, const $c: $ct)*>($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4<$($g: $b),* $(, const $c: $ct)*>($($a: $t),*) -> $r {
                    $body::<$($g),* $(, $c)*>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3<$($g: $b),* $(, const $c: $ct)*>($($a: $t),*) -> $r {
                    $body::<$($g),* $(, $c)*>($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { v4::<$($g),* $(, $c)*>($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { v3::<$($g),* $(, $c)*>($($a),*) };
                }
            }
            $body::<$($g),* $(, $c)*>($($a),*)
        }
    };
}

/// The transpose of a 16 x 16 block held as 16 row vectors: `out[c]` lane `r` is `r[r]` lane `c`.
/// Four rounds of in-lane and 128-bit shuffles (unpack, 2 x 2 blocks, then two rounds of 4 x 4 blocks).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(r: &[std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // t[2i] / t[2i + 1]: rows 2i and 2i + 1 interleaved, from the low / high half of each 128-bit lane.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + c], 128-bit lane L: column 4L + c of rows 4i .. 4i + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        u[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
    }
    // w[c]: columns c and 8 + c of rows 0..8 (lanes: c 0-3, 8+c 0-3, c 4-7, 8+c 4-7); w[4 + c] the same
    // for columns 4 + c and 12 + c; w[8 + c], w[12 + c] the same for rows 8..16.
    let mut w = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        for half in [0, 8] {
            w[half + c] = _mm512_shuffle_f32x4::<0x88>(u[half + c], u[half + 4 + c]);
            w[half + 4 + c] = _mm512_shuffle_f32x4::<0xDD>(u[half + c], u[half + 4 + c]);
        }
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        out[c] = _mm512_shuffle_f32x4::<0x88>(w[c], w[8 + c]);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(w[c], w[8 + c]);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(w[4 + c], w[12 + c]);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(w[4 + c], w[12 + c]);
    }
    out
}
