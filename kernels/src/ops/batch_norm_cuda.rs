//! Host side of `batch_norm.cu`: the GPU twins of
//! [`batch_norm_forward_train`](super::batch_norm_forward_train),
//! [`batch_norm_forward_eval`](super::batch_norm_forward_eval) and
//! [`batch_norm_backward`](super::batch_norm_backward), with the same outputs (saved mean / invstd, running
//! statistics updated with momentum, unbiased running variance) and the same roundings. The input, output
//! and their gradients are stored in `T` (f32, or one half type under autocast, as torch's batch norm keeps
//! a half input's type); statistics and parameters are f32.
//!
//! The training kernels run one block per channel (reduce, then write the channel): C blocks, plenty for
//! the convolutional layers batch norm follows; a layer with very few channels and a huge batch is bound
//! by those few blocks.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

use super::CUDA;
use crate::cuda::launch::{BLOCK, NULL};
use crate::cuda::{Gpu, GpuError, Store};

/// Most blocks a per-channel kernel is launched with (it loops over further channels).
const MAX_CHANNEL_BLOCKS: usize = 1 << 16;

fn check(what: &str, c: usize, vecs: &[(&str, Option<usize>)]) {
    for (name, len) in vecs {
        if let Some(len) = len {
            assert_eq!(*len, c, "{what}: {name} must be [C]");
        }
    }
}

fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.clamp(1, MAX_CHANNEL_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Batch norm forward in training mode on the GPU: overwrites `out`, `save_mean`, `save_invstd`; updates
/// `running_mean` / `running_var` in place (`(1 - momentum) * running + momentum * stat`, unbiased
/// variance). inp, out: [N, C, HW]; the rest: [C]; weight / bias None for `affine=False`.
/// Panics if `N * HW <= 1`, as the CPU does.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_train<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    save_mean: &mut CudaViewMut<f32>,
    save_invstd: &mut CudaViewMut<f32>,
    running_mean: &mut CudaViewMut<f32>,
    running_var: &mut CudaViewMut<f32>,
    inp: &CudaView<T>,
    weight: Option<&CudaView<f32>>,
    bias: Option<&CudaView<f32>>,
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
    momentum: f64,
) -> Result<(), GpuError> {
    let what = "batch_norm_forward_train";
    assert_eq!(inp.len(), n * c * hw, "{what}: inp must be [N, C, HW]");
    assert_eq!(out.len(), n * c * hw, "{what}: out must be [N, C, HW]");
    check(
        what,
        c,
        &[
            ("save_mean", Some(save_mean.len())),
            ("save_invstd", Some(save_invstd.len())),
            ("running_mean", Some(running_mean.len())),
            ("running_var", Some(running_var.len())),
            ("weight", weight.map(|w| w.len())),
            ("bias", bias.map(|b| b.len())),
        ],
    );
    if c == 0 {
        return Ok(());
    }
    let m = n * hw;
    assert!(m > 1, "{what}: expected more than 1 value per channel when training, got N * HW = {m}");
    let f = gpu.function(&CUDA, T::pick(["bn_forward_train_f32", "bn_forward_train_f16", "bn_forward_train_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(save_mean).arg(save_invstd).arg(running_mean).arg(running_var).arg(inp);
    match weight {
        Some(w) => l.arg(w),
        None => l.arg(&NULL),
    };
    match bias {
        Some(b) => l.arg(b),
        None => l.arg(&NULL),
    };
    l.arg(&n).arg(&c).arg(&hw).arg(&eps).arg(&momentum);
    // SAFETY: (T*, float* x4, const T*, const float* x2, size_t x3, double x2) as declared for T; the lengths were checked; an
    // absent weight / bias is a null pointer, which the kernel tests.
    unsafe { l.launch(per_channel(c)) }?;
    Ok(())
}

/// Batch norm forward in eval mode on the GPU (running statistics; overwrites `out`).
/// inp, out: [N, C, HW]; running_mean, running_var, weight, bias: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_eval<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    inp: &CudaView<T>,
    running_mean: &CudaView<f32>,
    running_var: &CudaView<f32>,
    weight: Option<&CudaView<f32>>,
    bias: Option<&CudaView<f32>>,
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
) -> Result<(), GpuError> {
    let what = "batch_norm_forward_eval";
    assert_eq!(inp.len(), n * c * hw, "{what}: inp must be [N, C, HW]");
    assert_eq!(out.len(), n * c * hw, "{what}: out must be [N, C, HW]");
    check(
        what,
        c,
        &[
            ("running_mean", Some(running_mean.len())),
            ("running_var", Some(running_var.len())),
            ("weight", weight.map(|w| w.len())),
            ("bias", bias.map(|b| b.len())),
        ],
    );
    let total = n * c * hw;
    if total == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(["bn_forward_eval_f32", "bn_forward_eval_f16", "bn_forward_eval_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(inp).arg(running_mean).arg(running_var);
    match weight {
        Some(w) => l.arg(w),
        None => l.arg(&NULL),
    };
    match bias {
        Some(b) => l.arg(b),
        None => l.arg(&NULL),
    };
    l.arg(&n).arg(&c).arg(&hw).arg(&eps);
    // SAFETY: (T*, const T*, const float* x4, size_t x3, double) for T; lengths checked, absent buffers are null.
    unsafe { l.launch(gpu.elementwise(total)) }?;
    Ok(())
}

/// Batch norm backward on the GPU (batch statistics of the training forward): overwrites `dinp`,
/// accumulates `dweight += sum(dout * xhat)` and `dbias += sum(dout)` (None skips either).
/// dout, inp, dinp: [N, C, HW]; save_mean, save_invstd, weight, dweight, dbias: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<T>,
    dweight: Option<&mut CudaViewMut<f32>>,
    dbias: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<T>,
    inp: &CudaView<T>,
    save_mean: &CudaView<f32>,
    save_invstd: &CudaView<f32>,
    weight: Option<&CudaView<f32>>,
    n: usize,
    c: usize,
    hw: usize,
) -> Result<(), GpuError> {
    let what = "batch_norm_backward";
    assert_eq!(inp.len(), n * c * hw, "{what}: inp must be [N, C, HW]");
    assert_eq!(dout.len(), n * c * hw, "{what}: dout must be [N, C, HW]");
    assert_eq!(dinp.len(), n * c * hw, "{what}: dinp must be [N, C, HW]");
    check(
        what,
        c,
        &[
            ("save_mean", Some(save_mean.len())),
            ("save_invstd", Some(save_invstd.len())),
            ("weight", weight.map(|w| w.len())),
            ("dweight", dweight.as_ref().map(|d| d.len())),
            ("dbias", dbias.as_ref().map(|d| d.len())),
        ],
    );
    if c == 0 || n * hw == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(["bn_backward_f32", "bn_backward_f16", "bn_backward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dinp);
    match dweight {
        Some(d) => l.arg(d),
        None => l.arg(&NULL),
    };
    match dbias {
        Some(d) => l.arg(d),
        None => l.arg(&NULL),
    };
    l.arg(dout).arg(inp).arg(save_mean).arg(save_invstd);
    match weight {
        Some(w) => l.arg(w),
        None => l.arg(&NULL),
    };
    l.arg(&n).arg(&c).arg(&hw);
    // SAFETY: (T*, float* x2, const T* x2, const float* x3, size_t x3) as declared for T; lengths checked, absent buffers null.
    unsafe { l.launch(per_channel(c)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Training forward (outputs, saved statistics, running statistics), eval forward and backward against
    /// the CPU, affine and not, BatchNorm1d (HW = 1) and 2d shapes, batch 1 (with HW > 1) and more, with the
    /// input, output and their gradients stored in `T` (f32, or f16 / bf16 under autocast). The reference is
    /// the CPU's on the stored input and output gradient, its outputs rounded into `T` where the kernels
    /// store them (no rounding for f32).
    ///
    /// Tolerances: the statistics are f64 sums in another order, rounded to f32: equal or 1 ulp apart
    /// (rtol 2e-7, so 1e-6). Outputs are the CPU's f32 formula on those statistics; a 1-ulp difference in
    /// mean / invstd moves an output by ~|x - mean| * invstd * 1.2e-7 <= ~1e-6 for these inputs (|xhat|
    /// <= ~4), hence atol 5e-6 + rtol 1e-5, plus one unit in the last place of `T` (a reference value within
    /// it of a rounding boundary may round the other way). The eval forward is bitwise (no reduction: the
    /// CPU's f32 formula rounded once). The input gradient: the per-channel sums (f64, rounded to f32
    /// coefficients) may differ by an ulp; each term is O(invstd * |dout|) <= ~2, so atol 1e-5 + rtol 1e-5
    /// (+ `T`'s ulp); the parameter gradients (accumulated onto nonzero values) 1e-6.
    fn case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng, shapes: &[(usize, usize, usize, bool)]) {
        for &(n, c, hw, affine) in shapes {
            let len = n * c * hw;
            let (d_x, x) = upload_as::<T>(gpu, &rand_vec(rng, len, -3.0, 5.0));
            let (w, b) = (rand_vec(rng, c, 0.5, 1.5), rand_vec(rng, c, -1.0, 1.0));
            let (rm0, rv0) = (rand_vec(rng, c, -0.5, 0.5), rand_vec(rng, c, 0.5, 2.0));
            let (d_dout, dout) = upload_as::<T>(gpu, &rand_vec(rng, len, -1.0, 1.0));
            let (dw0, db0) = (rand_vec(rng, c, -1.0, 1.0), rand_vec(rng, c, -1.0, 1.0));
            let (wo, bo) = if affine { (Some(&w[..]), Some(&b[..])) } else { (None, None) };
            let (eps, mom) = (1e-5, 0.1);
            let what = format!("batch_norm {} n{n} c{c} hw{hw} affine {affine}", T::KIND.name());
            let round = |v: Vec<f32>| -> Vec<f32> { v.iter().map(|&x| T::round(x)).collect() };

            let (mut want, mut sm, mut si, mut want_rm, mut want_rv) =
                (vec![0.0f32; len], vec![0.0f32; c], vec![0.0f32; c], rm0.clone(), rv0.clone());
            super::super::batch_norm_forward_train(
                &mut want,
                &mut sm,
                &mut si,
                &mut want_rm,
                &mut want_rv,
                &x,
                wo,
                bo,
                n,
                c,
                hw,
                eps,
                mom,
            );
            let (dw, db) = (gpu.upload(&w).unwrap(), gpu.upload(&b).unwrap());
            let (wv, bv) = (dw.as_view(), db.as_view());
            let (wov, bov) = if affine { (Some(&wv), Some(&bv)) } else { (None, None) };
            let mut out = poisoned_as::<T>(gpu, len);
            let (mut gsm, mut gsi) = (poisoned(gpu, c).unwrap(), poisoned(gpu, c).unwrap());
            let (mut rm, mut rv) = (gpu.upload(&rm0).unwrap(), gpu.upload(&rv0).unwrap());
            let (mut gsmv, mut gsiv, mut rmv, mut rvv) =
                (gsm.as_view_mut(), gsi.as_view_mut(), rm.as_view_mut(), rv.as_view_mut());
            let xv = d_x.as_view();
            batch_norm_forward_train(
                gpu,
                &mut out.as_view_mut(),
                &mut gsmv,
                &mut gsiv,
                &mut rmv,
                &mut rvv,
                &xv,
                wov,
                bov,
                n,
                c,
                hw,
                eps,
                mom,
            )
            .unwrap();
            assert_close(&format!("{what} save_mean"), &gpu.download(&gsm).unwrap(), &sm, 1e-7, 1e-6);
            assert_close(&format!("{what} save_invstd"), &gpu.download(&gsi).unwrap(), &si, 0.0, 1e-6);
            assert_close(&format!("{what} running_mean"), &gpu.download(&rm).unwrap(), &want_rm, 1e-7, 1e-6);
            assert_close(&format!("{what} running_var"), &gpu.download(&rv).unwrap(), &want_rv, 0.0, 1e-6);
            assert_close(&format!("{what} train out"), &download_f32(gpu, &out), &round(want), 5e-6, 1e-5 + T::ULP);

            let mut want_eval = vec![0.0f32; len];
            super::super::batch_norm_forward_eval(&mut want_eval, &x, &rm0, &rv0, wo, bo, n, c, hw, eps);
            let (drm0, drv0) = (gpu.upload(&rm0).unwrap(), gpu.upload(&rv0).unwrap());
            let mut out = poisoned_as::<T>(gpu, len);
            batch_norm_forward_eval(
                gpu,
                &mut out.as_view_mut(),
                &xv,
                &drm0.as_view(),
                &drv0.as_view(),
                wov,
                bov,
                n,
                c,
                hw,
                eps,
            )
            .unwrap();
            assert_bitwise(&format!("{what} eval out"), &download_f32(gpu, &out), &round(want_eval));

            // Backward from the CPU's saved statistics, so only the reductions differ.
            let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0f32; len], dw0.clone(), db0.clone());
            super::super::batch_norm_backward(
                &mut want_dx,
                affine.then_some(&mut want_dw[..]),
                affine.then_some(&mut want_db[..]),
                &dout,
                &x,
                &sm,
                &si,
                wo,
                n,
                c,
                hw,
            );
            let (dsm, dsi) = (gpu.upload(&sm).unwrap(), gpu.upload(&si).unwrap());
            let mut ddx = poisoned_as::<T>(gpu, len);
            let (mut ddw, mut ddb) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
            let (mut ddwv, mut ddbv) = (ddw.as_view_mut(), ddb.as_view_mut());
            batch_norm_backward(
                gpu,
                &mut ddx.as_view_mut(),
                affine.then_some(&mut ddwv),
                affine.then_some(&mut ddbv),
                &d_dout.as_view(),
                &xv,
                &dsm.as_view(),
                &dsi.as_view(),
                wov,
                n,
                c,
                hw,
            )
            .unwrap();
            assert_close(&format!("{what} dinp"), &download_f32(gpu, &ddx), &round(want_dx), 1e-5, 1e-5 + T::ULP);
            assert_close(&format!("{what} dweight"), &gpu.download(&ddw).unwrap(), &want_dw, 1e-6, 1e-6);
            assert_close(&format!("{what} dbias"), &gpu.download(&ddb).unwrap(), &want_db, 1e-6, 1e-6);
        }
    }

    /// [`case`] in f32.
    #[test]
    fn batch_norm_matches_cpu() {
        let Some(gpu) = gpu_or_skip("batch_norm_matches_cpu") else { return };
        let mut rng = seeded("batch_norm_matches_cpu");
        case::<f32>(gpu, &mut rng, &[(1, 3, 49, true), (16, 5, 1, true), (4, 7, 33, false), (3, 300, 4, true)]);
    }

    /// [`case`] in half storage (the ResNet's under autocast), f16 and bf16.
    #[test]
    fn batch_norm_in_half_storage_matches_the_rounded_reference() {
        let Some(gpu) = gpu_or_skip("batch_norm_in_half_storage_matches_the_rounded_reference") else { return };
        let mut rng = seeded("batch_norm_in_half_storage_matches_the_rounded_reference");
        let shapes = [(4, 7, 33, true), (16, 5, 1, false), (3, 300, 4, true)];
        case::<half::f16>(gpu, &mut rng, &shapes);
        case::<half::bf16>(gpu, &mut rng, &shapes);
    }
}
