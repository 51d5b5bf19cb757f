//! GPU twins of [`attention_fused_forward`](super::attention_fused_forward) and
//! [`attention_fused_backward`](super::attention_fused_backward). Heads of at most 64 tokens and 64 channels
//! (a ViT's 50 x 32) run whole in one block each (`attn_small_*` in attention.cu: one launch for the forward,
//! one for the backward, whatever the batch and head count). Larger heads take the unfused path, i.e. cuBLAS
//! strided-batched products, one per head over the batch items or one per item over the heads, whichever
//! makes fewer calls (read straight out of the fused `[B, T, 3, H, D]` projection through row strides, no
//! head copies) and the row kernels of
//! `attention.cu` for the (causal) softmax and its backward. Same outputs as the CPU: `out` with the heads
//! merged, `att` the saved probabilities (masked entries exactly 0), `dqkv` overwritten.
//!
//! The fused attention also runs on activations stored in half precision (autocast): `qkv`, `out`, `dout` and
//! `dqkv` in `T`, the probabilities and score gradients in f32, every product accumulating in f32.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

use super::{attention_backward_scratch_len, default_scale, CUDA};
use crate::cuda::launch::row_launch;
use crate::cuda::{Gpu, GpuError, Store};
use crate::ops::gemm::cuda::{gemm_general, gemm_strided_batched, MatMut, MatRef};
use crate::ops::permute;

/// `att` rows (each `t` long, query `r % t`) become their softmax over the visible keys, in place.
pub(crate) fn softmax_rows(
    gpu: &Gpu,
    att: &mut CudaViewMut<f32>,
    rows: usize,
    t: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let causal_i = causal as i32;
    let (warp, cfg) = row_launch(rows, t);
    let f = gpu.function(&CUDA, if warp { "attn_softmax_warp_f32" } else { "attn_softmax_f32" })?;
    let mut l = gpu.launch_builder(&f);
    l.arg(att).arg(&rows).arg(&t).arg(&causal_i);
    // SAFETY: (float*, size_t, size_t, int); the callers checked that att holds rows * t elements.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// `ds = scale * p * (ds - rowsum(p * ds))` in place over the visible keys (0 elsewhere), `p` = `att`.
pub(crate) fn softmax_rows_backward(
    gpu: &Gpu,
    ds: &mut CudaViewMut<f32>,
    att: &CudaView<f32>,
    rows: usize,
    t: usize,
    causal: bool,
    scale: f32,
) -> Result<(), GpuError> {
    let causal_i = causal as i32;
    let (warp, cfg) = row_launch(rows, t);
    let f = gpu.function(&CUDA, if warp { "attn_softmax_backward_warp_f32" } else { "attn_softmax_backward_f32" })?;
    let mut l = gpu.launch_builder(&f);
    l.arg(ds).arg(att).arg(&rows).arg(&t).arg(&causal_i).arg(&scale);
    // SAFETY: (float*, const float*, size_t, size_t, int, float); the callers checked that ds and att hold
    // rows * t elements.
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// Where the matrix of (sample `i`, head `j`) of a per-head operand starts, `base + i * per_sample + j *
/// per_head`, its row stride and whether the product reads it transposed.
#[derive(Clone, Copy)]
struct Heads {
    base: usize,
    per_sample: usize,
    per_head: usize,
    ld: usize,
    trans: bool,
}

/// `c[i, j] = alpha * op(a[i, j]) @ op(b[i, j])` (`c` overwritten) for every sample `i < nb` and head
/// `j < nh`: one strided-batched product per value of the smaller of the two indices, batched over the
/// larger (a ViT at batch 512 with 4 heads: 4 products, not 512).
#[allow(clippy::too_many_arguments)]
fn per_head_products<A: Store, B: Store, C: Store>(
    gpu: &Gpu,
    nb: usize,
    nh: usize,
    (m, n, k): (usize, usize, usize),
    (a, la): (&CudaView<A>, Heads),
    (b, lb): (&CudaView<B>, Heads),
    (c, lc): (&mut CudaViewMut<C>, Heads),
    alpha: f32,
) -> Result<(), GpuError> {
    let heads_outer = nh < nb;
    let (outer, inner) = if heads_outer { (nh, nb) } else { (nb, nh) };
    // (first element, batch stride) of operand `l` for outer index `o`.
    let at = |l: Heads, o: usize| {
        if heads_outer {
            (l.base + o * l.per_head, l.per_sample)
        } else {
            (l.base + o * l.per_sample, l.per_head)
        }
    };
    for o in 0..outer {
        let ((a0, sa), (b0, sb), (c0, sc)) = (at(la, o), at(lb, o), at(lc, o));
        let (av, bv, mut cv) = (a.slice(a0..), b.slice(b0..), c.slice_mut(c0..));
        gemm_general(
            gpu,
            inner,
            m,
            n,
            k,
            MatRef { data: &av, trans: la.trans, ld: la.ld, stride: sa },
            MatRef { data: &bv, trans: lb.trans, ld: lb.ld, stride: sb },
            MatMut { data: &mut cv, ld: lc.ld, stride: sc },
            alpha,
            0.0,
        )?;
    }
    Ok(())
}

/// Multi-head self-attention forward on the GPU from a fused projection (overwrites `out` and `att`).
///
/// qkv: [B, T, 3, H, D], out: [B, T, H*D] (both stored in `T`), att: [B, H, T, T] (f32, saved for the
/// backward). `D >= 1`.
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    att: &mut CudaViewMut<f32>,
    qkv: &CudaView<T>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let (hd, tt) = (h * d, t * t);
    assert!(d > 0, "attention_fused_forward: head size D must be at least 1");
    assert_eq!(qkv.len(), b * t * 3 * hd, "attention_fused_forward: qkv must be [B, T, 3, H, D]");
    assert_eq!(out.len(), b * t * hd, "attention_fused_forward: out must be [B, T, H*D]");
    assert_eq!(att.len(), b * h * tt, "attention_fused_forward: att must be [B, H, T, T]");
    if b * h * t == 0 {
        return Ok(());
    }
    match Path::of(t, d) {
        Path::Small => small_forward(gpu, out, att, qkv, b, h, t, d, causal),
        Path::Products => products_forward(gpu, out, att, qkv, b, h, t, d, causal),
    }
}

/// How the fused attention runs for heads of `t` tokens and `d` channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// A block per head (`attn_small_*`): K, V and the score gradients fit the blocks' shared arrays.
    Small,
    /// cuBLAS products per head (or per sample) and the softmax row kernels.
    Products,
}

/// Shared-array sizes of `attn_small_*` (floats; `AS_FWD_SHARED` / `AS_BWD_SHARED` in attention.cu).
const SMALL_TMAX: usize = 64;
const SMALL_DMAX: usize = 64;
const SMALL_BWD_SHARED: usize = 9216;

impl Path {
    /// The small path when a lane's two keys / two channels cover the head and the backward's K, V and score
    /// gradients (rows padded by one float) fit its shared array.
    pub(crate) fn of(t: usize, d: usize) -> Path {
        let bwd = 2 * t * (d + 1) + t * (t + 1);
        if t <= SMALL_TMAX && d <= SMALL_DMAX && bwd <= SMALL_BWD_SHARED {
            Path::Small
        } else {
            Path::Products
        }
    }
}

/// Blocks of the small path: a block per head, at most 32 per SM (more than fit at once; the rest loop).
fn small_config(gpu: &Gpu, heads: usize) -> LaunchConfig {
    let blocks = heads.min(gpu.info.multiprocessors * 32).max(1);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The forward, a block per head (see [`Path::Small`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn small_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    att: &mut CudaViewMut<f32>,
    qkv: &CudaView<T>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let (scale, causal_i): (f32, i32) = (default_scale(d), causal as i32);
    let names = ["attn_small_forward_f32", "attn_small_forward_f16", "attn_small_forward_bf16"];
    let f = gpu.function(&super::CUDA, T::pick(names))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(out).arg(att).arg(qkv).arg(&b).arg(&h).arg(&t).arg(&d).arg(&causal_i).arg(&scale);
    // SAFETY: (T*, float*, const T*, size_t x4, int, float) as declared; the caller checked the
    // lengths ([B, T, H*D], [B, H, T, T], [B, T, 3, H, D]) and Path::of the shared-array bounds.
    unsafe { l.launch(small_config(gpu, b * h)) }?;
    Ok(())
}

/// The backward, a block per head (see [`Path::Small`]); needs no scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn small_backward<T: Store>(
    gpu: &Gpu,
    dqkv: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    qkv: &CudaView<T>,
    att: &CudaView<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let (scale, causal_i): (f32, i32) = (default_scale(d), causal as i32);
    let names = ["attn_small_backward_f32", "attn_small_backward_f16", "attn_small_backward_bf16"];
    let f = gpu.function(&super::CUDA, T::pick(names))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(dqkv).arg(dout).arg(qkv).arg(att).arg(&b).arg(&h).arg(&t).arg(&d).arg(&causal_i).arg(&scale);
    // SAFETY: (T*, const T* x2, const float*, size_t x4, int, float) as declared; the caller checked the lengths
    // and Path::of the shared-array bounds.
    unsafe { l.launch(small_config(gpu, b * h)) }?;
    Ok(())
}

/// The forward through cuBLAS products and the softmax row kernel (see [`Path::Products`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn products_forward<T: Store>(
    gpu: &Gpu,
    out: &mut CudaViewMut<T>,
    att: &mut CudaViewMut<f32>,
    qkv: &CudaView<T>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let scale: f32 = default_scale(d);
    let l = FusedLayouts::new(h, t, d);
    // Scores: att[i, j] = scale * q_ij @ k_ij^T (heads D apart in rows of 3HD).
    per_head_products(gpu, b, h, (t, t, d), (qkv, l.q), (qkv, l.k.t()), (att, l.att), scale)?;
    softmax_rows(gpu, att, b * h * t, t, causal)?;
    // out[i, :, jD..] = att[i, j] @ v_ij.
    per_head_products(gpu, b, h, (t, d, t), (&att.slice(..), l.att), (qkv, l.v), (out, l.out), 1.0)
}

/// The per-head operands of the fused attention: q, k, v inside `[B, T, 3, H, D]`, the probabilities
/// `[B, H, T, T]` and the merged output `[B, T, H*D]`.
struct FusedLayouts {
    q: Heads,
    k: Heads,
    v: Heads,
    att: Heads,
    out: Heads,
}

impl Heads {
    /// The same operand read transposed.
    fn t(self) -> Heads {
        Heads { trans: !self.trans, ..self }
    }
    /// The same layout starting `by` elements further.
    fn shifted(self, by: usize) -> Heads {
        Heads { base: self.base + by, ..self }
    }
}

impl FusedLayouts {
    fn new(h: usize, t: usize, d: usize) -> FusedLayouts {
        let hd = h * d;
        let item = t * 3 * hd;
        let q = Heads { base: 0, per_sample: item, per_head: d, ld: 3 * hd, trans: false };
        FusedLayouts {
            q,
            k: q.shifted(hd),
            v: q.shifted(2 * hd),
            att: Heads { base: 0, per_sample: h * t * t, per_head: t * t, ld: t, trans: false },
            out: Heads { base: 0, per_sample: t * hd, per_head: d, ld: hd, trans: false },
        }
    }
}

/// Backward of [`attention_fused_forward`] on the GPU: writes the q / k / v gradients into `dqkv`
/// ([B, T, 3, H, D], overwritten) from `dout` ([B, T, H*D]); att: the forward's probabilities; scratch:
/// [B, H, T, T] (see [`attention_backward_scratch_len`](super::attention_backward_scratch_len)). dqkv,
/// dout and qkv are stored in `T`; att and scratch are f32.
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_backward<T: Store>(
    gpu: &Gpu,
    dqkv: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    qkv: &CudaView<T>,
    att: &CudaView<f32>,
    scratch: &mut CudaViewMut<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let (hd, tt) = (h * d, t * t);
    assert!(d > 0, "attention_fused_backward: head size D must be at least 1");
    assert_eq!(qkv.len(), b * t * 3 * hd, "attention_fused_backward: qkv must be [B, T, 3, H, D]");
    assert_eq!(dqkv.len(), b * t * 3 * hd, "attention_fused_backward: dqkv must be [B, T, 3, H, D]");
    assert_eq!(dout.len(), b * t * hd, "attention_fused_backward: dout must be [B, T, H*D]");
    assert_eq!(att.len(), b * h * tt, "attention_fused_backward: att must be [B, H, T, T]");
    assert_eq!(scratch.len(), attention_backward_scratch_len(b, h, t), "attention_fused_backward: scratch length");
    if b * h * t == 0 {
        return Ok(());
    }
    match Path::of(t, d) {
        Path::Small => small_backward(gpu, dqkv, dout, qkv, att, b, h, t, d, causal),
        Path::Products => products_backward(gpu, dqkv, dout, qkv, att, scratch, b, h, t, d, causal),
    }
}

/// The backward through cuBLAS products and the softmax-backward row kernel (see [`Path::Products`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn products_backward<T: Store>(
    gpu: &Gpu,
    dqkv: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    qkv: &CudaView<T>,
    att: &CudaView<f32>,
    scratch: &mut CudaViewMut<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let scale: f32 = default_scale(d);
    let l = FusedLayouts::new(h, t, d);
    // dP[i, j] = dout_ij @ v_ij^T into the scratch.
    per_head_products(gpu, b, h, (t, t, d), (dout, l.out), (qkv, l.v.t()), (scratch, l.att), 1.0)?;
    // dS = scale * P * (dP - rowsum(P dP)), in place.
    softmax_rows_backward(gpu, scratch, att, b * h * t, t, causal, scale)?;
    let ds = scratch.slice(..);
    // dq = dS @ k, dk = dS^T @ q, dv = P^T @ dout.
    per_head_products(gpu, b, h, (t, d, t), (&ds, l.att), (qkv, l.k), (dqkv, l.q), 1.0)?;
    per_head_products(gpu, b, h, (t, d, t), (&ds, l.att.t()), (qkv, l.q), (dqkv, l.k), 1.0)?;
    per_head_products(gpu, b, h, (t, d, t), (att, l.att.t()), (dout, l.out), (dqkv, l.v), 1.0)
}

/// Multi-head attention forward on the GPU for heads already split out (overwrites `out` and `att`):
/// `att = softmax(q @ k^T / sqrt(D))` (lower-triangular when `causal`), `out = att @ v`, one batched
/// product over all B*H heads for each step.
///
/// q, k, v, out: [B, H, T, D]; att: [B, H, T, T]. `D >= 1`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    att: &mut CudaViewMut<f32>,
    q: &CudaView<f32>,
    k: &CudaView<f32>,
    v: &CudaView<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let (td, tt, bh) = (t * d, t * t, b * h);
    assert!(d > 0, "attention_forward: head size D must be at least 1");
    for (len, name) in [(out.len(), "out"), (q.len(), "q"), (k.len(), "k"), (v.len(), "v")] {
        assert_eq!(len, bh * td, "attention_forward: {name} must be [B, H, T, D]");
    }
    assert_eq!(att.len(), bh * tt, "attention_forward: att must be [B, H, T, T]");
    if bh * t == 0 {
        return Ok(());
    }
    let scale: f32 = default_scale(d);
    gemm_strided_batched(gpu, bh, t, t, d, q, false, td, k, true, td, att, tt, scale, 0.0)?;
    softmax_rows(gpu, att, bh * t, t, causal)?;
    gemm_strided_batched(gpu, bh, t, d, t, &att.slice(..), false, tt, v, false, td, out, td, 1.0, 0.0)
}

/// Backward of [`attention_forward`] on the GPU (overwrites `dq`, `dk`, `dv` and `scratch`).
///
/// dout, q, k, v, dq, dk, dv: [B, H, T, D]; att: the forward's probabilities [B, H, T, T]; scratch:
/// [B, H, T, T] (see [`attention_backward_scratch_len`](super::attention_backward_scratch_len)).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    dq: &mut CudaViewMut<f32>,
    dk: &mut CudaViewMut<f32>,
    dv: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    q: &CudaView<f32>,
    k: &CudaView<f32>,
    v: &CudaView<f32>,
    att: &CudaView<f32>,
    scratch: &mut CudaViewMut<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(), GpuError> {
    let (td, tt, bh) = (t * d, t * t, b * h);
    assert!(d > 0, "attention_backward: head size D must be at least 1");
    for (len, name) in [
        (dq.len(), "dq"),
        (dk.len(), "dk"),
        (dv.len(), "dv"),
        (dout.len(), "dout"),
        (q.len(), "q"),
        (k.len(), "k"),
        (v.len(), "v"),
    ] {
        assert_eq!(len, bh * td, "attention_backward: {name} must be [B, H, T, D]");
    }
    assert_eq!(att.len(), bh * tt, "attention_backward: att must be [B, H, T, T]");
    assert_eq!(scratch.len(), attention_backward_scratch_len(b, h, t), "attention_backward: scratch length");
    if bh * t == 0 {
        return Ok(());
    }
    let scale: f32 = default_scale(d);
    // dP = dout @ v^T, then dS in place; dq = dS @ k, dk = dS^T @ q, dv = P^T @ dout.
    gemm_strided_batched(gpu, bh, t, t, d, dout, false, td, v, true, td, scratch, tt, 1.0, 0.0)?;
    softmax_rows_backward(gpu, scratch, att, bh * t, t, causal, scale)?;
    let ds = scratch.slice(..);
    gemm_strided_batched(gpu, bh, t, d, t, &ds, false, tt, k, false, td, dq, td, 1.0, 0.0)?;
    gemm_strided_batched(gpu, bh, t, d, t, &ds, true, tt, q, false, td, dk, td, 1.0, 0.0)?;
    gemm_strided_batched(gpu, bh, t, d, t, att, true, tt, dout, false, td, dv, td, 1.0, 0.0)
}

/// `out = inp.view(B, T, H, D).transpose(1, 2)` on the GPU (overwrites). inp: [B, T, H*D], out: [B, H, T, D].
pub fn split_heads(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    inp: &CudaView<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
) -> Result<(), GpuError> {
    permute::cuda::permute(gpu, out, inp, &[b, t, h, d], &[0, 2, 1, 3])
}

/// `out = inp.transpose(1, 2).reshape(B, T, H*D)` on the GPU (overwrites). inp: [B, H, T, D], out: [B, T, H*D].
pub fn merge_heads(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    inp: &CudaView<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
) -> Result<(), GpuError> {
    permute::cuda::permute(gpu, out, inp, &[b, h, t, d], &[0, 2, 1, 3])
}

/// Backward of [`split_heads`] on the GPU: `dinp = merge_heads(dout)`. dout: [B, H, T, D], dinp: [B, T, H*D].
pub fn split_heads_backward(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
) -> Result<(), GpuError> {
    merge_heads(gpu, dinp, dout, b, h, t, d)
}

/// Backward of [`merge_heads`] on the GPU: `dinp = split_heads(dout)`. dout: [B, T, H*D], dinp: [B, H, T, D].
pub fn merge_heads_backward(
    gpu: &Gpu,
    dinp: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
) -> Result<(), GpuError> {
    split_heads(gpu, dinp, dout, b, h, t, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Fused forward (out, att) and backward (dqkv) against the CPU, causal and not, batch 1 and more,
    /// one head and several, odd T and D, on both paths (a block per head; cuBLAS products).
    ///
    /// Tolerances: the scores are D-term f32 dot products (cuBLAS order / FMA vs the CPU's), softmax with
    /// expf vs the CPU's exp, and the outputs T-term sums of probabilities times values (|v| <= 1): errors
    /// ~ sqrt(T) * 1e-7 relative, so atol 1e-5 + rtol 1e-4 for out / att. The backward chains three
    /// products and the softmax backward on those inputs: atol 5e-5 + rtol 1e-4.
    #[test]
    fn attention_fused_matches_cpu() {
        let Some(gpu) = gpu_or_skip("attention_fused_matches_cpu") else { return };
        let mut rng = seeded("attention_fused_matches_cpu");
        for &(b, h, t, d, causal) in &[
            (1usize, 1usize, 5usize, 3usize, false),
            (2, 3, 17, 8, true),
            (3, 2, 70, 5, false),
            (1, 4, 65, 16, true),
            (1, 1, 1030, 4, true),
            // A ViT block's heads (W3: 50 tokens, 4 heads of 32), the small path's largest T, a head of 64
            // channels, and one whose score gradients no longer fit the small path's shared array.
            (3, 4, 50, 32, false),
            (2, 2, 64, 32, true),
            (2, 1, 33, 64, false),
            (1, 2, 64, 64, true),
        ] {
            let small = Path::of(t, d) == Path::Small;
            assert_eq!(small, t <= 64 && 2 * t * (d + 1) + t * (t + 1) <= SMALL_BWD_SHARED, "t {t} d {d}");
            let hd = h * d;
            let qkv = rand_vec(&mut rng, b * t * 3 * hd, -1.0, 1.0);
            let dout = rand_vec(&mut rng, b * t * hd, -1.0, 1.0);
            let (mut want, mut want_att) = (vec![0.0f32; b * t * hd], vec![0.0f32; b * h * t * t]);
            super::super::attention_fused_forward(&mut want, &mut want_att, &qkv, b, h, t, d, causal);
            let mut want_dqkv = vec![0.0f32; qkv.len()];
            let mut scratch = vec![0.0f32; attention_backward_scratch_len(b, h, t)];
            super::super::attention_fused_backward(
                &mut want_dqkv,
                &dout,
                &qkv,
                &want_att,
                &mut scratch,
                b,
                h,
                t,
                d,
                causal,
            );

            // Both paths where the small one applies (the public functions pick it), the products otherwise.
            for path in [Path::Small, Path::Products] {
                if path == Path::Small && !small {
                    continue;
                }
                let what = format!("attention b{b} h{h} t{t} d{d} causal {causal} {path:?}");
                let (dx, dgo) = (gpu.upload(&qkv).unwrap(), gpu.upload(&dout).unwrap());
                let (mut out, mut att) = (poisoned(gpu, want.len()).unwrap(), poisoned(gpu, want_att.len()).unwrap());
                let forward = if path == Path::Small { small_forward } else { products_forward };
                forward(gpu, &mut out.as_view_mut(), &mut att.as_view_mut(), &dx.as_view(), b, h, t, d, causal)
                    .unwrap();
                assert_close(&format!("{what} out"), &gpu.download(&out).unwrap(), &want, 1e-5, 1e-4);
                let got_att = gpu.download(&att).unwrap();
                assert_close(&format!("{what} att"), &got_att, &want_att, 1e-5, 1e-4);
                if causal {
                    // Masked probabilities are exactly zero, as on the CPU.
                    for (r, row) in got_att.chunks_exact(t).enumerate() {
                        assert!(row[r % t + 1..].iter().all(|&p| p == 0.0), "{what}: row {r} leaks past the mask");
                    }
                }
                let (mut dq, mut ds) = (poisoned(gpu, qkv.len()).unwrap(), poisoned(gpu, scratch.len()).unwrap());
                let datt = gpu.upload(&want_att).unwrap();
                let (gv, xv, av) = (dgo.as_view(), dx.as_view(), datt.as_view());
                if path == Path::Small {
                    small_backward(gpu, &mut dq.as_view_mut(), &gv, &xv, &av, b, h, t, d, causal).unwrap();
                } else {
                    let mut sv = ds.as_view_mut();
                    products_backward(gpu, &mut dq.as_view_mut(), &gv, &xv, &av, &mut sv, b, h, t, d, causal).unwrap();
                }
                assert_close(&format!("{what} dqkv"), &gpu.download(&dq).unwrap(), &want_dqkv, 5e-5, 1e-4);
            }
        }
    }

    /// The split-layout forward / backward and the head reshapes against the CPU, causal and not,
    /// batch 1 and more; tolerances as for the fused path (the same products in another layout); the
    /// reshapes are copies (bitwise).
    #[test]
    fn attention_split_matches_cpu() {
        let Some(gpu) = gpu_or_skip("attention_split_matches_cpu") else { return };
        let mut rng = seeded("attention_split_matches_cpu");
        for &(b, h, t, d, causal) in
            &[(1usize, 1usize, 4usize, 3usize, true), (2, 3, 33, 8, false), (3, 2, 65, 5, true)]
        {
            let len = b * h * t * d;
            let (q, k, v, g) = (
                rand_vec(&mut rng, len, -1.0, 1.0),
                rand_vec(&mut rng, len, -1.0, 1.0),
                rand_vec(&mut rng, len, -1.0, 1.0),
                rand_vec(&mut rng, len, -1.0, 1.0),
            );
            let (mut want, mut want_att) = (vec![0.0f32; len], vec![0.0f32; b * h * t * t]);
            super::super::attention_forward(&mut want, &mut want_att, &q, &k, &v, b, h, t, d, causal);
            let (mut wq, mut wk, mut wv) = (vec![0.0f32; len], vec![0.0f32; len], vec![0.0f32; len]);
            let mut scratch = vec![0.0f32; attention_backward_scratch_len(b, h, t)];
            super::super::attention_backward(
                &mut wq,
                &mut wk,
                &mut wv,
                &g,
                &q,
                &k,
                &v,
                &want_att,
                &mut scratch,
                b,
                h,
                t,
                d,
                causal,
            );
            let what = format!("attention split b{b} h{h} t{t} d{d} causal {causal}");
            let (dq_, dk_, dv_, dg) =
                (gpu.upload(&q).unwrap(), gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap(), gpu.upload(&g).unwrap());
            let (mut out, mut att) = (poisoned(gpu, len).unwrap(), poisoned(gpu, want_att.len()).unwrap());
            attention_forward(
                gpu,
                &mut out.as_view_mut(),
                &mut att.as_view_mut(),
                &dq_.as_view(),
                &dk_.as_view(),
                &dv_.as_view(),
                b,
                h,
                t,
                d,
                causal,
            )
            .unwrap();
            assert_close(&format!("{what} out"), &gpu.download(&out).unwrap(), &want, 1e-5, 1e-4);
            assert_close(&format!("{what} att"), &gpu.download(&att).unwrap(), &want_att, 1e-5, 1e-4);
            let datt = gpu.upload(&want_att).unwrap();
            let (mut gq, mut gk, mut gv, mut ds) = (
                poisoned(gpu, len).unwrap(),
                poisoned(gpu, len).unwrap(),
                poisoned(gpu, len).unwrap(),
                poisoned(gpu, scratch.len()).unwrap(),
            );
            attention_backward(
                gpu,
                &mut gq.as_view_mut(),
                &mut gk.as_view_mut(),
                &mut gv.as_view_mut(),
                &dg.as_view(),
                &dq_.as_view(),
                &dk_.as_view(),
                &dv_.as_view(),
                &datt.as_view(),
                &mut ds.as_view_mut(),
                b,
                h,
                t,
                d,
                causal,
            )
            .unwrap();
            for (name, dev, host) in [("dq", &gq, &wq), ("dk", &gk, &wk), ("dv", &gv, &wv)] {
                assert_close(&format!("{what} {name}"), &gpu.download(dev).unwrap(), host, 5e-5, 1e-4);
            }
            let mut want_split = vec![0.0f32; len];
            super::super::split_heads(&mut want_split, &q, b, h, t, d);
            let mut split = poisoned(gpu, len).unwrap();
            split_heads(gpu, &mut split.as_view_mut(), &dq_.as_view(), b, h, t, d).unwrap();
            assert_bitwise(&format!("{what} split_heads"), &gpu.download(&split).unwrap(), &want_split);
            let mut want_merge = vec![0.0f32; len];
            super::super::merge_heads(&mut want_merge, &q, b, h, t, d);
            let mut merged = poisoned(gpu, len).unwrap();
            merge_heads(gpu, &mut merged.as_view_mut(), &dq_.as_view(), b, h, t, d).unwrap();
            assert_bitwise(&format!("{what} merge_heads"), &gpu.download(&merged).unwrap(), &want_merge);
            split_heads_backward(gpu, &mut merged.as_view_mut(), &dq_.as_view(), b, h, t, d).unwrap();
            assert_bitwise(&format!("{what} split_heads_backward"), &gpu.download(&merged).unwrap(), &want_merge);
            merge_heads_backward(gpu, &mut split.as_view_mut(), &dq_.as_view(), b, h, t, d).unwrap();
            assert_bitwise(&format!("{what} merge_heads_backward"), &gpu.download(&split).unwrap(), &want_split);
        }
    }

    /// Half storage (`T` for qkv, out, dout and dqkv; f32 probabilities), against the f32 kernels on the
    /// stored inputs (checked against the CPU in `attention_fused_matches_cpu`). The small path computes in
    /// f32 from the loaded values, so its outputs are the f32 kernel's rounded once, bit for bit, and its
    /// probabilities are the f32 kernel's. The product path also rounds the probabilities into `T` for the
    /// `att @ v` product (and the score gradients for theirs), so it is held to the type's precision: two
    /// units in the last place plus 4e-3 absolute (a probability row sums to 1 and |v| <= 1, so rounding
    /// every probability moves an output by at most half a unit of the type relative to 1: 2^-9 for bf16).
    fn half_case<T: TestStore>(gpu: &Gpu, rng: &mut crate::rng::Rng) {
        let ulp = if T::KIND == crate::cuda::StoreKind::F16 { 1.0 / 1024.0 } else { 1.0 / 128.0 };
        for &(b, h, t, d, causal) in
            &[(2usize, 3usize, 17usize, 8usize, false), (1, 2, 9, 5, true), (2, 2, 70, 8, true)]
        {
            let small = Path::of(t, d) == Path::Small;
            let (qkv_dev, qkv) = upload_as::<T>(gpu, &rand_vec(rng, b * t * 3 * h * d, -1.0, 1.0));
            let (dout_dev, dout) = upload_as::<T>(gpu, &rand_vec(rng, b * t * h * d, -1.0, 1.0));
            let (q32, g32) = (gpu.upload(&qkv).unwrap(), gpu.upload(&dout).unwrap());
            let what = format!("attention {} b{b} h{h} t{t} d{d} causal {causal}", T::KIND.name());
            let (mut out32, mut att32) = (poisoned(gpu, b * t * h * d).unwrap(), poisoned(gpu, b * h * t * t).unwrap());
            attention_fused_forward(
                gpu,
                &mut out32.as_view_mut(),
                &mut att32.as_view_mut(),
                &q32.as_view(),
                b,
                h,
                t,
                d,
                causal,
            )
            .unwrap();
            let (mut out, mut att) = (poisoned_as::<T>(gpu, b * t * h * d), poisoned(gpu, b * h * t * t).unwrap());
            attention_fused_forward(
                gpu,
                &mut out.as_view_mut(),
                &mut att.as_view_mut(),
                &qkv_dev.as_view(),
                b,
                h,
                t,
                d,
                causal,
            )
            .unwrap();
            let want: Vec<f32> = gpu.download(&out32).unwrap().iter().map(|&v| T::round(v)).collect();
            let mut scratch = poisoned(gpu, b * h * t * t).unwrap();
            let mut dq32 = poisoned(gpu, b * t * 3 * h * d).unwrap();
            attention_fused_backward(
                gpu,
                &mut dq32.as_view_mut(),
                &g32.as_view(),
                &q32.as_view(),
                &att32.as_view(),
                &mut scratch.as_view_mut(),
                b,
                h,
                t,
                d,
                causal,
            )
            .unwrap();
            let mut dq = poisoned_as::<T>(gpu, b * t * 3 * h * d);
            attention_fused_backward(
                gpu,
                &mut dq.as_view_mut(),
                &dout_dev.as_view(),
                &qkv_dev.as_view(),
                &att.as_view(),
                &mut scratch.as_view_mut(),
                b,
                h,
                t,
                d,
                causal,
            )
            .unwrap();
            let want_dq: Vec<f32> = gpu.download(&dq32).unwrap().iter().map(|&v| T::round(v)).collect();
            if small {
                assert_bitwise(&format!("{what} out"), &download_f32(gpu, &out), &want);
                assert_bitwise(&format!("{what} att"), &gpu.download(&att).unwrap(), &gpu.download(&att32).unwrap());
                assert_bitwise(&format!("{what} dqkv"), &download_f32(gpu, &dq), &want_dq);
            } else {
                assert_close(&format!("{what} out"), &download_f32(gpu, &out), &want, 4e-3, 2.0 * ulp);
                assert_close(
                    &format!("{what} att"),
                    &gpu.download(&att).unwrap(),
                    &gpu.download(&att32).unwrap(),
                    1e-5,
                    1e-3,
                );
                assert_close(&format!("{what} dqkv"), &download_f32(gpu, &dq), &want_dq, 4e-3, 2.0 * ulp);
            }
        }
    }

    #[test]
    fn attention_in_half_storage_matches_the_f32_kernels_on_stored_values() {
        if gpu_or_skip("attention_in_half_storage_matches_the_f32_kernels_on_stored_values").is_none() {
            return;
        }
        // Its own device handle: the product path's f32 products run at the autocast precision, as in a run.
        let gpu = &Gpu::open(0).unwrap();
        let mut rng = seeded("attention_in_half_storage_matches_the_f32_kernels_on_stored_values");
        gpu.set_matmul_precision(crate::cuda::MatmulPrecision::F16);
        half_case::<half::f16>(gpu, &mut rng);
        gpu.set_matmul_precision(crate::cuda::MatmulPrecision::Bf16);
        half_case::<half::bf16>(gpu, &mut rng);
    }
}
