//! Host side of `layer_norm.cu`: the GPU twins of [`layer_norm_forward`](super::layer_norm_forward) (with
//! the saved mean / rstd) and [`layer_norm_backward`](super::layer_norm_backward), with the CPU's
//! formulas and roundings. The input (and its gradient) is stored in `X`, the output (and its gradient) in
//! `Y`, each f32 or one half type (see `layer_norm.cu`); the statistics and parameters are f32.

use cudarc::driver::{CudaView, CudaViewMut, DevicePtrMut};

use super::CUDA;
use crate::cuda::launch::{column_grid, row_launch, NULL};
use crate::cuda::store::pick_pair;
use crate::cuda::{Gpu, GpuError, Store};
use crate::store_pairs;

/// Layer norm forward on the GPU (overwrites `out`, `save_mean`, `save_rstd`).
/// inp, out: [rows, dim], weight / bias: [dim] or None, save_mean / save_rstd: [rows].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward<X: Store, Y: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    save_mean: &mut CudaViewMut<f32>,
    save_rstd: &mut CudaViewMut<f32>,
    inp: &CudaView<X>,
    weight: Option<&CudaView<f32>>,
    bias: Option<&CudaView<f32>>,
    rows: usize,
    dim: usize,
    eps: f64,
) -> Result<(), GpuError> {
    assert_eq!(inp.len(), rows * dim, "layer_norm_forward: inp must be [rows, dim]");
    assert_eq!(out.len(), rows * dim, "layer_norm_forward: out must be [rows, dim]");
    assert_eq!(save_mean.len(), rows, "layer_norm_forward: save_mean must be [rows]");
    assert_eq!(save_rstd.len(), rows, "layer_norm_forward: save_rstd must be [rows]");
    assert!(weight.is_none_or(|w| w.len() == dim), "layer_norm_forward: weight must be [dim]");
    assert!(bias.is_none_or(|b| b.len() == dim), "layer_norm_forward: bias must be [dim]");
    if dim == 0 || rows == 0 {
        return Ok(());
    }
    let (warp, cfg) = row_launch(rows, dim);
    let names = if warp { store_pairs!("ln_forward_warp") } else { store_pairs!("ln_forward") };
    let f = gpu.function(&CUDA, pick_pair::<X, Y>(names))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(save_mean).arg(save_rstd).arg(inp);
    match weight {
        Some(w) => l.arg(w),
        None => l.arg(&NULL),
    };
    match bias {
        Some(b) => l.arg(b),
        None => l.arg(&NULL),
    };
    l.arg(&rows).arg(&dim).arg(&eps);
    // SAFETY: (Y*, float* x2, const X*, const float* x2, size_t, size_t, double) as declared for this pair;
    // lengths checked; absent weight / bias are null pointers, which the kernel tests.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Layer norm backward on the GPU: overwrites `dinp`; accumulates `dweight += sum_rows dout * xhat` and
/// `dbias += sum_rows dout` (None skips either). dout, inp, dinp: [rows, dim]; save_mean, save_rstd:
/// [rows]; weight, dweight, dbias: [dim].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<X: Store, Y: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<X>,
    dweight: Option<&mut CudaViewMut<f32>>,
    dbias: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<Y>,
    inp: &CudaView<X>,
    save_mean: &CudaView<f32>,
    save_rstd: &CudaView<f32>,
    weight: Option<&CudaView<f32>>,
    rows: usize,
    dim: usize,
) -> Result<(), GpuError> {
    assert_eq!(inp.len(), rows * dim, "layer_norm_backward: inp must be [rows, dim]");
    assert_eq!(dout.len(), rows * dim, "layer_norm_backward: dout must be [rows, dim]");
    assert_eq!(dinp.len(), rows * dim, "layer_norm_backward: dinp must be [rows, dim]");
    assert_eq!(save_mean.len(), rows, "layer_norm_backward: save_mean must be [rows]");
    assert_eq!(save_rstd.len(), rows, "layer_norm_backward: save_rstd must be [rows]");
    assert!(weight.is_none_or(|w| w.len() == dim), "layer_norm_backward: weight must be [dim]");
    assert!(dweight.as_ref().is_none_or(|w| w.len() == dim), "layer_norm_backward: dweight must be [dim]");
    assert!(dbias.as_ref().is_none_or(|b| b.len() == dim), "layer_norm_backward: dbias must be [dim]");
    if dim == 0 || rows == 0 {
        return Ok(());
    }
    let (warp, cfg) = row_launch(rows, dim);
    let names = if warp { store_pairs!("ln_backward_input_warp") } else { store_pairs!("ln_backward_input") };
    let f = gpu.function(&CUDA, pick_pair::<X, Y>(names))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dinp).arg(dout).arg(inp).arg(save_mean).arg(save_rstd);
    match weight {
        Some(w) => l.arg(w),
        None => l.arg(&NULL),
    };
    l.arg(&rows).arg(&dim);
    // SAFETY: (X*, const Y*, const X*, const float* x3, size_t, size_t) for this pair; lengths checked; an
    // absent weight is null.
    unsafe { l.launch(cfg) }?;
    if dweight.is_none() && dbias.is_none() {
        return Ok(());
    }
    // The parameter gradients: chunked column sums (see layer_norm.cu), through the device scratch when
    // there is more than one chunk.
    let (per, chunks, cfg) = column_grid(rows, dim);
    let partials = gpu.function(&CUDA, pick_pair::<X, Y>(store_pairs!("ln_params_partials")))?;
    let direct = (chunks == 1) as i32;
    let (dw, db) = (dweight.map(|d| d.device_ptr_mut(gpu.stream()).0), dbias.map(|d| d.device_ptr_mut(gpu.stream()).0));
    let (dw, db) = (dw.unwrap_or(NULL), db.unwrap_or(NULL));
    // Doubles: two sums per column and chunk.
    gpu.with_scratch(if direct == 1 { 0 } else { 4 * chunks * dim }, |parts| {
        let mut l = gpu.launch_builder(&partials);
        l.arg(&dw).arg(&db).arg(&mut *parts).arg(dout).arg(inp).arg(save_mean).arg(save_rstd);
        l.arg(&rows).arg(&dim).arg(&per).arg(&direct);
        // SAFETY: (float* x2, double*, const Y*, const X*, const float* x2, size_t x3, int); lengths checked;
        // absent gradients are null; parts (unused when direct) holds 2 * chunks * dim doubles at the scratch's aligned start.
        unsafe { l.launch(cfg) }?;
        if direct == 0 {
            let sum = gpu.function(&CUDA, "ln_params_sum_f32")?;
            let mut l = gpu.launch_builder(&sum);
            l.arg(&dw).arg(&db).arg(&*parts).arg(&chunks).arg(&dim);
            // SAFETY: (float* x2, const double*, size_t, size_t); as above.
            unsafe { l.launch(gpu.elementwise(dim)) }?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward (outputs and saved statistics) and backward (dinp; dweight / dbias accumulated onto
    /// non-zero values) against the CPU, with and without affine parameters, with the input (and its
    /// gradient) stored in `X` and the output (and its gradient) in `Y` (f32, or f16 / bf16 under autocast).
    /// The reference is the CPU's on the stored input and output gradient, its output and input gradient
    /// rounded where the kernels store them (no rounding for f32).
    ///
    /// Tolerances: the row statistics are f64 sums in another order rounded to f32 (equal or 1 ulp: rtol
    /// 1e-6); outputs use the CPU's f32 formula on them, so a 1-ulp statistic moves |xhat| <= ~4 outputs by
    /// <= ~1e-6 (atol 5e-6 + rtol 1e-5). The backward is fed the CPU's saved statistics; its row sums are
    /// f64 in another order (atol 1e-5 + rtol 1e-5 for dinp, whose terms are O(rstd)); the parameter
    /// gradients are the CPU's column sums in row order (1e-6). A stored output or input gradient adds one
    /// unit in the last place of its type (a reference value within the tolerance of a rounding boundary may
    /// round the other way).
    fn case<X: TestStore, Y: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng, shapes: &[(usize, usize, bool)]) {
        let what = format!("layer_norm {} -> {}", X::KIND.name(), Y::KIND.name());
        for &(rows, dim, affine) in shapes {
            let len = rows * dim;
            let (d_x, x) = upload_as::<X>(gpu, &rand_vec(rng, len, -2.0, 3.0));
            let (w, b) = (rand_vec(rng, dim, 0.5, 1.5), rand_vec(rng, dim, -1.0, 1.0));
            let (d_dout, dout) = upload_as::<Y>(gpu, &rand_vec(rng, len, -1.0, 1.0));
            let (dw0, db0) = (rand_vec(rng, dim, -1.0, 1.0), rand_vec(rng, dim, -1.0, 1.0));
            let (wo, bo) = if affine { (Some(&w[..]), Some(&b[..])) } else { (None, None) };
            let (mut want, mut sm, mut sr) = (vec![0.0f32; len], vec![0.0f32; rows], vec![0.0f32; rows]);
            super::super::layer_norm_forward(&mut want, &mut sm, &mut sr, &x, wo, bo, rows, dim, 1e-5);
            let want: Vec<f32> = want.iter().map(|&v| Y::round(v)).collect();
            let (dw, db) = (gpu.upload(&w).unwrap(), gpu.upload(&b).unwrap());
            let (wv, bv) = (dw.as_view(), db.as_view());
            let (wov, bov) = if affine { (Some(&wv), Some(&bv)) } else { (None, None) };
            let mut out = poisoned_as::<Y>(gpu, len);
            let (mut gsm, mut gsr) = (poisoned(gpu, rows).unwrap(), poisoned(gpu, rows).unwrap());
            let (mut gsmv, mut gsrv) = (gsm.as_view_mut(), gsr.as_view_mut());
            layer_norm_forward(
                gpu,
                &mut out.as_view_mut(),
                &mut gsmv,
                &mut gsrv,
                &d_x.as_view(),
                wov,
                bov,
                rows,
                dim,
                1e-5,
            )
            .unwrap();
            let case = format!("{what} rows{rows} dim{dim} affine {affine}");
            assert_close(&format!("{case} save_mean"), &gpu.download(&gsm).unwrap(), &sm, 1e-7, 1e-6);
            assert_close(&format!("{case} save_rstd"), &gpu.download(&gsr).unwrap(), &sr, 0.0, 1e-6);
            assert_close(&format!("{case} out"), &download_f32(gpu, &out), &want, 5e-6, 1e-5 + Y::ULP);

            let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0f32; len], dw0.clone(), db0.clone());
            super::super::layer_norm_backward(
                &mut want_dx,
                affine.then_some(&mut want_dw[..]),
                affine.then_some(&mut want_db[..]),
                &dout,
                &x,
                &sm,
                &sr,
                wo,
                rows,
                dim,
            );
            let want_dx: Vec<f32> = want_dx.iter().map(|&v| X::round(v)).collect();
            let (dsm, dsr) = (gpu.upload(&sm).unwrap(), gpu.upload(&sr).unwrap());
            let mut ddx = poisoned_as::<X>(gpu, len);
            let (mut ddw, mut ddb) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
            let (mut ddwv, mut ddbv) = (ddw.as_view_mut(), ddb.as_view_mut());
            layer_norm_backward(
                gpu,
                &mut ddx.as_view_mut(),
                affine.then_some(&mut ddwv),
                affine.then_some(&mut ddbv),
                &d_dout.as_view(),
                &d_x.as_view(),
                &dsm.as_view(),
                &dsr.as_view(),
                wov,
                rows,
                dim,
            )
            .unwrap();
            assert_close(&format!("{case} dinp"), &download_f32(gpu, &ddx), &want_dx, 1e-5, 1e-5 + X::ULP);
            assert_close(&format!("{case} dweight"), &gpu.download(&ddw).unwrap(), &want_dw, 1e-6, 1e-6);
            assert_close(&format!("{case} dbias"), &gpu.download(&ddb).unwrap(), &want_db, 1e-6, 1e-6);
        }
    }

    /// [`case`] in f32: one row and many, widths below and above the block, rows past one chunk of the
    /// parameter gradients' column sums (64) and past 256 chunks of 64 too.
    #[test]
    fn layer_norm_matches_cpu() {
        let Some(gpu) = gpu_or_skip("layer_norm_matches_cpu") else { return };
        let mut rng = seeded("layer_norm_matches_cpu");
        let shapes = [(1, 8, true), (7, 300, true), (33, 5, false), (4, 1025, true), (200, 40, true), (16500, 3, true)];
        case::<f32, f32>(gpu, &mut rng, &shapes);
    }

    /// Layer norm in half storage: a half input read as autocast's f32 op reads it, an output rounded once
    /// into the half type a product would round it to, and both (every pair the storage plan can ask for).
    #[test]
    fn layer_norm_in_half_storage_matches_the_rounded_reference() {
        let Some(gpu) = gpu_or_skip("layer_norm_in_half_storage_matches_the_rounded_reference") else { return };
        let mut rng = seeded("layer_norm_in_half_storage_matches_the_rounded_reference");
        // Warp rows, block rows, no affine parameters, and more than one chunk of the column sums.
        let shapes = [(7, 300, true), (200, 40, true), (33, 5, false), (4, 1025, true)];
        for_each_half_pair!(case(gpu, &mut rng, &shapes));
    }
}
