//! Mixed-precision (AMP) helpers: f32 <-> f16 / bf16 conversion and the loss-scale unscale with its
//! non-finite check.
//!
//! The conversions are the `half` crate's (round to nearest even, as `torch.Tensor.half()` / `.bfloat16()`);
//! the CUDA kernels in `cast.cu` reproduce them bit for bit, NaN payloads included. The unscale follows
//! torch's `GradScaler` (`_amp_foreach_non_finite_check_and_unscale_`): the gradients are checked for inf /
//! NaN *before* they are multiplied by `1 / scale`, and a scale of exactly 1 leaves them untouched.

use half::{bf16, f16};
use rayon::prelude::*;

use super::par::{map_unary, PAR_CHUNK, PAR_MIN_ELEMS};

/// `out[i] = f16::from_f32(x[i])`. out, x: [N].
pub fn f32_to_f16(out: &mut [f16], x: &[f32]) {
    map_unary(out, x, f16::from_f32);
}

/// `out[i] = x[i].to_f32()` (exact). out, x: [N].
pub fn f16_to_f32(out: &mut [f32], x: &[f16]) {
    map_unary(out, x, f16::to_f32);
}

/// `out[i] = bf16::from_f32(x[i])`. out, x: [N].
pub fn f32_to_bf16(out: &mut [bf16], x: &[f32]) {
    map_unary(out, x, bf16::from_f32);
}

/// `out[i] = x[i].to_f32()` (exact). out, x: [N].
pub fn bf16_to_f32(out: &mut [f32], x: &[bf16]) {
    map_unary(out, x, bf16::to_f32);
}

/// Multiplies every gradient by `inv_scale` (unless it is exactly 1) and returns whether any gradient was
/// inf or NaN before the multiplication (the step is then skipped and the scale lowered). grads: [N].
pub fn unscale_and_check(grads: &mut [f32], inv_scale: f32) -> bool {
    let body = |c: &mut [f32]| {
        let mut found = false;
        for v in c.iter_mut() {
            found |= !v.is_finite();
            if inv_scale != 1.0 {
                *v *= inv_scale;
            }
        }
        found
    };
    if grads.len() < PAR_MIN_ELEMS {
        body(grads)
    } else {
        // Every chunk is scanned (no early exit): all gradients must be unscaled either way.
        grads.par_chunks_mut(PAR_CHUNK).map(body).reduce(|| false, |a, b| a || b)
    }
}

/// The CUDA kernels of the casts and the unscale (`cast.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "cast",
    code: include_str!("cast.cu"),
    kernels: &["cast_f32_to_f16", "cast_f16_to_f32", "cast_f32_to_bf16", "cast_bf16_to_f32", "unscale_check_f32"],
};

/// Host side of `cast.cu`.
pub mod cuda {
    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
    use half::{bf16, f16};

    use super::CUDA;
    use crate::cuda::{Gpu, GpuError};

    /// Launches `kernel(out, x, n)` over `n` elements (both buffers hold `n`).
    fn cast<O, I>(gpu: &Gpu, kernel: &'static str, out: &mut CudaViewMut<O>, x: &CudaView<I>) -> Result<(), GpuError> {
        let n = x.len();
        assert_eq!(out.len(), n, "{kernel}: out and x lengths differ");
        let f = gpu.function(&CUDA, kernel)?;
        let mut b = gpu.launch_builder(&f);
        b.arg(out).arg(x).arg(&n);
        // SAFETY: every cast kernel takes (out*, const in*, size_t) with 16-bit storage on the half side
        // (f16 / bf16 are 16-bit plain data), and both buffers hold n elements.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// [`f32_to_f16`](super::f32_to_f16) on the GPU, bitwise. out, x: [N].
    pub fn f32_to_f16(gpu: &Gpu, out: &mut CudaViewMut<f16>, x: &CudaView<f32>) -> Result<(), GpuError> {
        cast(gpu, "cast_f32_to_f16", out, x)
    }

    /// [`f16_to_f32`](super::f16_to_f32) on the GPU, bitwise. out, x: [N].
    pub fn f16_to_f32(gpu: &Gpu, out: &mut CudaViewMut<f32>, x: &CudaView<f16>) -> Result<(), GpuError> {
        cast(gpu, "cast_f16_to_f32", out, x)
    }

    /// [`f32_to_bf16`](super::f32_to_bf16) on the GPU, bitwise. out, x: [N].
    pub fn f32_to_bf16(gpu: &Gpu, out: &mut CudaViewMut<bf16>, x: &CudaView<f32>) -> Result<(), GpuError> {
        cast(gpu, "cast_f32_to_bf16", out, x)
    }

    /// [`bf16_to_f32`](super::bf16_to_f32) on the GPU, bitwise. out, x: [N].
    pub fn bf16_to_f32(gpu: &Gpu, out: &mut CudaViewMut<f32>, x: &CudaView<bf16>) -> Result<(), GpuError> {
        cast(gpu, "cast_bf16_to_f32", out, x)
    }

    /// [`unscale_and_check`](super::unscale_and_check) on the GPU: the gradients are unscaled bitwise as on
    /// the CPU, and the result is written to the device flag `found_inf[0]` (1.0 when a gradient was inf or
    /// NaN), which is only ever set, never cleared: zero it before the step (several arenas may share it),
    /// read it with [`download_found_inf`] when the step decides. grads: [N]; found_inf: [1].
    pub fn unscale_and_check(
        gpu: &Gpu,
        grads: &mut CudaViewMut<f32>,
        inv_scale: f32,
        found_inf: &mut CudaViewMut<f32>,
    ) -> Result<(), GpuError> {
        assert!(!found_inf.is_empty(), "unscale_and_check: found_inf needs one element");
        let n = grads.len();
        let f = gpu.function(&CUDA, "unscale_check_f32")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(grads).arg(&inv_scale).arg(found_inf).arg(&n);
        // SAFETY: (float*, float, float*, size_t); grads holds n elements, found_inf one.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// Whether [`unscale_and_check`] found a non-finite gradient (waits for the compute stream).
    pub fn download_found_inf(gpu: &Gpu, found_inf: &CudaSlice<f32>) -> Result<bool, GpuError> {
        Ok(gpu.download(found_inf)?[0] != 0.0)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cuda::testing::*;
        use crate::rng::Rng;

        /// f32 values that exercise every branch of the conversions: random bit patterns (all exponents,
        /// NaN payloads, subnormals), values near the f16 range limits and subnormal range, exact ties
        /// between two 16-bit values (round to even), signed zeros and infinities.
        fn tricky_f32(rng: &mut Rng, n: usize) -> Vec<f32> {
            let mut v = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX, f32::MIN];
            v.extend([
                65504.0,
                65519.99,
                65520.0,
                -65520.0,
                6.1e-5,
                5.96e-8,
                2.98e-8,
                2.99e-8,
                1e-10,
                f32::MIN_POSITIVE,
            ]);
            v.push(f32::from_bits(0x7f80_0001)); // signalling NaN
            v.push(f32::from_bits(0xffc1_2345)); // negative NaN with payload
            v.push(f32::from_bits(0x0000_0001)); // smallest f32 subnormal
            while v.len() < n {
                let bits = (rng.next_u64() >> 32) as u32;
                v.push(match v.len() % 4 {
                    0 => f32::from_bits(bits),                        // any pattern
                    1 => f32::from_bits(bits & 0xffff_0000 | 0x8000), // bf16 tie
                    2 => f32::from_bits(bits & 0xffff_e000 | 0x1000), // f16 tie (mantissa)
                    _ => (rng.normal() * 10f64.powi((v.len() % 13) as i32 - 8)) as f32,
                });
            }
            // The special values come first; a short test length keeps only the first of them.
            v.truncate(n);
            v
        }

        fn same_bits16(what: &str, got: &[u16], want: &[u16], x: &[f32]) {
            for i in 0..x.len() {
                assert_eq!(
                    got[i],
                    want[i],
                    "{what}: {} ({:#010x}): got {:#06x}, want {:#06x}",
                    x[i],
                    x[i].to_bits(),
                    got[i],
                    want[i]
                );
            }
        }

        /// Both directions for both formats, bitwise the `half` crate, on an odd length (and length 1).
        #[test]
        fn casts_match_half_bitwise() {
            let Some(gpu) = gpu_or_skip("casts_match_half_bitwise") else { return };
            let mut rng = Rng::new(test_seed("casts_match_half_bitwise"));
            for n in [1usize, 100_003] {
                let x = tricky_f32(&mut rng, n);
                let dx = gpu.upload(&x).unwrap();
                // f16
                let mut want = vec![f16::ZERO; n];
                super::super::f32_to_f16(&mut want, &x);
                let mut out = gpu.upload(&vec![f16::from_bits(0x7e77); n]).unwrap(); // poisoned
                f32_to_f16(gpu, &mut out.as_view_mut(), &dx.as_view()).unwrap();
                let got = gpu.download(&out).unwrap();
                same_bits16(
                    "f32 -> f16",
                    &got.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                    &want.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                    &x,
                );
                let mut back = poisoned(gpu, n).unwrap();
                f16_to_f32(gpu, &mut back.as_view_mut(), &out.as_view()).unwrap();
                let mut want_back = vec![0.0f32; n];
                super::super::f16_to_f32(&mut want_back, &want);
                let got_back = gpu.download(&back).unwrap();
                assert!(got_back.iter().zip(&want_back).all(|(a, b)| a.to_bits() == b.to_bits()), "f16 -> f32");
                // bf16
                let mut want = vec![bf16::ZERO; n];
                super::super::f32_to_bf16(&mut want, &x);
                let mut out = gpu.upload(&vec![bf16::from_bits(0x7f99); n]).unwrap();
                f32_to_bf16(gpu, &mut out.as_view_mut(), &dx.as_view()).unwrap();
                let got = gpu.download(&out).unwrap();
                same_bits16(
                    "f32 -> bf16",
                    &got.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                    &want.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                    &x,
                );
                let mut back = poisoned(gpu, n).unwrap();
                bf16_to_f32(gpu, &mut back.as_view_mut(), &out.as_view()).unwrap();
                let mut want_back = vec![0.0f32; n];
                super::super::bf16_to_f32(&mut want_back, &want);
                let got_back = gpu.download(&back).unwrap();
                assert!(got_back.iter().zip(&want_back).all(|(a, b)| a.to_bits() == b.to_bits()), "bf16 -> f32");
            }
        }

        /// Unscaling is bitwise the CPU's; the flag is set by an inf or a NaN anywhere (first, last, middle
        /// element, or in many threads of many blocks at once), stays clear for finite gradients, is not
        /// cleared by a later clean call, and a scale of 1 leaves the gradients alone.
        #[test]
        fn unscale_matches_cpu() {
            let Some(gpu) = gpu_or_skip("unscale_matches_cpu") else { return };
            let mut rng = Rng::new(test_seed("unscale_matches_cpu"));
            let n = 100_003;
            // Every 997th gradient: many threads of many blocks set the flag in one launch.
            let scattered: Vec<(usize, f32)> = (0..n).step_by(997).map(|i| (i, f32::NAN)).collect();
            let cases: [(&[(usize, f32)], f32); 6] = [
                (&[], 1.0 / 65536.0),
                (&[(0, f32::INFINITY)], 0.5),
                (&[(n - 1, f32::NAN)], 1.0 / 3.0),
                (&[(n / 2, f32::NEG_INFINITY)], 1.0),
                (&scattered, 0.25),
                (&[], 1.0),
            ];
            for (bad, inv_scale) in cases {
                let mut g: Vec<f32> = (0..n).map(|_| (rng.normal() * 1e4) as f32).collect();
                for &(i, v) in bad {
                    g[i] = v;
                }
                let bad = &bad[..bad.len().min(2)]; // what a failure message names
                let mut dg = gpu.upload(&g).unwrap();
                let mut flag = gpu.upload(&[0.0f32]).unwrap();
                unscale_and_check(gpu, &mut dg.as_view_mut(), inv_scale, &mut flag.as_view_mut()).unwrap();
                let found_want = super::super::unscale_and_check(&mut g, inv_scale);
                assert_eq!(download_found_inf(gpu, &flag).unwrap(), found_want, "{bad:?}: found_inf");
                assert_eq!(found_want, !bad.is_empty());
                let got = gpu.download(&dg).unwrap();
                assert!(got.iter().zip(&g).all(|(a, b)| a.to_bits() == b.to_bits()), "{bad:?}: unscaled gradients");
                // A later call over finite gradients leaves a set flag set.
                let mut clean = gpu.upload(&[1.0f32; 5]).unwrap();
                unscale_and_check(gpu, &mut clean.as_view_mut(), 0.5, &mut flag.as_view_mut()).unwrap();
                assert_eq!(download_found_inf(gpu, &flag).unwrap(), found_want, "the flag is sticky");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conversions are `half`'s, elementwise, on both the sequential and the parallel path.
    #[test]
    fn conversions_are_halfs() {
        for n in [7usize, PAR_MIN_ELEMS + 3] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 - 3.0) * 0.37).collect();
            let (mut h, mut b) = (vec![f16::ZERO; n], vec![bf16::ZERO; n]);
            f32_to_f16(&mut h, &x);
            f32_to_bf16(&mut b, &x);
            assert!(h.iter().zip(&x).all(|(h, &x)| *h == f16::from_f32(x)));
            assert!(b.iter().zip(&x).all(|(b, &x)| *b == bf16::from_f32(x)));
            let (mut hx, mut bx) = (vec![0.0f32; n], vec![0.0f32; n]);
            f16_to_f32(&mut hx, &h);
            bf16_to_f32(&mut bx, &b);
            assert!(hx.iter().zip(&h).all(|(y, h)| *y == h.to_f32()));
            assert!(bx.iter().zip(&b).all(|(y, b)| *y == b.to_f32()));
        }
    }

    /// torch's GradScaler semantics: non-finite values are detected before unscaling, a scale of 1 does
    /// not touch the gradients, and the parallel path finds an inf in its last chunk.
    #[test]
    fn unscale_checks_then_multiplies() {
        let mut g = vec![2.0f32, -4.0, 8.0];
        assert!(!unscale_and_check(&mut g, 0.25));
        assert_eq!(g, [0.5, -1.0, 2.0]);
        let mut g = vec![1.0f32, f32::NAN];
        assert!(unscale_and_check(&mut g, 1.0));
        assert_eq!(g[0], 1.0);
        // f32::MAX * 2 overflows to inf after unscaling, but the check looks at the input: finite.
        let mut g = vec![f32::MAX];
        assert!(!unscale_and_check(&mut g, 2.0));
        assert!(g[0].is_infinite());
        let mut g = vec![1.0f32; PAR_MIN_ELEMS + 5];
        *g.last_mut().unwrap() = f32::INFINITY;
        assert!(unscale_and_check(&mut g, 0.5));
        assert!(g[..PAR_MIN_ELEMS].iter().all(|&v| v == 0.5));
    }
}
