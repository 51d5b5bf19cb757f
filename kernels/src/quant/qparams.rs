//! Symmetric int8 quantization parameters: scales from ranges, and quantize / dequantize per tensor and per
//! channel.
//!
//! The scheme is the one TensorRT and NVIDIA's pytorch-quantization use, and the one the QDQ ONNX export
//! writes: zero point 0, `scale = amax / 127`, one scale per activation tensor and one per output channel
//! of a weight. Quantization follows ONNX `QuantizeLinear` to the letter: `q = saturate(round(x / scale))`
//! with the division in f32, round half to even, and saturation to `[-128, 127]`. Because every step is the
//! same f32 operation, a tensor quantized here and by an ONNX runtime gives the same bytes.

/// Smallest quantized value (`i8::MIN`): the saturation bound of `QuantizeLinear` for int8.
pub const QMIN: i32 = -128;

/// Largest quantized value: `amax` maps to it, hence `scale = amax / 127`.
pub const QMAX: i32 = 127;

/// Scale used when a range is zero (an all-zero tensor or channel) or not a finite positive number.
///
/// Any positive scale quantizes zeros to zero, so the value only matters for data the calibration never
/// saw; 1 keeps it an exact power of two (no rounding in `x / scale`) and never produces the zero or NaN
/// scale that would turn every later division into a NaN.
pub const FALLBACK_SCALE: f32 = 1.0;

/// Scale of a symmetric range `[-amax, amax]`: `amax / 127`, or [`FALLBACK_SCALE`] when `amax` is zero,
/// negative, NaN or infinite, or so small that `amax / 127` underflows to zero.
pub fn scale_from_amax(amax: f32) -> f32 {
    let s = amax / QMAX as f32;
    if amax.is_finite() && s > 0.0 && s.is_finite() {
        s
    } else {
        FALLBACK_SCALE
    }
}

/// Largest absolute value of `x` (0 for an empty slice; NaNs are ignored).
pub fn amax(x: &[f32]) -> f32 {
    // f32::max ignores a NaN operand, so a stray NaN does not poison the range.
    x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// Quantizes one value: `saturate(round_half_to_even(x / scale))` to `[-128, 127]` (NaN maps to 0, as a
/// float-to-int cast saturates NaN to 0).
#[inline(always)]
pub fn quantize_one(x: f32, scale: f32) -> i8 {
    // Clamp in f32 and map NaN to 0 with a select, then an unchecked conversion: unlike the saturating
    // `as` cast, this vectorises (roundps, minps / maxps, cvttps2dq), which makes quantization as cheap as
    // a copy instead of a third of an int8 linear layer's time.
    let r = (x / scale).round_ties_even().clamp(QMIN as f32, QMAX as f32);
    let r = if r.is_nan() { 0.0 } else { r };
    // SAFETY: r is an integer in [-128, 127] (not NaN, not infinite), representable as i32.
    unsafe { r.to_int_unchecked::<i32>() as i8 }
}

/// Dequantizes one value: `q * scale` (exact in f32 up to one rounding).
#[inline(always)]
pub fn dequantize_one(q: i8, scale: f32) -> f32 {
    q as f32 * scale
}

#[inline(always)]
fn quantize_body(q: &mut [i8], x: &[f32], scale: f32) {
    for (q, &x) in q.iter_mut().zip(x) {
        *q = quantize_one(x, scale);
    }
}

crate::multiversion!(fn quantize_dispatch<>(q: &mut [i8], x: &[f32], scale: f32) => quantize_body);

/// Per-tensor quantization (overwrites `q`): `q[i] = quantize_one(x[i], scale)`.
///
/// q, x: [N]. Panics if the lengths differ or `scale` is not finite and positive (use
/// [`scale_from_amax`], which never returns such a scale).
pub fn quantize_per_tensor(q: &mut [i8], x: &[f32], scale: f32) {
    assert_eq!(q.len(), x.len(), "quantize_per_tensor: q and x lengths differ");
    assert!(scale.is_finite() && scale > 0.0, "quantize_per_tensor: scale must be finite and positive, got {scale}");
    crate::ops::par::map_unary_chunks(q, x, |q, x| quantize_dispatch(q, x, scale));
}

/// Per-tensor dequantization (overwrites `x`): `x[i] = q[i] * scale`.
///
/// x, q: [N]. Panics if the lengths differ.
pub fn dequantize_per_tensor(x: &mut [f32], q: &[i8], scale: f32) {
    assert_eq!(q.len(), x.len(), "dequantize_per_tensor: q and x lengths differ");
    crate::ops::par::map_unary(x, q, |q| dequantize_one(q, scale));
}

/// Per-channel weight scales (overwrites `scales`): `scales[c] = scale_from_amax(max |w[c, ..]|)`.
///
/// w: [C, L] (channel `c` is the contiguous row `w[c*L .. (c+1)*L]`: a linear weight `[out, in]`, or a conv
/// weight `[oc, ic/g, kh, kw]` with `L = ic/g*kh*kw`), scales: [C]. Panics if `w.len() != C * L`.
pub fn channel_scales(scales: &mut [f32], w: &[f32], channel_len: usize) {
    assert_eq!(w.len(), scales.len() * channel_len, "channel_scales: w must be [C, L] with C = scales.len()");
    if channel_len == 0 {
        scales.fill(FALLBACK_SCALE);
        return;
    }
    for (s, row) in scales.iter_mut().zip(w.chunks_exact(channel_len)) {
        *s = scale_from_amax(amax(row));
    }
}

/// Per-channel quantization (overwrites `q`): `q[c, i] = quantize_one(w[c, i], scales[c])`.
///
/// q, w: [C, L], scales: [C] (each finite and positive). Panics on mismatched lengths or a bad scale.
pub fn quantize_per_channel(q: &mut [i8], w: &[f32], scales: &[f32], channel_len: usize) {
    assert_eq!(q.len(), w.len(), "quantize_per_channel: q and w lengths differ");
    assert_eq!(w.len(), scales.len() * channel_len, "quantize_per_channel: w must be [C, L] with C = scales.len()");
    if channel_len == 0 {
        return;
    }
    for ((q, w), &s) in q.chunks_exact_mut(channel_len).zip(w.chunks_exact(channel_len)).zip(scales) {
        quantize_per_tensor(q, w, s);
    }
}

/// Per-channel dequantization (overwrites `w`): `w[c, i] = q[c, i] * scales[c]`.
///
/// w, q: [C, L], scales: [C]. Panics on mismatched lengths.
pub fn dequantize_per_channel(w: &mut [f32], q: &[i8], scales: &[f32], channel_len: usize) {
    assert_eq!(q.len(), w.len(), "dequantize_per_channel: q and w lengths differ");
    assert_eq!(w.len(), scales.len() * channel_len, "dequantize_per_channel: w must be [C, L] with C = scales.len()");
    if channel_len == 0 {
        return;
    }
    for ((w, q), &s) in w.chunks_exact_mut(channel_len).zip(q.chunks_exact(channel_len)).zip(scales) {
        dequantize_per_tensor(w, q, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even() {
        // x / 1 is exact, so these are pure rounding cases.
        let cases = [
            (0.5f32, 0i8),
            (1.5, 2),
            (2.5, 2),
            (3.5, 4),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (126.5, 126),
            (-127.5, -128),
            (0.49999997, 0),
            (2.5000002, 3),
        ];
        for (x, want) in cases {
            assert_eq!(quantize_one(x, 1.0), want, "quantize({x})");
        }
        // With scale 0.5, x / scale = 2x: 0.75 -> 1.5 -> 2, 1.25 -> 2.5 -> 2.
        assert_eq!(quantize_one(0.75, 0.5), 2);
        assert_eq!(quantize_one(1.25, 0.5), 2);
        assert_eq!(quantize_one(-1.25, 0.5), -2);
    }

    #[test]
    fn saturates_to_the_int8_range() {
        let cases = [
            (127.4f32, 127i8),
            (127.5, 127),
            (128.0, 127),
            (1e30, 127),
            (f32::INFINITY, 127),
            (-127.4, -127),
            (-127.5, -128),
            (-128.0, -128),
            (-128.6, -128),
            (-1e30, -128),
            (f32::NEG_INFINITY, -128),
        ];
        for (x, want) in cases {
            assert_eq!(quantize_one(x, 1.0), want, "quantize({x})");
        }
        assert_eq!(quantize_one(f32::NAN, 1.0), 0);
        let x: Vec<f32> = (-300..300).map(|i| i as f32 * 0.5).collect();
        let mut q = vec![0i8; x.len()];
        quantize_per_tensor(&mut q, &x, 1.0);
        assert!(q.iter().zip(&x).all(|(&q, &x)| q as f32 == x.round_ties_even().clamp(-128.0, 127.0)));
    }

    #[test]
    fn zero_range_gets_the_fallback_scale() {
        assert_eq!(scale_from_amax(0.0), FALLBACK_SCALE);
        assert_eq!(scale_from_amax(-1.0), FALLBACK_SCALE);
        assert_eq!(scale_from_amax(f32::NAN), FALLBACK_SCALE);
        assert_eq!(scale_from_amax(f32::INFINITY), FALLBACK_SCALE);
        assert_eq!(scale_from_amax(1e-45), FALLBACK_SCALE);
        assert_eq!(scale_from_amax(12.7), 12.7f32 / 127.0);
        let mut s = [0.0f32; 2];
        channel_scales(&mut s, &[0.0, 0.0, 0.0, 1.0, -2.54, 0.5], 3);
        assert_eq!(s, [FALLBACK_SCALE, 2.54f32 / 127.0]);
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn per_channel_weights_of_a_known_tensor() {
        // Two channels of three: amax 1.27 and 0.254, so scales 0.01 and 0.002 (up to f32 rounding).
        let w = [1.27f32, -0.635, 0.005, 0.254, -0.001, -0.254];
        let mut s = [0.0f32; 2];
        channel_scales(&mut s, &w, 3);
        assert_eq!(s, [1.27f32 / 127.0, 0.254f32 / 127.0]);
        let mut q = [0i8; 6];
        quantize_per_channel(&mut q, &w, &s, 3);
        // -0.635 / 0.01 = -63.5 -> -64 (even), 0.005 / 0.01 = 0.5 -> 0, -0.001 / 0.002 = -0.5 -> -0
        // (within f32 rounding of the scale, the exact f32 quotients decide; compare with the spec formula).
        let want: Vec<i8> = w
            .iter()
            .enumerate()
            .map(|(i, &x)| ((x / s[i / 3]).round_ties_even() as i32).clamp(-128, 127) as i8)
            .collect();
        assert_eq!(q.to_vec(), want);
        assert_eq!(q[0], 127);
        assert_eq!(q[3], 127);
        assert_eq!(q[5], -127);
        let mut back = [0.0f32; 6];
        dequantize_per_channel(&mut back, &q, &s, 3);
        for c in 0..2 {
            for i in 0..3 {
                let k = c * 3 + i;
                assert_eq!(back[k], q[k] as f32 * s[c]);
                assert!((back[k] - w[k]).abs() <= 0.5 * s[c] * (1.0 + 1e-6), "error beyond half a step at {k}");
            }
        }
    }

    #[test]
    fn per_tensor_roundtrip_is_within_half_a_step() {
        let n = 200_000; // above PAR_MIN_ELEMS: exercises the parallel path
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1001) as f32 - 500.0) * 0.013).collect();
        let s = scale_from_amax(amax(&x));
        let mut q = vec![0i8; n];
        quantize_per_tensor(&mut q, &x, s);
        let mut y = vec![0.0f32; n];
        dequantize_per_tensor(&mut y, &q, s);
        for i in 0..n {
            assert_eq!(q[i], quantize_one(x[i], s));
            assert!((y[i] - x[i]).abs() <= 0.5 * s * (1.0 + 1e-5));
        }
    }
}
