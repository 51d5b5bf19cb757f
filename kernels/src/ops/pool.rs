//! 2-D pooling over NCHW planes (PyTorch `nn.MaxPool2d`, `nn.AvgPool2d`, `nn.AdaptiveAvgPool2d`, and global
//! average pooling as the adaptive pool to 1x1).
//!
//! Every (sample, channel) plane is pooled independently, so the kernels loop over planes and split them
//! across rayon threads when the work is large; each plane's result is computed the same way on either path.
//! Backward passes overwrite the input gradient: zero it, then scatter-add every output gradient onto the
//! input positions its window read.

use rayon::prelude::*;

use super::par::{rows_per_task, PAR_MIN_ELEMS};

#[path = "pool_2x2_avx2.rs"]
mod avx2_2x2;
use crate::Float;

/// Geometry of a fixed-window pool (PyTorch `MaxPool2d` / `AvgPool2d` with `ceil_mode=False`, dilation 1).
///
/// Input [N, C, H, W], output [N, C, OH, OW] with `OH = (H + 2*pad_h - KH) / stride_h + 1` (floor), same for
/// W. Tuples are `(height, width)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    /// Batch size N.
    pub n: usize,
    /// Channels C.
    pub c: usize,
    /// Input height H.
    pub h: usize,
    /// Input width W.
    pub w: usize,
    /// Window height KH.
    pub kh: usize,
    /// Window width KW.
    pub kw: usize,
    /// Stride (height, width), at least 1 (PyTorch's default is the window size; here it is explicit).
    pub stride: (usize, usize),
    /// Implicit padding on each side (height, width), at most half the window (as PyTorch requires).
    pub padding: (usize, usize),
}

impl Pool2dGeom {
    /// Output spatial size `(OH, OW)`, or why the geometry is invalid: zero window, stride or input size,
    /// padding above half the window, a window larger than the padded input, or a plane too large for the
    /// `u32` argmax indices.
    pub fn out_hw(&self) -> Result<(usize, usize), String> {
        if self.kh == 0 || self.kw == 0 {
            return Err(format!("pool2d: window size must be positive (got {}x{})", self.kh, self.kw));
        }
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(format!("pool2d: stride must be positive (got {:?})", self.stride));
        }
        if self.h == 0 || self.w == 0 {
            return Err(format!("pool2d: input size must be positive (got {}x{})", self.h, self.w));
        }
        // PyTorch's rule; it also guarantees every window overlaps the input (no empty max / all-padding
        // windows).
        if self.padding.0 > self.kh / 2 || self.padding.1 > self.kw / 2 {
            return Err(format!(
                "pool2d: padding {:?} must be at most half the window {}x{}",
                self.padding, self.kh, self.kw
            ));
        }
        if self.h.checked_mul(self.w).is_none_or(|hw| hw > u32::MAX as usize) {
            return Err(format!("pool2d: a {}x{} plane does not fit u32 argmax indices", self.h, self.w));
        }
        let (ph, pw) = (self.h + 2 * self.padding.0, self.w + 2 * self.padding.1);
        if ph < self.kh || pw < self.kw {
            return Err(format!(
                "pool2d: window {}x{} larger than the padded input {ph}x{pw}: empty output",
                self.kh, self.kw
            ));
        }
        Ok(((ph - self.kh) / self.stride.0 + 1, (pw - self.kw) / self.stride.1 + 1))
    }

    fn out_hw_or_panic(&self) -> (usize, usize) {
        self.out_hw().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Window of output index `o` on one axis: the padded start `o*stride - pad` and the input range
/// `[lo, hi)` it covers after clipping to `[0, size)`.
#[inline]
fn window(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> (isize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = start.max(0) as usize;
    let hi = ((start + k as isize).max(0) as usize).min(size);
    (start, lo, hi)
}

/// Runs `f(dst_plane, src_plane)` on every plane pair (`dst` planes of `dst_len`, `src` planes of `src_len`),
/// in parallel when `work` (total element visits) is large.
fn for_planes<A, B, F>(dst: &mut [A], dst_len: usize, src: &[B], src_len: usize, work: usize, f: F)
where
    A: Send,
    B: Sync,
    F: Fn(&mut [A], &[B]) + Sync,
{
    if dst_len == 0 || src_len == 0 {
        return;
    }
    let planes = dst.len() / dst_len;
    if planes > 1 && work >= PAR_MIN_ELEMS {
        let per_task = rows_per_task(work / planes);
        dst.par_chunks_mut(per_task * dst_len).zip(src.par_chunks(per_task * src_len)).for_each(|(d, s)| {
            d.chunks_exact_mut(dst_len).zip(s.chunks_exact(src_len)).for_each(|(d, s)| f(d, s));
        });
    } else {
        dst.chunks_exact_mut(dst_len).zip(src.chunks_exact(src_len)).for_each(|(d, s)| f(d, s));
    }
}

/// One output row of an unpadded max pool: `best[ox]`, `idx[ox]` over the window rows `y0..y0+kh` of plane `x`
/// (width `w`). Outputs of a row are independent, so the compare-and-select chains interleave instead of
/// serialising through one running maximum, and the selects compile branch-free (with AVX-512 masks when the
/// CPU has them): at the W2 shape with ReLU'd input (half ties at 0) the branchy scan took ~5 ms.
/// The per-output visiting order stays row-major over the window, so ties go to the first maximum. NaN is
/// not handled (a NaN test in the selects made every select a branch): the row only reports whether it saw
/// one (an OR kept apart from the selects), and the caller then redoes the plane on the general path.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn max_pool_row_body<T: Float>(
    best: &mut [T],
    idx: &mut [u32],
    x: &[T],
    y0: usize,
    w: usize,
    sw: usize,
    kh: usize,
    kw: usize,
) -> bool {
    #[allow(clippy::eq_op)]
    let is_nan = |v: T| v != v;
    let mut nan = false;
    if kh == 2 && kw == 2 && sw == 2 {
        // The common 2x2 / stride-2 window: all four candidates in registers, no running value in memory.
        let (r0, r1) = (y0 * w, (y0 + 1) * w);
        for (ox, (b, id)) in best.iter_mut().zip(idx.iter_mut()).enumerate() {
            let (i0, i2) = (r0 + 2 * ox, r1 + 2 * ox);
            let (a, bb, c, d) = (x[i0], x[i0 + 1], x[i2], x[i2 + 1]);
            nan |= is_nan(a) | is_nan(bb) | is_nan(c) | is_nan(d);
            // Row-major order with strict `>`: ties keep the earlier element, as the general path does.
            let (m01, j01) = if bb > a { (bb, i0 + 1) } else { (a, i0) };
            let (m23, j23) = if d > c { (d, i2 + 1) } else { (c, i2) };
            let (m, j) = if m23 > m01 { (m23, j23) } else { (m01, j01) };
            *b = m;
            *id = j as u32;
        }
        return nan;
    }
    for ky in 0..kh {
        let row = (y0 + ky) * w;
        for kx in 0..kw {
            let first = ky == 0 && kx == 0;
            for (ox, (b, id)) in best.iter_mut().zip(idx.iter_mut()).enumerate() {
                let i = row + ox * sw + kx;
                let v = x[i];
                nan |= is_nan(v);
                // No NaN in the selects (see above). The index select is integer arithmetic so LLVM cannot
                // turn it into a branch (it did for `if`).
                let (bv, iv) = (*b, *id);
                let take = first | (v > bv);
                let m = (take as u32).wrapping_neg();
                *id = (i as u32 & m) | (iv & !m);
                *b = if take { v } else { bv };
            }
        }
    }
    nan
}

/// Every output row of one unpadded plane (`out`, `idx`: [OH, OW]) through [`max_pool_row_body`]: one
/// dispatch per plane rather than per row (a W2 plane of the second pool has 7 rows of 7 outputs, where the
/// per-row call cost as much as the scan). Returns whether the plane holds a NaN (its outputs are then
/// not PyTorch's and the caller recomputes them).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn max_pool_plane_body<T: Float>(
    out: &mut [T],
    idx: &mut [u32],
    x: &[T],
    ow: usize,
    sh: usize,
    w: usize,
    sw: usize,
    kh: usize,
    kw: usize,
) -> bool {
    let mut nan = false;
    for (oy, (best, id)) in out.chunks_exact_mut(ow).zip(idx.chunks_exact_mut(ow)).enumerate() {
        nan |= max_pool_row_body(best, id, x, oy * sh, w, sw, kh, kw);
    }
    nan
}

crate::multiversion!(
    #[allow(clippy::too_many_arguments)]
    fn max_pool_plane<T: Float>(out: &mut [T], idx: &mut [u32], x: &[T], ow: usize, sh: usize, w: usize, sw: usize, kh: usize, kw: usize) -> bool => max_pool_plane_body
);

/// Max pool forward (overwrites `out` and `argmax`). Padding counts as -inf, so a window only ever picks an
/// input element; ties go to the first maximum in row-major window order and a NaN wins, as in PyTorch.
///
/// out: [N, C, OH, OW], argmax: [N, C, OH, OW] (flat index `iy*W + ix` of the picked element within its
/// input plane, PyTorch's `return_indices`), inp: [N, C, H, W].
/// Panics on an invalid geometry (see [`Pool2dGeom::out_hw`]) or wrong buffer lengths.
pub fn max_pool2d_forward<T: Float>(out: &mut [T], argmax: &mut [u32], inp: &[T], g: &Pool2dGeom) {
    let (oh, ow) = check_max_pool(out.len(), argmax.len(), inp.len(), g, "max_pool2d_forward");
    let (plane_in, plane_out) = (g.h * g.w, oh * ow);
    if plane_out == 0 {
        return;
    }
    let work = out.len() * g.kh * g.kw;
    if g.n * g.c > 1 && work >= PAR_MIN_ELEMS {
        let per_task = rows_per_task(plane_out * g.kh * g.kw);
        out.par_chunks_mut(per_task * plane_out)
            .zip(argmax.par_chunks_mut(per_task * plane_out))
            .zip(inp.par_chunks(per_task * plane_in))
            .for_each(|((o, am), x)| max_pool_planes(o, am, x, g, oh, ow));
    } else {
        max_pool_planes(out, argmax, inp, g, oh, ow);
    }
}

/// [`max_pool2d_forward`] on the calling thread only, for callers that split the work themselves (the fused
/// convolution + pool runs it per sample inside its own slots). The same results.
pub(crate) fn max_pool2d_forward_serial<T: Float>(out: &mut [T], argmax: &mut [u32], inp: &[T], g: &Pool2dGeom) {
    let (oh, ow) = check_max_pool(out.len(), argmax.len(), inp.len(), g, "max_pool2d_forward");
    if oh * ow > 0 {
        max_pool_planes(out, argmax, inp, g, oh, ow);
    }
}

/// Checks a max pool's buffer lengths (output, argmax, input) against `g`; returns `(OH, OW)`.
fn check_max_pool(out: usize, argmax: usize, inp: usize, g: &Pool2dGeom, who: &str) -> (usize, usize) {
    let (oh, ow) = g.out_hw_or_panic();
    let planes = g.n * g.c;
    assert_eq!(out, planes * oh * ow, "{who}: out must be [N, C, OH, OW]");
    assert_eq!(argmax, planes * oh * ow, "{who}: argmax must be [N, C, OH, OW]");
    assert_eq!(inp, planes * g.h * g.w, "{who}: inp must be [N, C, H, W]");
    (oh, ow)
}

/// Max-pools whole planes in order: `out` / `am` hold [planes, OH, OW], `inp` [planes, H, W].
fn max_pool_planes<T: Float>(out: &mut [T], am: &mut [u32], inp: &[T], g: &Pool2dGeom, oh: usize, ow: usize) {
    let (plane_in, plane_out) = (g.h * g.w, oh * ow);
    for ((o, am), x) in
        out.chunks_exact_mut(plane_out).zip(am.chunks_exact_mut(plane_out)).zip(inp.chunks_exact(plane_in))
    {
        max_pool_plane_any(o, am, x, g, oh, ow);
    }
}

/// One plane of the max pool, any geometry: `o` / `am` [OH, OW], `x` [H, W].
fn max_pool_plane_any<T: Float>(o: &mut [T], am: &mut [u32], x: &[T], g: &Pool2dGeom, oh: usize, ow: usize) {
    let ((sh, sw), (ph, pw)) = (g.stride, g.padding);
    // Without padding no window is clipped: scan one window offset (ky, kx) across a whole output row at a
    // time (see `max_pool_row_body`), or for f32 2x2 / stride-2 windows eight outputs per AVX2 step (the same
    // bits); a plane with a NaN is redone below, where a NaN wins as in PyTorch.
    if ph == 0 && pw == 0 {
        let nan = match as_f32_plane(o, x) {
            Some((o32, x32))
                if g.kh == 2 && g.kw == 2 && (sh, sw) == (2, 2) && ow >= 8 && x.len() <= i32::MAX as usize =>
            {
                // SAFETY: `as_f32_plane` only answers on a CPU with AVX2.
                unsafe { avx2_2x2::plane(o32, am, x32, g.w, ow) }
            }
            _ => max_pool_plane(o, am, x, ow, sh, g.w, sw, g.kh, g.kw),
        };
        if !nan {
            return;
        }
    }
    for oy in 0..oh {
        let (_, y0, y1) = window(oy, sh, ph, g.kh, g.h);
        for ox in 0..ow {
            let (_, x0, x1) = window(ox, sw, pw, g.kw, g.w);
            // Start from the first element in the window (never empty: padding <= window / 2); PyTorch
            // starts from -inf with that same index, which picks the same element.
            let mut best_i = y0 * g.w + x0;
            let mut best = x[best_i];
            for iy in y0..y1 {
                for ix in x0..x1 {
                    let i = iy * g.w + ix;
                    let v = x[i];
                    // `v != v` only for a NaN: like PyTorch, a NaN in the window wins. Selects instead of a
                    // branch: which element wins is data-dependent and a mispredicted branch per visit cost
                    // more than the whole comparison (max pool was 30% of the W2 step with the branch).
                    #[allow(clippy::eq_op)]
                    let take = v > best || v != v;
                    best = if take { v } else { best };
                    best_i = if take { i } else { best_i };
                }
            }
            o[oy * ow + ox] = best;
            am[oy * ow + ox] = best_i as u32;
        }
    }
}

/// `(out, x)` as f32 slices when `T` is f32 and the CPU can run [`avx2_2x2::plane`]; None otherwise.
#[allow(clippy::type_complexity)]
fn as_f32_plane<'a, T: Float>(o: &'a mut [T], x: &'a [T]) -> Option<(&'a mut [f32], &'a [f32])> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() || !avx2_2x2::available() {
        return None;
    }
    // SAFETY: T is f32 (checked above), so the slices keep their lengths, alignment and borrows.
    unsafe {
        Some((
            std::slice::from_raw_parts_mut(o.as_mut_ptr() as *mut f32, o.len()),
            std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()),
        ))
    }
}

/// Max pool backward (overwrites `dinp`): `dinp = 0`, then `dinp[plane, argmax[j]] += dout[j]` (windows may
/// overlap, so one input can receive several gradients).
///
/// dinp: [N, C, H, W], dout: [N, C, OH, OW], argmax: [N, C, OH, OW] as written by [`max_pool2d_forward`].
pub fn max_pool2d_backward<T: Float>(dinp: &mut [T], dout: &[T], argmax: &[u32], g: &Pool2dGeom) {
    let (oh, ow) = check_max_pool(dout.len(), argmax.len(), dinp.len(), g, "max_pool2d_backward");
    let (plane_in, plane_out) = (g.h * g.w, oh * ow);
    let work = dinp.len() + dout.len();
    if g.n * g.c > 1 && work >= PAR_MIN_ELEMS {
        let per_task = rows_per_task(plane_in + plane_out);
        dinp.par_chunks_mut(per_task * plane_in)
            .zip(dout.par_chunks(per_task * plane_out))
            .zip(argmax.par_chunks(per_task * plane_out))
            .for_each(|((dx, go), am)| max_unpool_planes(dx, go, am, plane_in, plane_out));
    } else {
        max_unpool_planes(dinp, dout, argmax, plane_in, plane_out);
    }
}

/// [`max_pool2d_backward`] on the calling thread only (see [`max_pool2d_forward_serial`]).
pub(crate) fn max_pool2d_backward_serial<T: Float>(dinp: &mut [T], dout: &[T], argmax: &[u32], g: &Pool2dGeom) {
    let (oh, ow) = check_max_pool(dout.len(), argmax.len(), dinp.len(), g, "max_pool2d_backward");
    max_unpool_planes(dinp, dout, argmax, g.h * g.w, oh * ow);
}

/// [`max_pool2d_backward_serial`] of the gradient behind a ReLU over the pool's output: `relu_out` is that
/// ReLU's output, and each `dout[j]` counts only where `relu_out[j] > 0`, as `relu_backward` masks it (so the
/// result is bitwise ReLU backward then pool backward).
pub(crate) fn max_pool2d_backward_relu_serial<T: Float>(
    dinp: &mut [T],
    dout: &[T],
    relu_out: &[T],
    argmax: &[u32],
    g: &Pool2dGeom,
) {
    let (oh, ow) = check_max_pool(dout.len(), argmax.len(), dinp.len(), g, "max_pool2d_backward");
    assert_eq!(relu_out.len(), dout.len(), "max_pool2d_backward: relu_out must be [N, C, OH, OW]");
    let (plane_in, plane_out) = (g.h * g.w, oh * ow);
    let planes = dinp.chunks_exact_mut(plane_in).zip(dout.chunks_exact(plane_out));
    for (((dx, go), y), am) in planes.zip(relu_out.chunks_exact(plane_out)).zip(argmax.chunks_exact(plane_out)) {
        dx.fill(T::ZERO);
        for ((&gv, &yv), &i) in go.iter().zip(y).zip(am) {
            dx[i as usize] += super::relu::backward_elem(gv, yv);
        }
    }
}

/// Scatters whole planes of output gradients back through their argmax: `dx` [planes, plane_in] is zeroed,
/// then `dx[am[j]] += go[j]` within each plane.
fn max_unpool_planes<T: Float>(dx: &mut [T], go: &[T], am: &[u32], plane_in: usize, plane_out: usize) {
    if plane_out == 0 {
        dx.fill(T::ZERO);
        return;
    }
    for ((dx, go), am) in dx.chunks_exact_mut(plane_in).zip(go.chunks_exact(plane_out)).zip(am.chunks_exact(plane_out))
    {
        dx.fill(T::ZERO);
        for (&gv, &i) in go.iter().zip(am) {
            dx[i as usize] += gv;
        }
    }
}

/// Divisor of an average-pool window with `count_include_pad=True` (PyTorch's default): the window clipped
/// to the *padded* input, padding cells included. In floor mode with padding <= window / 2 that is always
/// KH*KW, but computing it as PyTorch does keeps the two in step.
#[inline]
fn avg_divisor(start: isize, k: usize, size: usize, pad: usize) -> usize {
    let end = (start + k as isize).min((size + pad) as isize);
    (end - start) as usize
}

/// Average pool forward (overwrites `out`) with PyTorch's default `count_include_pad=True`: each output is
/// the sum of the window's input elements divided by the window size, padding cells counting as zeros.
///
/// out: [N, C, OH, OW], inp: [N, C, H, W]. Panics on an invalid geometry or wrong buffer lengths.
pub fn avg_pool2d_forward<T: Float>(out: &mut [T], inp: &[T], g: &Pool2dGeom) {
    let (oh, ow) = g.out_hw_or_panic();
    let (plane_in, plane_out) = (g.h * g.w, oh * ow);
    let planes = g.n * g.c;
    assert_eq!(out.len(), planes * plane_out, "avg_pool2d_forward: out must be [N, C, OH, OW]");
    assert_eq!(inp.len(), planes * plane_in, "avg_pool2d_forward: inp must be [N, C, H, W]");
    let ((sh, sw), (ph, pw)) = (g.stride, g.padding);
    for_planes(out, plane_out, inp, plane_in, out.len() * g.kh * g.kw, |o, x| {
        for oy in 0..oh {
            let (ys, y0, y1) = window(oy, sh, ph, g.kh, g.h);
            for ox in 0..ow {
                let (xs, x0, x1) = window(ox, sw, pw, g.kw, g.w);
                let mut s = T::ZERO;
                for iy in y0..y1 {
                    for &v in &x[iy * g.w + x0..iy * g.w + x1] {
                        s += v;
                    }
                }
                let count = avg_divisor(ys, g.kh, g.h, ph) * avg_divisor(xs, g.kw, g.w, pw);
                o[oy * ow + ox] = s / T::from_f64(count as f64);
            }
        }
    });
}

/// Average pool backward (overwrites `dinp`), `count_include_pad=True`: every input element of a window
/// receives `dout / (window size)`; padding cells absorb their share.
///
/// dinp: [N, C, H, W], dout: [N, C, OH, OW].
pub fn avg_pool2d_backward<T: Float>(dinp: &mut [T], dout: &[T], g: &Pool2dGeom) {
    let (oh, ow) = g.out_hw_or_panic();
    let (plane_in, plane_out) = (g.h * g.w, oh * ow);
    let planes = g.n * g.c;
    assert_eq!(dinp.len(), planes * plane_in, "avg_pool2d_backward: dinp must be [N, C, H, W]");
    assert_eq!(dout.len(), planes * plane_out, "avg_pool2d_backward: dout must be [N, C, OH, OW]");
    let ((sh, sw), (ph, pw)) = (g.stride, g.padding);
    for_planes(dinp, plane_in, dout, plane_out, dout.len() * g.kh * g.kw, |dx, go| {
        dx.fill(T::ZERO);
        for oy in 0..oh {
            let (ys, y0, y1) = window(oy, sh, ph, g.kh, g.h);
            for ox in 0..ow {
                let (xs, x0, x1) = window(ox, sw, pw, g.kw, g.w);
                let count = avg_divisor(ys, g.kh, g.h, ph) * avg_divisor(xs, g.kw, g.w, pw);
                let share = go[oy * ow + ox] / T::from_f64(count as f64);
                for iy in y0..y1 {
                    for d in &mut dx[iy * g.w + x0..iy * g.w + x1] {
                        *d += share;
                    }
                }
            }
        }
    });
}

/// Adaptive-pool bin `i` of `out` bins over `size` inputs, PyTorch's rule:
/// `[floor(i*size/out), ceil((i+1)*size/out))`. Bins cover the axis, may overlap, and are never empty.
#[inline]
fn adaptive_bin(i: usize, size: usize, out: usize) -> (usize, usize) {
    (i * size / out, ((i + 1) * size).div_ceil(out))
}

fn check_adaptive(what: &str, h: usize, w: usize, oh: usize, ow: usize) {
    assert!(h > 0 && w > 0, "{what}: input size must be positive (got {h}x{w})");
    assert!(oh > 0 && ow > 0, "{what}: output size must be positive (got {oh}x{ow})");
}

/// Adaptive average pool forward (overwrites `out`, PyTorch `AdaptiveAvgPool2d((OH, OW))`): output `(i, j)`
/// is the mean of the input bin rows `[floor(i*H/OH), ceil((i+1)*H/OH))` x columns (same rule with W, OW).
///
/// out: [N, C, OH, OW], inp: [N, C, H, W]. Panics on zero sizes or wrong buffer lengths.
#[allow(clippy::too_many_arguments)]
pub fn adaptive_avg_pool2d_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) {
    check_adaptive("adaptive_avg_pool2d_forward", h, w, oh, ow);
    assert_eq!(out.len(), n * c * oh * ow, "adaptive_avg_pool2d_forward: out must be [N, C, OH, OW]");
    assert_eq!(inp.len(), n * c * h * w, "adaptive_avg_pool2d_forward: inp must be [N, C, H, W]");
    // Each input element is visited about once per bin covering it: ~ the input size (more with overlaps).
    let work = inp.len() + out.len();
    for_planes(out, oh * ow, inp, h * w, work, |o, x| {
        for oy in 0..oh {
            let (y0, y1) = adaptive_bin(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_bin(ox, w, ow);
                let mut s = T::ZERO;
                for iy in y0..y1 {
                    for &v in &x[iy * w + x0..iy * w + x1] {
                        s += v;
                    }
                }
                o[oy * ow + ox] = s / T::from_f64(((y1 - y0) * (x1 - x0)) as f64);
            }
        }
    });
}

/// Adaptive average pool backward (overwrites `dinp`): every element of bin `(i, j)` receives
/// `dout[i, j] / (bin size)`; an element in several (overlapping) bins receives the sum.
///
/// dinp: [N, C, H, W], dout: [N, C, OH, OW].
#[allow(clippy::too_many_arguments)]
pub fn adaptive_avg_pool2d_backward<T: Float>(
    dinp: &mut [T],
    dout: &[T],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
) {
    check_adaptive("adaptive_avg_pool2d_backward", h, w, oh, ow);
    assert_eq!(dinp.len(), n * c * h * w, "adaptive_avg_pool2d_backward: dinp must be [N, C, H, W]");
    assert_eq!(dout.len(), n * c * oh * ow, "adaptive_avg_pool2d_backward: dout must be [N, C, OH, OW]");
    let work = dinp.len() + dout.len();
    for_planes(dinp, h * w, dout, oh * ow, work, |dx, go| {
        dx.fill(T::ZERO);
        for oy in 0..oh {
            let (y0, y1) = adaptive_bin(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_bin(ox, w, ow);
                let share = go[oy * ow + ox] / T::from_f64(((y1 - y0) * (x1 - x0)) as f64);
                for iy in y0..y1 {
                    for d in &mut dx[iy * w + x0..iy * w + x1] {
                        *d += share;
                    }
                }
            }
        }
    });
}

/// Global average pool forward (overwrites `out`): the mean of every plane, i.e. the adaptive pool to 1x1.
///
/// out: [N, C] (= [N, C, 1, 1]), inp: [N, C, H, W].
pub fn global_avg_pool_forward<T: Float>(out: &mut [T], inp: &[T], n: usize, c: usize, h: usize, w: usize) {
    adaptive_avg_pool2d_forward(out, inp, n, c, h, w, 1, 1);
}

/// Global average pool backward (overwrites `dinp`): every element of plane `(n, c)` receives
/// `dout[n, c] / (H*W)`.
///
/// dinp: [N, C, H, W], dout: [N, C].
pub fn global_avg_pool_backward<T: Float>(dinp: &mut [T], dout: &[T], n: usize, c: usize, h: usize, w: usize) {
    adaptive_avg_pool2d_backward(dinp, dout, n, c, h, w, 1, 1);
}

/// The CUDA kernels of the pools (`pool.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "pool",
    code: include_str!("pool.cu"),
    kernels: &[
        "max_pool_forward_f32",
        "max_pool_backward_f32",
        "max_pool_forward_f16",
        "max_pool_backward_f16",
        "max_pool_forward_bf16",
        "max_pool_backward_bf16",
        "avg_pool_forward_f32",
        "avg_pool_backward_f32",
        "adaptive_avg_pool_forward_f32",
        "adaptive_avg_pool_backward_f32",
        "avg_pool_forward_f16",
        "avg_pool_backward_f16",
        "adaptive_avg_pool_forward_f16",
        "adaptive_avg_pool_backward_f16",
        "avg_pool_forward_bf16",
        "avg_pool_backward_bf16",
        "adaptive_avg_pool_forward_bf16",
        "adaptive_avg_pool_backward_bf16",
    ],
};

/// Host side of `pool.cu`.
#[path = "pool_cuda.rs"]
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
        kh: usize,
        kw: usize,
        s: (usize, usize),
        p: (usize, usize),
    ) -> Pool2dGeom {
        Pool2dGeom { n, c, h, w, kh, kw, stride: s, padding: p }
    }

    /// Input positions `(iy, ix)` of window `(oy, ox)`, padding dropped: the definition, written naively.
    fn window_cells(g: &Pool2dGeom, oy: usize, ox: usize) -> Vec<(usize, usize)> {
        let mut cells = vec![];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let iy = (oy * g.stride.0 + ki) as isize - g.padding.0 as isize;
                let ix = (ox * g.stride.1 + kj) as isize - g.padding.1 as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                    cells.push((iy as usize, ix as usize));
                }
            }
        }
        cells
    }

    /// Naive f64 references: (max out, max argmax, max dinp, avg out, avg dinp) for upstream gradient dout.
    #[allow(clippy::type_complexity)]
    fn ref_pools(x: &[f64], dout: &[f64], g: &Pool2dGeom) -> (Vec<f64>, Vec<u32>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (oh, ow) = g.out_hw().unwrap();
        let (mut mo, mut ma, mut md) = (vec![], vec![], vec![0.0; x.len()]);
        let (mut ao, mut ad) = (vec![], vec![0.0; x.len()]);
        for pl in 0..g.n * g.c {
            let base = pl * g.h * g.w;
            for oy in 0..oh {
                for ox in 0..ow {
                    let j = (pl * oh + oy) * ow + ox;
                    let cells = window_cells(g, oy, ox);
                    let (mut best, mut bi) = (f64::NEG_INFINITY, 0);
                    for &(iy, ix) in &cells {
                        if x[base + iy * g.w + ix] > best {
                            best = x[base + iy * g.w + ix];
                            bi = iy * g.w + ix;
                        }
                    }
                    mo.push(best);
                    ma.push(bi as u32);
                    md[base + bi] += dout[j];
                    // count_include_pad: divide by the full window size.
                    let k = (g.kh * g.kw) as f64;
                    ao.push(cells.iter().map(|&(iy, ix)| x[base + iy * g.w + ix]).sum::<f64>() / k);
                    for &(iy, ix) in &cells {
                        ad[base + iy * g.w + ix] += dout[j] / k;
                    }
                }
            }
        }
        (mo, ma, md, ao, ad)
    }

    /// Naive f64 reference adaptive average pool: (out, dinp) for upstream gradient dout.
    #[allow(clippy::too_many_arguments)]
    fn ref_adaptive(
        x: &[f64],
        dout: &[f64],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut out, mut dx) = (vec![], vec![0.0; x.len()]);
        for pl in 0..n * c {
            for oy in 0..oh {
                let (y0, y1) = (
                    (oy as f64 * h as f64 / oh as f64).floor() as usize,
                    ((oy + 1) as f64 * h as f64 / oh as f64).ceil() as usize,
                );
                for ox in 0..ow {
                    let (x0, x1) = (
                        (ox as f64 * w as f64 / ow as f64).floor() as usize,
                        ((ox + 1) as f64 * w as f64 / ow as f64).ceil() as usize,
                    );
                    let cnt = ((y1 - y0) * (x1 - x0)) as f64;
                    let j = (pl * oh + oy) * ow + ox;
                    let mut s = 0.0;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            s += x[(pl * h + iy) * w + ix];
                            dx[(pl * h + iy) * w + ix] += dout[j] / cnt;
                        }
                    }
                    out.push(s / cnt);
                }
            }
        }
        (out, dx)
    }

    /// `n` distinct values in [-1, 1) at least `1/n` apart (a shuffled grid plus small noise), so a max pool's
    /// argmax survives finite-difference perturbations and f32 rounding.
    fn distinct(seed: u64, n: usize) -> Vec<f64> {
        let noise = uniform(seed, n, 0.0, 0.5);
        let keys = uniform(seed + 1, n, 0.0, 1.0);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| keys[a].partial_cmp(&keys[b]).unwrap());
        let mut v = vec![0.0; n];
        for (rank, &i) in order.iter().enumerate() {
            v[i] = -1.0 + 2.0 * (rank as f64 + 0.25 + noise[i]) / n as f64;
        }
        v
    }

    #[test]
    fn hand_checked_max_pool() {
        // 4x4 plane, 2x2 windows, stride 2.
        let x = [1.0f32, 5.0, 2.0, 0.0, 3.0, 4.0, 8.0, 7.0, -1.0, -2.0, 6.0, 6.0, -3.0, -4.0, 6.0, 9.0];
        let g = geom(1, 1, 4, 4, 2, 2, (2, 2), (0, 0));
        let (mut out, mut am) = ([0.0f32; 4], [0u32; 4]);
        max_pool2d_forward(&mut out, &mut am, &x, &g);
        assert_eq!(out, [5.0, 8.0, -1.0, 9.0]);
        assert_eq!(am, [1, 6, 8, 15]);
        let mut dx = [7.0f32; 16];
        max_pool2d_backward(&mut dx, &[1.0, 2.0, 3.0, 4.0], &am, &g);
        let mut want = [0.0f32; 16];
        (want[1], want[6], want[8], want[15]) = (1.0, 2.0, 3.0, 4.0);
        assert_eq!(dx, want);

        // Padding counts as -inf: an all-negative 2x2 plane with a 3x3 window, stride 1, padding 1 never
        // yields 0. Overlapping windows send several gradients to the same input.
        let x = [-4.0f32, -3.0, -2.0, -1.0];
        let g = geom(1, 1, 2, 2, 3, 3, (1, 1), (1, 1));
        let (mut out, mut am) = ([0.0f32; 4], [0u32; 4]);
        max_pool2d_forward(&mut out, &mut am, &x, &g);
        assert_eq!(out, [-1.0; 4]);
        assert_eq!(am, [3; 4]);
        let mut dx = [0.0f32; 4];
        max_pool2d_backward(&mut dx, &[1.0; 4], &am, &g);
        assert_eq!(dx, [0.0, 0.0, 0.0, 4.0]);

        // Ties go to the first maximum; a NaN wins.
        let g = geom(1, 1, 1, 4, 1, 2, (1, 2), (0, 0));
        let (mut out, mut am) = ([0.0f32; 2], [0u32; 2]);
        max_pool2d_forward(&mut out, &mut am, &[2.0, 2.0, 1.0, f32::NAN], &g);
        assert_eq!((out[0], am), (2.0, [0, 3]));
        assert!(out[1].is_nan());
    }

    #[test]
    fn hand_checked_avg_pools() {
        // 2x2 plane [1, 2; 3, 4], 2x2 window, stride 1, padding 1 (count_include_pad: always / 4).
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let g = geom(1, 1, 2, 2, 2, 2, (1, 1), (1, 1));
        assert_eq!(g.out_hw(), Ok((3, 3)));
        let mut out = [0.0f32; 9];
        avg_pool2d_forward(&mut out, &x, &g);
        assert_eq!(out, [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]);
        let mut dx = [9.0f32; 4];
        avg_pool2d_backward(&mut dx, &[1.0; 9], &g);
        // Every input lies in 4 windows.
        assert_eq!(dx, [1.0; 4]);

        // Adaptive 5x3 -> 3x2: row bins [0, 2), [1, 4), [3, 5); column bins [0, 2), [1, 3).
        let x: Vec<f64> = (0..15).map(|v| v as f64).collect();
        let mut out = [0.0f64; 6];
        adaptive_avg_pool2d_forward(&mut out, &x, 1, 1, 5, 3, 3, 2);
        // (0, 0): rows 0-1, cols 0-1 = {0, 1, 3, 4}; (1, 1): rows 1-3, cols 1-2 = {4, 5, 7, 8, 10, 11}.
        assert_eq!(out[0], 2.0);
        assert_eq!(out[3], 7.5);
        assert_eq!(out[5], 12.0);

        // Global average pool: the plane means; its gradient spreads evenly.
        let x = [1.0f32, 2.0, 3.0, 6.0, 10.0, 20.0, 30.0, 60.0];
        let mut out = [0.0f32; 2];
        global_avg_pool_forward(&mut out, &x, 1, 2, 2, 2);
        assert_eq!(out, [3.0, 30.0]);
        let mut dx = [9.0f32; 8];
        global_avg_pool_backward(&mut dx, &[4.0, -8.0], 1, 2, 2, 2);
        assert_eq!(dx, [1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0]);
    }

    #[test]
    fn pools_match_f64_reference() {
        let cases = [
            geom(2, 3, 7, 6, 2, 2, (2, 2), (0, 0)),
            geom(2, 2, 7, 7, 3, 3, (2, 2), (1, 1)),
            geom(1, 3, 6, 8, 3, 2, (1, 2), (1, 1)), // non-square window, overlapping rows
            geom(3, 1, 5, 9, 1, 4, (1, 3), (0, 2)),
            geom(1, 2, 4, 4, 4, 4, (1, 1), (2, 2)),
            // large enough for the rayon path: 8 * 32 * 14 * 14 * 4 > PAR_MIN_ELEMS
            geom(8, 32, 28, 28, 2, 2, (2, 2), (0, 0)),
        ];
        for (i, g) in cases.iter().enumerate() {
            let (oh, ow) = g.out_hw().unwrap();
            let nin = g.n * g.c * g.h * g.w;
            let nout = g.n * g.c * oh * ow;
            let x = round_f32(&distinct(10 + i as u64, nin));
            let dout = round_f32(&uniform(20 + i as u64, nout, -1.0, 1.0));
            let (mo, ma, md, ao, ad) = ref_pools(&x, &dout, g);
            let what = format!("{g:?}");

            let (mut out, mut am, mut dx) = (vec![0.0f64; nout], vec![0u32; nout], vec![f64::NAN; nin]);
            max_pool2d_forward(&mut out, &mut am, &x, g);
            assert_eq!(out, mo, "f64 max out {what}");
            assert_eq!(am, ma, "f64 argmax {what}");
            max_pool2d_backward(&mut dx, &dout, &am, g);
            assert_close(&format!("f64 max dinp {what}"), &dx, &md, 1e-12, 1e-12);
            avg_pool2d_forward(&mut out, &x, g);
            assert_close(&format!("f64 avg out {what}"), &out, &ao, 1e-12, 1e-12);
            avg_pool2d_backward(&mut dx, &dout, g);
            assert_close(&format!("f64 avg dinp {what}"), &dx, &ad, 1e-12, 1e-12);

            let (x32, dout32) = (to_f32(&x), to_f32(&dout));
            let (mut out, mut am, mut dx) = (vec![0.0f32; nout], vec![0u32; nout], vec![f32::NAN; nin]);
            max_pool2d_forward(&mut out, &mut am, &x32, g);
            assert_close(&format!("f32 max out {what}"), &out, &mo, 0.0, 0.0);
            assert_eq!(am, ma, "f32 argmax {what}");
            max_pool2d_backward(&mut dx, &dout32, &am, g);
            assert_close(&format!("f32 max dinp {what}"), &dx, &md, 1e-5, 1e-6);
            avg_pool2d_forward(&mut out, &x32, g);
            assert_close(&format!("f32 avg out {what}"), &out, &ao, 1e-5, 1e-6);
            avg_pool2d_backward(&mut dx, &dout32, g);
            assert_close(&format!("f32 avg dinp {what}"), &dx, &ad, 1e-5, 1e-6);
        }
    }

    /// ReLU'd inputs (runs of exact zeros) exercise the tie rule of the 2x2 / stride-2 fast path and of the
    /// unpadded row scan: ties go to the first maximum in row-major window order, as in the reference.
    #[test]
    fn max_pool_ties_pick_the_first_maximum() {
        for g in [geom(2, 3, 8, 6, 2, 2, (2, 2), (0, 0)), geom(1, 2, 7, 7, 3, 3, (2, 2), (0, 0))] {
            let (oh, ow) = g.out_hw().unwrap();
            let nin = g.n * g.c * g.h * g.w;
            let x: Vec<f64> = uniform(77, nin, -1.0, 1.0).into_iter().map(|v| round_f32(&[v])[0].max(0.0)).collect();
            let dout = vec![1.0; g.n * g.c * oh * ow];
            let (mo, ma, ..) = ref_pools(&x, &dout, &g);
            let xf: Vec<f32> = x.iter().map(|v| *v as f32).collect();
            let mut out = vec![0.0f32; mo.len()];
            let mut am = vec![0u32; mo.len()];
            max_pool2d_forward(&mut out, &mut am, &xf, &g);
            assert_eq!(am, ma, "{g:?}: argmax differs from the reference on ties");
            for (a, b) in out.iter().zip(&mo) {
                assert_eq!(*a as f64, *b);
            }
        }
    }

    /// A NaN in an unpadded plane (the fast row scan, which only reports it) sends that plane to the general
    /// path: the window holding it outputs NaN with its index, as PyTorch; the other windows and planes are
    /// unchanged from a NaN-free run.
    #[test]
    fn a_nan_wins_its_window_on_the_fast_path() {
        for g in [geom(2, 3, 8, 6, 2, 2, (2, 2), (0, 0)), geom(1, 2, 7, 7, 3, 3, (2, 2), (0, 0))] {
            let (oh, ow) = g.out_hw().unwrap();
            let x: Vec<f32> = uniform(5, g.n * g.c * g.h * g.w, -1.0, 1.0).into_iter().map(|v| v as f32).collect();
            let (mut clean, mut clean_am) = (vec![0.0f32; g.n * g.c * oh * ow], vec![0u32; g.n * g.c * oh * ow]);
            max_pool2d_forward(&mut clean, &mut clean_am, &x, &g);
            let (plane, at) = (1, g.w + 1); // input row 1, column 1 of plane 1: inside output window (0, 0)
            let mut xn = x.clone();
            xn[plane * g.h * g.w + at] = f32::NAN;
            let (mut out, mut am) = (vec![0.0f32; clean.len()], vec![0u32; clean.len()]);
            max_pool2d_forward(&mut out, &mut am, &xn, &g);
            let j = plane * oh * ow; // output (0, 0) of that plane
            assert!(out[j].is_nan() && am[j] == at as u32, "{g:?}: the NaN did not win its window");
            for k in (0..out.len()).filter(|&k| k != j) {
                assert_eq!((out[k].to_bits(), am[k]), (clean[k].to_bits(), clean_am[k]), "{g:?}: output {k} moved");
            }
        }
    }

    #[test]
    fn adaptive_pools_match_f64_reference() {
        // (n, c, h, w, oh, ow): shrinking, non-divisible (overlapping bins), identity, growing, global, and
        // one large enough for the rayon path.
        let cases = [
            (2, 3, 7, 6, 3, 2),
            (1, 2, 10, 7, 4, 3),
            (2, 1, 5, 5, 5, 5),
            (1, 2, 3, 2, 5, 4),
            (3, 4, 6, 5, 1, 1),
            (8, 64, 14, 14, 3, 3),
        ];
        for (i, &(n, c, h, w, oh, ow)) in cases.iter().enumerate() {
            let x = round_f32(&uniform(30 + i as u64, n * c * h * w, -1.0, 1.0));
            let dout = round_f32(&uniform(40 + i as u64, n * c * oh * ow, -1.0, 1.0));
            let (want, want_dx) = ref_adaptive(&x, &dout, n, c, h, w, oh, ow);
            let what = format!("{:?}", (n, c, h, w, oh, ow));

            let (mut out, mut dx) = (vec![0.0f64; want.len()], vec![f64::NAN; x.len()]);
            adaptive_avg_pool2d_forward(&mut out, &x, n, c, h, w, oh, ow);
            assert_close(&format!("f64 out {what}"), &out, &want, 1e-12, 1e-12);
            adaptive_avg_pool2d_backward(&mut dx, &dout, n, c, h, w, oh, ow);
            assert_close(&format!("f64 dinp {what}"), &dx, &want_dx, 1e-12, 1e-12);

            let (mut out, mut dx) = (vec![0.0f32; want.len()], vec![f32::NAN; x.len()]);
            adaptive_avg_pool2d_forward(&mut out, &to_f32(&x), n, c, h, w, oh, ow);
            assert_close(&format!("f32 out {what}"), &out, &want, 1e-5, 1e-6);
            adaptive_avg_pool2d_backward(&mut dx, &to_f32(&dout), n, c, h, w, oh, ow);
            assert_close(&format!("f32 dinp {what}"), &dx, &want_dx, 1e-5, 1e-6);

            if (oh, ow) == (1, 1) {
                let mut out2 = vec![0.0f32; n * c];
                global_avg_pool_forward(&mut out2, &to_f32(&x), n, c, h, w);
                assert_eq!(out2, out);
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Overlapping windows (stride < window), padding, a non-square window: 2 * 2 * 5 * 6 = 120 inputs.
        let g = geom(2, 2, 5, 6, 3, 2, (2, 1), (1, 1));
        let (oh, ow) = g.out_hw().unwrap();
        let nout = g.n * g.c * oh * ow;
        let dout = uniform(1, nout, -1.0, 1.0);

        // Distinct values 1e-3+ apart: a perturbation of 1e-6 never changes the argmax.
        let mut x = distinct(2, g.n * g.c * g.h * g.w);
        let (mut out, mut am, mut dx) = (vec![0.0; nout], vec![0u32; nout], vec![0.0; x.len()]);
        max_pool2d_forward(&mut out, &mut am, &x, &g);
        max_pool2d_backward(&mut dx, &dout, &am, &g);
        check_grad("max dinp", &mut x, &dx, |v| {
            let (mut o, mut a) = (vec![0.0; nout], vec![0u32; nout]);
            max_pool2d_forward(&mut o, &mut a, v, &g);
            dot(&dout, &o)
        });

        avg_pool2d_backward(&mut dx, &dout, &g);
        check_grad("avg dinp", &mut x, &dx, |v| {
            let mut o = vec![0.0; nout];
            avg_pool2d_forward(&mut o, v, &g);
            dot(&dout, &o)
        });

        let (n, c, h, w, oh, ow) = (2, 2, 7, 5, 3, 2);
        let mut x = uniform(3, n * c * h * w, -1.0, 1.0);
        let dout = uniform(4, n * c * oh * ow, -1.0, 1.0);
        let mut dx = vec![0.0; x.len()];
        adaptive_avg_pool2d_backward(&mut dx, &dout, n, c, h, w, oh, ow);
        check_grad("adaptive dinp", &mut x, &dx, |v| {
            let mut o = vec![0.0; dout.len()];
            adaptive_avg_pool2d_forward(&mut o, v, n, c, h, w, oh, ow);
            dot(&dout, &o)
        });

        let dout = uniform(5, n * c, -1.0, 1.0);
        global_avg_pool_backward(&mut dx, &dout, n, c, h, w);
        check_grad("global dinp", &mut x, &dx, |v| {
            let mut o = vec![0.0; n * c];
            global_avg_pool_forward(&mut o, v, n, c, h, w);
            dot(&dout, &o)
        });
    }

    #[test]
    fn geometry_errors() {
        let ok = geom(2, 3, 8, 8, 3, 3, (2, 2), (1, 1));
        assert_eq!(ok.out_hw(), Ok((4, 4)));
        // PyTorch's floor mode: (7 + 0 - 2) / 2 + 1 = 3.
        assert_eq!(geom(1, 1, 7, 7, 2, 2, (2, 2), (0, 0)).out_hw(), Ok((3, 3)));
        let bad = [
            Pool2dGeom { kh: 0, ..ok },
            Pool2dGeom { stride: (0, 1), ..ok },
            Pool2dGeom { w: 0, ..ok },
            Pool2dGeom { padding: (2, 1), ..ok }, // 2 > 3 / 2
            Pool2dGeom { kw: 2, padding: (1, 2), ..ok },
            Pool2dGeom { kh: 11, padding: (0, 0), ..ok }, // 11 > 8
            Pool2dGeom { h: 1 << 16, w: 1 << 16, ..ok },  // plane too large for u32 argmax
        ];
        for g in bad {
            assert!(g.out_hw().is_err(), "{g:?} should be rejected");
        }
    }

    #[test]
    #[should_panic(expected = "at most half the window")]
    fn kernels_panic_on_invalid_geometry() {
        let g = geom(1, 1, 4, 4, 2, 2, (1, 1), (2, 2));
        avg_pool2d_forward::<f32>(&mut [0.0; 49], &[0.0; 16], &g);
    }
}
