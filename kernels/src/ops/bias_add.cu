// Broadcast bias add over rows and its backward (column sums); the CPU twin is ops/bias_add.rs.
// out, dout: [b, n] row-major; bias, dbias: [n].

// The activations (out, dout) are stored in T (f32, or f16 / bf16 under autocast: loaded to f32, the sum
// rounded once on store); bias and dbias are f32 parameters and gradients.
// out[i, j] += bias[j].
template <typename T> __device__ void bias_add_forward(T *out, const float *bias, size_t b, size_t n) {
    FOR_EACH(i, b * n) st(out, i, __fadd_rn(ld(out, i), bias[i % n]));
}

// dbias[j] += sum_i dout[i, j] in two passes over a fixed grid (deterministic on every GPU, see
// column_phase_sum): pass 1 sums each chunk of rows per column, straight onto dbias when there is one chunk
// (`direct`), else into parts[chunk * n + j]; pass 2 adds the chunk sums in chunk order.
template <typename T>
__device__ void bias_grad_partials(float *dst, const T *dout, size_t b, size_t n, size_t chunk_rows, int direct) {
    __shared__ float red[COLUMN_PHASES][33];
    const size_t j = blockIdx.x * 32 + (threadIdx.x & 31);
    const size_t r0 = blockIdx.y * chunk_rows, r1 = min(b, r0 + chunk_rows);
    float acc = 0.0f;
    if (j < n)
        for (size_t r = r0 + (threadIdx.x >> 5); r < r1; r += COLUMN_PHASES) acc = __fadd_rn(acc, ld(dout, r * n + j));
    const float s = column_phase_sum(acc, red);
    if ((threadIdx.x >> 5) == 0 && j < n) {
        if (direct) dst[j] = __fadd_rn(dst[j], s);
        else dst[blockIdx.y * n + j] = s;
    }
}

// dbias[j] += sum_c parts[c * n + j] over `chunks` chunk sums, in chunk order.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bias_grad_sum_f32(float *dbias, const float *parts, size_t chunks, size_t n) {
    FOR_EACH(j, n) {
        float acc = 0.0f;
        for (size_t c = 0; c < chunks; ++c) acc = __fadd_rn(acc, parts[c * n + j]);
        dbias[j] = __fadd_rn(dbias[j], acc);
    }
}

#define BIAS_ADD(T, S)                                                                                       \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bias_add_forward_##S(T *out, const float *bias, size_t b, size_t n) { \
        bias_add_forward(out, bias, b, n);                                                                   \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) bias_grad_partials_##S(float *dst, const T *dout, size_t b, size_t n, size_t chunk_rows, int direct) { \
        bias_grad_partials(dst, dout, b, n, chunk_rows, direct);                                             \
    }
BIAS_ADD(float, f32)
BIAS_ADD(f16, f16)
BIAS_ADD(bf16, bf16)
