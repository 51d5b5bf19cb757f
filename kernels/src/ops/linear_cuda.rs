//! GPU twins of [`matmul`](super::matmul), [`linear_forward`](super::linear_forward) and
//! [`linear_backward`](super::linear_backward): cuBLAS products through [`gemm::cuda`](super::super::gemm::cuda)
//! plus the bias kernels of [`bias_add::cuda`](super::super::bias_add::cuda).

use cudarc::driver::{CudaView, CudaViewMut};

use crate::cuda::{Gpu, GpuError, Store};
use crate::ops::bias_add::cuda as bias;
use crate::ops::gemm::cuda::gemm;

/// `out = a @ b`, or `out += a @ b` when `accumulate`, on the GPU. a: [M, K], b: [K, N], out: [M, N].
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) -> Result<(), GpuError> {
    assert_eq!(out.len(), m * n, "matmul: out must be [M, N]");
    assert_eq!(a.len(), m * k, "matmul: a must be [M, K]");
    assert_eq!(b.len(), k * n, "matmul: b must be [K, N]");
    gemm(gpu, m, n, k, a, false, b, false, out, 1.0, if accumulate { 1.0 } else { 0.0 })
}

/// Linear forward on the GPU: `out = inp @ weight^T + bias` (overwrites `out`).
///
/// inp: [B, C], weight: [OC, C], bias: [OC] or None, out: [B, OC]. The input and output may be stored in half
/// precision (autocast; see [`gemm_general`](crate::ops::gemm::cuda::gemm_general)); a half output is the
/// product rounded, then the sum with the bias rounded. The weight may be an autocast copy already rounded
/// into the half type (`W`).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward<X: Store, Y: Store, W: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    bias: Option<&CudaView<f32>>,
    b: usize,
    c: usize,
    oc: usize,
) -> Result<(), GpuError> {
    assert_eq!(out.len(), b * oc, "linear_forward: out must be [B, OC]");
    assert_eq!(inp.len(), b * c, "linear_forward: inp must be [B, C]");
    assert_eq!(weight.len(), oc * c, "linear_forward: weight must be [OC, C]");
    // weight is stored [OC, C], so weight^T is the transposed operand.
    gemm(gpu, b, oc, c, inp, false, weight, true, out, 1.0, 0.0)?;
    if let Some(bias_v) = bias {
        assert_eq!(bias_v.len(), oc, "linear_forward: bias must be [OC]");
        bias::bias_add_forward(gpu, out, bias_v, b, oc)?;
    }
    Ok(())
}

/// Linear backward on the GPU.
///
/// dout: [B, OC], inp: [B, C], weight: [OC, C]; dinp: [B, C] (overwritten; None when not needed),
/// dweight: [OC, C] (accumulated: `+= dout^T @ inp`), dbias: [OC] (accumulated column sums of dout; None
/// without a bias). The activations and their gradients may be stored in half precision (dinp in its input's
/// type); the parameter gradients are f32.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<D: Store, X: Store, W: Store>(
    gpu: &Gpu,
    dinp: Option<&mut CudaViewMut<X>>,
    dweight: &mut CudaViewMut<f32>,
    dbias: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<D>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    b: usize,
    c: usize,
    oc: usize,
) -> Result<(), GpuError> {
    assert_eq!(dout.len(), b * oc, "linear_backward: dout must be [B, OC]");
    assert_eq!(inp.len(), b * c, "linear_backward: inp must be [B, C]");
    assert_eq!(weight.len(), oc * c, "linear_backward: weight must be [OC, C]");
    assert_eq!(dweight.len(), oc * c, "linear_backward: dweight must be [OC, C]");
    if let Some(dinp) = dinp {
        assert_eq!(dinp.len(), b * c, "linear_backward: dinp must be [B, C]");
        // dinp[B, C] = dout[B, OC] @ weight[OC, C]
        gemm(gpu, b, c, oc, dout, false, weight, false, dinp, 1.0, 0.0)?;
    }
    // dweight[OC, C] += dout^T[OC, B] @ inp[B, C]
    gemm(gpu, oc, c, b, dout, true, inp, false, dweight, 1.0, 1.0)?;
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc, "linear_backward: dbias must be [OC]");
        bias::bias_add_backward(gpu, dbias, dout, b, oc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward (with and without bias), backward (with and without dinp / dbias; parameter gradients
    /// accumulated onto non-zero values) and matmul against the CPU, for batches of 1 and more and odd
    /// widths. Tolerance: K-term f32 dot products summed in different orders (cuBLAS may also fuse
    /// multiply-adds): error ~ sqrt(K) * 6e-8 * sum|terms|; with |x| <= 1 and K <= 300 that is below 1e-4,
    /// so atol 2e-4 + rtol 1e-4, far below any indexing error.
    #[test]
    fn linear_matches_cpu() {
        let Some(gpu) = gpu_or_skip("linear_matches_cpu") else { return };
        let mut rng = seeded("linear_matches_cpu");
        for &(b, c, oc) in &[(1usize, 1usize, 1usize), (1, 37, 10), (5, 7, 3), (33, 300, 129)] {
            let inp = rand_vec(&mut rng, b * c, -1.0, 1.0);
            let w = rand_vec(&mut rng, oc * c, -1.0, 1.0);
            let bias = rand_vec(&mut rng, oc, -1.0, 1.0);
            let dout = rand_vec(&mut rng, b * oc, -1.0, 1.0);
            let dw0 = rand_vec(&mut rng, oc * c, -1.0, 1.0);
            let db0 = rand_vec(&mut rng, oc, -1.0, 1.0);
            let (d_inp, d_w, d_bias, d_dout) = (
                gpu.upload(&inp).unwrap(),
                gpu.upload(&w).unwrap(),
                gpu.upload(&bias).unwrap(),
                gpu.upload(&dout).unwrap(),
            );
            for with_bias in [true, false] {
                let mut want = vec![0.0f32; b * oc];
                super::super::linear_forward(&mut want, &inp, &w, with_bias.then_some(&bias[..]), b, c, oc);
                let mut out = poisoned(gpu, b * oc).unwrap();
                let bv = d_bias.as_view();
                linear_forward(
                    gpu,
                    &mut out.as_view_mut(),
                    &d_inp.as_view(),
                    &d_w.as_view(),
                    with_bias.then_some(&bv),
                    b,
                    c,
                    oc,
                )
                .unwrap();
                assert_close(
                    &format!("linear_forward {b}x{c}x{oc} bias {with_bias}"),
                    &gpu.download(&out).unwrap(),
                    &want,
                    2e-4,
                    1e-4,
                );

                let (mut want_dinp, mut want_dw, mut want_db) = (vec![0.0f32; b * c], dw0.clone(), db0.clone());
                super::super::linear_backward(
                    with_bias.then_some(&mut want_dinp[..]),
                    &mut want_dw,
                    with_bias.then_some(&mut want_db[..]),
                    &dout,
                    &inp,
                    &w,
                    b,
                    c,
                    oc,
                );
                let mut dinp = poisoned(gpu, b * c).unwrap();
                let (mut dw, mut db) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
                let (mut dinp_v, mut db_v) = (dinp.as_view_mut(), db.as_view_mut());
                linear_backward(
                    gpu,
                    with_bias.then_some(&mut dinp_v),
                    &mut dw.as_view_mut(),
                    with_bias.then_some(&mut db_v),
                    &d_dout.as_view(),
                    &d_inp.as_view(),
                    &d_w.as_view(),
                    b,
                    c,
                    oc,
                )
                .unwrap();
                let what = format!("linear_backward {b}x{c}x{oc} bias {with_bias}");
                assert_close(&format!("{what} dweight"), &gpu.download(&dw).unwrap(), &want_dw, 2e-4, 1e-4);
                if with_bias {
                    assert_close(&format!("{what} dinp"), &gpu.download(&dinp).unwrap(), &want_dinp, 2e-4, 1e-4);
                    // The column sums in chunks (bias_add::cuda): within f32 rounding of the CPU's row order.
                    assert_close(&format!("{what} dbias"), &gpu.download(&db).unwrap(), &want_db, 1e-5, 1e-5);
                } else {
                    assert_bitwise(&format!("{what} dbias untouched"), &gpu.download(&db).unwrap(), &db0);
                }
            }
            // matmul: a = inp [B, C] @ w viewed as [C, OC].
            for acc in [false, true] {
                let mut want = dout.clone();
                super::super::matmul(&mut want, &inp, &w, b, c, oc, acc);
                let mut out = if acc { gpu.upload(&dout).unwrap() } else { poisoned(gpu, b * oc).unwrap() };
                matmul(gpu, &mut out.as_view_mut(), &d_inp.as_view(), &d_w.as_view(), b, c, oc, acc).unwrap();
                assert_close(
                    &format!("matmul {b}x{c}x{oc} acc {acc}"),
                    &gpu.download(&out).unwrap(),
                    &want,
                    2e-4,
                    1e-4,
                );
            }
        }
    }

    /// `x[r, :] . w[o, :]` over `c` terms in f64 for every (r, o): [rows, oc].
    pub(crate) fn dots(x: &[f32], w: &[f32], rows: usize, c: usize, oc: usize) -> Vec<f64> {
        let mut out = vec![0.0; rows * oc];
        for r in 0..rows {
            for o in 0..oc {
                out[r * oc + o] = (0..c).map(|p| f64::from(x[r * c + p]) * f64::from(w[o * c + p])).sum();
            }
        }
        out
    }

    /// `a^T @ x` over `rows`: a [rows, m], x [rows, n] -> [m, n], f64.
    pub(crate) fn t_dots(a: &[f32], x: &[f32], rows: usize, m: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for r in 0..rows {
            for i in 0..m {
                for j in 0..n {
                    out[i * n + j] += f64::from(a[r * m + i]) * f64::from(x[r * n + j]);
                }
            }
        }
        out
    }

    /// One storage combination of the half-precision path: input stored in `X`, output (and its gradient)
    /// in `Y`, the weight rounded into the half type by the product. The reference is f64 on the stored
    /// inputs and the rounded weight, rounded where the kernels store (the product, then the sum with the
    /// bias). Tolerance: f32 accumulation and a libm-free epilogue leave the GPU within ~1e-6 relative of
    /// the reference before rounding, which can move a value to the next representable one: one unit in the
    /// last place of the half type (2^-10 relative for f16, 2^-7 for bf16) plus an absolute 1e-4, for the
    /// forward's two roundings one of the product's and one of the output's.
    pub(crate) fn half_case<X: TestStore, Y: TestStore, H: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let ulp = if H::KIND == crate::cuda::StoreKind::F16 { 1.0 / 1024.0 } else { 1.0 / 128.0 };
        gpu.set_matmul_precision(match H::KIND {
            crate::cuda::StoreKind::F16 => crate::cuda::MatmulPrecision::F16,
            _ => crate::cuda::MatmulPrecision::Bf16,
        });
        let what = format!("linear {} -> {}", X::KIND.name(), Y::KIND.name());
        for &(b, c, oc) in &[(1usize, 37usize, 10usize), (33, 300, 129)] {
            let (d_inp, inp) = upload_as::<X>(gpu, &rand_vec(rng, b * c, -1.0, 1.0));
            let w = rand_vec(rng, oc * c, -1.0, 1.0);
            let w_h: Vec<f32> = w.iter().map(|&v| H::round(v)).collect();
            let inp_h: Vec<f32> = inp.iter().map(|&v| H::round(v)).collect();
            let bias = rand_vec(rng, oc, -1.0, 1.0);
            let (d_dout, dout) = upload_as::<Y>(gpu, &rand_vec(rng, b * oc, -1.0, 1.0));
            let dout_h: Vec<f32> = dout.iter().map(|&v| H::round(v)).collect();
            let (d_w, d_bias) = (gpu.upload(&w).unwrap(), gpu.upload(&bias).unwrap());

            let prod = dots(&inp_h, &w_h, b, c, oc);
            let want: Vec<f32> =
                prod.iter().enumerate().map(|(i, &p)| Y::round(Y::round(p as f32) + bias[i % oc])).collect();
            let mut out = poisoned_as::<Y>(gpu, b * oc);
            let bv = d_bias.as_view();
            linear_forward(gpu, &mut out.as_view_mut(), &d_inp.as_view(), &d_w.as_view(), Some(&bv), b, c, oc).unwrap();
            let prod32: Vec<f32> = prod.iter().map(|&p| p as f32).collect();
            let got = download_f32(gpu, &out);
            assert_within_two_roundings(&format!("{what} forward {b}x{c}x{oc}"), &got, &want, &prod32, ulp);

            // dinp = dout @ w (stored in X), dweight += dout^T @ inp, dbias += column sums of dout (f32).
            let w_t: Vec<f32> = (0..c * oc).map(|i| w_h[(i % oc) * c + i / oc]).collect(); // [C, OC]
            let want_dinp: Vec<f32> = dots(&dout_h, &w_t, b, oc, c).iter().map(|&v| X::round(v as f32)).collect();
            let want_dw: Vec<f32> = t_dots(&dout_h, &inp_h, b, oc, c).iter().map(|&v| v as f32).collect();
            let want_db: Vec<f32> =
                (0..oc).map(|j| (0..b).map(|i| f64::from(dout[i * oc + j])).sum::<f64>() as f32).collect();
            let mut dinp = poisoned_as::<X>(gpu, b * c);
            let (mut dw, mut db) = (gpu.upload(&vec![0.0f32; oc * c]).unwrap(), gpu.upload(&vec![0.0f32; oc]).unwrap());
            let (mut dinp_v, mut db_v) = (dinp.as_view_mut(), db.as_view_mut());
            linear_backward(
                gpu,
                Some(&mut dinp_v),
                &mut dw.as_view_mut(),
                Some(&mut db_v),
                &d_dout.as_view(),
                &d_inp.as_view(),
                &d_w.as_view(),
                b,
                c,
                oc,
            )
            .unwrap();
            let what = format!("{what} backward {b}x{c}x{oc}");
            assert_close(&format!("{what} dinp"), &download_f32(gpu, &dinp), &want_dinp, 1e-4, ulp);
            assert_close(&format!("{what} dweight"), &gpu.download(&dw).unwrap(), &want_dw, 1e-4, 1e-4);
            assert_close(&format!("{what} dbias"), &gpu.download(&db).unwrap(), &want_db, 1e-4, 1e-5);
        }
    }

    /// Autocast storage: half activations in and out, and the mixed layers at either end of a network (an
    /// f32 input to a half output; a half input to an f32 output), for f16 and bf16.
    #[test]
    fn linear_in_half_storage_matches_the_rounded_reference() {
        if gpu_or_skip("linear_in_half_storage_matches_the_rounded_reference").is_none() {
            return;
        }
        // Its own device handle, its products autocast as a run's are (the precision is per device, and the
        // other tests share one): the all-f32 products of a mixed layer round their inputs too.
        let gpu = &Gpu::open(0).unwrap();
        let mut rng = seeded("linear_in_half_storage_matches_the_rounded_reference");
        for_each_half_pair!(products: half_case(gpu, &mut rng));
    }
}
