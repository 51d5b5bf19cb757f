//! Exact int8 matrix product with i32 accumulation: `C[m, n] = A[m, k] · B[n, k]^T`, where the rows of `B`
//! are weight rows (a linear weight `[out, in]`, or one group of a conv weight).
//!
//! AVX2 has no int8 dot product that is exact for signed × signed operands (`vpmaddubsw` takes one unsigned
//! operand and saturates its i16 pair sums: 255·127·2 > 32767), so both operands are widened to i16 and
//! multiplied with `vpmaddwd` (`_mm256_madd_epi16`), which sums pairs of i16 products into i32 lanes without
//! any saturation: one pair is at most 2·(−128)² = 32768.
//!
//! Layout (GotoBLAS style, outer-product microkernel):
//! - the weights are packed once ([`PackedI8Weights`]) into panels of [`NR`] = 16 rows of `B`, each panel
//!   stored as `[k/2][16][2]` i16: for every pair of reduction indices, the 16 columns' two values side by
//!   side, so one 256-bit load gives 8 columns' pairs;
//! - each block of up to [`MC`] rows of `A` is packed per [`KC`]-long slice of `k` into a stack buffer, in
//!   tiles of [`MR`] = 6 rows stored `[k/2][6][2]` i16, so a row's pair is one 32-bit broadcast;
//! - the microkernel keeps a 6 × 16 tile of `C` in 12 ymm accumulators: per pair of `k`, 2 loads of `B`,
//!   6 broadcasts of `A`, 12 `vpmaddwd` + 12 `vpaddd`.
//!
//! Odd `k`, ragged row tiles and ragged panels are padded with zeros in the packed buffers, which adds
//! nothing to the sums. Large products split their row blocks across rayon tasks; the result is exact, so
//! it never depends on the split. Without AVX2 a portable kernel runs on the same packed layouts.
//!
//! Exactness bound: `|C| <= k · 128²`, so the i32 accumulators cannot overflow for `k <=` [`MAX_K`].

use rayon::prelude::*;

use crate::ops::gemm::GEMM_PAR_MIN_FLOPS;
use crate::quant::qparams::{channel_scales, quantize_per_channel};

/// Rows of the microkernel's tile of `C` (rows of `A` per packed tile).
pub const MR: usize = 6;

/// Columns of the microkernel's tile of `C` (rows of `B` per packed panel): two ymm registers of i32.
pub const NR: usize = 16;

/// Reduction slice packed at a time (even, so slices start at a pair boundary). 256 keeps one panel slice
/// of `B` (256 · 16 · 2 bytes = 8 KiB) in L1 while every row tile of the block streams past it.
pub const KC: usize = 256;

/// Rows of `A` per block (a multiple of [`MR`]): one rayon task, one stack buffer of `MC · KC` i16 (36 KiB).
pub const MC: usize = 72;

/// Largest reduction length whose i32 sums are exact for any int8 operands: `k · 128² <= i32::MAX`.
pub const MAX_K: usize = (i32::MAX as usize) / (128 * 128);

/// Weight matrix `B[n, k]` (int8) packed for [`gemm_i8_packed`], with its per-row (per output channel)
/// scales. Built once per layer; inference reuses it every batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedI8Weights {
    n: usize,
    k: usize,
    /// `ceil(k / 2)`: reduction pairs per panel.
    kpairs: usize,
    /// `[ceil(n / NR)][kpairs][NR][2]` i16, zero-padded.
    data: Vec<i16>,
    /// `[n]` dequantization scale of each row (output channel).
    scales: Vec<f32>,
}

impl PackedI8Weights {
    /// Packs already-quantized weights `q: [n, k]` with their per-row scales `scales: [n]`.
    ///
    /// Panics if the lengths do not match `n`, `k` or if `k >` [`MAX_K`].
    pub fn from_i8(q: &[i8], scales: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(q.len(), n * k, "PackedI8Weights: q must be [n, k]");
        assert_eq!(scales.len(), n, "PackedI8Weights: scales must be [n]");
        assert!(k <= MAX_K, "PackedI8Weights: k = {k} exceeds {MAX_K}, beyond which i32 sums may overflow");
        let kpairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i16; panels * kpairs * NR * 2];
        for (j, row) in q.chunks_exact(k.max(1)).take(n).enumerate() {
            let base = (j / NR) * kpairs * NR * 2 + (j % NR) * 2;
            for (i, &v) in row.iter().enumerate().take(k) {
                data[base + (i / 2) * NR * 2 + (i % 2)] = v as i16;
            }
        }
        PackedI8Weights { n, k, kpairs, data, scales: scales.to_vec() }
    }

    /// Quantizes f32 weights `w: [n, k]` per row (`scale = max|row| / 127`, see
    /// [`crate::quant::qparams::channel_scales`]) and packs them.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "PackedI8Weights::quantize: w must be [n, k]");
        let mut scales = vec![0.0f32; n];
        channel_scales(&mut scales, w, k);
        let mut q = vec![0i8; n * k];
        quantize_per_channel(&mut q, w, &scales, k);
        Self::from_i8(&q, &scales, n, k)
    }

    /// Rows of `B` (output channels).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (input features).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Per-row dequantization scales, `[n]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The int8 weights unpacked back to `[n, k]` (for tests, export and inspection; allocates).
    pub fn to_i8(&self) -> Vec<i8> {
        let mut q = vec![0i8; self.n * self.k];
        for j in 0..self.n {
            let base = (j / NR) * self.kpairs * NR * 2 + (j % NR) * 2;
            for i in 0..self.k {
                q[j * self.k + i] = self.data[base + (i / 2) * NR * 2 + (i % 2)] as i8;
            }
        }
        q
    }

    /// Panel `p` from reduction pair `kp0` on.
    fn panel(&self, p: usize, kp0: usize) -> &[i16] {
        &self.data[(p * self.kpairs + kp0) * NR * 2..(p + 1) * self.kpairs * NR * 2]
    }
}

/// `C = A · B^T` exactly in i32, with `B` pre-packed (overwrites `c`).
///
/// c: [m, n], a: [m, k] (row-major int8), w: packed `[n, k]`. Runs on the calling thread below
/// [`GEMM_PAR_MIN_FLOPS`] multiply-adds, across rayon tasks of [`MC`] rows above. Panics on mismatched lengths.
pub fn gemm_i8_packed(c: &mut [i32], a: &[i8], w: &PackedI8Weights, m: usize) {
    let (n, k) = (w.n, w.k);
    assert_eq!(c.len(), m * n, "gemm_i8: c must be [m, n]");
    assert_eq!(a.len(), m * k, "gemm_i8: a must be [m, k]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0);
        return;
    }
    let avx2 = has_avx2();
    let run = |c: &mut [i32], a: &[i8]| {
        let rows = a.len() / k;
        if avx2 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 is available (checked by has_avx2).
            unsafe {
                block_avx2(c, a, w, rows)
            }
        } else {
            block_portable(c, a, w, rows)
        }
    };
    let parallel =
        m > MC && m.saturating_mul(n).saturating_mul(k) >= GEMM_PAR_MIN_FLOPS && rayon::current_num_threads() > 1;
    if parallel {
        c.par_chunks_mut(MC * n).zip(a.par_chunks(MC * k)).for_each(|(c, a)| run(c, a));
    } else {
        for (c, a) in c.chunks_mut(MC * n).zip(a.chunks(MC * k)) {
            run(c, a);
        }
    }
}

/// `C = A · B^T` with an unpacked `b: [n, k]`: packs `b` (allocating) and calls [`gemm_i8_packed`]. For
/// one-off products; layers pack their weights once with [`PackedI8Weights`].
pub fn gemm_i8(c: &mut [i32], a: &[i8], b: &[i8], m: usize, n: usize, k: usize) {
    let w = PackedI8Weights::from_i8(b, &vec![1.0; n], n, k);
    gemm_i8_packed(c, a, &w, m);
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Packs rows `[0, rows)` × reduction `[k0, k0 + kc)` of `a: [rows, k]` into `[tile][kc/2][MR][2]` i16
/// (zero rows below `rows`, a zero partner for an odd last index).
#[inline(always)]
fn pack_a(buf: &mut [i16], a: &[i8], k: usize, rows: usize, k0: usize, kc: usize) {
    let kpb = kc.div_ceil(2);
    let tile_len = kpb * MR * 2;
    for (t, tile) in buf.chunks_exact_mut(tile_len).take(rows.div_ceil(MR)).enumerate() {
        for r in 0..MR {
            let row = t * MR + r;
            if row >= rows {
                for kp in 0..kpb {
                    tile[kp * MR * 2 + r * 2] = 0;
                    tile[kp * MR * 2 + r * 2 + 1] = 0;
                }
                continue;
            }
            let src = &a[row * k + k0..row * k + k0 + kc];
            let mut pairs = src.chunks_exact(2);
            for (kp, pr) in pairs.by_ref().enumerate() {
                tile[kp * MR * 2 + r * 2] = pr[0] as i16;
                tile[kp * MR * 2 + r * 2 + 1] = pr[1] as i16;
            }
            if let [last] = pairs.remainder() {
                tile[(kpb - 1) * MR * 2 + r * 2] = *last as i16;
                tile[(kpb - 1) * MR * 2 + r * 2 + 1] = 0;
            }
        }
    }
}

/// One block of at most [`MC`] rows: for each `KC` slice, pack `A`, then run the microkernel over every
/// panel × row tile (panel outer, so each panel slice stays in L1 while the tiles stream past).
#[inline(always)]
fn block_body<K>(c: &mut [i32], a: &[i8], w: &PackedI8Weights, rows: usize, kernel: K)
where
    K: Fn(usize, &[i16], &[i16], &mut [i32], usize, usize, usize, bool),
{
    let (n, k) = (w.n, w.k);
    let mut buf = [0i16; MC * KC];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let kpb = kc.div_ceil(2);
        pack_a(&mut buf, a, k, rows, k0, kc);
        for p in 0..n.div_ceil(NR) {
            let panel = w.panel(p, k0 / 2);
            let cols = NR.min(n - p * NR);
            for t in 0..rows.div_ceil(MR) {
                let tile = &buf[t * kpb * MR * 2..(t + 1) * kpb * MR * 2];
                let tile_rows = MR.min(rows - t * MR);
                let cblk = &mut c[t * MR * n + p * NR..];
                kernel(kpb, tile, panel, cblk, n, tile_rows, cols, k0 > 0);
            }
        }
        k0 += kc;
    }
}

fn block_portable(c: &mut [i32], a: &[i8], w: &PackedI8Weights, rows: usize) {
    block_body(c, a, w, rows, kernel_portable);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(c: &mut [i32], a: &[i8], w: &PackedI8Weights, rows: usize) {
    // SAFETY (of the kernel calls): this function only runs where AVX2 is available.
    block_body(c, a, w, rows, |kpb, at, bt, ct, ldc, r, cols, acc| unsafe {
        kernel_avx2(kpb, at, bt, ct, ldc, r, cols, acc)
    });
}

/// Writes (or adds, when `accumulate`) the `rows × cols` top-left part of a 6 × 16 tile into `c` (row
/// stride `ldc`).
#[inline(always)]
fn store_tile(tile: &[[i32; NR]; MR], c: &mut [i32], ldc: usize, rows: usize, cols: usize, accumulate: bool) {
    for (r, trow) in tile.iter().enumerate().take(rows) {
        let dst = &mut c[r * ldc..r * ldc + cols];
        if accumulate {
            for (d, &v) in dst.iter_mut().zip(trow) {
                *d += v;
            }
        } else {
            dst.copy_from_slice(&trow[..cols]);
        }
    }
}

/// Portable microkernel on the packed layouts: `tile(6 × 16) = Σ_kp a_pair · b_pair`.
#[allow(clippy::too_many_arguments)]
fn kernel_portable(
    kpb: usize,
    a: &[i16],
    b: &[i16],
    c: &mut [i32],
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut acc = [[0i32; NR]; MR];
    for kp in 0..kpb {
        let bp = &b[kp * NR * 2..(kp + 1) * NR * 2];
        let ap = &a[kp * MR * 2..(kp + 1) * MR * 2];
        for r in 0..MR {
            let (a0, a1) = (ap[2 * r] as i32, ap[2 * r + 1] as i32);
            for j in 0..NR {
                acc[r][j] += a0 * bp[2 * j] as i32 + a1 * bp[2 * j + 1] as i32;
            }
        }
    }
    store_tile(&acc, c, ldc, rows, cols, accumulate);
}

/// AVX2 microkernel (see the module doc).
///
/// # Safety
/// AVX2 must be available. `a` holds `kpb · MR · 2` values, `b` at least `kpb · NR · 2`, and `c` covers
/// `rows` rows of stride `ldc` with `cols` valid columns each (checked by the slice indexing in
/// [`store_tile`] and the assertions below).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx2(
    kpb: usize,
    a: &[i16],
    b: &[i16],
    c: &mut [i32],
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kpb * MR * 2 && b.len() >= kpb * NR * 2, "gemm_i8 kernel: packed operands too short");
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for kp in 0..kpb {
        // SAFETY: kp < kpb, so these reads stay inside the lengths asserted above.
        let (b0, b1) = unsafe {
            (
                _mm256_loadu_si256(bp.add(kp * NR * 2) as *const __m256i),
                _mm256_loadu_si256(bp.add(kp * NR * 2 + NR) as *const __m256i),
            )
        };
        let arow = unsafe { ap.add(kp * MR * 2) } as *const i32;
        for (r, acc) in acc.iter_mut().enumerate() {
            // The row's (a[2kp], a[2kp+1]) pair as one i32, broadcast to every lane.
            let av = _mm256_set1_epi32(unsafe { arow.add(r).read_unaligned() });
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(av, b0));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(av, b1));
        }
    }
    if cols == NR && rows == MR && c.len() >= (MR - 1) * ldc + NR {
        for (r, acc) in acc.iter().enumerate() {
            for (h, &v) in acc.iter().enumerate() {
                // SAFETY: row r, columns h*8..h*8+8 lie inside c (length checked just above).
                unsafe {
                    let p = c.as_mut_ptr().add(r * ldc + h * 8) as *mut __m256i;
                    let v = if accumulate { _mm256_add_epi32(_mm256_loadu_si256(p), v) } else { v };
                    _mm256_storeu_si256(p, v);
                }
            }
        }
    } else {
        let mut tile = [[0i32; NR]; MR];
        for (t, acc) in tile.iter_mut().zip(&acc) {
            // SAFETY: each tile row holds 16 i32 = two ymm.
            unsafe {
                _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, acc[0]);
                _mm256_storeu_si256(t.as_mut_ptr().add(8) as *mut __m256i, acc[1]);
            }
        }
        store_tile(&tile, c, ldc, rows, cols, accumulate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn reference(a: &[i8], b: &[i8], m: usize, n: usize, k: usize) -> Vec<i64> {
        let mut c = vec![0i64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] as i64 * b[j * k + p] as i64).sum();
            }
        }
        c
    }

    fn random_i8(len: usize, rng: &mut Rng) -> Vec<i8> {
        (0..len).map(|_| (rng.next_u64() % 256) as u8 as i8).collect()
    }

    fn check(m: usize, n: usize, k: usize, a: &[i8], b: &[i8]) {
        let want = reference(a, b, m, n, k);
        let w = PackedI8Weights::from_i8(b, &vec![1.0; n], n, k);
        assert_eq!(w.to_i8(), b, "pack / unpack roundtrip");
        let mut c = vec![i32::MIN; m * n];
        gemm_i8_packed(&mut c, a, &w, m);
        assert!(c.iter().zip(&want).all(|(&c, &w)| c as i64 == w), "gemm_i8 mismatch at {m}x{n}x{k}");
        // The portable kernel must agree too (on AVX2 machines it is otherwise never run).
        let mut cp = vec![i32::MIN; m * n];
        for (cb, ab) in cp.chunks_mut(MC * n).zip(a.chunks(MC * k.max(1))) {
            if let Some(rows) = ab.len().checked_div(k) {
                block_portable(cb, ab, &w, rows);
            }
        }
        if k > 0 {
            assert_eq!(cp, c, "portable kernel mismatch at {m}x{n}x{k}");
        }
    }

    #[test]
    fn matches_i64_reference_on_random_sizes() {
        let mut rng = Rng::new(7);
        let sizes = [
            (1, 1, 1),
            (5, 3, 7),
            (6, 16, 2),
            (7, 17, 33),
            (13, 31, 255),
            (72, 16, 256),
            (73, 40, 257),
            (150, 33, 513),
            (3, 70, 1000),
            (200, 48, 31),
        ];
        for &(m, n, k) in &sizes {
            let (a, b) = (random_i8(m * k, &mut rng), random_i8(n * k, &mut rng));
            check(m, n, k, &a, &b);
        }
        for _ in 0..20 {
            let (m, n, k) =
                (1 + rng.next_u64() as usize % 90, 1 + rng.next_u64() as usize % 50, 1 + rng.next_u64() as usize % 600);
            let (a, b) = (random_i8(m * k, &mut rng), random_i8(n * k, &mut rng));
            check(m, n, k, &a, &b);
        }
    }

    #[test]
    fn extreme_values_are_exact() {
        // -128 * -128 everywhere: every pair sum is 32768 (beyond i16) and C = k * 16384.
        for (m, n, k) in [(7, 19, 301), (12, 32, 4097)] {
            let (a, b) = (vec![-128i8; m * k], vec![-128i8; n * k]);
            check(m, n, k, &a, &b);
            let mixed: Vec<i8> = (0..m * k).map(|i| if i % 3 == 0 { 127 } else { -128 }).collect();
            check(m, n, k, &mixed, &b);
        }
        // The largest k the bound allows: every entry is exactly MAX_K * 16384 <= i32::MAX.
        let (m, n, k) = (2, 3, MAX_K);
        let (a, b) = (vec![-128i8; m * k], vec![-128i8; n * k]);
        let w = PackedI8Weights::from_i8(&b, &[1.0; 3], n, k);
        let mut c = vec![0i32; m * n];
        gemm_i8_packed(&mut c, &a, &w, m);
        assert!(c.iter().all(|&v| v as i64 == MAX_K as i64 * 16384));
    }

    #[test]
    fn large_product_takes_the_parallel_path() {
        let mut rng = Rng::new(11);
        let (m, n, k) = (300, 130, 300);
        let (a, b) = (random_i8(m * k, &mut rng), random_i8(n * k, &mut rng));
        assert!(m * n * k >= GEMM_PAR_MIN_FLOPS);
        check(m, n, k, &a, &b);
        let mut c = vec![0i32; m * n];
        gemm_i8(&mut c, &a, &b, m, n, k);
        assert!(c.iter().zip(reference(&a, &b, m, n, k)).all(|(&c, w)| c as i64 == w));
    }

    #[test]
    fn empty_shapes() {
        let w = PackedI8Weights::from_i8(&[], &[1.0; 3], 3, 0);
        let mut c = vec![5i32; 6];
        gemm_i8_packed(&mut c, &[], &w, 2);
        assert_eq!(c, vec![0; 6]);
        let w = PackedI8Weights::from_i8(&[], &[], 0, 4);
        gemm_i8_packed(&mut [], &[0i8; 8], &w, 2);
    }
}
