//! Host side of `concat.cu`: the GPU twins of [`concat_forward`](super::concat_forward) and
//! [`concat_backward`](super::concat_backward), one strided block copy per input (bit-identical).

use cudarc::driver::{CudaView, CudaViewMut};

use super::{check_lens, layout, CUDA};
use crate::cuda::store::pick_pair;
use crate::cuda::{Gpu, GpuError, Store};
use crate::store_pairs;

/// Copies `rows` runs of `blk` elements from `src` (run r at `r * src_ld + src_off`) to `dst` (at
/// `r * dst_ld + dst_off`), bit for bit. A `src_ld` of 0 repeats one run into every row (a broadcast).
/// Also the device executor's gather / scatter of token slices (class token, token selection). The source
/// is stored in `X`, the destination in `Y` (f32 or one half type each; between types each element is
/// rounded on store, as a cast). Panics when a run would fall outside either buffer.
#[allow(clippy::too_many_arguments)]
pub fn strided_copy<X: Store, Y: Store>(
    gpu: &Gpu,
    dst: &mut CudaViewMut<Y>,
    src: &CudaView<X>,
    rows: usize,
    blk: usize,
    (dst_ld, dst_off): (usize, usize),
    (src_ld, src_off): (usize, usize),
) -> Result<(), GpuError> {
    if rows * blk == 0 {
        return Ok(());
    }
    assert!((rows - 1) * dst_ld + dst_off + blk <= dst.len(), "concat: destination too small");
    assert!((rows - 1) * src_ld + src_off + blk <= src.len(), "concat: source too small");
    let f = gpu.function(&CUDA, pick_pair::<X, Y>(store_pairs!("strided_copy")))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dst).arg(src).arg(&rows).arg(&blk).arg(&dst_ld).arg(&dst_off).arg(&src_ld).arg(&src_off);
    // SAFETY: (Y*, const X*, size_t x6) for this pair; both extents were checked above.
    unsafe { l.launch(gpu.elementwise(rows * blk)) }?;
    Ok(())
}

/// Concatenates `inputs` along `axis` on the GPU (overwrites `out`); shapes as in the CPU
/// [`concat_forward`](super::concat_forward). Panics with the CPU's message where the CPU returns an error
/// (the graph checks shapes at assembly).
pub fn concat_forward(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    inputs: &[&CudaView<f32>],
    shapes: &[&[usize]],
    axis: usize,
) -> Result<(), GpuError> {
    let (outer, inner, total) = layout("concat_forward", shapes, axis).unwrap_or_else(|e| panic!("{e}"));
    check_lens("concat_forward", inputs.iter().map(|x| x.len()), shapes).unwrap_or_else(|e| panic!("{e}"));
    let row = total * inner;
    assert_eq!(
        out.len(),
        outer * row,
        "concat_forward: out holds {} elements, the result needs {}",
        out.len(),
        outer * row
    );
    let mut off = 0;
    for (x, s) in inputs.iter().zip(shapes) {
        let blk = s[axis] * inner;
        strided_copy(gpu, out, x, outer, blk, (row, off), (blk, 0))?;
        off += blk;
    }
    Ok(())
}

/// Backward of [`concat_forward`] on the GPU: splits `dout` back into `dinputs` (each overwritten).
/// Panics like [`concat_forward`].
pub fn concat_backward(
    gpu: &Gpu,
    dinputs: &mut [&mut CudaViewMut<f32>],
    dout: &CudaView<f32>,
    shapes: &[&[usize]],
    axis: usize,
) -> Result<(), GpuError> {
    let (outer, inner, total) = layout("concat_backward", shapes, axis).unwrap_or_else(|e| panic!("{e}"));
    check_lens("concat_backward", dinputs.iter().map(|x| x.len()), shapes).unwrap_or_else(|e| panic!("{e}"));
    let row = total * inner;
    assert_eq!(
        dout.len(),
        outer * row,
        "concat_backward: dout holds {} elements, the result has {}",
        dout.len(),
        outer * row
    );
    let mut off = 0;
    for (dx, s) in dinputs.iter_mut().zip(shapes) {
        let blk = s[axis] * inner;
        strided_copy(gpu, dx, dout, outer, blk, (blk, 0), (row, off))?;
        off += blk;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Concatenation along the first, a middle and the last axis (an empty piece included), and its
    /// backward, bitwise against the CPU.
    #[test]
    fn concat_matches_cpu_bitwise() {
        let Some(gpu) = gpu_or_skip("concat_matches_cpu_bitwise") else { return };
        let mut rng = seeded("concat_matches_cpu_bitwise");
        let cases: [(&[&[usize]], usize); 3] = [
            (&[&[2, 3], &[5, 3]], 0),
            (&[&[2, 3, 4, 5], &[2, 1, 4, 5], &[2, 0, 4, 5], &[2, 7, 4, 5]], 1),
            (&[&[3, 33], &[3, 1], &[3, 64]], 1),
        ];
        for (shapes, axis) in cases {
            let xs: Vec<Vec<f32>> = shapes.iter().map(|s| rand_vec(&mut rng, s.iter().product(), -1.0, 1.0)).collect();
            let refs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
            let out_shape = super::super::concat_shape(shapes, axis).unwrap();
            let n: usize = out_shape.iter().product();
            let mut want = vec![0.0f32; n];
            super::super::concat_forward(&mut want, &refs, shapes, axis).unwrap();
            // Device buffers: never empty (an empty piece gets a 1-element buffer viewed as empty).
            let devs: Vec<_> =
                xs.iter().map(|x| gpu.upload(if x.is_empty() { &[0.0f32][..] } else { x }).unwrap()).collect();
            let views: Vec<CudaView<f32>> = devs.iter().zip(&xs).map(|(d, x)| d.slice(..x.len())).collect();
            let view_refs: Vec<&CudaView<f32>> = views.iter().collect();
            let mut out = poisoned(gpu, n).unwrap();
            concat_forward(gpu, &mut out.as_view_mut(), &view_refs, shapes, axis).unwrap();
            let what = format!("concat {shapes:?} axis {axis}");
            assert_bitwise(&format!("{what} forward"), &gpu.download(&out).unwrap(), &want);

            let g = rand_vec(&mut rng, n, -1.0, 1.0);
            let mut want_d: Vec<Vec<f32>> = xs.iter().map(|x| vec![0.0f32; x.len()]).collect();
            let mut want_refs: Vec<&mut [f32]> = want_d.iter_mut().map(|x| &mut x[..]).collect();
            super::super::concat_backward(&mut want_refs, &g, shapes, axis).unwrap();
            let dg = gpu.upload(&g).unwrap();
            let mut dbufs: Vec<_> = xs.iter().map(|x| poisoned(gpu, x.len().max(1)).unwrap()).collect();
            let mut dviews: Vec<CudaViewMut<f32>> =
                dbufs.iter_mut().zip(&xs).map(|(d, x)| d.slice_mut(..x.len())).collect();
            let mut drefs: Vec<&mut CudaViewMut<f32>> = dviews.iter_mut().collect();
            concat_backward(gpu, &mut drefs, &dg.as_view(), shapes, axis).unwrap();
            drop(dviews);
            for (i, (d, w)) in dbufs.iter().zip(&want_d).enumerate() {
                assert_bitwise(&format!("{what} backward {i}"), &gpu.download(d).unwrap()[..w.len()], w);
            }
        }
    }

    /// One storage pair of the strided copy: runs gathered with a stride, a broadcast run (source stride 0)
    /// and a scatter into an offset, each element of the `X`-stored source read and rounded once into `Y`.
    fn copy_case<X: TestStore, Y: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let what = format!("strided_copy {} -> {}", X::KIND.name(), Y::KIND.name());
        // (rows, blk, (dst_ld, dst_off), (src_ld, src_off)).
        let cases = [
            (5usize, 7usize, (7usize, 0usize), (20usize, 3usize)),
            (4, 6, (10, 4), (0, 2)),
            (1, 300, (300, 0), (300, 0)),
        ];
        for (rows, blk, (dld, doff), (sld, soff)) in cases {
            let src_len = (rows - 1) * sld + soff + blk;
            let dst_len = (rows - 1) * dld + doff + blk;
            let (d_src, src) = upload_as::<X>(gpu, &rand_vec(rng, src_len, -3.0, 3.0));
            let mut dst = poisoned_as::<Y>(gpu, dst_len);
            strided_copy(gpu, &mut dst.as_view_mut(), &d_src.as_view(), rows, blk, (dld, doff), (sld, soff)).unwrap();
            let got = download_f32(gpu, &dst);
            for r in 0..rows {
                for j in 0..blk {
                    let (g, w) = (got[r * dld + doff + j], Y::round(src[r * sld + soff + j]));
                    assert_eq!(g.to_bits(), w.to_bits(), "{what} rows{rows} blk{blk}: row {r} element {j}");
                }
            }
        }
        eprintln!("{what}: every copied element the stored source rounded once");
    }

    /// The strided copy between storage types: exact within one type, one rounding across (the token ops'
    /// forward and backward under autocast).
    #[test]
    fn strided_copy_in_half_storage_rounds_once() {
        use half::{bf16, f16};
        let Some(gpu) = gpu_or_skip("strided_copy_in_half_storage_rounds_once") else { return };
        let mut rng = seeded("strided_copy_in_half_storage_rounds_once");
        copy_case::<f32, f16>(gpu, &mut rng);
        copy_case::<f16, f32>(gpu, &mut rng);
        copy_case::<f16, f16>(gpu, &mut rng);
        copy_case::<f32, bf16>(gpu, &mut rng);
        copy_case::<bf16, f32>(gpu, &mut rng);
        copy_case::<bf16, bf16>(gpu, &mut rng);
    }
}
