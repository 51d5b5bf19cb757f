// Gradient clipping on the device; the CPU twin is optim/clip.rs (torch's clip_grad_norm_ and
// clip_grad_value_). The sum of squares is a two-stage reduction in f64 with a fixed grid (REDUCE_BLOCKS
// blocks, whatever the device) and fixed tree orders, and no atomics: the same input gives the same bits on
// every run and every GPU. The clip coefficient is computed on the device, so clipping never waits for the
// host.
//
// x: [n]; segs: [nsegs] sorted (the trainable parameters; elements in no segment are neither counted nor
// changed); partials: [gridDim.x] of stage 1; out, total_norm: [1] f64; coef: [1] f32.

// Sum over the block in f64; thread 0 gets the result. `shared` holds 32 doubles. Block size: a multiple
// of 32 (launch.rs BLOCK).
__device__ __forceinline__ double block_sum_f64(double v, double *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Stage 1: partials[block] = sum of x[i]^2 over the block's grid-stride share. Squares of f32 values are
// exact in f64, so only the order of the additions rounds, and that order is fixed.
template <bool SEG>
__device__ void sumsq_partials(const float *x, const Segment *segs, int nsegs, size_t n, double *partials) {
    __shared__ double shared[32];
    double acc = 0.0;
    FOR_EACH(i, n) {
        if (SEG && find_segment(segs, nsegs, i) == nullptr) continue;
        double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum_f64(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) sumsq_partials_f32(const float *x, size_t n, double *partials) {
    sumsq_partials<false>(x, nullptr, 0, n, partials);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) sumsq_partials_segments_f32(const float *x, const Segment *segs, int nsegs, size_t n,
                                                       double *partials) {
    sumsq_partials<true>(x, segs, nsegs, n, partials);
}

// Stage 2 (one block): out[0] = the sum of the nparts partials, or its square root when take_sqrt != 0.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) sum_partials_f64(const double *partials, int nparts, double *out, int take_sqrt) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partials[i];
    acc = block_sum_f64(acc, shared);
    if (threadIdx.x == 0) out[0] = take_sqrt ? __dsqrt_rn(acc) : acc;
}

// coef[0] = min(max_norm / (total_norm + 1e-6), 1) in f64, then rounded to f32 as the CPU's scale does.
// fmin returns the other operand for a NaN, as Rust's f64::min.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) clip_coef_f64(const double *total_norm, double max_norm, float *coef) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double c = __ddiv_rn(max_norm, __dadd_rn(total_norm[0], 1e-6));
        coef[0] = __double2float_rn(fmin(c, 1.0));
    }
}

// x[i] *= coef[0].
template <bool SEG>
__device__ void scale_body(float *x, const float *coef, const Segment *segs, int nsegs, size_t n) {
    const float c = coef[0];
    FOR_EACH(i, n) {
        if (SEG && find_segment(segs, nsegs, i) == nullptr) continue;
        x[i] = __fmul_rn(x[i], c);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) scale_f32(float *x, const float *coef, size_t n) {
    scale_body<false>(x, coef, nullptr, 0, n);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) scale_segments_f32(float *x, const float *coef, const Segment *segs, int nsegs,
                                              size_t n) {
    scale_body<true>(x, coef, segs, nsegs, n);
}

// x[i] = clamp(x[i], lo, hi), NaN kept (both comparisons are false for NaN), as the CPU's clamp.
template <bool SEG>
__device__ void clamp_body(float *x, float lo, float hi, const Segment *segs, int nsegs, size_t n) {
    FOR_EACH(i, n) {
        if (SEG && find_segment(segs, nsegs, i) == nullptr) continue;
        float v = x[i];
        x[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) clamp_f32(float *x, float lo, float hi, size_t n) {
    clamp_body<false>(x, lo, hi, nullptr, 0, n);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) clamp_segments_f32(float *x, float lo, float hi, const Segment *segs, int nsegs,
                                              size_t n) {
    clamp_body<true>(x, lo, hi, segs, nsegs, n);
}
