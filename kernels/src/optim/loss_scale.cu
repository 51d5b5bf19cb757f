// Dynamic loss scaling for f16 autocast, kept on the device from one step to the next (torch's GradScaler
// with a fused optimizer): the host never waits to learn whether a step overflowed. The CPU twin is
// optim/loss_scale.rs.
//
// state: [2] doubles, the scale and the growth tracker (finite windows since the last change), updated in
// f64 as the host's LossScaler is. found_inf: [1], 1.0 once a non-finite gradient was seen in the window.
// g: [n] gradients (or the loss gradient, for the seed); segs: [nsegs] the optimizer's segment table.

// The loss gradient times the scale, rounded as the host's `g *= scale as f32`.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) loss_scale_mul_f32(float *g, const double *state, size_t n) {
    const float s = (float)state[0];
    map_rounds(n, [&](size_t i) { return g[i]; }, [&](size_t i, float v) { g[i] = __fmul_rn(v, s); });
}

// torch's _amp_foreach_non_finite_check_and_unscale_ with the scale read from the state: every gradient is
// checked before it is multiplied by (float)(1 / scale) (untouched when that is exactly 1). The flag is only
// ever set, by an atomic exchange (many threads may find a non-finite value in one launch).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) loss_scale_unscale_check_f32(float *g, const double *state,
                                                                                       float *found_inf, size_t n) {
    const float inv = (float)(1.0 / state[0]);
    bool found = false;
    map_rounds(n, [&](size_t i) { return g[i]; },
               [&](size_t i, float v) {
                   if (!isfinite(v)) found = true;
                   if (inv != 1.0f) g[i] = __fmul_rn(v, inv);
               });
    if (found) atomicExch(found_inf, 1.0f);
}

// After the unscale: a window with a non-finite gradient drops its gradients (every element zeroed, as the CPU
// does), and the first thread runs torch's _amp_update_scale_: back off and reset the tracker on an overflow,
// else count the window and grow the scale after `interval` finite windows in a row.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) loss_scale_update(float *g, size_t n, const float *found_inf,
                                                                            double *state, double growth,
                                                                            double backoff, unsigned long long interval) {
    const bool found = *found_inf != 0.0f;
    if (found) {
        FOR_EACH(i, n) g[i] = 0.0f;
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        if (found) {
            state[0] *= backoff;
            state[1] = 0.0;
        } else {
            double tracker = state[1] + 1.0;
            if (tracker == (double)interval) {
                state[0] *= growth;
                tracker = 0.0;
            }
            state[1] = tracker;
        }
    }
}

// Between the segment table's upload and the optimizer's launch: in a window that overflowed every segment is
// made empty (end = start), so the fused update finds no segment for any element and leaves every parameter
// and its optimizer state as they were: the skipped step.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) loss_scale_skip_segments(Segment *segs, int nsegs,
                                                                                   const float *found_inf) {
    if (*found_inf == 0.0f) return;
    FOR_EACH(i, nsegs) segs[i].end = segs[i].start;
}
