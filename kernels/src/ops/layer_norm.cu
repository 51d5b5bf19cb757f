// Layer normalisation over the last dimension; the CPU twin is ops/layer_norm.rs. inp, out, dout, dinp:
// [rows, dim]; save_mean, save_rstd: [rows]; weight, bias, dweight, dbias: [dim] or null. One block per row
// for the forward and the input gradient (f64 row reductions in a fixed order, then the row's outputs);
// one thread per column for the parameter gradients (rows in order, f64, as the CPU's column pass). The
// element formulas are the CPU's f32 operations in its order (_rn: no contraction).

__device__ __forceinline__ double ln_block_sum(double v, double *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void ln_forward_f32(float *out, float *save_mean, float *save_rstd, const float *inp,
                                          const float *weight, const float *bias, size_t rows, size_t dim,
                                          double eps) {
    __shared__ double red[32];
    const double inv_dim = 1.0 / (double)dim;
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *x = inp + r * dim;
        float *y = out + r * dim;
        double s = 0.0;
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) s += (double)x[j];
        const double mean = __dmul_rn(ln_block_sum(s, red), inv_dim);
        double q = 0.0;
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) {
            const double d = (double)x[j] - mean;
            q += d * d;
        }
        const double var = __dmul_rn(ln_block_sum(q, red), inv_dim);
        const float mean_f = (float)mean, rstd = (float)__ddiv_rn(1.0, sqrt(__dadd_rn(var, eps)));
        if (threadIdx.x == 0) {
            save_mean[r] = mean_f;
            save_rstd[r] = rstd;
        }
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float t = __fmul_rn(__fsub_rn(x[j], mean_f), rstd);
            if (weight) t = __fmul_rn(t, weight[j]);
            if (bias) t = __fadd_rn(t, bias[j]);
            y[j] = t;
        }
    }
}

extern "C" __global__ void ln_backward_input_f32(float *dinp, const float *dout, const float *inp,
                                                 const float *save_mean, const float *save_rstd,
                                                 const float *weight, size_t rows, size_t dim) {
    __shared__ double red[32];
    const double inv_dim = 1.0 / (double)dim;
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *x = inp + r * dim, *dy = dout + r * dim;
        float *dx = dinp + r * dim;
        const float mean = save_mean[r], rstd = save_rstd[r];
        double sg = 0.0, sgx = 0.0;
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) {
            const double g = (double)(weight ? __fmul_rn(dy[j], weight[j]) : dy[j]);
            sg += g;
            sgx += g * (double)__fmul_rn(__fsub_rn(x[j], mean), rstd);
        }
        sg = ln_block_sum(sg, red);
        sgx = ln_block_sum(sgx, red);
        const float mean_g = (float)__dmul_rn(sg, inv_dim), mean_gx = (float)__dmul_rn(sgx, inv_dim);
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) {
            const float xhat = __fmul_rn(__fsub_rn(x[j], mean), rstd);
            const float g = weight ? __fmul_rn(dy[j], weight[j]) : dy[j];
            dx[j] = __fmul_rn(rstd, __fsub_rn(__fsub_rn(g, mean_g), __fmul_rn(xhat, mean_gx)));
        }
    }
}

// dweight[j] += sum_r dout[r, j] * xhat[r, j], dbias[j] += sum_r dout[r, j] (either may be null).
extern "C" __global__ void ln_backward_params_f32(float *dweight, float *dbias, const float *dout, const float *inp,
                                                  const float *save_mean, const float *save_rstd, size_t rows,
                                                  size_t dim) {
    FOR_EACH(j, dim) {
        double sw = 0.0, sb = 0.0;
        for (size_t r = 0; r < rows; ++r) {
            const float g = dout[r * dim + j];
            const float xhat = __fmul_rn(__fsub_rn(inp[r * dim + j], save_mean[r]), save_rstd[r]);
            sw = __dadd_rn(sw, (double)__fmul_rn(g, xhat));
            sb = __dadd_rn(sb, (double)g);
        }
        if (dweight) dweight[j] = __fadd_rn(dweight[j], (float)sw);
        if (dbias) dbias[j] = __fadd_rn(dbias[j], (float)sb);
    }
}
