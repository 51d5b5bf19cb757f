// The fused linear + activation's element kernels (ops/linear_act.rs); compiled after activation.cu
// (linear_act.rs concatenates the two), whose act_forward / act_grad they share, so the fused and unfused
// GPU paths compute the same bits.

// The forward's epilogue after the product: pre[i, j] += bias[j] (no bias: null), out = act(pre), one launch
// for bias_add_forward_f32 then activation_forward_f32. pre, out: [b, n].
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bias_act_forward_f32(float *out, float *pre, const float *bias, size_t b, size_t n,
                                                int act) {
    FOR_EACH(i, b * n) {
        float x = pre[i];
        if (bias) x = __fadd_rn(x, bias[i % n]);
        pre[i] = x;
        out[i] = act_forward(act, x);
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
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) act_backward_bias_partials_f32(float *d, const float *pre, float *dst, size_t b,
                                                          size_t n, size_t chunk_rows, int direct, int act) {
    __shared__ float red[COLUMN_PHASES][33];
    const size_t j = blockIdx.x * 32 + (threadIdx.x & 31);
    const size_t r0 = blockIdx.y * chunk_rows, r1 = min(b, r0 + chunk_rows);
    float acc = 0.0f;
    if (j < n)
        for (size_t r = r0 + (threadIdx.x >> 5); r < r1; r += COLUMN_PHASES) {
            const float v = act_backward_elem(act, d[r * n + j], pre[r * n + j]);
            d[r * n + j] = v;
            acc = __fadd_rn(acc, v);
        }
    const float s = column_phase_sum(acc, red);
    if ((threadIdx.x >> 5) == 0 && j < n) {
        if (direct) dst[j] = __fadd_rn(dst[j], s);
        else dst[blockIdx.y * n + j] = s;
    }
}

// The in-place activation backward without a bias. d, pre: [n].
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) act_backward_inplace_f32(float *d, const float *pre, size_t n, int act) {
    FOR_EACH(i, n) {
        d[i] = act_backward_elem(act, d[i], pre[i]);
    }
}
