//! Host side of `token_mean.cu`: the GPU twins of [`token_mean_forward`](super::token_mean_forward) and
//! [`token_mean_backward`](super::token_mean_backward), bit-identical to them. Input, output and gradients
//! are stored in `T` (f32, or one half type under autocast; each stored value rounded once).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError, Store};

/// `y[n, j] = mean_i x[n, i, j]` on the GPU (overwrites `y`). x: [N, T, D], y: [N, D].
pub fn token_mean_forward<T: Store>(
    gpu: &Gpu,
    y: &mut CudaViewMut<T>,
    x: &CudaView<T>,
    n: usize,
    t: usize,
    d: usize,
) -> Result<(), GpuError> {
    assert_eq!(x.len(), n * t * d, "token_mean_forward: x must be [N, T, D]");
    assert_eq!(y.len(), n * d, "token_mean_forward: y must be [N, D]");
    if n * d == 0 {
        return Ok(());
    }
    let f =
        gpu.function(&CUDA, T::pick(["token_mean_forward_f32", "token_mean_forward_f16", "token_mean_forward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(y).arg(x).arg(&n).arg(&t).arg(&d);
    // SAFETY: (T*, const T*, size_t x3) for T; y holds n*d and x n*t*d elements.
    unsafe { l.launch(gpu.elementwise(n * d)) }?;
    Ok(())
}

/// Backward of [`token_mean_forward`] on the GPU: `dx[n, i, j] = dy[n, j] / T` (overwrites `dx`).
/// dy: [N, D], dx: [N, T, D].
pub fn token_mean_backward<T: Store>(
    gpu: &Gpu,
    dx: &mut CudaViewMut<T>,
    dy: &CudaView<T>,
    n: usize,
    t: usize,
    d: usize,
) -> Result<(), GpuError> {
    assert_eq!(dx.len(), n * t * d, "token_mean_backward: dx must be [N, T, D]");
    assert_eq!(dy.len(), n * d, "token_mean_backward: dy must be [N, D]");
    if n * t * d == 0 {
        return Ok(());
    }
    // The CPU's f32 reciprocal.
    let inv = 1.0 / t as f32;
    let f = gpu
        .function(&CUDA, T::pick(["token_mean_backward_f32", "token_mean_backward_f16", "token_mean_backward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dx).arg(dy).arg(&n).arg(&t).arg(&d).arg(&inv);
    // SAFETY: (T*, const T*, size_t x3, float) for T; dx holds n*t*d and dy n*d elements.
    unsafe { l.launch(gpu.elementwise(n * t * d)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward and backward bitwise against the CPU (the same f64 fold and f32 product in the same
    /// order): one sample and several, one token and many, odd widths.
    #[test]
    fn token_mean_matches_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("token_mean_matches_cpu_bitwise") else { return };
        let mut rng = seeded("token_mean_matches_cpu_bitwise");
        for &(n, t, d) in &[(1usize, 1usize, 1usize), (1, 5, 64), (3, 17, 33), (7, 197, 65)] {
            let x = rand_vec(&mut rng, n * t * d, -2.0, 2.0);
            let dy = rand_vec(&mut rng, n * d, -1.0, 1.0);
            let what = format!("token_mean n{n} t{t} d{d}");
            let (mut want, mut want_dx) = (vec![0.0f32; n * d], vec![0.0f32; n * t * d]);
            super::super::token_mean_forward(&mut want, &x, n, t, d);
            super::super::token_mean_backward(&mut want_dx, &dy, n, t, d);
            let (gx, gdy) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
            let mut y = poisoned(gpu, n * d).unwrap();
            token_mean_forward(gpu, &mut y.as_view_mut(), &gx.as_view(), n, t, d).unwrap();
            assert_bitwise(&format!("{what} forward"), &gpu.download(&y).unwrap(), &want);
            let mut dx = poisoned(gpu, n * t * d).unwrap();
            token_mean_backward(gpu, &mut dx.as_view_mut(), &gdy.as_view(), n, t, d).unwrap();
            assert_bitwise(&format!("{what} backward"), &gpu.download(&dx).unwrap(), &want_dx);
        }
    }

    /// The token mean in half storage: the CPU's f64 fold (forward) and f32 product (backward) of the stored
    /// values, rounded once, bit for bit.
    fn half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let (n, t, d) = (3usize, 17usize, 33usize);
        let (gx, x) = upload_as::<T>(gpu, &rand_vec(rng, n * t * d, -2.0, 2.0));
        let (gdy, dy) = upload_as::<T>(gpu, &rand_vec(rng, n * d, -1.0, 1.0));
        let what = format!("token_mean {}", T::KIND.name());
        let (mut want, mut want_dx) = (vec![0.0f32; n * d], vec![0.0f32; n * t * d]);
        super::super::token_mean_forward(&mut want, &x, n, t, d);
        super::super::token_mean_backward(&mut want_dx, &dy, n, t, d);
        let round = |v: Vec<f32>| -> Vec<f32> { v.iter().map(|&x| T::round(x)).collect() };
        let mut y = poisoned_as::<T>(gpu, n * d);
        token_mean_forward(gpu, &mut y.as_view_mut(), &gx.as_view(), n, t, d).unwrap();
        assert_bitwise(&format!("{what} forward"), &download_f32(gpu, &y), &round(want));
        let mut dx = poisoned_as::<T>(gpu, n * t * d);
        token_mean_backward(gpu, &mut dx.as_view_mut(), &gdy.as_view(), n, t, d).unwrap();
        assert_bitwise(&format!("{what} backward"), &download_f32(gpu, &dx), &round(want_dx));
    }

    #[test]
    fn token_mean_in_half_storage_rounds_once() {
        let Some(gpu) = gpu_or_skip("token_mean_in_half_storage_rounds_once") else { return };
        let mut rng = seeded("token_mean_in_half_storage_rounds_once");
        half_case::<half::f16>(gpu, &mut rng);
        half_case::<half::bf16>(gpu, &mut rng);
    }
}
