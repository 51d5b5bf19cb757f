// Row kernels of the unfused attention (attention_cuda.rs does the products with cuBLAS); the CPU twin is
// ops/attention.rs. att, ds: [B*H*T, T] score / probability rows; row r is query r % T of its head. With
// `causal` query i sees keys j <= i, and masked entries are exactly 0. A block per row, or a warp per row for
// short rows (grid-stride).

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

// A row's max / f64 sum over its group (common.cuh's RowGroup): warp shuffles, or block reductions.
template <bool WARP> __device__ __forceinline__ float at_row_max(float v, float *shared) {
    return WARP ? warp_max(v) : block_max(v, shared);
}
template <bool WARP> __device__ __forceinline__ double at_row_sum(double v, double *shared) {
    return WARP ? warp_sum_f64(v) : at_block_sum(v, shared);
}

// In place: att = softmax over the visible keys of each row (the scores are already scaled), 0 elsewhere.
template <bool WARP> __device__ void attn_softmax(float *att, size_t rows, size_t t, int causal, float *redf,
                                                  double *redd) {
    const RowGroup<WARP> g;
    for (size_t r = g.first(); r < rows; r += g.stride()) {
        float *row = att + r * t;
        const size_t vis = causal ? r % t + 1 : t;
        float m = -__int_as_float(0x7f800000);
        for (size_t j = g.lane(); j < vis; j += g.lanes()) m = fmaxf(m, row[j]);
        m = at_row_max<WARP>(m, redf);
        double s = 0.0;
        for (size_t j = g.lane(); j < t; j += g.lanes()) {
            const float e = j < vis ? expf(__fsub_rn(row[j], m)) : 0.0f;
            row[j] = e;
            s += (double)e;
        }
        const float inv = (float)__ddiv_rn(1.0, at_row_sum<WARP>(s, redd));
        for (size_t j = g.lane(); j < vis; j += g.lanes()) row[j] = __fmul_rn(row[j], inv); // own entries
    }
}

// In place: ds = scale * p * (dp - sum_j p_j dp_j) over the visible keys, 0 elsewhere (the score gradient,
// with the 1/sqrt(D) of the forward folded in as on the CPU).
template <bool WARP> __device__ void attn_softmax_backward(float *ds, const float *att, size_t rows, size_t t,
                                                           int causal, float scale, double *redd) {
    const RowGroup<WARP> grp;
    for (size_t r = grp.first(); r < rows; r += grp.stride()) {
        float *g = ds + r * t;
        const float *p = att + r * t;
        const size_t vis = causal ? r % t + 1 : t;
        double s = 0.0;
        for (size_t j = grp.lane(); j < vis; j += grp.lanes()) s += (double)p[j] * (double)g[j];
        const float dot = (float)at_row_sum<WARP>(s, redd);
        for (size_t j = grp.lane(); j < t; j += grp.lanes())
            g[j] = j < vis ? __fmul_rn(__fmul_rn(scale, p[j]), __fsub_rn(g[j], dot)) : 0.0f;
    }
}

// Entry points: a block per row, or (_warp) a warp per row for rows of up to 1024 keys (attention_cuda.rs picks).
extern "C" __global__ void attn_softmax_f32(float *att, size_t rows, size_t t, int causal) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    attn_softmax<false>(att, rows, t, causal, redf, redd);
}
extern "C" __global__ void attn_softmax_warp_f32(float *att, size_t rows, size_t t, int causal) {
    attn_softmax<true>(att, rows, t, causal, nullptr, nullptr);
}
extern "C" __global__ void attn_softmax_backward_f32(float *ds, const float *att, size_t rows, size_t t, int causal,
                                                     float scale) {
    __shared__ double redd[32];
    attn_softmax_backward<false>(ds, att, rows, t, causal, scale, redd);
}
extern "C" __global__ void attn_softmax_backward_warp_f32(float *ds, const float *att, size_t rows, size_t t,
                                                          int causal, float scale) {
    attn_softmax_backward<true>(ds, att, rows, t, causal, scale, nullptr);
}
