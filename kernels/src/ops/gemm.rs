//! The one place that calls the `gemm` crate: a bounds-checked, strided matrix product used by every op that
//! multiplies matrices (linear, conv2d, bmm, attention). Transposed operands are expressed with strides,
//! never materialised; `gemm` packs them anyway.

use std::any::TypeId;

use crate::Float;

/// Below this many multiply-adds (m*n*k) a product runs on the calling thread: splitting a small product
/// across rayon threads costs more in synchronisation than it saves.
pub const GEMM_PAR_MIN_FLOPS: usize = 256 * 256 * 128;

/// Memory extent (in elements) a `rows x cols` matrix with strides `rs`, `cs` touches.
pub(crate) fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// A `rows x cols` matrix view: its slice and its row / column strides in elements.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    /// Backing storage; element `(r, c)` is `data[r * rs + c * cs]`.
    pub data: &'a [T],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with `cols` columns (row stride `cols`, column stride 1).
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns, without copying.
    pub fn rows_t(data: &'a [T], cols: usize) -> Self {
        Mat { data, rs: 1, cs: cols }
    }
}

/// `dst[m, n] = scale * lhs[m, k] @ rhs[k, n]`, or `dst += scale * lhs @ rhs` when `accumulate`; `dst` is
/// given by its slice and strides `(dst_rs, dst_cs)`.
///
/// `may_parallelise` lets `gemm` split a large product (at least [`GEMM_PAR_MIN_FLOPS`] multiply-adds)
/// across rayon threads; callers that already run one product per rayon task pass `false`, which also makes
/// the result independent of the thread count. Bounds are checked here once so the `unsafe` call into
/// `gemm` is sound.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    scale: T,
    may_parallelise: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= extent(m, n, dst_rs, dst_cs), "gemm: dst too small");
    assert!(lhs.data.len() >= extent(m, k, lhs.rs, lhs.cs), "gemm: lhs too small");
    assert!(rhs.data.len() >= extent(k, n, rhs.rs, rhs.cs), "gemm: rhs too small");

    let is_native = TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>();
    if !is_native {
        // `gemm` panics on element types it does not know; `Float` is a public trait, so keep a correct
        // (slow) path for any other implementor.
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::ZERO;
                for p in 0..k {
                    acc += lhs.data[i * lhs.rs + p * lhs.cs] * rhs.data[p * rhs.rs + j * rhs.cs];
                }
                let d = &mut dst[i * dst_rs + j * dst_cs];
                *d = if accumulate { *d + scale * acc } else { scale * acc };
            }
        }
        return;
    }

    let threads = rayon::current_num_threads();
    let big = m.saturating_mul(n).saturating_mul(k) >= GEMM_PAR_MIN_FLOPS;
    let parallelism =
        if may_parallelise && big && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: T is f32 or f64 (checked above), the extents of all three matrices were checked against their
    // slices, dst is a unique borrow so it cannot alias lhs/rhs, and every stride is non-negative.
    // gemm computes dst = alpha*dst + beta*lhs@rhs and ignores dst entirely when read_dst is false.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Host side of the GPU matrix products (cuBLAS).
#[path = "gemm_cuda.rs"]
pub mod cuda;
