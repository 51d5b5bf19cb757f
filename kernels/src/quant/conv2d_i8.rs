//! Quantized 2-D convolution forward (NCHW, stride, padding, dilation, groups; the geometry of
//! [`crate::ops::conv2d::Conv2dGeom`]).
//!
//! Steps: quantize the whole input per tensor; for each sample and group gather the receptive fields in int8
//! as patch rows `col[P, Kg]` (`P = OH·OW`, `Kg = C/groups·KH·KW`, entry `(c·KH + ki)·KW + kj`, the order
//! of the weight's flattened `[C/groups, KH, KW]`); multiply exactly with the group's packed weights
//! (`acc[P, OCg] = col · W_g^T`, [`gemm_i8_packed`]); dequantize into `out[n, o, p]` with
//! `x_scale · w_scale[o]` plus the bias. Padding taps are int8 0, which is exactly the quantized value of a
//! float 0 because the zero point is 0: the padded input is quantized exactly.
//!
//! Patches are rows (not the `[Kg, P]` columns of the f32 im2col) so that the weights play the packed `B`
//! operand, as in the linear layer. Samples are split into at most [`CONV_SLOTS`] ranges, each with its own
//! part of the scratch buffers, run as rayon tasks for large convolutions; the arithmetic is exact, so the
//! split never changes the result.

use rayon::prelude::*;

use super::gemm_i8::{gemm_i8_packed, PackedI8Weights};
use super::qparams::{channel_scales, quantize_per_channel, quantize_per_tensor};
use crate::ops::conv2d::{Conv2dGeom, CONV_PAR_MIN_MACS, CONV_SLOTS};

/// Per-channel int8 convolution weights `[OC, C/groups, KH, KW]`, packed per group for [`gemm_i8_packed`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConvI8Weights {
    oc: usize,
    kg: usize,
    groups: Vec<PackedI8Weights>,
}

impl ConvI8Weights {
    /// Quantizes f32 weights `[OC, Kg]` (`Kg = C/groups·KH·KW`) with one scale per output channel
    /// (`max|w[o]| / 127`) and packs each group's `OC/groups` rows.
    ///
    /// Panics if `weight.len() != oc * kg` or `groups` does not divide `oc`.
    pub fn quantize(weight: &[f32], oc: usize, groups: usize, kg: usize) -> Self {
        assert_eq!(weight.len(), oc * kg, "ConvI8Weights: weight must be [OC, C/groups*KH*KW]");
        let mut scales = vec![0.0f32; oc];
        channel_scales(&mut scales, weight, kg);
        let mut q = vec![0i8; oc * kg];
        quantize_per_channel(&mut q, weight, &scales, kg);
        Self::from_i8(&q, &scales, oc, groups, kg)
    }

    /// Packs already-quantized weights `q: [OC, Kg]` with their per-channel scales `[OC]`.
    pub fn from_i8(q: &[i8], scales: &[f32], oc: usize, groups: usize, kg: usize) -> Self {
        assert_eq!(q.len(), oc * kg, "ConvI8Weights: q must be [OC, C/groups*KH*KW]");
        assert_eq!(scales.len(), oc, "ConvI8Weights: scales must be [OC]");
        assert!(groups > 0 && oc.is_multiple_of(groups), "ConvI8Weights: groups = {groups} must divide OC = {oc}");
        let ocg = oc / groups;
        let groups = (0..groups)
            .map(|g| {
                PackedI8Weights::from_i8(&q[g * ocg * kg..(g + 1) * ocg * kg], &scales[g * ocg..(g + 1) * ocg], ocg, kg)
            })
            .collect();
        ConvI8Weights { oc, kg, groups }
    }

    /// Output channels OC.
    pub fn oc(&self) -> usize {
        self.oc
    }

    /// Reduction length per output channel, `C/groups·KH·KW`.
    pub fn kg(&self) -> usize {
        self.kg
    }

    /// The packed weights of group `g` (its `OC/groups` rows and their scales).
    pub fn group(&self, g: usize) -> &PackedI8Weights {
        &self.groups[g]
    }

    /// Number of groups.
    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }
}

/// Sizes of one valid geometry.
struct Dims {
    oh: usize,
    ow: usize,
    p: usize,
    cg: usize,
    ocg: usize,
    kg: usize,
    slots: usize,
    per_slot: usize,
}

fn dims(g: &Conv2dGeom) -> Result<Dims, String> {
    let (oh, ow) = g.out_hw()?;
    let slots = g.n.min(CONV_SLOTS);
    Ok(Dims {
        oh,
        ow,
        p: oh * ow,
        cg: g.c / g.groups,
        ocg: g.oc / g.groups,
        kg: g.c / g.groups * g.kh * g.kw,
        slots,
        per_slot: if slots == 0 { 1 } else { g.n.div_ceil(slots) },
    })
}

/// Scratch lengths `(i8, i32)` that [`conv2d_i8_forward`] needs: `N·C·H·W + S·P·Kg` int8 (the quantized
/// input, then one patch matrix per slot) and `S·P·OC/groups` i32 (one accumulator block per slot), with
/// `S = min(N, CONV_SLOTS)`. `(0, 0)` for an invalid geometry.
pub fn conv2d_i8_scratch_len(g: &Conv2dGeom) -> (usize, usize) {
    match dims(g) {
        Ok(d) => (g.n * g.c * g.h * g.w + d.slots * d.p * d.kg, d.slots * d.p * d.ocg),
        Err(_) => (0, 0),
    }
}

/// Gathers the receptive fields of one group of one sample as rows: `col[p, (c·KH + ki)·KW + kj] =
/// x[c, oy·sh + ki·dh − ph, ox·sw + kj·dw − pw]`, 0 outside the input.
///
/// x: [Cg, H, W] int8, col: [P, Kg].
fn im2col_rows(col: &mut [i8], x: &[i8], g: &Conv2dGeom, d: &Dims) {
    let (h, w) = (g.h as isize, g.w as isize);
    let ((sh, sw), (ph, pw), (dh, dw)) = (g.stride, g.padding, g.dilation);
    for oy in 0..d.oh {
        for ox in 0..d.ow {
            let row = &mut col[(oy * d.ow + ox) * d.kg..][..d.kg];
            let mut idx = 0;
            for c in 0..d.cg {
                let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
                for ki in 0..g.kh {
                    let iy = (oy * sh + ki * dh) as isize - ph as isize;
                    if iy < 0 || iy >= h {
                        row[idx..idx + g.kw].fill(0);
                        idx += g.kw;
                        continue;
                    }
                    let line = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for kj in 0..g.kw {
                        let ix = (ox * sw + kj * dw) as isize - pw as isize;
                        row[idx] = if ix >= 0 && ix < w { line[ix as usize] } else { 0 };
                        idx += 1;
                    }
                }
            }
        }
    }
}

/// One slot's work item: its index and its parts of the output, the patch scratch and the accumulators.
type SlotItem<'a> = (usize, ((&'a mut [f32], &'a mut [i8]), &'a mut [i32]));

/// Quantized convolution forward (overwrites `out`): `out[n, o, p] = x_scale · w_scale[o] ·
/// Σ q_w[o, c, ki, kj] · q_x[n, c, ...] + bias[o]`, the f32 convolution of the quantized input and weights.
///
/// out: [N, OC, OH, OW], inp: [N, C, H, W], w: the packed `[OC, C/groups, KH, KW]` weights, bias: `[OC]` or
/// None, `x_scale`: the input's per-tensor scale (finite, positive), scratch_q / scratch_acc: at least the
/// lengths of [`conv2d_i8_scratch_len`] (contents ignored and clobbered). Allocates nothing. Panics on an
/// invalid geometry (see [`Conv2dGeom::out_hw`]), mismatched lengths or a bad scale.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_i8_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &ConvI8Weights,
    bias: Option<&[f32]>,
    x_scale: f32,
    g: &Conv2dGeom,
    scratch_q: &mut [i8],
    scratch_acc: &mut [i32],
) {
    let d = dims(g).unwrap_or_else(|e| panic!("{e}"));
    let in_len = g.n * g.c * g.h * g.w;
    let out_len = g.n * g.oc * d.p;
    assert_eq!(inp.len(), in_len, "conv2d_i8_forward: inp must be [N, C, H, W]");
    assert_eq!(out.len(), out_len, "conv2d_i8_forward: out must be [N, OC, OH, OW]");
    assert_eq!(
        (w.oc, w.kg, w.groups.len()),
        (g.oc, d.kg, g.groups),
        "conv2d_i8_forward: weights do not fit the geometry"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), g.oc, "conv2d_i8_forward: bias must be [OC]");
    }
    let (need_q, need_acc) = conv2d_i8_scratch_len(g);
    assert!(scratch_q.len() >= need_q, "conv2d_i8_forward: scratch_q needs {need_q} elements");
    assert!(scratch_acc.len() >= need_acc, "conv2d_i8_forward: scratch_acc needs {need_acc} elements");
    if g.n == 0 {
        return;
    }
    let (qin, cols) = scratch_q[..need_q].split_at_mut(in_len);
    quantize_per_tensor(qin, inp, x_scale);
    let qin = &*qin;
    let sample_in = g.c * g.h * g.w;
    let sample_out = g.oc * d.p;
    let slot = |(s, ((out, col), acc)): SlotItem| {
        for (j, out_n) in out.chunks_exact_mut(sample_out).enumerate() {
            let x_n = &qin[(s * d.per_slot + j) * sample_in..][..sample_in];
            for grp in 0..g.groups {
                let wg = &w.groups[grp];
                im2col_rows(col, &x_n[grp * d.cg * g.h * g.w..(grp + 1) * d.cg * g.h * g.w], g, &d);
                gemm_i8_packed(acc, col, wg, d.p);
                for (o, plane) in out_n[grp * d.ocg * d.p..(grp + 1) * d.ocg * d.p].chunks_exact_mut(d.p).enumerate() {
                    let s = x_scale * wg.scales()[o];
                    let b = bias.map_or(0.0, |b| b[grp * d.ocg + o]);
                    for (p, y) in plane.iter_mut().enumerate() {
                        let v = acc[p * d.ocg + o] as f32 * s;
                        *y = if bias.is_some() { v + b } else { v };
                    }
                }
            }
        }
    };
    let col_slot = d.p * d.kg;
    let acc_slot = d.p * d.ocg;
    let macs = g.n.saturating_mul(g.oc).saturating_mul(d.kg).saturating_mul(d.p);
    let parallel = d.slots > 1 && macs >= CONV_PAR_MIN_MACS && rayon::current_num_threads() > 1;
    let out_chunk = d.per_slot * sample_out;
    if parallel {
        out.par_chunks_mut(out_chunk)
            .zip(cols.par_chunks_mut(col_slot.max(1)))
            .zip(scratch_acc[..need_acc].par_chunks_mut(acc_slot.max(1)))
            .enumerate()
            .for_each(slot);
    } else {
        out.chunks_mut(out_chunk)
            .zip(cols.chunks_mut(col_slot.max(1)))
            .zip(scratch_acc[..need_acc].chunks_mut(acc_slot.max(1)))
            .enumerate()
            .for_each(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::qparams::{amax, quantize_one, scale_from_amax};
    use crate::rng::Rng;

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        c: usize,
        hw: (usize, usize),
        oc: usize,
        k: (usize, usize),
        s: (usize, usize),
        p: (usize, usize),
        dil: (usize, usize),
        groups: usize,
    ) -> Conv2dGeom {
        Conv2dGeom { n, c, h: hw.0, w: hw.1, oc, kh: k.0, kw: k.1, stride: s, padding: p, dilation: dil, groups }
    }

    /// Max error of the int8 convolution against the f64 convolution of the dequantized tensors, relative to
    /// `|sum| + |bias|`.
    fn max_rel_err(g: &Conv2dGeom, seed: u64) -> f64 {
        let mut rng = Rng::new(seed);
        let (oh, ow) = g.out_hw().unwrap();
        let cg = g.c / g.groups;
        let kg = cg * g.kh * g.kw;
        let x: Vec<f32> = (0..g.n * g.c * g.h * g.w).map(|_| rng.normal() as f32).collect();
        let wf: Vec<f32> = (0..g.oc * kg).map(|_| rng.normal() as f32 * 0.2).collect();
        let bias: Vec<f32> = (0..g.oc).map(|_| rng.normal() as f32).collect();
        let w = ConvI8Weights::quantize(&wf, g.oc, g.groups, kg);
        let xs = scale_from_amax(amax(&x) * 0.9);
        let (lq, la) = conv2d_i8_scratch_len(g);
        let (mut sq, mut sa) = (vec![7i8; lq], vec![7i32; la]);
        let mut out = vec![f32::NAN; g.n * g.oc * oh * ow];
        conv2d_i8_forward(&mut out, &x, &w, Some(&bias), xs, g, &mut sq, &mut sa);
        let ocg = g.oc / g.groups;
        let mut worst = 0.0f64;
        for n in 0..g.n {
            for o in 0..g.oc {
                let grp = o / ocg;
                let (wg, ol) = (w.group(grp), o % ocg);
                let wq = wg.to_i8();
                let ws = wg.scales()[ol] as f64;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0f64;
                        for c in 0..cg {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
                                    let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize - g.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * g.c + grp * cg + c) * g.h + iy as usize) * g.w + ix as usize;
                                    let xd = quantize_one(x[xi], xs) as f64 * xs as f64;
                                    let wd = wq[ol * kg + (c * g.kh + ki) * g.kw + kj] as f64 * ws;
                                    s += xd * wd;
                                }
                            }
                        }
                        let want = s + bias[o] as f64;
                        let got = out[((n * g.oc + o) * oh + oy) * ow + ox] as f64;
                        worst = worst.max((got - want).abs() / (s.abs() + (bias[o] as f64).abs()));
                    }
                }
            }
        }
        worst
    }

    #[test]
    fn equals_the_f64_conv_of_the_dequantized_tensors() {
        let cases = [
            geom(2, 3, (7, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
            geom(3, 4, (9, 8), 6, (3, 2), (2, 1), (0, 2), (2, 1), 2),
            geom(2, 4, (8, 8), 8, (3, 3), (2, 2), (1, 1), (1, 1), 4), // depthwise-like, one channel per group
            geom(1, 5, (4, 5), 3, (1, 1), (1, 1), (0, 0), (1, 1), 1), // pointwise
            geom(2, 2, (5, 5), 2, (2, 2), (3, 3), (2, 2), (3, 3), 1), // big padding and dilation
            geom(9, 8, (16, 16), 16, (3, 3), (1, 1), (1, 1), (1, 1), 1), // large: parallel slots
        ];
        for (i, g) in cases.iter().enumerate() {
            let e = max_rel_err(g, i as u64 + 1);
            eprintln!("conv2d_i8 case {i}: max relative error {e:.3e}");
            assert!(e < 4.0 * f32::EPSILON as f64, "case {i} {g:?}: relative error {e:e}");
        }
    }

    #[test]
    fn padding_taps_are_exact_zeros() {
        // A constant input of 1 with a ones kernel: each output counts the in-image taps.
        let g = geom(1, 1, (3, 3), 1, (3, 3), (1, 1), (1, 1), (1, 1), 1);
        let w = ConvI8Weights::quantize(&[1.0; 9], 1, 1, 9);
        let (lq, la) = conv2d_i8_scratch_len(&g);
        let (mut sq, mut sa) = (vec![0i8; lq], vec![0i32; la]);
        let mut out = [0.0f32; 9];
        conv2d_i8_forward(&mut out, &[1.0; 9], &w, None, 1.0 / 127.0, &g, &mut sq, &mut sa);
        let counts = [4.0f32, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0];
        for (o, c) in out.iter().zip(counts) {
            assert!((o - c).abs() < 1e-5, "{out:?}");
        }
    }
}
