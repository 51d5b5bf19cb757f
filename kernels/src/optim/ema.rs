//! The moving-average update of model weights: `shadow = d * shadow + (1 - d) * value`.
//!
//! Written as Ultralytics' ModelEMA does it on f32 tensors (`v *= d; v += (1 - d) * model_v`): two
//! roundings of the products and one of the sum, in that order, so the averages follow PyTorch's bit for bit.

use rayon::prelude::*;

use super::{PAR_CHUNK, PAR_THRESHOLD};
use crate::Float;

/// One EMA update of `shadow` towards `value` with decay `d` (in `[0, 1)`).
///
/// shadow, value: [N].
pub fn ema_update<T: Float>(shadow: &mut [T], value: &[T], d: f64) {
    assert_eq!(shadow.len(), value.len(), "ema_update: shadow and value lengths differ");
    let (d, one_minus_d) = (T::from_f64(d), T::from_f64(1.0 - d));
    let body = |s: &mut [T], v: &[T]| {
        for (s, &v) in s.iter_mut().zip(v) {
            *s = *s * d + one_minus_d * v;
        }
    };
    if shadow.len() >= PAR_THRESHOLD {
        shadow.par_chunks_mut(PAR_CHUNK).zip(value.par_chunks(PAR_CHUNK)).for_each(|(s, v)| body(s, v));
    } else {
        body(shadow, value);
    }
}

/// The CUDA kernels of the EMA update (`ema.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "ema",
    code: include_str!("ema.cu"),
    kernels: &["ema_update_f32", "ema_update_segments_f32"],
};

/// Host side of `ema.cu`.
pub mod cuda {
    use cudarc::driver::{CudaView, CudaViewMut};

    use super::CUDA;
    use crate::cuda::{Gpu, GpuError, SegmentTable};

    /// One EMA update of `shadow` towards `value` with decay `d`, bitwise [`ema_update`](super::ema_update).
    /// shadow, value: [N].
    pub fn ema_update(gpu: &Gpu, shadow: &mut CudaViewMut<f32>, value: &CudaView<f32>, d: f64) -> Result<(), GpuError> {
        let n = shadow.len();
        assert_eq!(value.len(), n, "ema_update: shadow and value lengths differ");
        let (d32, omd) = (d as f32, (1.0 - d) as f32);
        let f = gpu.function(&CUDA, "ema_update_f32")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(shadow).arg(value).arg(&d32).arg(&omd).arg(&n);
        // SAFETY: (float*, const float*, float, float, size_t); both buffers hold n elements.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// The EMA system's update of a whole arena in one launch: elements inside the segments of `table`
    /// (the tracked parameters, already uploaded; coefficients unused) are averaged as [`ema_update`],
    /// every other element of `shadow` is overwritten with `value` (untracked parameters, integer buffers).
    pub fn ema_update_tracked(
        gpu: &Gpu,
        shadow: &mut CudaViewMut<f32>,
        value: &CudaView<f32>,
        d: f64,
        table: &SegmentTable,
    ) -> Result<(), GpuError> {
        let n = shadow.len();
        assert_eq!(value.len(), n, "ema_update_tracked: shadow and value lengths differ");
        assert!(table.host.iter().all(|s| s.end as usize <= n), "ema_update_tracked: a segment lies outside");
        let (d32, omd) = (d as f32, (1.0 - d) as f32);
        let nsegs = table.host.len() as i32;
        let f = gpu.function(&CUDA, "ema_update_segments_f32")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(shadow).arg(value).arg(&d32).arg(&omd).arg(&table.device).arg(&nsegs).arg(&n);
        // SAFETY: (float*, const float*, float, float, const Segment*, int, size_t); both buffers hold n
        // elements and the table nsegs sorted segments inside [0, n).
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cuda::testing::*;
        use crate::cuda::Segment;
        use crate::rng::Rng;

        /// Several updates with changing decays, bitwise the CPU's, for an odd length and a length of 1.
        #[test]
        fn ema_matches_cpu_bitwise() {
            let Some(gpu) = gpu_or_skip("ema_matches_cpu_bitwise") else { return };
            let mut rng = Rng::new(test_seed("ema_matches_cpu_bitwise"));
            for n in [1usize, 100_003] {
                let mut want: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                let mut shadow = gpu.upload(&want).unwrap();
                for d in [0.0, 0.5, 0.9999, 0.123456789] {
                    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                    super::super::ema_update(&mut want, &v, d);
                    let dv = gpu.upload(&v).unwrap();
                    ema_update(gpu, &mut shadow.as_view_mut(), &dv.as_view(), d).unwrap();
                }
                let got = gpu.download(&shadow).unwrap();
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "n {n}: EMA differs");
            }
        }

        /// Tracked segments averaged, the rest copied, as the EMA system does per parameter: bitwise; the
        /// shadow starts poisoned with NaN so an element that is neither averaged nor copied shows up.
        #[test]
        fn tracked_ema_matches_the_system() {
            let Some(gpu) = gpu_or_skip("tracked_ema_matches_the_system") else { return };
            let mut rng = Rng::new(test_seed("tracked_ema_matches_the_system"));
            let n = 50_001;
            let ranges = [(0usize, 20_001usize), (30_000, 30_001), (40_000, n)];
            let mut table = SegmentTable::new(gpu, ranges.len()).unwrap();
            for (k, &(a, b)) in ranges.iter().enumerate() {
                table.host[k] = Segment { start: a as u64, end: b as u64, ..Segment::default() };
            }
            table.upload(gpu).unwrap();
            let init: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let tracked = |i: usize| ranges.iter().any(|&(a, b)| (a..b).contains(&i));
            let mut want: Vec<f32> = (0..n).map(|i| if tracked(i) { init[i] } else { f32::NAN }).collect();
            let mut shadow = gpu.upload(&want).unwrap();
            for d in [0.9, 0.99] {
                let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                let mut next = v.clone();
                for &(a, b) in &ranges {
                    next[a..b].copy_from_slice(&want[a..b]);
                    super::super::ema_update(&mut next[a..b], &v[a..b], d);
                }
                want = next;
                let dv = gpu.upload(&v).unwrap();
                ema_update_tracked(gpu, &mut shadow.as_view_mut(), &dv.as_view(), d, &table).unwrap();
            }
            let got = gpu.download(&shadow).unwrap();
            let bad = (0..n).filter(|&i| got[i].to_bits() != want[i].to_bits()).count();
            assert_eq!(bad, 0, "{bad} elements differ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_in_f64_and_torch_in_f32() {
        let mut s = [1.0f64, -2.0, 0.5];
        ema_update(&mut s, &[3.0, 2.0, 0.5], 0.75);
        assert_eq!(s, [1.5, -1.0, 0.5]);
        // torch 2.15 prints [0.2997002899646759, 0.24857622385025024] for v = torch.tensor([0.1, -0.7], dtype=float32); v *= d; v += (1-d)*m
        // with d = 0.9999 * (1 - exp(-3 / 2000)), m = [0.3, 0.25].
        let d = 0.9999 * (1.0 - (-3.0f64 / 2000.0).exp());
        let mut s = [0.1f32, -0.7];
        ema_update(&mut s, &[0.3, 0.25], d);
        // (the f64 repr of the f32 results; compared after rounding to f32, which is exact).
        assert_eq!(s, [0.2997002899646759f64 as f32, 0.24857622385025024f64 as f32]);
    }

    #[test]
    fn parallel_path_is_bit_identical() {
        let n = 2 * PAR_THRESHOLD + 5;
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).cos()).collect();
        let mut a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.02).sin()).collect();
        let mut b = a.clone();
        ema_update(&mut a, &v, 0.9);
        for (s, x) in b.chunks_mut(1000).zip(v.chunks(1000)) {
            ema_update(s, x, 0.9);
        }
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
