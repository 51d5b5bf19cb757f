//! Host side of `add.cu`: the GPU twins of [`add_forward`](super::add_forward) and
//! [`add_assign`](super::add_assign), bit-identical to them.

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError, Store, StoreKind};

/// `out = a + b` on the GPU (overwrites `out`). out, a, b: [N], stored in `T` (a half sum is the f32 sum
/// rounded once).
pub fn add_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    a: &CudaView<T>,
    b: &CudaView<T>,
) -> Result<(), GpuError> {
    add_forward_mixed(gpu, out, a, b)
}

/// `dst += src` on the GPU. dst, src: [N], stored in `T`.
pub fn add_assign<T: Store>(gpu: &Gpu, dst: &mut CudaViewMut<T>, src: &CudaView<T>) -> Result<(), GpuError> {
    add_assign_mixed(gpu, dst, src)
}

/// The entry point adding an `a`-typed and a `b`-typed operand into a `y`-typed output: the same-type sums
/// and the promotions autocast makes (half + f32, f32 + half, half + half into f32). Panics on other
/// combinations (the storage plan makes none).
fn add_entry(a: StoreKind, b: StoreKind, y: StoreKind) -> &'static str {
    use StoreKind::{Bf16, F16, F32};
    match (a, b, y) {
        (F32, F32, F32) => "add_forward_f32",
        (F16, F16, F16) => "add_forward_f16",
        (Bf16, Bf16, Bf16) => "add_forward_bf16",
        (F32, F16, F32) => "add_mixed_f32_f16_f32",
        (F16, F32, F32) => "add_mixed_f16_f32_f32",
        (F16, F16, F32) => "add_mixed_f16_f16_f32",
        (F32, Bf16, F32) => "add_mixed_f32_bf16_f32",
        (Bf16, F32, F32) => "add_mixed_bf16_f32_f32",
        (Bf16, Bf16, F32) => "add_mixed_bf16_bf16_f32",
        _ => panic!("add: no kernel adds {} and {} into {}", a.name(), b.name(), y.name()),
    }
}

/// `out = a + b` on the GPU with each buffer in its own storage type: the f32 sum of the loaded values,
/// rounded once into `Y` (the combinations of [`add_entry`]). out, a, b: [N].
pub fn add_forward_mixed<A: Store, B: Store, Y: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    a: &CudaView<A>,
    b: &CudaView<B>,
) -> Result<(), GpuError> {
    let n = out.len();
    assert!(a.len() == n && b.len() == n, "add_forward_mixed: out, a and b differ in length");
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, add_entry(A::KIND, B::KIND, Y::KIND))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(a).arg(b).arg(&n);
    // SAFETY: (Y*, const A*, const B*, size_t) as add_entry's kernel declares; every buffer holds n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

/// `dst += src` on the GPU with dst and src in their own storage types (the same type, or an f32 share into
/// a half gradient). dst, src: [N].
pub fn add_assign_mixed<D: Store, S: Store>(
    gpu: &Gpu,
    dst: &mut CudaViewMut<D>,
    src: &CudaView<S>,
) -> Result<(), GpuError> {
    use StoreKind::{Bf16, F16, F32};
    let n = dst.len();
    assert_eq!(src.len(), n, "add_assign_mixed: dst and src differ in length");
    if n == 0 {
        return Ok(());
    }
    let name = match (D::KIND, S::KIND) {
        (F32, F32) => "add_assign_f32",
        (F16, F16) => "add_assign_f16",
        (Bf16, Bf16) => "add_assign_bf16",
        (F16, F32) => "add_assign_f16_f32",
        (Bf16, F32) => "add_assign_bf16_f32",
        (d, s) => panic!("add_assign: no kernel adds {} into {}", s.name(), d.name()),
    };
    let f = gpu.function(&CUDA, name)?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dst).arg(src).arg(&n);
    // SAFETY: (D*, const S*, size_t) as the kernel declares; both buffers hold n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Both ops equal the CPU bit for bit (one f32 addition per element), on sizes that are not multiples
    /// of the block, one element included.
    #[test]
    fn add_matches_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("add_matches_cpu_bitwise") else { return };
        let mut rng = seeded("add_matches_cpu_bitwise");
        for n in [1usize, 255, 100_003] {
            let a = rand_vec(&mut rng, n, -3.0, 3.0);
            let b = rand_vec(&mut rng, n, -3.0, 3.0);
            let mut want = vec![0.0f32; n];
            super::super::add_forward(&mut want, &a, &b);
            let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let mut out = poisoned(gpu, n).unwrap();
            add_forward(gpu, &mut out.as_view_mut(), &da.as_view(), &db.as_view()).unwrap();
            assert_bitwise(&format!("add_forward n{n}"), &gpu.download(&out).unwrap(), &want);
            let mut acc = a.clone();
            super::super::add_assign(&mut acc, &b);
            let mut dacc = gpu.upload(&a).unwrap();
            add_assign(gpu, &mut dacc.as_view_mut(), &db.as_view()).unwrap();
            assert_bitwise(&format!("add_assign n{n}"), &gpu.download(&dacc).unwrap(), &acc);
        }
    }

    /// Half storage (autocast activations): both ops are the f32 sum of the stored values rounded once into
    /// the storage type, bit for bit.
    fn half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        for n in [1usize, 255, 100_003] {
            let (da, a) = upload_as::<T>(gpu, &rand_vec(rng, n, -3.0, 3.0));
            let (db, b) = upload_as::<T>(gpu, &rand_vec(rng, n, -3.0, 3.0));
            let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| T::round(x + y)).collect();
            let mut out = poisoned_as::<T>(gpu, n);
            add_forward(gpu, &mut out.as_view_mut(), &da.as_view(), &db.as_view()).unwrap();
            let what = format!("add_forward {} n{n}", T::KIND.name());
            assert_bitwise(&what, &download_f32(gpu, &out), &want);
            let (mut dacc, _) = upload_as::<T>(gpu, &a);
            add_assign(gpu, &mut dacc.as_view_mut(), &db.as_view()).unwrap();
            assert_bitwise(&format!("add_assign {} n{n}", T::KIND.name()), &download_f32(gpu, &dacc), &want);
        }
    }

    #[test]
    fn add_in_half_storage_rounds_the_f32_sum_once() {
        let Some(gpu) = gpu_or_skip("add_in_half_storage_rounds_the_f32_sum_once") else { return };
        let mut rng = seeded("add_in_half_storage_rounds_the_f32_sum_once");
        half_case::<half::f16>(gpu, &mut rng);
        half_case::<half::bf16>(gpu, &mut rng);
    }

    /// Mixed storage (autocast's promotions): the f32 sum of the stored operands, rounded once into the
    /// output's type, bit for bit; and a half gradient receiving an f32 share.
    fn mixed_case<H: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let n = 100_003;
        let (a32, a) = upload_as::<f32>(gpu, &rand_vec(rng, n, -3.0, 3.0));
        let (ah, a_h) = upload_as::<H>(gpu, &rand_vec(rng, n, -3.0, 3.0));
        let (bh, b_h) = upload_as::<H>(gpu, &rand_vec(rng, n, -3.0, 3.0));
        let sum = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(&p, &q)| p + q).collect::<Vec<f32>>();
        let name = H::KIND.name();
        let mut out = poisoned(gpu, n).unwrap();
        add_forward_mixed(gpu, &mut out.as_view_mut(), &a32.as_view(), &bh.as_view()).unwrap();
        assert_bitwise(&format!("add f32 + {name}"), &gpu.download(&out).unwrap(), &sum(&a, &b_h));
        let mut out = poisoned(gpu, n).unwrap();
        add_forward_mixed(gpu, &mut out.as_view_mut(), &ah.as_view(), &a32.as_view()).unwrap();
        assert_bitwise(&format!("add {name} + f32"), &gpu.download(&out).unwrap(), &sum(&a_h, &a));
        let mut out = poisoned(gpu, n).unwrap();
        add_forward_mixed(gpu, &mut out.as_view_mut(), &ah.as_view(), &bh.as_view()).unwrap();
        assert_bitwise(&format!("add {name} + {name} -> f32"), &gpu.download(&out).unwrap(), &sum(&a_h, &b_h));
        let mut dst = ah.clone();
        add_assign_mixed(gpu, &mut dst.as_view_mut(), &a32.as_view()).unwrap();
        let want: Vec<f32> = sum(&a_h, &a).iter().map(|&v| H::round(v)).collect();
        assert_bitwise(&format!("{name} += f32"), &download_f32(gpu, &dst), &want);
    }

    #[test]
    fn add_in_mixed_storage_promotes_as_autocast_does() {
        let Some(gpu) = gpu_or_skip("add_in_mixed_storage_promotes_as_autocast_does") else { return };
        let mut rng = seeded("add_in_mixed_storage_promotes_as_autocast_does");
        mixed_case::<half::f16>(gpu, &mut rng);
        mixed_case::<half::bf16>(gpu, &mut rng);
    }
}
