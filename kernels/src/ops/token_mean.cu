// Mean over the token axis and its backward; the CPU twin is ops/token_mean.rs. x / dx: [n, t, d],
// y / dy: [n, d].

// y[r, j] = (float)(sum_i (double)x[r, i, j] / t): the CPU's f64 fold from +0.0 in token order, rounded once.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) token_mean_forward_f32(float *y, const float *x, size_t n, size_t t, size_t d) {
    FOR_EACH(e, n * d) {
        const size_t r = e / d, j = e % d;
        const float *xs = x + r * t * d + j;
        double s = 0.0;
        for (size_t i = 0; i < t; ++i) s = __dadd_rn(s, (double)xs[i * d]);
        y[e] = (float)__ddiv_rn(s, (double)t);
    }
}

// dx[r, i, j] = dy[r, j] * inv, inv = 1 / t rounded to f32 on the host as the CPU computes it.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) token_mean_backward_f32(float *dx, const float *dy, size_t n, size_t t, size_t d,
                                                   float inv) {
    FOR_EACH(e, n * t * d) {
        const size_t r = e / (t * d), j = e % d;
        dx[e] = __fmul_rn(dy[r * d + j], inv);
    }
}
