//! Host side of `softmax.cu`: the GPU twins of [`softmax_forward`](super::softmax_forward),
//! [`softmax_backward`](super::softmax_backward), [`log_softmax_forward`](super::log_softmax_forward) and
//! [`log_softmax_backward`](super::log_softmax_backward).

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

use super::CUDA;
use crate::cuda::launch::BLOCK;
use crate::cuda::{Gpu, GpuError};

/// Most blocks a per-row kernel is launched with (it loops over further rows).
const MAX_ROW_BLOCKS: usize = 1 << 16;

/// Launches the row kernel `kernel(dst, a, [b,] rows, dim)`.
fn rows_kernel(
    gpu: &Gpu,
    kernel: &'static str,
    dst: &mut CudaViewMut<f32>,
    a: &CudaView<f32>,
    b: Option<&CudaView<f32>>,
    rows: usize,
    dim: usize,
) -> Result<(), GpuError> {
    let what = kernel.trim_end_matches("_f32");
    assert_eq!(dst.len(), rows * dim, "{what}: every buffer must be [rows, dim]");
    assert_eq!(a.len(), rows * dim, "{what}: every buffer must be [rows, dim]");
    assert!(b.is_none_or(|b| b.len() == rows * dim), "{what}: every buffer must be [rows, dim]");
    if rows * dim == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, kernel)?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dst).arg(a);
    if let Some(b) = b {
        l.arg(b);
    }
    l.arg(&rows).arg(&dim);
    let cfg = LaunchConfig {
        grid_dim: (rows.min(MAX_ROW_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: (float*, const float*, [const float*,] size_t, size_t): the forwards take one input, the
    // backwards two, as passed; every buffer holds rows*dim elements.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Softmax over the last axis on the GPU (overwrites `out`). out, inp: [rows, dim].
pub fn softmax_forward(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    inp: &CudaView<f32>,
    rows: usize,
    dim: usize,
) -> Result<(), GpuError> {
    rows_kernel(gpu, "softmax_forward_f32", out, inp, None, rows, dim)
}

/// Softmax backward on the GPU from the forward output: `dinp = y * (dout - sum_j dout_j y_j)`
/// (overwrites). dinp, dout, out: [rows, dim].
pub fn softmax_backward(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    out: &CudaView<f32>,
    rows: usize,
    dim: usize,
) -> Result<(), GpuError> {
    rows_kernel(gpu, "softmax_backward_f32", dinp, dout, Some(out), rows, dim)
}

/// Log-softmax over the last axis on the GPU (overwrites `out`). out, inp: [rows, dim].
pub fn log_softmax_forward(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    inp: &CudaView<f32>,
    rows: usize,
    dim: usize,
) -> Result<(), GpuError> {
    rows_kernel(gpu, "log_softmax_forward_f32", out, inp, None, rows, dim)
}

/// Log-softmax backward on the GPU from the forward output: `dinp = dout - e^y * sum_j dout_j`
/// (overwrites). dinp, dout, out: [rows, dim].
pub fn log_softmax_backward(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    out: &CudaView<f32>,
    rows: usize,
    dim: usize,
) -> Result<(), GpuError> {
    rows_kernel(gpu, "log_softmax_backward_f32", dinp, dout, Some(out), rows, dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// All four against the CPU, one row and many, widths 1, odd, and above the block (a 5000-wide row
    /// with a large spread, so tiny probabilities appear). The backwards are fed the CPU's forward output.
    ///
    /// Tolerances: softmax values differ by exp (CPU polynomial <= 1.34 ulp vs expf <= 2 ulp) and the f64
    /// sum order (negligible): a few ulp, atol 1e-7 + rtol 1e-5 (1e-7 absolute because values near 1e-30
    /// are compared too). Log-softmax: |out| <= ~40, errors of the f32 log_sum rounding: atol 1e-5 +
    /// rtol 1e-6. Backwards: an f32-rounded row reduction (equal or 1 ulp) times O(1): atol 1e-6 +
    /// rtol 1e-5; the log-softmax backward also has expf(y): same bound.
    #[test]
    fn softmax_matches_cpu() {
        let Some(gpu) = gpu_or_skip("softmax_matches_cpu") else { return };
        let mut rng = seeded("softmax_matches_cpu");
        for &(rows, dim, spread) in &[(1usize, 1usize, 1.0f32), (1, 10, 3.0), (17, 33, 5.0), (3, 5000, 20.0)] {
            let len = rows * dim;
            let x = rand_vec(&mut rng, len, -spread, spread);
            let g = rand_vec(&mut rng, len, -1.0, 1.0);
            let (dx, dg) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
            let what = format!("softmax rows{rows} dim{dim}");

            let mut want = vec![0.0f32; len];
            super::super::softmax_forward(&mut want, &x, rows, dim);
            let mut out = poisoned(gpu, len).unwrap();
            softmax_forward(gpu, &mut out.as_view_mut(), &dx.as_view(), rows, dim).unwrap();
            assert_close(&format!("{what} forward"), &gpu.download(&out).unwrap(), &want, 1e-7, 1e-5);
            let mut want_d = vec![0.0f32; len];
            super::super::softmax_backward(&mut want_d, &g, &want, rows, dim);
            let dy = gpu.upload(&want).unwrap();
            let mut d = poisoned(gpu, len).unwrap();
            softmax_backward(gpu, &mut d.as_view_mut(), &dg.as_view(), &dy.as_view(), rows, dim).unwrap();
            assert_close(&format!("{what} backward"), &gpu.download(&d).unwrap(), &want_d, 1e-6, 1e-5);

            let mut want = vec![0.0f32; len];
            super::super::log_softmax_forward(&mut want, &x, rows, dim);
            let mut out = poisoned(gpu, len).unwrap();
            log_softmax_forward(gpu, &mut out.as_view_mut(), &dx.as_view(), rows, dim).unwrap();
            assert_close(&format!("{what} log forward"), &gpu.download(&out).unwrap(), &want, 1e-5, 1e-6);
            let mut want_d = vec![0.0f32; len];
            super::super::log_softmax_backward(&mut want_d, &g, &want, rows, dim);
            let dy = gpu.upload(&want).unwrap();
            let mut d = poisoned(gpu, len).unwrap();
            log_softmax_backward(gpu, &mut d.as_view_mut(), &dg.as_view(), &dy.as_view(), rows, dim).unwrap();
            assert_close(&format!("{what} log backward"), &gpu.download(&d).unwrap(), &want_d, 1e-6, 1e-5);
        }
    }
}
