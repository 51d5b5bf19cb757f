//! Host side of `softmax_cross_entropy.cu`: the GPU twins of
//! [`softmax_cross_entropy_forward`](super::softmax_cross_entropy_forward) and
//! [`softmax_cross_entropy_backward`](super::softmax_cross_entropy_backward).
//!
//! The forward writes the mean loss to a caller-provided device scalar (no host synchronisation); read it
//! with [`download_loss`] when it is needed on the host.
//!
//! The logits and their gradient may be stored in half precision (`T`, under autocast): read exactly into
//! f32, the same arithmetic as for f32 logits, the gradient rounded once as it is stored. The backward takes
//! the f16 loss-scale state and multiplies the gradient by it before that rounding.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig};

use super::{CrossEntropyOptions, CUDA};
use crate::cuda::launch::{BLOCK, NULL};
use crate::cuda::{Gpu, GpuError, Store};

/// Grid-stride row kernels never need more blocks than this (the rows loop inside the kernel).
const MAX_ROW_BLOCKS: usize = 1 << 16;

/// The options as kernel arguments: (has_ignore, ignore, keep = 1 - eps, smooth = eps, spc = eps / V).
fn opts_args(opts: &CrossEntropyOptions, v: usize) -> (i32, i64, f32, f32, f32) {
    let eps = opts.label_smoothing;
    assert!(
        (0.0..=1.0).contains(&eps),
        "softmax_cross_entropy: label_smoothing must be in [0, 1], got {eps} (run.label_smoothing is validated at assembly)"
    );
    let spc = if v == 0 { 0.0 } else { (eps / v as f64) as f32 };
    (opts.ignore_index.is_some() as i32, opts.ignore_index.unwrap_or(0), (1.0 - eps) as f32, eps as f32, spc)
}

/// Softmax + cross-entropy forward on the GPU: writes the probabilities (every row) and the mean loss over
/// the rows that are not ignored into `loss[0]` (a device scalar: `loss` holds exactly one element).
///
/// logits (f32 or half), probs (f32): [B, V], targets: [B] (class ids). As on the CPU every row ignored gives a loss of 0. The
/// CPU's target check would need the targets on the host, so here a target outside `[0, V)` (and not the
/// ignore index) makes the loss NaN instead (assembly range-checks the labels first). The loss is summed
/// in f64 in one block in a fixed order: the same bits every run.
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy_forward<T: Store>(
    gpu: &Gpu,
    probs: &mut CudaViewMut<f32>,
    logits: &CudaView<T>,
    targets: &CudaView<i64>,
    b: usize,
    v: usize,
    opts: &CrossEntropyOptions,
    loss: &mut CudaViewMut<f32>,
) -> Result<(), GpuError> {
    assert_eq!(logits.len(), b * v, "softmax_cross_entropy_forward: logits must be [B, V]");
    assert_eq!(probs.len(), b * v, "softmax_cross_entropy_forward: probs must be [B, V]");
    assert_eq!(targets.len(), b, "softmax_cross_entropy_forward: targets must be [B]");
    assert_eq!(loss.len(), 1, "softmax_cross_entropy_forward: loss must be one device scalar");
    let (has_ignore, ignore, keep, smooth, _) = opts_args(opts, v);
    if b * v > 0 {
        let (warp, cfg) = crate::cuda::launch::row_launch(b, v);
        let names = if warp {
            ["sce_probs_warp_f32", "sce_probs_warp_f16", "sce_probs_warp_bf16"]
        } else {
            ["sce_probs_f32", "sce_probs_f16", "sce_probs_bf16"]
        };
        let f = gpu.function(&CUDA, T::pick(names))?;
        let mut l = gpu.launch_builder(&f);
        l.arg(&mut *probs).arg(logits).arg(&b).arg(&v);
        // SAFETY: (float*, const T*, size_t, size_t); probs and logits hold b*v elements.
        unsafe { l.launch(cfg) }?;
    }
    // One block of 1024 threads (32 warps, one row per warp at a time) for the deterministic reduction.
    let cfg = crate::cuda::launch::ONE_BLOCK;
    let f = gpu.function(&CUDA, T::pick(["sce_loss_f32", "sce_loss_f16", "sce_loss_bf16"]))?;
    let probs_ro = probs.slice(..);
    let mut l = gpu.launch_builder(&f);
    l.arg(loss)
        .arg(&probs_ro)
        .arg(logits)
        .arg(targets)
        .arg(&b)
        .arg(&v)
        .arg(&has_ignore)
        .arg(&ignore)
        .arg(&keep)
        .arg(&smooth);
    // SAFETY: (float*, const float*, const T*, const long long*, size_t, size_t, int, long long, float,
    // float) as declared; loss holds 1, probs / logits b*v and targets b elements. An empty batch writes 0.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Copies a device loss scalar to the host (synchronises the compute stream: call it when the value is
/// actually needed, e.g. for logging).
pub fn download_loss(gpu: &Gpu, loss: &CudaSlice<f32>) -> Result<f32, GpuError> {
    Ok(gpu.download(loss)?.first().copied().unwrap_or(0.0))
}

/// Softmax + cross-entropy backward on the GPU (overwrites `dlogits`):
/// `(p - (1 - eps) one_hot(t) - eps / V) * dloss / n_valid` for rows not ignored, 0 for ignored rows (and
/// everywhere when all are ignored), times `loss_scale[0]` when given (the f16 loss-scale state, read on the
/// device); the CPU's bits for the same probabilities, then `*= scale as f32` as the host scales them, then
/// rounded into `T`.
///
/// probs: [B, V] (from the forward), targets: [B], dlogits: [B, V], dloss: the upstream gradient. Where the
/// CPU panics on a target outside `[0, V)`, this writes a NaN row.
#[allow(clippy::too_many_arguments)]
pub fn softmax_cross_entropy_backward<T: Store>(
    gpu: &Gpu,
    dlogits: &mut CudaViewMut<T>,
    probs: &CudaView<f32>,
    targets: &CudaView<i64>,
    b: usize,
    v: usize,
    opts: &CrossEntropyOptions,
    dloss: f32,
    loss_scale: Option<&CudaView<f64>>,
) -> Result<(), GpuError> {
    assert_eq!(dlogits.len(), b * v, "softmax_cross_entropy_backward: dlogits must be [B, V]");
    assert_eq!(probs.len(), b * v, "softmax_cross_entropy_backward: probs must be [B, V]");
    assert_eq!(targets.len(), b, "softmax_cross_entropy_backward: targets must be [B]");
    if b * v == 0 {
        return Ok(());
    }
    let (has_ignore, ignore, keep, _, spc) = opts_args(opts, v);
    // With an ignore index every block recounts the valid rows, so keep the grid to what fills the device.
    let blocks = if has_ignore != 0 { b.min(gpu.info.multiprocessors * 8) } else { b.min(MAX_ROW_BLOCKS) };
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    let f = gpu.function(&CUDA, T::pick(["sce_backward_f32", "sce_backward_f16", "sce_backward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dlogits)
        .arg(probs)
        .arg(targets)
        .arg(&b)
        .arg(&v)
        .arg(&has_ignore)
        .arg(&ignore)
        .arg(&keep)
        .arg(&spc)
        .arg(&dloss);
    match loss_scale {
        Some(ls) => l.arg(ls),
        None => l.arg(&NULL),
    };
    // SAFETY: (T*, const float*, const long long*, size_t, size_t, int, long long, float, float, float,
    // const double*); dlogits / probs hold b*v and targets b elements, the loss scale (or null) one or more.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward (probabilities and loss) and backward against the CPU on fresh logits: plain, with an
    /// ignore index hitting some rows, with label smoothing, with every row ignored; batches of 1 and more;
    /// class counts below and above the block (and one with a very confident row, where -log p underflows
    /// and the loss kernel falls back to the logits).
    ///
    /// Tolerances: probabilities differ by the exp implementations (CPU polynomial <= 1.34 ulp, CUDA expf
    /// <= 2 ulp) and the order of the row sums: a few ulp, so atol 1e-6 + rtol 1e-5. The loss: each row's
    /// value has f32 error ~ 1e-7 * |lse| on either side, averaged in f64: rtol 1e-5 + atol 1e-5. The
    /// backward is fed the CPU's probabilities and must then be bitwise equal (same f32 operations), also
    /// with a loss scale applied after it.
    #[test]
    fn softmax_cross_entropy_matches_cpu() {
        let Some(gpu) = gpu_or_skip("softmax_cross_entropy_matches_cpu") else { return };
        let mut rng = seeded("softmax_cross_entropy_matches_cpu");
        // Rows of up to 1024 classes take a warp each, longer ones a block (1500).
        let cases: [(usize, usize, Option<i64>, f64); 7] = [
            (1, 10, None, 0.0),
            (3, 1500, None, 0.0),
            (37, 5, None, 0.0),
            (64, 1000, Some(-100), 0.0),
            (19, 301, None, 0.1),
            (8, 7, Some(3), 0.2),
            (4, 3, Some(1), 0.0),
        ];
        for (case, &(b, v, ignore, eps)) in cases.iter().enumerate() {
            let mut logits = rand_vec(&mut rng, b * v, -4.0, 4.0);
            if b > 1 {
                logits[v] = 120.0; // row 1: a near-one-hot row, its other probabilities underflow
            }
            let mut targets: Vec<i64> = (0..b).map(|_| rng.below(v as u64) as i64).collect();
            if let Some(ig) = ignore {
                for t in targets.iter_mut().step_by(3) {
                    *t = ig;
                }
                if case == 5 {
                    targets.fill(ig); // every row ignored
                }
            }
            let opts = CrossEntropyOptions { ignore_index: ignore, label_smoothing: eps };
            let mut want_p = vec![0.0f32; b * v];
            let want_loss =
                super::super::softmax_cross_entropy_forward(&mut want_p, &logits, &targets, b, v, &opts).unwrap();
            let (dl, dt) = (gpu.upload(&logits).unwrap(), gpu.upload(&targets).unwrap());
            let (mut dp, mut dloss) = (poisoned(gpu, b * v).unwrap(), poisoned(gpu, 1).unwrap());
            softmax_cross_entropy_forward(
                gpu,
                &mut dp.as_view_mut(),
                &dl.as_view(),
                &dt.as_view(),
                b,
                v,
                &opts,
                &mut dloss.as_view_mut(),
            )
            .unwrap();
            let what = format!("sce b{b} v{v} ignore {ignore:?} eps {eps}");
            assert_close(&format!("{what} probs"), &gpu.download(&dp).unwrap(), &want_p, 1e-6, 1e-5);
            assert_close(&format!("{what} loss"), &[download_loss(gpu, &dloss).unwrap()], &[want_loss], 1e-5, 1e-5);

            let mut want_d = vec![0.0f32; b * v];
            super::super::softmax_cross_entropy_backward(&mut want_d, &want_p, &targets, b, v, &opts, 0.7);
            let dprobs = gpu.upload(&want_p).unwrap();
            let scale = gpu.upload(&[16384.0f64, 0.0]).unwrap();
            for (ls, k) in [(None, 1.0f32), (Some(scale.as_view()), 16384.0)] {
                let mut dd = poisoned(gpu, b * v).unwrap();
                softmax_cross_entropy_backward(
                    gpu,
                    &mut dd.as_view_mut(),
                    &dprobs.as_view(),
                    &dt.as_view(),
                    b,
                    v,
                    &opts,
                    0.7,
                    ls.as_ref(),
                )
                .unwrap();
                let want: Vec<f32> = want_d.iter().map(|&g| g * k).collect();
                assert_bitwise(&format!("{what} dlogits (loss scale {k})"), &gpu.download(&dd).unwrap(), &want);
            }
        }
    }

    /// Logits (and their gradient) stored in f16 / bf16, as under autocast: the forward matches the CPU on
    /// the stored logits with the f32 tolerances of `softmax_cross_entropy_matches_cpu` (the arithmetic is
    /// f32); the backward, fed the CPU's probabilities with a loss scale of 2^10, is the CPU's gradient
    /// times the scale rounded once into the storage type, bit for bit.
    #[test]
    fn softmax_cross_entropy_of_half_logits_matches_the_rounded_reference() {
        let name = "softmax_cross_entropy_of_half_logits_matches_the_rounded_reference";
        let Some(gpu) = gpu_or_skip(name) else { return };
        let mut rng = seeded(name);
        fn case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng, b: usize, v: usize, eps: f64) {
            let (dl, logits) = upload_as::<T>(gpu, &rand_vec(rng, b * v, -4.0, 4.0));
            let targets: Vec<i64> = (0..b).map(|_| rng.below(v as u64) as i64).collect();
            let opts = CrossEntropyOptions { ignore_index: None, label_smoothing: eps };
            let mut want_p = vec![0.0f32; b * v];
            let want_loss =
                super::super::softmax_cross_entropy_forward(&mut want_p, &logits, &targets, b, v, &opts).unwrap();
            let dt = gpu.upload(&targets).unwrap();
            let (mut dp, mut dloss) = (poisoned(gpu, b * v).unwrap(), poisoned(gpu, 1).unwrap());
            let mut lv = dloss.as_view_mut();
            softmax_cross_entropy_forward(
                gpu,
                &mut dp.as_view_mut(),
                &dl.as_view(),
                &dt.as_view(),
                b,
                v,
                &opts,
                &mut lv,
            )
            .unwrap();
            let what = format!("sce {} b{b} v{v} eps {eps}", T::KIND.name());
            assert_close(&format!("{what} probs"), &gpu.download(&dp).unwrap(), &want_p, 1e-6, 1e-5);
            assert_close(&format!("{what} loss"), &[download_loss(gpu, &dloss).unwrap()], &[want_loss], 1e-5, 1e-5);
            let mut want_d = vec![0.0f32; b * v];
            super::super::softmax_cross_entropy_backward(&mut want_d, &want_p, &targets, b, v, &opts, 0.7);
            let want: Vec<f32> = want_d.iter().map(|&g| T::round(g * 1024.0)).collect();
            let (dprobs, scale) = (gpu.upload(&want_p).unwrap(), gpu.upload(&[1024.0f64, 0.0]).unwrap());
            let mut dd = poisoned_as::<T>(gpu, b * v);
            let mut dv = dd.as_view_mut();
            let sv = scale.as_view();
            softmax_cross_entropy_backward(gpu, &mut dv, &dprobs.as_view(), &dt.as_view(), b, v, &opts, 0.7, Some(&sv))
                .unwrap();
            assert_bitwise(&format!("{what} dlogits"), &download_f32(gpu, &dd), &want);
        }
        // Warp rows (10, 301 classes) and block rows (1500), with and without label smoothing (which recomputes
        // the row's log-sum-exp from the stored logits).
        for (b, v, eps) in [(37usize, 10usize, 0.0), (19, 301, 0.1), (3, 1500, 0.0)] {
            case::<half::f16>(gpu, &mut rng, b, v, eps);
            case::<half::bf16>(gpu, &mut rng, b, v, eps);
        }
    }

    /// A target outside [0, V) makes the device loss NaN (the CPU returns an error instead).
    #[test]
    fn bad_target_gives_nan_loss() {
        let Some(gpu) = gpu_or_skip("bad_target_gives_nan_loss") else { return };
        let (b, v) = (3usize, 4usize);
        let dl = gpu.upload(&vec![0.5f32; b * v]).unwrap();
        let dt = gpu.upload(&[0i64, 4, 1]).unwrap();
        let (mut dp, mut dloss) = (poisoned(gpu, b * v).unwrap(), poisoned(gpu, 1).unwrap());
        let opts = CrossEntropyOptions::default();
        softmax_cross_entropy_forward(
            gpu,
            &mut dp.as_view_mut(),
            &dl.as_view(),
            &dt.as_view(),
            b,
            v,
            &opts,
            &mut dloss.as_view_mut(),
        )
        .unwrap();
        assert!(download_loss(gpu, &dloss).unwrap().is_nan());
    }
}
