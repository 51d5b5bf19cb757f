//! Quantization-aware training, weight side: before a forward the fake-quantized weights (per output
//! channel, `scale = max|w| / 127`, as the int8 export quantizes them) replace the float ones in the
//! parameter arena; after the backward the float masters come back, so the optimizer applies the gradient
//! computed through the fake-quantized weights to the float weights: the straight-through estimator (no
//! weight saturates, since each channel's scale covers its maximum). The activation side is the graph's
//! `FakeQuantize` nodes (`graph::qat`).

use bevy_ecs::prelude::*;
use ecstrain_components::{Params, QatWeights};
use ecstrain_kernels::quant::fake_quant::fake_quant_per_channel_forward;
use ecstrain_kernels::quant::qparams::channel_scales;

/// Swaps the fake-quantized weights into `Params` (no-op when they are in already).
pub fn fake_quantize_weights(mut params: ResMut<Params>, mut qat: ResMut<QatWeights>) {
    let QatWeights { master, weights, scales, swapped } = &mut *qat;
    if *swapped {
        return;
    }
    // Only the quantized weights move (biases, norms and embeddings stay as they are).
    for (slice, oc) in weights.iter() {
        master[slice.range()].copy_from_slice(&params.0.data[slice.range()]);
        let (w, inner) = (&master[slice.range()], slice.len / oc);
        let s = &mut scales[..*oc];
        channel_scales(s, w, inner);
        fake_quant_per_channel_forward(&mut params.0.data[slice.range()], w, s, inner);
    }
    *swapped = true;
}

/// Puts the float master weights back into `Params` (no-op when they are there).
pub fn restore_float_weights(mut params: ResMut<Params>, mut qat: ResMut<QatWeights>) {
    if qat.swapped {
        for (slice, _) in &qat.weights {
            params.0.data[slice.range()].copy_from_slice(&qat.master[slice.range()]);
        }
        qat.swapped = false;
    }
}
