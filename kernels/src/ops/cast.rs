//! Mixed-precision (AMP) casts: f32 <-> f16 / bf16 conversion. (The loss scale's unscale and check live
//! with the rest of dynamic loss scaling in [`crate::optim::loss_scale`].)
//!
//! The conversions are the `half` crate's (round to nearest even, as `torch.Tensor.half()` / `.bfloat16()`);
//! the CUDA kernels in `cast.cu` reproduce them bit for bit, NaN payloads included.

use half::{bf16, f16};

use super::par::map_unary;

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

/// The CUDA kernels of the casts (`cast.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "cast",
    code: include_str!("cast.cu"),
    kernels: &["cast_f32_to_f16", "cast_f16_to_f32", "cast_f32_to_bf16", "cast_bf16_to_f32"],
};

/// Host side of `cast.cu`.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::par::PAR_MIN_ELEMS;

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
}
