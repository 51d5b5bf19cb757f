// Mean over the token axis and its backward; the CPU twin is ops/token_mean.rs. x / dx: [n, t, d],
// y / dy: [n, d]. Stored in T (f32, or f16 / bf16 under autocast: torch's mean keeps a half input's type,
// accumulating wider); the arithmetic is the f32 path's, each stored value rounded once.

// y[r, j] = (float)(sum_i (double)x[r, i, j] / t): the CPU's f64 fold from +0.0 in token order, rounded once.
template <typename T> __device__ void token_mean_forward(T *y, const T *x, size_t n, size_t t, size_t d) {
    FOR_EACH(e, n * d) {
        const size_t r = e / d, j = e % d;
        const T *xs = x + r * t * d + j;
        double s = 0.0;
        for (size_t i = 0; i < t; ++i) s = __dadd_rn(s, (double)ld(xs, i * d));
        st(y, e, (float)__ddiv_rn(s, (double)t));
    }
}

// dx[r, i, j] = dy[r, j] * inv, inv = 1 / t rounded to f32 on the host as the CPU computes it.
template <typename T> __device__ void token_mean_backward(T *dx, const T *dy, size_t n, size_t t, size_t d, float inv) {
    FOR_EACH(e, n * t * d) {
        const size_t r = e / (t * d), j = e % d;
        st(dx, e, __fmul_rn(ld(dy, r * d + j), inv));
    }
}

#define TOKEN_MEAN(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) token_mean_forward_##S(T *y, const T *x, size_t n, size_t t, size_t d) { \
        token_mean_forward(y, x, n, t, d);                                                                    \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) token_mean_backward_##S(T *dx, const T *dy, size_t n, size_t t, size_t d, float inv) { \
        token_mean_backward(dx, dy, n, t, d, inv);                                                            \
    }
TOKEN_MEAN(float, f32)
TOKEN_MEAN(f16, f16)
TOKEN_MEAN(bf16, bf16)
