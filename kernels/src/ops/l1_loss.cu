// Mean absolute error; the CPU twin is ops/l1_loss.rs. pred, dpred: [n] in T (f32, or f16 / bf16 under
// autocast: loaded exactly, the gradient rounded once as it is stored); target: [n] f32.

// loss[0] = mean |pred - target| in ONE block so the f64 sum has a fixed order (the same bits every run):
// thread i sums elements i, i + blockDim, ..., then thread 0 adds the warp sums in order. Each difference is
// rounded to f32 first, as on the CPU; the mean is rounded to f32. n == 0 gives 0.
template <typename T> __device__ void l1_loss_forward(float *loss, const T *pred, const float *target, size_t n, double *part) {
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) acc += fabs((double)__fsub_rn(ld(pred, i), target[i]));
    const double total = ordered_block_sum_f64(acc, part);
    if (threadIdx.x == 0) loss[0] = n == 0 ? 0.0f : (float)(total / (double)n);
}

// dpred = sign(pred - target) * g with g = scale / n rounded on the host as the CPU does (0 where equal): the
// CPU's bits; then times the f16 loss scale (`loss_scale[0]`, when not null) before the rounding into T.
template <typename T>
__device__ void l1_loss_backward(T *dpred, const T *pred, const float *target, size_t n, float g, const double *loss_scale) {
    const float ls = loss_scale ? (float)loss_scale[0] : 1.0f;
    FOR_EACH(i, n) {
        const float p = ld(pred, i), t = target[i];
        const float v = p > t ? g : (p < t ? -g : 0.0f);
        st(dpred, i, __fmul_rn(v, ls));
    }
}

#define L1(T, S) \
    extern "C" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) l1_loss_forward_##S(float *loss, const T *pred, const float *target, size_t n) { \
        __shared__ double part[32]; \
        l1_loss_forward(loss, pred, target, n, part); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) l1_loss_backward_##S(T *dpred, const T *pred, const float *target, size_t n, float g, const double *loss_scale) { \
        l1_loss_backward(dpred, pred, target, n, g, loss_scale); \
    }
L1(float, f32)
L1(f16, f16)
L1(bf16, bf16)
