//! Host side of `vector_quantize.cu`: the GPU twins of [`vq_forward`](super::vq_forward) and
//! [`vq_backward`](super::vq_backward) with the straight-through estimator. Codes, outputs, counts and
//! gradients are the CPU's bits; the statistics (MSE, perplexity) go to a two-element device buffer
//! instead of being returned, so the step does not synchronise.
//!
//! Under autocast the layer converts on store as layer norm does: `z` and its gradient may be stored in one
//! type (`X`), `out` and its gradient in another (`Y`); values are read exactly, the arithmetic is the f32
//! one, and each stored value (an output row of the codebook, an input gradient) is rounded once. The
//! codebook and its gradient are f32.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::store::pick_pair;
use crate::cuda::{Gpu, GpuError, Store};
use crate::store_pairs;

/// VQ forward on the GPU: nearest codes into `indices` (ties to the smallest code), `out[n, :, p] =
/// e[k*]`, `counts[k]` (overwritten), and `stats = [mse, perplexity]` (a two-element device buffer; the
/// CPU returns them as [`VqStats`](super::VqStats)).
///
/// out, z: [N, D, P]; indices: [N*P]; counts: [K]; codebook: [K, D]; stats: [2]. Panics on wrong lengths,
/// `K = 0` with positions to assign, or sizes beyond u32, as the CPU does.
#[allow(clippy::too_many_arguments)]
pub fn vq_forward<X: Store, Y: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    indices: &mut CudaViewMut<u32>,
    counts: &mut CudaViewMut<u32>,
    z: &CudaView<X>,
    codebook: &CudaView<f32>,
    n: usize,
    d: usize,
    p: usize,
    k: usize,
    stats: &mut CudaViewMut<f32>,
) -> Result<(), GpuError> {
    assert_eq!(z.len(), n * d * p, "vq_forward: z must be [N, D, P]");
    assert_eq!(out.len(), n * d * p, "vq_forward: out must be [N, D, P]");
    assert_eq!(indices.len(), n * p, "vq_forward: indices must be [N*P]");
    assert_eq!(counts.len(), k, "vq_forward: counts must be [K]");
    assert_eq!(codebook.len(), k * d, "vq_forward: codebook must be [K, D]");
    assert_eq!(stats.len(), 2, "vq_forward: stats must be [2] (mse, perplexity)");
    assert!(k <= u32::MAX as usize, "vq_forward: K = {k} codes do not fit u32 indices");
    assert!(n * p <= u32::MAX as usize, "vq_forward: N*P = {} positions do not fit u32 counts", n * p);
    let rows = n * p;
    if k > 0 {
        gpu.stream().memset_zeros(counts)?;
    }
    if rows > 0 {
        assert!(k > 0, "vq_forward: empty codebook (K = 0)");
        let f = gpu.function(&CUDA, pick_pair::<X, Y>(store_pairs!("vq_nearest")))?;
        let mut l = gpu.launch_builder(&f);
        l.arg(&mut *indices).arg(&mut *counts).arg(&mut *out).arg(z).arg(codebook).arg(&n).arg(&d).arg(&p).arg(&k);
        // SAFETY: (unsigned*, unsigned*, Y*, const X*, const float*, size_t x4); lengths checked.
        unsafe { l.launch(gpu.elementwise(rows)) }?;
    }
    let m = n * d * p;
    let f = gpu.function(&CUDA, X::pick(["vq_stats_f32", "vq_stats_f16", "vq_stats_bf16"]))?;
    let (indices_ro, counts_ro) = (indices.slice(..), counts.slice(..));
    let cfg = crate::cuda::launch::ONE_BLOCK;
    let mut l = gpu.launch_builder(&f);
    l.arg(stats).arg(z).arg(codebook).arg(&indices_ro).arg(&counts_ro).arg(&d).arg(&p).arg(&m).arg(&rows).arg(&k);
    // SAFETY: (float*, const X*, const float*, const unsigned* x2, size_t x5); stats holds 2, z m, codebook
    // k*d, indices rows and counts k elements (the indices are in range: the nearest-code kernel wrote them).
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// VQ backward on the GPU (straight-through): `dz = dout + w * beta * 2 (z - e[k*]) / M` (overwrites),
/// `dcodebook[k*] += w * 2 (e[k*] - z) / M` (accumulates), M = N*D*P, with `w = vq_weight * loss_scale[0]`
/// rounded to f32 as the host multiplies the weight by the scale (`loss_scale` is the device
/// [`ScaleState`](crate::optim::loss_scale::ScaleState): `[1, 0]` outside f16 autocast).
/// dz, dout, z: [N, D, P]; dcodebook, codebook: [K, D]; indices: [N*P] (in range: the forward wrote them).
#[allow(clippy::too_many_arguments)]
pub fn vq_backward<X: Store, Y: Store>(
    gpu: &Gpu,
    dz: &mut CudaViewMut<X>,
    dcodebook: &mut CudaViewMut<f32>,
    dout: &CudaView<Y>,
    z: &CudaView<X>,
    codebook: &CudaView<f32>,
    indices: &CudaView<u32>,
    n: usize,
    d: usize,
    p: usize,
    k: usize,
    beta: f32,
    vq_weight: f32,
    loss_scale: &CudaSlice<f64>,
) -> Result<(), GpuError> {
    let m = n * d * p;
    assert_eq!(dz.len(), m, "vq_backward: dz must be [N, D, P]");
    assert_eq!(dout.len(), m, "vq_backward: dout must be [N, D, P]");
    assert_eq!(z.len(), m, "vq_backward: z must be [N, D, P]");
    assert_eq!(dcodebook.len(), k * d, "vq_backward: dcodebook must be [K, D]");
    assert_eq!(codebook.len(), k * d, "vq_backward: codebook must be [K, D]");
    assert_eq!(indices.len(), n * p, "vq_backward: indices must be [N*P]");
    if m == 0 {
        return Ok(());
    }
    assert!(!loss_scale.is_empty(), "vq_backward: loss_scale needs the scale");
    // The CPU's f32 factors, in its arithmetic (the weight times the scale first, in the kernels).
    let two_over_m = (2.0 / m as f64) as f32;
    let f = gpu.function(&CUDA, pick_pair::<X, Y>(store_pairs!("vq_backward_dz")))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dz).arg(dout).arg(z).arg(codebook).arg(indices).arg(&n).arg(&d).arg(&p);
    l.arg(&vq_weight).arg(&beta).arg(&two_over_m).arg(loss_scale);
    // SAFETY: (X*, const Y*, const X*, const float*, const unsigned*, size_t x3, float x3, const double*);
    // lengths checked.
    unsafe { l.launch(gpu.elementwise(m)) }?;
    let names = ["vq_backward_codebook_f32", "vq_backward_codebook_f16", "vq_backward_codebook_bf16"];
    let f = gpu.function(&CUDA, X::pick(names))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dcodebook).arg(z).arg(codebook).arg(indices).arg(&n).arg(&d).arg(&p).arg(&k);
    l.arg(&vq_weight).arg(&two_over_m).arg(loss_scale);
    // SAFETY: (float*, const X*, const float*, const unsigned*, size_t x4, float x2, const double*); lengths
    // checked.
    unsafe { l.launch(gpu.elementwise(k * d)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward (indices, counts, out bitwise; mse / perplexity within 1e-6 relative: f64 sums in another
    /// order rounded to f32) and backward (bitwise: same f32 operations in the same order) against the CPU;
    /// one sample and several, a duplicated code (ties go to the smaller index), odd sizes.
    #[test]
    fn vector_quantize_matches_cpu() {
        let Some(gpu) = gpu_or_skip("vector_quantize_matches_cpu") else { return };
        let mut rng = seeded("vector_quantize_matches_cpu");
        for &(n, d, p, k) in &[(1usize, 3usize, 5usize, 4usize), (3, 8, 49, 17), (2, 1, 300, 9)] {
            let z = rand_vec(&mut rng, n * d * p, -1.0, 1.0);
            let mut cb = rand_vec(&mut rng, k * d, -1.0, 1.0);
            let (a, b) = cb.split_at_mut(d);
            b[..d].copy_from_slice(a); // codes 0 and 1 equal: every tie must pick 0
            let dout = rand_vec(&mut rng, n * d * p, -1.0, 1.0);
            let dcb0 = rand_vec(&mut rng, k * d, -1.0, 1.0);
            let (mut want, mut want_idx, mut want_cnt) = (vec![0.0f32; z.len()], vec![0u32; n * p], vec![0u32; k]);
            let st = super::super::vq_forward(&mut want, &mut want_idx, &mut want_cnt, &z, &cb, n, d, p, k);
            let what = format!("vq n{n} d{d} p{p} k{k}");
            let (dzv, dcb) = (gpu.upload(&z).unwrap(), gpu.upload(&cb).unwrap());
            let mut out = poisoned(gpu, z.len()).unwrap();
            let (mut idx, mut cnt) = (gpu.upload(&vec![u32::MAX; n * p]).unwrap(), gpu.upload(&vec![7u32; k]).unwrap());
            let mut stats = poisoned(gpu, 2).unwrap();
            vq_forward(
                gpu,
                &mut out.as_view_mut(),
                &mut idx.as_view_mut(),
                &mut cnt.as_view_mut(),
                &dzv.as_view(),
                &dcb.as_view(),
                n,
                d,
                p,
                k,
                &mut stats.as_view_mut(),
            )
            .unwrap();
            assert_eq!(gpu.download(&idx).unwrap(), want_idx, "{what}: indices differ");
            assert_eq!(gpu.download(&cnt).unwrap(), want_cnt, "{what}: counts differ");
            assert_bitwise(&format!("{what} out"), &gpu.download(&out).unwrap(), &want);
            assert_close(&format!("{what} stats"), &gpu.download(&stats).unwrap(), &[st.mse, st.perplexity], 0.0, 1e-6);

            // Outside autocast (scale 1), and under f16 loss scaling with the scale on the device (the CPU's
            // weight is then the host's `weight * scale as f32`).
            for (weight, scale) in [(0.8f32, 1.0f64), (0.8, 65536.0), (0.3, 1000.1)] {
                let (mut want_dz, mut want_dcb) = (vec![0.0f32; z.len()], dcb0.clone());
                let w = weight * scale as f32;
                super::super::vq_backward(&mut want_dz, &mut want_dcb, &dout, &z, &cb, &want_idx, n, d, p, k, 0.25, w);
                let (dgo, didx) = (gpu.upload(&dout).unwrap(), gpu.upload(&want_idx).unwrap());
                let (mut ddz, mut ddcb) = (poisoned(gpu, z.len()).unwrap(), gpu.upload(&dcb0).unwrap());
                let state = gpu.upload(&[scale, 0.0]).unwrap();
                vq_backward(
                    gpu,
                    &mut ddz.as_view_mut(),
                    &mut ddcb.as_view_mut(),
                    &dgo.as_view(),
                    &dzv.as_view(),
                    &dcb.as_view(),
                    &didx.as_view(),
                    n,
                    d,
                    p,
                    k,
                    0.25,
                    weight,
                    &state,
                )
                .unwrap();
                let what = format!("{what} weight {weight} scale {scale}");
                assert_bitwise(&format!("{what} dz"), &gpu.download(&ddz).unwrap(), &want_dz);
                assert_bitwise(&format!("{what} dcodebook"), &gpu.download(&ddcb).unwrap(), &want_dcb);
            }
        }
    }

    /// One storage pair under autocast: z and its gradient in `X`, out and its gradient in `Y`. Reference: the
    /// CPU on the stored z and output gradient, each stored value rounded once (out's codebook rows into
    /// `Y`, dz into `X`); codes, counts, out, dz and the f32 codebook gradient bit for bit, the statistics
    /// as in `vector_quantize_matches_cpu`.
    fn half_case<X: TestStore, Y: TestStore>(
        gpu: &Gpu,
        rng: &mut crate::rng::Rng,
        (n, d, p, k): (usize, usize, usize, usize),
    ) {
        let (dzv, z) = upload_as::<X>(gpu, &rand_vec(rng, n * d * p, -1.0, 1.0));
        let (dgo, dout) = upload_as::<Y>(gpu, &rand_vec(rng, n * d * p, -1.0, 1.0));
        let cb = rand_vec(rng, k * d, -1.0, 1.0);
        let dcb0 = rand_vec(rng, k * d, -1.0, 1.0);
        let (mut want, mut want_idx, mut want_cnt) = (vec![0.0f32; z.len()], vec![0u32; n * p], vec![0u32; k]);
        let st = super::super::vq_forward(&mut want, &mut want_idx, &mut want_cnt, &z, &cb, n, d, p, k);
        let what = format!("vq {} -> {} n{n} d{d} p{p} k{k}", X::KIND.name(), Y::KIND.name());
        let dcb = gpu.upload(&cb).unwrap();
        let mut out = poisoned_as::<Y>(gpu, z.len());
        let (mut idx, mut cnt) = (gpu.upload(&vec![u32::MAX; n * p]).unwrap(), gpu.upload(&vec![7u32; k]).unwrap());
        let mut stats = poisoned(gpu, 2).unwrap();
        let (mut ov, mut iv, mut cv, mut sv) =
            (out.as_view_mut(), idx.as_view_mut(), cnt.as_view_mut(), stats.as_view_mut());
        vq_forward(gpu, &mut ov, &mut iv, &mut cv, &dzv.as_view(), &dcb.as_view(), n, d, p, k, &mut sv).unwrap();
        assert_eq!(gpu.download(&idx).unwrap(), want_idx, "{what}: indices differ");
        assert_eq!(gpu.download(&cnt).unwrap(), want_cnt, "{what}: counts differ");
        let want_out: Vec<f32> = want.iter().map(|&v| Y::round(v)).collect();
        assert_bitwise(&format!("{what} out"), &download_f32(gpu, &out), &want_out);
        assert_close(&format!("{what} stats"), &gpu.download(&stats).unwrap(), &[st.mse, st.perplexity], 0.0, 1e-6);

        let (mut want_dz, mut want_dcb) = (vec![0.0f32; z.len()], dcb0.clone());
        let (weight, scale) = (0.8f32, 1024.0f64);
        let w = weight * scale as f32;
        super::super::vq_backward(&mut want_dz, &mut want_dcb, &dout, &z, &cb, &want_idx, n, d, p, k, 0.25, w);
        want_dz.iter_mut().for_each(|v| *v = X::round(*v));
        let (mut ddz, mut ddcb) = (poisoned_as::<X>(gpu, z.len()), gpu.upload(&dcb0).unwrap());
        let state = gpu.upload(&[scale, 0.0]).unwrap();
        let (mut dzm, mut dcbm) = (ddz.as_view_mut(), ddcb.as_view_mut());
        let (go, zv, cbv, ix) = (dgo.as_view(), dzv.as_view(), dcb.as_view(), idx.as_view());
        vq_backward(gpu, &mut dzm, &mut dcbm, &go, &zv, &cbv, &ix, n, d, p, k, 0.25, weight, &state).unwrap();
        assert_bitwise(&format!("{what} dz"), &download_f32(gpu, &ddz), &want_dz);
        assert_bitwise(&format!("{what} dcodebook"), &gpu.download(&ddcb).unwrap(), &want_dcb);
    }

    /// Autocast storage: half in and out, and the mixed ends (a half input quantised into an f32 output, an
    /// f32 input into a half one), f16 and bf16.
    #[test]
    fn vector_quantize_in_half_storage_matches_the_rounded_reference() {
        let name = "vector_quantize_in_half_storage_matches_the_rounded_reference";
        let Some(gpu) = gpu_or_skip(name) else { return };
        let mut rng = seeded(name);
        for shape in [(1usize, 3usize, 5usize, 4usize), (3, 8, 49, 17)] {
            for_each_half_pair!(half_case(gpu, &mut rng, shape));
        }
    }
}
