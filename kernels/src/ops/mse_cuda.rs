//! Host side of `mse.cu`: the GPU twins of [`mse_forward`](super::mse_forward) (the loss written to a
//! device scalar) and [`mse_backward`](super::mse_backward) (bit-identical).
//!
//! The prediction and its gradient may be stored in half precision (`T`, under autocast): read exactly, the
//! same arithmetic, the gradient rounded once as it is stored (after the f16 loss scale, when given).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::launch::NULL;
use crate::cuda::{Gpu, GpuError, Store};

/// MSE forward on the GPU: `loss[0] = mean_i (pred[i] - target[i])^2` (a device scalar: `loss` holds one
/// element; read it with `softmax_cross_entropy::cuda::download_loss` or `gpu.download`).
///
/// pred, target: [N]. Summed in f64 in one block in a fixed order, so the value is the same every run; one
/// block streams about 100 GB/s, i.e. ~1 ms for 12M elements, fine next to the model that produced them.
pub fn mse_forward<T: Store>(
    gpu: &Gpu,
    pred: &CudaView<T>,
    target: &CudaView<f32>,
    loss: &mut CudaViewMut<f32>,
) -> Result<(), GpuError> {
    let kernels = ["mse_forward_f32", "mse_forward_f16", "mse_forward_bf16"];
    crate::cuda::launch::elementwise_loss(gpu, &CUDA, kernels, "mse_forward", pred, target, loss)
}

/// MSE backward on the GPU: `dpred = dloss * 2 (pred - target) / N` (overwrites), the CPU's bits, times
/// `loss_scale[0]` when given (the f16 loss-scale state, read on the device) as the host scales a gradient.
/// dpred, pred, target: [N].
pub fn mse_backward<T: Store>(
    gpu: &Gpu,
    dpred: &mut CudaViewMut<T>,
    pred: &CudaView<T>,
    target: &CudaView<f32>,
    dloss: f32,
    loss_scale: Option<&CudaView<f64>>,
) -> Result<(), GpuError> {
    let n = pred.len();
    assert!(target.len() == n && dpred.len() == n, "mse_backward: dpred, pred and target lengths differ");
    if n == 0 {
        return Ok(());
    }
    // The CPU's scale, in the CPU's f32 arithmetic.
    let scale = dloss * (2.0 / n as f64) as f32;
    let f = gpu.function(&CUDA, T::pick(["mse_backward_f32", "mse_backward_f16", "mse_backward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dpred).arg(pred).arg(target).arg(&n).arg(&scale);
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
            let scale = gpu.upload(&[4096.0f64, 0.0]).unwrap();
            for (ls, k) in [(None, 1.0f32), (Some(scale.as_view()), 4096.0)] {
                let mut dd = poisoned(gpu, n).unwrap();
                mse_backward(gpu, &mut dd.as_view_mut(), &pv, &tv, 1.3, ls.as_ref()).unwrap();
                let want: Vec<f32> = want_d.iter().map(|&g| g * k).collect();
                assert_bitwise(&format!("mse backward n{n} scale {k}"), &gpu.download(&dd).unwrap(), &want);
            }
        }
    }

    /// The prediction (and its gradient) stored in f16 / bf16, as under autocast: the loss is the CPU's on
    /// the stored prediction (rtol 1e-6, as above), the gradient with a loss scale of 2^10 the CPU's times
    /// the scale rounded once into the storage type, bit for bit.
    #[test]
    fn mse_of_a_half_prediction_matches_the_rounded_reference() {
        let Some(gpu) = gpu_or_skip("mse_of_a_half_prediction_matches_the_rounded_reference") else { return };
        let mut rng = seeded("mse_of_a_half_prediction_matches_the_rounded_reference");
        fn case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng, n: usize) {
            let (dp, p) = upload_as::<T>(gpu, &rand_vec(rng, n, -2.0, 2.0));
            let t = rand_vec(rng, n, -2.0, 2.0);
            let (dt, scale) = (gpu.upload(&t).unwrap(), gpu.upload(&[1024.0f64, 0.0]).unwrap());
            let mut loss = poisoned(gpu, 1).unwrap();
            mse_forward(gpu, &dp.as_view(), &dt.as_view(), &mut loss.as_view_mut()).unwrap();
            let what = format!("mse {} n{n}", T::KIND.name());
            let want = super::super::mse_forward(&p, &t);
            assert_close(&format!("{what} loss"), &gpu.download(&loss).unwrap(), &[want], 0.0, 1e-6);
            let mut want_d = vec![0.0f32; n];
            super::super::mse_backward(&mut want_d, &p, &t, 1.3);
            let want: Vec<f32> = want_d.iter().map(|&g| T::round(g * 1024.0)).collect();
            let mut dd = poisoned_as::<T>(gpu, n);
            let sv = scale.as_view();
            mse_backward(gpu, &mut dd.as_view_mut(), &dp.as_view(), &dt.as_view(), 1.3, Some(&sv)).unwrap();
            assert_bitwise(&format!("{what} backward"), &download_f32(gpu, &dd), &want);
        }
        for n in [1usize, 4099] {
            case::<half::f16>(gpu, &mut rng, n);
            case::<half::bf16>(gpu, &mut rng, n);
        }
    }
}
