//! Host side of `mse.cu`: the GPU twins of [`mse_forward`](super::mse_forward) (the loss written to a
//! device scalar) and [`mse_backward`](super::mse_backward) (bit-identical).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError};

/// MSE forward on the GPU: `loss[0] = mean_i (pred[i] - target[i])^2` (a device scalar: `loss` holds one
/// element; read it with `softmax_cross_entropy::cuda::download_loss` or `gpu.download`).
///
/// pred, target: [N]. Summed in f64 in one block in a fixed order, so the value is the same every run; one
/// block streams about 100 GB/s, i.e. ~1 ms for 12M elements, fine next to the model that produced them.
pub fn mse_forward(
    gpu: &Gpu,
    pred: &CudaView<f32>,
    target: &CudaView<f32>,
    loss: &mut CudaViewMut<f32>,
) -> Result<(), GpuError> {
    crate::cuda::launch::elementwise_loss(gpu, &CUDA, "mse_forward_f32", "mse_forward", pred, target, loss)
}

/// MSE backward on the GPU: `dpred = dloss * 2 (pred - target) / N` (overwrites), the CPU's bits. dpred,
/// pred, target: [N].
pub fn mse_backward(
    gpu: &Gpu,
    dpred: &mut CudaViewMut<f32>,
    pred: &CudaView<f32>,
    target: &CudaView<f32>,
    dloss: f32,
) -> Result<(), GpuError> {
    let n = pred.len();
    assert!(target.len() == n && dpred.len() == n, "mse_backward: dpred, pred and target lengths differ");
    if n == 0 {
        return Ok(());
    }
    // The CPU's scale, in the CPU's f32 arithmetic.
    let scale = dloss * (2.0 / n as f64) as f32;
    let f = gpu.function(&CUDA, "mse_backward_f32")?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dpred).arg(pred).arg(target).arg(&n).arg(&scale);
    // SAFETY: (float*, const float*, const float*, size_t, float); every buffer holds n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Loss and gradient against the CPU on sizes 1, odd and large. The loss is an f64 sum of the same
    /// f32-rounded squares in another order, rounded to f32 once: within 1 ulp (rtol 2e-7; 1e-6 for
    /// margin). The gradient is bitwise, also with a loss scale applied after it. An empty input gives a loss
    /// of 0 as on the CPU.
    #[test]
    fn mse_matches_cpu() {
        let Some(gpu) = gpu_or_skip("mse_matches_cpu") else { return };
        let mut rng = seeded("mse_matches_cpu");
        for n in [0usize, 1, 1023, 300_001] {
            let p = rand_vec(&mut rng, n, -2.0, 2.0);
            let t = rand_vec(&mut rng, n, -2.0, 2.0);
            let want = super::super::mse_forward(&p, &t);
            let (dp, dt) = if n > 0 {
                (gpu.upload(&p).unwrap(), gpu.upload(&t).unwrap())
            } else {
                (gpu.stream().alloc_zeros::<f32>(1).unwrap(), gpu.stream().alloc_zeros::<f32>(1).unwrap())
            };
            let (pv, tv) = (dp.slice(..n), dt.slice(..n));
            let mut loss = poisoned(gpu, 1).unwrap();
            mse_forward(gpu, &pv, &tv, &mut loss.as_view_mut()).unwrap();
            assert_close(&format!("mse loss n{n}"), &gpu.download(&loss).unwrap(), &[want], 0.0, 1e-6);
            if n == 0 {
                continue;
            }
            let mut want_d = vec![0.0f32; n];
            super::super::mse_backward(&mut want_d, &p, &t, 1.3);
            let mut dd = poisoned(gpu, n).unwrap();
            mse_backward(gpu, &mut dd.as_view_mut(), &pv, &tv, 1.3).unwrap();
            assert_bitwise(&format!("mse backward n{n}"), &gpu.download(&dd).unwrap(), &want_d);
        }
    }
}
