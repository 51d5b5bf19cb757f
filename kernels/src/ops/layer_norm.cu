// Layer normalisation over the last dimension; the CPU twin is ops/layer_norm.rs. inp, out, dout, dinp:
// [rows, dim]; save_mean, save_rstd: [rows]; weight, bias, dweight, dbias: [dim] or null.
// Storage: inp and dinp in X, out and dout in Y (each f32, or f16 / bf16 under autocast: a half input is read
// as autocast's f32 op reads it, and an output every reader of which is a product is stored as that product
// would round it on load); the statistics, the parameters and all arithmetic are f32 / f64 whatever the storage. A block per row (a
// warp per row for short rows) for the forward and the input gradient (f64 row reductions in a fixed order, then the row's outputs);
// chunked column sums for the parameter gradients (f64, as the CPU's column pass, in a fixed order). The
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

// A row's f64 sum over its group (common.cuh's RowGroup): warp shuffles, or the block reduction.
template <bool WARP> __device__ __forceinline__ double ln_row_sum(double v, double *shared) {
    return WARP ? warp_sum_f64(v) : ln_block_sum(v, shared);
}

template <bool WARP, typename X, typename Y>
__device__ void ln_forward(Y *out, float *save_mean, float *save_rstd, const X *inp, const float *weight,
                           const float *bias, size_t rows, size_t dim, double eps, double *red) {
    const RowGroup<WARP> g;
    const double inv_dim = 1.0 / (double)dim;
    for (size_t r = g.first(); r < rows; r += g.stride()) {
        const X *x = inp + r * dim;
        Y *y = out + r * dim;
        double s = 0.0;
        for (size_t j = g.lane(); j < dim; j += g.lanes()) s += (double)ld(x, j);
        const double mean = __dmul_rn(ln_row_sum<WARP>(s, red), inv_dim);
        double q = 0.0;
        for (size_t j = g.lane(); j < dim; j += g.lanes()) {
            const double d = (double)ld(x, j) - mean;
            q += d * d;
        }
        const double var = __dmul_rn(ln_row_sum<WARP>(q, red), inv_dim);
        const float mean_f = (float)mean, rstd = (float)__ddiv_rn(1.0, sqrt(__dadd_rn(var, eps)));
        if (g.lane() == 0) {
            save_mean[r] = mean_f;
            save_rstd[r] = rstd;
        }
        for (size_t j = g.lane(); j < dim; j += g.lanes()) {
            float t = __fmul_rn(__fsub_rn(ld(x, j), mean_f), rstd);
            if (weight) t = __fmul_rn(t, weight[j]);
            if (bias) t = __fadd_rn(t, bias[j]);
            st(y, j, t);
        }
    }
}

template <bool WARP, typename X, typename Y>
__device__ void ln_backward_input(X *dinp, const Y *dout, const X *inp, const float *save_mean,
                                  const float *save_rstd, const float *weight, size_t rows, size_t dim, double *red) {
    const RowGroup<WARP> grp;
    const double inv_dim = 1.0 / (double)dim;
    for (size_t r = grp.first(); r < rows; r += grp.stride()) {
        const X *x = inp + r * dim;
        const Y *dy = dout + r * dim;
        X *dx = dinp + r * dim;
        const float mean = save_mean[r], rstd = save_rstd[r];
        double sg = 0.0, sgx = 0.0;
        for (size_t j = grp.lane(); j < dim; j += grp.lanes()) {
            const float dyj = ld(dy, j);
            const double g = (double)(weight ? __fmul_rn(dyj, weight[j]) : dyj);
            sg += g;
            sgx += g * (double)__fmul_rn(__fsub_rn(ld(x, j), mean), rstd);
        }
        sg = ln_row_sum<WARP>(sg, red);
        sgx = ln_row_sum<WARP>(sgx, red);
        const float mean_g = (float)__dmul_rn(sg, inv_dim), mean_gx = (float)__dmul_rn(sgx, inv_dim);
        for (size_t j = grp.lane(); j < dim; j += grp.lanes()) {
            const float xhat = __fmul_rn(__fsub_rn(ld(x, j), mean), rstd);
            const float dyj = ld(dy, j);
            const float g = weight ? __fmul_rn(dyj, weight[j]) : dyj;
            st(dx, j, __fmul_rn(rstd, __fsub_rn(__fsub_rn(g, mean_g), __fmul_rn(xhat, mean_gx))));
        }
    }
}

// dweight[j] += sum_r dout[r, j] * xhat[r, j], dbias[j] += sum_r dout[r, j] (either may be null), in f64
// over the fixed column grid (column_phase_sum): pass 1 sums each chunk of rows, straight onto the
// gradients when there is one chunk (`direct`), else into parts ([2][chunks][dim] doubles: weight sums,
// then bias sums); pass 2 adds the chunk sums in chunk order. Deterministic on every GPU.
template <typename X, typename Y>
__device__ void ln_params_partials(float *dweight, float *dbias, double *parts, const Y *dout, const X *inp,
                                   const float *save_mean, const float *save_rstd, size_t rows, size_t dim,
                                   size_t chunk_rows, int direct, double (*red)[33]) {
    const size_t j = blockIdx.x * 32 + (threadIdx.x & 31);
    const size_t r0 = blockIdx.y * chunk_rows, r1 = min(rows, r0 + chunk_rows);
    double sw = 0.0, sb = 0.0;
    if (j < dim)
        for (size_t r = r0 + (threadIdx.x >> 5); r < r1; r += COLUMN_PHASES) {
            const float g = ld(dout, r * dim + j);
            const float xhat = __fmul_rn(__fsub_rn(ld(inp, r * dim + j), save_mean[r]), save_rstd[r]);
            sw = __dadd_rn(sw, (double)__fmul_rn(g, xhat));
            sb = __dadd_rn(sb, (double)g);
        }
    sw = column_phase_sum(sw, red);
    __syncthreads(); // every thread has read its column of `red` before it is reused
    sb = column_phase_sum(sb, red);
    if ((threadIdx.x >> 5) != 0 || j >= dim) return;
    if (direct) {
        if (dweight) dweight[j] = __fadd_rn(dweight[j], (float)sw);
        if (dbias) dbias[j] = __fadd_rn(dbias[j], (float)sb);
    } else {
        parts[blockIdx.y * dim + j] = sw;
        parts[(gridDim.y + blockIdx.y) * dim + j] = sb;
    }
}

// Entry points, per (X, Y) storage pair: a block per row, or (_warp_) a warp per row for rows of up to 1024
// (layer_norm_cuda.rs picks); the parameter gradients' first pass.
#define LN(X, XS, Y, YS) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ln_forward_##XS##_##YS(Y *out, float *save_mean, float *save_rstd, const X *inp, const float *weight, const float *bias, size_t rows, size_t dim, double eps) { \
        __shared__ double red[32];                                                                            \
        ln_forward<false>(out, save_mean, save_rstd, inp, weight, bias, rows, dim, eps, red);                 \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ln_forward_warp_##XS##_##YS(Y *out, float *save_mean, float *save_rstd, const X *inp, const float *weight, const float *bias, size_t rows, size_t dim, double eps) { \
        ln_forward<true>(out, save_mean, save_rstd, inp, weight, bias, rows, dim, eps, (double *)nullptr);    \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ln_backward_input_##XS##_##YS(X *dinp, const Y *dout, const X *inp, const float *save_mean, const float *save_rstd, const float *weight, size_t rows, size_t dim) { \
        __shared__ double red[32];                                                                            \
        ln_backward_input<false>(dinp, dout, inp, save_mean, save_rstd, weight, rows, dim, red);              \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ln_backward_input_warp_##XS##_##YS(X *dinp, const Y *dout, const X *inp, const float *save_mean, const float *save_rstd, const float *weight, size_t rows, size_t dim) { \
        ln_backward_input<true>(dinp, dout, inp, save_mean, save_rstd, weight, rows, dim, (double *)nullptr); \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ln_params_partials_##XS##_##YS(float *dweight, float *dbias, double *parts, const Y *dout, const X *inp, const float *save_mean, const float *save_rstd, size_t rows, size_t dim, size_t chunk_rows, int direct) { \
        __shared__ double red[COLUMN_PHASES][33];                                                             \
        ln_params_partials(dweight, dbias, parts, dout, inp, save_mean, save_rstd, rows, dim, chunk_rows, direct, red); \
    }
FOR_STORE_PAIRS(LN)

// Pass 2 of the above: the chunk sums of each column added in chunk order, onto the gradients.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) ln_params_sum_f32(float *dweight, float *dbias, const double *parts, size_t chunks,
                                             size_t dim) {
    FOR_EACH(j, dim) {
        double sw = 0.0, sb = 0.0;
        for (size_t c = 0; c < chunks; ++c) {
            sw = __dadd_rn(sw, parts[c * dim + j]);
            sb = __dadd_rn(sb, parts[(chunks + c) * dim + j]);
        }
        if (dweight) dweight[j] = __fadd_rn(dweight[j], (float)sw);
        if (dbias) dbias[j] = __fadd_rn(dbias[j], (float)sb);
    }
}
