//! Host side of `pool.cu`: the GPU twins of the max / average / adaptive / global pools, bit-identical
//! to the CPU (same comparisons, same additions in the same order; the backward passes are gathers).

use cudarc::driver::{CudaView, CudaViewMut};

use super::{Pool2dGeom, CUDA};
use crate::cuda::{Gpu, GpuError, Store};

/// The geometry as the kernels read it (`struct PoolDims` in pool.cu: same fields, same order).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PoolDims {
    planes: i64,
    h: i64,
    w: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    oh: i64,
    ow: i64,
}

// Passed by value: plain `repr(C)` i64 fields, the layout of `struct PoolDims` in pool.cu.
crate::cuda::launch::value_arg!(PoolDims);

/// Dims of a fixed-window pool (panics on an invalid geometry, as the CPU does).
fn window_dims(g: &Pool2dGeom) -> PoolDims {
    let (oh, ow) = g.out_hw().unwrap_or_else(|e| panic!("{e}"));
    let i = |v: usize| v as i64;
    PoolDims {
        planes: i(g.n * g.c),
        h: i(g.h),
        w: i(g.w),
        kh: i(g.kh),
        kw: i(g.kw),
        sh: i(g.stride.0),
        sw: i(g.stride.1),
        ph: i(g.padding.0),
        pw: i(g.padding.1),
        oh: i(oh),
        ow: i(ow),
    }
}

/// Dims of an adaptive pool (window fields unused).
fn adaptive_dims(what: &str, n: usize, c: usize, h: usize, w: usize, oh: usize, ow: usize) -> PoolDims {
    assert!(h > 0 && w > 0, "{what}: input size must be positive (got {h}x{w})");
    assert!(oh > 0 && ow > 0, "{what}: output size must be positive (got {oh}x{ow})");
    let i = |v: usize| v as i64;
    PoolDims { planes: i(n * c), h: i(h), w: i(w), kh: 0, kw: 0, sh: 1, sw: 1, ph: 0, pw: 0, oh: i(oh), ow: i(ow) }
}

impl PoolDims {
    fn in_len(&self) -> usize {
        (self.planes * self.h * self.w) as usize
    }
    fn out_len(&self) -> usize {
        (self.planes * self.oh * self.ow) as usize
    }
}

/// Launches the `T` instantiation of `kernels` (`[f32, f16, bf16]`) as `kernel(dst, src, d)` over `elems`
/// elements.
fn launch2<T: Store>(
    gpu: &Gpu,
    kernels: [&'static str; 3],
    dst: &mut CudaViewMut<T>,
    src: &CudaView<T>,
    d: &PoolDims,
    elems: usize,
) -> Result<(), GpuError> {
    if elems == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(kernels))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dst).arg(src).arg(d);
    // SAFETY: (T*, const T*, PoolDims) as every such kernel declares for T; the callers checked that dst
    // and src hold the input / output lengths `d` describes.
    unsafe { l.launch(gpu.elementwise(elems)) }?;
    Ok(())
}

/// Max pool forward on the GPU (overwrites `out` and `argmax`, PyTorch's `return_indices`: flat index within
/// the input plane). out, argmax: [N, C, OH, OW], inp: [N, C, H, W]; out and inp stored in `T`.
pub fn max_pool2d_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    argmax: &mut CudaViewMut<u32>,
    inp: &CudaView<T>,
    g: &Pool2dGeom,
) -> Result<(), GpuError> {
    let d = window_dims(g);
    assert_eq!(out.len(), d.out_len(), "max_pool2d_forward: out must be [N, C, OH, OW]");
    assert_eq!(argmax.len(), d.out_len(), "max_pool2d_forward: argmax must be [N, C, OH, OW]");
    assert_eq!(inp.len(), d.in_len(), "max_pool2d_forward: inp must be [N, C, H, W]");
    if out.is_empty() {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(["max_pool_forward_f32", "max_pool_forward_f16", "max_pool_forward_bf16"]))?;
    let n = out.len();
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(argmax).arg(inp).arg(&d);
    // SAFETY: (T*, unsigned*, const T*, PoolDims); lengths checked above.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

/// Max pool backward on the GPU (overwrites `dinp`): each input element receives the sum, in output order,
/// of the output gradients whose argmax is that element. dinp: [N, C, H, W], dout, argmax: [N, C, OH, OW];
/// dinp and dout stored in `T` (f32 sums, rounded once).
pub fn max_pool2d_backward<T: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    argmax: &CudaView<u32>,
    g: &Pool2dGeom,
) -> Result<(), GpuError> {
    let d = window_dims(g);
    assert_eq!(dinp.len(), d.in_len(), "max_pool2d_backward: dinp must be [N, C, H, W]");
    assert_eq!(dout.len(), d.out_len(), "max_pool2d_backward: dout must be [N, C, OH, OW]");
    assert_eq!(argmax.len(), d.out_len(), "max_pool2d_backward: argmax must be [N, C, OH, OW]");
    if dinp.is_empty() {
        return Ok(());
    }
    let names = ["max_pool_backward_f32", "max_pool_backward_f16", "max_pool_backward_bf16"];
    let f = gpu.function(&CUDA, T::pick(names))?;
    let n = dinp.len();
    let mut l = gpu.launch_builder(&f);
    l.arg(dinp).arg(dout).arg(argmax).arg(&d);
    // SAFETY: (T*, const T*, const unsigned*, PoolDims); lengths checked above.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

/// Average pool forward on the GPU (`count_include_pad=True`, overwrites). out: [N, C, OH, OW], inp: [N, C, H, W].
/// The average pools store their input, output and gradients in `T` (summed in f32, the result rounded once).
pub fn avg_pool2d_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    inp: &CudaView<T>,
    g: &Pool2dGeom,
) -> Result<(), GpuError> {
    let d = window_dims(g);
    assert_eq!(out.len(), d.out_len(), "avg_pool2d_forward: out must be [N, C, OH, OW]");
    assert_eq!(inp.len(), d.in_len(), "avg_pool2d_forward: inp must be [N, C, H, W]");
    let n = out.len();
    launch2(gpu, ["avg_pool_forward_f32", "avg_pool_forward_f16", "avg_pool_forward_bf16"], out, inp, &d, n)
}

/// Average pool backward on the GPU (overwrites `dinp`). dinp: [N, C, H, W], dout: [N, C, OH, OW].
pub fn avg_pool2d_backward<T: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    g: &Pool2dGeom,
) -> Result<(), GpuError> {
    let d = window_dims(g);
    assert_eq!(dinp.len(), d.in_len(), "avg_pool2d_backward: dinp must be [N, C, H, W]");
    assert_eq!(dout.len(), d.out_len(), "avg_pool2d_backward: dout must be [N, C, OH, OW]");
    let n = dinp.len();
    launch2(gpu, ["avg_pool_backward_f32", "avg_pool_backward_f16", "avg_pool_backward_bf16"], dinp, dout, &d, n)
}

/// Adaptive average pool forward on the GPU (overwrites; PyTorch's bins). out: [N, C, OH, OW], inp: [N, C, H, W].
#[allow(clippy::too_many_arguments)]
pub fn adaptive_avg_pool2d_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    inp: &CudaView<T>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Result<(), GpuError> {
    let d = adaptive_dims("adaptive_avg_pool2d_forward", n, c, h, w, oh, ow);
    assert_eq!(out.len(), d.out_len(), "adaptive_avg_pool2d_forward: out must be [N, C, OH, OW]");
    assert_eq!(inp.len(), d.in_len(), "adaptive_avg_pool2d_forward: inp must be [N, C, H, W]");
    let len = out.len();
    launch2(
        gpu,
        ["adaptive_avg_pool_forward_f32", "adaptive_avg_pool_forward_f16", "adaptive_avg_pool_forward_bf16"],
        out,
        inp,
        &d,
        len,
    )
}

/// Adaptive average pool backward on the GPU (overwrites `dinp`). dinp: [N, C, H, W], dout: [N, C, OH, OW].
#[allow(clippy::too_many_arguments)]
pub fn adaptive_avg_pool2d_backward<T: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) -> Result<(), GpuError> {
    let d = adaptive_dims("adaptive_avg_pool2d_backward", n, c, h, w, oh, ow);
    assert_eq!(dinp.len(), d.in_len(), "adaptive_avg_pool2d_backward: dinp must be [N, C, H, W]");
    assert_eq!(dout.len(), d.out_len(), "adaptive_avg_pool2d_backward: dout must be [N, C, OH, OW]");
    let len = dinp.len();
    launch2(
        gpu,
        ["adaptive_avg_pool_backward_f32", "adaptive_avg_pool_backward_f16", "adaptive_avg_pool_backward_bf16"],
        dinp,
        dout,
        &d,
        len,
    )
}

/// Global average pool forward on the GPU (the adaptive pool to 1x1, as on the CPU). out: [N, C], inp: [N, C, H, W].
pub fn global_avg_pool_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    inp: &CudaView<T>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<(), GpuError> {
    adaptive_avg_pool2d_forward(gpu, out, inp, n, c, h, w, 1, 1)
}

/// Global average pool backward on the GPU (overwrites `dinp`). dinp: [N, C, H, W], dout: [N, C].
pub fn global_avg_pool_backward<T: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<(), GpuError> {
    adaptive_avg_pool2d_backward(gpu, dinp, dout, n, c, h, w, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    fn geom(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        k: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Pool2dGeom {
        Pool2dGeom { n, c, h, w, kh: k.0, kw: k.1, stride, padding }
    }

    /// Max (values, argmax, gradient) and average pools against the CPU, bitwise: 2x2/2, 3x3/2 padded
    /// (overlapping windows: several gradients per input), 3x2 strided rectangles, a NaN in the input;
    /// batch 1 and more, planes not a multiple of the block.
    #[test]
    fn window_pools_match_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("window_pools_match_cpu_bitwise") else { return };
        let mut rng = seeded("window_pools_match_cpu_bitwise");
        let cases = [
            geom(1, 3, 8, 8, (2, 2), (2, 2), (0, 0)),
            geom(4, 5, 11, 9, (3, 3), (2, 2), (1, 1)),
            geom(2, 3, 7, 10, (3, 2), (1, 2), (1, 1)),
            geom(3, 17, 13, 13, (3, 3), (1, 1), (0, 0)),
        ];
        for (ci, g) in cases.into_iter().enumerate() {
            let (oh, ow) = g.out_hw().unwrap();
            let (in_len, out_len) = (g.n * g.c * g.h * g.w, g.n * g.c * oh * ow);
            let mut x = rand_vec(&mut rng, in_len, -2.0, 2.0);
            if ci == 1 {
                x[5] = f32::NAN;
            }
            let dout = rand_vec(&mut rng, out_len, -1.0, 1.0);
            let what = format!("pool {g:?}");
            let (dx_in, dgo) = (gpu.upload(&x).unwrap(), gpu.upload(&dout).unwrap());

            let (mut want, mut want_am) = (vec![0.0f32; out_len], vec![0u32; out_len]);
            super::super::max_pool2d_forward(&mut want, &mut want_am, &x, &g);
            let mut out = poisoned(gpu, out_len).unwrap();
            let mut am = gpu.upload(&vec![u32::MAX; out_len]).unwrap();
            max_pool2d_forward(gpu, &mut out.as_view_mut(), &mut am.as_view_mut(), &dx_in.as_view(), &g).unwrap();
            let got = gpu.download(&out).unwrap();
            // NaN never equals itself: compare bits.
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: max values differ");
            assert_eq!(gpu.download(&am).unwrap(), want_am, "{what}: argmax differs");
            let mut want_dx = vec![0.0f32; in_len];
            super::super::max_pool2d_backward(&mut want_dx, &dout, &want_am, &g);
            let mut dx = poisoned(gpu, in_len).unwrap();
            max_pool2d_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), &am.as_view(), &g).unwrap();
            assert_bitwise(&format!("{what} max backward"), &gpu.download(&dx).unwrap(), &want_dx);

            if ci == 1 {
                continue; // the NaN would poison the average comparisons
            }
            let mut want = vec![0.0f32; out_len];
            super::super::avg_pool2d_forward(&mut want, &x, &g);
            let mut out = poisoned(gpu, out_len).unwrap();
            avg_pool2d_forward(gpu, &mut out.as_view_mut(), &dx_in.as_view(), &g).unwrap();
            assert_bitwise(&format!("{what} avg forward"), &gpu.download(&out).unwrap(), &want);
            let mut want_dx = vec![0.0f32; in_len];
            super::super::avg_pool2d_backward(&mut want_dx, &dout, &g);
            let mut dx = poisoned(gpu, in_len).unwrap();
            avg_pool2d_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), &g).unwrap();
            assert_bitwise(&format!("{what} avg backward"), &gpu.download(&dx).unwrap(), &want_dx);
        }
    }

    /// Adaptive pools (overlapping bins 7 -> 3, expanding 2 -> 5, identity, rectangles) and the global
    /// pool against the CPU, bitwise, batch 1 and more.
    #[test]
    fn adaptive_and_global_pools_match_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("adaptive_and_global_pools_match_cpu_bitwise") else { return };
        let mut rng = seeded("adaptive_and_global_pools_match_cpu_bitwise");
        for &(n, c, h, w, oh, ow) in &[
            (1usize, 3usize, 7usize, 7usize, 3usize, 3usize),
            (2, 5, 2, 3, 5, 4),
            (3, 2, 6, 6, 6, 6),
            (4, 33, 9, 5, 1, 1),
        ] {
            let x = rand_vec(&mut rng, n * c * h * w, -2.0, 2.0);
            let dout = rand_vec(&mut rng, n * c * oh * ow, -1.0, 1.0);
            let (dx_in, dgo) = (gpu.upload(&x).unwrap(), gpu.upload(&dout).unwrap());
            let what = format!("adaptive {n}x{c}x{h}x{w} -> {oh}x{ow}");
            let mut want = vec![0.0f32; n * c * oh * ow];
            super::super::adaptive_avg_pool2d_forward(&mut want, &x, n, c, h, w, oh, ow);
            let mut out = poisoned(gpu, want.len()).unwrap();
            adaptive_avg_pool2d_forward(gpu, &mut out.as_view_mut(), &dx_in.as_view(), n, c, h, w, oh, ow).unwrap();
            assert_bitwise(&format!("{what} forward"), &gpu.download(&out).unwrap(), &want);
            let mut want_dx = vec![0.0f32; x.len()];
            super::super::adaptive_avg_pool2d_backward(&mut want_dx, &dout, n, c, h, w, oh, ow);
            let mut dx = poisoned(gpu, x.len()).unwrap();
            adaptive_avg_pool2d_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), n, c, h, w, oh, ow).unwrap();
            assert_bitwise(&format!("{what} backward"), &gpu.download(&dx).unwrap(), &want_dx);
            if (oh, ow) == (1, 1) {
                let mut out = poisoned(gpu, n * c).unwrap();
                global_avg_pool_forward(gpu, &mut out.as_view_mut(), &dx_in.as_view(), n, c, h, w).unwrap();
                assert_bitwise(&format!("{what} global forward"), &gpu.download(&out).unwrap(), &want);
                let mut dx = poisoned(gpu, x.len()).unwrap();
                global_avg_pool_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), n, c, h, w).unwrap();
                assert_bitwise(&format!("{what} global backward"), &gpu.download(&dx).unwrap(), &want_dx);
            }
        }
    }

    /// Max pooling in half storage: the CPU pool of the stored values (the maximum is one of them, stored
    /// exactly; same argmax), and its backward's f32 sums of the stored gradients rounded once, bit for bit.
    fn max_half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        for g in [geom(2, 3, 8, 8, (2, 2), (2, 2), (0, 0)), geom(3, 5, 11, 9, (3, 3), (2, 2), (1, 1))] {
            let (oh, ow) = g.out_hw().unwrap();
            let (in_len, out_len) = (g.n * g.c * g.h * g.w, g.n * g.c * oh * ow);
            let (dx_in, x) = upload_as::<T>(gpu, &rand_vec(rng, in_len, -2.0, 2.0));
            let (dgo, dout) = upload_as::<T>(gpu, &rand_vec(rng, out_len, -1.0, 1.0));
            let what = format!("max pool {} {g:?}", T::KIND.name());
            let (mut want, mut want_am) = (vec![0.0f32; out_len], vec![0u32; out_len]);
            super::super::max_pool2d_forward(&mut want, &mut want_am, &x, &g);
            let mut out = poisoned_as::<T>(gpu, out_len);
            let mut am = gpu.upload(&vec![u32::MAX; out_len]).unwrap();
            max_pool2d_forward(gpu, &mut out.as_view_mut(), &mut am.as_view_mut(), &dx_in.as_view(), &g).unwrap();
            assert_bitwise(&format!("{what} forward"), &download_f32(gpu, &out), &want);
            assert_eq!(gpu.download(&am).unwrap(), want_am, "{what}: argmax differs");
            let mut want_dx = vec![0.0f32; in_len];
            super::super::max_pool2d_backward(&mut want_dx, &dout, &want_am, &g);
            want_dx.iter_mut().for_each(|v| *v = T::round(*v));
            let mut dx = poisoned_as::<T>(gpu, in_len);
            max_pool2d_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), &am.as_view(), &g).unwrap();
            assert_bitwise(&format!("{what} backward"), &download_f32(gpu, &dx), &want_dx);
        }
    }

    #[test]
    fn max_pool_in_half_storage_matches_the_cpu_on_stored_values() {
        let Some(gpu) = gpu_or_skip("max_pool_in_half_storage_matches_the_cpu_on_stored_values") else { return };
        let mut rng = seeded("max_pool_in_half_storage_matches_the_cpu_on_stored_values");
        max_half_case::<half::f16>(gpu, &mut rng);
        max_half_case::<half::bf16>(gpu, &mut rng);
    }

    /// The average pools in half storage: the CPU's f32 sums (same order) of the stored values, rounded once
    /// into `T`, bit for bit; window (padded, overlapping), adaptive and global.
    fn avg_half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let round = |v: Vec<f32>| -> Vec<f32> { v.iter().map(|&x| T::round(x)).collect() };
        let g = geom(3, 5, 11, 9, (3, 3), (2, 2), (1, 1));
        let (oh, ow) = g.out_hw().unwrap();
        let (in_len, out_len) = (g.n * g.c * g.h * g.w, g.n * g.c * oh * ow);
        let (dx_in, x) = upload_as::<T>(gpu, &rand_vec(rng, in_len, -2.0, 2.0));
        let (dgo, dout) = upload_as::<T>(gpu, &rand_vec(rng, out_len, -1.0, 1.0));
        let what = format!("avg pool {} {g:?}", T::KIND.name());
        let mut want = vec![0.0f32; out_len];
        super::super::avg_pool2d_forward(&mut want, &x, &g);
        let mut out = poisoned_as::<T>(gpu, out_len);
        avg_pool2d_forward(gpu, &mut out.as_view_mut(), &dx_in.as_view(), &g).unwrap();
        assert_bitwise(&format!("{what} forward"), &download_f32(gpu, &out), &round(want));
        let mut want_dx = vec![0.0f32; in_len];
        super::super::avg_pool2d_backward(&mut want_dx, &dout, &g);
        let mut dx = poisoned_as::<T>(gpu, in_len);
        avg_pool2d_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), &g).unwrap();
        assert_bitwise(&format!("{what} backward"), &download_f32(gpu, &dx), &round(want_dx));

        for &(n, c, h, w, oh, ow) in &[(2usize, 5usize, 7usize, 7usize, 3usize, 3usize), (4, 33, 9, 5, 1, 1)] {
            let (dx_in, x) = upload_as::<T>(gpu, &rand_vec(rng, n * c * h * w, -2.0, 2.0));
            let (dgo, dout) = upload_as::<T>(gpu, &rand_vec(rng, n * c * oh * ow, -1.0, 1.0));
            let what = format!("adaptive {} {n}x{c}x{h}x{w} -> {oh}x{ow}", T::KIND.name());
            let mut want = vec![0.0f32; n * c * oh * ow];
            super::super::adaptive_avg_pool2d_forward(&mut want, &x, n, c, h, w, oh, ow);
            let want = round(want);
            let mut out = poisoned_as::<T>(gpu, want.len());
            adaptive_avg_pool2d_forward(gpu, &mut out.as_view_mut(), &dx_in.as_view(), n, c, h, w, oh, ow).unwrap();
            assert_bitwise(&format!("{what} forward"), &download_f32(gpu, &out), &want);
            let mut want_dx = vec![0.0f32; x.len()];
            super::super::adaptive_avg_pool2d_backward(&mut want_dx, &dout, n, c, h, w, oh, ow);
            let want_dx = round(want_dx);
            let mut dx = poisoned_as::<T>(gpu, x.len());
            adaptive_avg_pool2d_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), n, c, h, w, oh, ow).unwrap();
            assert_bitwise(&format!("{what} backward"), &download_f32(gpu, &dx), &want_dx);
            if (oh, ow) == (1, 1) {
                let mut out = poisoned_as::<T>(gpu, n * c);
                global_avg_pool_forward(gpu, &mut out.as_view_mut(), &dx_in.as_view(), n, c, h, w).unwrap();
                assert_bitwise(&format!("{what} global forward"), &download_f32(gpu, &out), &want);
                let mut dx = poisoned_as::<T>(gpu, x.len());
                global_avg_pool_backward(gpu, &mut dx.as_view_mut(), &dgo.as_view(), n, c, h, w).unwrap();
                assert_bitwise(&format!("{what} global backward"), &download_f32(gpu, &dx), &want_dx);
            }
        }
    }

    #[test]
    fn average_pools_in_half_storage_round_the_cpu_sums_once() {
        let Some(gpu) = gpu_or_skip("average_pools_in_half_storage_round_the_cpu_sums_once") else { return };
        let mut rng = seeded("average_pools_in_half_storage_round_the_cpu_sums_once");
        avg_half_case::<half::f16>(gpu, &mut rng);
        avg_half_case::<half::bf16>(gpu, &mut rng);
    }
}
