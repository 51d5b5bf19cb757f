//! Axis permutation of a row-major tensor (PyTorch `x.permute(perm).contiguous()`), its backward, and a
//! cache-blocked 2-D transpose.
//!
//! `out` has shape `[shape[perm[0]], shape[perm[1]], ...]` and `out[i_0, i_1, ...] = inp[j]` where input
//! axis `perm[a]` takes the index `i_a`. The kernel first simplifies the problem: size-1 axes are dropped
//! and neighbouring output axes that stay neighbours in the input are merged (so `[B, T, H, D] ->
//! [B, H, T, D]` becomes a copy of contiguous `D`-runs). What remains is one of: contiguous runs
//! (memcpy-like), a (batched) 2-D transpose (cache-blocked), or a general strided gather.

use rayon::prelude::*;

use super::par::{rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Largest rank [`permute`] accepts: the index bookkeeping lives in fixed arrays on the stack, so the
/// kernel never allocates.
pub const MAX_RANK: usize = 16;

/// Side of the square tiles the transposes copy: a 32 x 32 tile of f32 (4 KiB) plus its source rows stay
/// in L1, so both the strided reads and the writes hit cache lines that are already loaded.
const TILE: usize = 32;

/// Checks that `perm` is a permutation of `0..rank` (and that the rank is at most [`MAX_RANK`]).
pub fn validate_perm(perm: &[usize], rank: usize) -> Result<(), String> {
    if perm.len() != rank {
        return Err(format!("permutation {perm:?} has {} entries for a rank-{rank} tensor", perm.len()));
    }
    if rank > MAX_RANK {
        return Err(format!("rank {rank} exceeds the supported maximum {MAX_RANK}"));
    }
    let mut seen = [false; MAX_RANK];
    for &p in perm {
        if p >= rank {
            return Err(format!("permutation {perm:?}: axis {p} out of range for rank {rank}"));
        }
        if seen[p] {
            return Err(format!("permutation {perm:?}: axis {p} appears twice"));
        }
        seen[p] = true;
    }
    Ok(())
}

/// The inverse permutation: `inv[perm[a]] = a`, so permuting by `perm` then by `inv` is the identity
/// (for setup time: the backward of `permute(perm)` is `permute(inv)` on the permuted shape).
///
/// Panics if `perm` is not a permutation of `0..perm.len()`.
pub fn inverse_perm(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![usize::MAX; perm.len()];
    for (a, &p) in perm.iter().enumerate() {
        assert!(p < perm.len() && inv[p] == usize::MAX, "inverse_perm: {perm:?} is not a permutation");
        inv[p] = a;
    }
    inv
}

/// Shape of `permute(x, perm)` for `x` of shape `shape`: `[shape[perm[0]], shape[perm[1]], ...]`.
///
/// Panics if an entry of `perm` is out of range.
pub fn permuted_shape(shape: &[usize], perm: &[usize]) -> Vec<usize> {
    perm.iter().map(|&p| shape[p]).collect()
}

/// Row-major strides of `shape` (element units), into a stack array.
fn row_major_strides(shape: &[usize]) -> [usize; MAX_RANK] {
    let mut strides = [0usize; MAX_RANK];
    let mut s = 1;
    for a in (0..shape.len()).rev() {
        strides[a] = s;
        s *= shape[a];
    }
    strides
}

/// Checks the permutation and both buffer lengths against `shape`.
fn check(what: &str, out_len: usize, inp_len: usize, shape: &[usize], perm: &[usize]) -> Result<(), String> {
    validate_perm(perm, shape.len()).map_err(|e| format!("{what}: {e}"))?;
    let n: usize = shape.iter().product();
    if out_len != n || inp_len != n {
        return Err(format!(
            "{what}: shape {shape:?} holds {n} elements but the buffers hold {inp_len} (input) and {out_len} (output)"
        ));
    }
    Ok(())
}

/// Permutes the axes of `inp` (overwrites `out`).
///
/// inp: `shape` (row-major), out: `[shape[perm[0]], ..., shape[perm[rank-1]]]`. Errors (leaving `out`
/// untouched) when `perm` is not a permutation of `0..rank` or a buffer length does not match `shape`.
pub fn permute<T: Float>(out: &mut [T], inp: &[T], shape: &[usize], perm: &[usize]) -> Result<(), String> {
    check("permute", out.len(), inp.len(), shape, perm)?;
    let in_strides = row_major_strides(shape);
    let (mut dims, mut strides) = ([0usize; MAX_RANK], [0usize; MAX_RANK]);
    for (a, &p) in perm.iter().enumerate() {
        dims[a] = shape[p];
        strides[a] = in_strides[p];
    }
    strided_gather(out, inp, &dims[..perm.len()], &strides[..perm.len()]);
    Ok(())
}

/// Backward of [`permute`]: routes every gradient back to the element it was copied from, i.e. permutes
/// `dout` by the inverse permutation (overwrites `dinp`).
///
/// dout: `[shape[perm[0]], ...]` (the forward's output), dinp: `shape`; `shape` and `perm` are the
/// forward's. Errors like [`permute`].
pub fn permute_backward<T: Float>(dinp: &mut [T], dout: &[T], shape: &[usize], perm: &[usize]) -> Result<(), String> {
    check("permute_backward", dinp.len(), dout.len(), shape, perm)?;
    let (mut out_shape, mut strides) = ([0usize; MAX_RANK], [0usize; MAX_RANK]);
    for (a, &p) in perm.iter().enumerate() {
        out_shape[a] = shape[p];
    }
    let out_strides = row_major_strides(&out_shape[..perm.len()]);
    // Input axis perm[a] is output axis a: walking dinp in order, its axis perm[a] steps dout by the
    // stride of output axis a.
    for (a, &p) in perm.iter().enumerate() {
        strides[p] = out_strides[a];
    }
    strided_gather(dinp, dout, shape, &strides[..perm.len()]);
    Ok(())
}

/// 2-D transpose (overwrites `out`): `out[j, i] = inp[i, j]`.
///
/// inp: [M, N], out: [N, M].
pub fn transpose2d<T: Float>(out: &mut [T], inp: &[T], m: usize, n: usize) {
    assert_eq!(inp.len(), m * n, "transpose2d: inp must be [M, N]");
    assert_eq!(out.len(), m * n, "transpose2d: out must be [N, M]");
    if m == 0 || n == 0 {
        return;
    }
    if out.len() < PAR_MIN_ELEMS {
        transpose_rows(out, 0, inp, m, n);
    } else {
        // Tasks own bands of TILE-aligned output rows (input columns), so tiles never straddle two tasks.
        let rows = rows_per_task(m).next_multiple_of(TILE);
        out.par_chunks_mut(rows * m).enumerate().for_each(|(c, band)| transpose_rows(band, c * rows, inp, m, n));
    }
}

/// Output rows `[j0, j0 + band.len() / m)` of the transpose of `inp` [M, N], copied tile by tile.
fn transpose_rows<T: Float>(band: &mut [T], j0: usize, inp: &[T], m: usize, n: usize) {
    let j1 = j0 + band.len() / m;
    for jt in (j0..j1).step_by(TILE) {
        let jt1 = (jt + TILE).min(j1);
        for it in (0..m).step_by(TILE) {
            let it1 = (it + TILE).min(m);
            for j in jt..jt1 {
                let dst = &mut band[(j - j0) * m..(j - j0) * m + m];
                for i in it..it1 {
                    dst[i] = inp[i * n + j];
                }
            }
        }
    }
}

/// `out[idx] = inp[sum_a idx[a] * strides[a]]` for every multi-index `idx` over `dims`, `out` contiguous
/// row-major. `strides` must be those of some axis permutation of a row-major `inp` (so some non-trivial
/// axis has stride 1 and every source element is read once); lengths were checked by the caller.
fn strided_gather<T: Float>(out: &mut [T], inp: &[T], dims: &[usize], strides: &[usize]) {
    if out.is_empty() {
        return;
    }
    // Simplify: drop size-1 axes (their index is always 0), merge axis a into its predecessor when the
    // pair walks the source contiguously (predecessor stride = stride * dim).
    let (mut cd, mut cs, mut r) = ([0usize; MAX_RANK], [0usize; MAX_RANK], 0);
    for (&dim, &st) in dims.iter().zip(strides) {
        if dim == 1 {
            continue;
        }
        if r > 0 && cs[r - 1] == st * dim {
            cd[r - 1] *= dim;
            cs[r - 1] = st;
        } else {
            cd[r] = dim;
            cs[r] = st;
            r += 1;
        }
    }
    let (cd, cs) = (&cd[..r], &cs[..r]);
    match r {
        // Every axis merged or dropped: the permutation is the identity on the memory layout.
        0 | 1 if cs.first().is_none_or(|&s| s == 1) => copy(out, inp),
        // [d0, d1] gathering from a [d1, d0] source.
        2 if cs == [1, cd[0]] => transpose2d(out, inp, cd[1], cd[0]),
        // [B, d1, d2] gathering from a [B, d2, d1] source: a batch of transposes.
        3 if cs == [cd[1] * cd[2], 1, cd[1]] => {
            let item = cd[1] * cd[2];
            let body =
                |(bi, o): (usize, &mut [T])| transpose_rows(o, 0, &inp[bi * item..(bi + 1) * item], cd[2], cd[1]);
            if out.len() < PAR_MIN_ELEMS {
                out.chunks_mut(item).enumerate().for_each(body);
            } else {
                out.par_chunks_mut(item).enumerate().for_each(body);
            }
        }
        _ => {
            // Rows along the last remaining axis: contiguous runs when its stride is 1, strided otherwise.
            let row = cd[r - 1];
            if out.len() < PAR_MIN_ELEMS {
                gather_rows(out, 0, inp, cd, cs);
            } else {
                let rows = rows_per_task(row);
                out.par_chunks_mut(rows * row).enumerate().for_each(|(c, o)| gather_rows(o, c * rows, inp, cd, cs));
            }
        }
    }
}

/// Plain copy, split across threads when large.
fn copy<T: Float>(out: &mut [T], inp: &[T]) {
    if out.len() < PAR_MIN_ELEMS {
        out.copy_from_slice(inp);
    } else {
        out.par_chunks_mut(1 << 16).zip(inp.par_chunks(1 << 16)).for_each(|(o, i)| o.copy_from_slice(i));
    }
}

/// Rows `[first_row, first_row + out.len() / row)` of the gather, `row = dims[r - 1]`: the row index is
/// decoded once into a multi-index over the leading axes, then advanced like an odometer.
fn gather_rows<T: Float>(out: &mut [T], first_row: usize, inp: &[T], dims: &[usize], strides: &[usize]) {
    let r = dims.len();
    let (row, step) = (dims[r - 1], strides[r - 1]);
    let mut idx = [0usize; MAX_RANK];
    let mut base = 0;
    let mut rem = first_row;
    for a in (0..r - 1).rev() {
        idx[a] = rem % dims[a];
        rem /= dims[a];
        base += idx[a] * strides[a];
    }
    for o in out.chunks_exact_mut(row) {
        if step == 1 {
            o.copy_from_slice(&inp[base..base + row]);
        } else {
            for (j, x) in o.iter_mut().enumerate() {
                *x = inp[base + j * step];
            }
        }
        for a in (0..r - 1).rev() {
            idx[a] += 1;
            base += strides[a];
            if idx[a] < dims[a] {
                break;
            }
            base -= strides[a] * dims[a];
            idx[a] = 0;
        }
    }
}

/// The CUDA kernel of the permutations (`permute.cu`: a strided gather).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "permute",
    code: include_str!("permute.cu"),
    // Per (input, output) storage pair, in common.cuh's FOR_STORE_PAIRS order.
    kernels: &[
        "strided_gather_f32_f32",
        "strided_gather_f32_f16",
        "strided_gather_f16_f32",
        "strided_gather_f16_f16",
        "strided_gather_f32_bf16",
        "strided_gather_bf16_f32",
        "strided_gather_bf16_bf16",
    ],
};

/// Host side of `permute.cu`.
#[path = "permute_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Naive reference by index arithmetic: walk out in order, decode its multi-index over the permuted
    /// shape, and read the input element whose axis perm[a] has index idx[a].
    fn ref_permute(inp: &[f64], shape: &[usize], perm: &[usize]) -> Vec<f64> {
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let n: usize = shape.iter().product();
        let mut out = vec![0.0; n];
        for (o, x) in out.iter_mut().enumerate() {
            let mut rem = o;
            let mut in_idx = vec![0; shape.len()];
            for a in (0..perm.len()).rev() {
                in_idx[perm[a]] = rem % out_shape[a];
                rem /= out_shape[a];
            }
            let flat = in_idx.iter().zip(shape).fold(0, |acc, (&i, &s)| acc * s + i);
            *x = inp[flat];
        }
        out
    }

    fn all_perms(rank: usize) -> Vec<Vec<usize>> {
        if rank == 0 {
            return vec![vec![]];
        }
        let mut res = vec![];
        for p in all_perms(rank - 1) {
            for pos in 0..=p.len() {
                let mut q = p.clone();
                q.insert(pos, rank - 1);
                res.push(q);
            }
        }
        res
    }

    #[test]
    fn hand_checked_values() {
        // [[0, 1, 2], [3, 4, 5]]^T = [[0, 3], [1, 4], [2, 5]].
        let x = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mut y = [f32::NAN; 6];
        permute(&mut y, &x, &[2, 3], &[1, 0]).unwrap();
        assert_eq!(y, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let mut z = [f32::NAN; 6];
        transpose2d(&mut z, &x, 2, 3);
        assert_eq!(z, y);
        permute_backward(&mut z, &y, &[2, 3], &[1, 0]).unwrap();
        assert_eq!(z, x);
        // [2, 3, 4] -> perm [2, 0, 1] -> [4, 2, 3]: out[k, i, j] = inp[i, j, k] = 12 i + 4 j + k.
        let x: Vec<f64> = (0..24).map(|i| i as f64).collect();
        let mut y = vec![f64::NAN; 24];
        permute(&mut y, &x, &[2, 3, 4], &[2, 0, 1]).unwrap();
        assert_eq!(y[..7], [0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 1.0]);
        assert_eq!(y[(3 * 2 + 1) * 3 + 2], 12.0 + 8.0 + 3.0);
        assert_eq!(inverse_perm(&[2, 0, 1]), [1, 2, 0]);
        assert_eq!(permuted_shape(&[2, 3, 4], &[2, 0, 1]), [4, 2, 3]);
        // Rank 0 (a scalar) and the identity.
        let mut s = [0.0f32];
        permute(&mut s, &[7.0], &[], &[]).unwrap();
        assert_eq!(s, [7.0]);
        permute(&mut y, &x, &[2, 3, 4], &[0, 1, 2]).unwrap();
        assert_eq!(y, x);
    }

    #[test]
    fn invalid_arguments_are_errors() {
        let x = [0.0f64; 6];
        let mut y = [0.0f64; 6];
        assert!(permute(&mut y, &x, &[2, 3], &[0]).unwrap_err().contains("entries"));
        assert!(permute(&mut y, &x, &[2, 3], &[0, 0]).unwrap_err().contains("twice"));
        assert!(permute(&mut y, &x, &[2, 3], &[0, 2]).unwrap_err().contains("out of range"));
        assert!(permute(&mut y[..5], &x, &[2, 3], &[1, 0]).is_err());
        assert!(permute_backward(&mut y, &x[..4], &[2, 3], &[1, 0]).is_err());
        assert!(validate_perm(&[0; 17], 17).unwrap_err().contains("maximum"));
        assert!(validate_perm(&[3, 1, 0, 2], 4).is_ok());
    }

    #[test]
    #[should_panic(expected = "not a permutation")]
    fn inverse_of_a_non_permutation_panics() {
        inverse_perm(&[1, 1]);
    }

    fn check_shape(shape: &[usize], seed: u64) {
        let n: usize = shape.iter().product();
        let x = uniform(seed, n, -1.0, 1.0);
        let x32 = to_f32(&x);
        for perm in all_perms(shape.len()) {
            let want = ref_permute(&x, shape, &perm);
            let mut y = vec![f64::NAN; n];
            permute(&mut y, &x, shape, &perm).unwrap();
            assert_eq!(y, want, "permute {shape:?} by {perm:?}");
            let mut y32 = vec![f32::NAN; n];
            permute(&mut y32, &x32, shape, &perm).unwrap();
            assert!(y32.iter().zip(&want).all(|(&a, &b)| a == b as f32), "f32 permute {shape:?} by {perm:?}");
            // Backward: the inverse permutation brings the permuted values back to where they came from.
            let mut back = vec![f64::NAN; n];
            permute_backward(&mut back, &y, shape, &perm).unwrap();
            assert_eq!(back, x, "permute_backward {shape:?} by {perm:?}");
            let inv = inverse_perm(&perm);
            let mut back2 = vec![f64::NAN; n];
            permute(&mut back2, &y, &permuted_shape(shape, &perm), &inv).unwrap();
            assert_eq!(back2, x);
        }
    }

    #[test]
    fn matches_index_arithmetic_for_every_permutation() {
        check_shape(&[5], 1);
        check_shape(&[3, 4], 2);
        check_shape(&[2, 3, 4], 3);
        check_shape(&[2, 1, 3, 4], 4);
        check_shape(&[3, 2, 1, 5, 2], 5);
        check_shape(&[1, 1, 1], 6);
        check_shape(&[33, 35], 7);
        check_shape(&[2, 0, 3], 8);
    }

    #[test]
    fn matches_index_arithmetic_on_the_parallel_paths() {
        // Each permutation hits a different simplified case above PAR_MIN_ELEMS: contiguous runs ([1, 0, 2]),
        // a batched transpose ([0, 2, 1]), a plain transpose of merged axes ([2, 0, 1] -> [d2, d0*d1]),
        // and the general strided gather ([2, 1, 0], [1, 2, 0]).
        let shape = [6, 70, 330];
        let n: usize = shape.iter().product();
        assert!(n >= PAR_MIN_ELEMS);
        let x: Vec<f64> = (0..n).map(|i| i as f64).collect();
        for perm in [[1, 0, 2], [0, 2, 1], [2, 0, 1], [2, 1, 0], [1, 2, 0], [0, 1, 2]] {
            let want = ref_permute(&x, &shape, &perm);
            let mut y = vec![f64::NAN; n];
            permute(&mut y, &x, &shape, &perm).unwrap();
            assert!(y == want, "permute by {perm:?}");
            let mut back = vec![f64::NAN; n];
            permute_backward(&mut back, &y, &shape, &perm).unwrap();
            assert!(back == x, "permute_backward by {perm:?}");
        }
        let (m, nn) = (517, 300);
        let x: Vec<f32> = (0..m * nn).map(|i| i as f32).collect();
        let mut y = vec![f32::NAN; m * nn];
        transpose2d(&mut y, &x, m, nn);
        assert!((0..m).all(|i| (0..nn).all(|j| y[j * m + i] == x[i * nn + j])));
    }

    #[test]
    fn gradients_match_finite_differences() {
        let shape = [2, 3, 2];
        let perm = [2, 0, 1];
        let mut x = uniform(1, 12, -1.0, 1.0);
        let dout = uniform(2, 12, -1.0, 1.0);
        let mut dx = vec![f64::NAN; 12];
        permute_backward(&mut dx, &dout, &shape, &perm).unwrap();
        check_grad("permute dinp", &mut x, &dx, |x| {
            let mut y = vec![0.0; 12];
            permute(&mut y, x, &shape, &perm).unwrap();
            dot(&dout, &y)
        });
    }
}
