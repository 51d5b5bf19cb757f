// The fused linear + activation's element kernels (ops/linear_act.rs); compiled after activation.cu
// (linear_act.rs concatenates the two), whose act_forward / act_grad they share, so the fused and unfused
// GPU paths compute the same bits.

//
// pre, out and d are activations stored in T (f32, or f16 / bf16 under autocast: loaded to f32, every stored
// value rounded once); bias and the bias gradient are f32.

// x as stored in T (the value a later load of it returns).
__device__ __forceinline__ float as_stored(const float *, float x) { return x; }
__device__ __forceinline__ float as_stored(const f16 *, float x) { return __half2float(__float2half_rn(x)); }
__device__ __forceinline__ float as_stored(const bf16 *, float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// The forward's epilogue after the product: pre[i, j] += bias[j] (no bias: null), out = act(pre), one launch
// for bias_add_forward then activation_forward (on the stored pre, as the unfused pair reads it). pre, out:
// [b, n].
template <typename T> __device__ void bias_act_forward(T *out, T *pre, const float *bias, size_t b, size_t n, int act) {
    FOR_EACH(i, b * n) {
        float x = ld(pre, i);
        if (bias) x = as_stored(pre, __fadd_rn(x, bias[i % n]));
        st(pre, i, x);
        st(out, i, act_forward(act, x));
    }
}

// d * act'(pre) as the backward forms it (relu passes the gradient through untouched, no multiply by 1, as
// activation_backward does).
__device__ __forceinline__ float act_backward_elem(int act, float g, float x) {
    return act == 0 ? (x > 0.0f ? g : 0.0f) : g * act_grad(act, x);
}

// The backward's first step with a bias: d = d * act'(pre) in place and the column sums of the new d, over
// the column grid of bias_grad_partials_f32 (bias_add.cu) in its order, so the bias gradient is the
// unfused pair's bits: onto dbias when `direct` (one chunk), else a row per chunk into parts, which
// bias_grad_sum_f32 adds. d, pre: [b, n].
template <typename T>
__device__ void act_backward_bias_partials(T *d, const T *pre, float *dst, size_t b, size_t n, size_t chunk_rows, int direct,
                                           int act) {
    __shared__ float red[COLUMN_PHASES][33];
    const size_t j = blockIdx.x * 32 + (threadIdx.x & 31);
    const size_t r0 = blockIdx.y * chunk_rows, r1 = min(b, r0 + chunk_rows);
    float acc = 0.0f;
    if (j < n)
        for (size_t r = r0 + (threadIdx.x >> 5); r < r1; r += COLUMN_PHASES) {
            // The bias gradient sums the stored (rounded) values, as the unfused pair's column sums read them.
            const float v = as_stored(d, act_backward_elem(act, ld(d, r * n + j), ld(pre, r * n + j)));
            st(d, r * n + j, v);
            acc = __fadd_rn(acc, v);
        }
    const float s = column_phase_sum(acc, red);
    if ((threadIdx.x >> 5) == 0 && j < n) {
        if (direct) dst[j] = __fadd_rn(dst[j], s);
        else dst[blockIdx.y * n + j] = s;
    }
}

// The in-place activation backward without a bias. d, pre: [n].
template <typename T> __device__ void act_backward_inplace(T *d, const T *pre, size_t n, int act) {
    FOR_EACH(i, n) { st(d, i, act_backward_elem(act, ld(d, i), ld(pre, i))); }
}

#define LINEAR_ACT(T, S)                                                                                     \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bias_act_forward_##S(T *out, T *pre, const float *bias, size_t b, size_t n, int act) { \
        bias_act_forward(out, pre, bias, b, n, act);                                                         \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) act_backward_bias_partials_##S(T *d, const T *pre, float *dst, size_t b, size_t n, size_t chunk_rows, int direct, int act) { \
        act_backward_bias_partials(d, pre, dst, b, n, chunk_rows, direct, act);                              \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) act_backward_inplace_##S(T *d, const T *pre, size_t n, int act) { \
        act_backward_inplace(d, pre, n, act);                                                                \
    }
LINEAR_ACT(float, f32)
LINEAR_ACT(f16, f16)
LINEAR_ACT(bf16, bf16)
