//! Fake quantization for quantization-aware training: the forward rounds to the int8 grid and back
//! (`y = q(x) · scale`), the backward is the straight-through estimator.
//!
//! Bit-compatible with PyTorch's `torch.fake_quantize_per_tensor_affine` /
//! `torch.fake_quantize_per_channel_affine` for zero point 0, `quant_min = -128`, `quant_max = 127`:
//! `r = round_half_even(x · (1 / scale))` with the reciprocal and the product in f32 (PyTorch multiplies by
//! the reciprocal; ONNX `QuantizeLinear` and [`super::qparams`] divide, which differs only where the two
//! roundings of `x / scale` land on opposite sides of a tie), `y = clamp(r, -128, 127) · scale` with `r`
//! passed through an integer as PyTorch does (so `-0.0` inputs give `+0.0`).
//! The gradient passes where `r` lies inside `[-128, 127]` and is zero where it saturated:
//! `dx = dy · mask`, the mask as 0 / 1 (so a negative `dy` gives `-0.0`, as PyTorch's `dY * mask`).
//! Rounding itself has zero derivative almost everywhere; the estimator pretends it is the identity.

use super::qparams::{QMAX, QMIN};
use crate::ops::par::{map_binary_chunks, map_unary_chunks};

/// `r = round_half_even(x · (1 / scale))` and whether it lies inside the int8 range.
#[inline(always)]
fn rounded(x: f32, inv_scale: f32) -> (f32, bool) {
    let r = (x * inv_scale).round_ties_even();
    (r, r >= QMIN as f32 && r <= QMAX as f32)
}

#[inline(always)]
fn forward_one(x: f32, scale: f32, inv_scale: f32) -> f32 {
    // Through an integer, as PyTorch (`static_cast<int64_t>`): a rounded -0.0 becomes +0 (the cast also
    // saturates, so the clamp bounds are exact).
    let (r, _) = rounded(x, inv_scale);
    (r as i32).clamp(QMIN, QMAX) as f32 * scale
}

#[inline(always)]
fn backward_one(dy: f32, x: f32, inv_scale: f32) -> f32 {
    dy * if rounded(x, inv_scale).1 { 1.0 } else { 0.0 }
}

fn check_scale(scale: f32, what: &str) {
    assert!(scale.is_finite() && scale > 0.0, "{what}: scale must be finite and positive, got {scale}");
}

/// Per-tensor fake quantization forward (overwrites `y`): `y = clamp(round(x / scale), -128, 127) · scale`.
///
/// y, x: [N]. Panics on mismatched lengths or a scale that is not finite and positive.
pub fn fake_quant_per_tensor_forward(y: &mut [f32], x: &[f32], scale: f32) {
    check_scale(scale, "fake_quant_per_tensor_forward");
    let inv = 1.0 / scale;
    map_unary_chunks(y, x, |y, x| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = forward_one(x, scale, inv);
        }
    });
}

/// Per-tensor straight-through backward (overwrites `dx`): `dx = dy` where `round(x / scale)` is inside
/// `[-128, 127]`, 0 where it saturated.
///
/// dx, dy, x: [N].
pub fn fake_quant_per_tensor_backward(dx: &mut [f32], dy: &[f32], x: &[f32], scale: f32) {
    check_scale(scale, "fake_quant_per_tensor_backward");
    let inv = 1.0 / scale;
    map_binary_chunks(dx, dy, x, |dx, dy, x| {
        for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
            *dx = backward_one(dy, x, inv);
        }
    });
}

/// Channel of flat index `i` in a `[outer, C, inner]` layout.
#[inline(always)]
fn channel(i: usize, c: usize, inner: usize) -> usize {
    (i / inner) % c
}

fn check_channels(len: usize, scales: &[f32], inner: usize, what: &str) {
    assert!(inner > 0 && !scales.is_empty(), "{what}: need at least one channel and inner > 0");
    assert!(
        len.is_multiple_of(scales.len() * inner),
        "{what}: length {len} is not [outer, C = {}, inner = {inner}]",
        scales.len()
    );
    for &s in scales {
        check_scale(s, what);
    }
}

/// Per-channel fake quantization forward (overwrites `y`), one scale per index of the channel axis.
///
/// y, x: `[outer, C, inner]` (the channel axis with everything before it flattened into `outer` and
/// everything after into `inner`: a conv weight `[OC, C/g, KH, KW]` on axis 0 has `inner = C/g·KH·KW`),
/// scales: [C]. Panics on mismatched lengths or a bad scale.
pub fn fake_quant_per_channel_forward(y: &mut [f32], x: &[f32], scales: &[f32], inner: usize) {
    assert_eq!(y.len(), x.len(), "fake_quant_per_channel_forward: y and x lengths differ");
    check_channels(x.len(), scales, inner, "fake_quant_per_channel_forward");
    for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        let s = scales[channel(i, scales.len(), inner)];
        *y = forward_one(x, s, 1.0 / s);
    }
}

/// Per-channel straight-through backward (overwrites `dx`), shapes as [`fake_quant_per_channel_forward`].
pub fn fake_quant_per_channel_backward(dx: &mut [f32], dy: &[f32], x: &[f32], scales: &[f32], inner: usize) {
    assert_eq!(dx.len(), x.len(), "fake_quant_per_channel_backward: dx and x lengths differ");
    assert_eq!(dy.len(), x.len(), "fake_quant_per_channel_backward: dy and x lengths differ");
    check_channels(x.len(), scales, inner, "fake_quant_per_channel_backward");
    for (i, ((dx, &dy), &x)) in dx.iter_mut().zip(dy).zip(x).enumerate() {
        *dx = backward_one(dy, x, 1.0 / scales[channel(i, scales.len(), inner)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_f32(v: &serde_json::Value) -> Vec<f32> {
        let s = v.as_str().unwrap();
        let bytes: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/fake_quant_torch.json")).unwrap()
    }

    /// Number of elements whose bits differ.
    fn bit_mismatches(got: &[f32], want: &[f32]) -> usize {
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count()
    }

    #[test]
    fn per_tensor_matches_torch_bitwise() {
        for case in fixture()["per_tensor"].as_array().unwrap() {
            let scale = hex_f32(&case["scale_f32"])[0];
            let (x, dy) = (hex_f32(&case["x"]), hex_f32(&case["dy"]));
            let (mut y, mut dx) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
            fake_quant_per_tensor_forward(&mut y, &x, scale);
            fake_quant_per_tensor_backward(&mut dx, &dy, &x, scale);
            assert_eq!(bit_mismatches(&y, &hex_f32(&case["y"])), 0, "forward, scale {scale}");
            assert_eq!(bit_mismatches(&dx, &hex_f32(&case["dx"])), 0, "backward, scale {scale}");
        }
    }

    #[test]
    fn per_channel_matches_torch_bitwise() {
        for case in fixture()["per_channel"].as_array().unwrap() {
            let inner = case["inner"].as_u64().unwrap() as usize;
            let (x, dy, scales) = (hex_f32(&case["x"]), hex_f32(&case["dy"]), hex_f32(&case["scales"]));
            let (mut y, mut dx) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
            fake_quant_per_channel_forward(&mut y, &x, &scales, inner);
            fake_quant_per_channel_backward(&mut dx, &dy, &x, &scales, inner);
            assert_eq!(bit_mismatches(&y, &hex_f32(&case["y"])), 0, "forward {}", case["shape"]);
            assert_eq!(bit_mismatches(&dx, &hex_f32(&case["dx"])), 0, "backward {}", case["shape"]);
        }
    }

    #[test]
    fn straight_through_mask() {
        // scale 1: the mask is exactly "round(x) in [-128, 127]".
        let x = [0.0f32, 126.9, 127.4, 127.5, 127.6, 128.0, -127.9, -128.4, -128.5, -128.6, -1e9, 1e9];
        // 127.5 rounds to 128 (even) and saturates; -128.5 rounds to -128 and passes.
        let pass = [true, true, true, false, false, false, true, true, true, false, false, false];
        let dy = [2.0f32; 12];
        let mut dx = [f32::NAN; 12];
        fake_quant_per_tensor_backward(&mut dx, &dy, &x, 1.0);
        for i in 0..12 {
            assert_eq!(dx[i], if pass[i] { 2.0 } else { 0.0 }, "x = {}", x[i]);
        }
        let mut y = [0.0f32; 12];
        fake_quant_per_tensor_forward(&mut y, &x, 1.0);
        assert_eq!(y, [0.0, 127.0, 127.0, 127.0, 127.0, 127.0, -128.0, -128.0, -128.0, -128.0, -128.0, 127.0]);
        // Per channel: channel 1 (scale 0.1) saturates at 12.75, channel 0 (scale 1) does not.
        let mut dxc = [0.0f32; 4];
        fake_quant_per_channel_backward(&mut dxc, &[1.0; 4], &[13.0, 13.0, 12.0, 12.0], &[1.0, 0.1], 1);
        assert_eq!(dxc, [1.0, 0.0, 1.0, 1.0]);
    }
}
