//! Host side of `upsample.cu`: the GPU twins of
//! [`upsample_nearest2d_forward`](super::upsample_nearest2d_forward) and
//! [`upsample_nearest2d_backward`](super::upsample_nearest2d_backward), bit-identical to them. Input, output
//! and gradients are stored in `T` (f32, or one half type under autocast; the backward's sums rounded once).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError, Store};

/// Launches the `T` instantiation of `kernels` (`[f32, f16, bf16]`) as `kernel(dst, src, planes, h, w, sh,
/// sw)` over `elems` elements.
#[allow(clippy::too_many_arguments)]
fn launch<T: Store>(
    gpu: &Gpu,
    kernels: [&'static str; 3],
    dst: &mut CudaViewMut<T>,
    src: &CudaView<T>,
    planes: usize,
    hw: (usize, usize),
    s: (usize, usize),
    elems: usize,
) -> Result<(), GpuError> {
    if elems == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(kernels))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dst).arg(src).arg(&planes).arg(&hw.0).arg(&hw.1).arg(&s.0).arg(&s.1);
    // SAFETY: (T*, const T*, size_t x5) as both kernels declare for T; the callers checked the lengths.
    unsafe { l.launch(gpu.elementwise(elems)) }?;
    Ok(())
}

/// Nearest upsampling forward on the GPU (overwrites `out`): `out[n, c, i, j] = inp[n, c, i / sh, j / sw]`.
/// inp: [N, C, H, W], out: [N, C, H*sh, W*sw].
#[allow(clippy::too_many_arguments)]
pub fn upsample_nearest2d_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    inp: &CudaView<T>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    sh: usize,
    sw: usize,
) -> Result<(), GpuError> {
    assert!(sh > 0 && sw > 0, "upsample_nearest2d_forward: scale factors must be positive (got {sh}x{sw})");
    assert_eq!(inp.len(), n * c * h * w, "upsample_nearest2d_forward: inp must be [N, C, H, W]");
    assert_eq!(out.len(), n * c * h * sh * w * sw, "upsample_nearest2d_forward: out must be [N, C, H*sh, W*sw]");
    let elems = out.len();
    launch(
        gpu,
        ["upsample_nearest_forward_f32", "upsample_nearest_forward_f16", "upsample_nearest_forward_bf16"],
        out,
        inp,
        n * c,
        (h, w),
        (sh, sw),
        elems,
    )
}

/// Nearest upsampling backward on the GPU (overwrites `dinp`): each input element gets the sum of its
/// `sh x sw` block of output gradients. dinp: [N, C, H, W], dout: [N, C, H*sh, W*sw].
#[allow(clippy::too_many_arguments)]
pub fn upsample_nearest2d_backward<T: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    sh: usize,
    sw: usize,
) -> Result<(), GpuError> {
    assert!(sh > 0 && sw > 0, "upsample_nearest2d_backward: scale factors must be positive (got {sh}x{sw})");
    assert_eq!(dinp.len(), n * c * h * w, "upsample_nearest2d_backward: dinp must be [N, C, H, W]");
    assert_eq!(dout.len(), n * c * h * sh * w * sw, "upsample_nearest2d_backward: dout must be [N, C, H*sh, W*sw]");
    let elems = dinp.len();
    launch(
        gpu,
        ["upsample_nearest_backward_f32", "upsample_nearest_backward_f16", "upsample_nearest_backward_bf16"],
        dinp,
        dout,
        n * c,
        (h, w),
        (sh, sw),
        elems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward and backward bitwise against the CPU: square and rectangular factors (1 included), batch 1
    /// and more, odd plane sizes.
    #[test]
    fn upsample_matches_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("upsample_matches_cpu_bitwise") else { return };
        let mut rng = seeded("upsample_matches_cpu_bitwise");
        for &(n, c, h, w, sh, sw) in &[
            (1usize, 1usize, 1usize, 1usize, 2usize, 2usize),
            (2, 3, 5, 7, 2, 3),
            (3, 17, 9, 4, 1, 2),
            (1, 2, 13, 11, 4, 1),
        ] {
            let x = rand_vec(&mut rng, n * c * h * w, -1.0, 1.0);
            let g = rand_vec(&mut rng, n * c * h * sh * w * sw, -1.0, 1.0);
            let (dx, dg) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
            let what = format!("upsample {n}x{c}x{h}x{w} by {sh}x{sw}");
            let mut want = vec![0.0f32; g.len()];
            super::super::upsample_nearest2d_forward(&mut want, &x, n, c, h, w, sh, sw);
            let mut out = poisoned(gpu, g.len()).unwrap();
            upsample_nearest2d_forward(gpu, &mut out.as_view_mut(), &dx.as_view(), n, c, h, w, sh, sw).unwrap();
            assert_bitwise(&format!("{what} forward"), &gpu.download(&out).unwrap(), &want);
            let mut want_b = vec![0.0f32; x.len()];
            super::super::upsample_nearest2d_backward(&mut want_b, &g, n, c, h, w, sh, sw);
            let mut back = poisoned(gpu, x.len()).unwrap();
            upsample_nearest2d_backward(gpu, &mut back.as_view_mut(), &dg.as_view(), n, c, h, w, sh, sw).unwrap();
            assert_bitwise(&format!("{what} backward"), &gpu.download(&back).unwrap(), &want_b);
        }
    }

    /// Nearest upsampling in half storage: the forward copies stored values exactly; the backward's f32
    /// sums of the stored gradients (the CPU's, same order) are rounded once, bit for bit.
    fn half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let (n, c, h, w, sh, sw) = (2usize, 3usize, 5usize, 7usize, 2usize, 3usize);
        let (dx, x) = upload_as::<T>(gpu, &rand_vec(rng, n * c * h * w, -1.0, 1.0));
        let (dg, g) = upload_as::<T>(gpu, &rand_vec(rng, n * c * h * sh * w * sw, -1.0, 1.0));
        let what = format!("upsample {}", T::KIND.name());
        let mut want = vec![0.0f32; g.len()];
        super::super::upsample_nearest2d_forward(&mut want, &x, n, c, h, w, sh, sw);
        let mut out = poisoned_as::<T>(gpu, g.len());
        upsample_nearest2d_forward(gpu, &mut out.as_view_mut(), &dx.as_view(), n, c, h, w, sh, sw).unwrap();
        assert_bitwise(&format!("{what} forward"), &download_f32(gpu, &out), &want);
        let mut want_b = vec![0.0f32; x.len()];
        super::super::upsample_nearest2d_backward(&mut want_b, &g, n, c, h, w, sh, sw);
        let want_b: Vec<f32> = want_b.iter().map(|&v| T::round(v)).collect();
        let mut back = poisoned_as::<T>(gpu, x.len());
        upsample_nearest2d_backward(gpu, &mut back.as_view_mut(), &dg.as_view(), n, c, h, w, sh, sw).unwrap();
        assert_bitwise(&format!("{what} backward"), &download_f32(gpu, &back), &want_b);
    }

    #[test]
    fn upsample_in_half_storage_rounds_the_cpu_sums_once() {
        let Some(gpu) = gpu_or_skip("upsample_in_half_storage_rounds_the_cpu_sums_once") else { return };
        let mut rng = seeded("upsample_in_half_storage_rounds_the_cpu_sums_once");
        half_case::<half::f16>(gpu, &mut rng);
        half_case::<half::bf16>(gpu, &mut rng);
    }
}
