// The EMA update of the averaged weights; the CPU twin is optim/ema.rs (Ultralytics' ModelEMA on f32:
// v *= d; v += (1 - d) * model_v). _rn intrinsics: no FMA contraction, so the averages are the CPU's bits.
//
// shadow, value: [n]; segs: [nsegs] sorted (the tracked parameters).

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ema_update_f32(float *shadow, const float *value, float d, float one_minus_d,
                                          size_t n) {
    map_rounds(n, [&](size_t i) { return Loaded2{shadow[i], value[i]}; },
               [&](size_t i, Loaded2 v) { shadow[i] = __fadd_rn(__fmul_rn(v.a, d), __fmul_rn(one_minus_d, v.b)); });
}

// Tracked elements (inside a segment) are averaged; every other element is copied, as the EMA system does
// for untracked parameters and integer buffers.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ema_update_segments_f32(float *shadow, const float *value, float d, float one_minus_d,
                                                   const Segment *segs, int nsegs, size_t n) {
    FOR_EACH(i, n) {
        const float v = value[i];
        shadow[i] = find_segment(segs, nsegs, i) == nullptr
                        ? v
                        : __fadd_rn(__fmul_rn(shadow[i], d), __fmul_rn(one_minus_d, v));
    }
}
