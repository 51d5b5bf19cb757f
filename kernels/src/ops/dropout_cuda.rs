//! Host side of `dropout.cu`: the GPU twins of [`dropout_forward`](super::dropout_forward) and
//! [`dropout_backward`](super::dropout_backward), with the CPU's mask bit for bit (same counter hash) and
//! the same outputs.

use cudarc::driver::{CudaView, CudaViewMut};

use super::{scale_for, seed_key, CUDA};
use crate::cuda::{Gpu, GpuError, Store};

/// Dropout forward on the GPU: `out[i] = keep(seed, i) ? inp[i] / (1 - p) : 0` (overwrites; `p == 1`
/// gives zeros). out, inp: [N]. Panics when `p` is outside [0, 1], as the CPU does (configs are checked
/// at assembly). Stored in `T` (a half output is the f32 product rounded once).
pub fn dropout_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    inp: &CudaView<T>,
    p: f64,
    seed: u64,
) -> Result<(), GpuError> {
    let n = out.len();
    assert_eq!(inp.len(), n, "dropout_forward: out and inp lengths differ");
    let Some(scale) = scale_for::<f32>(p) else {
        gpu.stream().memset_zeros(out)?;
        return Ok(());
    };
    if n == 0 {
        return Ok(());
    }
    let key = seed_key(seed);
    let f = gpu.function(&CUDA, T::pick(["dropout_f32", "dropout_f16", "dropout_bf16"]))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(inp).arg(&n).arg(&key).arg(&p).arg(&scale);
    // SAFETY: (T*, const T*, size_t, unsigned long long, double, float); both buffers hold n.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

/// Dropout backward on the GPU: the forward's mask (recomputed from `seed`) applied to `dout`
/// (overwrites `dinp`). dinp, dout: [N], stored in `T`.
pub fn dropout_backward<T: Store>(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    p: f64,
    seed: u64,
) -> Result<(), GpuError> {
    dropout_forward(gpu, dinp, dout, p, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward and backward equal the CPU bit for bit (same mask, same f32 product) for several p
    /// (0, 1 and in between), seeds and sizes, 1 and odd ones included.
    #[test]
    fn dropout_matches_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("dropout_matches_cpu_bitwise") else { return };
        let mut rng = seeded("dropout_matches_cpu_bitwise");
        for n in [1usize, 1000, 100_003] {
            let x = rand_vec(&mut rng, n, -2.0, 2.0);
            let dx = gpu.upload(&x).unwrap();
            for p in [0.0, 0.1, 0.5, 0.9, 1.0] {
                let seed = rng.next_u64();
                let mut want = vec![0.0f32; n];
                super::super::dropout_forward(&mut want, &x, p, seed);
                let mut out = poisoned(gpu, n).unwrap();
                dropout_forward(gpu, &mut out.as_view_mut(), &dx.as_view(), p, seed).unwrap();
                assert_bitwise(&format!("dropout n{n} p{p}"), &gpu.download(&out).unwrap(), &want);
                let mut want_b = vec![0.0f32; n];
                super::super::dropout_backward(&mut want_b, &x, p, seed);
                let mut back = poisoned(gpu, n).unwrap();
                dropout_backward(gpu, &mut back.as_view_mut(), &dx.as_view(), p, seed).unwrap();
                assert_bitwise(&format!("dropout backward n{n} p{p}"), &gpu.download(&back).unwrap(), &want_b);
            }
        }
    }

    /// Half storage: the CPU's mask and f32 product on the stored inputs, rounded once into the storage type,
    /// bit for bit.
    fn half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        for n in [1usize, 100_003] {
            let (dx, x) = upload_as::<T>(gpu, &rand_vec(rng, n, -2.0, 2.0));
            for p in [0.0, 0.3, 1.0] {
                let seed = rng.next_u64();
                let mut want = vec![0.0f32; n];
                super::super::dropout_forward(&mut want, &x, p, seed);
                want.iter_mut().for_each(|v| *v = T::round(*v));
                let mut out = poisoned_as::<T>(gpu, n);
                dropout_forward(gpu, &mut out.as_view_mut(), &dx.as_view(), p, seed).unwrap();
                assert_bitwise(&format!("dropout {} n{n} p{p}", T::KIND.name()), &download_f32(gpu, &out), &want);
            }
        }
    }

    #[test]
    fn dropout_in_half_storage_matches_the_rounded_cpu() {
        let Some(gpu) = gpu_or_skip("dropout_in_half_storage_matches_the_rounded_cpu") else { return };
        let mut rng = seeded("dropout_in_half_storage_matches_the_rounded_cpu");
        half_case::<half::f16>(gpu, &mut rng);
        half_case::<half::bf16>(gpu, &mut rng);
    }
}
