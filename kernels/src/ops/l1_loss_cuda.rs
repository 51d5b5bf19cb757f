//! Host side of `l1_loss.cu`: the GPU twins of [`l1_loss_forward`](super::l1_loss_forward) (the loss written
//! to a device scalar, rounded to f32) and [`l1_loss_backward`](super::l1_loss_backward) (bit-identical).
//!
//! The prediction and its gradient may be stored in half precision (`T`, under autocast): read exactly, the
//! same arithmetic, the gradient rounded once as it is stored (after the f16 loss scale, when given).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::launch::NULL;
use crate::cuda::{Gpu, GpuError, Store};

/// L1 forward on the GPU: `loss[0] = mean_i |pred[i] - target[i]|` (a device scalar: `loss` holds one
/// element). pred, target: [N]. Summed in f64 in one block in a fixed order: the same value every run.
pub fn l1_loss_forward<T: Store>(
    gpu: &Gpu,
    pred: &CudaView<T>,
    target: &CudaView<f32>,
    loss: &mut CudaViewMut<f32>,
) -> Result<(), GpuError> {
    let kernels = ["l1_loss_forward_f32", "l1_loss_forward_f16", "l1_loss_forward_bf16"];
    crate::cuda::launch::elementwise_loss(gpu, &CUDA, kernels, "l1_loss_forward", pred, target, loss)
}

/// L1 backward on the GPU: `dpred = scale * sign(pred - target) / N` (overwrites), the CPU's bits, times
/// `loss_scale[0]` when given (the f16 loss-scale state, read on the device).
pub fn l1_loss_backward<T: Store>(
    gpu: &Gpu,
    dpred: &mut CudaViewMut<T>,
    pred: &CudaView<T>,
    target: &CudaView<f32>,
    scale: f32,
    loss_scale: Option<&CudaView<f64>>,
) -> Result<(), GpuError> {
    let n = pred.len();
    assert!(target.len() == n && dpred.len() == n, "l1_loss_backward: dpred, pred and target lengths differ");
    if n == 0 {
        return Ok(());
    }
    // The CPU's coefficient, in the CPU's f32 arithmetic.
    let g = scale * (1.0 / n as f64) as f32;
    let f = gpu.function(&CUDA, T::pick(["l1_loss_backward_f32", "l1_loss_backward_f16", "l1_loss_backward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dpred).arg(pred).arg(target).arg(&n).arg(&g);
    match loss_scale {
        Some(ls) => l.arg(ls),
        None => l.arg(&NULL),
    };
    // SAFETY: (T*, const T*, const float*, size_t, float, const double*); every buffer holds n elements, the
    // loss scale (or null) one or more.
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
            let scale = gpu.upload(&[4096.0f64, 0.0]).unwrap();
            for (ls, k) in [(None, 1.0f32), (Some(scale.as_view()), 4096.0)] {
                let mut dd = poisoned(gpu, n).unwrap();
                l1_loss_backward(gpu, &mut dd.as_view_mut(), &dp.as_view(), &dt.as_view(), 1.3, ls.as_ref()).unwrap();
                let want: Vec<f32> = want_d.iter().map(|&g| g * k).collect();
                assert_bitwise(&format!("l1 backward n{n} scale {k}"), &gpu.download(&dd).unwrap(), &want);
            }
        }
    }

    /// The prediction (and its gradient) stored in f16 / bf16, as under autocast, with ties: the loss is the
    /// CPU's on the stored prediction (rtol 1e-6), the gradient with a loss scale of 2^10 the CPU's times
    /// the scale rounded once into the storage type, bit for bit.
    #[test]
    fn l1_loss_of_a_half_prediction_matches_the_rounded_reference() {
        let Some(gpu) = gpu_or_skip("l1_loss_of_a_half_prediction_matches_the_rounded_reference") else { return };
        let mut rng = seeded("l1_loss_of_a_half_prediction_matches_the_rounded_reference");
        fn case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng, n: usize) {
            let (dp, p) = upload_as::<T>(gpu, &rand_vec(rng, n, -2.0, 2.0));
            let mut t = rand_vec(rng, n, -2.0, 2.0);
            t[0] = p[0]; // a tie with the stored value
            let (dt, scale) = (gpu.upload(&t).unwrap(), gpu.upload(&[1024.0f64, 0.0]).unwrap());
            let mut loss = poisoned(gpu, 1).unwrap();
            l1_loss_forward(gpu, &dp.as_view(), &dt.as_view(), &mut loss.as_view_mut()).unwrap();
            let what = format!("l1 {} n{n}", T::KIND.name());
            let want = super::super::l1_loss_forward(&p, &t) as f32;
            assert_close(&format!("{what} loss"), &gpu.download(&loss).unwrap(), &[want], 0.0, 1e-6);
            let mut want_d = vec![0.0f32; n];
            super::super::l1_loss_backward(&mut want_d, &p, &t, 1.3);
            let want: Vec<f32> = want_d.iter().map(|&g| T::round(g * 1024.0)).collect();
            let mut dd = poisoned_as::<T>(gpu, n);
            let sv = scale.as_view();
            l1_loss_backward(gpu, &mut dd.as_view_mut(), &dp.as_view(), &dt.as_view(), 1.3, Some(&sv)).unwrap();
            assert_bitwise(&format!("{what} backward"), &download_f32(gpu, &dd), &want);
        }
        for n in [1usize, 4099] {
            case::<half::f16>(gpu, &mut rng, n);
            case::<half::bf16>(gpu, &mut rng, n);
        }
    }
}
