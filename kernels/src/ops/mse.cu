// Mean squared error; the CPU twin is ops/mse.rs. pred, target, dpred: [n].

// loss[0] = mean((pred - target)^2), in ONE block so the f64 sum has a fixed order (the same bits every
// run, no atomics): thread i sums elements i, i + blockDim, ... in f64, then thread 0 adds the warp sums
// in order. The difference is rounded to f32 first, as on the CPU. n == 0 gives 0.
extern "C" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) mse_forward_f32(float *loss, const float *pred, const float *target, size_t n) {
    __shared__ double part[32];
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const double d = (double)__fsub_rn(pred[i], target[i]);
        acc += d * d;
    }
    const double total = ordered_block_sum_f64(acc, part);
    if (threadIdx.x == 0) loss[0] = n == 0 ? 0.0f : (float)(total / (double)n);
}

// dpred = (pred - target) * scale with scale = dloss * (2 / n) rounded on the host as the CPU does: the
// CPU's bits.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) mse_backward_f32(float *dpred, const float *pred, const float *target, size_t n,
                                            float scale) {
    FOR_EACH(i, n) dpred[i] = __fmul_rn(__fsub_rn(pred[i], target[i]), scale);
}
