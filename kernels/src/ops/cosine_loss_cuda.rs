//! Host side of `cosine_loss.cu`: the GPU twins of [`cosine_loss`](super::cosine_loss) (the loss written to a
//! device scalar) and [`cosine_loss_backward`](super::cosine_loss_backward).
//!
//! The prediction and its gradient may be stored in half precision (`T`, under autocast): read exactly, the
//! same arithmetic, the gradient rounded once as it is stored (after the f16 loss scale, when given).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::launch::{row_launch, NULL};
use crate::cuda::{Gpu, GpuError, Store};

/// Cosine loss forward on the GPU: `loss[0] = mean_i (1 - cos(pred_i, target_i))`, rounded to f32 (a device
/// scalar: `loss` holds one element). pred, target: [n, d]. The rows' cosines are summed in f64 in one block
/// in a fixed order: the same value every run; within an f32 rounding of the CPU's f64 loss.
pub fn cosine_loss<T: Store>(
    gpu: &Gpu,
    pred: &CudaView<T>,
    target: &CudaView<f32>,
    n: usize,
    d: usize,
    eps: f64,
    loss: &mut CudaViewMut<f32>,
) -> Result<(), GpuError> {
    assert!(pred.len() == n * d && target.len() == n * d, "cosine_loss: pred and target must be [n, d]");
    assert_eq!(loss.len(), 1, "cosine_loss: loss must be one device scalar");
    let f = gpu.function(&CUDA, T::pick(["cosine_loss_f32", "cosine_loss_f16", "cosine_loss_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(loss).arg(pred).arg(target).arg(&n).arg(&d).arg(&eps);
    // SAFETY: (float*, const T*, const float*, size_t, size_t, double); loss holds 1, pred and target
    // n * d elements.
    unsafe { l.launch(crate::cuda::launch::ONE_BLOCK) }?;
    Ok(())
}

/// Cosine loss backward on the GPU: the gradient of `scale * cosine_loss` with respect to `pred`
/// (overwrites `dpred`), times `loss_scale[0]` when given (the f16 loss-scale state, read on the device). The
/// CPU's f64 formula; its sums in another order, so within an f32 rounding of the CPU's values.
#[allow(clippy::too_many_arguments)]
pub fn cosine_loss_backward<T: Store>(
    gpu: &Gpu,
    dpred: &mut CudaViewMut<T>,
    pred: &CudaView<T>,
    target: &CudaView<f32>,
    n: usize,
    d: usize,
    eps: f64,
    scale: f32,
    loss_scale: Option<&CudaView<f64>>,
) -> Result<(), GpuError> {
    assert!(
        pred.len() == n * d && target.len() == n * d && dpred.len() == n * d,
        "cosine_loss_backward: dpred, pred and target must be [n, d]"
    );
    if n == 0 || d == 0 {
        return Ok(());
    }
    // The CPU's coefficient, in f64.
    let g = -(scale as f64) / n as f64;
    // A warp per row whatever its length (lanes stride the row).
    let (_, cfg) = row_launch(n, 1);
    let names = ["cosine_loss_backward_f32", "cosine_loss_backward_f16", "cosine_loss_backward_bf16"];
    let f = gpu.function(&CUDA, T::pick(names))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dpred).arg(pred).arg(target).arg(&n).arg(&d).arg(&eps).arg(&g);
    match loss_scale {
        Some(ls) => l.arg(ls),
        None => l.arg(&NULL),
    };
    // SAFETY: (T*, const T*, const float*, size_t, size_t, double, double, const double*); every buffer holds
    // n * d elements, the loss scale (or null) one or more.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Loss and gradient against the CPU: one row and several, short rows and rows longer than a warp, a zero
    /// prediction row (the clamped norm), with and without a loss scale. The loss is the CPU's f64 value up to
    /// the order of the row sums, rounded to f32 (rtol 1e-6); the gradient the same f64 formula up to the
    /// order of each row's sums, rounded to f32 (rtol 1e-6, atol 1e-12 for exact zeros).
    #[test]
    fn cosine_loss_matches_cpu() {
        let Some(gpu) = gpu_or_skip("cosine_loss_matches_cpu") else { return };
        let mut rng = seeded("cosine_loss_matches_cpu");
        for (n, d) in [(1usize, 3usize), (7, 32), (33, 77), (5, 512)] {
            let mut p = rand_vec(&mut rng, n * d, -1.0, 1.0);
            let t = rand_vec(&mut rng, n * d, -1.0, 1.0);
            if n > 1 {
                p[d..2 * d].fill(0.0); // row 1: a zero prediction
            }
            let eps = super::super::COSINE_EPS;
            let want = super::super::cosine_loss(&p, &t, n, d, eps) as f32;
            let (dp, dt) = (gpu.upload(&p).unwrap(), gpu.upload(&t).unwrap());
            let mut loss = poisoned(gpu, 1).unwrap();
            cosine_loss(gpu, &dp.as_view(), &dt.as_view(), n, d, eps, &mut loss.as_view_mut()).unwrap();
            assert_close(&format!("cosine loss n{n} d{d}"), &gpu.download(&loss).unwrap(), &[want], 0.0, 1e-6);
            let mut want_d = vec![0.0f32; n * d];
            super::super::cosine_loss_backward(&mut want_d, &p, &t, n, d, eps, 0.7);
            let scale = gpu.upload(&[4096.0f64, 0.0]).unwrap();
            for (ls, k) in [(None, 1.0f32), (Some(scale.as_view()), 4096.0)] {
                let mut dd = poisoned(gpu, n * d).unwrap();
                let (pv, tv) = (dp.as_view(), dt.as_view());
                cosine_loss_backward(gpu, &mut dd.as_view_mut(), &pv, &tv, n, d, eps, 0.7, ls.as_ref()).unwrap();
                let want: Vec<f32> = want_d.iter().map(|&g| g * k).collect();
                let what = format!("cosine backward n{n} d{d} scale {k}");
                assert_close(&what, &gpu.download(&dd).unwrap(), &want, 1e-12, 1e-6);
            }
        }
    }

    /// The prediction (and its gradient) stored in f16 / bf16, as under autocast: the loss is the CPU's on
    /// the stored prediction (rtol 1e-6, as above); the gradient with a loss scale of 2^10 is the CPU's times
    /// the scale rounded into the storage type, within one unit in its last place (the f32 value may sit on
    /// the other side of a rounding boundary).
    #[test]
    fn cosine_loss_of_a_half_prediction_matches_the_rounded_reference() {
        let name = "cosine_loss_of_a_half_prediction_matches_the_rounded_reference";
        let Some(gpu) = gpu_or_skip(name) else { return };
        let mut rng = seeded(name);
        fn case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng, n: usize, d: usize) {
            let (dp, p) = upload_as::<T>(gpu, &rand_vec(rng, n * d, -1.0, 1.0));
            let t = rand_vec(rng, n * d, -1.0, 1.0);
            let (dt, scale) = (gpu.upload(&t).unwrap(), gpu.upload(&[1024.0f64, 0.0]).unwrap());
            let eps = super::super::COSINE_EPS;
            let mut loss = poisoned(gpu, 1).unwrap();
            cosine_loss(gpu, &dp.as_view(), &dt.as_view(), n, d, eps, &mut loss.as_view_mut()).unwrap();
            let what = format!("cosine {} n{n} d{d}", T::KIND.name());
            let want = super::super::cosine_loss(&p, &t, n, d, eps) as f32;
            assert_close(&format!("{what} loss"), &gpu.download(&loss).unwrap(), &[want], 0.0, 1e-6);
            let mut want_d = vec![0.0f32; n * d];
            super::super::cosine_loss_backward(&mut want_d, &p, &t, n, d, eps, 0.7);
            let want: Vec<f32> = want_d.iter().map(|&g| T::round(g * 1024.0)).collect();
            let mut dd = poisoned_as::<T>(gpu, n * d);
            let (pv, tv, sv) = (dp.as_view(), dt.as_view(), scale.as_view());
            cosine_loss_backward(gpu, &mut dd.as_view_mut(), &pv, &tv, n, d, eps, 0.7, Some(&sv)).unwrap();
            assert_close(&format!("{what} backward"), &download_f32(gpu, &dd), &want, 1e-12, T::ULP);
        }
        for (n, d) in [(7usize, 32usize), (5, 512)] {
            case::<half::f16>(gpu, &mut rng, n, d);
            case::<half::bf16>(gpu, &mut rng, n, d);
        }
    }
}
