// Cosine embedding loss (target 1); the CPU twin is ops/cosine_loss.rs. pred, target, dpred: [n, d] row-major.
// cos(x, y) = x.y / (max(|x|, eps) * max(|y|, eps)), every sum and coefficient in f64 as on the CPU (_rn
// intrinsics: no contraction into FMAs the CPU does not make). A warp per row.
// Under autocast pred and dpred may be stored in half precision (T = f16 / bf16): loaded exactly, the same
// arithmetic, the gradient rounded once as it is stored; target is f32.

// (x.y, x.x, y.y) of one row over its warp: lanes stride the row, then the lanes' partial sums are combined.
template <typename T>
__device__ __forceinline__ void cos_row_sums(const T *x, const float *y, size_t d, double &xy, double &xx, double &yy) {
    xy = 0.0;
    xx = 0.0;
    yy = 0.0;
    for (size_t j = threadIdx.x & 31; j < d; j += 32) {
        const double a = (double)ld(x, j), b = (double)y[j];
        xy = __dadd_rn(xy, __dmul_rn(a, b));
        xx = __dadd_rn(xx, __dmul_rn(a, a));
        yy = __dadd_rn(yy, __dmul_rn(b, b));
    }
    xy = warp_sum_f64(xy);
    xx = warp_sum_f64(xx);
    yy = warp_sum_f64(yy);
}

// loss[0] = (n - sum_i cos_i) / n, in ONE block so the sum has a fixed order (the same bits every run): warp w
// takes rows w, w + warps, ..., then thread 0 adds the warps' sums in order. 0 for n == 0, as on the CPU.
template <typename T>
__device__ void cosine_loss(float *loss, const T *pred, const float *target, size_t n, size_t d, double eps, double *part) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double c = 0.0; // the same in every lane of a warp
    for (size_t r = warp; r < n; r += warps) {
        double xy, xx, yy;
        cos_row_sums(pred + r * d, target + r * d, d, xy, xx, yy);
        const double cx = fmax(sqrt(xx), eps), cy = fmax(sqrt(yy), eps);
        c = __dadd_rn(c, xy / __dmul_rn(cx, cy));
    }
    // Lane 0 brings its warp's sum (the others add exact zeros).
    const double total = ordered_block_sum_f64(lane == 0 ? c : 0.0, part);
    if (threadIdx.x == 0) loss[0] = n == 0 ? 0.0f : (float)(((double)n - total) / (double)n);
}

// dpred = g / (cx cy) * y + (|x| > eps ? -g cos / (cx |x|) : 0) * x per row, g = -scale / n (the host's f64),
// rounded to f32; then times the f16 loss scale (`loss_scale[0]`, when not null) in f32 as the host scales a
// gradient, and rounded into T.
template <typename T>
__device__ void cosine_loss_backward(T *dpred, const T *pred, const float *target, size_t n, size_t d, double eps, double g,
                                     const double *loss_scale) {
    const float ls = loss_scale ? (float)loss_scale[0] : 1.0f;
    const RowGroup<true> grp;
    for (size_t r = grp.first(); r < n; r += grp.stride()) {
        const T *x = pred + r * d;
        const float *y = target + r * d;
        double xy, xx, yy;
        cos_row_sums(x, y, d, xy, xx, yy);
        const double nx = sqrt(xx), ny = sqrt(yy);
        const double cx = fmax(nx, eps), cy = fmax(ny, eps);
        const double cos = xy / __dmul_rn(cx, cy);
        const double a = g / __dmul_rn(cx, cy);
        const double b = nx > eps ? -__dmul_rn(g, cos) / __dmul_rn(cx, nx) : 0.0;
        T *o = dpred + r * d;
        for (size_t j = grp.lane(); j < d; j += 32) {
            const double v = __dadd_rn(__dmul_rn(a, (double)y[j]), __dmul_rn(b, (double)ld(x, j)));
            st(o, j, __fmul_rn((float)v, ls));
        }
    }
}

#define COSINE(T, S) \
    extern "C" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) cosine_loss_##S(float *loss, const T *pred, const float *target, size_t n, size_t d, double eps) { \
        __shared__ double part[32]; \
        cosine_loss(loss, pred, target, n, d, eps, part); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) cosine_loss_backward_##S(T *dpred, const T *pred, const float *target, size_t n, size_t d, double eps, double g, const double *loss_scale) { \
        cosine_loss_backward(dpred, pred, target, n, d, eps, g, loss_scale); \
    }
COSINE(float, f32)
COSINE(f16, f16)
COSINE(bf16, bf16)
