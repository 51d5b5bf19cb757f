// Batch normalisation over the channels of [N, C, HW]; the CPU twin is ops/batch_norm.rs. A channel's
// elements are strided across the batch (element i of channel ch, i < M = N*HW, sits at
// ((i / HW) * C + ch) * HW + i % HW). The training kernels give each channel one block, which reduces the
// channel in f64 (fixed order: deterministic) and then writes the channel's outputs itself, so the
// statistics never leave the block and no scratch buffer is needed. Per-channel coefficients and the
// element formulas use the CPU's roundings (f64 where it uses f64, _rn f32 operations in its order).
// weight / bias / dweight / dbias may be null (affine=False, or a gradient not wanted). The input, output and
// their gradients are stored in T (f32, or f16 / bf16 under autocast: torch's batch norm gives a half input's
// type); the statistics, the parameters and all arithmetic are f32 / f64 whatever the storage.

__device__ __forceinline__ double bn_block_sum(double v, double *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ size_t bn_index(size_t i, size_t ch, size_t c, size_t hw) {
    return ((i / hw) * c + ch) * hw + i % hw;
}

// (x - mean) * scale + shift, as the CPU's `normalize`.
__device__ __forceinline__ float bn_affine(float v, float mean, float scale, float shift) {
    return __fadd_rn(__fmul_rn(__fsub_rn(v, mean), scale), shift);
}

template <typename T>
__device__ void bn_forward_train(T *out, float *save_mean, float *save_invstd, float *running_mean, float *running_var,
                                 const T *inp, const float *weight, const float *bias, size_t n, size_t c, size_t hw,
                                 double eps, double momentum, double *red) {
    const size_t m = n * hw;
    const double mf = (double)m;
    for (size_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
        double s = 0.0;
        for (size_t i = threadIdx.x; i < m; i += blockDim.x) s += (double)ld(inp, bn_index(i, ch, c, hw));
        const double mean = __ddiv_rn(bn_block_sum(s, red), mf);
        double q = 0.0;
        for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
            const double d = (double)ld(inp, bn_index(i, ch, c, hw)) - mean;
            q += d * d;
        }
        const double var = __ddiv_rn(bn_block_sum(q, red), mf);
        const float mean_f = (float)mean;
        const float invstd_f = (float)__ddiv_rn(1.0, sqrt(__dadd_rn(var, eps)));
        if (threadIdx.x == 0) {
            const double keep = 1.0 - momentum;
            save_mean[ch] = mean_f;
            save_invstd[ch] = invstd_f;
            running_mean[ch] = (float)__dadd_rn(__dmul_rn(keep, (double)running_mean[ch]), __dmul_rn(momentum, mean));
            const double unbiased = __ddiv_rn(__dmul_rn(__dmul_rn(momentum, var), mf), mf - 1.0);
            running_var[ch] = (float)__dadd_rn(__dmul_rn(keep, (double)running_var[ch]), unbiased);
        }
        // Normalised with the saved (rounded) invstd, as the CPU does.
        const double w = weight ? (double)weight[ch] : 1.0;
        const float scale = (float)__dmul_rn((double)invstd_f, w);
        const float shift = bias ? bias[ch] : 0.0f;
        for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
            const size_t j = bn_index(i, ch, c, hw);
            st(out, j, bn_affine(ld(inp, j), mean_f, scale, shift));
        }
    }
}

template <typename T>
__device__ void bn_forward_eval(T *out, const T *inp, const float *running_mean, const float *running_var,
                                const float *weight, const float *bias, size_t n, size_t c, size_t hw, double eps) {
    FOR_EACH(j, n * c * hw) {
        const size_t ch = (j / hw) % c;
        const double invstd = __ddiv_rn(1.0, sqrt(__dadd_rn((double)running_var[ch], eps)));
        const double w = weight ? (double)weight[ch] : 1.0;
        const float scale = (float)__dmul_rn(invstd, w);
        const float shift = bias ? bias[ch] : 0.0f;
        st(out, j, bn_affine(ld(inp, j), running_mean[ch], scale, shift));
    }
}

template <typename T>
__device__ void bn_backward(T *dinp, float *dweight, float *dbias, const T *dout, const T *inp, const float *save_mean,
                            const float *save_invstd, const float *weight, size_t n, size_t c, size_t hw, double *red) {
    const size_t m = n * hw;
    const double mf = (double)m;
    for (size_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
        const double mean = (double)save_mean[ch], invstd = (double)save_invstd[ch];
        double sdy = 0.0, sdyx = 0.0;
        for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
            const size_t j = bn_index(i, ch, c, hw);
            const double g = (double)ld(dout, j);
            sdy += g;
            sdyx += g * ((double)ld(inp, j) - mean);
        }
        sdy = bn_block_sum(sdy, red);
        sdyx = __dmul_rn(bn_block_sum(sdyx, red), invstd);
        if (threadIdx.x == 0) {
            if (dweight) dweight[ch] = __fadd_rn(dweight[ch], (float)sdyx);
            if (dbias) dbias[ch] = __fadd_rn(dbias[ch], (float)sdy);
        }
        const double w = weight ? (double)weight[ch] : 1.0;
        const float a = (float)__dmul_rn(w, invstd);
        const float mean_dy = (float)__ddiv_rn(sdy, mf);
        const float k = (float)__ddiv_rn(__dmul_rn(invstd, sdyx), mf);
        const float mean_f = save_mean[ch];
        for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
            const size_t j = bn_index(i, ch, c, hw);
            const float t = __fsub_rn(__fsub_rn(ld(dout, j), mean_dy), __fmul_rn(__fsub_rn(ld(inp, j), mean_f), k));
            st(dinp, j, __fmul_rn(a, t));
        }
    }
}

#define BN(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bn_forward_train_##S(T *out, float *save_mean, float *save_invstd, float *running_mean, float *running_var, const T *inp, const float *weight, const float *bias, size_t n, size_t c, size_t hw, double eps, double momentum) { \
        __shared__ double red[32];                                                                            \
        bn_forward_train(out, save_mean, save_invstd, running_mean, running_var, inp, weight, bias, n, c, hw, eps, momentum, red); \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bn_forward_eval_##S(T *out, const T *inp, const float *running_mean, const float *running_var, const float *weight, const float *bias, size_t n, size_t c, size_t hw, double eps) { \
        bn_forward_eval(out, inp, running_mean, running_var, weight, bias, n, c, hw, eps);                    \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bn_backward_##S(T *dinp, float *dweight, float *dbias, const T *dout, const T *inp, const float *save_mean, const float *save_invstd, const float *weight, size_t n, size_t c, size_t hw) { \
        __shared__ double red[32];                                                                            \
        bn_backward(dinp, dweight, dbias, dout, inp, save_mean, save_invstd, weight, n, c, hw, red);          \
    }
BN(float, f32)
BN(f16, f16)
BN(bf16, bf16)
