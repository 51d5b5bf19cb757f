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
