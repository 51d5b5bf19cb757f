//! Concatenation of row-major tensors along one axis (PyTorch `torch.cat(inputs, dim=axis)`) and its
//! backward, the split of the gradient back into the pieces.
//!
//! With `outer` = product of the dims before `axis` and `inner` = product of the dims after it, every
//! tensor is `outer` rows; input `i` contributes a contiguous run of `shape_i[axis] * inner` elements to each
//! output row, so both directions are sequences of `copy_from_slice` calls.

use rayon::prelude::*;

use super::par::{rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// `(outer, inner, sum of the axis sizes)` after checking that the shapes agree on every axis but `axis`.
fn layout(what: &str, shapes: &[&[usize]], axis: usize) -> Result<(usize, usize, usize), String> {
    let first = shapes.first().ok_or_else(|| format!("{what}: no tensors to concatenate"))?;
    let rank = first.len();
    if axis >= rank {
        return Err(format!("{what}: axis {axis} out of range for rank {rank}"));
    }
    let mut total = 0;
    for (i, s) in shapes.iter().enumerate() {
        if s.len() != rank {
            return Err(format!("{what}: tensor {i} has rank {} but tensor 0 has rank {rank}", s.len()));
        }
        if let Some(a) = (0..rank).find(|&a| a != axis && s[a] != first[a]) {
            return Err(format!(
                "{what}: tensor {i} has shape {s:?}, tensor 0 has {first:?}: they differ on axis {a} (only axis {axis} may)"
            ));
        }
        total += s[axis];
    }
    Ok((first[..axis].iter().product(), first[axis + 1..].iter().product(), total))
}

/// Shape of the concatenation (for setup time): the common shape with the axis sizes summed.
pub fn concat_shape(shapes: &[&[usize]], axis: usize) -> Result<Vec<usize>, String> {
    let (_, _, total) = layout("concat_shape", shapes, axis)?;
    let mut shape = shapes[0].to_vec();
    shape[axis] = total;
    Ok(shape)
}

/// Checks the number of buffers and each buffer's length against the shapes.
fn check_lens(what: &str, lens: impl ExactSizeIterator<Item = usize>, shapes: &[&[usize]]) -> Result<(), String> {
    if lens.len() != shapes.len() {
        return Err(format!("{what}: {} buffers for {} shapes", lens.len(), shapes.len()));
    }
    for (i, (len, s)) in lens.zip(shapes).enumerate() {
        let n: usize = s.iter().product();
        if len != n {
            return Err(format!("{what}: tensor {i} holds {len} elements but its shape {s:?} needs {n}"));
        }
    }
    Ok(())
}

/// Concatenates `inputs` along `axis` (overwrites `out`).
///
/// inputs[i]: `shapes[i]` (row-major; all of the same rank and equal on every axis but `axis`), out: the
/// common shape with `sum_i shapes[i][axis]` on `axis` (see [`concat_shape`]). Errors (leaving `out`
/// untouched) on empty input lists, mismatched shapes or buffer lengths, or an out-of-range axis.
pub fn concat_forward<T: Float>(
    out: &mut [T],
    inputs: &[&[T]],
    shapes: &[&[usize]],
    axis: usize,
) -> Result<(), String> {
    let (outer, inner, total) = layout("concat_forward", shapes, axis)?;
    check_lens("concat_forward", inputs.iter().map(|x| x.len()), shapes)?;
    let row = total * inner;
    if out.len() != outer * row {
        return Err(format!("concat_forward: out holds {} elements, the result needs {}", out.len(), outer * row));
    }
    if row == 0 {
        return Ok(());
    }
    // Fills output rows [first, first + rows.len() / row).
    let fill = |first: usize, rows: &mut [T]| {
        for (o, dst) in rows.chunks_exact_mut(row).enumerate() {
            let o = first + o;
            let mut off = 0;
            for (x, s) in inputs.iter().zip(shapes) {
                let blk = s[axis] * inner;
                dst[off..off + blk].copy_from_slice(&x[o * blk..(o + 1) * blk]);
                off += blk;
            }
        }
    };
    if out.len() < PAR_MIN_ELEMS {
        fill(0, out);
    } else {
        let per = rows_per_task(row);
        out.par_chunks_mut(per * row).enumerate().for_each(|(c, rows)| fill(c * per, rows));
    }
    Ok(())
}

/// Backward of [`concat_forward`]: splits `dout` along `axis` back into the inputs' gradients (overwrites
/// every `dinputs[i]`).
///
/// dout: the concatenated shape, dinputs[i]: `shapes[i]`. Errors like [`concat_forward`].
pub fn concat_backward<T: Float>(
    dinputs: &mut [&mut [T]],
    dout: &[T],
    shapes: &[&[usize]],
    axis: usize,
) -> Result<(), String> {
    let (outer, inner, total) = layout("concat_backward", shapes, axis)?;
    check_lens("concat_backward", dinputs.iter().map(|x| x.len()), shapes)?;
    let row = total * inner;
    if dout.len() != outer * row {
        return Err(format!("concat_backward: dout holds {} elements, the result has {}", dout.len(), outer * row));
    }
    let mut off = 0;
    for (dx, s) in dinputs.iter_mut().zip(shapes) {
        let blk = s[axis] * inner;
        if blk > 0 {
            // Rows [first, ..) of this input's gradient: its run in each row of dout.
            let split = |first: usize, rows: &mut [T]| {
                for (o, dst) in rows.chunks_exact_mut(blk).enumerate() {
                    let src = (first + o) * row + off;
                    dst.copy_from_slice(&dout[src..src + blk]);
                }
            };
            if dx.len() < PAR_MIN_ELEMS {
                split(0, dx);
            } else {
                let per = rows_per_task(blk);
                dx.par_chunks_mut(per * blk).enumerate().for_each(|(c, rows)| split(c * per, rows));
            }
        }
        off += blk;
    }
    Ok(())
}

/// The CUDA kernel of concatenation (`concat.cu`: a strided block copy).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "concat",
    code: include_str!("concat.cu"),
    // Per (input, output) storage pair, in common.cuh's FOR_STORE_PAIRS order.
    kernels: &[
        "strided_copy_f32_f32",
        "strided_copy_f32_f16",
        "strided_copy_f16_f32",
        "strided_copy_f16_f16",
        "strided_copy_f32_bf16",
        "strided_copy_bf16_f32",
        "strided_copy_bf16_bf16",
    ],
};

/// Host side of `concat.cu`.
#[path = "concat_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Naive reference by index arithmetic: for every output multi-index, find the input whose range on
    /// `axis` contains it and read that input at the shifted index.
    fn ref_concat(inputs: &[Vec<f64>], shapes: &[Vec<usize>], axis: usize) -> Vec<f64> {
        let mut out_shape = shapes[0].clone();
        out_shape[axis] = shapes.iter().map(|s| s[axis]).sum();
        let n: usize = out_shape.iter().product();
        let mut out = vec![0.0; n];
        for (o, y) in out.iter_mut().enumerate() {
            let mut idx = vec![0; out_shape.len()];
            let mut rem = o;
            for a in (0..out_shape.len()).rev() {
                idx[a] = rem % out_shape[a];
                rem /= out_shape[a];
            }
            let mut which = 0;
            while idx[axis] >= shapes[which][axis] {
                idx[axis] -= shapes[which][axis];
                which += 1;
            }
            let flat = idx.iter().zip(&shapes[which]).fold(0, |acc, (&i, &s)| acc * s + i);
            *y = inputs[which][flat];
        }
        out
    }

    #[test]
    fn hand_checked_values() {
        // [[1, 2], [3, 4]] and [[5, 6]] along axis 0; [[1, 2], [3, 4]] and [[7], [8]] along axis 1.
        let (a, b, c) = ([1.0f32, 2.0, 3.0, 4.0], [5.0f32, 6.0], [7.0f32, 8.0]);
        let mut out = [f32::NAN; 6];
        concat_forward(&mut out, &[&a, &b], &[&[2, 2], &[1, 2]], 0).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        concat_forward(&mut out, &[&a, &c], &[&[2, 2], &[2, 1]], 1).unwrap();
        assert_eq!(out, [1.0, 2.0, 7.0, 3.0, 4.0, 8.0]);
        assert_eq!(concat_shape(&[&[2, 2], &[2, 1]], 1).unwrap(), [2, 3]);

        let (mut da, mut dc) = ([f32::NAN; 4], [f32::NAN; 2]);
        concat_backward(&mut [&mut da, &mut dc], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[&[2, 2], &[2, 1]], 1).unwrap();
        assert_eq!(da, [1.0, 2.0, 4.0, 5.0]);
        assert_eq!(dc, [3.0, 6.0]);
    }

    #[test]
    fn invalid_arguments_are_errors() {
        let (a, b) = ([0.0f64; 4], [0.0f64; 2]);
        let mut out = [0.0f64; 6];
        assert!(concat_forward::<f64>(&mut out, &[], &[], 0).unwrap_err().contains("no tensors"));
        assert!(concat_forward(&mut out, &[&a, &b], &[&[2, 2], &[1, 2]], 2).unwrap_err().contains("axis 2"));
        assert!(concat_forward(&mut out, &[&a, &b], &[&[2, 2], &[2]], 0).unwrap_err().contains("rank"));
        assert!(concat_forward(&mut out, &[&a, &b], &[&[2, 2], &[2, 1]], 0).unwrap_err().contains("differ on axis 1"));
        assert!(concat_forward(&mut out, &[&a, &b], &[&[2, 2], &[1, 3]], 0).is_err());
        assert!(concat_forward(&mut out[..5], &[&a, &b], &[&[2, 2], &[1, 2]], 0).is_err());
        assert!(concat_forward(&mut out, &[&a], &[&[2, 2], &[1, 2]], 0).is_err());
        let mut da = [0.0f64; 3];
        assert!(concat_backward(&mut [&mut da], &out, &[&[2, 2]], 0).is_err());
    }

    fn check_case(shapes: &[Vec<usize>], axis: usize, seed: u64) {
        let inputs: Vec<Vec<f64>> =
            shapes.iter().enumerate().map(|(i, s)| uniform(seed + i as u64, s.iter().product(), -1.0, 1.0)).collect();
        let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
        let want = ref_concat(&inputs, shapes, axis);

        let mut out = vec![f64::NAN; want.len()];
        let refs: Vec<&[f64]> = inputs.iter().map(|x| &x[..]).collect();
        concat_forward(&mut out, &refs, &shape_refs, axis).unwrap();
        assert!(out == want, "concat {shapes:?} on axis {axis}");
        let inputs32: Vec<Vec<f32>> = inputs.iter().map(|x| to_f32(x)).collect();
        let refs32: Vec<&[f32]> = inputs32.iter().map(|x| &x[..]).collect();
        let mut out32 = vec![f32::NAN; want.len()];
        concat_forward(&mut out32, &refs32, &shape_refs, axis).unwrap();
        assert!(out32.iter().zip(&want).all(|(&a, &b)| a == b as f32), "f32 concat {shapes:?} on axis {axis}");

        // Backward splits dout = out back into exactly the inputs, overwriting.
        let mut grads: Vec<Vec<f64>> = inputs.iter().map(|x| vec![f64::NAN; x.len()]).collect();
        let mut grad_refs: Vec<&mut [f64]> = grads.iter_mut().map(|g| &mut g[..]).collect();
        concat_backward(&mut grad_refs, &out, &shape_refs, axis).unwrap();
        assert!(grads == inputs, "concat_backward {shapes:?} on axis {axis}");
    }

    #[test]
    fn matches_index_arithmetic() {
        for axis in 0..3 {
            let mut shapes = vec![vec![2, 3, 4], vec![2, 3, 4], vec![2, 3, 4]];
            shapes[1][axis] = 1;
            shapes[2][axis] = 5;
            check_case(&shapes, axis, 10 + axis as u64);
            // An input empty along the axis contributes nothing.
            shapes[1][axis] = 0;
            check_case(&shapes, axis, 20 + axis as u64);
        }
        check_case(&[vec![3], vec![4]], 0, 30);
        check_case(&[vec![1, 2, 1, 3]], 2, 31);
    }

    #[test]
    fn matches_index_arithmetic_on_the_parallel_path() {
        let (rows, a, b) = (2000, 70, 90);
        assert!(rows * (a + b) >= PAR_MIN_ELEMS && rows * a >= PAR_MIN_ELEMS);
        check_case(&[vec![rows, a], vec![rows, b]], 1, 40);
        check_case(&[vec![4, rows, 40], vec![4, 1000, 40]], 1, 50);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let shapes: [&[usize]; 2] = [&[2, 2, 3], &[2, 1, 3]];
        let mut a = uniform(1, 12, -1.0, 1.0);
        let mut b = uniform(2, 6, -1.0, 1.0);
        let dout = uniform(3, 18, -1.0, 1.0);
        let (mut da, mut db) = (vec![f64::NAN; 12], vec![f64::NAN; 6]);
        concat_backward(&mut [&mut da, &mut db], &dout, &shapes, 1).unwrap();
        let loss = |a: &[f64], b: &[f64]| {
            let mut out = vec![0.0; 18];
            concat_forward(&mut out, &[a, b], &shapes, 1).unwrap();
            dot(&dout, &out)
        };
        let b0 = b.clone();
        check_grad("concat da", &mut a, &da, |x| loss(x, &b0));
        let a0 = a.clone();
        check_grad("concat db", &mut b, &db, |x| loss(&a0, x));
    }
}
