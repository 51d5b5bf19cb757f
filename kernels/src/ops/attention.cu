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
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attn_softmax_f32(float *att, size_t rows, size_t t, int causal) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    attn_softmax<false>(att, rows, t, causal, redf, redd);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attn_softmax_warp_f32(float *att, size_t rows, size_t t, int causal) {
    attn_softmax<true>(att, rows, t, causal, nullptr, nullptr);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attn_softmax_backward_f32(float *ds, const float *att, size_t rows, size_t t, int causal,
                                                     float scale) {
    __shared__ double redd[32];
    attn_softmax_backward<false>(ds, att, rows, t, causal, scale, redd);
}
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attn_softmax_backward_warp_f32(float *ds, const float *att, size_t rows, size_t t,
                                                          int causal, float scale) {
    attn_softmax_backward<true>(ds, att, rows, t, causal, scale, nullptr);
}

// ---- Whole heads in one block (attention_cuda.rs's small path: T <= 64, D <= 64, and the backward's shared
// arrays fit). A block takes one (sample, head) of the fused projection qkv [B, T, 3, H, D] at a time
// (grid-stride), with K and V in shared memory (rows padded to D + 1 floats, so lanes reading different rows
// hit different banks); a warp takes a query row. The arithmetic is the unfused path's: a score is
// scale * (D-term dot product), the softmax as attn_softmax (max, expf, f64 sum, one reciprocal), outputs are
// T-term sums, each element one thread's chain in a fixed order (deterministic). Two launches per layer
// instead of 6 products per head (or per sample) and two row kernels.

#define AS_TMAX 64
#define AS_DMAX 64
#define AS_FWD_SHARED (2 * AS_TMAX * (AS_DMAX + 1))
#define AS_BWD_SHARED 9216

// qkv, out, dout and dqkv are stored in T (f32, or f16 / bf16 under autocast: loaded to f32, every output
// element rounded once); the probabilities att stay f32 (the backward reads them back).

// K and V of head (bi, hi) into shared memory: k[j * (d + 1) + c], v likewise.
template <typename T>
__device__ __forceinline__ void as_load_kv(float *k, float *v, const T *qkv, size_t bi, size_t hi, size_t t,
                                           size_t d, size_t hd) {
    for (size_t idx = threadIdx.x; idx < t * d; idx += blockDim.x) {
        const size_t j = idx / d, c = idx % d;
        const T *row = qkv + (bi * t + j) * 3 * hd + hi * d + c;
        k[j * (d + 1) + c] = ld(row, hd);
        v[j * (d + 1) + c] = ld(row, 2 * hd);
    }
}

// out [B, T, H*D] (heads merged), att [B, H, T, T] (the probabilities, saved for the backward).
template <typename T>
__device__ void attn_small_forward(T *out, float *att, const T *qkv, size_t b, size_t h, size_t t, size_t d, int causal,
                                   float scale, float *sm) {
    const size_t hd = h * d, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float *k = sm, *v = sm + t * (d + 1);
    for (size_t head = blockIdx.x; head < b * h; head += gridDim.x) {
        const size_t bi = head / h, hi = head % h;
        __syncthreads(); // the previous head's rows are done with K and V
        as_load_kv(k, v, qkv, bi, hi, t, d, hd);
        __syncthreads();
        for (size_t i = warp; i < t; i += warps) { // warp-uniform: every lane of a warp takes the same rows
            const T *q = qkv + (bi * t + i) * 3 * hd + hi * d;
            const size_t vis = causal ? i + 1 : t;
            // Lane `lane` holds keys lane and lane + 32.
            float s[2];
            float m = -__int_as_float(0x7f800000);
            for (int u = 0; u < 2; ++u) {
                const size_t j = lane + 32 * u;
                float acc = 0.0f;
                if (j < vis) {
                    for (size_t c = 0; c < d; ++c) acc = fmaf(ld(q, c), k[j * (d + 1) + c], acc);
                    acc = __fmul_rn(scale, acc);
                    m = fmaxf(m, acc);
                }
                s[u] = acc;
            }
            m = warp_max(m);
            double sum = 0.0;
            for (int u = 0; u < 2; ++u) {
                const size_t j = lane + 32 * u;
                s[u] = j < vis ? expf(__fsub_rn(s[u], m)) : 0.0f;
                sum += (double)s[u];
            }
            const float inv = (float)__ddiv_rn(1.0, warp_sum_f64(sum));
            float *arow = att + (head * t + i) * t;
            for (int u = 0; u < 2; ++u) {
                const size_t j = lane + 32 * u;
                s[u] = j < vis ? __fmul_rn(s[u], inv) : 0.0f;
                if (j < t) arow[j] = s[u];
            }
            // out[i, c] = sum_j p_j v[j, c], lane c (and c + 32); p_j comes from the lane holding it.
            float o[2] = {0.0f, 0.0f};
            for (size_t j = 0; j < vis; ++j) {
                const float pj = __shfl_sync(0xffffffffu, j < 32 ? s[0] : s[1], (int)(j & 31));
                for (int u = 0; u < 2; ++u) {
                    const size_t c = lane + 32 * u;
                    if (c < d) o[u] = fmaf(pj, v[j * (d + 1) + c], o[u]);
                }
            }
            T *orow = out + (bi * t + i) * hd + hi * d;
            for (int u = 0; u < 2; ++u) {
                const size_t c = lane + 32 * u;
                if (c < d) st(orow, c, o[u]);
            }
        }
    }
}

// dqkv [B, T, 3, H, D] (overwritten) from dout [B, T, H*D], qkv and the forward's att: dS = scale * P * (dP -
// rowsum(P dP)) with dP = dout v^T (a warp per row, into shared memory), then dq = dS k, dk = dS^T q,
// dv = P^T dout, a thread per output element.
template <typename T>
__device__ void attn_small_backward(T *dqkv, const T *dout, const T *qkv, const float *att, size_t b, size_t h, size_t t,
                                    size_t d, int causal, float scale, float *sm) {
    const size_t hd = h * d, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float *k = sm, *v = sm + t * (d + 1), *ds = sm + 2 * t * (d + 1); // ds[i * (t + 1) + j]
    for (size_t head = blockIdx.x; head < b * h; head += gridDim.x) {
        const size_t bi = head / h, hi = head % h;
        __syncthreads();
        as_load_kv(k, v, qkv, bi, hi, t, d, hd);
        __syncthreads();
        for (size_t i = warp; i < t; i += warps) {
            const T *go = dout + (bi * t + i) * hd + hi * d;
            const float *p = att + (head * t + i) * t;
            const size_t vis = causal ? i + 1 : t;
            float dp[2];
            double s = 0.0;
            for (int u = 0; u < 2; ++u) {
                const size_t j = lane + 32 * u;
                float acc = 0.0f;
                if (j < vis) {
                    for (size_t c = 0; c < d; ++c) acc = fmaf(ld(go, c), v[j * (d + 1) + c], acc);
                    s += (double)p[j] * (double)acc;
                }
                dp[u] = acc;
            }
            const float dot = (float)warp_sum_f64(s);
            for (int u = 0; u < 2; ++u) {
                const size_t j = lane + 32 * u;
                if (j < t) ds[i * (t + 1) + j] = j < vis ? __fmul_rn(__fmul_rn(scale, p[j]), __fsub_rn(dp[u], dot)) : 0.0f;
            }
        }
        __syncthreads();
        // Three [T, D] outputs: dq (part 0), dk (part 1), dv (part 2).
        for (size_t idx = threadIdx.x; idx < 3 * t * d; idx += blockDim.x) {
            const size_t part = idx / (t * d), r = (idx / d) % t, c = idx % d;
            float acc = 0.0f;
            if (part == 0) { // dq[r, c] = sum_j dS[r, j] k[j, c]
                for (size_t j = 0; j < t; ++j) acc = fmaf(ds[r * (t + 1) + j], k[j * (d + 1) + c], acc);
            } else if (part == 1) { // dk[r, c] = sum_i dS[i, r] q[i, c]
                const T *q = qkv + bi * t * 3 * hd + hi * d + c;
                for (size_t i = 0; i < t; ++i) acc = fmaf(ds[i * (t + 1) + r], ld(q, i * 3 * hd), acc);
            } else { // dv[r, c] = sum_i P[i, r] dout[i, c]
                const float *p = att + head * t * t + r;
                const T *go = dout + bi * t * hd + hi * d + c;
                for (size_t i = 0; i < t; ++i) acc = fmaf(p[i * t], ld(go, i * hd), acc);
            }
            st(dqkv, (bi * t + r) * 3 * hd + part * hd + hi * d + c, acc);
        }
    }
}

#define ATTN_SMALL(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attn_small_forward_##S(T *out, float *att, const T *qkv, size_t b, size_t h, size_t t, size_t d, int causal, float scale) { \
        __shared__ float sm[AS_FWD_SHARED]; \
        attn_small_forward(out, att, qkv, b, h, t, d, causal, scale, sm); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) attn_small_backward_##S(T *dqkv, const T *dout, const T *qkv, const float *att, size_t b, size_t h, size_t t, size_t d, int causal, float scale) { \
        __shared__ float sm[AS_BWD_SHARED]; \
        attn_small_backward(dqkv, dout, qkv, att, b, h, t, d, causal, scale, sm); \
    }
ATTN_SMALL(float, f32)
ATTN_SMALL(f16, f16)
ATTN_SMALL(bf16, bf16)
