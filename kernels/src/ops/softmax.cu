// Softmax and log-softmax over the last axis of [rows, dim], forward and backward; the CPU twin is
// ops/softmax.rs. One block per row (grid-stride over rows): the row max (exact in any order), row sums in
// f64 in a fixed order (deterministic), then the element formulas with the CPU's f32 operations (_rn).
// Only expf differs from the CPU's polynomial exp (a few ulp).

__device__ __forceinline__ double sm_block_sum(double v, double *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float sm_row_max(const float *x, size_t dim, float *shared) {
    float m = -__int_as_float(0x7f800000);
    for (size_t j = threadIdx.x; j < dim; j += blockDim.x) m = fmaxf(m, x[j]);
    return block_max(m, shared);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) softmax_forward_f32(float *out, const float *inp, size_t rows, size_t dim) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *x = inp + r * dim;
        float *y = out + r * dim;
        const float m = sm_row_max(x, dim, redf);
        double s = 0.0;
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) {
            const float e = expf(__fsub_rn(x[j], m));
            y[j] = e;
            s += (double)e;
        }
        const float inv = (float)__ddiv_rn(1.0, sm_block_sum(s, redd));
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) y[j] = __fmul_rn(y[j], inv); // own entries only
    }
}

// dinp = y * (dout - sum_j dout_j * y_j).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) softmax_backward_f32(float *dinp, const float *dout, const float *out, size_t rows, size_t dim) {
    __shared__ double redd[32];
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *g = dout + r * dim, *y = out + r * dim;
        double s = 0.0;
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) s += (double)g[j] * (double)y[j];
        const float dot = (float)sm_block_sum(s, redd);
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) dinp[r * dim + j] = __fmul_rn(y[j], __fsub_rn(g[j], dot));
    }
}

// out = (x - m) - ln(sum_k e^(x_k - m)).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) log_softmax_forward_f32(float *out, const float *inp, size_t rows, size_t dim) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *x = inp + r * dim;
        const float m = sm_row_max(x, dim, redf);
        double s = 0.0;
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) s += (double)expf(__fsub_rn(x[j], m));
        const float log_sum = (float)log(sm_block_sum(s, redd));
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) out[r * dim + j] = __fsub_rn(__fsub_rn(x[j], m), log_sum);
    }
}

// dinp = dout - e^y * sum_j dout_j.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) log_softmax_backward_f32(float *dinp, const float *dout, const float *out, size_t rows, size_t dim) {
    __shared__ double redd[32];
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *g = dout + r * dim, *y = out + r * dim;
        double s = 0.0;
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) s += (double)g[j];
        const float sum = (float)sm_block_sum(s, redd);
        for (size_t j = threadIdx.x; j < dim; j += blockDim.x) dinp[r * dim + j] = __fsub_rn(g[j], __fmul_rn(expf(y[j]), sum));
    }
}
