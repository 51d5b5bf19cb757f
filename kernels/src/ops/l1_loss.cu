// Mean absolute error; the CPU twin is ops/l1_loss.rs. pred, target, dpred: [n].

// loss[0] = mean |pred - target| in ONE block so the f64 sum has a fixed order (the same bits every run):
// thread i sums elements i, i + blockDim, ..., then thread 0 adds the warp sums in order. Each difference is
// rounded to f32 first, as on the CPU; the mean is rounded to f32. n == 0 gives 0.
extern "C" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) l1_loss_forward_f32(float *loss, const float *pred, const float *target, size_t n) {
    __shared__ double part[32];
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) acc += fabs((double)__fsub_rn(pred[i], target[i]));
    const double total = ordered_block_sum_f64(acc, part);
    if (threadIdx.x == 0) loss[0] = n == 0 ? 0.0f : (float)(total / (double)n);
}

// dpred = sign(pred - target) * g with g = scale / n rounded on the host as the CPU does (0 where equal): the
// CPU's bits.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) l1_loss_backward_f32(float *dpred, const float *pred, const float *target, size_t n,
                                                float g) {
    FOR_EACH(i, n) {
        const float p = pred[i], t = target[i];
        const float v = p > t ? g : (p < t ? -g : 0.0f);
        dpred[i] = v;
    }
}
