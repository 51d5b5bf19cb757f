//! GPU twins of [`linear_act_forward`](super::linear_act_forward),
//! [`linear_act_backward`](super::linear_act_backward) (keeping the pre-activation rather than the derivative) and
//! [`act_backward_with_bias_sums`](super::act_backward_with_bias_sums): the GPU linear layer and
//! activation kernels, with the pre-activation gradient formed in place in `dout` as on the CPU.

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError, Store};
use crate::ops::activation::Activation;
use crate::ops::{bias_add, linear};

/// Fused forward on the GPU: `pre = inp @ weight^T + bias`, `out = act(pre)` (both overwritten).
/// inp: [B, C], weight: [OC, C], bias: [OC] or None, pre, out: [B, OC]. Activations may be stored in half
/// precision (autocast): pre and out in `Y`, each stored value rounded once from f32.
#[allow(clippy::too_many_arguments)]
pub fn linear_act_forward<X: Store, Y: Store, W: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    pre: &mut CudaViewMut<Y>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    bias: Option<&CudaView<f32>>,
    act: Activation,
    b: usize,
    c: usize,
    oc: usize,
) -> Result<(), GpuError> {
    assert_eq!(out.len(), b * oc, "linear_act_forward: out must be [B, OC]");
    assert_eq!(pre.len(), b * oc, "linear_act_forward: pre must be [B, OC]");
    linear::cuda::linear_forward(gpu, pre, inp, weight, None, b, c, oc)?;
    if b * oc == 0 {
        return Ok(());
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), oc, "linear_act_forward: bias must be [OC]");
    }
    // Bias and activation in one pass over the product (bitwise the bias add then the activation).
    let f = gpu.function(&CUDA, Y::pick(["bias_act_forward_f32", "bias_act_forward_f16", "bias_act_forward_bf16"]))?;
    let code = act.code() as i32;
    let len = b * oc;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(&mut *pre);
    match bias {
        Some(bias) => l.arg(bias),
        None => l.arg(&crate::cuda::launch::NULL),
    };
    l.arg(&b).arg(&oc).arg(&code);
    // SAFETY: (T*, T*, const float*, size_t, size_t, int); out and pre hold b*oc elements, the bias oc (or
    // null).
    unsafe { l.launch(gpu.elementwise(len)) }?;
    Ok(())
}

/// Fused backward on the GPU. `dout` holds the gradient of `out` on entry and that of `pre` on return.
/// `dinp` is overwritten (None: not needed); `dweight` and `dbias` accumulate.
/// dout, pre: [B, OC], inp: [B, C], weight: [OC, C]; dinp: [B, C], dweight: [OC, C], dbias: [OC]. dout and
/// pre are stored in `Y`, inp and dinp in `X` (f32 or the autocast half type); parameter gradients in f32.
#[allow(clippy::too_many_arguments)]
pub fn linear_act_backward<X: Store, Y: Store, W: Store>(
    gpu: &Gpu,
    dinp: Option<&mut CudaViewMut<X>>,
    dweight: &mut CudaViewMut<f32>,
    dbias: Option<&mut CudaViewMut<f32>>,
    dout: &mut CudaViewMut<Y>,
    pre: &CudaView<Y>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    act: Activation,
    b: usize,
    c: usize,
    oc: usize,
) -> Result<(), GpuError> {
    act_backward_with_bias_sums(gpu, act, dout, pre, dbias, b, oc)?;
    linear::cuda::linear_backward(gpu, dinp, dweight, None, &dout.slice(..), inp, weight, b, c, oc)
}

/// `d = d * act'(pre)` in place on the GPU, then `dbias += column sums of d` (when given).
/// d, pre: [B, N] (stored in `T`), dbias: [N] or None.
pub fn act_backward_with_bias_sums<T: Store>(
    gpu: &Gpu,
    act: Activation,
    d: &mut CudaViewMut<T>,
    pre: &CudaView<T>,
    dbias: Option<&mut CudaViewMut<f32>>,
    b: usize,
    n: usize,
) -> Result<(), GpuError> {
    assert_eq!(d.len(), b * n, "act_backward_with_bias_sums: d must be [B, N]");
    assert_eq!(pre.len(), b * n, "act_backward_with_bias_sums: pre must be [B, N]");
    let len = b * n;
    if len == 0 {
        return Ok(());
    }
    let code = act.code() as i32;
    let Some(dbias) = dbias else {
        let names = ["act_backward_inplace_f32", "act_backward_inplace_f16", "act_backward_inplace_bf16"];
        let f = gpu.function(&CUDA, T::pick(names))?;
        let mut l = gpu.launch_builder(&f);
        l.arg(&mut *d).arg(pre).arg(&len).arg(&code);
        // SAFETY: (T*, const T*, size_t, int); d and pre hold len elements.
        unsafe { l.launch(gpu.elementwise(len)) }?;
        return Ok(());
    };
    // The activation backward fused into the bias gradient's first pass.
    let names = ["act_backward_bias_partials_f32", "act_backward_bias_partials_f16", "act_backward_bias_partials_bf16"];
    let f = gpu.function(&CUDA, T::pick(names))?;
    bias_add::cuda::column_sums(gpu, dbias, b, n, |dst, per, direct, cfg| {
        let mut l = gpu.launch_builder(&f);
        l.arg(&mut *d).arg(pre).arg(dst).arg(&b).arg(&n).arg(&per).arg(&direct).arg(&code);
        // SAFETY: (T*, const T*, float*, size_t x3, int, int); d and pre hold b*n elements, dst n (direct)
        // or a row of n per chunk.
        unsafe { l.launch(cfg) }?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward (pre and out) and backward (dout turned into the pre-activation gradient in place, dinp,
    /// accumulated dweight / dbias) against the CPU for every activation, batch 1 and more.
    /// Tolerances: the products as in the linear test (atol 2e-4 + rtol 1e-4); the activations add CUDA
    /// libm vs the CPU's polynomials (~1e-6 relative), well inside that; dbias sums B such values
    /// (atol 1e-4).
    #[test]
    fn linear_act_matches_cpu() {
        let Some(gpu) = gpu_or_skip("linear_act_matches_cpu") else { return };
        let mut rng = seeded("linear_act_matches_cpu");
        for &name in Activation::NAMES {
            let act = Activation::parse(name).unwrap();
            for &(b, c, oc) in &[(1usize, 9usize, 5usize), (33, 40, 17), (150, 6, 40)] {
                let inp = rand_vec(&mut rng, b * c, -1.0, 1.0);
                let w = rand_vec(&mut rng, oc * c, -1.0, 1.0);
                let bias = rand_vec(&mut rng, oc, -1.0, 1.0);
                let g = rand_vec(&mut rng, b * oc, -1.0, 1.0);
                let dw0 = rand_vec(&mut rng, oc * c, -1.0, 1.0);
                let db0 = rand_vec(&mut rng, oc, -1.0, 1.0);
                // The CPU reference: the unfused ops (the CPU's fused kernel keeps act'(pre), not pre).
                let (mut want_out, mut want_pre) = (vec![0.0f32; b * oc], vec![0.0f32; b * oc]);
                crate::ops::linear::linear_forward(&mut want_pre, &inp, &w, Some(&bias), b, c, oc);
                crate::ops::activation::activation_forward(act, &mut want_out, &want_pre);
                let mut want_d = vec![0.0f32; b * oc];
                crate::ops::activation::activation_backward(act, &mut want_d, &g, &want_pre);
                let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0f32; b * c], dw0.clone(), db0.clone());
                crate::ops::linear::linear_backward(
                    Some(&mut want_dx),
                    &mut want_dw,
                    Some(&mut want_db),
                    &want_d,
                    &inp,
                    &w,
                    b,
                    c,
                    oc,
                );

                let what = format!("linear_act {name} {b}x{c}x{oc}");
                let (di, dwt, dbs) = (gpu.upload(&inp).unwrap(), gpu.upload(&w).unwrap(), gpu.upload(&bias).unwrap());
                let (mut out, mut pre) = (poisoned(gpu, b * oc).unwrap(), poisoned(gpu, b * oc).unwrap());
                let bv = dbs.as_view();
                linear_act_forward(
                    gpu,
                    &mut out.as_view_mut(),
                    &mut pre.as_view_mut(),
                    &di.as_view(),
                    &dwt.as_view(),
                    Some(&bv),
                    act,
                    b,
                    c,
                    oc,
                )
                .unwrap();
                assert_close(&format!("{what} pre"), &gpu.download(&pre).unwrap(), &want_pre, 2e-4, 1e-4);
                assert_close(&format!("{what} out"), &gpu.download(&out).unwrap(), &want_out, 2e-4, 1e-4);
                // The fused epilogue is the unfused GPU pair's bits: the linear layer, then the activation.
                let (mut out2, mut pre2) = (poisoned(gpu, b * oc).unwrap(), poisoned(gpu, b * oc).unwrap());
                linear::cuda::linear_forward(
                    gpu,
                    &mut pre2.as_view_mut(),
                    &di.as_view(),
                    &dwt.as_view(),
                    Some(&bv),
                    b,
                    c,
                    oc,
                )
                .unwrap();
                crate::ops::activation::cuda::forward(gpu, act, &mut out2.as_view_mut(), &pre2.as_view()).unwrap();
                assert_bitwise(
                    &format!("{what} fused pre"),
                    &gpu.download(&pre).unwrap(),
                    &gpu.download(&pre2).unwrap(),
                );
                assert_bitwise(
                    &format!("{what} fused out"),
                    &gpu.download(&out).unwrap(),
                    &gpu.download(&out2).unwrap(),
                );

                // The backward from the CPU's pre-activation, so only the backward's own rounding differs.
                let dpre = gpu.upload(&want_pre).unwrap();
                let (mut dd, mut dx) = (gpu.upload(&g).unwrap(), poisoned(gpu, b * c).unwrap());
                let (mut dw, mut db) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
                let (mut dxv, mut dbv) = (dx.as_view_mut(), db.as_view_mut());
                linear_act_backward(
                    gpu,
                    Some(&mut dxv),
                    &mut dw.as_view_mut(),
                    Some(&mut dbv),
                    &mut dd.as_view_mut(),
                    &dpre.as_view(),
                    &di.as_view(),
                    &dwt.as_view(),
                    act,
                    b,
                    c,
                    oc,
                )
                .unwrap();
                assert_close(&format!("{what} dpre"), &gpu.download(&dd).unwrap(), &want_d, 1e-6, 1e-5);
                // The activation backward fused into the bias gradient's first pass is the unfused GPU pair's
                // bits (the same column grid and order).
                let (mut d2, mut db2) = (poisoned(gpu, b * oc).unwrap(), gpu.upload(&db0).unwrap());
                let gv = gpu.upload(&g).unwrap();
                crate::ops::activation::cuda::backward(gpu, act, &mut d2.as_view_mut(), &gv.as_view(), &dpre.as_view())
                    .unwrap();
                bias_add::cuda::bias_add_backward(gpu, &mut db2.as_view_mut(), &d2.as_view(), b, oc).unwrap();
                assert_bitwise(&format!("{what} fused dpre"), &gpu.download(&dd).unwrap(), &gpu.download(&d2).unwrap());
                assert_bitwise(
                    &format!("{what} fused dbias"),
                    &gpu.download(&db).unwrap(),
                    &gpu.download(&db2).unwrap(),
                );
                assert_close(&format!("{what} dinp"), &gpu.download(&dx).unwrap(), &want_dx, 2e-4, 1e-4);
                assert_close(&format!("{what} dweight"), &gpu.download(&dw).unwrap(), &want_dw, 2e-4, 1e-4);
                assert_close(&format!("{what} dbias"), &gpu.download(&db).unwrap(), &want_db, 1e-4, 1e-5);
            }
        }
    }

    /// Half storage (`Y` for pre, out and the gradients, `X` for the input): the fused kernels give the
    /// unfused GPU ops' bits in the same storage (the half linear layer and activation, each checked against
    /// a rounded reference in its own module): forward pre and out; backward's pre-activation gradient,
    /// bias gradient, input and weight gradients.
    fn half_case<X: TestStore, Y: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        for &name in &["relu", "gelu"] {
            let act = Activation::parse(name).unwrap();
            let (b, c, oc) = (70usize, 24usize, 40usize);
            let (di, _) = upload_as::<X>(gpu, &rand_vec(rng, b * c, -1.0, 1.0));
            let (dg, _) = upload_as::<Y>(gpu, &rand_vec(rng, b * oc, -1.0, 1.0));
            let (dwt, dbs) = (
                gpu.upload(&rand_vec(rng, oc * c, -1.0, 1.0)).unwrap(),
                gpu.upload(&rand_vec(rng, oc, -1.0, 1.0)).unwrap(),
            );
            let what = format!("linear_act {name} {} -> {}", X::KIND.name(), Y::KIND.name());
            let bv = dbs.as_view();
            let (mut out, mut pre) = (poisoned_as::<Y>(gpu, b * oc), poisoned_as::<Y>(gpu, b * oc));
            linear_act_forward(
                gpu,
                &mut out.as_view_mut(),
                &mut pre.as_view_mut(),
                &di.as_view(),
                &dwt.as_view(),
                Some(&bv),
                act,
                b,
                c,
                oc,
            )
            .unwrap();
            let (mut out2, mut pre2) = (poisoned_as::<Y>(gpu, b * oc), poisoned_as::<Y>(gpu, b * oc));
            linear::cuda::linear_forward(
                gpu,
                &mut pre2.as_view_mut(),
                &di.as_view(),
                &dwt.as_view(),
                Some(&bv),
                b,
                c,
                oc,
            )
            .unwrap();
            crate::ops::activation::cuda::forward(gpu, act, &mut out2.as_view_mut(), &pre2.as_view()).unwrap();
            assert_bitwise(&format!("{what} fused pre"), &download_f32(gpu, &pre), &download_f32(gpu, &pre2));
            assert_bitwise(&format!("{what} fused out"), &download_f32(gpu, &out), &download_f32(gpu, &out2));

            // Fused backward on a copy of the output gradient; unfused: activation backward, then the
            // linear backward with its bias gradient.
            let mut d = dg.clone();
            let mut dx = poisoned_as::<X>(gpu, b * c);
            let (mut dw, mut db) = (gpu.upload(&vec![0.0f32; oc * c]).unwrap(), gpu.upload(&vec![0.0f32; oc]).unwrap());
            let (mut dx_v, mut db_v) = (dx.as_view_mut(), db.as_view_mut());
            linear_act_backward(
                gpu,
                Some(&mut dx_v),
                &mut dw.as_view_mut(),
                Some(&mut db_v),
                &mut d.as_view_mut(),
                &pre.as_view(),
                &di.as_view(),
                &dwt.as_view(),
                act,
                b,
                c,
                oc,
            )
            .unwrap();
            let mut d2 = poisoned_as::<Y>(gpu, b * oc);
            crate::ops::activation::cuda::backward(gpu, act, &mut d2.as_view_mut(), &dg.as_view(), &pre.as_view())
                .unwrap();
            let mut dx2 = poisoned_as::<X>(gpu, b * c);
            let (mut dw2, mut db2) =
                (gpu.upload(&vec![0.0f32; oc * c]).unwrap(), gpu.upload(&vec![0.0f32; oc]).unwrap());
            let (mut dx2_v, mut db2_v) = (dx2.as_view_mut(), db2.as_view_mut());
            linear::cuda::linear_backward(
                gpu,
                Some(&mut dx2_v),
                &mut dw2.as_view_mut(),
                Some(&mut db2_v),
                &d2.as_view(),
                &di.as_view(),
                &dwt.as_view(),
                b,
                c,
                oc,
            )
            .unwrap();
            assert_bitwise(&format!("{what} fused dpre"), &download_f32(gpu, &d), &download_f32(gpu, &d2));
            assert_bitwise(&format!("{what} fused dbias"), &gpu.download(&db).unwrap(), &gpu.download(&db2).unwrap());
            assert_bitwise(&format!("{what} fused dinp"), &download_f32(gpu, &dx), &download_f32(gpu, &dx2));
            assert_bitwise(&format!("{what} fused dweight"), &gpu.download(&dw).unwrap(), &gpu.download(&dw2).unwrap());
        }
    }

    #[test]
    fn linear_act_in_half_storage_is_the_unfused_pair() {
        let Some(gpu) = gpu_or_skip("linear_act_in_half_storage_is_the_unfused_pair") else { return };
        let mut rng = seeded("linear_act_in_half_storage_is_the_unfused_pair");
        half_case::<half::f16, half::f16>(gpu, &mut rng);
        half_case::<f32, half::f16>(gpu, &mut rng);
        half_case::<half::bf16, half::bf16>(gpu, &mut rng);
        half_case::<f32, half::bf16>(gpu, &mut rng);
    }
}
