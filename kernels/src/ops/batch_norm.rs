//! Batch normalisation over the channels of `[N, C, HW]` (PyTorch's `nn.BatchNorm2d` on NCHW with
//! `HW = H * W`, and `nn.BatchNorm1d` on `[N, C]` with `HW = 1`): per channel
//! `out = (x - mean) * invstd * weight + bias`, `invstd = 1 / sqrt(var + eps)`.
//!
//! Training mode normalises with the batch statistics (biased variance) and updates the running statistics
//! as PyTorch does, `running = (1 - momentum) * running + momentum * stat`, with the unbiased variance
//! (`var * M / (M - 1)`, `M = N * HW`) for `running_var`. Eval mode normalises with the running statistics.
//!
//! A channel's elements are strided across the batch (one `HW` run per sample), so the kernels work in two
//! phases: per-channel reductions (parallel over channels and, for large channels, over the channel's
//! elements), then an elementwise pass parallel over samples, whose rows are contiguous.

use rayon::prelude::*;

use super::par::{blocked_sum, rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Channels whose backward reductions are kept at once, in a stack array of f64 pairs: the backward needs
/// two sums per channel before it can write `dinp`, and the caller passes no buffer for them.
const CH_BLOCK: usize = 64;

/// One channel's slots written by the training statistics pass: save_mean, save_invstd, running_mean,
/// running_var (as zipped by rayon).
type ChannelStats<'a, T> = (((&'a mut T, &'a mut T), &'a mut T), &'a mut T);

/// Sum over the pieces of channel `ch`'s elements with channel-local indices `[lo, hi)` (index
/// `i = sample * hw + k`): `f(start, len)` sums the contiguous run `start..start + len` of a `[N, C, HW]`
/// buffer, and the runs are added in order.
#[inline]
fn channel_pieces(ch: usize, c: usize, hw: usize, lo: usize, hi: usize, f: &impl Fn(usize, usize) -> f64) -> f64 {
    let mut acc = 0.0;
    let mut i = lo;
    while i < hi {
        let (s, k) = (i / hw, i % hw);
        let len = (hw - k).min(hi - i);
        acc += f((s * c + ch) * hw + k, len);
        i += len;
    }
    acc
}

/// Sum of `f` over all `m = N * HW` elements of channel `ch`, in f64, over fixed index blocks
/// ([`blocked_sum`]): the same bits whether `inner` runs the blocks in parallel or not.
fn channel_sum<F>(ch: usize, c: usize, hw: usize, m: usize, inner: bool, f: F) -> f64
where
    F: Fn(usize, usize) -> f64 + Sync,
{
    blocked_sum(m, inner, |lo, hi| channel_pieces(ch, c, hw, lo, hi, &f))
}

/// For every sample and every channel in `[c0, c1)`, calls `f(ch, dst_row, a_row, b_row)` on the `HW`-long
/// rows of three `[N, C, HW]` buffers, in parallel over groups of samples when `parallel`.
#[allow(clippy::too_many_arguments)]
fn for_rows<T, F>(dst: &mut [T], a: &[T], b: &[T], c: usize, hw: usize, c0: usize, c1: usize, parallel: bool, f: F)
where
    T: Float,
    F: Fn(usize, &mut [T], &[T], &[T]) + Sync,
{
    let stride = c * hw;
    let samples = |(d, (a, b)): (&mut [T], (&[T], &[T]))| {
        for ((d, a), b) in d.chunks_exact_mut(stride).zip(a.chunks_exact(stride)).zip(b.chunks_exact(stride)) {
            for ch in c0..c1 {
                let r = ch * hw..(ch + 1) * hw;
                f(ch, &mut d[r.clone()], &a[r.clone()], &b[r]);
            }
        }
    };
    if parallel && dst.len() > stride {
        let chunk = rows_per_task((c1 - c0) * hw) * stride;
        dst.par_chunks_mut(chunk).zip(a.par_chunks(chunk).zip(b.par_chunks(chunk))).for_each(samples);
    } else {
        samples((dst, (a, b)));
    }
}

/// `out = (x - mean_c) * scale_c + shift_c` with `(mean, scale, shift) = coef(c)`.
fn normalize<T: Float>(
    out: &mut [T],
    inp: &[T],
    c: usize,
    hw: usize,
    parallel: bool,
    coef: impl Fn(usize) -> (T, T, T) + Sync,
) {
    for_rows(out, inp, inp, c, hw, 0, c, parallel, |ch, o, x, _| {
        let (mean, scale, shift) = coef(ch);
        for (o, &v) in o.iter_mut().zip(x) {
            *o = (v - mean) * scale + shift;
        }
    });
}

/// `(scale, shift)` of channel `ch`: `invstd * weight` and `bias`, with weight 1 and bias 0 when absent.
#[inline]
fn affine<T: Float>(ch: usize, invstd: f64, weight: Option<&[T]>, bias: Option<&[T]>) -> (T, T) {
    let w = weight.map_or(1.0, |w| w[ch].to_f64());
    (T::from_f64(invstd * w), bias.map_or(T::ZERO, |b| b[ch]))
}

/// Checks the shapes of the per-channel vectors.
fn check_channel_vecs<T>(what: &str, c: usize, vecs: &[(&str, Option<&[T]>)]) {
    for (name, v) in vecs {
        if let Some(v) = v {
            assert_eq!(v.len(), c, "{what}: {name} must be [C]");
        }
    }
}

/// Batch norm forward in training mode (overwrites `out`, `save_mean`, `save_invstd`; updates
/// `running_mean` / `running_var` in place).
///
/// Normalises each channel with its batch mean and biased variance (accumulated in f64, two passes), saves
/// the mean and `invstd = 1 / sqrt(var + eps)` for the backward, and updates
/// `running_mean = (1 - momentum) * running_mean + momentum * mean`,
/// `running_var = (1 - momentum) * running_var + momentum * var * M / (M - 1)` (unbiased), `M = N * HW`.
/// `weight` / `bias` are `None` for `affine=False`.
///
/// inp: [N, C, HW], weight: [C], bias: [C], out: [N, C, HW], save_mean, save_invstd: [C],
/// running_mean, running_var: [C].
///
/// Panics if `N * HW <= 1`, where the unbiased variance is undefined (PyTorch raises "Expected more than 1
/// value per channel when training").
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_train<T: Float>(
    out: &mut [T],
    save_mean: &mut [T],
    save_invstd: &mut [T],
    running_mean: &mut [T],
    running_var: &mut [T],
    inp: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
    momentum: f64,
) {
    let what = "batch_norm_forward_train";
    assert_eq!(inp.len(), n * c * hw, "{what}: inp must be [N, C, HW]");
    assert_eq!(out.len(), n * c * hw, "{what}: out must be [N, C, HW]");
    check_channel_vecs(
        what,
        c,
        &[
            ("save_mean", Some(&*save_mean)),
            ("save_invstd", Some(&*save_invstd)),
            ("running_mean", Some(&*running_mean)),
            ("running_var", Some(&*running_var)),
            ("weight", weight),
            ("bias", bias),
        ],
    );
    if c == 0 {
        return;
    }
    let m = n * hw;
    assert!(m > 1, "{what}: expected more than 1 value per channel when training, got N * HW = {m}");
    let parallel = n * c * hw >= PAR_MIN_ELEMS;
    // Split a channel's own sums too when the channel alone is big (e.g. C = 3 image inputs).
    let inner = parallel && m >= PAR_MIN_ELEMS;
    let (mf, keep) = (m as f64, 1.0 - momentum);

    let stats = |(ch, (((sm, si), rm), rv)): (usize, ChannelStats<'_, T>)| {
        let mean = channel_sum(ch, c, hw, m, inner, |s, l| inp[s..s + l].iter().map(|v| v.to_f64()).sum()) / mf;
        let var =
            channel_sum(ch, c, hw, m, inner, |s, l| inp[s..s + l].iter().map(|v| (v.to_f64() - mean).powi(2)).sum())
                / mf;
        *sm = T::from_f64(mean);
        *si = T::from_f64(1.0 / (var + eps).sqrt());
        *rm = T::from_f64(keep * rm.to_f64() + momentum * mean);
        *rv = T::from_f64(keep * rv.to_f64() + momentum * var * mf / (mf - 1.0));
    };
    if parallel {
        save_mean
            .par_iter_mut()
            .zip(save_invstd.par_iter_mut())
            .zip(running_mean.par_iter_mut())
            .zip(running_var.par_iter_mut())
            .enumerate()
            .for_each(stats);
    } else {
        save_mean
            .iter_mut()
            .zip(save_invstd.iter_mut())
            .zip(running_mean.iter_mut())
            .zip(running_var.iter_mut())
            .enumerate()
            .for_each(stats);
    }

    let (save_mean, save_invstd) = (&*save_mean, &*save_invstd);
    normalize(out, inp, c, hw, parallel, |ch| {
        // The saved (rounded) invstd, so that the backward differentiates exactly this forward.
        let (scale, shift) = affine(ch, save_invstd[ch].to_f64(), weight, bias);
        (save_mean[ch], scale, shift)
    });
}

/// Batch norm forward in eval mode: normalises with the running statistics,
/// `out = (x - running_mean) / sqrt(running_var + eps) * weight + bias` (overwrites `out`).
///
/// inp: [N, C, HW], running_mean, running_var, weight, bias: [C], out: [N, C, HW].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_eval<T: Float>(
    out: &mut [T],
    inp: &[T],
    running_mean: &[T],
    running_var: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
) {
    let what = "batch_norm_forward_eval";
    assert_eq!(inp.len(), n * c * hw, "{what}: inp must be [N, C, HW]");
    assert_eq!(out.len(), n * c * hw, "{what}: out must be [N, C, HW]");
    check_channel_vecs(
        what,
        c,
        &[("running_mean", Some(running_mean)), ("running_var", Some(running_var)), ("weight", weight), ("bias", bias)],
    );
    if c * hw == 0 {
        return;
    }
    let parallel = n * c * hw >= PAR_MIN_ELEMS;
    normalize(out, inp, c, hw, parallel, |ch| {
        // Recomputed per (sample, channel) row rather than stored: the caller passes no [C] scratch, and one
        // sqrt per HW elements is noise.
        let invstd = 1.0 / (running_var[ch].to_f64() + eps).sqrt();
        let (scale, shift) = affine(ch, invstd, weight, bias);
        (running_mean[ch], scale, shift)
    });
}

/// Batch norm backward for the training-mode forward (batch statistics), per channel with
/// `xhat = (x - mean) * invstd`, `M = N * HW`:
/// `dinp = weight * invstd * (dout - sum(dout) / M - xhat * sum(dout * xhat) / M)` (overwrites `dinp`),
/// `dweight += sum(dout * xhat)`, `dbias += sum(dout)` (accumulate; pass `None` to skip either).
/// The two sums run over the channel's `M` elements, in f64.
///
/// dout, inp: [N, C, HW], save_mean, save_invstd: [C] (from [`batch_norm_forward_train`]), weight: [C],
/// dinp: [N, C, HW], dweight, dbias: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward<T: Float>(
    dinp: &mut [T],
    dweight: Option<&mut [T]>,
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    save_mean: &[T],
    save_invstd: &[T],
    weight: Option<&[T]>,
    n: usize,
    c: usize,
    hw: usize,
) {
    let what = "batch_norm_backward";
    assert_eq!(inp.len(), n * c * hw, "{what}: inp must be [N, C, HW]");
    assert_eq!(dout.len(), n * c * hw, "{what}: dout must be [N, C, HW]");
    assert_eq!(dinp.len(), n * c * hw, "{what}: dinp must be [N, C, HW]");
    check_channel_vecs(
        what,
        c,
        &[
            ("save_mean", Some(save_mean)),
            ("save_invstd", Some(save_invstd)),
            ("weight", weight),
            ("dweight", dweight.as_deref()),
            ("dbias", dbias.as_deref()),
        ],
    );
    let m = n * hw;
    if c == 0 || m == 0 {
        return;
    }
    let (mut dweight, mut dbias) = (dweight, dbias);
    let parallel = n * c * hw >= PAR_MIN_ELEMS;
    let inner = parallel && m >= PAR_MIN_ELEMS;
    let mf = m as f64;

    for c0 in (0..c).step_by(CH_BLOCK) {
        let c1 = (c0 + CH_BLOCK).min(c);
        // (sum dout, sum dout * xhat) per channel of the block.
        let mut sums = [(0.0f64, 0.0f64); CH_BLOCK];
        let reduce = |(k, s): (usize, &mut (f64, f64))| {
            let ch = c0 + k;
            let (mean, invstd) = (save_mean[ch].to_f64(), save_invstd[ch].to_f64());
            let s_dy = channel_sum(ch, c, hw, m, inner, |st, l| dout[st..st + l].iter().map(|g| g.to_f64()).sum());
            let s_dyx = channel_sum(ch, c, hw, m, inner, |st, l| {
                dout[st..st + l].iter().zip(&inp[st..st + l]).map(|(g, x)| g.to_f64() * (x.to_f64() - mean)).sum()
            });
            *s = (s_dy, s_dyx * invstd);
        };
        if parallel {
            sums[..c1 - c0].par_iter_mut().enumerate().for_each(reduce);
        } else {
            sums[..c1 - c0].iter_mut().enumerate().for_each(reduce);
        }

        for (k, &(s_dy, s_dyx)) in sums[..c1 - c0].iter().enumerate() {
            if let Some(dw) = dweight.as_deref_mut() {
                dw[c0 + k] += T::from_f64(s_dyx);
            }
            if let Some(db) = dbias.as_deref_mut() {
                db[c0 + k] += T::from_f64(s_dy);
            }
        }

        let sums = &sums;
        for_rows(dinp, dout, inp, c, hw, c0, c1, parallel, |ch, dx, dy, x| {
            let (s_dy, s_dyx) = sums[ch - c0];
            let invstd = save_invstd[ch].to_f64();
            let w = weight.map_or(1.0, |w| w[ch].to_f64());
            let a = T::from_f64(w * invstd);
            let mean_dy = T::from_f64(s_dy / mf);
            // xhat * mean(dout * xhat) = (x - mean) * k
            let k = T::from_f64(invstd * s_dyx / mf);
            let mean = save_mean[ch];
            for ((dx, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
                *dx = a * (g - mean_dy - (v - mean) * k);
            }
        });
    }
}

/// The CUDA kernels of batch normalisation (`batch_norm.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "batch_norm",
    code: include_str!("batch_norm.cu"),
    kernels: &[
        "bn_forward_train_f32",
        "bn_forward_eval_f32",
        "bn_backward_f32",
        "bn_forward_train_f16",
        "bn_forward_eval_f16",
        "bn_backward_f16",
        "bn_forward_train_bf16",
        "bn_forward_eval_bf16",
        "bn_backward_bf16",
    ],
};

/// Host side of `batch_norm.cu`.
#[path = "batch_norm_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    const EPS: f64 = 1e-5;
    const MOMENTUM: f64 = 0.1;

    #[derive(Default)]
    struct Reference {
        out: Vec<f64>,
        mean: Vec<f64>,
        invstd: Vec<f64>,
        running_mean: Vec<f64>,
        running_var: Vec<f64>,
        eval_out: Vec<f64>,
        dinp: Vec<f64>,
        dweight: Vec<f64>,
        dbias: Vec<f64>,
    }

    /// Naive f64 reference from the definitions (PyTorch semantics, momentum 0.1): batch mean and biased
    /// variance, running stats with the unbiased variance, eval output from the running stats `rm0` / `rv0`
    /// given, and the backward by the textbook chain rule through var and mean (not the kernel's closed
    /// form): dxhat = dy * w, dvar = sum dxhat (x - mu) (-1/2) (var + eps)^(-3/2),
    /// dmu = -sum dxhat * invstd + dvar * sum -2 (x - mu) / M, dx = dxhat * invstd + dvar * 2 (x - mu) / M + dmu / M.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f64],
        w: &[f64],
        b: &[f64],
        rm0: &[f64],
        rv0: &[f64],
        dy: &[f64],
        n: usize,
        c: usize,
        hw: usize,
    ) -> Reference {
        let len = n * c * hw;
        let mut r = Reference {
            out: vec![0.0; len],
            eval_out: vec![0.0; len],
            dinp: vec![0.0; len],
            dweight: vec![0.0; c],
            dbias: vec![0.0; c],
            ..Default::default()
        };
        let mf = (n * hw) as f64;
        for ch in 0..c {
            let idx: Vec<usize> = (0..n).flat_map(|i| (0..hw).map(move |k| (i * c + ch) * hw + k)).collect();
            let mu = idx.iter().map(|&i| x[i]).sum::<f64>() / mf;
            let var = idx.iter().map(|&i| (x[i] - mu).powi(2)).sum::<f64>() / mf;
            let invstd = 1.0 / (var + EPS).sqrt();
            r.mean.push(mu);
            r.invstd.push(invstd);
            r.running_mean.push((1.0 - MOMENTUM) * rm0[ch] + MOMENTUM * mu);
            r.running_var.push((1.0 - MOMENTUM) * rv0[ch] + MOMENTUM * var * mf / (mf - 1.0));
            let mut dvar = 0.0;
            for &i in &idx {
                let xhat = (x[i] - mu) * invstd;
                r.out[i] = xhat * w[ch] + b[ch];
                r.eval_out[i] = (x[i] - rm0[ch]) / (rv0[ch] + EPS).sqrt() * w[ch] + b[ch];
                r.dweight[ch] += dy[i] * xhat;
                r.dbias[ch] += dy[i];
                dvar += dy[i] * w[ch] * (x[i] - mu) * -0.5 * (var + EPS).powf(-1.5);
            }
            let mut dmu = 0.0;
            for &i in &idx {
                dmu += -dy[i] * w[ch] * invstd + dvar * -2.0 * (x[i] - mu) / mf;
            }
            for &i in &idx {
                r.dinp[i] = dy[i] * w[ch] * invstd + dvar * 2.0 * (x[i] - mu) / mf + dmu / mf;
            }
        }
        r
    }

    #[test]
    fn hand_checked_values() {
        // One channel, N = 2, HW = 2: values [1, 2, 3, 4], mean 2.5, biased var 1.25, unbiased 5/3.
        // From the PyTorch defaults (running_mean 0, running_var 1) with momentum 0.1:
        // running_mean = 0.25, running_var = 0.9 + 0.1 * 5/3 = 1.0666666666666667.
        let x = [1.0f64, 2.0, 3.0, 4.0];
        let (mut y, mut sm, mut si, mut rm, mut rv) = ([0.0; 4], [0.0], [0.0], [0.0], [1.0]);
        batch_norm_forward_train(&mut y, &mut sm, &mut si, &mut rm, &mut rv, &x, None, None, 2, 1, 2, EPS, MOMENTUM);
        // (x - 2.5) / sqrt(1.25001), numpy float64.
        let want = [-1.3416354199689269, -0.447211806656309, 0.447211806656309, 1.3416354199689269];
        assert_close("train out", &y, &want, 1e-14, 0.0);
        assert_eq!(sm, [2.5]);
        assert_close("invstd", &si, &[1.0 / 1.25001f64.sqrt()], 1e-15, 0.0);
        assert_close("running_mean", &rm, &[0.25], 1e-15, 0.0);
        assert_close("running_var", &rv, &[1.0666666666666667], 1e-15, 0.0);

        // Eval with those running stats: (x - 0.25) / sqrt(1.0666666666666667 + 1e-5) * 2 - 1.
        batch_norm_forward_eval(&mut y, &x, &rm, &rv, Some(&[2.0]), Some(&[-1.0]), 2, 1, 2, EPS);
        let want_eval: Vec<f64> =
            x.iter().map(|v| (v - 0.25) / (1.0666666666666667f64 + 1e-5).sqrt() * 2.0 - 1.0).collect();
        assert_close("eval out", &y, &want_eval, 1e-14, 0.0);

        // dout = 1: dinp = 0 (a per-channel shift changes nothing), dbias = M, dweight = sum xhat = 0.
        let (mut dx, mut dw, mut db) = ([9.0; 4], [0.0], [0.0]);
        batch_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &[1.0; 4], &x, &sm, &si, None, 2, 1, 2);
        assert_close("dinp", &dx, &[0.0; 4], 0.0, 1e-15);
        assert_eq!(db, [4.0]);
        assert_close("dweight", &dw, &[0.0], 0.0, 1e-15);
        // dout = xhat: all of it lies along xhat, so dinp = invstd * (xhat - xhat * mean(xhat^2)) and
        // mean(xhat^2) = var / (var + eps); dweight = sum xhat^2 = 4 * 1.25 / 1.25001.
        batch_norm_backward(&mut dx, Some(&mut dw), None, &want, &x, &sm, &si, None, 2, 1, 2);
        let k = 1.25 / 1.25001;
        let want_dx: Vec<f64> = want.iter().map(|&xh| si[0] * xh * (1.0 - k)).collect();
        assert_close("dinp along xhat", &dx, &want_dx, 1e-9, 1e-15);
        assert_close("dweight along xhat", &dw, &[4.0 * k], 1e-14, 0.0);
    }

    #[test]
    #[should_panic(expected = "more than 1 value per channel")]
    fn training_with_one_value_per_channel_panics() {
        let (mut y, mut sm, mut si, mut rm, mut rv) = ([0.0f32; 2], [0.0; 2], [0.0; 2], [0.0; 2], [1.0; 2]);
        batch_norm_forward_train(
            &mut y,
            &mut sm,
            &mut si,
            &mut rm,
            &mut rv,
            &[1.0, 2.0],
            None,
            None,
            1,
            2,
            1,
            EPS,
            0.1,
        );
    }

    struct Case {
        x: Vec<f64>,
        w: Vec<f64>,
        b: Vec<f64>,
        rm: Vec<f64>,
        rv: Vec<f64>,
        dy: Vec<f64>,
    }

    fn case(seed: u64, n: usize, c: usize, hw: usize) -> Case {
        // A per-channel offset so channels really differ (and the mean is not ~0).
        let mut x = round_f32(&uniform(seed, n * c * hw, -2.0, 2.0));
        for (i, v) in x.iter_mut().enumerate() {
            *v = (*v + ((i / hw) % c) as f64 * 0.5) as f32 as f64;
        }
        Case {
            x,
            w: round_f32(&uniform(seed + 1, c, 0.5, 1.5)),
            b: round_f32(&uniform(seed + 2, c, -0.5, 0.5)),
            rm: round_f32(&uniform(seed + 3, c, -0.5, 0.5)),
            rv: round_f32(&uniform(seed + 4, c, 0.5, 2.0)),
            dy: round_f32(&uniform(seed + 5, n * c * hw, -1.0, 1.0)),
        }
    }

    /// Runs train forward, eval forward and backward (accumulating into `init` gradients) at type `T`.
    struct Run<T> {
        out: Vec<T>,
        mean: Vec<T>,
        invstd: Vec<T>,
        rm: Vec<T>,
        rv: Vec<T>,
        eval_out: Vec<T>,
        dinp: Vec<T>,
        dw: Vec<T>,
        db: Vec<T>,
    }

    fn run<T: Float>(k: &Case, init_dw: &[T], init_db: &[T], n: usize, c: usize, hw: usize) -> Run<T> {
        let t = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
        let (x, w, b, dy) = (t(&k.x), t(&k.w), t(&k.b), t(&k.dy));
        let len = n * c * hw;
        let mut r = Run {
            out: vec![T::ZERO; len],
            mean: vec![T::ZERO; c],
            invstd: vec![T::ZERO; c],
            rm: t(&k.rm),
            rv: t(&k.rv),
            eval_out: vec![T::ZERO; len],
            dinp: vec![T::from_f64(f64::NAN); len],
            dw: init_dw.to_vec(),
            db: init_db.to_vec(),
        };
        batch_norm_forward_eval(&mut r.eval_out, &x, &r.rm, &r.rv, Some(&w), Some(&b), n, c, hw, EPS);
        let (rm, rv) = (&mut r.rm, &mut r.rv);
        batch_norm_forward_train(
            &mut r.out,
            &mut r.mean,
            &mut r.invstd,
            rm,
            rv,
            &x,
            Some(&w),
            Some(&b),
            n,
            c,
            hw,
            EPS,
            MOMENTUM,
        );
        let (dw, db) = (Some(&mut r.dw[..]), Some(&mut r.db[..]));
        batch_norm_backward(&mut r.dinp, dw, db, &dy, &x, &r.mean, &r.invstd, Some(&w), n, c, hw);
        r
    }

    #[test]
    fn matches_f64_reference() {
        // Sequential NCHW; BatchNorm1d; 8 x 4 x 4096 (parallel over channels and samples); 2 x 2 x 65536
        // (each channel's sums split too); 1100 x 130 (BatchNorm1d, parallel, three channel blocks).
        for (n, c, hw, seed) in
            [(3usize, 4usize, 5usize, 1u64), (6, 3, 1, 2), (8, 4, 4096, 3), (2, 2, 65536, 4), (1100, 130, 1, 5)]
        {
            let k = case(seed, n, c, hw);
            let r = reference(&k.x, &k.w, &k.b, &k.rm, &k.rv, &k.dy, n, c, hw);
            let init_dw = round_f32(&uniform(seed + 6, c, -1.0, 1.0));
            let init_db = round_f32(&uniform(seed + 7, c, -1.0, 1.0));
            let want_dw: Vec<f64> = r.dweight.iter().zip(&init_dw).map(|(a, b)| a + b).collect();
            let want_db: Vec<f64> = r.dbias.iter().zip(&init_db).map(|(a, b)| a + b).collect();

            let g: Run<f64> = run(&k, &init_dw, &init_db, n, c, hw);
            assert_close("f64 out", &g.out, &r.out, 1e-12, 1e-12);
            assert_close("f64 save_mean", &g.mean, &r.mean, 1e-12, 1e-14);
            assert_close("f64 save_invstd", &g.invstd, &r.invstd, 1e-12, 0.0);
            assert_close("f64 running_mean", &g.rm, &r.running_mean, 1e-12, 1e-14);
            assert_close("f64 running_var", &g.rv, &r.running_var, 1e-12, 0.0);
            assert_close("f64 eval out", &g.eval_out, &r.eval_out, 1e-12, 1e-12);
            assert_close_scaled("f64 dinp", &g.dinp, &r.dinp, 1e-12);
            assert_close_scaled("f64 dweight", &g.dw, &want_dw, 1e-12);
            assert_close_scaled("f64 dbias", &g.db, &want_db, 1e-12);

            let g: Run<f32> = run(&k, &to_f32(&init_dw), &to_f32(&init_db), n, c, hw);
            assert_close_scaled("f32 out", &g.out, &r.out, 1e-5);
            assert_close("f32 save_mean", &g.mean, &r.mean, 1e-6, 1e-7);
            assert_close("f32 save_invstd", &g.invstd, &r.invstd, 1e-6, 0.0);
            assert_close("f32 running_mean", &g.rm, &r.running_mean, 1e-6, 1e-7);
            assert_close("f32 running_var", &g.rv, &r.running_var, 1e-6, 0.0);
            assert_close_scaled("f32 eval out", &g.eval_out, &r.eval_out, 1e-5);
            assert_close_scaled("f32 dinp", &g.dinp, &r.dinp, 1e-5);
            assert_close_scaled("f32 dweight", &g.dw, &want_dw, 1e-5);
            assert_close_scaled("f32 dbias", &g.db, &want_db, 1e-5);
        }
    }

    #[test]
    fn running_stats_follow_pytorch_over_several_steps() {
        // Three training steps on different batches from PyTorch's initial state (0, 1): each step blends
        // in 10% of the batch mean and of the unbiased batch variance.
        let (n, c, hw) = (4, 3, 2);
        let (mut rm, mut rv) = (vec![0.0f64; c], vec![1.0f64; c]);
        let (mut want_rm, mut want_rv) = (rm.clone(), rv.clone());
        for step in 0..3u64 {
            let k = case(20 + step, n, c, hw);
            let r = reference(&k.x, &k.w, &k.b, &want_rm, &want_rv, &k.dy, n, c, hw);
            (want_rm, want_rv) = (r.running_mean, r.running_var);
            let (mut y, mut sm, mut si) = (vec![0.0; n * c * hw], vec![0.0; c], vec![0.0; c]);
            batch_norm_forward_train(
                &mut y, &mut sm, &mut si, &mut rm, &mut rv, &k.x, None, None, n, c, hw, EPS, MOMENTUM,
            );
        }
        assert_close("running_mean", &rm, &want_rm, 1e-13, 1e-15);
        assert_close("running_var", &rv, &want_rv, 1e-13, 0.0);
        // Momentum 0 freezes them, momentum 1 replaces them with the last batch's statistics.
        let k = case(30, n, c, hw);
        let r = reference(&k.x, &k.w, &k.b, &rm, &rv, &k.dy, n, c, hw);
        let (mut y, mut sm, mut si) = (vec![0.0; n * c * hw], vec![0.0; c], vec![0.0; c]);
        let (mut rm0, mut rv0) = (rm.clone(), rv.clone());
        batch_norm_forward_train(&mut y, &mut sm, &mut si, &mut rm0, &mut rv0, &k.x, None, None, n, c, hw, EPS, 0.0);
        assert_eq!((&rm0, &rv0), (&rm, &rv));
        batch_norm_forward_train(&mut y, &mut sm, &mut si, &mut rm0, &mut rv0, &k.x, None, None, n, c, hw, EPS, 1.0);
        let mf = (n * hw) as f64;
        let var = |ch: usize| (1.0 / r.invstd[ch].powi(2) - EPS) * mf / (mf - 1.0);
        assert_close("running_mean, momentum 1", &rm0, &r.mean, 1e-13, 1e-15);
        assert_close("running_var, momentum 1", &rv0, &(0..c).map(var).collect::<Vec<_>>(), 1e-9, 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, c, hw) = (3, 2, 3);
        let k = case(40, n, c, hw);
        let g = uniform(41, n * c * hw, -1.0, 1.0);
        let (mut x, mut w, mut b) = (k.x.clone(), k.w.clone(), k.b.clone());
        let len = n * c * hw;
        let (mut y, mut sm, mut si) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
        // Running stats are a side output: updated in scratch copies so every loss evaluation is the same.
        let (mut rm, mut rv) = (k.rm.clone(), k.rv.clone());
        batch_norm_forward_train(
            &mut y,
            &mut sm,
            &mut si,
            &mut rm,
            &mut rv,
            &x,
            Some(&w),
            Some(&b),
            n,
            c,
            hw,
            EPS,
            MOMENTUM,
        );
        let (mut dx, mut dw, mut db) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
        batch_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &g, &x, &sm, &si, Some(&w), n, c, hw);

        let mut loss = |x: &[f64], w: &[f64], b: &[f64]| {
            batch_norm_forward_train(
                &mut y,
                &mut sm,
                &mut si,
                &mut rm,
                &mut rv,
                x,
                Some(w),
                Some(b),
                n,
                c,
                hw,
                EPS,
                MOMENTUM,
            );
            dot(&g, &y)
        };
        let (x0, w0, b0) = (x.clone(), w.clone(), b.clone());
        check_grad("dinp", &mut x, &dx, |v| loss(v, &w0, &b0));
        check_grad("dweight", &mut w, &dw, |v| loss(&x0, v, &b0));
        check_grad("dbias", &mut b, &db, |v| loss(&x0, &w0, v));
    }

    #[test]
    fn no_affine_and_accumulation() {
        // affine=False equals weight 1, bias 0; the backward then still writes dinp. Parameter gradients
        // accumulate (two calls double them) while dinp is overwritten (same value both times).
        for (n, c, hw) in [(3usize, 5usize, 4usize), (8, 4, 4096)] {
            let k = case(50, n, c, hw);
            let (ones, zeros) = (vec![1.0; c], vec![0.0; c]);
            let r = reference(&k.x, &ones, &zeros, &k.rm, &k.rv, &k.dy, n, c, hw);
            let len = n * c * hw;
            let (mut y, mut sm, mut si) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
            let (mut rm, mut rv) = (k.rm.clone(), k.rv.clone());
            batch_norm_forward_train(
                &mut y, &mut sm, &mut si, &mut rm, &mut rv, &k.x, None, None, n, c, hw, EPS, MOMENTUM,
            );
            assert_close("out, no affine", &y, &r.out, 1e-12, 1e-12);
            batch_norm_forward_eval(&mut y, &k.x, &k.rm, &k.rv, None, None, n, c, hw, EPS);
            assert_close("eval out, no affine", &y, &r.eval_out, 1e-12, 1e-12);
            let mut dx = vec![f64::NAN; len];
            batch_norm_backward(&mut dx, None, None, &k.dy, &k.x, &sm, &si, None, n, c, hw);
            assert_close_scaled("dinp, no affine", &dx, &r.dinp, 1e-12);

            let (x, dy) = (to_f32(&k.x), to_f32(&k.dy));
            let (sm, si) = (to_f32(&sm), to_f32(&si));
            let (mut dw, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
            let mut dx1 = vec![0.0f32; len];
            batch_norm_backward(&mut dx1, Some(&mut dw), Some(&mut db), &dy, &x, &sm, &si, None, n, c, hw);
            let (dw1, db1) = (dw.clone(), db.clone());
            let mut dx2 = vec![0.0f32; len];
            batch_norm_backward(&mut dx2, Some(&mut dw), Some(&mut db), &dy, &x, &sm, &si, None, n, c, hw);
            assert_eq!(dx1, dx2);
            assert_eq!(dw, dw1.iter().map(|v| 2.0 * v).collect::<Vec<f32>>());
            assert_eq!(db, db1.iter().map(|v| 2.0 * v).collect::<Vec<f32>>());
        }
    }
}
