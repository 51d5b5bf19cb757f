//! 2-D convolution (PyTorch `nn.Conv2d` / `F.conv2d`): NCHW input, `[OC, C/groups, KH, KW]` weight, optional
//! bias, with stride, zero padding, dilation and groups.
//!
//! Lowered to matrix products (im2col, as in Caffe / llm.c-style CPU trainers). For one sample and one group
//! (`Cg = C/groups` input channels, `OCg = OC/groups` output channels, `Kg = Cg*KH*KW`, `P = OH*OW`):
//! - forward: gather the receptive fields into `col[Kg, P]`, then `out_g[OCg, P] = W_g[OCg, Kg] @ col`;
//! - weight gradient: gather them again into `col`, then `dW_g += dout_g[OCg, P] @ col^T`;
//! - input gradient: `dcol[Kg, P] = W_g^T[Kg, OCg] @ dout_g`, then col2im scatter-adds `dcol` onto the input
//!   gradient (overlapping patches accumulate).
//!
//! On AVX2+FMA, f32 3x3 stride-1 single-group layers with C and OC multiples of 8 run their forward, input
//! gradient and weight gradient as Winograd F(2x2, 3x3) instead (`conv2d_winograd.rs`: 2.25x fewer
//! multiply-adds). Its transformed weights and per-slot Winograd-domain weight gradients sit after the slots in
//! the scratch space.
//!
//! Every product goes through the strided gemm wrapper ([`gemm_strided`]): the transposed operands (`col^T`,
//! `W^T`) are strides, never copies (gemm packs its operands anyway). For stride 1 with `OW == W` (a
//! "same"-padded convolution) im2col and col2im move whole shifted planes instead of one short row at a time.
//! Layers with one input channel per group (`C/groups == 1`: a first layer on grey-scale input, depthwise
//! convolutions) compute the forward and the weight gradient directly (`conv2d_direct.rs`): a reduction of
//! only KH*KW terms is too short for gemm. The bias gradient is summed per slot in the same pass as the weight
//! gradient (while the sample's output gradient is in cache).
//!
//! Parallelism: the samples are split into at most [`CONV_SLOTS`] contiguous ranges ("slots"); each slot owns
//! its piece of the caller's scratch buffer (hence [`Conv2dGeom::col_len`] grows with the slot count) and the
//! slots run as rayon tasks when the convolution is large. Samples are independent except for the weight
//! gradient, which each slot sums on its own; the slot sums are then added in slot order. The slot count
//! depends only on the batch size, never on the thread count, so results are bit-identical on any number of
//! threads.

use rayon::prelude::*;

#[path = "conv2d_direct.rs"]
mod direct;

#[path = "conv2d_maxpool.rs"]
mod maxpool;

#[path = "conv2d_winograd.rs"]
mod winograd;
pub use maxpool::{conv2d_maxpool_backward, conv2d_maxpool_forward};

use super::gemm::{gemm_strided, Mat};
use super::par::PAR_MIN_ELEMS;
use super::pool::Pool2dGeom;
use crate::Float;

/// Most samples processed concurrently, each with its own column buffer in the scratch space. Fixed (not the
/// thread count) so the weight-gradient summation order, hence the rounded result, is machine-independent;
/// 8 keeps the scratch space small while feeding the cores of a typical CPU.
pub const CONV_SLOTS: usize = 8;

/// Below this many multiply-adds per product pass (`N*OC*Kg*P`), the slots run one after the other on the
/// calling thread: a rayon fork/join costs a few microseconds, as much as a small convolution.
pub const CONV_PAR_MIN_MACS: usize = 1 << 20;

/// Geometry of a 2-D convolution (PyTorch `nn.Conv2d` arguments plus the input shape).
///
/// Input [N, C, H, W], weight [OC, C/groups, KH, KW], bias `[OC]`, output [N, OC, OH, OW] with
/// `OH = (H + 2*pad_h - dil_h*(KH-1) - 1) / stride_h + 1` (same for W). Tuples are `(height, width)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    /// Batch size N (0 is allowed: nothing to compute).
    pub n: usize,
    /// Input channels C.
    pub c: usize,
    /// Input height H.
    pub h: usize,
    /// Input width W.
    pub w: usize,
    /// Output channels OC.
    pub oc: usize,
    /// Kernel height KH.
    pub kh: usize,
    /// Kernel width KW.
    pub kw: usize,
    /// Stride (height, width), at least 1.
    pub stride: (usize, usize),
    /// Zero padding on each side (height, width).
    pub padding: (usize, usize),
    /// Dilation (height, width), at least 1.
    pub dilation: (usize, usize),
    /// Groups: input and output channels are split into `groups` independent convolutions.
    pub groups: usize,
}

/// Sizes derived once from a valid [`Conv2dGeom`].
#[derive(Clone, Copy, Debug)]
struct Dims {
    oh: usize,
    ow: usize,
    /// OH*OW.
    p: usize,
    /// Input channels per group.
    cg: usize,
    /// Output channels per group.
    ocg: usize,
    /// Cg*KH*KW: the reduction length of every product.
    kg: usize,
    /// Column buffer of one slot: Kg*P.
    col_slot: usize,
    /// OC*Kg: the weight length.
    wlen: usize,
    /// Samples per slot (the last slot may get fewer).
    per_slot: usize,
    /// Slots the scratch space is sized for: min(N, CONV_SLOTS).
    slots: usize,
    /// Whether f32 forward and input-gradient products take the Winograd path ([`winograd::eligible`]).
    wino: bool,
    /// Length of the transformed weights the Winograd path keeps after the slots (0 without it).
    wino_u: usize,
    /// Length of the Winograd-domain weight gradients, one [16, C, OC] per slot, after the weights (0 without
    /// the Winograd path).
    wino_du: usize,
}

impl Dims {
    /// Whether the products take the direct path of [`direct`] (one input channel per group: the reduction
    /// is only KH*KW long, too short for gemm) rather than gemm. The input gradient always uses gemm.
    fn direct(&self) -> bool {
        self.cg == 1 && self.kg > 1
    }

    /// Where the Winograd weights start in the scratch space: after the column matrices and the partials.
    fn wino_offset(&self) -> usize {
        self.slots * (self.col_slot + self.wlen)
    }
}

/// The Winograd shapes of one sample's forward and input gradient (the latter a stride-1 convolution of the
/// output gradient with padding `2 - pad`).
fn wino_shapes(g: &Conv2dGeom, oh: usize, ow: usize) -> (winograd::Shape, winograd::Shape) {
    let fwd = winograd::Shape { cin: g.c, cout: g.oc, h: g.h, w: g.w, pad: g.padding, oh, ow };
    let bwd = winograd::Shape {
        cin: g.oc,
        cout: g.c,
        h: oh,
        w: ow,
        pad: (2 - g.padding.0, 2 - g.padding.1),
        oh: g.h,
        ow: g.w,
    };
    (fwd, bwd)
}

/// `v` as f32 when `T` is f32 (the Winograd path is f32-only).
fn as_f32<T: Float>(v: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32 (checked), so the slice is a slice of f32.
        .then(|| unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) })
}

/// Mutable twin of [`as_f32`].
fn as_f32_mut<T: Float>(v: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32 (checked), and the unique borrow moves into the result.
        .then(|| unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut f32, v.len()) })
}

/// Splits the Winograd weights off the end of `base` (the first [`Conv2dGeom::col_len`] elements of a
/// scratch space) and fills them from `weight` when the Winograd path applies to `T` (`flip`: the input
/// gradient's weights). Returns the rest of `base` and the weights (empty when the path does not apply).
fn prepare_wino<'a, T: Float>(
    base: &'a mut [T],
    weight: &[T],
    g: &Conv2dGeom,
    d: &Dims,
    flip: bool,
) -> (&'a mut [T], &'a [T]) {
    let (head, u) = base.split_at_mut(d.wino_offset());
    let u = &mut u[..d.wino_u];
    match (as_f32_mut(u), as_f32(weight)) {
        (Some(u32s), Some(w32)) if d.wino => {
            let (cin, cout) = if flip { (g.oc, g.c) } else { (g.c, g.oc) };
            winograd::transform_weights(u32s, w32, cin, cout, flip);
            (head, u)
        }
        _ => (head, &u[..0]),
    }
}

/// Output extent of one spatial axis, `None` when the (dilated) kernel does not fit the padded input.
fn out_extent(size: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
    let span = dil.checked_mul(k - 1)?.checked_add(1)?;
    let padded = pad.checked_mul(2)?.checked_add(size)?;
    if padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

impl Conv2dGeom {
    /// A 3x3 convolution with stride 1 and padding 1 (the output keeps the input's size), no dilation or
    /// groups, over `n` square `hw` x `hw` images of `c` channels into `oc`: the layers of the W2 CNN.
    pub fn same_3x3(n: usize, c: usize, hw: usize, oc: usize) -> Conv2dGeom {
        Conv2dGeom {
            n,
            c,
            h: hw,
            w: hw,
            oc,
            kh: 3,
            kw: 3,
            stride: (1, 1),
            padding: (1, 1),
            dilation: (1, 1),
            groups: 1,
        }
    }

    /// Output spatial size `(OH, OW)`, or why the geometry is invalid: zero channels, kernel, stride,
    /// dilation, groups or input size, channels not divisible by `groups`, or a dilated kernel larger than
    /// the padded input (empty output).
    pub fn out_hw(&self) -> Result<(usize, usize), String> {
        if self.c == 0 || self.oc == 0 {
            return Err(format!("conv2d: channel counts must be positive (C = {}, OC = {})", self.c, self.oc));
        }
        if self.groups == 0 {
            return Err("conv2d: groups must be positive".into());
        }
        if !self.c.is_multiple_of(self.groups) || !self.oc.is_multiple_of(self.groups) {
            return Err(format!(
                "conv2d: C = {} and OC = {} must both be divisible by groups = {}",
                self.c, self.oc, self.groups
            ));
        }
        if self.kh == 0 || self.kw == 0 {
            return Err(format!("conv2d: kernel size must be positive (got {}x{})", self.kh, self.kw));
        }
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(format!("conv2d: stride must be positive (got {:?})", self.stride));
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            return Err(format!("conv2d: dilation must be positive (got {:?})", self.dilation));
        }
        if self.h == 0 || self.w == 0 {
            return Err(format!("conv2d: input size must be positive (got {}x{})", self.h, self.w));
        }
        let oh = out_extent(self.h, self.kh, self.stride.0, self.padding.0, self.dilation.0);
        let ow = out_extent(self.w, self.kw, self.stride.1, self.padding.1, self.dilation.1);
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(format!(
                "conv2d: dilated kernel {}x{} (dilation {:?}) does not fit the padded input {}x{} (padding {:?}): \
                 empty output",
                self.kh, self.kw, self.dilation, self.h, self.w, self.padding
            )),
        }
    }

    /// Length of the scratch buffer `col` that [`conv2d_forward`] and [`conv2d_backward`] need:
    /// `min(N, CONV_SLOTS) * (Kg*OH*OW + OC*Kg)` with `Kg = C/groups*KH*KW`, i.e. per concurrently processed
    /// sample one column matrix plus one weight-gradient partial (the first slot's partial space holds `W^T`
    /// instead); on the Winograd path the slots are at least its workspaces, followed by the transformed
    /// weights and one Winograd-domain weight gradient per slot. The forward pass only uses the column
    /// matrices (and the weights). 0 for an invalid geometry (the kernels then panic with the
    /// [`Conv2dGeom::out_hw`] error).
    pub fn col_len(&self) -> usize {
        match self.dims() {
            Ok(d) => d.wino_offset() + d.wino_u + d.wino_du,
            Err(_) => 0,
        }
    }

    fn dims(&self) -> Result<Dims, String> {
        let (oh, ow) = self.out_hw()?;
        let cg = self.c / self.groups;
        let kg = cg * self.kh * self.kw;
        let p = oh * ow;
        let slots = self.n.min(CONV_SLOTS);
        let wino = winograd::eligible(self);
        let (mut col_slot, mut wino_u) = (kg * p, 0);
        if wino {
            let (fwd, bwd) = wino_shapes(self, oh, ow);
            col_slot = col_slot.max(fwd.workspace_len()).max(fwd.wgrad_workspace_len()).max(bwd.workspace_len());
            wino_u = winograd::u_len(self.c, self.oc);
        }
        let wino_du = slots * wino_u;
        Ok(Dims {
            oh,
            ow,
            p,
            cg,
            ocg: self.oc / self.groups,
            kg,
            col_slot,
            wlen: self.oc * kg,
            per_slot: if slots == 0 { 1 } else { self.n.div_ceil(slots) },
            slots,
            wino,
            wino_u,
            wino_du,
        })
    }

    /// Dims, panicking with the geometry error (the kernels' contract: callers validate with `out_hw`).
    fn dims_or_panic(&self) -> Dims {
        self.dims().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether the convolution is a plain per-pixel channel mix (1x1 kernel, stride 1, no padding): the
    /// column matrix is then the input itself and im2col / col2im are skipped.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == (1, 1) && self.padding == (0, 0)
    }
}

/// Zeroes the few padding taps at a row edge (`pad` elements, 0 to 2 for the usual kernels) in place: a
/// `fill` of a slice that short is a `memset` call per row, which dominated the gather of a 3x3 layer.
#[inline(always)]
fn zero_edge<T: Float>(s: &mut [T]) {
    match s {
        [] => {}
        [a] => *a = T::ZERO,
        [a, b] => {
            *a = T::ZERO;
            *b = T::ZERO;
        }
        _ => s.fill(T::ZERO),
    }
}

/// Output indices `o` in `[lo, hi)` whose input coordinate `o*stride + off - pad` lies in `[0, size)`, for
/// `o < out` (`off` = kernel tap * dilation). Lets the gather loops split each row into zero / copy / zero
/// segments instead of bounds-testing every element.
fn valid_range(off: usize, pad: usize, stride: usize, size: usize, out: usize) -> (usize, usize) {
    let lo = if pad > off { (pad - off).div_ceil(stride) } else { 0 };
    let hi = if size + pad > off { ((size + pad - off - 1) / stride + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// Gathers the receptive fields of one group of one sample into `col[Kg, P]` (row `k = (c*KH + ki)*KW + kj`,
/// column `p = oy*OW + ox`); taps in the padding are 0.
///
/// x: [Cg, H, W], col: at least [Kg, P].
fn im2col<T: Float>(col: &mut [T], x: &[T], g: &Conv2dGeom, d: &Dims) {
    let (h, w) = (g.h, g.w);
    let ((sh, sw), (ph, pw), (dh, dw)) = (g.stride, g.padding, g.dilation);
    if sh == 1 && sw == 1 && d.ow == w {
        im2col_shift(col, x, g, d);
        return;
    }
    for c in 0..d.cg {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..g.kh {
            let (y0, y1) = valid_range(ki * dh, ph, sh, h, d.oh);
            for kj in 0..g.kw {
                let (x0, x1) = valid_range(kj * dw, pw, sw, w, d.ow);
                let k = (c * g.kh + ki) * g.kw + kj;
                let rows = &mut col[k * d.p..(k + 1) * d.p];
                for (oy, row) in rows.chunks_exact_mut(d.ow).enumerate() {
                    if oy < y0 || oy >= y1 {
                        row.fill(T::ZERO);
                        continue;
                    }
                    zero_edge(&mut row[..x0]);
                    zero_edge(&mut row[x1..]);
                    if x0 < x1 {
                        let src = &plane[(oy * sh + ki * dh - ph) * w..][x0 * sw + kj * dw - pw..];
                        if sw == 1 {
                            row[x0..x1].copy_from_slice(&src[..x1 - x0]);
                        } else {
                            for (r, &v) in row[x0..x1].iter_mut().zip(src.iter().step_by(sw)) {
                                *r = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride 1 with `OW == W` (e.g. a "same"-padded convolution): every column row is then the
/// input plane shifted by one constant flat offset `(ki*dh - ph)*W + (kj*dw - pw)`, so it is one contiguous copy
/// (instead of one short copy per output row) followed by zeroing the taps that fall in the padding: whole
/// rows above / below the input and the few columns that wrapped around a row edge.
///
/// x: [Cg, H, W], col: at least [Kg, P].
fn im2col_shift<T: Float>(col: &mut [T], x: &[T], g: &Conv2dGeom, d: &Dims) {
    let (h, w) = (g.h, g.w);
    let ((ph, pw), (dh, dw)) = (g.padding, g.dilation);
    let hw = h * w;
    for c in 0..d.cg {
        let plane = &x[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            let (y0, y1) = valid_range(ki * dh, ph, 1, h, d.oh);
            for kj in 0..g.kw {
                let (x0, x1) = valid_range(kj * dw, pw, 1, w, d.ow);
                let k = (c * g.kh + ki) * g.kw + kj;
                let row = &mut col[k * d.p..(k + 1) * d.p];
                // Flat offset from output index p to input index p + off (may be negative).
                let off = (ki * dh) as isize * w as isize + (kj * dw) as isize - (ph * w + pw) as isize;
                let (lo, hi) = (y0 * d.ow, y1 * d.ow);
                // Clip so that p + off stays inside the plane; the clipped entries are padding taps.
                let lo_c = lo.max((-off).max(0) as usize).min(hi);
                let hi_c = hi.min((hw as isize - off).max(0) as usize).max(lo_c);
                // A tap whose every row or column lies in the padding (a kernel more than twice the input's
                // size): all zeros. Checked before the copy, whose source offset is only valid when some
                // output reads the input through this tap.
                if x0 >= x1 || y0 >= y1 {
                    row.fill(T::ZERO);
                    continue;
                }
                row[..lo_c].fill(T::ZERO);
                row[hi_c..].fill(T::ZERO);
                let src = (lo_c as isize + off) as usize;
                row[lo_c..hi_c].copy_from_slice(&plane[src..src + (hi_c - lo_c)]);
                if x0 > 0 || x1 < d.ow {
                    for r in row[lo..hi].chunks_exact_mut(d.ow) {
                        zero_edge(&mut r[..x0]);
                        zero_edge(&mut r[x1..]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx = 0`, then every entry of `col[Kg, P]` is added onto the input position it
/// was gathered from (overlapping patches accumulate; padding taps are dropped). Overwrites `dx`.
///
/// dx: [Cg, H, W], col: at least [Kg, P] (may be clobbered).
fn col2im<T: Float>(dx: &mut [T], col: &mut [T], g: &Conv2dGeom, d: &Dims) {
    let (h, w) = (g.h, g.w);
    let ((sh, sw), (ph, pw), (dh, dw)) = (g.stride, g.padding, g.dilation);
    dx.fill(T::ZERO);
    if sh == 1 && sw == 1 && d.ow == w {
        col2im_shift(dx, col, g, d);
        return;
    }
    for c in 0..d.cg {
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        for ki in 0..g.kh {
            let (y0, y1) = valid_range(ki * dh, ph, sh, h, d.oh);
            for kj in 0..g.kw {
                let (x0, x1) = valid_range(kj * dw, pw, sw, w, d.ow);
                if x0 == x1 {
                    continue;
                }
                let k = (c * g.kh + ki) * g.kw + kj;
                for oy in y0..y1 {
                    let row = &col[k * d.p + oy * d.ow..][x0..x1];
                    let dst = &mut plane[(oy * sh + ki * dh - ph) * w..][x0 * sw + kj * dw - pw..];
                    for (dv, &v) in dst.iter_mut().step_by(sw).zip(row) {
                        *dv += v;
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_shift`] (stride 1, `OW == W`), adding onto `dx`: every column row is added onto the
/// input plane at one constant flat offset, in one contiguous pass, after its padding taps (the columns that
/// wrapped around a row edge, which would otherwise land on the neighbouring row) are zeroed in `col`.
///
/// dx: [Cg, H, W], col: at least [Kg, P] (clobbered).
fn col2im_shift<T: Float>(dx: &mut [T], col: &mut [T], g: &Conv2dGeom, d: &Dims) {
    let (h, w) = (g.h, g.w);
    let ((ph, pw), (dh, dw)) = (g.padding, g.dilation);
    let hw = h * w;
    for c in 0..d.cg {
        let plane = &mut dx[c * hw..(c + 1) * hw];
        for ki in 0..g.kh {
            let (y0, y1) = valid_range(ki * dh, ph, 1, h, d.oh);
            for kj in 0..g.kw {
                let (x0, x1) = valid_range(kj * dw, pw, 1, w, d.ow);
                if x0 >= x1 || y0 >= y1 {
                    continue;
                }
                let k = (c * g.kh + ki) * g.kw + kj;
                let row = &mut col[k * d.p..(k + 1) * d.p];
                let off = (ki * dh) as isize * w as isize + (kj * dw) as isize - (ph * w + pw) as isize;
                let (lo, hi) = (y0 * d.ow, y1 * d.ow);
                if x0 > 0 || x1 < d.ow {
                    for r in row[lo..hi].chunks_exact_mut(d.ow) {
                        zero_edge(&mut r[..x0]);
                        zero_edge(&mut r[x1..]);
                    }
                }
                // Only padding taps lie outside [lo_c, hi_c) (see im2col_shift).
                let lo_c = lo.max((-off).max(0) as usize).min(hi);
                let hi_c = hi.min((hw as isize - off).max(0) as usize).max(lo_c);
                let dst = (lo_c as isize + off) as usize;
                for (dv, &v) in plane[dst..dst + (hi_c - lo_c)].iter_mut().zip(&row[lo_c..hi_c]) {
                    *dv += v;
                }
            }
        }
    }
}

/// Runs `work` on every item (at most [`CONV_SLOTS`] of them), as rayon tasks when `parallel`, else in order on
/// the calling thread. Items own disjoint buffers, so the results do not depend on which path ran. The tasks
/// are forked with `rayon::join` over a stack array (`rayon::scope`'s spawns box every job: an allocation per
/// slot in every step).
fn for_each_slot<I, F>(items: I, parallel: bool, work: F)
where
    I: Iterator + Send,
    I::Item: Send,
    F: Fn(I::Item) + Sync,
{
    fn run<It: Send, F: Fn(It) + Sync>(items: &mut [Option<It>], work: &F) {
        match items.len() {
            0 => {}
            1 => {
                if let Some(item) = items[0].take() {
                    work(item);
                }
            }
            len => {
                let (a, b) = items.split_at_mut(len / 2);
                rayon::join(|| run(a, work), || run(b, work));
            }
        }
    }
    if parallel {
        let mut buf: [Option<I::Item>; CONV_SLOTS] = std::array::from_fn(|_| None);
        let mut used = 0;
        for (b, item) in buf.iter_mut().zip(items) {
            *b = Some(item);
            used += 1;
        }
        run(&mut buf[..used], &work);
    } else {
        items.for_each(work);
    }
}

/// Whether a convolution pass is worth splitting across rayon threads.
fn run_parallel(g: &Conv2dGeom, d: &Dims) -> bool {
    let macs = g.n.saturating_mul(g.oc).saturating_mul(d.kg).saturating_mul(d.p);
    d.slots > 1 && macs >= CONV_PAR_MIN_MACS && rayon::current_num_threads() > 1
}

/// Convolution forward (overwrites `out`): `out[n, o] = bias[o] + sum_{c in group(o), ki, kj}
/// weight[o, c, ki, kj] * inp[n, c, oy*sh + ki*dh - ph, ox*sw + kj*dw - pw]` (zero outside the input).
///
/// out: [N, OC, OH, OW], inp: [N, C, H, W], weight: [OC, C/groups, KH, KW], bias: `[OC]` or None,
/// col: scratch of at least [`Conv2dGeom::col_len`] elements (contents ignored and clobbered).
/// Panics on an invalid geometry (see [`Conv2dGeom::out_hw`]) or wrong buffer lengths.
pub fn conv2d_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    col: &mut [T],
    g: &Conv2dGeom,
) {
    let d = g.dims_or_panic();
    let (in_len, out_len) = (g.c * g.h * g.w, g.oc * d.p);
    assert_eq!(out.len(), g.n * out_len, "conv2d_forward: out must be [N, OC, OH, OW]");
    assert_eq!(inp.len(), g.n * in_len, "conv2d_forward: inp must be [N, C, H, W]");
    assert_eq!(weight.len(), d.wlen, "conv2d_forward: weight must be [OC, C/groups, KH, KW]");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.oc, "conv2d_forward: bias must be [OC]");
    }
    assert!(col.len() >= g.col_len(), "conv2d_forward: col must hold at least col_len() elements");
    if g.n == 0 {
        return;
    }
    let (col, wino_u) = prepare_wino(&mut col[..g.col_len()], weight, g, &d, false);
    let items = col[..d.slots * d.col_slot]
        .chunks_mut(d.col_slot)
        .zip(out.chunks_mut(d.per_slot * out_len))
        .zip(inp.chunks(d.per_slot * in_len));
    let parallel = run_parallel(g, &d);
    for_each_slot(items, parallel, |((col, outs), inps)| {
        for (o, x) in outs.chunks_exact_mut(out_len).zip(inps.chunks_exact(in_len)) {
            forward_sample(o, x, weight, bias, wino_u, col, g, &d, !parallel);
        }
    });
}

/// One sample of [`conv2d_forward`]: `o[OC, P]` from `x[C, H, W]`, every group through `col` (one slot's
/// column matrix), or on the Winograd path when `wino_u` holds its transformed weights. `gemm_threads`: let gemm split its products across threads (the slots run serially).
#[allow(clippy::too_many_arguments)]
fn forward_sample<T: Float>(
    o: &mut [T],
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    wino_u: &[T],
    col: &mut [T],
    g: &Conv2dGeom,
    d: &Dims,
    gemm_threads: bool,
) {
    if !wino_u.is_empty() {
        // Filled only for f32 on the Winograd path (prepare_wino).
        let cast = (as_f32_mut(o), as_f32(x), as_f32(wino_u), as_f32_mut(col));
        if let (Some(o), Some(x), Some(u), Some(ws)) = cast {
            let bias = bias.map(|b| as_f32(b).expect("f32 bias"));
            winograd::forward_sample(o, x, u, bias, ws, &wino_shapes(g, d.oh, d.ow).0);
            return;
        }
    }
    let (gin, gout) = (d.cg * g.h * g.w, d.ocg * d.p);
    for gi in 0..g.groups {
        let x_g = &x[gi * gin..(gi + 1) * gin];
        let o_g = &mut o[gi * gout..(gi + 1) * gout];
        let w_g = &weight[gi * d.ocg * d.kg..(gi + 1) * d.ocg * d.kg];
        if d.direct() {
            im2col(col, x_g, g, d);
            let b_g = bias.map(|b| &b[gi * d.ocg..(gi + 1) * d.ocg]);
            direct::forward(o_g, &col[..d.col_slot], w_g, b_g, d.p, d.kg);
            continue;
        }
        // Seed every output row with its bias and let the product accumulate onto it (saves a pass).
        let accumulate = match bias {
            Some(bias) => {
                for (row, &b) in o_g.chunks_exact_mut(d.p).zip(&bias[gi * d.ocg..(gi + 1) * d.ocg]) {
                    row.fill(b);
                }
                true
            }
            None => false,
        };
        let col_g: &[T] = if g.is_pointwise() {
            x_g
        } else {
            im2col(col, x_g, g, d);
            &col[..d.col_slot]
        };
        let (lhs, rhs) = (Mat::rows(w_g, d.kg), Mat::rows(col_g, d.p));
        gemm_strided(d.ocg, d.p, d.kg, o_g, d.p, 1, accumulate, lhs, rhs, T::ONE, gemm_threads);
    }
}

/// One sample's weight (and bias) gradient: `dw (+)= go @ col^T` per group (`accumulate` false: the first
/// term of a zero-started partial overwrites), `db += ` the row sums of `go` when given.
/// go: [OC, P], x: [C, H, W], dw: [OC, C/groups, KH, KW], col: one slot's column matrix.
#[allow(clippy::too_many_arguments)]
fn weight_grad_sample<T: Float>(
    dw: &mut [T],
    du: &mut [T],
    db: Option<&mut [T]>,
    go: &[T],
    x: &[T],
    col: &mut [T],
    accumulate: bool,
    g: &Conv2dGeom,
    d: &Dims,
    gemm_threads: bool,
) {
    let (gin, gout) = (d.cg * g.h * g.w, d.ocg * d.p);
    let gw = d.ocg * d.kg;
    if let Some(db) = db {
        direct::row_sums(db, go, d.p);
    }
    if !du.is_empty() {
        // The Winograd path (f32, see backward_impl): this slot's [16, C, OC] gradient, turned into dW once
        // after all slots.
        let cast = (as_f32_mut(du), as_f32(go), as_f32(x), as_f32_mut(col));
        if let (Some(du), Some(go), Some(x), Some(ws)) = cast {
            winograd::weight_grad_sample(du, go, x, ws, &wino_shapes(g, d.oh, d.ow).0, accumulate);
            return;
        }
    }
    for gi in 0..g.groups {
        let (x_g, go_g) = (&x[gi * gin..(gi + 1) * gin], &go[gi * gout..(gi + 1) * gout]);
        let dw_g = &mut dw[gi * gw..(gi + 1) * gw];
        if d.direct() {
            if !accumulate {
                dw_g.fill(T::ZERO);
            }
            im2col(col, x_g, g, d);
            direct::weight_grad(dw_g, go_g, &col[..d.col_slot], d.p, d.kg);
            continue;
        }
        // dW_g[OCg, Kg] (+)= dout_g[OCg, P] @ col^T[P, Kg]: the transpose is a stride (gemm packs it).
        let col_g: &[T] = if g.is_pointwise() {
            x_g
        } else {
            im2col(col, x_g, g, d);
            &col[..d.col_slot]
        };
        let (lhs, rhs) = (Mat::rows(go_g, d.p), Mat::rows_t(col_g, d.p));
        gemm_strided(d.ocg, d.kg, d.p, dw_g, d.kg, 1, accumulate, lhs, rhs, T::ONE, gemm_threads);
    }
}

/// One sample's input gradient (overwrites `dx[C, H, W]`) from `go[OC, P]`: `dcol = W^T @ go` per group,
/// then col2im (through `col`, one slot's column matrix).
#[allow(clippy::too_many_arguments)]
fn input_grad_sample<T: Float>(
    dx: &mut [T],
    go: &[T],
    weight: &[T],
    wino_u: &[T],
    col: &mut [T],
    g: &Conv2dGeom,
    d: &Dims,
    gemm_threads: bool,
) {
    if !wino_u.is_empty() {
        // The input gradient of a stride-1 convolution is a convolution of `go` (flipped weights, prepared
        // by prepare_wino with `flip`).
        let cast = (as_f32_mut(dx), as_f32(go), as_f32(wino_u), as_f32_mut(col));
        if let (Some(dx), Some(go), Some(u), Some(ws)) = cast {
            winograd::forward_sample(dx, go, u, None, ws, &wino_shapes(g, d.oh, d.ow).1);
            return;
        }
    }
    let (gin, gout) = (d.cg * g.h * g.w, d.ocg * d.p);
    let gw = d.ocg * d.kg;
    for gi in 0..g.groups {
        let (dx_g, go_g) = (&mut dx[gi * gin..(gi + 1) * gin], &go[gi * gout..(gi + 1) * gout]);
        // dcol[Kg, P] = W_g^T[Kg, OCg] @ dout_g[OCg, P], the transpose again a stride.
        let lhs = Mat::rows_t(&weight[gi * gw..(gi + 1) * gw], d.kg);
        let rhs = Mat::rows(go_g, d.p);
        if g.is_pointwise() {
            // The column matrix is the input itself: dcol is dx.
            gemm_strided(d.kg, d.p, d.ocg, dx_g, d.p, 1, false, lhs, rhs, T::ONE, gemm_threads);
        } else {
            let dcol = &mut col[..d.col_slot];
            gemm_strided(d.kg, d.p, d.ocg, dcol, d.p, 1, false, lhs, rhs, T::ONE, gemm_threads);
            col2im(dx_g, dcol, g, d);
        }
    }
}

/// Convolution backward.
///
/// dout: [N, OC, OH, OW], inp: [N, C, H, W], weight: [OC, C/groups, KH, KW];
/// dinp: [N, C, H, W] (overwritten; None when the input needs no gradient, e.g. the first layer),
/// dweight: [OC, C/groups, KH, KW] (accumulated: `+=`), dbias: `[OC]` (accumulated: `+=` the sums of dout over
/// N, OH, OW; None when the layer has no bias), col: scratch of at least [`Conv2dGeom::col_len`] elements.
/// Bit-identical for any rayon thread count. Panics on an invalid geometry or wrong buffer lengths.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    col: &mut [T],
    g: &Conv2dGeom,
) {
    let d = g.dims_or_panic();
    let (in_len, out_len) = (g.c * g.h * g.w, g.oc * d.p);
    assert_eq!(dout.len(), g.n * out_len, "conv2d_backward: dout must be [N, OC, OH, OW]");
    assert_eq!(inp.len(), g.n * in_len, "conv2d_backward: inp must be [N, C, H, W]");
    assert_eq!(weight.len(), d.wlen, "conv2d_backward: weight must be [OC, C/groups, KH, KW]");
    assert_eq!(dweight.len(), d.wlen, "conv2d_backward: dweight must be [OC, C/groups, KH, KW]");
    if let Some(dinp) = &dinp {
        assert_eq!(dinp.len(), g.n * in_len, "conv2d_backward: dinp must be [N, C, H, W]");
    }
    assert!(col.len() >= g.col_len(), "conv2d_backward: col must hold at least col_len() elements");
    if let Some(dbias) = &dbias {
        assert_eq!(dbias.len(), g.oc, "conv2d_backward: dbias must be [OC]");
    }
    if g.n == 0 {
        return;
    }
    backward_impl(dinp, dweight, dbias, DoutSource::Full(dout), inp, weight, col, g, &d);
}

/// Where a backward pass reads its output gradient from.
#[derive(Clone, Copy)]
enum DoutSource<'a, T> {
    /// The whole `[N, OC, OH, OW]` gradient.
    Full(&'a [T]),
    /// The gradient of a max pool over the output (`dy`, `argmax`: `[N, OC, POH, POW]`) and the pool's
    /// geometry for one sample (`n = 1`): each sample's output gradient is scattered into a slot buffer
    /// first, while it is still in cache (the fused convolution + pool, `conv2d_maxpool.rs`).
    /// With `relu_out`, a ReLU follows the pool: `dy` is the ReLU output's gradient, masked by `relu_out > 0`.
    Pooled { dy: &'a [T], argmax: &'a [u32], relu_out: Option<&'a [T]>, pool: Pool2dGeom },
}

/// One slot's share of a [`DoutSource`].
enum SlotDout<'a, T> {
    Full(&'a [T]),
    Pooled(&'a [T], &'a [u32], Option<&'a [T]>),
}

/// The slot loop of the backward (shared by [`conv2d_backward`] and the fused convolution + pool): per sample,
/// the output gradient (read, or unpooled into the slot's buffer), then its weight / bias gradient, then its
/// input gradient. Buffer lengths are checked by the callers; `scratch` is laid out as
/// [`Conv2dGeom::col_len`] (plus, for a pooled source, [`Conv2dGeom::maxpool_scratch_len`]'s extra room).
#[allow(clippy::too_many_arguments)]
fn backward_impl<T: Float>(
    dinp: Option<&mut [T]>,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    src: DoutSource<'_, T>,
    inp: &[T],
    weight: &[T],
    scratch: &mut [T],
    g: &Conv2dGeom,
    d: &Dims,
) {
    let (in_len, out_len) = (g.c * g.h * g.w, g.oc * d.p);
    let parallel = run_parallel(g, d);

    // Scratch layout: [slots column matrices | bias-gradient partials | weight-gradient partials of slots 1..]
    // then, for a pooled source, [one output-gradient sample per slot | bias partials when they do not fit].
    // Slot 0 accumulates straight into dweight. The bias partials (one per slot, so that dbias gets a single
    // addition, the same bits as one sum over the batch) live in the weight-length gap that col_len reserves
    // for slot 0's (unneeded) weight partial; when they do not fit there (C/groups*KH*KW < slots), the bias
    // gradient is a separate pass over the whole output gradient (or, pooled, partials in the extra room).
    let (base, extra) = scratch.split_at_mut(g.col_len());
    // The Winograd-domain weight gradients (f32 on the Winograd path only), one per slot, after the weights.
    let (base, du_all) = base.split_at_mut(d.wino_offset() + d.wino_u);
    let wino_wgrad = d.wino && as_f32(weight).is_some();
    let du_all = if wino_wgrad { du_all } else { &mut du_all[..0] };
    let du_len = winograd::u_len(g.c, g.oc);
    // The input gradient's Winograd weights, only when it is wanted.
    let (base, wino_u) = if dinp.is_some() {
        prepare_wino(base, weight, g, d, true)
    } else {
        let (head, _) = base.split_at_mut(d.wino_offset());
        (head, &[][..])
    };
    let (cols, rest) = base.split_at_mut(d.slots * d.col_slot);
    let (db_gap, partials) = rest.split_at_mut(d.wlen);
    let (samples, db_extra) = match src {
        DoutSource::Full(_) => (&mut extra[..0], &mut [][..]),
        DoutSource::Pooled { .. } => extra.split_at_mut(d.slots * out_len),
    };
    let fuse_bias = d.slots <= d.kg;
    let (dbias, db_partials) = match (dbias, src) {
        (Some(db), DoutSource::Full(dout)) if !fuse_bias => {
            bias_grad(db, dout, g.n, g.oc, d.p);
            (None, db_gap)
        }
        (db, DoutSource::Pooled { .. }) if !fuse_bias => (db, &mut db_extra[..d.slots * g.oc]),
        (db, _) => (db, db_gap),
    };
    let has_bias = dbias.is_some();

    let used = g.n.div_ceil(d.per_slot);
    // Exactly one of the two is non-empty (no boxed iterator: nothing is allocated in a step).
    let pout = match src {
        DoutSource::Pooled { dy, .. } => dy.len() / g.n,
        DoutSource::Full(_) => 0,
    };
    let full = match src {
        DoutSource::Full(dout) => Some(dout),
        DoutSource::Pooled { .. } => None,
    };
    let pooled = match src {
        DoutSource::Pooled { dy, argmax, relu_out, .. } => Some((dy, argmax, relu_out)),
        DoutSource::Full(_) => None,
    };
    let douts = full.into_iter().flat_map(|dout| dout.chunks(d.per_slot * out_len).map(SlotDout::Full)).chain(
        pooled.into_iter().flat_map(|(dy, am, relu_out)| {
            // The ReLU outputs split like dy; None for every slot without a ReLU.
            let masks = relu_out.into_iter().flat_map(|y| y.chunks(d.per_slot * pout).map(Some));
            dy.chunks(d.per_slot * pout)
                .zip(am.chunks(d.per_slot * pout))
                .zip(masks.chain(std::iter::repeat(None)))
                .map(|((y, a), m)| SlotDout::Pooled(y, a, m))
        }),
    );
    let pool = match src {
        DoutSource::Pooled { pool, .. } => Some(pool),
        DoutSource::Full(_) => None,
    };
    let sample_bufs = samples.chunks_mut(out_len.max(1)).map(Some).chain(std::iter::repeat_with(|| None));
    let dinp_chunks = dinp.map(|di| di.chunks_mut(d.per_slot * in_len)).into_iter().flatten().map(Some);
    let mut dw_slots = std::iter::once(&mut *dweight).chain(partials.chunks_mut(d.wlen));
    let dus = du_all.chunks_mut(du_len.max(1)).chain(std::iter::repeat_with(|| &mut [][..]));
    let items = cols
        .chunks_mut(d.col_slot)
        .zip(dw_slots.by_ref().zip(dus))
        .zip(db_partials.chunks_mut(g.oc).map(Some).chain(std::iter::repeat_with(|| None)))
        .enumerate()
        .zip(douts.zip(inp.chunks(d.per_slot * in_len)))
        .zip(dinp_chunks.chain(std::iter::repeat_with(|| None)).zip(sample_bufs));
    for_each_slot(items, parallel, |(((slot, ((col, (dw, du)), db)), (dout, inps)), (mut dinps, mut buf))| {
        // Weight and bias gradients of this slot's samples: slot 0 adds onto dweight (it is accumulated
        // anyway), the other weight partials and all bias partials start from zero.
        let mut db = if has_bias { db } else { None };
        if let Some(db) = db.as_deref_mut() {
            db.fill(T::ZERO);
        }
        for (i, x) in inps.chunks_exact(in_len).enumerate() {
            let go: &[T] = match &dout {
                SlotDout::Full(c) => &c[i * out_len..(i + 1) * out_len],
                SlotDout::Pooled(dy, am, relu_out) => {
                    let (pool, buf) = (pool.as_ref().expect("pooled source"), buf.as_deref_mut().expect("slot buffer"));
                    let range = i * pout..(i + 1) * pout;
                    let (dy, am) = (&dy[range.clone()], &am[range.clone()]);
                    match relu_out {
                        Some(y) => super::pool::max_pool2d_backward_relu_serial(buf, dy, &y[range], am, pool),
                        None => super::pool::max_pool2d_backward_serial(buf, dy, am, pool),
                    }
                    buf
                }
            };
            // The gemm path's slot 0 adds onto dweight; a Winograd slot starts its own gradient from zero.
            let acc = if du.is_empty() { slot == 0 || i > 0 } else { i > 0 };
            weight_grad_sample(dw, du, db.as_deref_mut(), go, x, col, acc, g, d, !parallel);
            if let Some(dinps) = dinps.as_deref_mut() {
                input_grad_sample(&mut dinps[i * in_len..(i + 1) * in_len], go, weight, wino_u, col, g, d, !parallel);
            }
        }
    });

    // Add the partials of slots 1.. in slot order: fixed order, so the same bits on any thread count. They are
    // summed first and added once, so dweight / dbias pick up one rounding at their own magnitude.
    if wino_wgrad {
        // Slot order again, in the Winograd domain, then one transform onto dweight.
        let (du0, rest) = du_all.split_at_mut(du_len);
        if used > 1 {
            add_partials(du0, &rest[..(used - 1) * du_len]);
        }
        if let (Some(dw), Some(du)) = (as_f32_mut(dweight), as_f32(du0)) {
            winograd::add_weight_grad(dw, du, g.c, g.oc);
        }
    } else if used > 1 {
        add_partials(dweight, &partials[..(used - 1) * d.wlen]);
    }
    if let Some(dbias) = dbias {
        add_partials(dbias, &db_partials[..used * g.oc]);
    }
}

/// `dst[j] += p_1[j] + p_2[j] + ...` for the partials `p_i` laid out one after the other (`dst.len()` each),
/// summed in order first.
fn add_partials<T: Float>(dst: &mut [T], partials: &[T]) {
    let len = dst.len();
    for (j, v) in dst.iter_mut().enumerate() {
        let mut s = partials[j];
        for p in partials[j..].iter().step_by(len).skip(1) {
            s += *p;
        }
        *v += s;
    }
}

/// `dbias[o] += sum over n, p of dout[n, o, p]`, summed in f64 (a bias sees N*OH*OW terms, thousands for a
/// typical CNN layer, too many for a plain f32 running sum). Parallel over channels when large: each task
/// owns whole channels, so the result does not depend on the split.
fn bias_grad<T: Float>(dbias: &mut [T], dout: &[T], n: usize, oc: usize, p: usize) {
    let channel = |(o, db): (usize, &mut T)| {
        let mut s = 0.0f64;
        for i in 0..n {
            s += dout[(i * oc + o) * p..][..p].iter().map(|v| v.to_f64()).sum::<f64>();
        }
        *db += T::from_f64(s);
    };
    if dout.len() >= PAR_MIN_ELEMS && oc > 1 {
        dbias.par_iter_mut().enumerate().for_each(channel);
    } else {
        dbias.iter_mut().enumerate().for_each(channel);
    }
}

/// The CUDA kernels of the convolution (`conv2d.cu`: im2col, col2im, bias add and bias gradient).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "conv2d",
    code: include_str!("conv2d.cu"),
    kernels: &[
        "conv_im2col_f32_f32",
        "conv_im2col_f32_f16",
        "conv_im2col_f16_f32",
        "conv_im2col_f16_f16",
        "conv_im2col_f32_bf16",
        "conv_im2col_bf16_f32",
        "conv_im2col_bf16_bf16",
        "conv_col2im_f32",
        "conv_bias_add_f32",
        "conv_bias_rowsum_f32",
        "conv_bias_rowsum_warp_f32",
        "conv_col2im_f16",
        "conv_bias_add_f16",
        "conv_bias_rowsum_f16",
        "conv_bias_rowsum_warp_f16",
        "conv_col2im_bf16",
        "conv_bias_add_bf16",
        "conv_bias_rowsum_bf16",
        "conv_bias_rowsum_warp_bf16",
    ],
};

/// Host side of the convolution on the GPU (cuBLAS + `conv2d.cu`).
#[path = "conv2d_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    #[allow(clippy::too_many_arguments)]
    fn geom(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        oc: usize,
        kh: usize,
        kw: usize,
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
        groups: usize,
    ) -> Conv2dGeom {
        Conv2dGeom { n, c, h, w, oc, kh, kw, stride, padding, dilation, groups }
    }

    /// The input coordinate tap `(ki, kj)` of output `(oy, ox)` reads, or None in the padding.
    fn tap(g: &Conv2dGeom, oy: usize, ox: usize, ki: usize, kj: usize) -> Option<(usize, usize)> {
        let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize - g.padding.0 as isize;
        let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize - g.padding.1 as isize;
        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
            None
        } else {
            Some((iy as usize, ix as usize))
        }
    }

    /// Calls `f(out_index, inp_index, weight_index)` for every term of the convolution sum: the direct
    /// 7-loop definition (n, o, oy, ox, c, ki, kj), shared by the reference forward and backward.
    fn for_each_term(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = g.out_hw().unwrap();
        let (cg, ocg) = (g.c / g.groups, g.oc / g.groups);
        for n in 0..g.n {
            for o in 0..g.oc {
                let grp = o / ocg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let oi = ((n * g.oc + o) * oh + oy) * ow + ox;
                        for ci in 0..cg {
                            let c = grp * cg + ci;
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    if let Some((iy, ix)) = tap(g, oy, ox, ki, kj) {
                                        let ii = ((n * g.c + c) * g.h + iy) * g.w + ix;
                                        let wi = ((o * cg + ci) * g.kh + ki) * g.kw + kj;
                                        f(oi, ii, wi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Naive f64 reference forward, straight from the definition.
    fn ref_forward(inp: &[f64], w: &[f64], bias: Option<&[f64]>, g: &Conv2dGeom) -> Vec<f64> {
        let (oh, ow) = g.out_hw().unwrap();
        let p = oh * ow;
        let mut out: Vec<f64> = (0..g.n * g.oc * p).map(|i| bias.map_or(0.0, |b| b[(i / p) % g.oc])).collect();
        for_each_term(g, |oi, ii, wi| out[oi] += inp[ii] * w[wi]);
        out
    }

    /// Naive f64 reference gradients (dinp, dweight, dbias) of the loss sum(dout * out).
    fn ref_backward(dout: &[f64], inp: &[f64], w: &[f64], g: &Conv2dGeom) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (oh, ow) = g.out_hw().unwrap();
        let p = oh * ow;
        let mut dinp = vec![0.0; inp.len()];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; g.oc];
        for (i, &v) in dout.iter().enumerate() {
            db[(i / p) % g.oc] += v;
        }
        for_each_term(g, |oi, ii, wi| {
            dinp[ii] += dout[oi] * w[wi];
            dw[wi] += dout[oi] * inp[ii];
        });
        (dinp, dw, db)
    }

    fn lens(g: &Conv2dGeom) -> (usize, usize, usize) {
        let (oh, ow) = g.out_hw().unwrap();
        (g.n * g.c * g.h * g.w, g.oc * (g.c / g.groups) * g.kh * g.kw, g.n * g.oc * oh * ow)
    }

    /// Runs the kernel (forward and full backward) in `T` and returns everything widened to f64.
    fn run_kernel<T: Float>(
        inp: &[f64],
        w: &[f64],
        bias: Option<&[f64]>,
        dout: &[f64],
        g: &Conv2dGeom,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let cv = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let back = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let (inp, w, dout) = (cv(inp), cv(w), cv(dout));
        let bias = bias.map(cv);
        let (il, wl, ol) = lens(g);
        // NaN-filled scratch and outputs: any element read before being written shows up.
        let nan = T::from_f64(f64::NAN);
        let mut col = vec![nan; g.col_len()];
        let mut out = vec![nan; ol];
        conv2d_forward(&mut out, &inp, &w, bias.as_deref(), &mut col, g);
        let mut dinp = vec![nan; il];
        let mut dw = vec![T::ZERO; wl];
        let mut db = vec![T::ZERO; g.oc];
        conv2d_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, &mut col, g);
        (back(&out), back(&dinp), back(&dw), back(&db))
    }

    /// Forward and backward of the f64 kernel (1e-12) and the f32 kernel (1e-5) against the naive reference.
    fn check_against_reference(g: &Conv2dGeom, with_bias: bool, seed: u64, check_f64: bool) {
        let (il, wl, ol) = lens(g);
        let inp = round_f32(&uniform(seed, il, -1.0, 1.0));
        let w = round_f32(&uniform(seed + 1, wl, -1.0, 1.0));
        let bias = round_f32(&uniform(seed + 2, g.oc, -1.0, 1.0));
        let bias = with_bias.then_some(&bias[..]);
        let dout = round_f32(&uniform(seed + 3, ol, -1.0, 1.0));
        let want = ref_forward(&inp, &w, bias, g);
        let (want_dinp, want_dw, want_db) = ref_backward(&dout, &inp, &w, g);

        let mut cases = vec![("f32", 1e-5)];
        if check_f64 {
            cases.push(("f64", 1e-12));
        }
        for (ty, tol) in cases {
            let (out, dinp, dw, db) = if ty == "f32" {
                run_kernel::<f32>(&inp, &w, bias, &dout, g)
            } else {
                run_kernel::<f64>(&inp, &w, bias, &dout, g)
            };
            assert_close_scaled(&format!("{ty} out {g:?}"), &out, &want, tol);
            assert_close_scaled(&format!("{ty} dinp {g:?}"), &dinp, &want_dinp, tol);
            assert_close_scaled(&format!("{ty} dweight {g:?}"), &dw, &want_dw, tol);
            assert_close_scaled(&format!("{ty} dbias {g:?}"), &db, &want_db, tol);
        }
    }

    #[test]
    fn hand_checked_values() {
        // inp 1..9 as a 3x3 image, kernel [[1, 2], [3, 4]].
        let inp: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let w = [1.0f32, 2.0, 3.0, 4.0];
        let g = geom(1, 1, 3, 3, 1, 2, 2, (1, 1), (0, 0), (1, 1), 1);
        assert_eq!(g.out_hw(), Ok((2, 2)));
        let mut col = vec![0.0f32; g.col_len()];
        let mut out = [0.0f32; 4];
        conv2d_forward(&mut out, &inp, &w, Some(&[0.5]), &mut col, &g);
        // out[0,0] = 1*1 + 2*2 + 3*4 + 4*5 = 37, then 47, 67, 77; plus the bias.
        assert_eq!(out, [37.5, 47.5, 67.5, 77.5]);

        let (mut dinp, mut dw, mut db) = ([9.0f32; 9], [0.0f32; 4], [0.0f32; 1]);
        conv2d_backward(Some(&mut dinp), &mut dw, Some(&mut db), &[1.0; 4], &inp, &w, &mut col, &g);
        // dw[a, b] = sum of the 2x2 block of inputs starting at (a, b); dinp = sum of the taps covering it.
        assert_eq!(dw, [12.0, 16.0, 24.0, 28.0]);
        assert_eq!(db, [4.0]);
        assert_eq!(dinp, [1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);

        // Stride 2, padding 1: windows start at -1 and 1 on both axes.
        let g = geom(1, 1, 3, 3, 1, 2, 2, (2, 2), (1, 1), (1, 1), 1);
        assert_eq!(g.out_hw(), Ok((2, 2)));
        let mut col = vec![0.0f32; g.col_len()];
        conv2d_forward(&mut out, &inp, &w, None, &mut col, &g);
        // (0,0): only x[0,0]*w[1,1] = 4; (0,1): x[0,1]*3 + x[0,2]*4 = 18; (1,0): x[1,0]*2 + x[2,0]*4 = 36;
        // (1,1): x[1,1]*1 + x[1,2]*2 + x[2,1]*3 + x[2,2]*4 = 77.
        assert_eq!(out, [4.0, 18.0, 36.0, 77.0]);

        // Dilation 2 on a 3x3 input: a single output reading the four corners.
        let g = geom(1, 1, 3, 3, 1, 2, 2, (1, 1), (0, 0), (2, 2), 1);
        assert_eq!(g.out_hw(), Ok((1, 1)));
        let mut col = vec![0.0f32; g.col_len()];
        conv2d_forward(&mut out[..1], &inp, &w, None, &mut col, &g);
        assert_eq!(out[0], 1.0 + 2.0 * 3.0 + 3.0 * 7.0 + 4.0 * 9.0);
    }

    #[test]
    fn matches_f64_reference() {
        let s = |v| (v, v);
        let cases = [
            // plain 3x3, bias
            (geom(2, 3, 7, 6, 4, 3, 3, s(1), s(0), s(1), 1), true),
            // non-square kernel, stride 2, padding 1, no bias
            (geom(2, 3, 8, 7, 5, 3, 2, s(2), s(1), s(1), 1), false),
            // dilation 2 with asymmetric stride / padding
            (geom(1, 2, 9, 9, 3, 3, 3, (1, 2), (1, 2), s(2), 1), true),
            // groups 2, non-square kernel, padding on one axis only
            (geom(3, 4, 6, 5, 6, 2, 3, s(1), (1, 0), s(1), 2), true),
            // depthwise (groups = C), stride 2, no bias
            (geom(2, 4, 5, 5, 4, 3, 3, s(2), s(1), s(1), 4), false),
            // depthwise with channel multiplier 2, dilation (2, 1)
            (geom(2, 3, 6, 7, 6, 3, 3, (2, 1), s(1), (2, 1), 3), true),
            // 1x1 pointwise fast path, and a 1x1 with stride 2 (not the fast path)
            (geom(2, 5, 4, 3, 6, 1, 1, s(1), s(0), s(1), 1), true),
            (geom(2, 5, 5, 4, 6, 1, 1, s(2), s(0), s(1), 1), false),
            // padding wider than the kernel: border outputs are bias only
            (geom(1, 2, 3, 3, 2, 2, 2, s(1), s(3), s(1), 1), true),
            // more samples than CONV_SLOTS, not a multiple of it: uneven slots
            (geom(11, 2, 5, 4, 3, 3, 3, s(1), s(1), s(1), 1), true),
        ];
        for (i, (g, bias)) in cases.iter().enumerate() {
            check_against_reference(g, *bias, 100 + 10 * i as u64, true);
        }
    }

    #[test]
    fn matches_reference_at_cnn_benchmark_shapes() {
        // The W2 CNN: 1 -> 32 channels at 28x28 and 32 -> 64 at 14x14, 3x3, padding 1, batch 8. Both are
        // above CONV_PAR_MIN_MACS, so the slots run as rayon tasks.
        let g1 = geom(8, 1, 28, 28, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1);
        let g2 = geom(8, 32, 14, 14, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1);
        for g in [&g1, &g2] {
            assert!(g.n * g.oc * g.c * 9 * g.h * g.w >= CONV_PAR_MIN_MACS);
        }
        check_against_reference(&g1, true, 7, false);
        check_against_reference(&g2, true, 8, false);
    }

    #[test]
    fn direct_path_for_one_input_channel_per_group_matches_f64_reference() {
        // C/groups = 1 takes the direct (non-gemm) forward and weight gradient. Output rows shorter than, equal
        // to and not a multiple of the 32-wide register block, OC/groups not a multiple of 4, with and without
        // bias, strides, paddings, dilations, and batches above CONV_SLOTS.
        let s = |v| (v, v);
        let cases = [
            // the W2 first layer at a small batch (same padding: the shifted-plane im2col)
            (geom(3, 1, 28, 28, 32, 3, 3, s(1), s(1), s(1), 1), true),
            (geom(2, 1, 9, 7, 5, 3, 3, s(1), s(1), s(1), 1), false),
            (geom(2, 1, 11, 10, 6, 3, 2, (2, 1), (1, 0), s(1), 1), true),
            (geom(1, 1, 13, 12, 3, 3, 3, s(1), s(2), s(2), 1), true),
            (geom(2, 1, 12, 12, 7, 5, 5, (2, 3), (2, 1), (1, 2), 1), false),
            // depthwise, with a channel multiplier, and padding wider than the kernel
            (geom(2, 3, 8, 9, 6, 3, 3, s(1), s(1), s(1), 3), true),
            (geom(1, 2, 4, 4, 2, 2, 2, s(1), s(3), s(1), 2), true),
            // 9 samples: uneven slots; a 1x2 kernel has KH*KW = 2 < slots, so the bias gradient is its own pass
            (geom(9, 1, 6, 40, 4, 1, 2, s(1), (0, 1), s(1), 1), true),
            (geom(11, 1, 8, 8, 9, 3, 3, s(1), s(1), s(1), 1), true),
            // short rows take the tap-vector weight gradient: a ViT patch embedding (4x4, stride 4, 49 patches,
            // 16 taps, channels not a multiple of its 8-channel block) and a 2x2 patch of a 2-channel depthwise
            (geom(3, 1, 28, 28, 20, 4, 4, s(4), s(0), s(1), 1), true),
            (geom(2, 2, 6, 6, 4, 2, 2, s(2), s(0), s(1), 2), false),
        ];
        for (i, (g, bias)) in cases.iter().enumerate() {
            check_against_reference(g, *bias, 300 + 10 * i as u64, true);
        }
    }

    #[test]
    fn same_padding_shifted_planes_match_f64_reference() {
        // Stride 1 with OW == W: im2col / col2im move whole shifted planes. Dilation, non-square kernels,
        // padding on one axis only, groups, and a 1-pixel-wide input.
        let s = |v| (v, v);
        let cases = [
            (geom(2, 3, 7, 6, 4, 3, 3, s(1), s(1), s(1), 1), true),
            (geom(2, 3, 9, 8, 4, 5, 5, s(1), s(2), s(1), 1), false),
            (geom(1, 2, 9, 9, 3, 3, 3, s(1), s(2), s(2), 1), true),
            (geom(2, 4, 6, 7, 4, 3, 1, s(1), (1, 0), s(1), 2), true),
            (geom(2, 2, 5, 6, 3, 1, 3, s(1), (0, 1), s(1), 1), true),
            (geom(2, 2, 6, 1, 3, 3, 1, s(1), (1, 0), s(1), 1), true),
            (geom(10, 3, 5, 5, 4, 3, 3, s(1), s(1), s(1), 1), true),
            // Kernels more than twice the input (an 8x8 digit under a 9x9 or 17x17 "same" kernel): whole
            // kernel rows and columns see only padding.
            (geom(2, 2, 8, 8, 3, 9, 9, s(1), s(4), s(1), 1), true),
            (geom(2, 1, 8, 8, 2, 17, 17, s(1), s(8), s(1), 1), true),
            (geom(2, 1, 3, 4, 2, 11, 9, s(1), (5, 4), s(1), 1), false),
        ];
        for (i, (g, bias)) in cases.iter().enumerate() {
            let (_, ow) = g.out_hw().unwrap();
            assert_eq!(ow, g.w, "{g:?} must take the shifted-plane path");
            check_against_reference(g, *bias, 500 + 10 * i as u64, true);
        }
        // Finite differences through the shifted planes (gemm path) and the direct path.
        for g in [
            geom(2, 2, 5, 4, 3, 3, 3, s(1), s(2), s(2), 1),
            geom(2, 1, 5, 6, 3, 3, 3, s(1), s(1), s(1), 1),
            geom(2, 1, 3, 3, 2, 9, 9, s(1), s(4), s(1), 1),
        ] {
            check_finite_differences(&g);
        }
    }

    #[test]
    fn direct_path_does_not_depend_on_the_thread_count() {
        let g = geom(16, 1, 28, 28, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1);
        let (il, wl, ol) = lens(&g);
        let inp = uniform(1, il, -1.0, 1.0);
        let w = uniform(2, wl, -1.0, 1.0);
        let bias = uniform(3, g.oc, -1.0, 1.0);
        let dout = uniform(4, ol, -1.0, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_kernel::<f32>(&inp, &w, Some(&bias), &dout, &g))
        };
        let (a, b) = (run(1), run(3));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (name, x, y) in [("out", &a.0, &b.0), ("dinp", &a.1, &b.1), ("dweight", &a.2, &b.2), ("dbias", &a.3, &b.3)]
        {
            assert!(bits(x) == bits(y), "{name} differs");
        }
    }

    #[test]
    fn tap_vector_weight_gradient_does_not_depend_on_the_thread_count() {
        // The ViT patch embedding at W3's batch: every slot sums its samples' tap-vector chains in order.
        let g = geom(64, 1, 28, 28, 128, 4, 4, (4, 4), (0, 0), (1, 1), 1);
        let (il, wl, ol) = lens(&g);
        let (inp, w, dout) = (uniform(1, il, -1.0, 1.0), uniform(2, wl, -1.0, 1.0), uniform(4, ol, -1.0, 1.0));
        let bias = uniform(3, g.oc, -1.0, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_kernel::<f32>(&inp, &w, Some(&bias), &dout, &g))
        };
        let (a, b) = (run(1), run(3));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&a.2) == bits(&b.2), "dweight differs");
        assert!(bits(&a.3) == bits(&b.3), "dbias differs");
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = geom(8, 32, 14, 14, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1);
        let (il, wl, ol) = lens(&g);
        let inp = uniform(1, il, -1.0, 1.0);
        let w = uniform(2, wl, -1.0, 1.0);
        let bias = uniform(3, g.oc, -1.0, 1.0);
        let dout = uniform(4, ol, -1.0, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_kernel::<f32>(&inp, &w, Some(&bias), &dout, &g))
        };
        let (a, b) = (run(1), run(3));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&a.0) == bits(&b.0), "out differs");
        assert!(bits(&a.1) == bits(&b.1), "dinp differs");
        assert!(bits(&a.2) == bits(&b.2), "dweight differs");
        assert!(bits(&a.3) == bits(&b.3), "dbias differs");
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Groups 2, non-square kernel, stride (2, 1), padding 1, dilation (1, 2): 160 + 48 + 4 coordinates.
        let g = geom(2, 4, 5, 4, 4, 3, 2, (2, 1), (1, 1), (1, 2), 2);
        check_finite_differences(&g);
    }

    /// The f64 backward of `g` against central differences of the f64 forward, for the input, the weight and
    /// the bias.
    fn check_finite_differences(g: &Conv2dGeom) {
        let (il, wl, ol) = lens(g);
        let mut inp = uniform(1, il, -1.0, 1.0);
        let mut w = uniform(2, wl, -1.0, 1.0);
        let mut bias = uniform(3, g.oc, -1.0, 1.0);
        let dout = uniform(4, ol, -1.0, 1.0);
        let mut col = vec![0.0; g.col_len()];
        let (mut dinp, mut dw, mut db) = (vec![0.0; il], vec![0.0; wl], vec![0.0; g.oc]);
        conv2d_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, &mut col, g);
        let loss = |inp: &[f64], w: &[f64], bias: &[f64]| {
            let mut out = vec![0.0; ol];
            let mut col = vec![0.0; g.col_len()];
            conv2d_forward(&mut out, inp, w, Some(bias), &mut col, g);
            dot(&dout, &out)
        };
        let (w0, bias0) = (w.clone(), bias.clone());
        check_grad("dinp", &mut inp, &dinp, |x| loss(x, &w0, &bias0));
        let inp0 = inp.clone();
        check_grad("dweight", &mut w, &dw, |x| loss(&inp0, x, &bias0));
        check_grad("dbias", &mut bias, &db, |x| loss(&inp0, &w0, x));
    }

    #[test]
    fn parameter_gradients_accumulate_and_input_gradient_overwrites() {
        // 10 samples: slot 0 adds straight onto dweight, the other slots go through partials.
        let g = geom(10, 2, 5, 5, 3, 3, 3, (1, 1), (1, 1), (1, 1), 1);
        let (il, wl, ol) = lens(&g);
        let inp = uniform(5, il, -1.0, 1.0);
        let w = uniform(6, wl, -1.0, 1.0);
        let dout = uniform(7, ol, -1.0, 1.0);
        let mut col = vec![0.0; g.col_len()];
        let (mut dinp, mut dw, mut db) = (vec![0.0; il], vec![0.0; wl], vec![0.0; g.oc]);
        conv2d_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, &mut col, &g);
        let (dinp1, dw1, db1) = (dinp.clone(), dw.clone(), db.clone());
        conv2d_backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w, &mut col, &g);
        assert_close("dinp overwritten", &dinp, &dinp1, 0.0, 0.0);
        let times = |v: &[f64], k: f64| v.iter().map(|x| k * x).collect::<Vec<_>>();
        assert_close("dweight doubled", &dw, &times(&dw1, 2.0), 1e-14, 1e-14);
        assert_close("dbias doubled", &db, &times(&db1, 2.0), 1e-14, 1e-14);
        // Without dinp / dbias only dweight moves.
        conv2d_backward(None, &mut dw, None, &dout, &inp, &w, &mut col, &g);
        assert_close("dweight tripled", &dw, &times(&dw1, 3.0), 1e-14, 1e-14);
        assert_close("dbias untouched", &db, &times(&db1, 2.0), 0.0, 0.0);
    }

    #[test]
    fn geometry_errors() {
        let ok = geom(2, 4, 8, 8, 6, 3, 3, (1, 1), (1, 1), (1, 1), 2);
        assert_eq!(ok.out_hw(), Ok((8, 8)));
        assert_eq!(ok.col_len(), 2 * (2 * 9 * 64 + 6 * 2 * 9));
        let bad = [
            Conv2dGeom { c: 0, ..ok },
            Conv2dGeom { oc: 0, ..ok },
            Conv2dGeom { groups: 0, ..ok },
            Conv2dGeom { groups: 3, ..ok }, // C = 4 not divisible
            Conv2dGeom { oc: 5, ..ok },     // OC = 5 not divisible by 2
            Conv2dGeom { kh: 0, ..ok },
            Conv2dGeom { stride: (1, 0), ..ok },
            Conv2dGeom { dilation: (0, 1), ..ok },
            Conv2dGeom { h: 0, ..ok },
            Conv2dGeom { kw: 11, ..ok },                           // 11 > 8 + 2
            Conv2dGeom { dilation: (5, 1), ..ok },                 // 5*2 + 1 = 11 > 10
            Conv2dGeom { padding: (usize::MAX / 2 + 1, 0), ..ok }, // overflow
        ];
        for g in bad {
            assert!(g.out_hw().is_err(), "{g:?} should be rejected");
            assert_eq!(g.col_len(), 0);
        }
        // The output size follows PyTorch's floor formula.
        assert_eq!(Conv2dGeom { stride: (2, 3), padding: (0, 0), ..ok }.out_hw(), Ok((3, 2)));
        assert_eq!(Conv2dGeom { dilation: (2, 2), padding: (0, 2), ..ok }.out_hw(), Ok((4, 8)));
        // A kernel exactly as large as the padded input gives a 1x1 output.
        assert_eq!(Conv2dGeom { kh: 10, kw: 10, ..ok }.out_hw(), Ok((1, 1)));
        // An empty batch is valid and a no-op.
        let empty = Conv2dGeom { n: 0, ..ok };
        assert_eq!(empty.col_len(), 0);
        conv2d_forward::<f32>(&mut [], &[], &[0.0; 6 * 2 * 9], None, &mut [], &empty);
    }

    #[test]
    #[should_panic(expected = "divisible by groups")]
    fn kernels_panic_on_invalid_geometry() {
        let g = geom(1, 3, 4, 4, 2, 1, 1, (1, 1), (0, 0), (1, 1), 2);
        conv2d_forward::<f32>(&mut [0.0; 32], &[0.0; 48], &[0.0; 3], None, &mut [], &g);
    }
}
