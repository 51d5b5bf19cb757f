//! Direct (non-gemm) products for convolutions with one input channel per group (`Cg = 1`: the first layer of
//! an image model on grey-scale input, depthwise convolutions). Their reduction length is just `Kg = KH*KW`
//! (9 for a 3x3 kernel), far too short for a packed gemm to pay off: gemm spends its time packing and in
//! edge kernels. Here every output row is computed in registers from the (small, cache-resident) column matrix
//! of one sample: `out[o, p] = bias[o] + sum_t w[o, t] * col[t, p]`, and the weight gradient is `Kg` dot
//! products per output channel, `dw[o, t] += sum_p dout[o, p] * col[t, p]`; for short rows (a ViT's patch
//! embedding, small images) the weight gradient instead keeps the taps as vector lanes and runs over `p`.
//!
//! Summation order is fixed (taps in order, then a fixed lane reduction), and Rust never contracts to FMA, so
//! the AVX-512, AVX2 and baseline builds chosen by [`crate::multiversion!`] give identical bits.

use crate::Float;

/// Lanes of the weight-gradient and bias sums (2 AVX-512 registers of f32): lane `l` sums the columns
/// `p = l mod B` in order, then the lanes are reduced pairwise, so `B` fixes the summation order and must be
/// the same on every CPU. How many output channels share a pass is only register blocking.
const B: usize = 32;
/// Output channels computed together, so every column load feeds `OB` multiply-adds.
const OB: usize = 4;

/// Whether the CPU has AVX-512 (32 vector registers): the register blocks below are sized for it, and halved
/// for AVX2's 16 registers, where the AVX-512 blocks spill (the W2 first layer ran at ~17 GFLOP/s).
fn wide_registers() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[o, p] = bias[o] + sum_t w[o, t] * col[t, p]` for `O` output channels, in blocks of `BL` columns.
/// Each output is its bias plus the taps in order, so the blocking never changes a result.
///
/// out: [O, P], col: [Kg, P], w: [O, Kg], bias: [O].
#[inline(always)]
fn forward_rows_body<T: Float, const O: usize, const BL: usize>(
    out: &mut [T],
    col: &[T],
    w: &[T],
    bias: &[T],
    p: usize,
    kg: usize,
) {
    let (out, col, w, bias) = (&mut out[..O * p], &col[..kg * p], &w[..O * kg], &bias[..O]);
    if p < BL {
        for jj in 0..p {
            for o in 0..O {
                let mut a = bias[o];
                for t in 0..kg {
                    a += w[o * kg + t] * col[t * p + jj];
                }
                out[o * p + jj] = a;
            }
        }
        return;
    }
    // Blocks of BL outputs; a last partial block is recomputed as the (overlapping) block ending at P: the same
    // arithmetic, so the overlap is rewritten with identical values.
    let mut j = 0;
    loop {
        let mut acc = [[T::ZERO; BL]; O];
        for (a, &b) in acc.iter_mut().zip(bias) {
            *a = [b; BL];
        }
        for t in 0..kg {
            let c: &[T; BL] = col[t * p + j..][..BL].try_into().unwrap();
            for (o, a) in acc.iter_mut().enumerate() {
                let wt = w[o * kg + t];
                for l in 0..BL {
                    a[l] += wt * c[l];
                }
            }
        }
        for (o, a) in acc.iter().enumerate() {
            out[o * p + j..][..BL].copy_from_slice(a);
        }
        if j + BL == p {
            break;
        }
        j = (j + BL).min(p - BL);
    }
}

crate::multiversion!(
    fn forward_rows<T: Float; const O: usize; const BL: usize>(out: &mut [T], col: &[T], w: &[T], bias: &[T], p: usize, kg: usize) => forward_rows_body
);

/// `dw[o, t] += sum_p dout[o, p] * col[t, p]` for `O` output channels.
///
/// dw: [O, Kg], dout: [O, P], col: [Kg, P].
#[inline(always)]
fn weight_grad_rows_body<T: Float, const O: usize>(dw: &mut [T], dout: &[T], col: &[T], p: usize, kg: usize) {
    let (dw, dout, col) = (&mut dw[..O * kg], &dout[..O * p], &col[..kg * p]);
    let blocks = p / B * B;
    let rem = p - blocks;
    // The tail of every dout row, zero-padded to a full block (copied once, reused for every tap).
    let mut dtail = [[T::ZERO; B]; O];
    for (o, dt) in dtail.iter_mut().enumerate() {
        dt[..rem].copy_from_slice(&dout[o * p + blocks..(o + 1) * p]);
    }
    for t in 0..kg {
        let c_row = &col[t * p..(t + 1) * p];
        let mut acc = [[T::ZERO; B]; O];
        for j in (0..blocks).step_by(B) {
            let c: &[T; B] = c_row[j..j + B].try_into().unwrap();
            for (o, a) in acc.iter_mut().enumerate() {
                let d: &[T; B] = dout[o * p + j..][..B].try_into().unwrap();
                for l in 0..B {
                    a[l] += d[l] * c[l];
                }
            }
        }
        if rem > 0 {
            let mut c = [T::ZERO; B];
            c[..rem].copy_from_slice(&c_row[blocks..]);
            for (a, d) in acc.iter_mut().zip(&dtail) {
                for l in 0..B {
                    a[l] += d[l] * c[l];
                }
            }
        }
        for (o, a) in acc.iter().enumerate() {
            dw[o * kg + t] += lane_sum(a);
        }
    }
}

/// Sum of a block's lanes by pairwise halving (a fixed order).
#[inline(always)]
fn lane_sum<T: Float>(a: &[T; B]) -> T {
    let mut s = *a;
    let mut w = B;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            s[l] += s[l + w];
        }
    }
    s[0]
}

crate::multiversion!(
    fn weight_grad_rows<T: Float; const O: usize>(dw: &mut [T], dout: &[T], col: &[T], p: usize, kg: usize) => weight_grad_rows_body
);

/// Forward of one sample and one group with `Cg = 1`: `out[o, p] = bias[o] + sum_t w[o, t] * col[t, p]`.
///
/// out: [OCg, P] (overwritten), col: [Kg, P] (the sample's column matrix), w: [OCg, Kg], bias: [OCg] or None.
pub(super) fn forward<T: Float>(out: &mut [T], col: &[T], w: &[T], bias: Option<&[T]>, p: usize, kg: usize) {
    let ocg = w.len() / kg;
    let zeros = [T::ZERO; OB];
    let wide = wide_registers();
    let mut o = 0;
    while o < ocg {
        let bias_at = |o: usize, n: usize| bias.map_or(&zeros[..n], |b| &b[o..o + n]);
        let out_o = &mut out[o * p..];
        let w_o = &w[o * kg..];
        // AVX-512: 4 channels x 32 columns (8 zmm accumulators); AVX2: 4 x 16 (8 ymm).
        match (o + OB <= ocg, wide) {
            (true, true) => forward_rows::<T, OB, 32>(out_o, col, w_o, bias_at(o, OB), p, kg),
            (true, false) => forward_rows::<T, OB, 16>(out_o, col, w_o, bias_at(o, OB), p, kg),
            (false, true) => forward_rows::<T, 1, 32>(out_o, col, w_o, bias_at(o, 1), p, kg),
            (false, false) => forward_rows::<T, 1, 16>(out_o, col, w_o, bias_at(o, 1), p, kg),
        }
        o += if o + OB <= ocg { OB } else { 1 };
    }
}

/// Lanes of the tap-vector weight gradient: up to 16 taps (a 4x4 patch, a 3x3 kernel) share one accumulator
/// vector of f32 on AVX-512.
const TAPS: usize = 16;
/// Output channels of one tap-vector pass: 8 independent accumulator chains, so the adds are not serialised
/// on one register's latency.
const TAP_OB: usize = 8;
/// Longest output row the tap-vector weight gradient takes: its transposed column matrix (`P x 16`) lives on
/// the stack, 16 KiB in f32.
const TAPS_MAX_P: usize = 256;

/// Whether the weight gradient takes the tap-vector form ([`weight_grad_taps_rows`]) rather than `Kg` lane
/// reductions per channel: for short output rows (a ViT's 4x4 patch embedding: 49 columns; an 8x8 image),
/// where the 32-lane dot products are mostly tail and reduction. The estimate counts vector operations per
/// output channel: `P` for the tap vectors, about `Kg * (2 * ceil(P / 32) + 8)` for the dot products.
fn taps_pay(p: usize, kg: usize) -> bool {
    kg <= TAPS && p <= TAPS_MAX_P && p < kg * (2 * p.div_ceil(B) + 8)
}

/// `dw[o, t] += sum_p dout[o, p] * colt[p][t]` for `O` output channels, the taps as lanes: each `(o, t)` is one
/// chain over `p` in order, started from zero and then added to `dw` (so the blocking never changes a result).
///
/// dw: [O, Kg], dout: [O, P], colt: [P] rows of [`TAPS`] taps (zero past `Kg`).
#[inline(always)]
fn weight_grad_taps_rows_body<T: Float, const O: usize>(
    dw: &mut [T],
    dout: &[T],
    colt: &[[T; TAPS]],
    p: usize,
    kg: usize,
) {
    let (dw, dout, colt) = (&mut dw[..O * kg], &dout[..O * p], &colt[..p]);
    let mut acc = [[T::ZERO; TAPS]; O];
    for (j, c) in colt.iter().enumerate() {
        for (o, a) in acc.iter_mut().enumerate() {
            let g = dout[o * p + j];
            for l in 0..TAPS {
                a[l] += g * c[l];
            }
        }
    }
    for (o, a) in acc.iter().enumerate() {
        for (d, &v) in dw[o * kg..(o + 1) * kg].iter_mut().zip(a) {
            *d += v;
        }
    }
}

crate::multiversion!(
    fn weight_grad_taps_rows<T: Float; const O: usize>(dw: &mut [T], dout: &[T], colt: &[[T; TAPS]], p: usize, kg: usize) => weight_grad_taps_rows_body
);

/// [`weight_grad`] in the tap-vector form: the column matrix transposed onto the stack (`P x 16`, zero past
/// `Kg`), then [`TAP_OB`] channels per pass.
fn weight_grad_taps<T: Float>(dw: &mut [T], dout: &[T], col: &[T], p: usize, kg: usize) {
    let mut colt = [[T::ZERO; TAPS]; TAPS_MAX_P];
    for t in 0..kg {
        for (row, &v) in colt.iter_mut().zip(&col[t * p..(t + 1) * p]) {
            row[t] = v;
        }
    }
    let (ocg, colt) = (dw.len() / kg, &colt[..p]);
    let mut o = 0;
    while o < ocg {
        let (dw_o, dout_o) = (&mut dw[o * kg..], &dout[o * p..]);
        if o + TAP_OB <= ocg {
            weight_grad_taps_rows::<T, TAP_OB>(dw_o, dout_o, colt, p, kg);
            o += TAP_OB;
        } else {
            weight_grad_taps_rows::<T, 1>(dw_o, dout_o, colt, p, kg);
            o += 1;
        }
    }
}

/// Weight gradient of one sample and one group with `Cg = 1`: `dw[o, t] += sum_p dout[o, p] * col[t, p]`.
///
/// dw: [OCg, Kg] (accumulated), dout: [OCg, P], col: [Kg, P].
pub(super) fn weight_grad<T: Float>(dw: &mut [T], dout: &[T], col: &[T], p: usize, kg: usize) {
    if taps_pay(p, kg) {
        return weight_grad_taps(dw, dout, col, p, kg);
    }
    let ocg = dw.len() / kg;
    // Channels per pass: 4 x 32 lanes on AVX-512 (8 zmm accumulators), 2 x 32 on AVX2 (8 ymm); the lanes,
    // hence the bits, are the same.
    let ob = if wide_registers() { OB } else { OB / 2 };
    let mut o = 0;
    while o < ocg {
        let (dw_o, dout_o) = (&mut dw[o * kg..], &dout[o * p..]);
        if o + OB <= ocg && ob == OB {
            weight_grad_rows::<T, OB>(dw_o, dout_o, col, p, kg);
            o += OB;
        } else if o + OB / 2 <= ocg {
            weight_grad_rows::<T, { OB / 2 }>(dw_o, dout_o, col, p, kg);
            o += OB / 2;
        } else {
            weight_grad_rows::<T, 1>(dw_o, dout_o, col, p, kg);
            o += 1;
        }
    }
}

/// `db[o] += sum_p dout[o, p]`: lane sums of `B` columns (the tail folded into the first lanes), then a
/// pairwise lane reduction (a fixed order).
///
/// db: [O], dout: [O, P].
#[inline(always)]
fn row_sums_body<T: Float>(db: &mut [T], dout: &[T], p: usize) {
    let blocks = p / B * B;
    for (o, dbo) in db.iter_mut().enumerate() {
        let row = &dout[o * p..(o + 1) * p];
        let mut s = [T::ZERO; B];
        for j in (0..blocks).step_by(B) {
            let d: &[T; B] = row[j..j + B].try_into().unwrap();
            for l in 0..B {
                s[l] += d[l];
            }
        }
        for (l, &v) in row[blocks..].iter().enumerate() {
            s[l] += v;
        }
        *dbo += lane_sum(&s);
    }
}

crate::multiversion!(
    /// `db[o] += sum_p dout[o, p]` (the bias gradient of one sample).
    ///
    /// db: [O], dout: [O, P].
    pub(super) fn row_sums<T: Float>(db: &mut [T], dout: &[T], p: usize) => row_sums_body
);
