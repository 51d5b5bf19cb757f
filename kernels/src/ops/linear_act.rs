//! A linear layer fused with the activation that follows it: `out = act(inp @ weight^T + bias)`.
//!
//! Forward: the product as in [`linear_forward`](super::linear::linear_forward); the bias and the activation
//! are applied to each chunk of rows right after it is multiplied, while it is in L2, and the activation
//! writes over the product in place. What the backward needs is kept beside it in the same pass: the
//! activation's derivative `act'(pre)` ([`activation::kept_elem`]), so the backward is one multiply per
//! element instead of a second evaluation of erf / exp / tanh; for ReLU the pre-activation itself (its
//! backward is a mask, and a mask keeps a NaN gradient out of inactive units).
//!
//! Backward: the output gradient becomes the pre-activation gradient *in place*, then the bias sums and the
//! two matrix products follow ([`linear_backward_split`](super::linear::linear_backward_split)'s halves each
//! convert their own rows right before multiplying them, while they are in cache). The unfused pair needs a
//! second `[B, OC]` gradient buffer for the pre-activation and a second pass over it.
//!
//! Every element is computed by the same expression as in the unfused ops (the activation modules define
//! each forward and derivative once; every backward but ReLU's is `dout * act'(x)`, and the column sums and
//! products are the same functions), so the fused and the unfused graphs train bit for bit alike.

use rayon::prelude::*;

use super::activation::{self, Activation};
use super::linear::{forward_onto, FusedTail, OutGrad};
use super::par::{PAR_CHUNK, PAR_MIN_ELEMS};
use crate::Float;

/// Whether the fused forward keeps the activation's derivative (true) or, for ReLU, the pre-activation.
pub fn keeps_derivative(act: Activation) -> bool {
    act != Activation::Relu
}

/// Fused forward: `out = act(inp @ weight^T + bias)` (overwritten). `keep` (for a backward; None in
/// evaluation) is overwritten with `act'(pre)`, or for ReLU with `pre` ([`keeps_derivative`]).
///
/// inp: [B, C], weight: [OC, C], bias: [OC] or None, out: [B, OC], keep: [B, OC].
#[allow(clippy::too_many_arguments)]
pub fn linear_act_forward<T: Float>(
    out: &mut [T],
    keep: Option<&mut [T]>,
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    act: Activation,
    b: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), b * oc, "linear_act_forward: out must be [B, OC]");
    assert!(keep.as_ref().is_none_or(|k| k.len() == b * oc), "linear_act_forward: keep must be [B, OC]");
    forward_onto(out, inp, weight, bias, FusedTail::Act { act, keep }, b, c, oc);
}

/// Length of the `scratch` [`linear_act_backward`] needs (see
/// [`linear_backward_split_scratch_len`](super::linear::linear_backward_split_scratch_len)).
pub fn linear_act_backward_scratch_len(rows: usize, c: usize, oc: usize) -> usize {
    super::linear::linear_backward_split_scratch_len(rows, c, oc)
}

/// Fused backward. `dout` holds the gradient of `out` on entry and the gradient of `pre` on return (it is
/// consumed in place); `kept` is what the forward kept. `dinp` is overwritten (None when the input needs no
/// gradient); `dweight` and `dbias` accumulate. `scratch`: at least [`linear_act_backward_scratch_len`].
///
/// dout: [B, OC], kept: [B, OC], inp: [B, C], weight: [OC, C]; dinp: [B, C], dweight: [OC, C], dbias: [OC].
#[allow(clippy::too_many_arguments)]
pub fn linear_act_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &mut [T],
    kept: &[T],
    inp: &[T],
    weight: &[T],
    act: Activation,
    scratch: &mut [T],
    b: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(kept.len(), dout.len(), "linear_act_backward: kept must be [B, OC]");
    let dout = OutGrad::ThroughAct { dout, kept, act };
    super::linear::backward_split(dinp, dweight, dbias, dout, inp, weight, scratch, b, c, oc);
}

/// `d = d * act'(pre)` in place from what the forward kept, then `dbias += column sums of the new d`.
///
/// Two passes over one buffer: the pre-activation gradient needs no buffer of its own. (A single pass over
/// column blocks that also summed was measured slower on an AVX2 EPYC: strided read-modify-write rows and
/// short inner loops cost more than the second streaming read saves; see `benches/kernels.rs`,
/// `bias_act_backward`.)
///
/// d, kept: [B, N], dbias: [N] or None.
pub fn act_backward_with_bias_sums<T: Float>(
    act: Activation,
    d: &mut [T],
    kept: &[T],
    dbias: Option<&mut [T]>,
    b: usize,
    n: usize,
) {
    assert_eq!(d.len(), b * n, "act_backward_with_bias_sums: d must be [B, N]");
    grad_in_place(act, d, kept);
    if let Some(dbias) = dbias {
        super::bias_add::bias_add_backward(dbias, d, b, n);
    }
}

/// Dispatches a runtime [`Activation`] to a kernel taking its code as a const parameter.
macro_rules! by_act {
    ($act:expr, $f:ident :: < $t:ty $(, $c:tt)* > ($($a:expr),*)) => {
        match $act.code() {
            activation::RELU => $f::<$t, { activation::RELU } $(, $c)*>($($a),*),
            activation::GELU => $f::<$t, { activation::GELU } $(, $c)*>($($a),*),
            activation::GELU_TANH => $f::<$t, { activation::GELU_TANH } $(, $c)*>($($a),*),
            activation::TANH => $f::<$t, { activation::TANH } $(, $c)*>($($a),*),
            activation::SIGMOID => $f::<$t, { activation::SIGMOID } $(, $c)*>($($a),*),
            _ => $f::<$t, { activation::SILU } $(, $c)*>($($a),*),
        }
    };
}

/// `d = dout * act'(pre)` in place from what the forward kept (`kept`: [N]), in parallel when large.
pub fn grad_in_place<T: Float>(act: Activation, d: &mut [T], kept: &[T]) {
    assert_eq!(d.len(), kept.len(), "grad_in_place: d and kept must have the same length");
    if d.len() < PAR_MIN_ELEMS {
        grad_in_place_serial(act, d, kept);
    } else {
        d.par_chunks_mut(PAR_CHUNK).zip(kept.par_chunks(PAR_CHUNK)).for_each(|(d, k)| grad_in_place_serial(act, d, k));
    }
}

/// [`grad_in_place`] on the calling thread.
pub(crate) fn grad_in_place_serial<T: Float>(act: Activation, d: &mut [T], kept: &[T]) {
    by_act!(act, grad_rows::<T>(d, kept))
}

#[inline(always)]
fn grad_rows_body<T: Float, const ACT: u8>(d: &mut [T], kept: &[T]) {
    let n = d.len().min(kept.len());
    for i in 0..n {
        d[i] = activation::backward_from_kept::<T, ACT>(d[i], kept[i]);
    }
}
crate::multiversion!(fn grad_rows<T: Float; const ACT: u8>(d: &mut [T], kept: &[T]) => grad_rows_body);

/// [`grad_in_place_serial`] on rows of `sums.len()` that also adds each converted row onto `sums` (column
/// sums in row order, as the bias gradient's `column_sums` adds them), while the row is in registers: the
/// bias gradient of the linear layer without a second pass over the gradient.
pub(crate) fn grad_in_place_serial_sums<T: Float>(act: Activation, d: &mut [T], kept: &[T], sums: &mut [T]) {
    assert!(d.len() == kept.len() && d.len().is_multiple_of(sums.len().max(1)), "grad_in_place_serial_sums: shapes");
    by_act!(act, grad_rows_sums::<T>(d, kept, sums))
}

#[inline(always)]
fn grad_rows_sums_body<T: Float, const ACT: u8>(d: &mut [T], kept: &[T], sums: &mut [T]) {
    let w = sums.len();
    if w == 0 {
        return;
    }
    for (row, k) in d.chunks_exact_mut(w).zip(kept.chunks_exact(w)) {
        for ((x, &kk), s) in row.iter_mut().zip(k).zip(sums.iter_mut()) {
            *x = activation::backward_from_kept::<T, ACT>(*x, kk);
            *s += *x;
        }
    }
}
crate::multiversion!(
    fn grad_rows_sums<T: Float; const ACT: u8>(d: &mut [T], kept: &[T], sums: &mut [T]) => grad_rows_sums_body
);

/// The forward's epilogue on rows the product just wrote, on the calling thread: `pre = out + bias` (rows of
/// `bias.len()`; no bias when it is empty), `keep = kept_elem(pre)` when `keep` is given, `out = act(pre)`.
/// `pre = out + bias` is the separate bias epilogue's addition, so the bits are the unfused pair's.
pub(crate) fn epilogue_serial<T: Float>(act: Activation, out: &mut [T], keep: Option<&mut [T]>, bias: &[T]) {
    match keep {
        Some(k) => {
            assert_eq!(k.len(), out.len(), "linear_act epilogue: keep must match out");
            by_act!(act, epilogue_rows::<T, true>(out, k, bias))
        }
        None => by_act!(act, epilogue_rows::<T, false>(out, &mut [], bias)),
    }
}

/// [`epilogue_serial`] without a bias, over the whole buffer, in parallel when large.
pub(crate) fn epilogue_par<T: Float>(act: Activation, out: &mut [T], keep: Option<&mut [T]>) {
    if out.len() < PAR_MIN_ELEMS {
        return epilogue_serial(act, out, keep, &[]);
    }
    let chunks = out.par_chunks_mut(PAR_CHUNK);
    match keep {
        Some(k) => chunks.zip(k.par_chunks_mut(PAR_CHUNK)).for_each(|(o, k)| epilogue_serial(act, o, Some(k), &[])),
        None => chunks.for_each(|o| epilogue_serial(act, o, None, &[])),
    }
}

#[inline(always)]
fn epilogue_rows_body<T: Float, const ACT: u8, const KEEP: bool>(out: &mut [T], keep: &mut [T], bias: &[T]) {
    // One pre-activation: keep what the backward needs, then the activation over it.
    #[inline(always)]
    fn one<T: Float, const ACT: u8, const KEEP: bool>(o: &mut T, k: &mut T, pre: T) {
        if KEEP {
            *k = activation::kept_elem::<T, ACT>(pre);
        }
        *o = activation::forward_elem::<T, ACT>(pre);
    }
    let mut unused = T::ZERO;
    let w = bias.len();
    if w == 0 {
        for i in 0..out.len() {
            let pre = out[i];
            let k = if KEEP { &mut keep[i] } else { &mut unused };
            one::<T, ACT, KEEP>(&mut out[i], k, pre);
        }
        return;
    }
    for r in 0..out.len() / w {
        let o = &mut out[r * w..(r + 1) * w];
        let k: &mut [T] = if KEEP { &mut keep[r * w..(r + 1) * w] } else { &mut [] };
        for j in 0..w {
            let pre = o[j] + bias[j];
            let kj = if KEEP { &mut k[j] } else { &mut unused };
            one::<T, ACT, KEEP>(&mut o[j], kj, pre);
        }
    }
}
crate::multiversion!(
    fn epilogue_rows<T: Float; const ACT: u8; const KEEP: bool>(out: &mut [T], keep: &mut [T], bias: &[T])
        => epilogue_rows_body
);

/// The CUDA kernels of the fused layer's element work (`linear_act.cu`, compiled after `activation.cu`, whose
/// device functions they use).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "linear_act",
    code: concat!(include_str!("activation.cu"), "\n", include_str!("linear_act.cu")),
    kernels: &ENTRY_POINTS,
};

/// This program's entry points: its own, then activation.cu's, which are compiled into it too.
const ENTRY_POINTS: [&str; 15] = {
    let a = super::activation::ENTRY_POINTS;
    [
        "bias_act_forward_f32",
        "act_backward_bias_partials_f32",
        "act_backward_inplace_f32",
        "bias_act_forward_f16",
        "act_backward_bias_partials_f16",
        "act_backward_inplace_f16",
        "bias_act_forward_bf16",
        "act_backward_bias_partials_bf16",
        "act_backward_inplace_bf16",
        a[0],
        a[1],
        a[2],
        a[3],
        a[4],
        a[5],
    ]
};

/// Host side of the fused linear + activation on the GPU.
#[path = "linear_act_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::activation::{activation_backward, activation_forward};
    use crate::ops::gradcheck::*;
    use crate::ops::linear::linear_forward;

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
        linear_act_forward(&mut out, Some(&mut pre), &inp, &w, Some(&bias), Activation::Relu, 1, 2, 2);
        assert_eq!(pre, [1.0, 3.0]);
        assert_eq!(out, [1.0, 3.0]);
        let mut d = [1.0f32, -1.0];
        let (mut dinp, mut dw, mut db) = ([0.0f32; 2], [0.0f32; 4], [0.0f32; 2]);
        linear_act_backward(
            Some(&mut dinp),
            &mut dw,
            Some(&mut db),
            &mut d,
            &pre,
            &inp,
            &w,
            Activation::Relu,
            &mut [],
            1,
            2,
            2,
        );
        assert_eq!(db, [1.0, -1.0]);
        assert_eq!(dw, [1.0, -2.0, -1.0, 2.0]);
        assert_eq!(dinp, [0.0, 2.0]);
    }

    /// The fused forward and backward (zero-initialised accumulators): (out, dinp, dweight, dbias).
    #[allow(clippy::type_complexity)]
    fn forward_backward<T: Float>(
        act: Activation,
        inp: &[T],
        w: &[T],
        bias: &[T],
        dout: &[T],
        (b, c, oc): (usize, usize, usize),
    ) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
        let (mut out, mut kept) = (vec![T::ZERO; b * oc], vec![T::ZERO; b * oc]);
        linear_act_forward(&mut out, Some(&mut kept), inp, w, Some(bias), act, b, c, oc);
        let (mut dinp, mut dw, mut db) = (vec![T::ZERO; b * c], vec![T::ZERO; oc * c], vec![T::ZERO; oc]);
        let mut d = dout.to_vec();
        linear_act_backward(Some(&mut dinp), &mut dw, Some(&mut db), &mut d, &kept, inp, w, act, &mut [], b, c, oc);
        (out, dinp, dw, db)
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
            // f64 kernel, then f32.
            let (out, dinp, dw, db) = forward_backward(act, &inp, &w, &bias, &dout, dims);
            for (what, got, want) in [("out", &out, &want), ("dinp", &dinp, &want_dinp), ("dweight", &dw, &want_dw)] {
                assert_close_scaled(&format!("{name} f64 {what}"), got, want, 1e-12);
            }
            assert_close_scaled(&format!("{name} f64 dbias"), &db, &want_db, 1e-12);
            let (inp, w, bias, dout) = (to_f32(&inp), to_f32(&w), to_f32(&bias), to_f32(&dout));
            let (out, dinp, dw, db) = forward_backward(act, &inp, &w, &bias, &dout, dims);
            for (what, got, want) in [("out", &out, &want), ("dinp", &dinp, &want_dinp), ("dweight", &dw, &want_dw)] {
                assert_close_scaled(&format!("{name} f32 {what}"), got, want, 2e-5);
            }
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
            linear_act_forward(&mut out, Some(&mut pre), &inp, &w, Some(&bias), act, b, c, oc);
            if act == Activation::Relu && pre.iter().any(|p| p.abs() < 1e-3) {
                panic!("test data puts a ReLU input at its kink; pick other seeds");
            }
            let (mut dinp, mut dw, mut db, mut d) = (vec![0.0; b * c], vec![0.0; oc * c], vec![0.0; oc], dout.clone());
            linear_act_backward(
                Some(&mut dinp),
                &mut dw,
                Some(&mut db),
                &mut d,
                &pre,
                &inp,
                &w,
                act,
                &mut [],
                b,
                c,
                oc,
            );
            let loss = |inp: &[f64], w: &[f64], bias: &[f64]| {
                let (mut out, mut pre) = (vec![0.0; b * oc], vec![0.0; b * oc]);
                linear_act_forward(&mut out, Some(&mut pre), inp, w, Some(bias), act, b, c, oc);
                dot(&dout, &out)
            };
            let (w0, bias0) = (w.clone(), bias.clone());
            check_grad(&format!("{act:?} dinp"), &mut inp, &dinp, |x| loss(x, &w0, &bias0));
            let inp0 = inp.clone();
            check_grad(&format!("{act:?} dweight"), &mut w, &dw, |x| loss(&inp0, x, &bias0));
            check_grad(&format!("{act:?} dbias"), &mut bias, &db, |x| loss(&inp0, &w0, x));
        }
    }

    /// The fused kernel gives the unfused pair's bits (linear, then activation; activation backward, then the
    /// split linear backward with its own bias sums): small shapes (one thread's seeded path), W3's MLP shape
    /// (threaded chunks with their epilogue; a backward split in halves) and a 520-wide one with an uneven
    /// last chunk, with and without a bias, on 1-3 threads; the forward without `keep` (evaluation) too.
    #[test]
    fn bit_identical_to_the_unfused_pair() {
        use crate::ops::linear::{linear_backward_split, linear_backward_split_scratch_len};
        let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (b, c, oc) in [(5usize, 7usize, 3usize), (300, 40, 520), (3200, 128, 256), (1100, 96, 520)] {
                let big = b * oc > 100_000;
                for act in ALL {
                    if big && ![Activation::Relu, Activation::Gelu, Activation::Silu].contains(&act) {
                        continue;
                    }
                    for with_bias in [true, false] {
                        let seed = (b + c + oc) as u64;
                        let inp = to_f32(&uniform(seed, b * c, -2.0, 2.0));
                        let w = to_f32(&uniform(seed + 1, oc * c, -0.5, 0.5));
                        let bias = to_f32(&uniform(seed + 2, oc, -0.5, 0.5));
                        let mut dout = to_f32(&uniform(seed + 3, b * oc, -1.0, 1.0));
                        dout[0] = f32::NAN; // ReLU masks it where inactive; the others carry it
                        let bias = with_bias.then_some(&bias[..]);
                        let mut scratch = vec![f32::NAN; linear_backward_split_scratch_len(b, c, oc)];
                        let what = format!("{act:?} {b}x{c}x{oc} bias {with_bias}, {threads} threads");
                        pool.install(|| {
                            // Unfused.
                            let (mut pre_u, mut out_u) = (vec![0.0f32; b * oc], vec![0.0f32; b * oc]);
                            linear_forward(&mut pre_u, &inp, &w, bias, b, c, oc);
                            activation_forward(act, &mut out_u, &pre_u);
                            let mut dpre = vec![0.0f32; b * oc];
                            activation_backward(act, &mut dpre, &dout, &pre_u);
                            let (mut dinp_u, mut dw_u, mut db_u) =
                                (vec![0.0f32; b * c], vec![0.1f32; oc * c], vec![0.2f32; oc]);
                            let db_opt = with_bias.then_some(&mut db_u[..]);
                            let s = &mut scratch[..];
                            linear_backward_split(Some(&mut dinp_u), &mut dw_u, db_opt, &dpre, &inp, &w, s, b, c, oc);
                            // Fused.
                            let (mut kept, mut out_f) = (vec![f32::NAN; b * oc], vec![f32::NAN; b * oc]);
                            linear_act_forward(&mut out_f, Some(&mut kept), &inp, &w, bias, act, b, c, oc);
                            let mut out_eval = vec![f32::NAN; b * oc];
                            linear_act_forward(&mut out_eval, None, &inp, &w, bias, act, b, c, oc);
                            let (mut dinp_f, mut dw_f, mut db_f) =
                                (vec![f32::NAN; b * c], vec![0.1f32; oc * c], vec![0.2f32; oc]);
                            let mut d = dout.clone();
                            let db_opt = with_bias.then_some(&mut db_f[..]);
                            let s = &mut scratch[..];
                            linear_act_backward(
                                Some(&mut dinp_f),
                                &mut dw_f,
                                db_opt,
                                &mut d,
                                &kept,
                                &inp,
                                &w,
                                act,
                                s,
                                b,
                                c,
                                oc,
                            );
                            assert!(same(&out_u, &out_f), "{what}: out");
                            assert!(same(&out_u, &out_eval), "{what}: out without keep");
                            assert!(same(&dpre, &d), "{what}: dpre");
                            assert!(same(&dinp_u, &dinp_f), "{what}: dinp");
                            assert!(same(&dw_u, &dw_f), "{what}: dweight");
                            assert!(same(&db_u, &db_f), "{what}: dbias");
                        });
                    }
                }
            }
        }
    }

    /// What the forward keeps gives the unfused backward's bits for every activation, and the shared forward
    /// is each module's: over a sweep of inputs (zero, tiny, both tails, NaN, infinities) and gradients.
    #[test]
    fn kept_derivative_gives_the_backward_bits() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0071).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 200.0, -200.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        let gs: Vec<f32> = (0..xs.len()).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.031).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for act in ALL {
            let (mut y, mut want_y) = (vec![0.0f32; xs.len()], vec![0.0f32; xs.len()]);
            let mut kept = vec![0.0f32; xs.len()];
            activation_forward(act, &mut want_y, &xs);
            y.copy_from_slice(&xs);
            epilogue_serial(act, &mut y, Some(&mut kept), &[]);
            assert_eq!(bits(&y), bits(&want_y), "{act:?} forward");
            let mut want_d = vec![0.0f32; xs.len()];
            activation_backward(act, &mut want_d, &gs, &xs);
            let mut d = gs.clone();
            grad_in_place(act, &mut d, &kept);
            assert_eq!(bits(&d), bits(&want_d), "{act:?} backward");
        }
    }
}
