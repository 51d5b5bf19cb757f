//! The per-head products of attention for short sequences and small heads, without `gemm` calls.
//!
//! A ViT head is tiny (W3: 50 tokens x head size 32, so each product is 50 x 50 x 32 or 50 x 32 x 50, about
//! 80k multiply-adds). A `gemm` call at that size spends most of its time outside the multiply-adds: its
//! dispatch, packing and edge handling. One W3 layer makes 1,536 of them (256 (batch, head) pairs, 2 products
//! forward, 4 backward). Here every product is `C = alpha * A @ B`:
//! - B is packed into a zero-padded stack buffer of row width a multiple of [`LANES`];
//! - A is read in place with any row and column strides, one scalar per multiply-add row (a broadcast);
//! - C is accumulated in registers, [`MR`] rows by two [`LANES`]-wide vectors at a time, with fused
//!   multiply-adds over the whole inner dimension in order, then scaled once and stored.
//!
//! So every output is the same in-order fused multiply-add chain whatever the thread count (bit for bit a
//! plain `mul_add` loop, tested): results are bitwise reproducible.
//!
//! Scope: f32 on CPUs with AVX-512F (the kernel is written with its intrinsics), T (sequence) and D (head
//! size) up to [`SMALL_MAX`]. Everything else keeps the `gemm` path: longer sequences, where the per-call
//! cost is small next to the work, f64 (the reference precision), and CPUs without AVX-512.

use crate::Float;

/// Lanes of one accumulator vector: 16 f32 fill one AVX-512 register.
const LANES: usize = 16;
/// Output rows per register tile: 6 rows x 2 vectors = 12 accumulators (enough independent chains to keep
/// both FMA ports busy), with 2 loads of B and 6 broadcasts of A per step of the inner dimension.
const MR: usize = 6;
/// The longest sequence and the largest head size the small path takes. The packed operand (at most
/// `SMALL_MAX` rows of `SMALL_MAX` padded columns) lives on the stack: 16 KiB in f32.
pub(crate) const SMALL_MAX: usize = 64;
const PACK_LEN: usize = SMALL_MAX * SMALL_MAX;
/// Room for one `[T, T]` matrix of a head that [`fits`].
pub(crate) const SQUARE_LEN: usize = SMALL_MAX * SMALL_MAX;

/// Whether a head of `t` tokens and size `d` takes the small path: both at most [`SMALL_MAX`], and the
/// kernel is available for `T` on this CPU ([`kernel_available`]); everything else goes through `gemm`.
pub(crate) fn fits<T: Float>(t: usize, d: usize) -> bool {
    (1..=SMALL_MAX).contains(&t) && (1..=SMALL_MAX).contains(&d) && kernel_available::<T>()
}

/// `n` rounded up to a multiple of [`LANES`].
fn padded(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// The right-hand operand of a product, packed: `rows` rows of `width` contiguous elements (`width` a
/// multiple of [`LANES`]), zero beyond the real columns so the padded lanes add nothing.
pub(crate) struct Packed<T> {
    buf: [T; PACK_LEN],
    rows: usize,
    width: usize,
}

impl<T: Float> Packed<T> {
    /// An empty buffer (on the caller's stack).
    pub(crate) fn new() -> Self {
        Self { buf: [T::ZERO; PACK_LEN], rows: 0, width: 0 }
    }

    /// Packs the `rows x cols` matrix whose row `p` is `src[p * rs .. p * rs + cols]`.
    pub(crate) fn rows_of(&mut self, src: &[T], rs: usize, rows: usize, cols: usize) {
        let width = padded(cols);
        assert!(rows <= SMALL_MAX && width <= SMALL_MAX, "Packed::rows_of: {rows} x {cols} is over the small size");
        for (p, dst) in self.buf[..rows * width].chunks_exact_mut(width).enumerate() {
            dst[..cols].copy_from_slice(&src[p * rs..p * rs + cols]);
            dst[cols..].fill(T::ZERO);
        }
        (self.rows, self.width) = (rows, width);
    }

    /// Packs the transpose of the `cols x rows` matrix whose row `j` is `src[j * rs .. j * rs + rows]`: packed
    /// row `p`, column `j` is `src[j * rs + p]`.
    pub(crate) fn transpose_of(&mut self, src: &[T], rs: usize, rows: usize, cols: usize) {
        let width = padded(cols);
        assert!(
            rows <= SMALL_MAX && width <= SMALL_MAX,
            "Packed::transpose_of: {rows} x {cols} is over the small size"
        );
        (self.rows, self.width) = (rows, width);
        if rows == 0 {
            return;
        }
        if cols > 0 {
            assert!(src.len() >= (cols - 1) * rs + rows, "Packed::transpose_of: src is too short");
        }
        #[cfg(target_arch = "x86_64")]
        if let (Some(buf), Some(src)) = (as_f32_mut(&mut self.buf[..rows * width]), as_f32(src)) {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present; `src` holds every element read (checked above) and `buf` is
                // `rows x width` with `width` a multiple of 16.
                unsafe { avx512::transpose_pack(buf, width, src, rs, rows, cols) };
                return;
            }
        }
        self.buf[..rows * width].fill(T::ZERO);
        for j in 0..cols {
            let col = &src[j * rs..j * rs + rows];
            for (p, &v) in col.iter().enumerate() {
                self.buf[p * width + j] = v;
            }
        }
    }
}

impl<T> Packed<T> {
    /// The packed operand as a right-hand side.
    fn rhs(&self) -> Rhs<'_, T> {
        Rhs { data: &self.buf, rows: self.rows, width: self.width, rs: self.width }
    }
}

/// A right-hand side as the kernels read it: `rows` rows of `width` elements (a multiple of [`LANES`]), row
/// `p` at `data[p * rs..]`. A [`Packed`] buffer (`rs == width`), or a matrix read in place.
#[derive(Clone, Copy)]
struct Rhs<'a, T> {
    data: &'a [T],
    rows: usize,
    width: usize,
    rs: usize,
}

/// What one thread reuses from head to head on the small path: the packed operand and the score gradient
/// (`[T, T]`), 32 KiB in f32. Made once per rayon task ([`rayon::iter::ParallelIterator::for_each_init`])
/// rather than zeroed on the stack for every head: every element a kernel reads is written for that head
/// first (the packing writes each row's padding too; the backward writes the score-gradient rows it reads).
pub(crate) struct HeadScratch<T> {
    /// The right-hand operand of the product in progress.
    pub(crate) pk: Packed<T>,
    /// The score gradient of the head in progress.
    pub(crate) ds: [T; SQUARE_LEN],
}

impl<T: Float> HeadScratch<T> {
    /// A zeroed workspace.
    pub(crate) fn new() -> Self {
        Self { pk: Packed::new(), ds: [T::ZERO; SQUARE_LEN] }
    }
}

/// A strided read-only matrix: element (i, p) at `data[i * rs + p * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// The operands of a packed kernel as f32, after the checks every kernel's unsafe code relies on: C holds
/// `m` rows of `n <= b.width` at stride `rs_c`, A reaches its last element, B fits its buffer. `None` when
/// there is nothing to compute. Panics (naming `what`) when a check fails, or when `T` is not f32 or the CPU
/// has no AVX-512F (callers check [`fits`]).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn f32_operands<'a, T: Float>(
    what: &str,
    c: &'a mut [T],
    rs_c: usize,
    m: usize,
    n: usize,
    a: Strided<'a, T>,
    b: Rhs<'a, T>,
    alpha: T,
) -> Option<(&'a mut [f32], Strided<'a, f32>, &'a [f32], f32)> {
    assert!(n <= b.width, "{what}: {n} columns but B is {} wide", b.width);
    if m == 0 || n == 0 {
        return None;
    }
    assert!(c.len() >= (m - 1) * rs_c + n, "{what}: the output is too short");
    if b.rows > 0 {
        assert!(a.data.len() > (m - 1) * a.rs + (b.rows - 1) * a.cs, "{what}: A is too short");
    }
    assert!(b.width.is_multiple_of(LANES) && b.width <= SMALL_MAX && b.rows <= SMALL_MAX, "{what}: B's shape");
    assert!(b.rows == 0 || b.data.len() >= (b.rows - 1) * b.rs + b.width, "{what}: B is too short");
    let views = (as_f32_mut(c), as_f32(a.data), as_f32(b.data), as_f32(std::slice::from_ref(&alpha)));
    if let (true, (Some(c), Some(a_data), Some(b_data), Some(alpha))) = (kernel_available::<T>(), views) {
        return Some((c, Strided { data: a_data, rs: a.rs, cs: a.cs }, b_data, alpha[0]));
    }
    panic!("{what}: needs f32 and AVX-512F (callers check `fits`)");
}

/// `c[i * rs_c + j] = alpha * sum_p a(i, p) * b[p, j]` for `i < m`, `j < n` (overwritten), with the inner
/// dimension `b.rows` and `n <= b.width`: each output one in-order chain of fused multiply-adds, then scaled.
/// Only for `T = f32` on a CPU with AVX-512F (see [`fits`]); panics otherwise, and when A or C is too short.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) fn matmul_packed<T: Float>(
    c: &mut [T],
    rs_c: usize,
    m: usize,
    n: usize,
    a: Strided<'_, T>,
    b: &Packed<T>,
    alpha: T,
) {
    matmul_rhs("matmul_packed", c, rs_c, m, n, a, b.rhs(), alpha);
}

/// [`matmul_packed`] with B read in place: `k` rows of `n` elements at row stride `b_rs` (row `p` at
/// `b[p * b_rs..]`), for `n` a whole number of 16-lane vectors (up to [`SMALL_MAX`]): no padding is needed,
/// so there is nothing to pack. The same bits as packing B and calling [`matmul_packed`] (tested).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_in_place<T: Float>(
    c: &mut [T],
    rs_c: usize,
    m: usize,
    n: usize,
    a: Strided<'_, T>,
    b: &[T],
    b_rs: usize,
    k: usize,
    alpha: T,
) {
    matmul_rhs("matmul_in_place", c, rs_c, m, n, a, Rhs { data: b, rows: k, width: n, rs: b_rs }, alpha);
}

/// Whether [`matmul_in_place`] takes a right-hand side `n` wide.
pub(crate) fn reads_in_place(n: usize) -> bool {
    n > 0 && n <= SMALL_MAX && n.is_multiple_of(LANES)
}

/// [`matmul_packed`] over any [`Rhs`].
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
#[allow(clippy::too_many_arguments)]
fn matmul_rhs<T: Float>(
    what: &str,
    c: &mut [T],
    rs_c: usize,
    m: usize,
    n: usize,
    a: Strided<'_, T>,
    b: Rhs<'_, T>,
    alpha: T,
) {
    let Some((c, a, b_data, alpha)) = f32_operands(what, c, rs_c, m, n, a, b, alpha) else {
        return;
    };
    // SAFETY: f32_operands found AVX-512F and checked the extents of A, B and C.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx512::matmul(c, rs_c, m, n, a, b_data, b.width, b.rs, b.rows, alpha)
    };
}

/// The attention probabilities of `m` query rows in one pass: `att[i * rs_att + j] = softmax_j(alpha * (A @ B)[i,
/// j])` over the `n` keys (`n <= b.width`, every key visible). Each row's scores stay in registers from the
/// product through the max, the exponentials, the sum and the scaling, instead of being stored by
/// [`matmul_packed`] and read back by the softmax.
///
/// Bit for bit [`matmul_packed`] followed by `softmax::softmax_rows_in_place` (tested): the same fused
/// multiply-add chain per score, the same lanes and reduction tree for the max and the sum, the exponential's
/// vector twin (`float::exp16`). Only for `T = f32` on a CPU with AVX-512F (see [`fits`]); panics otherwise.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) fn scores_softmax_packed<T: Float>(
    att: &mut [T],
    rs_att: usize,
    m: usize,
    n: usize,
    a: Strided<'_, T>,
    b: &Packed<T>,
    alpha: T,
) {
    let Some((att, a, b_data, alpha)) = f32_operands("scores_softmax_packed", att, rs_att, m, n, a, b.rhs(), alpha)
    else {
        return;
    };
    // SAFETY: f32_operands found AVX-512F and checked the extents of A, B and att.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx512::scores_softmax(att, rs_att, m, n, a, b_data, b.width, b.rows, alpha)
    };
}

/// The score gradient of `m` query rows in one pass: `ds[i * rs_ds + j] = scale * p_ij * (dP_ij - sum_l p_il
/// dP_il)` with `dP = A @ B` over the `n` keys (`n <= b.width`, every key visible), `p` the probabilities
/// (row `i` at `p[i * rs_p..]`). Each row of `dP` stays in registers from the product through the dot
/// product with `p` and the update, instead of being stored by [`matmul_packed`] and read back by the softmax
/// backward.
///
/// Bit for bit [`matmul_packed`] (with `alpha` 1) followed by `softmax::softmax_rows_backward_in_place`
/// (tested): the same fused multiply-add chain per element of `dP`, the dot product's 16 lane sums (products
/// then adds), folded in lane order, then the tail elements in order, and the same update expression. Only for
/// `T = f32` on a CPU with AVX-512F (see [`fits`]); panics otherwise.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) fn softmax_backward_packed<T: Float>(
    ds: &mut [T],
    rs_ds: usize,
    m: usize,
    n: usize,
    a: Strided<'_, T>,
    b: &Packed<T>,
    p: &[T],
    rs_p: usize,
    scale: T,
) {
    if m > 0 && n > 0 {
        assert!(p.len() >= (m - 1) * rs_p + n, "softmax_backward_packed: the probabilities are too short");
    }
    let Some((ds, a, b_data, scale)) = f32_operands("softmax_backward_packed", ds, rs_ds, m, n, a, b.rhs(), scale)
    else {
        return;
    };
    let p = as_f32(p).expect("f32 (checked by f32_operands)");
    // SAFETY: f32_operands found AVX-512F and checked the extents of A, B and ds; p's extent is checked above.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx512::softmax_backward(ds, rs_ds, m, n, a, b_data, b.width, b.rows, p, rs_p, scale)
    };
}

/// `x` as `&[f32]` when `T` is `f32`.
fn as_f32<T: Float>(x: &[T]) -> Option<&[f32]> {
    // SAFETY: `T` is `f32` (same type, so same layout and validity).
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &*(x as *const [T] as *const [f32]) })
}

/// `x` as `&mut [f32]` when `T` is `f32`.
fn as_f32_mut<T: Float>(x: &mut [T]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: `T` is `f32`.
        Some(unsafe { &mut *(x as *mut [T] as *mut [f32]) })
    } else {
        None
    }
}

/// Whether this CPU runs the small kernels (AVX-512F), and `T` is what they are written for (f32).
pub(crate) fn kernel_available<T: Float>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Strided, LANES, MR};
    use std::arch::x86_64::*;

    /// The mask of the first `n` of 16 lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= LANES {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// What every register kernel reads: C (row stride `rs_c`) of which `n` columns are stored, A, and B
    /// (`k` rows of `width` elements, row `p` at `b + p * b_rs`).
    #[derive(Clone, Copy)]
    struct Operands<'a> {
        c: *mut f32,
        rs_c: usize,
        n: usize,
        a: Strided<'a, f32>,
        b: *const f32,
        width: usize,
        b_rs: usize,
        k: usize,
    }

    /// A register kernel that computes the `R` output rows from `i0`, for any tile height `R` from 1 to [`MR`].
    trait RowTile {
        /// # Safety
        /// AVX-512F; every A element `(i0 + r) * a.rs + p * a.cs` for `r < R`, `p < k` in range; B's `k` rows
        /// of `width` in range; C's rows `(i0 + r) * rs_c + n` (and the kernel's other rows) in range.
        unsafe fn rows<const R: usize>(&self, i0: usize);
    }

    /// Every row of an `m`-row output: tiles of [`MR`] rows, then the rows left as one tile of their own
    /// height (single-row tiles are one chain of multiply-adds per vector, bound by the latency: W3's 50 rows
    /// leave 2).
    ///
    /// # Safety
    /// As [`RowTile::rows`] for rows `0 .. m`.
    #[target_feature(enable = "avx512f")]
    unsafe fn each_row_tile(kernel: &impl RowTile, m: usize) {
        let full = m / MR * MR;
        for i0 in (0..full).step_by(MR) {
            kernel.rows::<MR>(i0);
        }
        match m - full {
            0 => {}
            1 => kernel.rows::<1>(full),
            2 => kernel.rows::<2>(full),
            3 => kernel.rows::<3>(full),
            4 => kernel.rows::<4>(full),
            _ => kernel.rows::<5>(full),
        }
    }

    /// The register tile of `A @ B` at rows `i0 .. i0 + R`, columns `j0 .. j0 + NC * 16`: per output, one
    /// in-order chain of fused multiply-adds over the `k` rows of B. Shared by every kernel below, so the plain
    /// product and the fused ones compute the same bits.
    ///
    /// # Safety
    /// As [`RowTile::rows`], with `j0 + NC * 16 <= width`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn products<const R: usize, const NC: usize>(o: &Operands<'_>, i0: usize, j0: usize) -> [[__m512; NC]; R] {
        let mut acc = [[_mm512_setzero_ps(); NC]; R];
        let a = o.a;
        let a0 = a.data.as_ptr().add(i0 * a.rs);
        let mut bp = o.b.add(j0);
        for p in 0..o.k {
            let mut bv = [_mm512_setzero_ps(); NC];
            for (cc, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(bp.add(cc * LANES));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a0.add(r * a.rs + p * a.cs));
                for (cc, s) in acc_r.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(av, bv[cc], *s);
                }
            }
            bp = bp.add(o.b_rs);
        }
        acc
    }

    /// `alpha * A @ B` ([`super::matmul_packed`]): each row tile over every column block.
    struct Product<'a> {
        o: Operands<'a>,
        alpha: f32,
    }

    impl Product<'_> {
        /// One register tile: rows `i0 .. i0 + R`, columns `j0 .. j0 + NC * 16`, of which the first `ncols`
        /// columns are stored.
        ///
        /// # Safety
        /// As [`RowTile::rows`], with `j0 + NC * 16 <= width` and `j0 + ncols <= n`.
        #[target_feature(enable = "avx512f")]
        unsafe fn tile<const R: usize, const NC: usize>(&self, i0: usize, j0: usize, ncols: usize) {
            let o = &self.o;
            let acc = products::<R, NC>(o, i0, j0);
            let al = _mm512_set1_ps(self.alpha);
            for (r, acc_r) in acc.iter().enumerate() {
                let row = o.c.add((i0 + r) * o.rs_c + j0);
                for (cc, s) in acc_r.iter().enumerate() {
                    let m = lanes(ncols.saturating_sub(cc * LANES));
                    _mm512_mask_storeu_ps(row.add(cc * LANES), m, _mm512_mul_ps(*s, al));
                }
            }
        }
    }

    impl RowTile for Product<'_> {
        #[target_feature(enable = "avx512f")]
        unsafe fn rows<const R: usize>(&self, i0: usize) {
            let (n, width) = (self.o.n, self.o.width);
            let mut j0 = 0;
            while j0 + 2 * LANES <= width {
                self.tile::<R, 2>(i0, j0, n.saturating_sub(j0).min(2 * LANES));
                j0 += 2 * LANES;
            }
            if j0 < width {
                self.tile::<R, 1>(i0, j0, n.saturating_sub(j0).min(LANES));
            }
        }
    }

    /// `buf[p * width + j] = src[j * rs + p]` for `p < rows`, `j < cols`, and 0 for `cols <= j < width`: the
    /// transposed packing, 16 x 16 blocks at a time through registers (the scalar loop was a strided gather
    /// and a scatter per element, after zeroing the whole buffer).
    ///
    /// # Safety
    /// AVX-512F; `buf.len() >= rows * width` with `width` a multiple of 16 and at least `cols`; when
    /// `cols > 0`, `src.len() >= (cols - 1) * rs + rows`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_pack(
        buf: &mut [f32],
        width: usize,
        src: &[f32],
        rs: usize,
        rows: usize,
        cols: usize,
    ) {
        let (sp, bp) = (src.as_ptr(), buf.as_mut_ptr());
        for j0 in (0..width).step_by(LANES) {
            for p0 in (0..rows).step_by(LANES) {
                let np = (rows - p0).min(LANES);
                let mut r = [_mm512_setzero_ps(); 16];
                for (l, v) in r.iter_mut().enumerate() {
                    if j0 + l < cols {
                        *v = _mm512_maskz_loadu_ps(lanes(np), sp.add((j0 + l) * rs + p0));
                    }
                }
                let t = crate::simd::transpose16(&r);
                for (q, v) in t.iter().take(np).enumerate() {
                    _mm512_storeu_ps(bp.add((p0 + q) * width + j0), *v);
                }
            }
        }
    }

    /// The lanes of `v` reduced by `f` in the order of `softmax`'s `tree_reduce`: lane l with lane l + 8, then
    /// l + 4, l + 2, l + 1 (so the same bits for a non-associative `f`).
    #[target_feature(enable = "avx512f")]
    fn tree(v: __m512, f: impl Fn(__m512, __m512) -> __m512) -> f32 {
        let v = f(v, _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v));
        let v = f(v, _mm512_shuffle_f32x4::<0b01_01_01_01>(v, v));
        let v = f(v, _mm512_shuffle_ps::<0b11_10_11_10>(v, v));
        let v = f(v, _mm512_shuffle_ps::<0b01_01_01_01>(v, v));
        _mm512_cvtss_f32(v)
    }

    /// The probabilities ([`super::scores_softmax_packed`]), a row's `NV * 16 >= n` scores in registers.
    struct Softmax<'a, const NV: usize> {
        o: Operands<'a>,
        alpha: f32,
    }

    impl<const NV: usize> RowTile for Softmax<'_, NV> {
        #[target_feature(enable = "avx512f")]
        unsafe fn rows<const R: usize>(&self, i0: usize) {
            let (o, n) = (&self.o, self.o.n);
            let acc = products::<R, NV>(o, i0, 0);
            let (al, neg_inf) = (_mm512_set1_ps(self.alpha), _mm512_set1_ps(f32::NEG_INFINITY));
            for (r, acc_r) in acc.iter().enumerate() {
                // The scores, -inf past the last key (softmax's padding).
                let mut x = [neg_inf; NV];
                for (cc, (xv, s)) in x.iter_mut().zip(acc_r).enumerate() {
                    *xv = _mm512_mask_blend_ps(lanes(n.saturating_sub(cc * LANES)), neg_inf, _mm512_mul_ps(*s, al));
                }
                let mut mx = neg_inf;
                for xv in &x {
                    mx = _mm512_max_ps(mx, *xv);
                }
                let m = _mm512_set1_ps(tree(mx, |a, b| _mm512_max_ps(a, b)));
                let mut sum = _mm512_setzero_ps();
                for (cc, xv) in x.iter_mut().enumerate() {
                    *xv = _mm512_maskz_mov_ps(
                        lanes(n.saturating_sub(cc * LANES)),
                        crate::float::exp16(_mm512_sub_ps(*xv, m)),
                    );
                    sum = _mm512_add_ps(sum, *xv);
                }
                let inv = _mm512_set1_ps(1.0 / tree(sum, |a, b| _mm512_add_ps(a, b)));
                let row = o.c.add((i0 + r) * o.rs_c);
                for (cc, xv) in x.iter().enumerate() {
                    let keep = lanes(n.saturating_sub(cc * LANES));
                    _mm512_mask_storeu_ps(row.add(cc * LANES), keep, _mm512_mul_ps(*xv, inv));
                }
            }
        }
    }

    /// The score gradient ([`super::softmax_backward_packed`]), a row's `NV * 16 >= n` elements of dP in
    /// registers; the probabilities' row `i` at `p + i * rs_p`.
    struct SoftmaxBackward<'a, const NV: usize> {
        o: Operands<'a>,
        p: *const f32,
        rs_p: usize,
        scale: f32,
    }

    impl<const NV: usize> RowTile for SoftmaxBackward<'_, NV> {
        #[target_feature(enable = "avx512f")]
        unsafe fn rows<const R: usize>(&self, i0: usize) {
            let (o, n) = (&self.o, self.o.n);
            let acc = products::<R, NV>(o, i0, 0);
            let full = n / LANES;
            for (r, dp) in acc.iter().enumerate() {
                let prow = self.p.add((i0 + r) * self.rs_p);
                let mut q = [_mm512_setzero_ps(); NV];
                for (cc, v) in q.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_ps(lanes(n.saturating_sub(cc * LANES)), prow.add(cc * LANES));
                }
                // The whole vectors' products summed lane-wise (products then adds, as the scalar loop), the
                // lanes folded in order, then the tail elements in order.
                let mut lane_sums = _mm512_setzero_ps();
                for cc in 0..full.min(NV) {
                    lane_sums = _mm512_add_ps(lane_sums, _mm512_mul_ps(q[cc], dp[cc]));
                }
                let mut l = [0.0f32; LANES];
                _mm512_storeu_ps(l.as_mut_ptr(), lane_sums);
                let mut dot = l.iter().fold(0.0f32, |s, &v| s + v);
                if full < NV {
                    let (mut pt, mut dt) = ([0.0f32; LANES], [0.0f32; LANES]);
                    _mm512_storeu_ps(pt.as_mut_ptr(), q[full]);
                    _mm512_storeu_ps(dt.as_mut_ptr(), dp[full]);
                    for j in 0..n - full * LANES {
                        dot += pt[j] * dt[j];
                    }
                }
                let (sc, dotv) = (_mm512_set1_ps(self.scale), _mm512_set1_ps(dot));
                let row = o.c.add((i0 + r) * o.rs_c);
                for cc in 0..NV {
                    let g = _mm512_mul_ps(_mm512_mul_ps(sc, q[cc]), _mm512_sub_ps(dp[cc], dotv));
                    _mm512_mask_storeu_ps(row.add(cc * LANES), lanes(n.saturating_sub(cc * LANES)), g);
                }
            }
        }
    }

    /// The kernels' operands from the checked slices.
    fn operands<'a>(
        c: &mut [f32],
        rs_c: usize,
        n: usize,
        a: Strided<'a, f32>,
        b: &[f32],
        (width, b_rs): (usize, usize),
        k: usize,
    ) -> Operands<'a> {
        Operands { c: c.as_mut_ptr(), rs_c, n, a, b: b.as_ptr(), width, b_rs, k }
    }

    /// `c = alpha * A @ B` over `m x n` (see [`super::matmul_packed`]), B `k x width` at row stride `b_rs`.
    ///
    /// # Safety
    /// AVX-512F; `c.len() >= (m - 1) * rs_c + n`; `a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs`;
    /// `b.len() >= (k - 1) * b_rs + width`, `width` a multiple of 16 and `n <= width`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn matmul(
        c: &mut [f32],
        rs_c: usize,
        m: usize,
        n: usize,
        a: Strided<'_, f32>,
        b: &[f32],
        width: usize,
        b_rs: usize,
        k: usize,
        alpha: f32,
    ) {
        each_row_tile(&Product { o: operands(c, rs_c, n, a, b, (width, b_rs), k), alpha }, m);
    }

    /// [`super::scores_softmax_packed`] for f32.
    ///
    /// # Safety
    /// As [`matmul`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn scores_softmax(
        c: &mut [f32],
        rs_c: usize,
        m: usize,
        n: usize,
        a: Strided<'_, f32>,
        b: &[f32],
        width: usize,
        k: usize,
        alpha: f32,
    ) {
        let o = operands(c, rs_c, n, a, b, (width, width), k);
        // Registers per row: n.div_ceil(16) score vectors (at most 4: `SMALL_MAX` keys).
        match n.div_ceil(LANES) {
            1 => each_row_tile(&Softmax::<1> { o, alpha }, m),
            2 => each_row_tile(&Softmax::<2> { o, alpha }, m),
            3 => each_row_tile(&Softmax::<3> { o, alpha }, m),
            _ => each_row_tile(&Softmax::<4> { o, alpha }, m),
        }
    }

    /// [`super::softmax_backward_packed`] for f32.
    ///
    /// # Safety
    /// As [`matmul`], and `p.len() >= (m - 1) * rs_p + n`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn softmax_backward(
        c: &mut [f32],
        rs_c: usize,
        m: usize,
        n: usize,
        a: Strided<'_, f32>,
        b: &[f32],
        width: usize,
        k: usize,
        p: &[f32],
        rs_p: usize,
        scale: f32,
    ) {
        let o = operands(c, rs_c, n, a, b, (width, width), k);
        let p = p.as_ptr();
        match n.div_ceil(LANES) {
            1 => each_row_tile(&SoftmaxBackward::<1> { o, p, rs_p, scale }, m),
            2 => each_row_tile(&SoftmaxBackward::<2> { o, p, rs_p, scale }, m),
            3 => each_row_tile(&SoftmaxBackward::<3> { o, p, rs_p, scale }, m),
            _ => each_row_tile(&SoftmaxBackward::<4> { o, p, rs_p, scale }, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// Runs `check(n, m, k, a, b)` over the shapes the fused kernels are checked on: every key count `n` from 1
    /// to 64 (one to four vectors, partial last vectors), row tails (`m`), depths `k`, with A strided and B
    /// packed transposed (as k^T and v^T are). Nothing when this CPU has no AVX-512F (it says so).
    fn each_fused_case(mut check: impl FnMut(usize, usize, usize, Strided<'_, f32>, &Packed<f32>)) {
        if !kernel_available::<f32>() {
            println!("SKIPPED: this CPU has no AVX-512F, so attention never takes the small path here");
            return;
        }
        for n in 1..=SMALL_MAX {
            for &(m, k) in &[(1usize, 32usize), (7, 5), (50, 32), (13, 64), (9, 3), (10, 16), (11, 8)] {
                let rs_a = k + 1;
                let a: Vec<f32> = values(m * rs_a, n as u64).iter().map(|&v| (4.0 * v) as f32).collect();
                let bt: Vec<f32> = values(n * k, 7 + n as u64).iter().map(|&v| (3.0 * v) as f32).collect();
                let mut pk = Packed::<f32>::new();
                pk.transpose_of(&bt, k, k, n);
                check(n, m, k, Strided { data: &a, rs: rs_a, cs: 1 }, &pk);
            }
        }
    }

    /// `got` and `want` bit for bit (NaN matching NaN: the columns past `n` are untouched in both).
    fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{what} at {i}: {g} vs {w}");
        }
    }

    /// The fused scores + softmax equals the product followed by the softmax bit for bit (`each_fused_case`),
    /// with scores large enough that the max matters.
    #[test]
    fn fused_scores_softmax_is_the_product_then_the_softmax() {
        each_fused_case(|n, m, k, a, pk| {
            let alpha = 1.0 / (k as f32).sqrt();
            let rs = n + 3;
            let mut want = vec![f32::NAN; m * rs];
            matmul_packed(&mut want, rs, m, n, a, pk, alpha);
            for row in want.chunks_mut(rs) {
                crate::ops::softmax::softmax_rows_in_place(&mut row[..n], n);
            }
            let mut got = vec![f32::NAN; m * rs];
            scores_softmax_packed(&mut got, rs, m, n, a, pk, alpha);
            assert_same_bits(&got, &want, &format!("{m}x{n}x{k}"));
        });
    }

    /// The fused score gradient equals the product followed by the softmax backward bit for bit
    /// (`each_fused_case`), with probabilities at a wider row stride, and gradients whose sign of zero and
    /// rounding depend on the order of the sums.
    #[test]
    fn fused_softmax_backward_is_the_product_then_the_softmax_backward() {
        each_fused_case(|n, m, k, a, pk| {
            // Probabilities: a softmax of random scores per row.
            let rs_p = n + 5;
            let mut p: Vec<f32> = values(m * rs_p, 11 + n as u64).iter().map(|&v| (5.0 * v) as f32).collect();
            for row in p.chunks_mut(rs_p) {
                crate::ops::softmax::softmax_rows_in_place(&mut row[..n], n);
            }
            let scale = 1.0 / (k as f32).sqrt();
            let rs = n + 3;
            let mut want = vec![f32::NAN; m * rs];
            matmul_packed(&mut want, rs, m, n, a, pk, 1.0);
            for (row, prow) in want.chunks_mut(rs).zip(p.chunks(rs_p)) {
                crate::ops::softmax::softmax_rows_backward_in_place(&mut row[..n], &prow[..n], n, scale);
            }
            let mut got = vec![f32::NAN; m * rs];
            softmax_backward_packed(&mut got, rs, m, n, a, pk, &p, rs_p, scale);
            assert_same_bits(&got, &want, &format!("{m}x{n}x{k}"));
        });
    }

    /// The register-transposed packing writes exactly the scalar loop's buffer (zero padding included), over
    /// block tails in both directions and a strided source.
    #[test]
    fn transposed_packing_matches_the_scalar_loop() {
        for &(rows, cols) in &[(1, 1), (3, 5), (16, 16), (17, 33), (32, 50), (50, 32), (64, 64), (7, 49)] {
            let rs = rows + 5;
            let src: Vec<f32> = values(cols * rs, 3).iter().map(|&v| v as f32).collect();
            let mut pk = Packed::<f32>::new();
            pk.buf.fill(f32::NAN);
            pk.transpose_of(&src, rs, rows, cols);
            let width = padded(cols);
            assert_eq!((pk.rows, pk.width), (rows, width));
            for p in 0..rows {
                for j in 0..width {
                    let want = if j < cols { src[j * rs + p] } else { 0.0 };
                    assert_eq!(pk.buf[p * width + j].to_bits(), want.to_bits(), "{rows} x {cols} at ({p}, {j})");
                }
            }
        }
    }

    /// Every shape class (row tails, one- and two-vector column blocks, partial stores, transposed and
    /// strided A, both packings) against a plain f64 triple loop, and bitwise against the same in-order
    /// `mul_add` chain written as a plain loop; C's elements past `n` must stay untouched.
    #[test]
    fn products_match_the_f64_reference_and_the_plain_fma_chain() {
        if !kernel_available::<f32>() {
            println!("SKIPPED: this CPU has no AVX-512F, so attention never takes the small path here");
            return;
        }
        assert!(!kernel_available::<f64>(), "the small kernels are f32 only");
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 17, 3),
            (50, 50, 32),
            (50, 32, 50),
            (64, 64, 64),
            (3, 33, 64),
            (13, 48, 7),
            (9, 20, 5),
            (11, 64, 9),
        ] {
            let (rs_a, rs_c) = (k + 3, n + 2);
            let a = values(m * rs_a, 1);
            let bsrc = values(k * n, 2);
            let alpha = 0.37;
            let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            let b32: Vec<f32> = bsrc.iter().map(|&v| v as f32).collect();
            // B^T as a [n][k] matrix, to pack back by transposing.
            let bt32: Vec<f32> = (0..n * k).map(|q| b32[(q % k) * n + q / k]).collect();
            for transposed_b in [false, true] {
                for at in [false, true] {
                    let (ar, ac) = if at { (1, m) } else { (rs_a, 1) };
                    let mut pk = Packed::<f32>::new();
                    if transposed_b {
                        pk.transpose_of(&bt32, k, k, n);
                    } else {
                        pk.rows_of(&b32, n, k, n);
                    }
                    let mut c = vec![f32::NAN; m * rs_c];
                    matmul_packed(&mut c, rs_c, m, n, Strided { data: &a32, rs: ar, cs: ac }, &pk, alpha as f32);
                    for i in 0..m {
                        for j in 0..rs_c {
                            let got = c[i * rs_c + j];
                            if j >= n {
                                assert!(got.is_nan(), "({m},{n},{k}): column {j} past n was written");
                                continue;
                            }
                            let av = |p: usize| if at { a[p * m + i] } else { a[i * rs_a + p] };
                            let want = (0..k).map(|p| av(p) * bsrc[p * n + j]).sum::<f64>() * alpha;
                            assert!(
                                (got as f64 - want).abs() <= 1e-6 * k as f64,
                                "({m},{n},{k}) at ({i},{j}): {got} vs {want}"
                            );
                            let chain =
                                (0..k).fold(0.0f32, |s, p| (av(p) as f32).mul_add(b32[p * n + j], s)) * alpha as f32;
                            assert_eq!(
                                got.to_bits(),
                                chain.to_bits(),
                                "({m},{n},{k}) at ({i},{j}): not the in-order chain"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A right-hand side read in place gives the packed product's bits, for every width it takes (one to four
    /// whole vectors), row strides wider than the rows, A read by rows and by columns, and row tails; other
    /// widths are refused by `reads_in_place`.
    #[test]
    fn in_place_right_hand_side_is_the_packed_product() {
        if !kernel_available::<f32>() {
            println!("SKIPPED: this CPU has no AVX-512F, so attention never takes the small path here");
            return;
        }
        assert!(!reads_in_place(0) && !reads_in_place(17) && !reads_in_place(50) && !reads_in_place(80));
        for n in [16, 32, 48, 64] {
            assert!(reads_in_place(n));
            for &(m, k, b_rs) in &[(50usize, 50usize, 384usize), (7, 3, 64), (13, 64, 70), (1, 1, 16)] {
                let b_rs = b_rs.max(n);
                let b: Vec<f32> = values((k - 1) * b_rs + n, 3 + n as u64).iter().map(|&v| v as f32).collect();
                let a: Vec<f32> = values(m * k + m + k, 4).iter().map(|&v| (2.0 * v) as f32).collect();
                for a_view in [Strided { data: &a, rs: k, cs: 1 }, Strided { data: &a, rs: 1, cs: m }] {
                    let rs_c = n + 5;
                    let mut pk = Packed::<f32>::new();
                    pk.rows_of(&b, b_rs, k, n);
                    let mut want = vec![f32::NAN; m * rs_c];
                    matmul_packed(&mut want, rs_c, m, n, a_view, &pk, 0.5);
                    let mut got = vec![f32::NAN; m * rs_c];
                    matmul_in_place(&mut got, rs_c, m, n, a_view, &b, b_rs, k, 0.5);
                    assert_same_bits(&got, &want, &format!("{m} x {n} x {k}, B row stride {b_rs}"));
                }
            }
        }
    }
}
