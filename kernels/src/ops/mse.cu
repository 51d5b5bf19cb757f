// Mean squared error; the CPU twin is ops/mse.rs. pred, dpred: [n] in T (f32, or f16 / bf16 under autocast:
// loaded exactly, the arithmetic in f32 / f64 as for f32, the gradient rounded once as it is stored, as
// torch's is when it flows back through autocast's cast of the prediction to f32); target: [n] f32.

// loss[0] = mean((pred - target)^2), in ONE block so the f64 sum has a fixed order (the same bits every
// run, no atomics): thread i sums elements i, i + blockDim, ... in f64, then thread 0 adds the warp sums
// in order. The difference is rounded to f32 first, as on the CPU. n == 0 gives 0.
template <typename T> __device__ void mse_forward(float *loss, const T *pred, const float *target, size_t n, double *part) {
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const double d = (double)__fsub_rn(ld(pred, i), target[i]);
        acc += d * d;
    }
    const double total = ordered_block_sum_f64(acc, part);
    if (threadIdx.x == 0) loss[0] = n == 0 ? 0.0f : (float)(total / (double)n);
}

// dpred = (pred - target) * scale with scale = dloss * (2 / n) rounded on the host as the CPU does (the CPU's
// bits), then times the f16 loss scale (`loss_scale[0]`, when not null) as the host scales a gradient, before
// the rounding into T.
template <typename T>
__device__ void mse_backward(T *dpred, const T *pred, const float *target, size_t n, float scale, const double *loss_scale) {
    const float ls = loss_scale ? (float)loss_scale[0] : 1.0f;
    FOR_EACH(i, n) st(dpred, i, __fmul_rn(__fmul_rn(__fsub_rn(ld(pred, i), target[i]), scale), ls));
}

#define MSE(T, S) \
    extern "C" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) mse_forward_##S(float *loss, const T *pred, const float *target, size_t n) { \
        __shared__ double part[32]; \
        mse_forward(loss, pred, target, n, part); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) mse_backward_##S(T *dpred, const T *pred, const float *target, size_t n, float scale, const double *loss_scale) { \
        mse_backward(dpred, pred, target, n, scale, loss_scale); \
    }
MSE(float, f32)
MSE(f16, f16)
MSE(bf16, bf16)
