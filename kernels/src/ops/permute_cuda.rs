//! Host side of `permute.cu`: the GPU twins of [`permute`](super::permute),
//! [`permute_backward`](super::permute_backward) and [`transpose2d`](super::transpose2d), one strided
//! gather kernel for all (a copy: bit-identical to the CPU). The input is stored in `X` and the output in
//! `Y` (f32 or one half type each; between types each element is rounded on store, as a cast).

use cudarc::driver::{CudaView, CudaViewMut};

use super::{check, row_major_strides, CUDA, MAX_RANK};
use crate::cuda::store::pick_pair;
use crate::cuda::{Gpu, GpuError, Store};
use crate::store_pairs;

/// The gather geometry (`struct PermDims` in permute.cu: same fields, same order).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PermDims {
    rank: i64,
    dims: [i64; MAX_RANK],
    strides: [i64; MAX_RANK],
}

// Passed by value: plain `repr(C)` i64 fields, the layout of `struct PermDims` in permute.cu.
crate::cuda::launch::value_arg!(PermDims);

/// `out[c] = inp[sum_a c_a * strides[a]]` over the dense `dims`.
fn gather<X: Store, Y: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    inp: &CudaView<X>,
    dims: &[usize],
    strides: &[usize],
) -> Result<(), GpuError> {
    let n = out.len();
    if n == 0 {
        return Ok(());
    }
    let mut d = PermDims { rank: dims.len() as i64, dims: [1; MAX_RANK], strides: [0; MAX_RANK] };
    for (a, (&dim, &s)) in dims.iter().zip(strides).enumerate() {
        d.dims[a] = dim as i64;
        d.strides[a] = s as i64;
    }
    let f = gpu.function(&CUDA, pick_pair::<X, Y>(store_pairs!("strided_gather")))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(inp).arg(&n).arg(&d);
    // SAFETY: (Y*, const X*, size_t, PermDims) for this pair; out holds n = prod(dims) elements and every gathered
    // offset is inside inp (the callers derive dims / strides from inp's shape).
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

/// `out = inp.permute(perm)` on the GPU (overwrites). inp: `shape`, out: `permuted_shape(shape, perm)`.
/// Panics with the CPU's message where the CPU returns an error (a bad permutation or buffer length: the
/// graph validates permutations at assembly).
pub fn permute<X: Store, Y: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    inp: &CudaView<X>,
    shape: &[usize],
    perm: &[usize],
) -> Result<(), GpuError> {
    check("permute", out.len(), inp.len(), shape, perm).unwrap_or_else(|e| panic!("{e}"));
    let in_strides = row_major_strides(shape);
    // Fixed arrays, not vectors: this runs every step and must not allocate.
    let (mut dims, mut strides) = ([0usize; MAX_RANK], [0usize; MAX_RANK]);
    for (a, &p) in perm.iter().enumerate() {
        dims[a] = shape[p];
        strides[a] = in_strides[p];
    }
    gather(gpu, out, inp, &dims[..perm.len()], &strides[..perm.len()])
}

/// Backward of [`permute`] on the GPU: `dinp = dout` permuted back (overwrites). dout: the permuted shape,
/// dinp: `shape`. Panics as [`permute`] does.
pub fn permute_backward<X: Store, Y: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<Y>,
    dout: &CudaView<X>,
    shape: &[usize],
    perm: &[usize],
) -> Result<(), GpuError> {
    check("permute_backward", dinp.len(), dout.len(), shape, perm).unwrap_or_else(|e| panic!("{e}"));
    let mut out_shape = [0usize; MAX_RANK];
    for (a, &p) in perm.iter().enumerate() {
        out_shape[a] = shape[p];
    }
    let out_strides = row_major_strides(&out_shape[..perm.len()]);
    let mut strides = [0usize; MAX_RANK];
    for (a, &p) in perm.iter().enumerate() {
        strides[p] = out_strides[a];
    }
    gather(gpu, dinp, dout, shape, &strides[..perm.len()])
}

/// `out = inp^T` on the GPU. inp: [M, N], out: [N, M].
pub fn transpose2d<X: Store, Y: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    inp: &CudaView<X>,
    m: usize,
    n: usize,
) -> Result<(), GpuError> {
    assert_eq!(inp.len(), m * n, "transpose2d: inp must be [M, N]");
    assert_eq!(out.len(), m * n, "transpose2d: out must be [N, M]");
    gather(gpu, out, inp, &[n, m], &[1, n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Permutations of ranks 1 to 5 (identity, reversal, NCHW <-> NHWC, a size-1 axis), their backwards
    /// and 2-D transposes, bitwise against the CPU.
    #[test]
    fn permute_matches_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("permute_matches_cpu_bitwise") else { return };
        let mut rng = seeded("permute_matches_cpu_bitwise");
        let cases: [(&[usize], &[usize]); 6] = [
            (&[7], &[0]),
            (&[3, 5], &[1, 0]),
            (&[2, 3, 4, 5], &[0, 2, 3, 1]),
            (&[2, 4, 5, 3], &[0, 3, 1, 2]),
            (&[3, 1, 4, 2, 5], &[4, 3, 2, 1, 0]),
            (&[33, 1, 65], &[2, 0, 1]),
        ];
        for (shape, perm) in cases {
            let n: usize = shape.iter().product();
            let x = rand_vec(&mut rng, n, -1.0, 1.0);
            let dx = gpu.upload(&x).unwrap();
            let mut want = vec![0.0f32; n];
            super::super::permute(&mut want, &x, shape, perm).unwrap();
            let mut out = poisoned(gpu, n).unwrap();
            permute(gpu, &mut out.as_view_mut(), &dx.as_view(), shape, perm).unwrap();
            assert_bitwise(&format!("permute {shape:?} {perm:?}"), &gpu.download(&out).unwrap(), &want);
            let mut want_b = vec![0.0f32; n];
            super::super::permute_backward(&mut want_b, &x, shape, perm).unwrap();
            let mut back = poisoned(gpu, n).unwrap();
            permute_backward(gpu, &mut back.as_view_mut(), &dx.as_view(), shape, perm).unwrap();
            assert_bitwise(&format!("permute_backward {shape:?} {perm:?}"), &gpu.download(&back).unwrap(), &want_b);
        }
        for &(m, n) in &[(1usize, 1usize), (37, 65), (1, 300)] {
            let x = rand_vec(&mut rng, m * n, -1.0, 1.0);
            let mut want = vec![0.0f32; m * n];
            super::super::transpose2d(&mut want, &x, m, n);
            let dx = gpu.upload(&x).unwrap();
            let mut out = poisoned(gpu, m * n).unwrap();
            transpose2d(gpu, &mut out.as_view_mut(), &dx.as_view(), m, n).unwrap();
            assert_bitwise(&format!("transpose2d {m}x{n}"), &gpu.download(&out).unwrap(), &want);
        }
    }

    /// One storage pair of the permutation and its backward: the `X`-stored input gathered and rounded once
    /// into `Y`, bitwise against the CPU's permutation of the stored values.
    fn half_case<X: TestStore, Y: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let what = format!("permute {} -> {}", X::KIND.name(), Y::KIND.name());
        let cases: [(&[usize], &[usize]); 2] = [(&[2, 16, 3, 3], &[0, 2, 3, 1]), (&[4, 64, 49], &[0, 2, 1])];
        for (shape, perm) in cases {
            let n: usize = shape.iter().product();
            let (d_x, x) = upload_as::<X>(gpu, &rand_vec(rng, n, -3.0, 3.0));
            let mut want = vec![0.0f32; n];
            super::super::permute(&mut want, &x, shape, perm).unwrap();
            let want: Vec<f32> = want.iter().map(|&v| Y::round(v)).collect();
            let mut out = poisoned_as::<Y>(gpu, n);
            permute(gpu, &mut out.as_view_mut(), &d_x.as_view(), shape, perm).unwrap();
            assert_bitwise(&format!("{what} {shape:?} {perm:?}"), &download_f32(gpu, &out), &want);
            let mut want_b = vec![0.0f32; n];
            super::super::permute_backward(&mut want_b, &x, shape, perm).unwrap();
            let want_b: Vec<f32> = want_b.iter().map(|&v| Y::round(v)).collect();
            let mut back = poisoned_as::<Y>(gpu, n);
            permute_backward(gpu, &mut back.as_view_mut(), &d_x.as_view(), shape, perm).unwrap();
            assert_bitwise(&format!("{what} backward {shape:?} {perm:?}"), &download_f32(gpu, &back), &want_b);
        }
    }

    /// The permutation between storage types (the patch stem's under autocast): exact within one type, one
    /// rounding across.
    #[test]
    fn permute_in_half_storage_rounds_once() {
        let Some(gpu) = gpu_or_skip("permute_in_half_storage_rounds_once") else { return };
        let mut rng = seeded("permute_in_half_storage_rounds_once");
        for_each_half_pair!(half_case(gpu, &mut rng));
    }
}
