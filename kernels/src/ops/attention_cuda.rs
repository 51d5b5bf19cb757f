//! GPU twins of [`attention_fused_forward`](super::attention_fused_forward) and
//! [`attention_fused_backward`](super::attention_fused_backward): the unfused path, i.e. cuBLAS
//! strided-batched products over the heads of each batch item (read straight out of the fused
//! `[B, T, 3, H, D]` projection through row strides, no head copies) and the row kernels of
//! `attention.cu` for the (causal) softmax and its backward. Same outputs as the CPU: `out` with the heads
//! merged, `att` the saved probabilities (masked entries exactly 0), `dqkv` overwritten.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{attention_backward_scratch_len, default_scale, CUDA};
use crate::cuda::launch::BLOCK;
use crate::cuda::{Gpu, GpuError};
use crate::ops::gemm::cuda::{gemm_general, MatMut, MatRef};

/// Most blocks a per-row kernel is launched with (it loops over further rows).
const MAX_ROW_BLOCKS: usize = 1 << 16;

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_ROW_BLOCKS) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One input-gradient product of the backward: (which third of dqkv, the [T, T] factor, whether it is
/// transposed, the [T, D] factor, that factor's row stride).
type BackwardProduct<'a, 'v> = (usize, &'a CudaView<'v, f32>, bool, &'a CudaView<'v, f32>, usize);

/// Multi-head self-attention forward on the GPU from a fused projection (overwrites `out` and `att`).
///
/// qkv: [B, T, 3, H, D], out: [B, T, H*D], att: [B, H, T, T] (saved for the backward). `D >= 1`.
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_forward(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    att: &mut CudaViewMut<f32>,
    qkv: &CudaView<f32>,
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
    let scale: f32 = default_scale(d);
    let item = t * 3 * hd;
    // Scores: att[i, h] = scale * q_h @ k_h^T, the heads of item i batched (D apart, row stride 3HD).
    for i in 0..b {
        let (q, k) = (qkv.slice(i * item..), qkv.slice(i * item + hd..));
        let mut s = att.slice_mut(i * h * tt..(i + 1) * h * tt);
        gemm_general(
            gpu,
            h,
            t,
            t,
            d,
            MatRef { data: &q, trans: false, ld: 3 * hd, stride: d },
            MatRef { data: &k, trans: true, ld: 3 * hd, stride: d },
            MatMut { data: &mut s, ld: t, stride: tt },
            scale,
            0.0,
        )?;
    }
    let rows = b * h * t;
    let causal_i = causal as i32;
    let f = gpu.function(&CUDA, "attn_softmax_f32")?;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&mut *att).arg(&rows).arg(&t).arg(&causal_i);
    // SAFETY: (float*, size_t, size_t, int); att holds rows * t elements.
    unsafe { l.launch(rows_cfg(rows)) }?;
    // out[i, :, h*D..] = att[i, h] @ v_h.
    for i in 0..b {
        let p = att.slice(i * h * tt..(i + 1) * h * tt);
        let v = qkv.slice(i * item + 2 * hd..);
        let mut o = out.slice_mut(i * t * hd..(i + 1) * t * hd);
        gemm_general(
            gpu,
            h,
            t,
            d,
            t,
            MatRef { data: &p, trans: false, ld: t, stride: tt },
            MatRef { data: &v, trans: false, ld: 3 * hd, stride: d },
            MatMut { data: &mut o, ld: hd, stride: d },
            1.0,
            0.0,
        )?;
    }
    Ok(())
}

/// Backward of [`attention_fused_forward`] on the GPU: writes the q / k / v gradients into `dqkv`
/// ([B, T, 3, H, D], overwritten) from `dout` ([B, T, H*D]); att: the forward's probabilities; scratch:
/// [B, H, T, T] (see [`attention_backward_scratch_len`](super::attention_backward_scratch_len)).
#[allow(clippy::too_many_arguments)]
pub fn attention_fused_backward(
    gpu: &Gpu,
    dqkv: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    qkv: &CudaView<f32>,
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
    let scale: f32 = default_scale(d);
    let item = t * 3 * hd;
    // dP[i, h] = dout_h @ v_h^T into the scratch.
    for i in 0..b {
        let go = dout.slice(i * t * hd..(i + 1) * t * hd);
        let v = qkv.slice(i * item + 2 * hd..);
        let mut ds = scratch.slice_mut(i * h * tt..(i + 1) * h * tt);
        gemm_general(
            gpu,
            h,
            t,
            t,
            d,
            MatRef { data: &go, trans: false, ld: hd, stride: d },
            MatRef { data: &v, trans: true, ld: 3 * hd, stride: d },
            MatMut { data: &mut ds, ld: t, stride: tt },
            1.0,
            0.0,
        )?;
    }
    // dS = scale * P * (dP - rowsum(P dP)), in place.
    let rows = b * h * t;
    let causal_i = causal as i32;
    let f = gpu.function(&CUDA, "attn_softmax_backward_f32")?;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&mut *scratch).arg(att).arg(&rows).arg(&t).arg(&causal_i).arg(&scale);
    // SAFETY: (float*, const float*, size_t, size_t, int, float); scratch and att hold rows * t elements.
    unsafe { l.launch(rows_cfg(rows)) }?;
    for i in 0..b {
        let ds = scratch.slice(i * h * tt..(i + 1) * h * tt);
        let p = att.slice(i * h * tt..(i + 1) * h * tt);
        let go = dout.slice(i * t * hd..(i + 1) * t * hd);
        let (q, k) = (qkv.slice(i * item..), qkv.slice(i * item + hd..));
        // dq = dS @ k, dk = dS^T @ q, dv = P^T @ dout.
        let parts: [BackwardProduct<'_, '_>; 3] =
            [(0, &ds, false, &k, 3 * hd), (1, &ds, true, &q, 3 * hd), (2, &p, true, &go, hd)];
        for (which, lhs, lhs_t, rhs, rhs_ld) in parts {
            let mut dst = dqkv.slice_mut(i * item + which * hd..(i + 1) * item);
            gemm_general(
                gpu,
                h,
                t,
                d,
                t,
                MatRef { data: lhs, trans: lhs_t, ld: t, stride: tt },
                MatRef { data: rhs, trans: false, ld: rhs_ld, stride: d },
                MatMut { data: &mut dst, ld: 3 * hd, stride: d },
                1.0,
                0.0,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;

    /// Fused forward (out, att) and backward (dqkv) against the CPU, causal and not, batch 1 and more,
    /// one head and several, odd T and D.
    ///
    /// Tolerances: the scores are D-term f32 dot products (cuBLAS order / FMA vs the CPU's), softmax with
    /// expf vs the CPU's exp, and the outputs T-term sums of probabilities times values (|v| <= 1): errors
    /// ~ sqrt(T) * 1e-7 relative, so atol 1e-5 + rtol 1e-4 for out / att. The backward chains three
    /// products and the softmax backward on those inputs: atol 5e-5 + rtol 1e-4.
    #[test]
    fn attention_fused_matches_cpu() {
        let Some(gpu) = gpu_or_skip("attention_fused_matches_cpu") else { return };
        let mut rng = seeded("attention_fused_matches_cpu");
        for &(b, h, t, d, causal) in
            &[(1usize, 1usize, 5usize, 3usize, false), (2, 3, 17, 8, true), (3, 2, 70, 5, false), (1, 4, 65, 16, true)]
        {
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

            let what = format!("attention b{b} h{h} t{t} d{d} causal {causal}");
            let (dx, dgo) = (gpu.upload(&qkv).unwrap(), gpu.upload(&dout).unwrap());
            let (mut out, mut att) = (poisoned(gpu, want.len()).unwrap(), poisoned(gpu, want_att.len()).unwrap());
            attention_fused_forward(
                gpu,
                &mut out.as_view_mut(),
                &mut att.as_view_mut(),
                &dx.as_view(),
                b,
                h,
                t,
                d,
                causal,
            )
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
            attention_fused_backward(
                gpu,
                &mut dq.as_view_mut(),
                &dgo.as_view(),
                &dx.as_view(),
                &datt.as_view(),
                &mut ds.as_view_mut(),
                b,
                h,
                t,
                d,
                causal,
            )
            .unwrap();
            assert_close(&format!("{what} dqkv"), &gpu.download(&dq).unwrap(), &want_dqkv, 5e-5, 1e-4);
        }
    }
}
