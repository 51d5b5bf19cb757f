//! Host side of `add.cu`: the GPU twins of [`add_forward`](super::add_forward) and
//! [`add_assign`](super::add_assign), bit-identical to them.

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError, Store};

/// `out = a + b` on the GPU (overwrites `out`). out, a, b: [N], stored in `T` (a half sum is the f32 sum
/// rounded once).
pub fn add_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    a: &CudaView<T>,
    b: &CudaView<T>,
) -> Result<(), GpuError> {
    let n = out.len();
    assert!(a.len() == n && b.len() == n, "add_forward: out, a and b differ in length");
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(["add_forward_f32", "add_forward_f16", "add_forward_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(a).arg(b).arg(&n);
    // SAFETY: (T*, const T*, const T*, size_t); every buffer holds n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

/// `dst += src` on the GPU. dst, src: [N], stored in `T`.
pub fn add_assign<T: Store>(gpu: &Gpu, dst: &mut CudaViewMut<T>, src: &CudaView<T>) -> Result<(), GpuError> {
    let n = dst.len();
    assert_eq!(src.len(), n, "add_assign: dst and src differ in length");
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, T::pick(["add_assign_f32", "add_assign_f16", "add_assign_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dst).arg(src).arg(&n);
    // SAFETY: (T*, const T*, size_t); both buffers hold n elements.
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
}
