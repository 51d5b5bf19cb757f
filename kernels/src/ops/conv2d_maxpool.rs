//! A convolution followed by a max pool over its output (`Conv2d` -> `MaxPool2d`, the stem of most CNNs),
//! fused (optionally with a ReLU after the pool): the same results bit for bit as [`conv2d_forward`] then
//! [`max_pool2d_forward`] (then `relu_forward`), and as (`relu_backward`,) [`max_pool2d_backward`] then
//! [`conv2d_backward`], without the full-resolution output and its gradient.
//!
//! Why: the unfused pair writes the convolution's `[N, OC, OH, OW]` output to memory, the pool reads it back,
//! and the backward does the same with its gradient (the pool zeroes and scatters it, the convolution reads
//! it). At the W2 shapes those are 19 MB each way per step, and memory is what the pools wait for. Fused, each
//! slot computes one sample's convolution into a buffer of its own (`[OC, OH, OW]`, 50 KB at W2), pools it
//! while it is in cache, and in the backward scatters one sample's pooled gradient into that buffer just
//! before the convolution's products read it.
//!
//! Bit-identical to the pair because it runs the pair's own per-sample code: the convolution's
//! `forward_sample` / the backward's slot loop ([`backward_impl`] with a pooled source), and the pool's
//! per-plane scans on the calling thread. The one exception is a layer whose weight-gradient rows are too
//! short to hold the per-slot bias partials (`C/groups*KH*KW < min(N, 8)`): the unfused backward then sums the
//! bias gradient in f64 over the whole output gradient, which the fused one never holds, so it sums per slot
//! (as every other layer does) and may differ from the pair in the last bits.
//!
//! [`max_pool2d_forward`]: crate::ops::pool::max_pool2d_forward
//! [`max_pool2d_backward`]: crate::ops::pool::max_pool2d_backward

use super::*;
use crate::ops::pool::max_pool2d_forward_serial;

impl Conv2dGeom {
    /// Length of the scratch buffer [`conv2d_maxpool_forward`] and [`conv2d_maxpool_backward`] need:
    /// [`Conv2dGeom::col_len`] plus, per slot (`min(N, 8)`), one sample's output `[OC, OH, OW]` and `OC`
    /// bias partials. 0 for an invalid geometry.
    pub fn maxpool_scratch_len(&self) -> usize {
        match self.dims() {
            Ok(d) => self.col_len() + d.slots * (self.oc * d.p + self.oc),
            Err(_) => 0,
        }
    }
}

/// The pool geometry of one sample, after checking that `pool` pools this convolution's output.
fn sample_pool(g: &Conv2dGeom, d: &Dims, pool: &Pool2dGeom, who: &str) -> (Pool2dGeom, usize) {
    assert!(
        pool.n == g.n && pool.c == g.oc && (pool.h, pool.w) == (d.oh, d.ow),
        "{who}: the pool's input [{}, {}, {}, {}] is not the convolution's output [{}, {}, {}, {}]",
        pool.n,
        pool.c,
        pool.h,
        pool.w,
        g.n,
        g.oc,
        d.oh,
        d.ow
    );
    let (poh, pow) = pool.out_hw().unwrap_or_else(|e| panic!("{e}"));
    (Pool2dGeom { n: 1, ..*pool }, g.oc * poh * pow)
}

/// Fused convolution + max pool forward (overwrites `out` and `argmax`): `out = max_pool(conv(inp))`, or with
/// `relu`, `out = relu(max_pool(conv(inp)))` (a CNN block whose activation runs after the pool: exact for a
/// monotonic activation, and the ReLU then touches a quarter of the elements).
///
/// out, argmax: `[N, OC, POH, POW]` (the pool's output and its argmax as [`max_pool2d_forward`] writes them),
/// inp: `[N, C, H, W]`, weight: `[OC, C/groups, KH, KW]`, bias: `[OC]` or None, scratch: at least
/// [`Conv2dGeom::maxpool_scratch_len`] elements (clobbered); `pool` pools `[N, OC, OH, OW]`.
/// Panics on an invalid geometry, a pool of another shape, or wrong buffer lengths.
///
/// [`max_pool2d_forward`]: crate::ops::pool::max_pool2d_forward
#[allow(clippy::too_many_arguments)]
pub fn conv2d_maxpool_forward<T: Float>(
    out: &mut [T],
    argmax: &mut [u32],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    scratch: &mut [T],
    g: &Conv2dGeom,
    pool: &Pool2dGeom,
    relu: bool,
) {
    let d = g.dims_or_panic();
    let (sample_pool, pout) = sample_pool(g, &d, pool, "conv2d_maxpool_forward");
    let (in_len, out_len) = (g.c * g.h * g.w, g.oc * d.p);
    assert_eq!(out.len(), g.n * pout, "conv2d_maxpool_forward: out must be [N, OC, POH, POW]");
    assert_eq!(argmax.len(), g.n * pout, "conv2d_maxpool_forward: argmax must be [N, OC, POH, POW]");
    assert_eq!(inp.len(), g.n * in_len, "conv2d_maxpool_forward: inp must be [N, C, H, W]");
    assert_eq!(weight.len(), d.wlen, "conv2d_maxpool_forward: weight must be [OC, C/groups, KH, KW]");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.oc, "conv2d_maxpool_forward: bias must be [OC]");
    }
    assert!(
        scratch.len() >= g.maxpool_scratch_len(),
        "conv2d_maxpool_forward: scratch must hold at least maxpool_scratch_len() elements"
    );
    if g.n == 0 {
        return;
    }
    let (base, extra) = scratch.split_at_mut(g.col_len());
    let (base, wino_u) = prepare_wino(base, weight, g, &d, false);
    let items = base[..d.slots * d.col_slot]
        .chunks_mut(d.col_slot)
        .zip(extra.chunks_mut(out_len))
        .zip(out.chunks_mut(d.per_slot * pout))
        .zip(argmax.chunks_mut(d.per_slot * pout))
        .zip(inp.chunks(d.per_slot * in_len));
    let parallel = run_parallel(g, &d);
    // A 2x2 / stride-2 pool of even-sized Winograd outputs: each tile is one pool window, pooled in the
    // output transform (bitwise the pair).
    let wino_pool = !wino_u.is_empty()
        && (pool.kh, pool.kw, pool.stride, pool.padding) == (2, 2, (2, 2), (0, 0))
        && d.oh.is_multiple_of(2)
        && d.ow.is_multiple_of(2);
    for_each_slot(items, parallel, |((((col, y), outs), ams), inps)| {
        for ((o, am), x) in outs.chunks_exact_mut(pout).zip(ams.chunks_exact_mut(pout)).zip(inps.chunks_exact(in_len)) {
            if !(wino_pool && wino_pooled_sample(o, am, x, bias, wino_u, col, g, &d)) {
                forward_sample(y, x, weight, bias, wino_u, col, g, &d, !parallel);
                max_pool2d_forward_serial(o, am, y, &sample_pool);
            }
            if relu {
                // In place on the pooled sample, exactly `relu_forward`'s element op.
                o.iter_mut().for_each(|v| *v = super::super::relu::forward_elem(*v));
            }
        }
    });
}

/// One sample's Winograd convolution pooled in its output transform (`winograd::forward_sample_pooled`);
/// false when the sample must take the unfused path instead (not f32, or a NaN in a window).
#[allow(clippy::too_many_arguments)]
fn wino_pooled_sample<T: Float>(
    o: &mut [T],
    am: &mut [u32],
    x: &[T],
    bias: Option<&[T]>,
    wino_u: &[T],
    col: &mut [T],
    g: &Conv2dGeom,
    d: &Dims,
) -> bool {
    match (as_f32_mut(o), as_f32(x), as_f32(wino_u), as_f32_mut(col)) {
        (Some(o), Some(x), Some(u), Some(ws)) => {
            let bias = bias.map(|b| as_f32(b).expect("f32 bias"));
            winograd::forward_sample_pooled(o, am, x, u, bias, ws, &wino_shapes(g, d.oh, d.ow).0)
        }
        _ => false,
    }
}

/// Fused convolution + max pool backward: the gradients of `max_pool(conv(inp))` given the pooled output's
/// gradient `dy` and the forward's `argmax`. With `relu_out` (the forward's `out` with `relu`), `dy` is the
/// gradient of the ReLU's output, masked where `relu_out > 0` as `relu_backward` does.
///
/// dy, argmax: `[N, OC, POH, POW]`; inp, weight: as in the forward; dinp: `[N, C, H, W]` (overwritten; None
/// when the input needs no gradient), dweight: accumulated (`+=`), dbias: `[OC]` accumulated (None without a
/// bias); scratch: at least [`Conv2dGeom::maxpool_scratch_len`] elements. Bit-identical for any rayon thread
/// count. Panics on an invalid geometry, a pool of another shape, or wrong buffer lengths.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_maxpool_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dy: &[T],
    argmax: &[u32],
    relu_out: Option<&[T]>,
    inp: &[T],
    weight: &[T],
    scratch: &mut [T],
    g: &Conv2dGeom,
    pool: &Pool2dGeom,
) {
    let d = g.dims_or_panic();
    let (sample_pool, pout) = sample_pool(g, &d, pool, "conv2d_maxpool_backward");
    let in_len = g.c * g.h * g.w;
    assert_eq!(dy.len(), g.n * pout, "conv2d_maxpool_backward: dy must be [N, OC, POH, POW]");
    assert_eq!(argmax.len(), g.n * pout, "conv2d_maxpool_backward: argmax must be [N, OC, POH, POW]");
    assert_eq!(inp.len(), g.n * in_len, "conv2d_maxpool_backward: inp must be [N, C, H, W]");
    assert_eq!(weight.len(), d.wlen, "conv2d_maxpool_backward: weight must be [OC, C/groups, KH, KW]");
    assert_eq!(dweight.len(), d.wlen, "conv2d_maxpool_backward: dweight must be [OC, C/groups, KH, KW]");
    if let Some(dinp) = &dinp {
        assert_eq!(dinp.len(), g.n * in_len, "conv2d_maxpool_backward: dinp must be [N, C, H, W]");
    }
    if let Some(dbias) = &dbias {
        assert_eq!(dbias.len(), g.oc, "conv2d_maxpool_backward: dbias must be [OC]");
    }
    assert!(
        scratch.len() >= g.maxpool_scratch_len(),
        "conv2d_maxpool_backward: scratch must hold at least maxpool_scratch_len() elements"
    );
    if g.n == 0 {
        return;
    }
    if let Some(y) = relu_out {
        assert_eq!(y.len(), dy.len(), "conv2d_maxpool_backward: relu_out must be [N, OC, POH, POW]");
    }
    let src = DoutSource::Pooled { dy, argmax, relu_out, pool: sample_pool };
    backward_impl(dinp, dweight, dbias, src, inp, weight, &mut scratch[..g.maxpool_scratch_len()], g, &d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;
    use crate::ops::pool::{max_pool2d_backward, max_pool2d_forward};
    use crate::ops::relu::{relu_backward, relu_forward};

    /// A convolution and the pool over its output.
    struct Case {
        g: Conv2dGeom,
        p: Pool2dGeom,
        bias: bool,
    }

    #[allow(clippy::too_many_arguments)]
    fn case(
        n: usize,
        c: usize,
        hw: (usize, usize),
        oc: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        pool: (usize, usize, usize),
        bias: bool,
    ) -> Case {
        let g = Conv2dGeom {
            n,
            c,
            h: hw.0,
            w: hw.1,
            oc,
            kh: k,
            kw: k,
            stride: (stride, stride),
            padding: (pad, pad),
            dilation: (1, 1),
            groups,
        };
        let (oh, ow) = g.out_hw().unwrap();
        let (pk, ps, pp) = pool;
        let p = Pool2dGeom { n, c: oc, h: oh, w: ow, kh: pk, kw: pk, stride: (ps, ps), padding: (pp, pp) };
        Case { g, p, bias }
    }

    /// The shapes the fused path must reproduce: W2's two layers (the first one the direct C = 1 path),
    /// one sample, a batch that fills every slot unevenly, groups, a strided convolution, overlapping and
    /// padded pools, no bias, and short weight rows (`Kg = 4`, `Kg = 2` < 8 slots: the bias sums per slot; the
    /// second one without a bias).
    fn cases() -> Vec<Case> {
        vec![
            case(3, 1, (28, 28), 32, 3, 1, 1, 1, (2, 2, 0), true),
            case(19, 32, (14, 14), 64, 3, 1, 1, 1, (2, 2, 0), true),
            case(1, 4, (9, 9), 6, 3, 1, 1, 1, (2, 2, 0), true),
            case(11, 4, (9, 7), 6, 3, 2, 1, 2, (3, 2, 1), false),
            case(10, 3, (8, 8), 5, 3, 1, 0, 1, (3, 1, 1), true),
            case(12, 1, (6, 6), 3, 2, 1, 0, 1, (2, 2, 0), true),
            case(12, 2, (6, 6), 3, 1, 1, 0, 1, (2, 2, 0), false),
        ]
    }

    fn lens(c: &Case) -> (usize, usize, usize, usize) {
        let (oh, ow) = c.g.out_hw().unwrap();
        let (poh, pow) = c.p.out_hw().unwrap();
        let g = &c.g;
        (g.n * g.c * g.h * g.w, g.oc * (g.c / g.groups) * g.kh * g.kw, g.n * g.oc * oh * ow, g.n * g.oc * poh * pow)
    }

    /// The unfused pair (with `relu`, the three ops) in `T`: (pooled output, argmax, dinp, dweight, dbias).
    #[allow(clippy::type_complexity)]
    fn unfused<T: Float>(
        c: &Case,
        x: &[T],
        w: &[T],
        b: Option<&[T]>,
        dy: &[T],
        relu: bool,
    ) -> (Vec<T>, Vec<u32>, Vec<T>, Vec<T>, Vec<T>) {
        let (nin, nw, nout, npool) = lens(c);
        let mut col = vec![T::ZERO; c.g.col_len()];
        let mut y = vec![T::ZERO; nout];
        conv2d_forward(&mut y, x, w, b, &mut col, &c.g);
        let (mut out, mut am) = (vec![T::ZERO; npool], vec![0u32; npool]);
        max_pool2d_forward(&mut out, &mut am, &y, &c.p);
        let mut dpool = dy.to_vec();
        if relu {
            let pooled = out.clone();
            relu_forward(&mut out, &pooled);
            relu_backward(&mut dpool, dy, &pooled);
        }
        let mut dconv = vec![T::ZERO; nout];
        max_pool2d_backward(&mut dconv, &dpool, &am, &c.p);
        let (mut dx, mut dw, mut db) = (vec![T::ZERO; nin], vec![T::ONE; nw], vec![T::ONE; c.g.oc]);
        conv2d_backward(Some(&mut dx), &mut dw, b.map(|_| &mut db[..]), &dconv, x, w, &mut col, &c.g);
        (out, am, dx, dw, db)
    }

    /// The fused kernels in `T`, on a poisoned scratch buffer; the same tuple as [`unfused`].
    #[allow(clippy::type_complexity)]
    fn fused<T: Float>(
        c: &Case,
        x: &[T],
        w: &[T],
        b: Option<&[T]>,
        dy: &[T],
        relu: bool,
    ) -> (Vec<T>, Vec<u32>, Vec<T>, Vec<T>, Vec<T>) {
        let (nin, nw, _, npool) = lens(c);
        let mut scratch = vec![T::from_f64(f64::NAN); c.g.maxpool_scratch_len()];
        let (mut out, mut am) = (vec![T::from_f64(f64::NAN); npool], vec![u32::MAX; npool]);
        conv2d_maxpool_forward(&mut out, &mut am, x, w, b, &mut scratch, &c.g, &c.p, relu);
        scratch.fill(T::from_f64(f64::NAN));
        let relu_out = relu.then_some(&out[..]);
        let (mut dx, mut dw, mut db) = (vec![T::from_f64(f64::NAN); nin], vec![T::ONE; nw], vec![T::ONE; c.g.oc]);
        conv2d_maxpool_backward(
            Some(&mut dx),
            &mut dw,
            b.map(|_| &mut db[..]),
            dy,
            &am,
            relu_out,
            x,
            w,
            &mut scratch,
            &c.g,
            &c.p,
        );
        (out, am, dx, dw, db)
    }

    fn inputs(c: &Case, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (nin, nw, _, npool) = lens(c);
        (
            uniform(seed, nin, -1.0, 1.0),
            uniform(seed + 1, nw, -0.5, 0.5),
            uniform(seed + 2, c.g.oc, -0.2, 0.2),
            uniform(seed + 3, npool, -1.0, 1.0),
        )
    }

    #[test]
    fn fused_equals_the_pair_bit_for_bit() {
        for ((i, c), relu) in cases().iter().enumerate().flat_map(|ic| [(ic, false), (ic, true)]) {
            let (x, w, b, dy) = inputs(c, 10 * i as u64);
            let (x, w, b, dy) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&dy));
            let bias = c.bias.then_some(&b[..]);
            let want = unfused(c, &x, &w, bias, &dy, relu);
            let got = fused(c, &x, &w, bias, &dy, relu);
            let case = format!("case {i} relu {relu} ({:?})", c.g);
            assert_eq!(got.0, want.0, "{case}: pooled output");
            assert_eq!(got.1, want.1, "{case}: argmax");
            assert_eq!(got.2, want.2, "{case}: dinp");
            assert_eq!(got.3, want.3, "{case}: dweight");
            let short_rows = c.g.c / c.g.groups * c.g.kh * c.g.kw < c.g.n.min(CONV_SLOTS);
            if short_rows {
                // The documented exception: per-slot bias sums instead of one f64 sum.
                let want64: Vec<f64> = want.4.iter().map(|&v| v as f64).collect();
                assert_close(&format!("{case}: dbias"), &got.4, &want64, 1e-5, 1e-5);
            } else {
                assert_eq!(got.4, want.4, "{case}: dbias");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let c = &cases()[1];
        let (x, w, b, dy) = inputs(c, 7);
        let (x, w, b, dy) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&dy));
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| fused(c, &x, &w, Some(&b), &dy, true))
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn matches_the_float64_reference() {
        // f32 against the f64 pair (itself checked against the definition in conv2d.rs and pool.rs).
        for (i, c) in cases().iter().enumerate() {
            let (x, w, b, dy) = inputs(c, 100 + i as u64);
            let bias = c.bias.then_some(&b[..]);
            let want = unfused::<f64>(c, &x, &w, bias, &dy, false);
            let (x32, w32, b32, dy32) = (to_f32(&x), to_f32(&w), to_f32(&b), to_f32(&dy));
            let got = fused(c, &x32, &w32, c.bias.then_some(&b32[..]), &dy32, false);
            let case = format!("case {i}");
            assert_close_scaled(&format!("{case}: out"), &got.0, &want.0, 1e-5);
            // Near-ties may pick another element in f32; count them instead of failing on them.
            let differing = got.1.iter().zip(&want.1).filter(|(a, b)| a != b).count();
            assert!(differing * 100 <= got.1.len(), "{case}: {differing} of {} argmax differ", got.1.len());
            if differing == 0 {
                assert_close_scaled(&format!("{case}: dinp"), &got.2, &want.2, 1e-5);
                assert_close_scaled(&format!("{case}: dweight"), &got.3, &want.3, 1e-5);
                assert_close_scaled(&format!("{case}: dbias"), &got.4, &want.4, 1e-5);
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Small enough for a central difference over every input and weight; fixed seeds whose pooled
        // maxima are far enough apart that a 1e-6 perturbation never moves an argmax.
        let c = case(2, 2, (6, 5), 3, 3, 1, 1, 1, (2, 2, 0), true);
        let (x, w, b, dy) = inputs(&c, 41);
        let (_, _, _, npool) = lens(&c);
        let (dx, dw, db) = {
            let r = fused::<f64>(&c, &x, &w, Some(&b), &dy, false);
            let zero_based = |v: Vec<f64>| v.into_iter().map(|g| g - 1.0).collect::<Vec<_>>();
            (r.2, zero_based(r.3), zero_based(r.4))
        };
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut scratch = vec![0.0; c.g.maxpool_scratch_len()];
            let (mut out, mut am) = (vec![0.0; npool], vec![0u32; npool]);
            conv2d_maxpool_forward(&mut out, &mut am, x, w, Some(b), &mut scratch, &c.g, &c.p, false);
            dot(&dy, &out)
        };
        let (mut xv, mut wv, mut bv) = (x.clone(), w.clone(), b.clone());
        check_grad("dinp", &mut xv, &dx, |v| loss(v, &w, &b));
        check_grad("dweight", &mut wv, &dw, |v| loss(&x, v, &b));
        check_grad("dbias", &mut bv, &db, |v| loss(&x, &w, v));
    }

    #[test]
    #[should_panic(expected = "is not the convolution's output")]
    fn a_pool_of_another_shape_is_refused() {
        let mut c = case(2, 1, (8, 8), 2, 3, 1, 1, 1, (2, 2, 0), true);
        c.p.h = 7;
        let (nin, nw, _, _) = lens(&case(2, 1, (8, 8), 2, 3, 1, 1, 1, (2, 2, 0), true));
        let mut scratch = vec![0.0f32; c.g.maxpool_scratch_len()];
        let (mut out, mut am) = (vec![0.0f32; 2 * 2 * 16], vec![0u32; 2 * 2 * 16]);
        conv2d_maxpool_forward(
            &mut out,
            &mut am,
            &vec![0.0; nin],
            &vec![0.0; nw],
            None,
            &mut scratch,
            &c.g,
            &c.p,
            false,
        );
    }
}
