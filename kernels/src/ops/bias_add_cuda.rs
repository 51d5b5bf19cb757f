//! Host side of `bias_add.cu`: the GPU twins of [`bias_add_forward`](super::bias_add_forward) and
//! [`bias_add_backward`](super::bias_add_backward), bit-identical to them.

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError};

/// Adds `bias` to every row of `out_inplace` on the GPU. out_inplace: [B, N], bias: [N].
pub fn bias_add_forward(
    gpu: &Gpu,
    out_inplace: &mut CudaViewMut<f32>,
    bias: &CudaView<f32>,
    b: usize,
    n: usize,
) -> Result<(), GpuError> {
    assert_eq!(out_inplace.len(), b * n, "bias_add_forward: out must be [B, N]");
    assert_eq!(bias.len(), n, "bias_add_forward: bias must be [N]");
    if b * n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, "bias_add_forward_f32")?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out_inplace).arg(bias).arg(&b).arg(&n);
    // SAFETY: (float*, const float*, size_t, size_t) as the kernel declares; out holds b*n, bias n elements.
    unsafe { l.launch(gpu.elementwise(b * n)) }?;
    Ok(())
}

/// `dbias[j] += sum_i dout[i, j]` on the GPU (accumulates). dbias: [N], dout: [B, N].
///
/// One thread per column sums the rows in order, as the CPU does, so the result is the CPU's bits; the
/// parallelism is N threads, plenty for layer widths (hundreds or more).
pub fn bias_add_backward(
    gpu: &Gpu,
    dbias: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    b: usize,
    n: usize,
) -> Result<(), GpuError> {
    assert_eq!(dbias.len(), n, "bias_add_backward: dbias must be [N]");
    assert_eq!(dout.len(), b * n, "bias_add_backward: dout must be [B, N]");
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, "bias_add_backward_f32")?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dbias).arg(dout).arg(&b).arg(&n);
    // SAFETY: (float*, const float*, size_t, size_t); dbias holds n and dout b*n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward and (accumulating) backward equal the CPU bit for bit: the same f32 additions in the same
    /// order. Batches of 1 and more, widths below, at and above a block.
    #[test]
    fn bias_add_matches_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("bias_add_matches_cpu_bitwise") else { return };
        let mut rng = seeded("bias_add_matches_cpu_bitwise");
        for &(b, n) in &[(1usize, 1usize), (1, 300), (7, 5), (129, 257), (1000, 3)] {
            let x = rand_vec(&mut rng, b * n, -2.0, 2.0);
            let bias = rand_vec(&mut rng, n, -1.0, 1.0);
            let db0 = rand_vec(&mut rng, n, -1.0, 1.0);
            let mut want = x.clone();
            super::super::bias_add_forward(&mut want, &bias, b, n);
            let mut want_db = db0.clone();
            super::super::bias_add_backward(&mut want_db, &x, b, n);

            let (mut dx, dbias) = (gpu.upload(&x).unwrap(), gpu.upload(&bias).unwrap());
            bias_add_forward(gpu, &mut dx.as_view_mut(), &dbias.as_view(), b, n).unwrap();
            assert_bitwise(&format!("bias_add_forward {b}x{n}"), &gpu.download(&dx).unwrap(), &want);
            let (mut ddb, dxin) = (gpu.upload(&db0).unwrap(), gpu.upload(&x).unwrap());
            bias_add_backward(gpu, &mut ddb.as_view_mut(), &dxin.as_view(), b, n).unwrap();
            assert_bitwise(&format!("bias_add_backward {b}x{n}"), &gpu.download(&ddb).unwrap(), &want_db);
        }
    }
}
