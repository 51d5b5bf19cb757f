//! Host side of `conv2d.cu`: the GPU twins of [`conv2d_forward`](super::conv2d_forward) and
//! [`conv2d_backward`](super::conv2d_backward), lowered to cuBLAS as on the CPU.
//!
//! The caller's `col` scratch (at least [`Conv2dGeom::col_len`](super::Conv2dGeom::col_len) elements, as on
//! the CPU) holds the column matrices of `S = col.len() / (Kg*P)` samples of one group at a time (at least
//! min(N, 8)), so each group's product is one strided-batched GEMM over those samples with the weight shared
//! (stride 0):
//! - forward: im2col, then `out_g[s] = W_g @ col[s]`; then the bias is added;
//! - weight gradient: im2col, then `dW_g += sum_s dout_g[s] @ col[s]^T`: one strided-batched GEMM writes the
//!   per-sample products into scratch, and the column sums of `bias_add.cu` add them over samples, chunks of
//!   samples in parallel and the chunk sums in order (`weight_grad`);
//! - input gradient: `dcol[s] = W_g^T @ dout_g[s]` (batched), then col2im gathers it into `dinp` (overwrite);
//! - bias gradient: each (sample, channel) row of pixels summed by a warp, then those sums added per channel
//!   by the same column sums (`bias_grad`).
//!
//! Every reduction runs over a grid fixed by the shape, so results are deterministic.
//!
//! 1x1 stride-1 unpadded convolutions skip im2col / col2im: the input (or its gradient) is the column
//! matrix.
//!
//! Under autocast the activations may be stored in half precision (the input and its gradient in `X`, the
//! output and its gradient in `Y`), and the weight is the autocast copy in the half type `W`. The column
//! matrices then hold `W`'s type (the caller's f32 `col` scratch is reinterpreted: a half column matrix takes
//! half its bytes): an f32 input (the image, or a value an f32-only op wrote) is rounded as im2col writes its
//! columns, once, where the product would otherwise round a copy of the f32 columns in the forward and again
//! in the weight gradient. The products take half operands
//! ([`gemm_general`](crate::ops::gemm::cuda::gemm_general)). Weight gradients stay f32.

use cudarc::driver::{CudaView, CudaViewMut};

use super::{Conv2dGeom, CUDA};
use crate::cuda::launch::row_launch;
use crate::cuda::store::pick_pair;
use crate::cuda::{Gpu, GpuError, Store, StoreKind};
use crate::ops::bias_add::cuda::{column_scratch_len, column_sum_of};
use crate::ops::gemm::cuda::gemm_strided_batched;

/// The geometry as the kernels read it (`struct ConvDims` in conv2d.cu: same fields, same order).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConvDims {
    c: i64,
    h: i64,
    w: i64,
    oc: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    dh: i64,
    dw: i64,
    oh: i64,
    ow: i64,
    cg: i64,
    kg: i64,
    p: i64,
}

// Passed by value: plain `repr(C)` i64 fields, the layout of `struct ConvDims` in conv2d.cu.
crate::cuda::launch::value_arg!(ConvDims);

/// Sizes of one convolution, derived once per call.
struct Plan {
    dims: ConvDims,
    /// C*H*W and OC*P: one sample of the input and of the output.
    in_len: usize,
    out_len: usize,
    /// Cg*H*W and OCg*P: one group of one sample.
    gin: usize,
    gout: usize,
    ocg: usize,
    kg: usize,
    p: usize,
    /// Samples whose column matrices fit `col` at once.
    chunk: usize,
    pointwise: bool,
}

fn plan(g: &Conv2dGeom, col_len: usize, what: &str) -> Plan {
    let d = g.dims_or_panic();
    assert!(col_len >= g.col_len(), "{what}: col must hold at least col_len() = {} elements", g.col_len());
    let i = |v: usize| v as i64;
    let dims = ConvDims {
        c: i(g.c),
        h: i(g.h),
        w: i(g.w),
        oc: i(g.oc),
        kh: i(g.kh),
        kw: i(g.kw),
        sh: i(g.stride.0),
        sw: i(g.stride.1),
        ph: i(g.padding.0),
        pw: i(g.padding.1),
        dh: i(g.dilation.0),
        dw: i(g.dilation.1),
        oh: i(d.oh),
        ow: i(d.ow),
        cg: i(d.cg),
        kg: i(d.kg),
        p: i(d.p),
    };
    Plan {
        dims,
        in_len: g.c * g.h * g.w,
        out_len: g.oc * d.p,
        gin: d.cg * g.h * g.w,
        gout: d.ocg * d.p,
        ocg: d.ocg,
        kg: d.kg,
        p: d.p,
        // The GPU's columns of one sample and group are kg * p (the CPU's slot also holds Winograd buffers, so
        // sizing by it split a batch that fits into several chunks, and more products).
        chunk: (col_len / (d.kg * d.p).max(1)).clamp(1, g.n.max(1)),
        pointwise: g.is_pointwise(),
    }
}

/// The im2col entry points by (input, column) storage type.
const IM2COL: [&str; 7] = crate::store_pairs!("conv_im2col");
/// The col2im entry points by the input gradient's storage type (the column gradients are f32).
const COL2IM: [&str; 3] = ["conv_col2im_f32", "conv_col2im_f16", "conv_col2im_bf16"];

/// The caller's f32 column scratch as column matrices of type `T` (as many elements: a half type uses half
/// the bytes).
fn col_as<'a, T: Store>(col: &'a mut CudaViewMut<'_, f32>) -> CudaViewMut<'a, T> {
    let len = col.len();
    // SAFETY: the scratch is plain device memory the call owns; T is at most 4 bytes, so `len` elements of T
    // fit in `len` f32s, and every element is written (im2col, a product) before it is read.
    unsafe { col.transmute_mut::<T>(len) }.expect("T is no wider than f32")
}

/// Launches `kernel` (im2col or col2im) over `elems` elements for `samples` samples of group `gi`.
#[allow(clippy::too_many_arguments)]
fn lower<D: Store, S: Store>(
    gpu: &Gpu,
    kernel: &'static str,
    dst: &mut CudaViewMut<D>,
    src: &CudaView<S>,
    samples: usize,
    gi: usize,
    pl: &Plan,
    elems: usize,
) -> Result<(), GpuError> {
    let f = gpu.function(&CUDA, kernel)?;
    let gi = gi as i32;
    let mut l = gpu.launch_builder(&f);
    l.arg(dst).arg(src).arg(&samples).arg(&gi).arg(&pl.dims);
    // SAFETY: (D*, const S*, size_t, int, ConvDims) as declared; the caller sliced dst and src to
    // start at the chunk's first sample, and they hold the `samples` samples the kernel indexes.
    unsafe { l.launch(gpu.elementwise(elems)) }?;
    Ok(())
}

/// Convolution forward on the GPU (overwrites `out`).
///
/// out: [N, OC, OH, OW], inp: [N, C, H, W], weight: [OC, C/groups, KH, KW], bias: `[OC]` or None, col:
/// scratch of at least [`Conv2dGeom::col_len`](super::Conv2dGeom::col_len) elements (clobbered). Panics on
/// an invalid geometry or wrong lengths, as the CPU does. Storage types as in the module's notes.
pub fn conv2d_forward<X: Store, Y: Store, W: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    bias: Option<&CudaView<f32>>,
    col: &mut CudaViewMut<f32>,
    g: &Conv2dGeom,
) -> Result<(), GpuError> {
    if columns_in_weight_type::<X, W>() {
        forward_lowered::<X, Y, W, W>(gpu, out, inp, weight, bias, col, g)
    } else {
        forward_lowered::<X, Y, W, X>(gpu, out, inp, weight, bias, col, g)
    }
}

/// Whether the column matrices take the weight's type rather than the input's: a half weight (the autocast
/// copy) beside an input of another type (f32), which im2col then rounds into the products' type.
fn columns_in_weight_type<X: Store, W: Store>() -> bool {
    W::KIND != StoreKind::F32 && X::KIND != W::KIND
}

/// [`conv2d_forward`] with the column matrices in `C`.
fn forward_lowered<X: Store, Y: Store, W: Store, C: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<Y>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    bias: Option<&CudaView<f32>>,
    col: &mut CudaViewMut<f32>,
    g: &Conv2dGeom,
) -> Result<(), GpuError> {
    let pl = plan(g, col.len(), "conv2d_forward");
    let col = &mut col_as::<C>(col);
    assert_eq!(out.len(), g.n * pl.out_len, "conv2d_forward: out must be [N, OC, OH, OW]");
    assert_eq!(inp.len(), g.n * pl.in_len, "conv2d_forward: inp must be [N, C, H, W]");
    assert_eq!(weight.len(), g.oc * pl.kg, "conv2d_forward: weight must be [OC, C/groups, KH, KW]");
    if g.n == 0 {
        return Ok(());
    }
    let wg = pl.ocg * pl.kg;
    for n0 in (0..g.n).step_by(pl.chunk) {
        let s = pl.chunk.min(g.n - n0);
        for gi in 0..g.groups {
            let w_g = weight.slice(gi * wg..(gi + 1) * wg);
            let mut o = out.slice_mut(n0 * pl.out_len + gi * pl.gout..);
            if pl.pointwise {
                let x = inp.slice(n0 * pl.in_len + gi * pl.gin..);
                gemm_strided_batched(
                    gpu, s, pl.ocg, pl.p, pl.kg, &w_g, false, 0, &x, false, pl.in_len, &mut o, pl.out_len, 1.0, 0.0,
                )?;
            } else {
                let x = inp.slice(n0 * pl.in_len..);
                lower(gpu, pick_pair::<X, C>(IM2COL), col, &x, s, gi, &pl, s * pl.kg * pl.p)?;
                let cv = col.slice(..);
                gemm_strided_batched(
                    gpu,
                    s,
                    pl.ocg,
                    pl.p,
                    pl.kg,
                    &w_g,
                    false,
                    0,
                    &cv,
                    false,
                    pl.kg * pl.p,
                    &mut o,
                    pl.out_len,
                    1.0,
                    0.0,
                )?;
            }
        }
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.oc, "conv2d_forward: bias must be [OC]");
        let total = out.len();
        let f = gpu.function(&CUDA, Y::pick(["conv_bias_add_f32", "conv_bias_add_f16", "conv_bias_add_bf16"]))?;
        let mut l = gpu.launch_builder(&f);
        l.arg(out).arg(bias).arg(&total).arg(&g.oc).arg(&pl.p);
        // SAFETY: (T*, const float*, size_t, size_t, size_t); out holds total = N*OC*P, bias OC elements.
        unsafe { l.launch(gpu.elementwise(total)) }?;
    }
    Ok(())
}

/// Convolution backward on the GPU.
///
/// dout: [N, OC, OH, OW], inp: [N, C, H, W], weight: [OC, C/groups, KH, KW]; dinp: [N, C, H, W]
/// (overwritten; None when not needed), dweight (accumulated `+=`), dbias: `[OC]` (accumulated; None
/// without a bias), col: scratch of at least [`Conv2dGeom::col_len`](super::Conv2dGeom::col_len) elements.
/// Storage types as in the module's notes (dinp in its input's type).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<D: Store, X: Store, W: Store>(
    gpu: &Gpu,
    dinp: Option<&mut CudaViewMut<X>>,
    dweight: &mut CudaViewMut<f32>,
    dbias: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<D>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    col: &mut CudaViewMut<f32>,
    g: &Conv2dGeom,
) -> Result<(), GpuError> {
    if columns_in_weight_type::<X, W>() {
        conv2d_backward_capped::<D, X, W, W>(gpu, dinp, dweight, dbias, dout, inp, weight, col, g, PARTIAL_CAP)
    } else {
        conv2d_backward_capped::<D, X, W, X>(gpu, dinp, dweight, dbias, dout, inp, weight, col, g, PARTIAL_CAP)
    }
}

/// Most elements of per-sample weight-gradient products held at once (64 MiB of scratch); more samples
/// are summed in several rounds.
const PARTIAL_CAP: usize = 16 << 20;

/// `dw += sum_i go[i] @ x[i]^T` over `s` samples: go[i] is `[OCg, P]` at `i * go_stride`, x[i] is `[Kg, P]`
/// at `i * x_stride`. One strided-batched product writes the per-sample products into the device scratch
/// (at most `cap` elements: rounds of samples when they do not fit), and the column sums over `[items, wg]`
/// add them to `dw` (chunks of samples in parallel, the chunk sums in order): a few launches where a product
/// per sample made `s`. (A thread per weight summing every sample, as before, ran 18,432 threads over 512
/// dependent loads each for W2's second layer, and two blocks for its first.)
fn weight_grad<D: Store, X: Store>(
    gpu: &Gpu,
    dw: &mut CudaViewMut<f32>,
    (go, go_stride): (&CudaView<D>, usize),
    (x, x_stride): (&CudaView<X>, usize),
    s: usize,
    pl: &Plan,
    cap: usize,
) -> Result<(), GpuError> {
    let wg = pl.ocg * pl.kg;
    if s == 1 {
        return gemm_strided_batched(gpu, 1, pl.ocg, pl.kg, pl.p, go, false, 0, x, true, 0, dw, 0, 1.0, 1.0);
    }
    let round = (cap / wg.max(1)).clamp(1, s);
    for i0 in (0..s).step_by(round) {
        let items = round.min(s - i0);
        let (go_i, x_i) = (go.slice(i0 * go_stride..), x.slice(i0 * x_stride..));
        // One scratch: the per-sample products, then the column sums' chunk rows.
        let sums_len = column_scratch_len(items, wg);
        gpu.with_scratch(items * wg + sums_len, |scratch| {
            let (mut parts, mut sums) = scratch.split_at_mut(items * wg);
            gemm_strided_batched(
                gpu, items, pl.ocg, pl.kg, pl.p, &go_i, false, go_stride, &x_i, true, x_stride, &mut parts, wg, 1.0,
                0.0,
            )?;
            column_sum_of(gpu, dw, &parts.as_view(), items, wg, (sums_len > 0).then_some(&mut sums))
        })?;
    }
    Ok(())
}

/// `dbias[o] += sum over samples and pixels of dout[n, o, p]`: the sum of each (sample, channel) row of P
/// pixels (`conv_bias_rowsum`), then those [N, OC] sums added per channel by the column sums of `bias_add.cu`.
/// Both passes spread over the whole GPU and run in an order fixed by the shape: deterministic.
fn bias_grad<D: Store>(
    gpu: &Gpu,
    dbias: &mut CudaViewMut<f32>,
    dout: &CudaView<D>,
    g: &Conv2dGeom,
    p: usize,
) -> Result<(), GpuError> {
    let rows = g.n * g.oc;
    let sums_len = column_scratch_len(g.n, g.oc);
    let (warp, cfg) = row_launch(rows, p);
    let names = if warp {
        ["conv_bias_rowsum_warp_f32", "conv_bias_rowsum_warp_f16", "conv_bias_rowsum_warp_bf16"]
    } else {
        ["conv_bias_rowsum_f32", "conv_bias_rowsum_f16", "conv_bias_rowsum_bf16"]
    };
    let f = gpu.function(&CUDA, D::pick(names))?;
    gpu.with_scratch(rows + sums_len, |scratch| {
        let (mut row_sums, mut sums) = scratch.split_at_mut(rows);
        let mut l = gpu.launch_builder(&f);
        l.arg(&mut row_sums).arg(dout).arg(&rows).arg(&p);
        // SAFETY: (float*, const T*, size_t, size_t); row_sums holds N*OC, dout N*OC*P elements.
        unsafe { l.launch(cfg) }?;
        column_sum_of(gpu, dbias, &row_sums.as_view(), g.n, g.oc, (sums_len > 0).then_some(&mut sums))
    })
}

/// [`conv2d_backward`] with the column matrices in `C` and the weight-gradient scratch capped at
/// `partial_cap` elements (tests force several rounds with a small cap).
#[allow(clippy::too_many_arguments)]
fn conv2d_backward_capped<D: Store, X: Store, W: Store, C: Store>(
    gpu: &Gpu,
    dinp: Option<&mut CudaViewMut<X>>,
    dweight: &mut CudaViewMut<f32>,
    dbias: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<D>,
    inp: &CudaView<X>,
    weight: &CudaView<W>,
    col: &mut CudaViewMut<f32>,
    g: &Conv2dGeom,
    partial_cap: usize,
) -> Result<(), GpuError> {
    let pl = plan(g, col.len(), "conv2d_backward");
    assert_eq!(dout.len(), g.n * pl.out_len, "conv2d_backward: dout must be [N, OC, OH, OW]");
    assert_eq!(inp.len(), g.n * pl.in_len, "conv2d_backward: inp must be [N, C, H, W]");
    assert_eq!(weight.len(), g.oc * pl.kg, "conv2d_backward: weight must be [OC, C/groups, KH, KW]");
    assert_eq!(dweight.len(), g.oc * pl.kg, "conv2d_backward: dweight must be [OC, C/groups, KH, KW]");
    if let Some(dinp) = &dinp {
        assert_eq!(dinp.len(), g.n * pl.in_len, "conv2d_backward: dinp must be [N, C, H, W]");
    }
    if let Some(dbias) = &dbias {
        assert_eq!(dbias.len(), g.oc, "conv2d_backward: dbias must be [OC]");
    }
    if g.n == 0 {
        return Ok(());
    }
    if let Some(dbias) = dbias {
        bias_grad(gpu, dbias, dout, g, pl.p)?;
    }
    let wg = pl.ocg * pl.kg;
    let mut dinp = dinp;
    for n0 in (0..g.n).step_by(pl.chunk) {
        let s = pl.chunk.min(g.n - n0);
        for gi in 0..g.groups {
            // Weight gradient: dW_g += sum_i dout_g[i] @ col[i]^T, the columns in the products' type.
            let mut dw_g = dweight.slice_mut(gi * wg..(gi + 1) * wg);
            let go = dout.slice(n0 * pl.out_len + gi * pl.gout..);
            if pl.pointwise {
                let x = inp.slice(n0 * pl.in_len + gi * pl.gin..);
                weight_grad(gpu, &mut dw_g, (&go, pl.out_len), (&x, pl.in_len), s, &pl, partial_cap)?;
            } else {
                let mut cx = col_as::<C>(col);
                let x = inp.slice(n0 * pl.in_len..);
                lower(gpu, pick_pair::<X, C>(IM2COL), &mut cx, &x, s, gi, &pl, s * pl.kg * pl.p)?;
                let x = cx.slice(..);
                weight_grad(gpu, &mut dw_g, (&go, pl.out_len), (&x, pl.kg * pl.p), s, &pl, partial_cap)?;
            }
            // Input gradient: dcol[i] = W_g^T @ dout_g[i] (batched), scattered back by col2im.
            if let Some(dinp) = dinp.as_deref_mut() {
                let w_g = weight.slice(gi * wg..(gi + 1) * wg);
                let go = dout.slice(n0 * pl.out_len + gi * pl.gout..);
                if pl.pointwise {
                    let mut dx = dinp.slice_mut(n0 * pl.in_len + gi * pl.gin..);
                    gemm_strided_batched(
                        gpu, s, pl.kg, pl.p, pl.ocg, &w_g, true, 0, &go, false, pl.out_len, &mut dx, pl.in_len, 1.0,
                        0.0,
                    )?;
                } else {
                    gemm_strided_batched(
                        gpu,
                        s,
                        pl.kg,
                        pl.p,
                        pl.ocg,
                        &w_g,
                        true,
                        0,
                        &go,
                        false,
                        pl.out_len,
                        col,
                        pl.kg * pl.p,
                        1.0,
                        0.0,
                    )?;
                    let cv = col.slice(..);
                    let mut dx = dinp.slice_mut(n0 * pl.in_len..);
                    lower(gpu, X::pick(COL2IM), &mut dx, &cv, s, gi, &pl, s * pl.gin)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        oc: usize,
        k: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
        groups: usize,
    ) -> Conv2dGeom {
        Conv2dGeom { n, c, h, w, oc, kh: k.0, kw: k.1, stride, padding, dilation, groups }
    }

    /// Forward and backward (dinp overwritten, dweight / dbias accumulated onto non-zero values) against
    /// the CPU for 3x3 "same", strided + padded, dilated, grouped, depthwise, pointwise (1x1) and
    /// rectangular kernels; batch 1, small batches and 11 samples (more than one chunk of `col`).
    /// Tolerance: sums of Kg (<= 72) or N*P (<= 130*36) f32 products in different orders (cuBLAS may use
    /// FMA): error ~ sqrt(terms) * 6e-8 * sum|terms| < 1e-4 here, so atol 2e-4 + rtol 1e-4; a wrong tap
    /// or index is off by O(0.1).
    #[test]
    fn conv2d_matches_cpu() {
        let Some(gpu) = gpu_or_skip("conv2d_matches_cpu") else { return };
        let mut rng = seeded("conv2d_matches_cpu");
        let cases = [
            geom(1, 3, 7, 7, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
            geom(2, 4, 9, 8, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1),
            geom(3, 2, 10, 11, 3, (3, 2), (1, 2), (2, 0), (2, 1), 1),
            geom(2, 6, 7, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2),
            geom(3, 4, 6, 6, 8, (3, 3), (2, 1), (1, 1), (1, 1), 4),
            geom(11, 8, 5, 6, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),
            geom(11, 3, 8, 7, 4, (5, 5), (2, 2), (2, 2), (1, 1), 1),
            // Rows of more than 1024 pixels: the bias row sums take a block per row.
            geom(2, 1, 33, 33, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1),
            // More than 64 samples: the bias and weight gradients' column sums run in several chunks.
            geom(130, 2, 6, 6, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1),
        ];
        for g in cases {
            let (oh, ow) = g.out_hw().unwrap();
            let (in_len, out_len, wlen) =
                (g.n * g.c * g.h * g.w, g.n * g.oc * oh * ow, g.oc * g.c / g.groups * g.kh * g.kw);
            let x = rand_vec(&mut rng, in_len, -1.0, 1.0);
            let w = rand_vec(&mut rng, wlen, -1.0, 1.0);
            let bias = rand_vec(&mut rng, g.oc, -1.0, 1.0);
            let dout = rand_vec(&mut rng, out_len, -1.0, 1.0);
            let dw0 = rand_vec(&mut rng, wlen, -1.0, 1.0);
            let db0 = rand_vec(&mut rng, g.oc, -1.0, 1.0);
            let mut col = vec![0.0f32; g.col_len()];
            let mut want = vec![0.0f32; out_len];
            super::super::conv2d_forward(&mut want, &x, &w, Some(&bias), &mut col, &g);
            let (mut want_dx, mut want_dw, mut want_db) = (vec![0.0f32; in_len], dw0.clone(), db0.clone());
            super::super::conv2d_backward(
                Some(&mut want_dx),
                &mut want_dw,
                Some(&mut want_db),
                &dout,
                &x,
                &w,
                &mut col,
                &g,
            );

            let (dx_in, dw_in, db_in, dgo) = (
                gpu.upload(&x).unwrap(),
                gpu.upload(&w).unwrap(),
                gpu.upload(&bias).unwrap(),
                gpu.upload(&dout).unwrap(),
            );
            let mut dcol = poisoned(gpu, g.col_len()).unwrap();
            let mut out = poisoned(gpu, out_len).unwrap();
            let bv = db_in.as_view();
            conv2d_forward(
                gpu,
                &mut out.as_view_mut(),
                &dx_in.as_view(),
                &dw_in.as_view(),
                Some(&bv),
                &mut dcol.as_view_mut(),
                &g,
            )
            .unwrap();
            let what = format!("conv2d {g:?}");
            assert_close(&format!("{what} forward"), &gpu.download(&out).unwrap(), &want, 2e-4, 1e-4);

            // The backward with the smallest column scratch (one sample per round), and with the whole batch's
            // columns and a weight-gradient scratch of two samples (several summing rounds, the last one short
            // for odd batches).
            let d = g.dims_or_panic();
            let batch_col = g.col_len().max(g.n * d.kg * d.p);
            for (col_len, cap) in [(g.col_len(), PARTIAL_CAP), (batch_col, 2 * d.ocg * d.kg)] {
                let mut dcol = poisoned(gpu, col_len).unwrap();
                let mut dx = poisoned(gpu, in_len).unwrap();
                let (mut dw, mut db) = (gpu.upload(&dw0).unwrap(), gpu.upload(&db0).unwrap());
                let (mut dxv, mut dbv) = (dx.as_view_mut(), db.as_view_mut());
                conv2d_backward_capped::<f32, f32, f32, f32>(
                    gpu,
                    Some(&mut dxv),
                    &mut dw.as_view_mut(),
                    Some(&mut dbv),
                    &dgo.as_view(),
                    &dx_in.as_view(),
                    &dw_in.as_view(),
                    &mut dcol.as_view_mut(),
                    &g,
                    cap,
                )
                .unwrap();
                let what = format!("{what} col {col_len} cap {cap}");
                assert_close(&format!("{what} dinp"), &gpu.download(&dx).unwrap(), &want_dx, 2e-4, 1e-4);
                assert_close(&format!("{what} dweight"), &gpu.download(&dw).unwrap(), &want_dw, 2e-4, 1e-4);
                assert_close(&format!("{what} dbias"), &gpu.download(&db).unwrap(), &want_db, 2e-4, 1e-4);
            }
        }
    }

    /// One storage combination under autocast: input (and its gradient) in `X`, output (and its gradient) in
    /// `Y`, the weight (the autocast copy) and the products in the half type `H`. Reference: the CPU
    /// convolution on the stored input and gradient and the weight rounded into `H` (their products are exact in f32), rounded where the kernels store:
    /// the forward's product and its sum with the bias, the input gradient. Tolerance: one unit in the last
    /// place of `H` (f32 sums in another order may cross a rounding boundary) plus 1e-4, for the forward one
    /// of the product's and one of the output's (`assert_within_two_roundings`); the f32 weight and bias
    /// gradients as in `conv2d_matches_cpu`.
    fn half_case<X: TestStore, Y: TestStore, H: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng, g: Conv2dGeom) {
        let ulp = if H::KIND == crate::cuda::StoreKind::F16 { 1.0 / 1024.0 } else { 1.0 / 128.0 };
        gpu.set_matmul_precision(match H::KIND {
            crate::cuda::StoreKind::F16 => crate::cuda::MatmulPrecision::F16,
            _ => crate::cuda::MatmulPrecision::Bf16,
        });
        let (oh, ow) = g.out_hw().unwrap();
        let (in_len, out_len, wlen) =
            (g.n * g.c * g.h * g.w, g.n * g.oc * oh * ow, g.oc * g.c / g.groups * g.kh * g.kw);
        let (dx_in, x) = upload_as::<X>(gpu, &rand_vec(rng, in_len, -1.0, 1.0));
        let (dgo, dout) = upload_as::<Y>(gpu, &rand_vec(rng, out_len, -1.0, 1.0));
        let w = rand_vec(rng, wlen, -1.0, 1.0);
        let bias = rand_vec(rng, g.oc, -1.0, 1.0);
        let h = |v: &[f32]| v.iter().map(|&e| H::round(e)).collect::<Vec<f32>>();
        let (x_h, w_h, dout_h) = (h(&x), h(&w), h(&dout));
        let mut col = vec![0.0f32; g.col_len()];
        let mut prod = vec![0.0f32; out_len];
        super::super::conv2d_forward(&mut prod, &x_h, &w_h, None, &mut col, &g);
        let p = oh * ow;
        let want: Vec<f32> =
            prod.iter().enumerate().map(|(i, &v)| Y::round(Y::round(v) + bias[(i / p) % g.oc])).collect();
        let (mut want_dx, mut want_dw) = (vec![0.0f32; in_len], vec![0.0f32; wlen]);
        super::super::conv2d_backward(Some(&mut want_dx), &mut want_dw, None, &dout_h, &x_h, &w_h, &mut col, &g);
        want_dx.iter_mut().for_each(|v| *v = X::round(*v));
        // The bias gradient sums the stored output gradient (not rounded into H: no product reads it).
        let want_db: Vec<f32> = (0..g.oc)
            .map(|o| {
                (0..g.n).map(|s| (0..p).map(|q| f64::from(dout[(s * g.oc + o) * p + q])).sum::<f64>()).sum::<f64>()
                    as f32
            })
            .collect();

        // The weight in H, as the executor's autocast copy holds it: an f32 input is then rounded into half
        // columns by im2col.
        let ((dw_in, _), db_in) = (upload_as::<H>(gpu, &w), gpu.upload(&bias).unwrap());
        let mut dcol = poisoned(gpu, g.col_len()).unwrap();
        let mut out = poisoned_as::<Y>(gpu, out_len);
        let bv = db_in.as_view();
        conv2d_forward(
            gpu,
            &mut out.as_view_mut(),
            &dx_in.as_view(),
            &dw_in.as_view(),
            Some(&bv),
            &mut dcol.as_view_mut(),
            &g,
        )
        .unwrap();
        let what = format!("conv2d {} -> {} {g:?}", X::KIND.name(), Y::KIND.name());
        assert_within_two_roundings(&format!("{what} forward"), &download_f32(gpu, &out), &want, &prod, ulp);

        let mut dx = poisoned_as::<X>(gpu, in_len);
        let (mut dw, mut db) = (gpu.upload(&vec![0.0f32; wlen]).unwrap(), gpu.upload(&vec![0.0f32; g.oc]).unwrap());
        let (mut dxv, mut dbv) = (dx.as_view_mut(), db.as_view_mut());
        conv2d_backward(
            gpu,
            Some(&mut dxv),
            &mut dw.as_view_mut(),
            Some(&mut dbv),
            &dgo.as_view(),
            &dx_in.as_view(),
            &dw_in.as_view(),
            &mut dcol.as_view_mut(),
            &g,
        )
        .unwrap();
        assert_close(&format!("{what} dinp"), &download_f32(gpu, &dx), &want_dx, 1e-4, ulp);
        assert_close(&format!("{what} dweight"), &gpu.download(&dw).unwrap(), &want_dw, 2e-4, 1e-4);
        assert_close(&format!("{what} dbias"), &gpu.download(&db).unwrap(), &want_db, 2e-4, 1e-4);
    }

    /// Autocast storage: half in and out, and the mixed ends (f32 input to a half output, half input to an
    /// f32 output), f16 and bf16, on a padded 3x3, a strided grouped and a pointwise convolution.
    #[test]
    fn conv2d_in_half_storage_matches_the_rounded_reference() {
        if gpu_or_skip("conv2d_in_half_storage_matches_the_rounded_reference").is_none() {
            return;
        }
        // Its own device handle, its products autocast as a run's are (the precision is per device, and the
        // other tests share one): the all-f32 products of a mixed layer round their inputs too.
        let gpu = &Gpu::open(0).unwrap();
        let mut rng = seeded("conv2d_in_half_storage_matches_the_rounded_reference");
        for g in [
            geom(3, 4, 9, 8, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
            geom(3, 4, 6, 6, 8, (3, 3), (2, 1), (1, 1), (1, 1), 2),
            geom(5, 8, 5, 6, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),
        ] {
            for_each_half_pair!(products: half_case(gpu, &mut rng, g));
        }
    }
}
