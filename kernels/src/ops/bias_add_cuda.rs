//! Host side of `bias_add.cu`: the GPU twins of [`bias_add_forward`](super::bias_add_forward) (bit-identical)
//! and [`bias_add_backward`](super::bias_add_backward) (deterministic, within rounding).

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

use super::CUDA;
use crate::cuda::launch::column_grid;
use crate::cuda::{Gpu, GpuError, Store};

/// Adds `bias` to every row of `out_inplace` on the GPU. out_inplace: [B, N] (stored in `T`), bias: [N].
pub fn bias_add_forward<T: Store>(
    gpu: &Gpu,
    out_inplace: &mut CudaViewMut<T>,
    bias: &CudaView<f32>,
    b: usize,
    n: usize,
) -> Result<(), GpuError> {
    assert_eq!(out_inplace.len(), b * n, "bias_add_forward: out must be [B, N]");
    assert_eq!(bias.len(), n, "bias_add_forward: bias must be [N]");
    if b * n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(["bias_add_forward_f32", "bias_add_forward_f16", "bias_add_forward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out_inplace).arg(bias).arg(&b).arg(&n);
    // SAFETY: (T*, const float*, size_t, size_t) as the kernel declares; out holds b*n, bias n elements.
    unsafe { l.launch(gpu.elementwise(b * n)) }?;
    Ok(())
}

/// `dbias[j] += sum_i dout[i, j]` on the GPU (accumulates). dbias: [N], dout: [B, N] (stored in `T`).
///
/// Chunks of rows are summed in parallel and the chunk sums added in order (two launches; one up to 64
/// rows), over a grid fixed by the shape: deterministic, within rounding of the CPU's sum in row order. A
/// thread per column summing every row, as the CPU does, leaves a GPU idle and waits on one long dependency
/// chain (a ViT's 25,600 token rows at batch 512).
pub fn bias_add_backward<T: Store>(
    gpu: &Gpu,
    dbias: &mut CudaViewMut<f32>,
    dout: &CudaView<T>,
    b: usize,
    n: usize,
) -> Result<(), GpuError> {
    assert_eq!(dbias.len(), n, "bias_add_backward: dbias must be [N]");
    assert_eq!(dout.len(), b * n, "bias_add_backward: dout must be [B, N]");
    if n == 0 || b == 0 {
        return Ok(());
    }
    match column_scratch_len(b, n) {
        0 => column_sum_of(gpu, dbias, dout, b, n, None),
        len => gpu.with_scratch(len, |parts| column_sum_of(gpu, dbias, dout, b, n, Some(parts))),
    }
}

/// The two passes of a column sum onto `dbias` ([N]) over `[B, N]` (see `column_grid`): `pass1(dst, rows
/// per chunk, direct, launch)` queues a `bias_grad_partials_f32`-style kernel that writes each chunk's sums
/// into `dst`, straight onto `dbias` when `direct` is 1 (one chunk); otherwise `dst` is device scratch of a
/// row per chunk, and `bias_grad_sum_f32` adds the rows in chunk order.
pub(crate) fn column_sums(
    gpu: &Gpu,
    dbias: &mut CudaViewMut<f32>,
    b: usize,
    n: usize,
    pass1: impl FnMut(&mut CudaViewMut<f32>, usize, i32, LaunchConfig) -> Result<(), GpuError>,
) -> Result<(), GpuError> {
    match column_scratch_len(b, n) {
        0 => column_sums_in(gpu, dbias, b, n, None, pass1),
        len => gpu.with_scratch(len, |parts| column_sums_in(gpu, dbias, b, n, Some(parts), pass1)),
    }
}

/// Device scratch that [`column_sums_in`] needs over `[B, N]`: a row of N per chunk, none for one chunk.
pub(crate) fn column_scratch_len(b: usize, n: usize) -> usize {
    match column_grid(b, n) {
        (_, 1, _) => 0,
        (_, chunks, _) => chunks * n,
    }
}

/// [`column_sums`] with the chunk sums in the caller's `parts` (at least [`column_scratch_len`] elements),
/// for a caller that holds the device scratch already.
pub(crate) fn column_sums_in(
    gpu: &Gpu,
    dbias: &mut CudaViewMut<f32>,
    b: usize,
    n: usize,
    parts: Option<&mut CudaViewMut<f32>>,
    mut pass1: impl FnMut(&mut CudaViewMut<f32>, usize, i32, LaunchConfig) -> Result<(), GpuError>,
) -> Result<(), GpuError> {
    let (per, chunks, cfg) = column_grid(b, n);
    if chunks == 1 {
        return pass1(dbias, per, 1, cfg);
    }
    let parts = parts.expect("column_sums_in: more than one chunk needs the parts scratch");
    assert!(parts.len() >= chunks * n, "column_sums_in: parts must hold column_scratch_len elements");
    let sum = gpu.function(&CUDA, "bias_grad_sum_f32")?;
    pass1(parts, per, 0, cfg)?;
    let mut l = gpu.launch_builder(&sum);
    l.arg(&mut *dbias).arg(&*parts).arg(&chunks).arg(&n);
    // SAFETY: (float*, const float*, size_t, size_t); dbias holds n, parts at least chunks*n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

/// `dbias[j] += sum_i dout[i, j]` as [`bias_add_backward`] computes it, with the chunk sums in the caller's
/// `parts` (at least [`column_scratch_len`]`(b, n)` elements; None when that is 0).
pub(crate) fn column_sum_of<T: Store>(
    gpu: &Gpu,
    dbias: &mut CudaViewMut<f32>,
    dout: &CudaView<T>,
    b: usize,
    n: usize,
    parts: Option<&mut CudaViewMut<f32>>,
) -> Result<(), GpuError> {
    let names = ["bias_grad_partials_f32", "bias_grad_partials_f16", "bias_grad_partials_bf16"];
    let partials = gpu.function(&CUDA, T::pick(names))?;
    column_sums_in(gpu, dbias, b, n, parts, |dst, per, direct, cfg| {
        let mut l = gpu.launch_builder(&partials);
        l.arg(dst).arg(dout).arg(&b).arg(&n).arg(&per).arg(&direct);
        // SAFETY: (float*, const T*, size_t, size_t, size_t, int); dst holds n elements (direct) or one row
        // of n per chunk, dout b*n elements.
        unsafe { l.launch(cfg) }?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// The forward equals the CPU bit for bit (the same f32 addition). The accumulating backward matches a
    /// float64 column sum within f32 rounding of a sum of B terms, and is deterministic (two runs agree bit
    /// for bit). Batches of 1 and more, one chunk (64 rows), just past it, and past 256 chunks of 64 (longer
    /// chunks); widths below, at and above a 32-column block.
    #[test]
    fn bias_add_matches_cpu() {
        let Some(gpu) = gpu_or_skip("bias_add_matches_cpu") else { return };
        let mut rng = seeded("bias_add_matches_cpu");
        for &(b, n) in &[(1usize, 1usize), (1, 300), (7, 5), (64, 33), (65, 32), (129, 257), (1000, 3), (20000, 40)] {
            let x = rand_vec(&mut rng, b * n, -2.0, 2.0);
            let bias = rand_vec(&mut rng, n, -1.0, 1.0);
            let db0 = rand_vec(&mut rng, n, -1.0, 1.0);
            let mut want = x.clone();
            super::super::bias_add_forward(&mut want, &bias, b, n);
            let want_db: Vec<f32> =
                (0..n).map(|j| (db0[j] as f64 + (0..b).map(|i| x[i * n + j] as f64).sum::<f64>()) as f32).collect();

            let (mut dx, dbias) = (gpu.upload(&x).unwrap(), gpu.upload(&bias).unwrap());
            bias_add_forward(gpu, &mut dx.as_view_mut(), &dbias.as_view(), b, n).unwrap();
            assert_bitwise(&format!("bias_add_forward {b}x{n}"), &gpu.download(&dx).unwrap(), &want);
            let dxin = gpu.upload(&x).unwrap();
            let mut runs = Vec::new();
            for _ in 0..2 {
                let mut ddb = gpu.upload(&db0).unwrap();
                bias_add_backward(gpu, &mut ddb.as_view_mut(), &dxin.as_view(), b, n).unwrap();
                runs.push(gpu.download(&ddb).unwrap());
            }
            // Terms up to 2 in magnitude: f32 sums of B of them stay within ~B * 2 * 2^-24 * log-depth.
            let atol = 1e-6 + 4.0 * b as f32 * f32::EPSILON;
            assert_close(&format!("bias_add_backward {b}x{n}"), &runs[0], &want_db, atol, 1e-6);
            assert_bitwise(&format!("bias_add_backward {b}x{n} rerun"), &runs[1], &runs[0]);
        }
    }

    /// Half storage of the activations (the bias and its gradient stay f32): the forward is the f32 sum of
    /// the stored value and the bias rounded once, bit for bit; the backward sums the stored values (f64
    /// reference, f32 accumulation tolerance).
    fn half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        for &(b, n) in &[(1usize, 300usize), (65, 32), (1000, 3)] {
            let (dx, x) = upload_as::<T>(gpu, &rand_vec(rng, b * n, -2.0, 2.0));
            let bias = rand_vec(rng, n, -1.0, 1.0);
            let db0 = rand_vec(rng, n, -1.0, 1.0);
            let mut want = x.clone();
            super::super::bias_add_forward(&mut want, &bias, b, n);
            want.iter_mut().for_each(|v| *v = T::round(*v));
            let dbias = gpu.upload(&bias).unwrap();
            let mut out = dx.clone();
            bias_add_forward(gpu, &mut out.as_view_mut(), &dbias.as_view(), b, n).unwrap();
            let what = format!("bias_add_forward {} {b}x{n}", T::KIND.name());
            assert_bitwise(&what, &download_f32(gpu, &out), &want);
            let want_db: Vec<f32> =
                (0..n).map(|j| (db0[j] as f64 + (0..b).map(|i| x[i * n + j] as f64).sum::<f64>()) as f32).collect();
            let mut ddb = gpu.upload(&db0).unwrap();
            bias_add_backward(gpu, &mut ddb.as_view_mut(), &dx.as_view(), b, n).unwrap();
            let atol = 1e-6 + 4.0 * b as f32 * f32::EPSILON;
            let what = format!("bias_add_backward {} {b}x{n}", T::KIND.name());
            assert_close(&what, &gpu.download(&ddb).unwrap(), &want_db, atol, 1e-6);
        }
    }

    #[test]
    fn bias_add_in_half_storage_matches_the_rounded_cpu() {
        let Some(gpu) = gpu_or_skip("bias_add_in_half_storage_matches_the_rounded_cpu") else { return };
        let mut rng = seeded("bias_add_in_half_storage_matches_the_rounded_cpu");
        half_case::<half::f16>(gpu, &mut rng);
        half_case::<half::bf16>(gpu, &mut rng);
    }
}
