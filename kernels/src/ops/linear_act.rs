//! A linear layer fused with the activation that follows it: `out = act(inp @ weight^T + bias)`.
//!
//! Forward: the product and its bias as in [`linear_forward`], then the activation reads the pre-activation,
//! which is kept for the backward. Backward: the output gradient becomes the pre-activation gradient *in
//! place*, its columns are summed into the bias gradient, and the two matrix products follow; the unfused
//! pair needs a second `[B, OC]` gradient buffer for the pre-activation (the graph saves one buffer per fused
//! pair).
//!
//! Every element is computed by the same expression as in the unfused ops (the activation modules share their
//! per-element derivative with this kernel, and the column sums are the same function), so the fused and the
//! unfused graphs train bit for bit alike.

use rayon::prelude::*;

use super::activation::{self, activation_forward, Activation};
use super::bias_add::bias_add_backward;
use super::linear::{linear_backward, linear_forward};
use super::par::{PAR_CHUNK, PAR_MIN_ELEMS};
use crate::Float;

/// Fused forward: `pre = inp @ weight^T + bias`, `out = act(pre)` (both overwritten).
///
/// inp: [B, C], weight: [OC, C], bias: [OC] or None, pre: [B, OC], out: [B, OC].
#[allow(clippy::too_many_arguments)]
pub fn linear_act_forward<T: Float>(
    out: &mut [T],
    pre: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    act: Activation,
    b: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), b * oc, "linear_act_forward: out must be [B, OC]");
    linear_forward(pre, inp, weight, bias, b, c, oc);
    activation_forward(act, out, pre);
}

/// Fused backward. `dout` holds the gradient of `out` on entry and the gradient of `pre` on return (it is
/// consumed in place). `dinp` is overwritten (None when the input needs no gradient); `dweight` and `dbias`
/// accumulate.
///
/// dout: [B, OC], pre: [B, OC], inp: [B, C], weight: [OC, C]; dinp: [B, C], dweight: [OC, C], dbias: [OC].
#[allow(clippy::too_many_arguments)]
pub fn linear_act_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &mut [T],
    pre: &[T],
    inp: &[T],
    weight: &[T],
    act: Activation,
    b: usize,
    c: usize,
    oc: usize,
) {
    act_backward_with_bias_sums(act, dout, pre, dbias, b, oc);
    linear_backward(dinp, dweight, None, dout, inp, weight, b, c, oc);
}

/// `d = d * act'(pre)` in place, then `dbias += column sums of the new d`.
///
/// Two passes, as the unfused pair makes, but over one buffer: the pre-activation gradient needs no buffer of
/// its own. (A single pass over column blocks that also summed was measured slower on an AVX2 EPYC: strided
/// read-modify-write rows and short inner loops cost more than the second streaming read saves; see
/// `benches/kernels.rs`, `bias_act_backward`.)
///
/// d, pre: [B, N], dbias: [N] or None.
pub fn act_backward_with_bias_sums<T: Float>(
    act: Activation,
    d: &mut [T],
    pre: &[T],
    dbias: Option<&mut [T]>,
    b: usize,
    n: usize,
) {
    assert_eq!(d.len(), b * n, "act_backward_with_bias_sums: d must be [B, N]");
    assert_eq!(pre.len(), b * n, "act_backward_with_bias_sums: pre must be [B, N]");
    macro_rules! dispatch {
        ($d:expr, $p:expr) => {
            match act.code() {
                activation::RELU => inplace::<T, { activation::RELU }>($d, $p),
                activation::GELU => inplace::<T, { activation::GELU }>($d, $p),
                activation::GELU_TANH => inplace::<T, { activation::GELU_TANH }>($d, $p),
                activation::TANH => inplace::<T, { activation::TANH }>($d, $p),
                activation::SIGMOID => inplace::<T, { activation::SIGMOID }>($d, $p),
                _ => inplace::<T, { activation::SILU }>($d, $p),
            }
        };
    }
    if d.len() < PAR_MIN_ELEMS {
        dispatch!(d, pre);
    } else {
        d.par_chunks_mut(PAR_CHUNK).zip(pre.par_chunks(PAR_CHUNK)).for_each(|(d, p)| dispatch!(d, p));
    }
    if let Some(dbias) = dbias {
        bias_add_backward(dbias, d, b, n);
    }
}

/// In-place activation backward over one chunk.
#[inline(always)]
fn inplace_body<T: Float, const ACT: u8>(d: &mut [T], pre: &[T]) {
    let n = d.len().min(pre.len());
    for i in 0..n {
        d[i] = activation::backward_elem::<T, ACT>(d[i], pre[i]);
    }
}
crate::multiversion!(fn inplace<T: Float; const ACT: u8>(d: &mut [T], pre: &[T]) => inplace_body);

/// The CUDA kernel of the fused backward (`linear_act.cu`, compiled after `activation.cu`, whose device
/// functions it uses).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "linear_act",
    code: concat!(include_str!("activation.cu"), "\n", include_str!("linear_act.cu")),
    kernels: &["act_backward_inplace_f32"],
};

/// Host side of the fused linear + activation on the GPU.
#[path = "linear_act_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::activation::activation_backward;
    use crate::ops::gradcheck::*;

    const ALL: [Activation; 6] = [
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Silu,
    ];

    /// The activation and its derivative in f64, straight from the formulas.
    fn f64_act(act: Activation, x: f64) -> (f64, f64) {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        match act {
            Activation::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + crate::float::erf_f64(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (x * cdf, cdf + x * pdf)
            }
            Activation::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let u = k * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x))
            }
            Activation::Tanh => (x.tanh(), 1.0 - x.tanh().powi(2)),
            Activation::Sigmoid => (sig(x), sig(x) * (1.0 - sig(x))),
            Activation::Silu => (x * sig(x), sig(x) * (1.0 + x * (1.0 - sig(x)))),
        }
    }

    /// Naive f64 reference of the whole layer: (out, dinp, dweight, dbias) for the loss sum(dout * out).
    #[allow(clippy::type_complexity)]
    fn reference(
        act: Activation,
        inp: &[f64],
        w: &[f64],
        bias: &[f64],
        dout: &[f64],
        (b, c, oc): (usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut out, mut dinp, mut dw, mut db) =
            (vec![0.0; b * oc], vec![0.0; b * c], vec![0.0; oc * c], vec![0.0; oc]);
        for i in 0..b {
            for o in 0..oc {
                let pre = bias[o] + (0..c).map(|k| inp[i * c + k] * w[o * c + k]).sum::<f64>();
                let (y, dy) = f64_act(act, pre);
                out[i * oc + o] = y;
                let g = dout[i * oc + o] * dy;
                db[o] += g;
                for k in 0..c {
                    dinp[i * c + k] += g * w[o * c + k];
                    dw[o * c + k] += g * inp[i * c + k];
                }
            }
        }
        (out, dinp, dw, db)
    }

    #[test]
    fn hand_checked_relu_values() {
        // inp [[1, -2]], weight rows [1, 1] and [1, -1], bias [2, 0]: pre = [1 - 2 + 2, 1 + 2 + 0] = [1, 3].
        // Backward of dout [1, -1]: both units active, so dpre = dout; dW = dpre^T inp; dinp = dpre W.
        let (inp, w, bias) = ([1.0f32, -2.0], [1.0f32, 1.0, 1.0, -1.0], [2.0f32, 0.0]);
        let (mut out, mut pre) = ([9.0f32; 2], [9.0f32; 2]);
        linear_act_forward(&mut out, &mut pre, &inp, &w, Some(&bias), Activation::Relu, 1, 2, 2);
        assert_eq!(pre, [1.0, 3.0]);
        assert_eq!(out, [1.0, 3.0]);
        let mut d = [1.0f32, -1.0];
        let (mut dinp, mut dw, mut db) = ([0.0f32; 2], [0.0f32; 4], [0.0f32; 2]);
        linear_act_backward(Some(&mut dinp), &mut dw, Some(&mut db), &mut d, &pre, &inp, &w, Activation::Relu, 1, 2, 2);
        assert_eq!(db, [1.0, -1.0]);
        assert_eq!(dw, [1.0, -2.0, -1.0, 2.0]);
        assert_eq!(dinp, [0.0, 2.0]);
    }

    #[test]
    fn matches_f64_reference_for_every_activation() {
        let dims = (6, 9, 70); // 70 outputs: one full column block and a ragged one
        let (b, c, oc) = dims;
        for (s, act) in ALL.into_iter().enumerate() {
            let seed = 100 + 10 * s as u64;
            let inp = round_f32(&uniform(seed, b * c, -1.0, 1.0));
            let w = round_f32(&uniform(seed + 1, oc * c, -1.0, 1.0));
            let bias = round_f32(&uniform(seed + 2, oc, -1.0, 1.0));
            let dout = round_f32(&uniform(seed + 3, b * oc, -1.0, 1.0));
            let (want, want_dinp, want_dw, want_db) = reference(act, &inp, &w, &bias, &dout, dims);
            let name = format!("{act:?}");
            // f64 kernel.
            let (mut out, mut pre) = (vec![0.0f64; b * oc], vec![0.0f64; b * oc]);
            linear_act_forward(&mut out, &mut pre, &inp, &w, Some(&bias), act, b, c, oc);
            assert_close_scaled(&format!("{name} f64 out"), &out, &want, 1e-12);
            let (mut dinp, mut dw, mut db, mut d) = (vec![0.0; b * c], vec![0.0; oc * c], vec![0.0; oc], dout.clone());
            linear_act_backward(Some(&mut dinp), &mut dw, Some(&mut db), &mut d, &pre, &inp, &w, act, b, c, oc);
            assert_close_scaled(&format!("{name} f64 dinp"), &dinp, &want_dinp, 1e-12);
            assert_close_scaled(&format!("{name} f64 dweight"), &dw, &want_dw, 1e-12);
            assert_close_scaled(&format!("{name} f64 dbias"), &db, &want_db, 1e-12);
            // f32 kernel.
            let (inp, w, bias) = (to_f32(&inp), to_f32(&w), to_f32(&bias));
            let (mut out, mut pre) = (vec![0.0f32; b * oc], vec![0.0f32; b * oc]);
            linear_act_forward(&mut out, &mut pre, &inp, &w, Some(&bias), act, b, c, oc);
            assert_close_scaled(&format!("{name} f32 out"), &out, &want, 2e-5);
            let (mut dinp, mut dw, mut db, mut d) =
                (vec![0.0f32; b * c], vec![0.0f32; oc * c], vec![0.0f32; oc], to_f32(&dout));
            linear_act_backward(Some(&mut dinp), &mut dw, Some(&mut db), &mut d, &pre, &inp, &w, act, b, c, oc);
            assert_close_scaled(&format!("{name} f32 dinp"), &dinp, &want_dinp, 2e-5);
            assert_close_scaled(&format!("{name} f32 dweight"), &dw, &want_dw, 2e-5);
            assert_close_scaled(&format!("{name} f32 dbias"), &db, &want_db, 2e-5);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (b, c, oc) = (3, 4, 5);
        for (s, act) in ALL.into_iter().enumerate() {
            let seed = 200 + 10 * s as u64;
            // Inputs and weights scaled so no pre-activation lands within reach of ReLU's kink.
            let mut inp = uniform_avoiding(seed, b * c, -1.0, 1.0, 0.0, 0.05);
            let mut w = uniform(seed + 1, oc * c, -1.0, 1.0);
            let mut bias = uniform(seed + 2, oc, -1.0, 1.0);
            let dout = uniform(seed + 3, b * oc, -1.0, 1.0);
            let mut pre = vec![0.0; b * oc];
            let mut out = vec![0.0; b * oc];
            linear_act_forward(&mut out, &mut pre, &inp, &w, Some(&bias), act, b, c, oc);
            if act == Activation::Relu && pre.iter().any(|p| p.abs() < 1e-3) {
                panic!("test data puts a ReLU input at its kink; pick other seeds");
            }
            let (mut dinp, mut dw, mut db, mut d) = (vec![0.0; b * c], vec![0.0; oc * c], vec![0.0; oc], dout.clone());
            linear_act_backward(Some(&mut dinp), &mut dw, Some(&mut db), &mut d, &pre, &inp, &w, act, b, c, oc);
            let loss = |inp: &[f64], w: &[f64], bias: &[f64]| {
                let (mut out, mut pre) = (vec![0.0; b * oc], vec![0.0; b * oc]);
                linear_act_forward(&mut out, &mut pre, inp, w, Some(bias), act, b, c, oc);
                dot(&dout, &out)
            };
            let (w0, bias0) = (w.clone(), bias.clone());
            check_grad(&format!("{act:?} dinp"), &mut inp, &dinp, |x| loss(x, &w0, &bias0));
            let inp0 = inp.clone();
            check_grad(&format!("{act:?} dweight"), &mut w, &dw, |x| loss(&inp0, x, &bias0));
            check_grad(&format!("{act:?} dbias"), &mut bias, &db, |x| loss(&inp0, &w0, x));
        }
    }

    /// The fused kernel gives the unfused pair's bits (linear, then activation; activation backward, then
    /// linear backward with its own bias sums), on the parallel path and the sequential one, with and
    /// without a bias.
    #[test]
    fn bit_identical_to_the_unfused_pair() {
        for (b, c, oc) in [(5usize, 7usize, 3usize), (300, 40, 520)] {
            for act in ALL {
                for with_bias in [true, false] {
                    let inp = to_f32(&uniform(1, b * c, -2.0, 2.0));
                    let w = to_f32(&uniform(2, oc * c, -0.5, 0.5));
                    let bias = to_f32(&uniform(3, oc, -0.5, 0.5));
                    let dout = to_f32(&uniform(4, b * oc, -1.0, 1.0));
                    let bias = with_bias.then_some(&bias[..]);
                    // Unfused.
                    let (mut pre_u, mut out_u) = (vec![0.0f32; b * oc], vec![0.0f32; b * oc]);
                    linear_forward(&mut pre_u, &inp, &w, bias, b, c, oc);
                    activation_forward(act, &mut out_u, &pre_u);
                    let mut dpre = vec![0.0f32; b * oc];
                    activation_backward(act, &mut dpre, &dout, &pre_u);
                    let (mut dinp_u, mut dw_u, mut db_u) =
                        (vec![0.0f32; b * c], vec![0.1f32; oc * c], vec![0.2f32; oc]);
                    let db_opt = if with_bias { Some(&mut db_u[..]) } else { None };
                    linear_backward(Some(&mut dinp_u), &mut dw_u, db_opt, &dpre, &inp, &w, b, c, oc);
                    // Fused.
                    let (mut pre_f, mut out_f) = (vec![0.0f32; b * oc], vec![0.0f32; b * oc]);
                    linear_act_forward(&mut out_f, &mut pre_f, &inp, &w, bias, act, b, c, oc);
                    let (mut dinp_f, mut dw_f, mut db_f) =
                        (vec![0.0f32; b * c], vec![0.1f32; oc * c], vec![0.2f32; oc]);
                    let mut d = dout.clone();
                    let db_opt = if with_bias { Some(&mut db_f[..]) } else { None };
                    linear_act_backward(Some(&mut dinp_f), &mut dw_f, db_opt, &mut d, &pre_f, &inp, &w, act, b, c, oc);
                    let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
                    let what = format!("{act:?} {b}x{c}x{oc} bias {with_bias}");
                    assert!(same(&out_u, &out_f), "{what}: out");
                    assert!(same(&dpre, &d), "{what}: dpre");
                    assert!(same(&dinp_u, &dinp_f), "{what}: dinp");
                    assert!(same(&dw_u, &dw_f), "{what}: dweight");
                    assert!(same(&db_u, &db_f), "{what}: dbias");
                }
            }
        }
    }
}
