//! Dynamic loss scaling for f16 mixed precision (torch's `GradScaler`): the loss gradient is multiplied by
//! a scale before the backward, so small gradients survive f16; the parameter gradients are checked for
//! inf / NaN and divided by the scale before clipping and the optimizer; a window with a non-finite gradient
//! drops its gradients, skips its optimizer step and backs the scale off, and `interval` finite windows in a
//! row grow it.
//!
//! The state is two f64s, `[scale, growth tracker]` ([`ScaleState`]), updated by [`update_scale`] exactly
//! as the host's `LossScaler` is. On the GPU the same state lives in device memory and every decision is
//! taken there (as torch's fused optimizers take `found_inf` and `grad_scale` tensors): the seed multiply
//! reads the scale, the unscale sets a device flag, the update kernel applies the state machine, and a
//! skipped step empties the optimizer's segment table before its launch. So a training step never waits for
//! the device to learn whether it overflowed; the host reads the flag a step later.
//!
//! The arithmetic is the CPU's: the scale is rounded to f32 once for the multiply (`g *= scale as f32`), the
//! unscale multiplies by `(1 / scale) as f32` and checks each value before its multiply, and a factor of
//! exactly 1 leaves the gradients untouched.

use rayon::prelude::*;

use crate::ops::par::{PAR_CHUNK, PAR_MIN_ELEMS};

/// `[scale, growth tracker]`: the current scale and the finite windows since it last changed (torch's
/// `_scale` and `_growth_tracker`), both f64 (counts are exact far beyond any run's length).
pub type ScaleState = [f64; 2];

/// How the scale moves (torch's `growth_factor`, `backoff_factor`, `growth_interval`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleUpdate {
    /// Factor after `interval` finite windows in a row (2).
    pub growth: f64,
    /// Factor after a window with a non-finite gradient (0.5).
    pub backoff: f64,
    /// Finite windows between two growths (2000).
    pub interval: u64,
}

/// torch's `_amp_update_scale_` after one window whose unscaled gradients were all finite (`found_inf`
/// false) or not.
pub fn update_scale(state: &mut ScaleState, found_inf: bool, cfg: &ScaleUpdate) {
    if found_inf {
        state[0] *= cfg.backoff;
        state[1] = 0.0;
    } else {
        let tracker = state[1] + 1.0;
        if tracker == cfg.interval as f64 {
            state[0] *= cfg.growth;
            state[1] = 0.0;
        } else {
            state[1] = tracker;
        }
    }
}

/// The loss gradient times the scale: `g *= scale as f32`. g: [N].
pub fn scale_gradient(g: &mut [f32], scale: f64) {
    let s = scale as f32;
    g.iter_mut().for_each(|v| *v *= s);
}

/// Multiplies every gradient by `(1 / scale) as f32` (unless that is exactly 1) and returns whether any
/// gradient was inf or NaN before the multiplication. grads: [N].
pub fn unscale_and_check(grads: &mut [f32], scale: f64) -> bool {
    let inv = (1.0 / scale) as f32;
    let body = |c: &mut [f32]| {
        let mut found = false;
        for v in c.iter_mut() {
            found |= !v.is_finite();
            if inv != 1.0 {
                *v *= inv;
            }
        }
        found
    };
    if grads.len() < PAR_MIN_ELEMS {
        body(grads)
    } else {
        // Every chunk is scanned (no early exit): all gradients must be unscaled either way.
        grads.par_chunks_mut(PAR_CHUNK).map(body).reduce(|| false, |a, b| a || b)
    }
}

/// The CUDA kernels of dynamic loss scaling (`loss_scale.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "loss_scale",
    code: include_str!("loss_scale.cu"),
    kernels: &["loss_scale_mul_f32", "loss_scale_unscale_check_f32", "loss_scale_update", "loss_scale_skip_segments"],
};

/// Host side of `loss_scale.cu`. `state` is a device [`ScaleState`]; `found_inf` a one-element device flag
/// the caller zeroes at the start of each accumulation window.
pub mod cuda {
    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

    use super::{ScaleUpdate, CUDA};
    use crate::cuda::{Gpu, GpuError, SegmentTable};

    /// [`scale_gradient`](super::scale_gradient) with the scale read from the device state. g: [N].
    pub fn scale_gradient(gpu: &Gpu, g: &mut CudaViewMut<f32>, state: &CudaSlice<f64>) -> Result<(), GpuError> {
        assert!(state.len() >= 2, "scale_gradient: state must be [scale, tracker]");
        let n = g.len();
        if n == 0 {
            return Ok(());
        }
        let f = gpu.function(&CUDA, "loss_scale_mul_f32")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(g).arg(state).arg(&n);
        // SAFETY: (float*, const double*, size_t); g holds n elements, state two.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// [`unscale_and_check`](super::unscale_and_check) with the scale read from the device state: the
    /// gradients are unscaled bitwise as on the CPU, and `found_inf[0]` is set to 1.0 when one was inf or NaN
    /// (never cleared: several arenas may share the flag). grads: [N]; found_inf: [1].
    pub fn unscale_and_check(
        gpu: &Gpu,
        grads: &mut CudaViewMut<f32>,
        state: &CudaSlice<f64>,
        found_inf: &mut CudaViewMut<f32>,
    ) -> Result<(), GpuError> {
        assert!(!found_inf.is_empty(), "unscale_and_check: found_inf needs one element");
        assert!(state.len() >= 2, "unscale_and_check: state must be [scale, tracker]");
        let n = grads.len();
        let f = gpu.function(&CUDA, "loss_scale_unscale_check_f32")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(grads).arg(state).arg(found_inf).arg(&n);
        // SAFETY: (float*, const double*, float*, size_t); grads holds n elements, state two, found_inf one.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// After [`unscale_and_check`]: zeroes `grads` when the flag is set, and applies
    /// [`update_scale`](super::update_scale) to the device state. grads: [N]; found_inf: [1].
    pub fn update_scale(
        gpu: &Gpu,
        grads: &mut CudaViewMut<f32>,
        found_inf: &CudaView<f32>,
        state: &mut CudaSlice<f64>,
        cfg: &ScaleUpdate,
    ) -> Result<(), GpuError> {
        assert!(!found_inf.is_empty(), "update_scale: found_inf needs one element");
        assert!(state.len() >= 2, "update_scale: state must be [scale, tracker]");
        let n = grads.len();
        let f = gpu.function(&CUDA, "loss_scale_update")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(grads).arg(&n).arg(found_inf).arg(state).arg(&cfg.growth).arg(&cfg.backoff).arg(&cfg.interval);
        // SAFETY: (float*, size_t, const float*, double*, double, double, unsigned long long); grads holds n
        // elements, found_inf one, state two.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// Between the table's upload and the optimizer's launch: when the flag is set, every segment of
    /// `table` on the device becomes empty, so the fused update changes nothing (the skipped step). The
    /// host copy is untouched; the next upload restores the table.
    pub fn skip_segments_if_found(
        gpu: &Gpu,
        table: &mut SegmentTable,
        found_inf: &CudaView<f32>,
    ) -> Result<(), GpuError> {
        assert!(!found_inf.is_empty(), "skip_segments_if_found: found_inf needs one element");
        let nsegs = table.host.len() as i32;
        if nsegs == 0 {
            return Ok(());
        }
        let f = gpu.function(&CUDA, "loss_scale_skip_segments")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(&mut table.device).arg(&nsegs).arg(found_inf);
        // SAFETY: (Segment*, int, const float*); the table holds nsegs segments, found_inf one element.
        unsafe { b.launch(gpu.elementwise(nsegs as usize)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cuda::testing::*;
        use crate::cuda::Segment;
        use crate::optim::adam::cuda as adam;
        use crate::optim::AdamConfig;
        use crate::rng::Rng;

        fn same_bits(what: &str, got: &[f32], want: &[f32]) {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{what}: element {i}: got {a}, want {b}");
            }
        }

        /// The seed multiply equals the CPU's bitwise for powers of two and for scales whose f32 rounding
        /// matters, on lengths 1 and odd.
        #[test]
        fn scale_gradient_matches_cpu() {
            let Some(gpu) = gpu_or_skip("scale_gradient_matches_cpu") else { return };
            let mut rng = Rng::new(test_seed("scale_gradient_matches_cpu"));
            for (n, scale) in [(1usize, 65536.0f64), (10_007, 1000.1), (5, 1.0 / 3.0), (4099, 2f64.powi(40))] {
                let g: Vec<f32> = (0..n).map(|_| (rng.normal() * 1e-3) as f32).collect();
                let mut dg = gpu.upload(&g).unwrap();
                let state = gpu.upload(&[scale, 7.0]).unwrap();
                scale_gradient(gpu, &mut dg.as_view_mut(), &state).unwrap();
                let mut want = g.clone();
                super::super::scale_gradient(&mut want, scale);
                same_bits(&format!("n {n} scale {scale}"), &gpu.download(&dg).unwrap(), &want);
            }
        }

        /// Unscaling is bitwise the CPU's; the flag is set by an inf or a NaN anywhere (first, last, middle
        /// element, or in many threads of many blocks at once), stays clear for finite gradients, is not
        /// cleared by a later clean call, and a scale of 1 leaves the gradients alone.
        #[test]
        fn unscale_matches_cpu() {
            let Some(gpu) = gpu_or_skip("unscale_matches_cpu") else { return };
            let mut rng = Rng::new(test_seed("unscale_matches_cpu"));
            let n = 100_003;
            // Every 997th gradient: many threads of many blocks set the flag in one launch.
            let scattered: Vec<(usize, f32)> = (0..n).step_by(997).map(|i| (i, f32::NAN)).collect();
            let cases: [(&[(usize, f32)], f64); 6] = [
                (&[], 65536.0),
                (&[(0, f32::INFINITY)], 2.0),
                (&[(n - 1, f32::NAN)], 3.0),
                (&[(n / 2, f32::NEG_INFINITY)], 1.0),
                (&scattered, 4.0),
                (&[], 1.0),
            ];
            for (bad, scale) in cases {
                let mut g: Vec<f32> = (0..n).map(|_| (rng.normal() * 1e4) as f32).collect();
                for &(i, v) in bad {
                    g[i] = v;
                }
                let bad = &bad[..bad.len().min(2)]; // what a failure message names
                let mut dg = gpu.upload(&g).unwrap();
                let mut flag = gpu.upload(&[0.0f32]).unwrap();
                let state = gpu.upload(&[scale, 0.0]).unwrap();
                unscale_and_check(gpu, &mut dg.as_view_mut(), &state, &mut flag.as_view_mut()).unwrap();
                let found_want = super::super::unscale_and_check(&mut g, scale);
                assert_eq!(gpu.download(&flag).unwrap()[0] != 0.0, found_want, "{bad:?}: found_inf");
                assert_eq!(found_want, !bad.is_empty());
                same_bits(&format!("{bad:?}: unscaled gradients"), &gpu.download(&dg).unwrap(), &g);
                // A later call over finite gradients leaves a set flag set.
                let mut clean = gpu.upload(&[1.0f32; 5]).unwrap();
                unscale_and_check(gpu, &mut clean.as_view_mut(), &state, &mut flag.as_view_mut()).unwrap();
                assert_eq!(gpu.download(&flag).unwrap()[0] != 0.0, found_want, "the flag is sticky");
            }
        }

        /// A random run of finite and overflowing windows: after each, the device state equals the CPU
        /// state machine's bitwise (growth after exactly `interval` finite windows, backoff and reset on an
        /// overflow, factors that round in f64), and the gradients are zeroed exactly in the windows that
        /// overflowed.
        #[test]
        fn update_follows_the_cpu_state_machine() {
            let Some(gpu) = gpu_or_skip("update_follows_the_cpu_state_machine") else { return };
            let mut rng = Rng::new(test_seed("update_follows_the_cpu_state_machine"));
            let n = 5003;
            for cfg in [
                ScaleUpdate { growth: 2.0, backoff: 0.5, interval: 3 },
                ScaleUpdate { growth: 1.7, backoff: 0.3, interval: 1 },
            ] {
                let mut want: super::super::ScaleState = [1000.1, 0.0];
                let mut state = gpu.upload(&want).unwrap();
                let mut flag = gpu.upload(&[0.0f32]).unwrap();
                let (mut grew, mut backed) = (0, 0);
                for window in 0..40 {
                    let found = rng.next_u64().is_multiple_of(4);
                    let mut g: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                    if found {
                        g[(rng.next_u64() % n as u64) as usize] = f32::INFINITY;
                    }
                    let mut dg = gpu.upload(&g).unwrap();
                    gpu.stream().memset_zeros(&mut flag).unwrap();
                    unscale_and_check(gpu, &mut dg.as_view_mut(), &state, &mut flag.as_view_mut()).unwrap();
                    update_scale(gpu, &mut dg.as_view_mut(), &flag.as_view(), &mut state, &cfg).unwrap();
                    let before = want[0];
                    let found_cpu = super::super::unscale_and_check(&mut g, want[0]);
                    assert_eq!(found_cpu, found);
                    super::super::update_scale(&mut want, found_cpu, &cfg);
                    if found_cpu {
                        g.fill(0.0);
                        backed += 1;
                    } else if want[0] != before {
                        grew += 1;
                    }
                    let got = gpu.download(&state).unwrap();
                    assert_eq!(
                        [got[0].to_bits(), got[1].to_bits()],
                        [want[0].to_bits(), want[1].to_bits()],
                        "{cfg:?} window {window}: device state {got:?}, CPU {want:?}"
                    );
                    same_bits(&format!("{cfg:?} window {window} gradients"), &gpu.download(&dg).unwrap(), &g);
                }
                assert!(grew > 0 && backed > 0, "{cfg:?}: the run must both grow ({grew}) and back off ({backed})");
            }
        }

        /// With the flag set, the emptied table makes the fused Adam update change nothing (parameters and
        /// both moments keep their bits); with it clear, the table is untouched and the update equals one
        /// over the original table.
        #[test]
        fn an_overflowed_window_skips_the_fused_update() {
            let Some(gpu) = gpu_or_skip("an_overflowed_window_skips_the_fused_update") else { return };
            let mut rng = Rng::new(test_seed("an_overflowed_window_skips_the_fused_update"));
            let n = 3001;
            let ranges = [(0usize, 1000usize), (1000, 1001), (1500, n)];
            let cfg = AdamConfig {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                decoupled_weight_decay: true,
                amsgrad: false,
            };
            let p: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let g: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let m: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.1) as f32).collect();
            let v: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.1).abs() as f32).collect();
            let run = |found: f32| {
                let mut table = SegmentTable::new(gpu, ranges.len()).unwrap();
                for (slot, &(a, b)) in table.host.iter_mut().zip(&ranges) {
                    *slot = adam::segment(&cfg, 3, a, b);
                }
                table.upload(gpu).unwrap();
                let flag = gpu.upload(&[found]).unwrap();
                skip_segments_if_found(gpu, &mut table, &flag.as_view()).unwrap();
                let segs: Vec<Segment> = gpu.download(&table.device).unwrap();
                let (mut dp, dg, mut dm, mut dv) = (
                    gpu.upload(&p).unwrap(),
                    gpu.upload(&g).unwrap(),
                    gpu.upload(&m).unwrap(),
                    gpu.upload(&v).unwrap(),
                );
                let mut vmax = gpu.upload(&v).unwrap();
                adam::step(
                    gpu,
                    &mut dp.as_view_mut(),
                    &dg.as_view(),
                    &mut dm.as_view_mut(),
                    &mut dv.as_view_mut(),
                    &mut vmax.as_view_mut(),
                    &table,
                )
                .unwrap();
                let out = [gpu.download(&dp).unwrap(), gpu.download(&dm).unwrap(), gpu.download(&dv).unwrap()];
                (segs, table.host.clone(), out)
            };
            let (segs, host, [sp, sm, sv]) = run(1.0);
            assert!(segs.iter().all(|s| s.end == s.start), "the device table was not emptied: {segs:?}");
            assert_eq!(host.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>().len(), 3, "host copy kept");
            same_bits("skipped: params", &sp, &p);
            same_bits("skipped: exp_avg", &sm, &m);
            same_bits("skipped: exp_avg_sq", &sv, &v);
            let (segs, host, [tp, tm, _]) = run(0.0);
            assert_eq!(segs, host, "a finite window must leave the device table alone");
            let mut cp = p.clone();
            let (mut cm, mut cv) = (m.clone(), v.clone());
            let mut unused = vec![0.0f32; n];
            for &(a, b) in &ranges {
                let (p, m, v, vm) = (&mut cp[a..b], &mut cm[a..b], &mut cv[a..b], &mut unused[a..b]);
                crate::optim::adam_step(p, &g[a..b], m, v, vm, &cfg, 3);
            }
            same_bits("taken: params", &tp, &cp);
            same_bits("taken: exp_avg", &tm, &cm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch's GradScaler semantics: non-finite values are detected before unscaling, a factor of 1 does
    /// not touch the gradients, and the parallel path finds an inf in its last chunk.
    #[test]
    fn unscale_checks_then_multiplies() {
        let mut g = vec![2.0f32, -4.0, 8.0];
        assert!(!unscale_and_check(&mut g, 4.0));
        assert_eq!(g, [0.5, -1.0, 2.0]);
        let mut g = vec![1.0f32, f32::NAN];
        assert!(unscale_and_check(&mut g, 1.0));
        assert_eq!(g[0], 1.0);
        let mut g = vec![1.0f32; PAR_MIN_ELEMS * 3 + 5];
        *g.last_mut().unwrap() = f32::INFINITY;
        assert!(unscale_and_check(&mut g, 2.0));
        assert_eq!(g[0], 0.5);
    }

    /// The state machine of `torch.cuda.amp.GradScaler.update` with interval 2: two finite windows grow the
    /// scale and reset the tracker, an overflow backs it off and resets the tracker mid-count.
    #[test]
    fn update_grows_after_interval_and_backs_off_on_overflow() {
        let cfg = ScaleUpdate { growth: 2.0, backoff: 0.5, interval: 2 };
        let mut s: ScaleState = [8.0, 0.0];
        update_scale(&mut s, false, &cfg);
        assert_eq!(s, [8.0, 1.0]);
        update_scale(&mut s, false, &cfg);
        assert_eq!(s, [16.0, 0.0]);
        update_scale(&mut s, false, &cfg);
        update_scale(&mut s, true, &cfg);
        assert_eq!(s, [8.0, 0.0]);
        update_scale(&mut s, false, &cfg);
        assert_eq!(s, [8.0, 1.0]);
    }
}
