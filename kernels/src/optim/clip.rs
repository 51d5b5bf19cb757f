//! Gradient clipping over flat gradient slices, as `torch.nn.utils.clip_grad_norm_` and `clip_grad_value_`.
//!
//! Clipping by norm needs the L2 norm over *all* trainable gradients before any is scaled, so it is two
//! steps: [`sum_of_squares`] per slice (added up by the caller), then [`scale`] of every slice by
//! [`clip_coefficient`]. The sums run in f64 over fixed blocks, so the norm does not depend on the thread
//! count (torch sums in the gradient's precision; the difference is far below f32 resolution of the result).

use rayon::prelude::*;

use crate::ops::par::{blocked_sum, PAR_CHUNK, PAR_MIN_ELEMS};
use crate::Float;

/// `sum(x^2)` in f64, deterministic (fixed blocks added in order).
pub fn sum_of_squares<T: Float>(x: &[T]) -> f64 {
    blocked_sum(x.len(), x.len() >= PAR_MIN_ELEMS, |lo, hi| {
        x[lo..hi]
            .iter()
            .map(|v| {
                let v = v.to_f64();
                v * v
            })
            .sum()
    })
}

/// torch's factor for a gradient of total L2 norm `total_norm`: `min(max_norm / (total_norm + 1e-6), 1)`.
/// torch multiplies by it even when it is 1, which changes nothing.
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// `x *= coef` in place.
pub fn scale<T: Float>(x: &mut [T], coef: f64) {
    let c = T::from_f64(coef);
    in_place(x, |v| v * c);
}

/// Clamps every element to `[-max_value, max_value]` in place (NaN stays NaN, as `torch.clamp`).
pub fn clamp<T: Float>(x: &mut [T], max_value: f64) {
    let (lo, hi) = (T::from_f64(-max_value), T::from_f64(max_value));
    in_place(x, |v| {
        if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }
    });
}

/// `x[i] = f(x[i])`, in parallel chunks for long slices (elements are independent: same bits either way).
fn in_place<T: Float>(x: &mut [T], f: impl Fn(T) -> T + Sync) {
    if x.len() < PAR_MIN_ELEMS {
        x.iter_mut().for_each(|v| *v = f(*v));
    } else {
        x.par_chunks_mut(PAR_CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
    }
}

/// The CUDA kernels of gradient clipping (`clip.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "clip",
    code: include_str!("clip.cu"),
    kernels: &[
        "sumsq_partials_f32",
        "sumsq_partials_segments_f32",
        "sum_partials_f64",
        "clip_coef_f64",
        "scale_f32",
        "scale_segments_f32",
        "clamp_f32",
        "clamp_segments_f32",
    ],
};

/// Host side of `clip.cu`: the CPU functions on device buffers, and [`clip_gradients`](cuda::clip_gradients),
/// the whole Reduce-stage clipping of the gradient arena in five launches and no host synchronisation.
pub mod cuda {
    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig};

    use super::CUDA;
    use crate::cuda::launch::BLOCK;
    use crate::cuda::{Gpu, GpuError, Segment, SegmentTable};

    /// Blocks of the first reduction stage: fixed, not sized to the device, so the summation order (and so
    /// the rounded norm) is the same on every GPU.
    pub const REDUCE_BLOCKS: usize = 1024;

    /// Device buffers of [`clip_gradients`], allocated once: the stage-1 partial sums, the norm and the
    /// coefficient.
    pub struct ClipWorkspace {
        /// [`REDUCE_BLOCKS`] partial sums of squares.
        pub partials: CudaSlice<f64>,
        /// The joint L2 norm of the trainable gradients at the last call, before scaling (one f64).
        pub norm: CudaSlice<f64>,
        /// The clip coefficient of the last call with `max_norm > 0` (one f32).
        pub coef: CudaSlice<f32>,
    }

    impl ClipWorkspace {
        /// Zeroed buffers on `gpu`.
        pub fn new(gpu: &Gpu) -> Result<ClipWorkspace, GpuError> {
            let s = gpu.stream();
            Ok(ClipWorkspace {
                partials: s.alloc_zeros(REDUCE_BLOCKS)?,
                norm: s.alloc_zeros(1)?,
                coef: s.alloc_zeros(1)?,
            })
        }

        /// The norm of the last [`clip_gradients`] (waits for the compute stream: call it when the value is
        /// logged, not every step).
        pub fn download_norm(&self, gpu: &Gpu) -> Result<f64, GpuError> {
            let mut norm = [0.0f64];
            gpu.stream().memcpy_dtoh(&self.norm, &mut norm[..])?;
            gpu.synchronize()?;
            Ok(norm[0])
        }
    }

    /// A trainable parameter's range `start..end` of the gradient arena (the coefficients are unused).
    pub fn segment(start: usize, end: usize) -> Segment {
        Segment { start: start as u64, end: end as u64, ..Segment::default() }
    }

    /// The fixed reduction grid.
    fn reduce_grid() -> LaunchConfig {
        LaunchConfig { grid_dim: (REDUCE_BLOCKS as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// One block for the second stage and the scalar kernels.
    fn one_block() -> LaunchConfig {
        LaunchConfig { grid_dim: (1, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// Stage 2: `out[0]` = the sum of `partials` (its square root with `take_sqrt`).
    fn finish(
        gpu: &Gpu,
        partials: &CudaView<f64>,
        out: &mut CudaViewMut<f64>,
        take_sqrt: bool,
    ) -> Result<(), GpuError> {
        assert!(!out.is_empty(), "sum of squares: the output needs one element");
        let f = gpu.function(&CUDA, "sum_partials_f64")?;
        let (nparts, sqrt) = (REDUCE_BLOCKS as i32, i32::from(take_sqrt));
        let mut b = gpu.launch_builder(&f);
        b.arg(partials).arg(&nparts).arg(out).arg(&sqrt);
        // SAFETY: (const double*, int, double*, int); partials holds REDUCE_BLOCKS values, out one.
        unsafe { b.launch(one_block()) }?;
        Ok(())
    }

    /// `out[0] = sum(x^2)` in f64, as [`sum_of_squares`](super::sum_of_squares) (the same value up to the
    /// order of f64 additions, and the same bits on every run); `partials` is scratch of at least
    /// [`REDUCE_BLOCKS`] elements. Written to the device, no synchronisation.
    pub fn sum_of_squares(
        gpu: &Gpu,
        x: &CudaView<f32>,
        out: &mut CudaViewMut<f64>,
        partials: &mut CudaViewMut<f64>,
    ) -> Result<(), GpuError> {
        assert!(partials.len() >= REDUCE_BLOCKS, "sum of squares: partials needs {REDUCE_BLOCKS} elements");
        let n = x.len();
        let f = gpu.function(&CUDA, "sumsq_partials_f32")?;
        {
            let mut b = gpu.launch_builder(&f);
            b.arg(x).arg(&n).arg(&mut *partials);
            // SAFETY: (const float*, size_t, double*); x holds n elements, partials one per block.
            unsafe { b.launch(reduce_grid()) }?;
        }
        finish(gpu, &partials.as_view(), out, false)
    }

    /// `coef[0] = min(max_norm / (total_norm[0] + 1e-6), 1)`, as [`clip_coefficient`](super::clip_coefficient)
    /// computes it (f64), rounded to f32 as [`scale`](super::scale) rounds it. On the device.
    pub fn clip_coefficient(
        gpu: &Gpu,
        total_norm: &CudaView<f64>,
        max_norm: f64,
        coef: &mut CudaViewMut<f32>,
    ) -> Result<(), GpuError> {
        assert!(!total_norm.is_empty() && !coef.is_empty(), "clip coefficient: scalars need one element");
        let f = gpu.function(&CUDA, "clip_coef_f64")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(total_norm).arg(&max_norm).arg(coef);
        // SAFETY: (const double*, double, float*); both buffers hold at least one element.
        unsafe { b.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }) }?;
        Ok(())
    }

    /// `x *= coef[0]` in place, with the coefficient read on the device (see [`clip_coefficient`]).
    pub fn scale(gpu: &Gpu, x: &mut CudaViewMut<f32>, coef: &CudaView<f32>) -> Result<(), GpuError> {
        assert!(!coef.is_empty(), "scale: the coefficient needs one element");
        let n = x.len();
        let f = gpu.function(&CUDA, "scale_f32")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(x).arg(coef).arg(&n);
        // SAFETY: (float*, const float*, size_t); x holds n elements, coef one.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// Clamps every element to `[-max_value, max_value]` in place (NaN stays NaN), as
    /// [`clamp`](super::clamp).
    pub fn clamp(gpu: &Gpu, x: &mut CudaViewMut<f32>, max_value: f64) -> Result<(), GpuError> {
        let n = x.len();
        let (lo, hi) = ((-max_value) as f32, max_value as f32);
        let f = gpu.function(&CUDA, "clamp_f32")?;
        let mut b = gpu.launch_builder(&f);
        b.arg(x).arg(&lo).arg(&hi).arg(&n);
        // SAFETY: (float*, float, float, size_t); x holds n elements.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        Ok(())
    }

    /// The clipping of the engine's Reduce stage over the gradient arena: clamps the trainable elements (the
    /// segments of `table`, already uploaded) to `[-max_value, max_value]` when `max_value > 0`, writes
    /// their joint L2 norm to `ws.norm` (always: it is logged), and when `max_norm > 0` scales them by the
    /// clip coefficient computed on the device (`ws.coef`). Frozen elements are neither counted nor changed.
    pub fn clip_gradients(
        gpu: &Gpu,
        grads: &mut CudaViewMut<f32>,
        table: &SegmentTable,
        max_value: f64,
        max_norm: f64,
        ws: &mut ClipWorkspace,
    ) -> Result<(), GpuError> {
        let n = grads.len();
        assert!(table.host.iter().all(|s| s.end as usize <= n), "clip: a segment lies outside the arena");
        let nsegs = table.host.len() as i32;
        let _s = gpu.stream();
        if max_value > 0.0 {
            let (lo, hi) = ((-max_value) as f32, max_value as f32);
            let f = gpu.function(&CUDA, "clamp_segments_f32")?;
            let mut b = gpu.launch_builder(&f);
            b.arg(&mut *grads).arg(&lo).arg(&hi).arg(&table.device).arg(&nsegs).arg(&n);
            // SAFETY: (float*, float, float, const Segment*, int, size_t); grads holds n elements, the table
            // nsegs sorted segments inside [0, n).
            unsafe { b.launch(gpu.elementwise(n)) }?;
        }
        {
            let f = gpu.function(&CUDA, "sumsq_partials_segments_f32")?;
            let gv = grads.as_view();
            let mut b = gpu.launch_builder(&f);
            b.arg(&gv).arg(&table.device).arg(&nsegs).arg(&n).arg(&mut ws.partials);
            // SAFETY: (const float*, const Segment*, int, size_t, double*); partials holds one value per
            // block.
            unsafe { b.launch(reduce_grid()) }?;
        }
        finish(gpu, &ws.partials.as_view(), &mut ws.norm.as_view_mut(), true)?;
        if max_norm > 0.0 {
            clip_coefficient(gpu, &ws.norm.as_view(), max_norm, &mut ws.coef.as_view_mut())?;
            let f = gpu.function(&CUDA, "scale_segments_f32")?;
            let mut b = gpu.launch_builder(&f);
            b.arg(&mut *grads).arg(&ws.coef).arg(&table.device).arg(&nsegs).arg(&n);
            // SAFETY: (float*, const float*, const Segment*, int, size_t); as for the clamp, coef one value.
            unsafe { b.launch(gpu.elementwise(n)) }?;
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::cuda::testing::*;
        use crate::rng::Rng;

        /// The plain functions against the CPU: the sum of squares within 1e-12 relative (both sum exact
        /// f64 squares, in different orders: each addition rounds by at most 2^-53, so over 1e5 terms the
        /// two orders differ by far less), bitwise the same on a second run; the coefficient, scale and clamp
        /// bitwise the CPU's. Odd lengths, and a length of 1.
        #[test]
        fn clip_functions_match_cpu() {
            let Some(gpu) = gpu_or_skip("clip_functions_match_cpu") else { return };
            let mut rng = Rng::new(test_seed("clip_functions_match_cpu"));
            let mut partials = gpu.stream().alloc_zeros::<f64>(REDUCE_BLOCKS).unwrap();
            for n in [1usize, 1000, 300_007] {
                let x: Vec<f32> = (0..n).map(|_| (rng.normal() * 3.0) as f32).collect();
                let dx = gpu.upload(&x).unwrap();
                let mut out = gpu.upload(&[f64::NAN]).unwrap();
                sum_of_squares(gpu, &dx.as_view(), &mut out.as_view_mut(), &mut partials.as_view_mut()).unwrap();
                let got = gpu.download(&out).unwrap()[0];
                let want = super::super::sum_of_squares(&x);
                assert!((got - want).abs() <= 1e-12 * want, "n {n}: sum of squares {got} vs {want}");
                sum_of_squares(gpu, &dx.as_view(), &mut out.as_view_mut(), &mut partials.as_view_mut()).unwrap();
                assert_eq!(gpu.download(&out).unwrap()[0].to_bits(), got.to_bits(), "n {n}: not reproducible");

                for max_norm in [0.5, 1e9] {
                    let norm = want.sqrt();
                    let coef_want = super::super::clip_coefficient(norm, max_norm);
                    let dn = gpu.upload(&[norm]).unwrap();
                    let mut coef = gpu.upload(&[f32::NAN]).unwrap();
                    clip_coefficient(gpu, &dn.as_view(), max_norm, &mut coef.as_view_mut()).unwrap();
                    assert_eq!(gpu.download(&coef).unwrap()[0], coef_want as f32, "coefficient");
                    let mut dy = gpu.upload(&x).unwrap();
                    scale(gpu, &mut dy.as_view_mut(), &coef.as_view()).unwrap();
                    let mut want_y = x.clone();
                    super::super::scale(&mut want_y, coef_want);
                    assert_eq!(gpu.download(&dy).unwrap(), want_y, "scale by {coef_want}");
                }
                let mut dy = gpu.upload(&x).unwrap();
                clamp(gpu, &mut dy.as_view_mut(), 1.5).unwrap();
                let mut want_y = x.clone();
                super::super::clamp(&mut want_y, 1.5);
                assert_eq!(gpu.download(&dy).unwrap(), want_y, "clamp");
            }
        }

        /// The arena clipping as the engine's Reduce system computes it on the CPU (clamp, norm over the
        /// trainable slices, scale), with a frozen gap holding NaN (which would poison the norm if counted
        /// and must stay as it is): norm within 1e-12 relative, gradients bitwise.
        #[test]
        fn arena_clipping_matches_cpu() {
            let Some(gpu) = gpu_or_skip("arena_clipping_matches_cpu") else { return };
            let mut rng = Rng::new(test_seed("arena_clipping_matches_cpu"));
            let n = 100_003;
            let ranges = [(0usize, 40_001usize), (40_001, 40_002), (70_000, n)];
            let mut table = SegmentTable::new(gpu, ranges.len()).unwrap();
            for (k, &(a, b)) in ranges.iter().enumerate() {
                table.host[k] = segment(a, b);
            }
            table.upload(gpu).unwrap();
            let mut ws = ClipWorkspace::new(gpu).unwrap();
            for (max_value, max_norm) in [(0.0, 1.0), (0.8, 10.0), (2.0, 0.0), (0.0, 1e9)] {
                let inside = |i: usize| ranges.iter().any(|&(a, b)| (a..b).contains(&i));
                let g: Vec<f32> = (0..n).map(|i| if inside(i) { rng.normal() as f32 } else { f32::NAN }).collect();
                let mut want = g.clone();
                if max_value > 0.0 {
                    for &(a, b) in &ranges {
                        super::super::clamp(&mut want[a..b], max_value);
                    }
                }
                let total: f64 = ranges.iter().map(|&(a, b)| super::super::sum_of_squares(&want[a..b])).sum();
                let norm = total.sqrt();
                if max_norm > 0.0 {
                    let coef = super::super::clip_coefficient(norm, max_norm);
                    for &(a, b) in &ranges {
                        super::super::scale(&mut want[a..b], coef);
                    }
                }
                let mut dg = gpu.upload(&g).unwrap();
                clip_gradients(gpu, &mut dg.as_view_mut(), &table, max_value, max_norm, &mut ws).unwrap();
                let got_norm = ws.download_norm(gpu).unwrap();
                assert!((got_norm - norm).abs() <= 1e-12 * norm, "norm {got_norm} vs {norm}");
                let got = gpu.download(&dg).unwrap();
                let bad = (0..n).filter(|&i| got[i].to_bits() != want[i].to_bits()).count();
                assert_eq!(bad, 0, "max_value {max_value}, max_norm {max_norm}: {bad} gradients differ");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_and_coefficient_as_torch() {
        // grads [3, 4] and [12]: total norm 13; max_norm 1 -> coef 1 / (13 + 1e-6).
        let (a, b) = ([3.0f32, 4.0], [12.0f32]);
        let total = (sum_of_squares(&a) + sum_of_squares(&b)).sqrt();
        assert_eq!(total, 13.0);
        let coef = clip_coefficient(total, 1.0);
        assert!((coef - 1.0 / 13.000001).abs() < 1e-15);
        let mut g = a;
        scale(&mut g, coef);
        assert!((g[0] as f64 - 3.0 / 13.000001).abs() < 1e-7 && (g[1] as f64 - 4.0 / 13.000001).abs() < 1e-7);
        // Below the threshold the coefficient is exactly 1.
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    }

    #[test]
    fn clamp_bounds_every_element() {
        let mut g = [-3.0f64, -0.5, 0.0, 0.25, 7.0, f64::NAN];
        clamp(&mut g, 0.5);
        assert_eq!(&g[..5], &[-0.5, -0.5, 0.0, 0.25, 0.5]);
        assert!(g[5].is_nan());
    }

    #[test]
    fn long_slices_give_the_same_bits_as_short_ones() {
        let n = 3 * PAR_MIN_ELEMS + 17;
        let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.013).sin()).collect();
        // Same blocks, sequential: the sum must not depend on whether rayon ran it.
        let seq = blocked_sum(n, false, |lo, hi| x[lo..hi].iter().map(|v| (*v as f64) * (*v as f64)).sum());
        assert_eq!(sum_of_squares(&x).to_bits(), seq.to_bits());
        let mut a = x.clone();
        scale(&mut a, 0.3);
        let b: Vec<f32> = x.iter().map(|v| v * 0.3f32).collect();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}
