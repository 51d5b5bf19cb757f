//! Host side of `l1_loss.cu`: the GPU twins of [`l1_loss_forward`](super::l1_loss_forward) (the loss written
//! to a device scalar, rounded to f32) and [`l1_loss_backward`](super::l1_loss_backward) (bit-identical).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError};

/// L1 forward on the GPU: `loss[0] = mean_i |pred[i] - target[i]|` (a device scalar: `loss` holds one
/// element). pred, target: [N]. Summed in f64 in one block in a fixed order: the same value every run.
pub fn l1_loss_forward(
    gpu: &Gpu,
    pred: &CudaView<f32>,
    target: &CudaView<f32>,
    loss: &mut CudaViewMut<f32>,
) -> Result<(), GpuError> {
    crate::cuda::launch::elementwise_loss(gpu, &CUDA, "l1_loss_forward_f32", "l1_loss_forward", pred, target, loss)
}

/// L1 backward on the GPU: `dpred = scale * sign(pred - target) / N` (overwrites), the CPU's bits.
pub fn l1_loss_backward(
    gpu: &Gpu,
    dpred: &mut CudaViewMut<f32>,
    pred: &CudaView<f32>,
    target: &CudaView<f32>,
    scale: f32,
) -> Result<(), GpuError> {
    let n = pred.len();
    assert!(target.len() == n && dpred.len() == n, "l1_loss_backward: dpred, pred and target lengths differ");
    if n == 0 {
        return Ok(());
    }
    // The CPU's coefficient, in the CPU's f32 arithmetic.
    let g = scale * (1.0 / n as f64) as f32;
    let f = gpu.function(&CUDA, "l1_loss_backward_f32")?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dpred).arg(pred).arg(target).arg(&n).arg(&g);
    // SAFETY: (float*, const float*, const float*, size_t, float); every buffer holds n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Loss and gradient against the CPU on sizes 1, odd and large, with ties (pred == target: a zero
    /// gradient). The loss: the CPU's f64 sum in another order, rounded to f32 (rtol 1e-6). The gradient is
    /// bitwise, with and without a loss scale after it.
    #[test]
    fn l1_loss_matches_cpu() {
        let Some(gpu) = gpu_or_skip("l1_loss_matches_cpu") else { return };
        let mut rng = seeded("l1_loss_matches_cpu");
        for n in [1usize, 1023, 300_001] {
            let p = rand_vec(&mut rng, n, -2.0, 2.0);
            let mut t = rand_vec(&mut rng, n, -2.0, 2.0);
            t[0] = p[0]; // a tie
            let want = super::super::l1_loss_forward(&p, &t) as f32;
            let (dp, dt) = (gpu.upload(&p).unwrap(), gpu.upload(&t).unwrap());
            let mut loss = poisoned(gpu, 1).unwrap();
            l1_loss_forward(gpu, &dp.as_view(), &dt.as_view(), &mut loss.as_view_mut()).unwrap();
            assert_close(&format!("l1 loss n{n}"), &gpu.download(&loss).unwrap(), &[want], 0.0, 1e-6);
            let mut want_d = vec![0.0f32; n];
            super::super::l1_loss_backward(&mut want_d, &p, &t, 1.3);
            let mut dd = poisoned(gpu, n).unwrap();
            l1_loss_backward(gpu, &mut dd.as_view_mut(), &dp.as_view(), &dt.as_view(), 1.3).unwrap();
            assert_bitwise(&format!("l1 backward n{n}"), &gpu.download(&dd).unwrap(), &want_d);
        }
    }
}
