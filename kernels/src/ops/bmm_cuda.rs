//! GPU twins of [`bmm`](super::bmm) and [`bmm_backward`](super::bmm_backward): one cuBLAS strided-batched
//! product each (through [`gemm::cuda`](super::super::gemm::cuda)), transposes as operand flags.

use cudarc::driver::{CudaView, CudaViewMut};

use crate::cuda::{Gpu, GpuError};
use crate::ops::gemm::cuda::gemm_strided_batched;

/// `out[i] = op_a(a[i]) @ op_b(b[i])` on the GPU (overwrites, or `+=` when `accumulate`).
/// a: [B, M, K] (or [B, K, M] when `trans_a`), b: [B, K, N] (or [B, N, K] when `trans_b`), out: [B, M, N].
#[allow(clippy::too_many_arguments)]
pub fn bmm(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) -> Result<(), GpuError> {
    assert_eq!(out.len(), batch * m * n, "bmm: out must be [B, M, N]");
    assert_eq!(a.len(), batch * m * k, "bmm: a must be [B, M, K] (or [B, K, M] when trans_a)");
    assert_eq!(b.len(), batch * k * n, "bmm: b must be [B, K, N] (or [B, N, K] when trans_b)");
    let beta = if accumulate { 1.0 } else { 0.0 };
    gemm_strided_batched(gpu, batch, m, n, k, a, trans_a, m * k, b, trans_b, k * n, out, m * n, 1.0, beta)
}

/// Backward of [`bmm`] on the GPU: `dA = dout @ B^T`, `dB = A^T @ dout` (A = op_a(a[i]), B = op_b(b[i])),
/// each written in its operand's stored layout (overwrites; None skips it).
/// dout: [B, M, N]; a, da and b, db: as `a` and `b` in [`bmm`].
#[allow(clippy::too_many_arguments)]
pub fn bmm_backward(
    gpu: &Gpu,
    da: Option<&mut CudaViewMut<f32>>,
    db: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<f32>,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) -> Result<(), GpuError> {
    assert_eq!(dout.len(), batch * m * n, "bmm_backward: dout must be [B, M, N]");
    assert_eq!(a.len(), batch * m * k, "bmm_backward: a must be [B, M, K] (or [B, K, M] when trans_a)");
    assert_eq!(b.len(), batch * k * n, "bmm_backward: b must be [B, K, N] (or [B, N, K] when trans_b)");
    let (sa, sb, so) = (m * k, k * n, m * n);
    if let Some(da) = da {
        assert_eq!(da.len(), a.len(), "bmm_backward: da must have the shape of a");
        if trans_a {
            // da stored [K, M] = (dout @ B^T)^T = B @ dout^T.
            gemm_strided_batched(gpu, batch, k, m, n, b, trans_b, sb, dout, true, so, da, sa, 1.0, 0.0)?;
        } else {
            // da [M, K] = dout @ B^T; b stored [K, N] is B (so transpose it) or [N, K], already B^T.
            gemm_strided_batched(gpu, batch, m, k, n, dout, false, so, b, !trans_b, sb, da, sa, 1.0, 0.0)?;
        }
    }
    if let Some(db) = db {
        assert_eq!(db.len(), b.len(), "bmm_backward: db must have the shape of b");
        if trans_b {
            // db stored [N, K] = (A^T @ dout)^T = dout^T @ A.
            gemm_strided_batched(gpu, batch, n, k, m, dout, true, so, a, trans_a, sa, db, sb, 1.0, 0.0)?;
        } else {
            // db [K, N] = A^T @ dout; a stored [M, K] is A (transpose it) or [K, M], already A^T.
            gemm_strided_batched(gpu, batch, k, n, m, a, !trans_a, sa, dout, false, so, db, sb, 1.0, 0.0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Every transpose combination, overwrite and accumulate, batch 1 and more, forward and backward,
    /// against the CPU. Tolerance as in the gemm test: K-term f32 sums in another order (K <= 19,
    /// |x| <= 1): atol 1e-4 + rtol 1e-4.
    #[test]
    fn bmm_matches_cpu() {
        let Some(gpu) = gpu_or_skip("bmm_matches_cpu") else { return };
        let mut rng = seeded("bmm_matches_cpu");
        for &(batch, m, k, n) in &[(1usize, 3usize, 5usize, 4usize), (4, 7, 19, 2), (3, 1, 6, 11)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = rand_vec(&mut rng, batch * m * k, -1.0, 1.0);
                let b = rand_vec(&mut rng, batch * k * n, -1.0, 1.0);
                let g = rand_vec(&mut rng, batch * m * n, -1.0, 1.0);
                let (da_, db_, dg) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap(), gpu.upload(&g).unwrap());
                let what = format!("bmm b{batch} m{m} k{k} n{n} ta{ta} tb{tb}");
                for acc in [false, true] {
                    let mut want = g.clone();
                    super::super::bmm(&mut want, &a, &b, batch, m, k, n, ta, tb, acc);
                    let mut out = if acc { gpu.upload(&g).unwrap() } else { poisoned(gpu, g.len()).unwrap() };
                    bmm(gpu, &mut out.as_view_mut(), &da_.as_view(), &db_.as_view(), batch, m, k, n, ta, tb, acc)
                        .unwrap();
                    assert_close(&format!("{what} acc {acc}"), &gpu.download(&out).unwrap(), &want, 1e-4, 1e-4);
                }
                let (mut wa, mut wb) = (vec![0.0f32; a.len()], vec![0.0f32; b.len()]);
                super::super::bmm_backward(Some(&mut wa), Some(&mut wb), &g, &a, &b, batch, m, k, n, ta, tb);
                let (mut ga, mut gb) = (poisoned(gpu, a.len()).unwrap(), poisoned(gpu, b.len()).unwrap());
                let (mut gav, mut gbv) = (ga.as_view_mut(), gb.as_view_mut());
                bmm_backward(
                    gpu,
                    Some(&mut gav),
                    Some(&mut gbv),
                    &dg.as_view(),
                    &da_.as_view(),
                    &db_.as_view(),
                    batch,
                    m,
                    k,
                    n,
                    ta,
                    tb,
                )
                .unwrap();
                assert_close(&format!("{what} da"), &gpu.download(&ga).unwrap(), &wa, 1e-4, 1e-4);
                assert_close(&format!("{what} db"), &gpu.download(&gb).unwrap(), &wb, 1e-4, 1e-4);
            }
        }
    }
}
