// Row kernels of the unfused attention (attention_cuda.rs does the products with cuBLAS); the CPU twin is
// ops/attention.rs. att, ds: [B*H*T, T] score / probability rows; row r is query r % T of its head. With
// `causal` query i sees keys j <= i, and masked entries are exactly 0. One block per row (grid-stride).

__device__ __forceinline__ double at_block_sum(double v, double *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// In place: att = softmax over the visible keys of each row (the scores are already scaled), 0 elsewhere.
extern "C" __global__ void attn_softmax_f32(float *att, size_t rows, size_t t, int causal) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *row = att + r * t;
        const size_t vis = causal ? r % t + 1 : t;
        float m = -__int_as_float(0x7f800000);
        for (size_t j = threadIdx.x; j < vis; j += blockDim.x) m = fmaxf(m, row[j]);
        m = block_max(m, redf);
        double s = 0.0;
        for (size_t j = threadIdx.x; j < t; j += blockDim.x) {
            const float e = j < vis ? expf(__fsub_rn(row[j], m)) : 0.0f;
            row[j] = e;
            s += (double)e;
        }
        const float inv = (float)__ddiv_rn(1.0, at_block_sum(s, redd));
        for (size_t j = threadIdx.x; j < vis; j += blockDim.x) row[j] = __fmul_rn(row[j], inv); // own entries
    }
}

// In place: ds = scale * p * (dp - sum_j p_j dp_j) over the visible keys, 0 elsewhere (the score gradient,
// with the 1/sqrt(D) of the forward folded in as on the CPU).
extern "C" __global__ void attn_softmax_backward_f32(float *ds, const float *att, size_t rows, size_t t, int causal,
                                                     float scale) {
    __shared__ double redd[32];
    for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *g = ds + r * t;
        const float *p = att + r * t;
        const size_t vis = causal ? r % t + 1 : t;
        double s = 0.0;
        for (size_t j = threadIdx.x; j < vis; j += blockDim.x) s += (double)p[j] * (double)g[j];
        const float dot = (float)at_block_sum(s, redd);
        for (size_t j = threadIdx.x; j < t; j += blockDim.x)
            g[j] = j < vis ? __fmul_rn(__fmul_rn(scale, p[j]), __fsub_rn(g[j], dot)) : 0.0f;
    }
}
