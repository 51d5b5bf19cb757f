//! The GPU twin of the strided gemm wrapper: row-major matrix products through cuBLAS (SGEMM), with
//! transposed operands and strided batches. Every GPU op that multiplies matrices (linear, conv2d, bmm,
//! attention) calls through here, so the row-major to column-major translation lives in one place.
//!
//! cuBLAS is column-major. A row-major `[r, c]` buffer read column-major is its transpose `[c, r]`, so the
//! row-major product `C[m, n] = op(A)[m, k] @ op(B)[k, n]` is issued as the column-major product
//! `C^T[n, m] = op(B)^T[n, k] @ op(A)^T[k, m]`: B goes first, A second, and each keeps its own transpose flag.
//!
//! Under autocast ([`MatmulPrecision`] F16 / Bf16, `run.amp` on a device) the spans of A and B are first
//! rounded into half-precision copies with the cast kernels (the same layout: row strides and batch strides
//! carry over) and the product runs as `cublasGemmStridedBatchedEx` with half inputs, f32 accumulation
//! (`CUBLAS_COMPUTE_32F`) and the f32 output, so the callers' buffers stay f32.

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::cublas::{result as blas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, SyncOnDrop};

use crate::cuda::gpu::MatmulState;
use crate::cuda::store::{as_f32, as_f32_mut, Store, StoreKind};
use crate::cuda::{Gpu, GpuError, MatmulPrecision};

/// Elements a batch of `batch` items of `item` elements each, `stride` apart, spans.
fn span(batch: usize, stride: usize, item: usize) -> usize {
    if batch == 0 || item == 0 {
        0
    } else {
        (batch - 1) * stride + item
    }
}

/// A size as cuBLAS's `int`, or a panic naming the operand (a product this large is a caller bug: buffers
/// would be over 8 GiB per matrix row-stride).
fn int(v: usize, what: &str) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| panic!("gemm: {what} = {v} does not fit cuBLAS's 32-bit int"))
}

/// `c[m, n] = alpha * op(a)[m, k] @ op(b)[k, n] + beta * c` for dense row-major matrices.
///
/// a: [M, K] (or [K, M] when `trans_a`), b: [K, N] (or [N, K] when `trans_b`), c: [M, N]. With `beta == 0`
/// `c` is not read (cuBLAS's contract), so it may hold garbage, NaN included. K = 0 gives `c = beta * c`.
/// Runs on the compute stream. Panics when a buffer is too small. Storage types as in [`gemm_general`].
#[allow(clippy::too_many_arguments)]
pub fn gemm<A: Store, B: Store, C: Store>(
    gpu: &Gpu,
    m: usize,
    n: usize,
    k: usize,
    a: &CudaView<A>,
    trans_a: bool,
    b: &CudaView<B>,
    trans_b: bool,
    c: &mut CudaViewMut<C>,
    alpha: f32,
    beta: f32,
) -> Result<(), GpuError> {
    gemm_strided_batched(gpu, 1, m, n, k, a, trans_a, 0, b, trans_b, 0, c, 0, alpha, beta)
}

/// `c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i]` for `i < batch`, item `i` of each operand starting at
/// `i * stride` elements (a stride of 0 reuses one matrix for every item, e.g. a shared weight).
///
/// Items as in [`gemm`]: a[i]: [M, K] (or [K, M] when `trans_a`), b[i]: [K, N] (or [N, K]), c[i]: [M, N];
/// every item is dense row-major. The output items must not overlap (`stride_c >= M*N` unless batch is 1).
/// Each operand may be stored in f32 or in the autocast half type ([`gemm_general`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided_batched<A: Store, B: Store, C: Store>(
    gpu: &Gpu,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &CudaView<A>,
    trans_a: bool,
    stride_a: usize,
    b: &CudaView<B>,
    trans_b: bool,
    stride_b: usize,
    c: &mut CudaViewMut<C>,
    stride_c: usize,
    alpha: f32,
    beta: f32,
) -> Result<(), GpuError> {
    let a = MatRef { data: a, trans: trans_a, ld: if trans_a { m } else { k }, stride: stride_a };
    let b = MatRef { data: b, trans: trans_b, ld: if trans_b { k } else { n }, stride: stride_b };
    gemm_general(gpu, batch, m, n, k, a, b, MatMut { data: c, ld: n, stride: stride_c }, alpha, beta)
}

/// A row-major input operand of [`gemm_general`]: its buffer, whether `op` transposes it, the row stride
/// of the stored matrix (`ld`, at least its column count) and the distance between batch items.
pub struct MatRef<'a, 'v, T = f32> {
    /// The buffer; item `i` starts at `i * stride`.
    pub data: &'a CudaView<'v, T>,
    /// Whether the stored matrix is the transpose of the operand.
    pub trans: bool,
    /// Row stride of the stored matrix in elements.
    pub ld: usize,
    /// Batch stride in elements (0: one matrix shared by every item).
    pub stride: usize,
}

/// The row-major output operand of [`gemm_general`]: buffer, row stride (at least N) and batch stride.
pub struct MatMut<'a, 'v, T = f32> {
    /// The buffer; item `i` starts at `i * stride`.
    pub data: &'a mut CudaViewMut<'v, T>,
    /// Row stride in elements.
    pub ld: usize,
    /// Batch stride in elements.
    pub stride: usize,
}

/// Elements a stored `rows x cols` matrix with row stride `ld` spans.
fn extent(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

/// The general strided-batched product `c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i]` with explicit
/// row strides, for operands that are row blocks of wider buffers (e.g. one head of a fused `[T, 3HD]`
/// projection: row stride 3HD, the heads D apart). Shapes as in [`gemm_strided_batched`]; panics when an
/// operand does not fit its buffer or a row stride is shorter than its row.
///
/// Storage: all-f32 operands run at the device's [`MatmulPrecision`]. Operands stored in half precision
/// (activations under autocast) take part as they are, so the product runs in their type: f32 operands
/// beside them (weights) are rounded into that type first, accumulation is f32, and C is written in its own
/// type (f32 or that half type). f16 and bf16 operands cannot meet in one product.
#[allow(clippy::too_many_arguments)]
pub fn gemm_general<A: Store, B: Store, C: Store>(
    gpu: &Gpu,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'_, '_, A>,
    b: MatRef<'_, '_, B>,
    c: MatMut<'_, '_, C>,
    alpha: f32,
    beta: f32,
) -> Result<(), GpuError> {
    if batch == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    let (ar, ac) = if a.trans { (k, m) } else { (m, k) };
    let (br, bc) = if b.trans { (n, k) } else { (k, n) };
    for (what, rows, cols, ld, stride, len) in [
        ("a", ar, ac, a.ld, a.stride, a.data.len()),
        ("b", br, bc, b.ld, b.stride, b.data.len()),
        ("c", m, n, c.ld, c.stride, c.data.len()),
    ] {
        assert!(ld >= cols, "gemm: {what}'s row stride {ld} is shorter than its {cols} columns");
        let need = span(batch, stride, extent(rows, cols, ld));
        assert!(len >= need, "gemm: {what} holds {len} elements, needs {need}");
    }
    // Output items must be disjoint: whole blocks of rows apart, or side by side within each row (heads
    // of a [T, H*D] buffer: stride D, row stride H*D).
    let disjoint = c.stride >= extent(m, n, c.ld) || (c.stride >= n && c.stride * (batch - 1) + n <= c.ld);
    assert!(batch == 1 || disjoint, "gemm: output items overlap (stride_c {}, ldc {})", c.stride, c.ld);
    if k == 0 && beta == 0.0 {
        // An empty reduction: c = 0. Zeroed here (row by row: c may be a row block of a wider buffer) rather
        // than trusting cuBLAS's handling of K = 0 with a C that may hold NaN (0 * NaN is NaN).
        for i in 0..batch {
            for r in 0..m {
                let o = i * c.stride + r * c.ld;
                gpu.stream().memset_zeros(&mut c.data.slice_mut(o..o + n))?;
            }
        }
        return Ok(());
    }
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    // cuBLAS sees each row-major buffer as its column-major transpose, with the row stride as the leading
    // dimension (at least 1, as cuBLAS requires even for an empty K).
    let gemm = GemmConfig {
        transa: op(b.trans),
        transb: op(a.trans),
        m: int(n, "N"),
        n: int(m, "M"),
        k: int(k, "K"),
        alpha,
        lda: int(b.ld.max(1), "ldb"),
        ldb: int(a.ld.max(1), "lda"),
        beta,
        ldc: int(c.ld.max(1), "ldc"),
    };
    let spans = (span(batch, a.stride, extent(ar, ac, a.ld)), span(batch, b.stride, extent(br, bc, b.ld)));
    // The half type of the half-stored operands (no allocation: this runs in every step).
    let mut stored = [A::KIND, B::KIND, C::KIND].into_iter().filter(|&s| s != StoreKind::F32);
    let first = stored.next();
    assert!(stored.all(|s| Some(s) == first), "gemm: f16 and bf16 operands in one product");
    let precision = match first {
        Some(StoreKind::F16) => MatmulPrecision::F16,
        Some(_) => MatmulPrecision::Bf16,
        None => gpu.matmul_precision(),
    };
    match precision {
        MatmulPrecision::F16 => return half_product::<half::f16, _, _, _>(gpu, batch, gemm, &a, &b, c, spans),
        MatmulPrecision::Bf16 => return half_product::<half::bf16, _, _, _>(gpu, batch, gemm, &a, &b, c, spans),
        _ => {}
    }
    // Every operand is f32 from here on.
    let f32_operands = (as_f32(a.data), as_f32(b.data), as_f32_mut(c.data));
    let (Some(av), Some(bv), Some(mut cv)) = f32_operands else { unreachable!("no half operand") };
    if precision == MatmulPrecision::Tf32 {
        let stream = gpu.stream();
        let ((pa, _ra), (pb, _rb)) = (av.device_ptr(stream), bv.device_ptr(stream));
        let (pc, _wc) = cv.device_ptr_mut(stream);
        let inputs = ((pa, a.stride), (pb, b.stride), cudaDataType_t::CUDA_R_32F);
        // SAFETY: the extents of all three operands were checked above against their views.
        return unsafe {
            gemm_ex(
                gpu,
                batch,
                &gemm,
                inputs,
                (pc, c.stride, cudaDataType_t::CUDA_R_32F),
                cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            )
        };
    }
    if batch == 1 {
        // SAFETY: the extents of all three operands were checked above against their views; cuBLAS runs on
        // the compute stream the views belong to.
        unsafe { gpu.blas().gemm(gemm, &bv, &av, &mut cv) }?;
    } else {
        let cfg = StridedBatchedConfig {
            gemm,
            batch_size: int(batch, "batch"),
            stride_a: b.stride as i64,
            stride_b: a.stride as i64,
            stride_c: c.stride as i64,
        };
        // SAFETY: as above, for every item of the batch.
        unsafe { gpu.blas().gemm_strided_batched(cfg, &bv, &av, &mut cv) }?;
    }
    Ok(())
}

/// A half-precision input type of the autocast products: its cast kernel and its pair of scratch copies in
/// [`MatmulState`].
trait HalfInput: Store {
    fn cast(gpu: &Gpu, out: &mut CudaViewMut<Self>, x: &CudaView<f32>) -> Result<(), GpuError>;
    fn scratch(state: &mut MatmulState) -> &mut [Option<CudaSlice<Self>>; 2];
}

impl HalfInput for half::f16 {
    fn cast(gpu: &Gpu, out: &mut CudaViewMut<Self>, x: &CudaView<f32>) -> Result<(), GpuError> {
        crate::ops::cast::cuda::f32_to_f16(gpu, out, x)
    }
    fn scratch(state: &mut MatmulState) -> &mut [Option<CudaSlice<Self>>; 2] {
        &mut state.f16
    }
}

impl HalfInput for half::bf16 {
    fn cast(gpu: &Gpu, out: &mut CudaViewMut<Self>, x: &CudaView<f32>) -> Result<(), GpuError> {
        crate::ops::cast::cuda::f32_to_bf16(gpu, out, x)
    }
    fn scratch(state: &mut MatmulState) -> &mut [Option<CudaSlice<Self>>; 2] {
        &mut state.bf16
    }
}

/// The device address of input operand `x` (spanning `need` elements) in the half type `H`: its own when it
/// is stored in `H`, else that of its span rounded into `slot` (grown to the largest operand seen, in the
/// first steps of a run, and reused afterwards). The guard keeps the operand's stream bookkeeping alive.
fn half_operand<'s, H: HalfInput, T: Store>(
    gpu: &'s Gpu,
    x: &'s CudaView<'_, T>,
    need: usize,
    slot: &'s mut Option<CudaSlice<H>>,
) -> Result<(u64, SyncOnDrop<'s>), GpuError> {
    let stream = gpu.stream();
    if T::KIND == H::KIND {
        let (p, guard) = x.device_ptr(stream);
        return Ok((p, guard));
    }
    let x = as_f32(x).expect("an operand not in the product's half type is f32");
    if slot.as_ref().is_none_or(|s| s.len() < need) {
        *slot = Some(stream.alloc_zeros::<H>(need.max(1))?);
    }
    let h = slot.as_mut().expect("allocated above");
    if need > 0 {
        H::cast(gpu, &mut h.slice_mut(..need), &x.slice(..need))?;
    }
    let (p, guard) = h.device_ptr(stream);
    Ok((p, guard))
}

/// The product with half inputs: A and B in `H` (an f32 operand's span, `spans` in elements, is rounded into
/// a scratch copy first, with the layout kept: row strides and batch strides carry over), f32 compute, C in
/// its own type. `cfg` is the column-major call [`gemm_general`] built (B first).
fn half_product<H: HalfInput, A: Store, B: Store, C: Store>(
    gpu: &Gpu,
    batch: usize,
    cfg: GemmConfig<f32>,
    a: &MatRef<'_, '_, A>,
    b: &MatRef<'_, '_, B>,
    c: MatMut<'_, '_, C>,
    (na, nb): (usize, usize),
) -> Result<(), GpuError> {
    assert!(
        C::KIND == StoreKind::F32 || C::KIND == H::KIND,
        "gemm: a {} output from {} inputs",
        C::KIND.name(),
        H::KIND.name()
    );
    let mut state = gpu.matmul_state();
    let [sa, sb] = H::scratch(&mut state);
    let (pa, _read_a) = half_operand::<H, A>(gpu, a.data, na, sa)?;
    let (pb, _read_b) = half_operand::<H, B>(gpu, b.data, nb, sb)?;
    let (pc, _write_c) = c.data.device_ptr_mut(gpu.stream());
    // SAFETY: the operands (or their half copies) hold their whole spans in their original layout (checked
    // against the views in gemm_general); c's extent was checked there too; cuBLAS runs on the compute
    // stream, after the casts.
    unsafe {
        gemm_ex(
            gpu,
            batch,
            &cfg,
            ((pa, a.stride), (pb, b.stride), H::CUDA_TYPE),
            (pc, c.stride, C::CUDA_TYPE),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
        )
    }
}

/// One `cublasGemmStridedBatchedEx` of the column-major call `cfg` ([`gemm_general`]'s: B first): the row-major
/// A and B at device addresses with their batch strides and element type, the output C with its stride and
/// element type, alpha and beta f32, and the compute type.
///
/// # Safety
/// The addresses must hold the operands' extents as `cfg` and the strides describe them.
unsafe fn gemm_ex(
    gpu: &Gpu,
    batch: usize,
    cfg: &GemmConfig<f32>,
    ((pa, sa), (pb, sb), input): ((u64, usize), (u64, usize), cudaDataType_t),
    (pc, sc, output): (u64, usize, cudaDataType_t),
    compute: cublasComputeType_t,
) -> Result<(), GpuError> {
    // SAFETY: the caller vouches for the operands; cuBLAS runs on the compute stream.
    unsafe {
        blas::gemm_strided_batched_ex(
            *gpu.blas().handle(),
            cfg.transa,
            cfg.transb,
            cfg.m,
            cfg.n,
            cfg.k,
            (&cfg.alpha) as *const f32 as *const _,
            pb as *const _,
            input,
            cfg.lda,
            sb as i64,
            pa as *const _,
            input,
            cfg.ldb,
            sa as i64,
            (&cfg.beta) as *const f32 as *const _,
            pc as *mut _,
            output,
            cfg.ldc,
            sc as i64,
            int(batch, "batch"),
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::*;
    use crate::ops::cuda_test_util::*;
    use crate::ops::gemm::{gemm_strided, Mat};

    /// CPU reference through the CPU gemm wrapper, with the same transposes expressed as strides.
    #[allow(clippy::too_many_arguments)]
    fn cpu(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ta: bool,
        b: &[f32],
        tb: bool,
        c: &mut [f32],
        alpha: f32,
        acc: bool,
    ) {
        let am = if ta { Mat::rows_t(a, m) } else { Mat::rows(a, k) };
        let bm = if tb { Mat::rows_t(b, k) } else { Mat::rows(b, n) };
        gemm_strided(m, n, k, c, n, 1, acc, am, bm, alpha, false);
    }

    /// Every transpose combination, overwrite and accumulate, odd sizes, a batch of 1 and of 3 (with a
    /// shared, stride-0 operand), against the CPU wrapper. Tolerance: both sides sum K products in f32 in
    /// different orders (and cuBLAS may use FMA), so the error grows like sqrt(K) * eps * sum|a_i b_i|;
    /// with |a|, |b| <= 1 and K <= 77 an absolute 1e-4 plus relative 1e-4 is ample and still catches any
    /// wrong element (those are off by O(1)).
    #[test]
    fn gemm_matches_cpu() {
        let Some(gpu) = gpu_or_skip("gemm_matches_cpu") else { return };
        let mut rng = seeded("gemm_matches_cpu");
        for &(m, n, k) in &[(1usize, 1usize, 1usize), (5, 7, 3), (33, 17, 77), (64, 1, 9), (2, 130, 0)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for batch in [1usize, 3] {
                    let share_b = batch > 1; // b is one matrix reused by every item (stride 0)
                    let a = rand_vec(&mut rng, batch * m * k, -1.0, 1.0);
                    let b = rand_vec(&mut rng, if share_b { k * n } else { batch * k * n }, -1.0, 1.0);
                    let c0 = rand_vec(&mut rng, batch * m * n, -1.0, 1.0);
                    for acc in [false, true] {
                        let alpha = 0.75f32;
                        let mut want = c0.clone();
                        for i in 0..batch {
                            let bi = if share_b { &b[..] } else { &b[i * k * n..(i + 1) * k * n] };
                            cpu(
                                m,
                                n,
                                k,
                                &a[i * m * k..(i + 1) * m * k],
                                ta,
                                bi,
                                tb,
                                &mut want[i * m * n..(i + 1) * m * n],
                                alpha,
                                acc,
                            );
                        }
                        let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
                        let mut dc = if acc { gpu.upload(&c0).unwrap() } else { poisoned(gpu, c0.len()).unwrap() };
                        let sb = if share_b { 0 } else { k * n };
                        let beta = if acc { 1.0 } else { 0.0 };
                        if batch == 1 {
                            gemm(
                                gpu,
                                m,
                                n,
                                k,
                                &da.as_view(),
                                ta,
                                &db.as_view(),
                                tb,
                                &mut dc.as_view_mut(),
                                alpha,
                                beta,
                            )
                            .unwrap();
                        } else {
                            gemm_strided_batched(
                                gpu,
                                batch,
                                m,
                                n,
                                k,
                                &da.as_view(),
                                ta,
                                m * k,
                                &db.as_view(),
                                tb,
                                sb,
                                &mut dc.as_view_mut(),
                                m * n,
                                alpha,
                                beta,
                            )
                            .unwrap();
                        }
                        let what = format!("gemm m{m} n{n} k{k} ta{ta} tb{tb} batch{batch} acc{acc}");
                        assert_close(&what, &gpu.download(&dc).unwrap(), &want, 1e-4, 1e-4);
                    }
                }
            }
        }
    }

    /// TF32 (`run.tf32`): products keep f32 storage but round their inputs to 10 mantissa bits inside the
    /// tensor cores. Against an exact f64 product every element is within the TF32 bound (each input off by at
    /// most 2^-10 relative whatever the rounding mode: 2^-9 * sum |a_p b_p|, plus f32 accumulation), and the
    /// result is not the f32 SGEMM's (so the TF32 path was taken: 64-term sums of 10-bit inputs differ from the
    /// f32 ones). Strided batch with a shared operand, both transposes. Its own device handle (per-device
    /// precision).
    #[test]
    fn tf32_products_round_inside_the_product() {
        if gpu_or_skip("tf32_products_round_inside_the_product").is_none() {
            return;
        }
        let gpu = &Gpu::open(0).unwrap();
        let mut rng = seeded("tf32_products_round_inside_the_product");
        let (batch, m, n, k) = (3usize, 33usize, 17usize, 64usize);
        for (ta, tb) in [(false, false), (true, true)] {
            let a = rand_vec(&mut rng, batch * m * k, -1.0, 1.0);
            let b = rand_vec(&mut rng, k * n, -1.0, 1.0);
            let at =
                |i: usize, r: usize, p: usize| if ta { a[i * m * k + p * m + r] } else { a[i * m * k + r * k + p] };
            let bt = |p: usize, c: usize| if tb { b[c * k + p] } else { b[p * n + c] };
            let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            let run = |precision| {
                gpu.set_matmul_precision(precision);
                let mut dc = poisoned(gpu, batch * m * n).unwrap();
                let (av, bv) = (da.as_view(), db.as_view());
                gemm_strided_batched(
                    gpu,
                    batch,
                    m,
                    n,
                    k,
                    &av,
                    ta,
                    m * k,
                    &bv,
                    tb,
                    0,
                    &mut dc.as_view_mut(),
                    m * n,
                    1.0,
                    0.0,
                )
                .unwrap();
                gpu.download(&dc).unwrap()
            };
            let (tf32, f32s) = (run(MatmulPrecision::Tf32), run(MatmulPrecision::F32));
            let (mut worst, mut apart) = (0f64, 0f64);
            for i in 0..batch {
                for r in 0..m {
                    for c in 0..n {
                        let exact: f64 = (0..k).map(|p| f64::from(at(i, r, p)) * f64::from(bt(p, c))).sum();
                        let size: f64 = (0..k).map(|p| f64::from(at(i, r, p) * bt(p, c)).abs()).sum();
                        let bound = 2f64.powi(-9) * size + 1e-5;
                        let o = i * m * n + r * n + c;
                        let err = (f64::from(tf32[o]) - exact).abs();
                        assert!(
                            err <= bound,
                            "tf32 {ta}/{tb} element {o}: {} vs exact {exact} (bound {bound})",
                            tf32[o]
                        );
                        worst = worst.max(err);
                        apart = apart.max((tf32[o] - f32s[o]).abs() as f64);
                    }
                }
            }
            eprintln!("tf32 {ta}/{tb}: max |err| vs exact {worst:.2e}, max |tf32 - f32| {apart:.2e}");
            assert!(apart > 1e-5, "the TF32 products equal the f32 ones: the TF32 path was not taken");
        }
    }

    /// Autocast: with the device's products in f16 / bf16 every transpose combination, a strided batch with a
    /// shared operand, and accumulation match an f64 reference computed from the inputs rounded to that
    /// precision (with `half`), to f32-accumulation accuracy (|a|, |b| <= 1, K <= 77: 2e-5). The unrounded
    /// product is about 1e-3 away, so a product that skipped the rounding fails. Uses its own device handle:
    /// the precision is per device, and the other tests share one.
    #[test]
    fn autocast_products_round_their_inputs() {
        if gpu_or_skip("autocast_products_round_their_inputs").is_none() {
            return;
        }
        let gpu = &Gpu::open(0).unwrap();
        let mut rng = seeded("autocast_products_round_their_inputs");
        type Round = fn(f32) -> f64;
        let rounds: [(MatmulPrecision, Round); 2] = [
            (MatmulPrecision::F16, |x| f64::from(half::f16::from_f32(x).to_f32())),
            (MatmulPrecision::Bf16, |x| f64::from(half::bf16::from_f32(x).to_f32())),
        ];
        for (precision, round) in rounds {
            gpu.set_matmul_precision(precision);
            for &(m, n, k) in &[(1usize, 1usize, 1usize), (5, 7, 3), (33, 17, 77), (64, 2, 9)] {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let batch = 3;
                    let a = rand_vec(&mut rng, batch * m * k, -1.0, 1.0);
                    let b = rand_vec(&mut rng, k * n, -1.0, 1.0); // shared by every item (stride 0)
                    let c0 = rand_vec(&mut rng, batch * m * n, -1.0, 1.0);
                    for acc in [false, true] {
                        let alpha = 0.75f32;
                        let mut want = vec![0f32; batch * m * n];
                        for i in 0..batch {
                            for r in 0..m {
                                for c in 0..n {
                                    let mut sum = 0f64;
                                    for p in 0..k {
                                        let av = if ta { a[i * m * k + p * m + r] } else { a[i * m * k + r * k + p] };
                                        let bv = if tb { b[c * k + p] } else { b[p * n + c] };
                                        sum += round(av) * round(bv);
                                    }
                                    let o = i * m * n + r * n + c;
                                    let base = if acc { f64::from(c0[o]) } else { 0.0 };
                                    want[o] = (f64::from(alpha) * sum + base) as f32;
                                }
                            }
                        }
                        let (da, db) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
                        let mut dc = if acc { gpu.upload(&c0).unwrap() } else { poisoned(gpu, c0.len()).unwrap() };
                        let beta = if acc { 1.0 } else { 0.0 };
                        let (av, bv) = (da.as_view(), db.as_view());
                        gemm_strided_batched(
                            gpu,
                            batch,
                            m,
                            n,
                            k,
                            &av,
                            ta,
                            m * k,
                            &bv,
                            tb,
                            0,
                            &mut dc.as_view_mut(),
                            m * n,
                            alpha,
                            beta,
                        )
                        .unwrap();
                        let what = format!("{precision:?} gemm m{m} n{n} k{k} ta{ta} tb{tb} acc{acc}");
                        assert_close(&what, &gpu.download(&dc).unwrap(), &want, 2e-5, 2e-5);
                    }
                }
            }
        }
    }
}
