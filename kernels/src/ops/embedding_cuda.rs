//! Host side of `embedding.cu`: the GPU twins of [`embedding_forward`](super::embedding_forward) and
//! [`embedding_backward`](super::embedding_backward) (accumulating, with atomicAdd).

use cudarc::driver::{CudaView, CudaViewMut};

use super::CUDA;
use crate::cuda::{Gpu, GpuError};

/// Embedding forward on the GPU: row `ids[i]` of `table` into row `i` of `out` (overwrites).
///
/// ids: [N], table: [vocab, dim], out: [N, dim]. The ids are not checked on the host (that would need
/// them there); an id outside `[0, vocab)` yields a NaN row instead of the CPU's error.
pub fn embedding_forward(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    ids: &CudaView<i64>,
    table: &CudaView<f32>,
    vocab: usize,
    dim: usize,
) -> Result<(), GpuError> {
    let n = ids.len();
    assert_eq!(table.len(), vocab * dim, "embedding_forward: table must be [vocab, dim]");
    assert_eq!(out.len(), n * dim, "embedding_forward: out must be [N, dim]");
    if n * dim == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, "embedding_forward_f32")?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(ids).arg(table).arg(&n).arg(&vocab).arg(&dim);
    // SAFETY: (float*, const long long*, const float*, size_t x3); out holds n*dim, ids n, table vocab*dim
    // elements, and the kernel only reads table rows of in-range ids.
    unsafe { l.launch(gpu.elementwise(n * dim)) }?;
    Ok(())
}

/// Embedding backward on the GPU: `dtable[ids[i]] += dout[i]` (accumulates; out-of-range ids skipped).
/// dtable: [vocab, dim], dout: [N, dim], ids: [N].
pub fn embedding_backward(
    gpu: &Gpu,
    dtable: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    ids: &CudaView<i64>,
    vocab: usize,
    dim: usize,
) -> Result<(), GpuError> {
    let n = ids.len();
    assert_eq!(dtable.len(), vocab * dim, "embedding_backward: dtable must be [vocab, dim]");
    assert_eq!(dout.len(), n * dim, "embedding_backward: dout must be [N, dim]");
    if n * dim == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, "embedding_backward_f32")?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dtable).arg(dout).arg(ids).arg(&n).arg(&vocab).arg(&dim);
    // SAFETY: (float*, const float*, const long long*, size_t x3); lengths checked above.
    unsafe { l.launch(gpu.elementwise(n * dim)) }?;
    Ok(())
}

/// Token ids from their float encoding on the GPU (overwrites `ids`): the twin of
/// [`ids_from_f32`](super::ids_from_f32), Rust's `f32 as i64` (truncation, saturation, NaN to 0). ids, x: [N].
pub fn ids_from_f32(gpu: &Gpu, ids: &mut CudaViewMut<i64>, x: &CudaView<f32>) -> Result<(), GpuError> {
    let n = x.len();
    assert_eq!(ids.len(), n, "ids_from_f32: ids and x differ in length");
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CUDA, "embedding_ids_from_f32")?;
    let mut l = gpu.launch_builder(&f);
    l.arg(ids).arg(x).arg(&n);
    // SAFETY: (long long*, const float*, size_t); both buffers hold n elements.
    unsafe { l.launch(gpu.elementwise(n)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Forward is bitwise (a copy); the backward accumulates onto a non-zero gradient with repeated ids
    /// (~20 hits per row), whose atomic additions run in any order: a sum of k terms of |x| <= 1 (partial
    /// sums <= k + 1) reordered moves by at most ~k * (k + 1) * 6e-8 = 2.5e-5 for k = 20, so atol 5e-5 +
    /// rtol 1e-5. One position and many, odd widths; an out-of-range id gives a NaN row.
    #[test]
    fn embedding_matches_cpu() {
        let Some(gpu) = gpu_or_skip("embedding_matches_cpu") else { return };
        let mut rng = seeded("embedding_matches_cpu");
        for &(n, vocab, dim) in &[(1usize, 5usize, 3usize), (257, 7, 33), (1000, 50, 1)] {
            let table = rand_vec(&mut rng, vocab * dim, -1.0, 1.0);
            let ids: Vec<i64> = (0..n).map(|_| rng.below(vocab as u64) as i64).collect();
            let dout = rand_vec(&mut rng, n * dim, -1.0, 1.0);
            let dt0 = rand_vec(&mut rng, vocab * dim, -1.0, 1.0);
            let mut want = vec![0.0f32; n * dim];
            super::super::embedding_forward(&mut want, &ids, &table, vocab, dim).unwrap();
            let mut want_dt = dt0.clone();
            super::super::embedding_backward(&mut want_dt, &dout, &ids, vocab, dim);
            let (dtab, dids, dgo) =
                (gpu.upload(&table).unwrap(), gpu.upload(&ids).unwrap(), gpu.upload(&dout).unwrap());
            let mut out = poisoned(gpu, n * dim).unwrap();
            embedding_forward(gpu, &mut out.as_view_mut(), &dids.as_view(), &dtab.as_view(), vocab, dim).unwrap();
            assert_bitwise(&format!("embedding n{n} v{vocab} d{dim} forward"), &gpu.download(&out).unwrap(), &want);
            let mut dt = gpu.upload(&dt0).unwrap();
            embedding_backward(gpu, &mut dt.as_view_mut(), &dgo.as_view(), &dids.as_view(), vocab, dim).unwrap();
            assert_close(
                &format!("embedding n{n} v{vocab} d{dim} backward"),
                &gpu.download(&dt).unwrap(),
                &want_dt,
                5e-5,
                1e-5,
            );
        }
        let (dtab, dids) = (gpu.upload(&[1.0f32, 2.0, 3.0, 4.0]).unwrap(), gpu.upload(&[1i64, 2]).unwrap());
        let mut out = poisoned(gpu, 4).unwrap();
        embedding_forward(gpu, &mut out.as_view_mut(), &dids.as_view(), &dtab.as_view(), 2, 2).unwrap();
        let got = gpu.download(&out).unwrap();
        assert_eq!(&got[..2], &[3.0, 4.0]);
        assert!(got[2].is_nan() && got[3].is_nan(), "an out-of-range id must give a NaN row: {got:?}");
    }

    /// The float-to-id conversion equals Rust's `as` exactly (integers as stored in a batch, fractions,
    /// negatives, NaN, values past the i64 range), over an odd length with a sentinel-filled output.
    #[test]
    fn ids_from_f32_matches_cpu() {
        let Some(gpu) = gpu_or_skip("ids_from_f32_matches_cpu") else { return };
        let mut rng = seeded("ids_from_f32_matches_cpu");
        let mut x: Vec<f32> = (0..1001).map(|_| rng.below(50_000) as f32).collect();
        x.extend_from_slice(&[0.0, -0.0, 2.5, -2.5, 0.999, f32::NAN, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY]);
        x.extend(rand_vec(&mut rng, 37, -100.0, 100.0));
        let mut want = vec![0i64; x.len()];
        super::super::ids_from_f32(&mut want, &x);
        let dx = gpu.upload(&x).unwrap();
        let mut ids = gpu.upload(&vec![-12345i64; x.len()]).unwrap();
        ids_from_f32(gpu, &mut ids.as_view_mut(), &dx.as_view()).unwrap();
        assert_eq!(gpu.download(&ids).unwrap(), want, "ids differ from `as i64`");
    }
}
