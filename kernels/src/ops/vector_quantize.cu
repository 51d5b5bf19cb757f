// Vector quantisation with the straight-through estimator; the CPU twin is ops/vector_quantize.rs.
// z, out, dz, dout: [n, d, p] (channels first); codebook, dcodebook: [k, d]; indices: [n*p]; counts: [k].
// Distances and gradients use the CPU's f32 operations in its order (_rn), so codes, outputs and gradients
// are the CPU's bits.
// Under autocast z and dz may be stored in half precision (X) and out and dout (Y) too, independently
// (common.cuh's FOR_STORE_PAIRS): values are loaded exactly into f32, the arithmetic is the f32 one above,
// and each stored value is rounded once. The statistics read the codebook rows (f32), not a rounded out.

// One thread per position: the nearest code by the direct sum of squares over d in ascending order (ties
// and NaN distances keep the smaller code, as on the CPU), its row gathered into out, its count bumped
// (integer atomics: exact in any order; counts is zeroed by the host first).
template <typename X, typename Y>
__device__ void vq_nearest(unsigned int *indices, unsigned int *counts, Y *out, const X *z, const float *codebook, size_t n,
                           size_t d, size_t p, size_t k) {
    FOR_EACH(row, n * p) {
        const size_t s = row / p, pos = row % p;
        const X *zs = z + s * d * p + pos;
        float best = 0.0f;
        unsigned int bi = 0;
        for (size_t c = 0; c < k; ++c) {
            const float *e = codebook + c * d;
            float dist = 0.0f;
            for (size_t j = 0; j < d; ++j) {
                const float t = __fsub_rn(ld(zs, j * p), e[j]);
                dist = __fadd_rn(dist, __fmul_rn(t, t));
            }
            if (c == 0 || dist < best) {
                best = dist;
                bi = (unsigned int)c;
            }
        }
        indices[row] = bi;
        atomicAdd(&counts[bi], 1u);
        for (size_t j = 0; j < d; ++j) st(out, s * d * p + j * p + pos, codebook[(size_t)bi * d + j]);
    }
}

// stats[0] = mean (z - e[k*])^2 (differences in f64, as the CPU), stats[1] = perplexity exp(-sum q ln q) of
// the counts; ONE block, fixed order (deterministic). Empty input: 0 and 1.
template <typename X>
__device__ void vq_stats(float *stats, const X *z, const float *codebook, const unsigned int *indices,
                         const unsigned int *counts, size_t d, size_t p, size_t m, size_t rows, size_t k, double *part,
                         double *ent) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double s = 0.0, h = 0.0;
    for (size_t i = threadIdx.x; i < m; i += blockDim.x) {
        const size_t n = i / (d * p), j = (i / p) % d, pos = i % p;
        const double t = (double)ld(z, i) - (double)codebook[(size_t)indices[n * p + pos] * d + j];
        s += t * t;
    }
    for (size_t c = threadIdx.x; c < k; c += blockDim.x)
        if (counts[c] > 0) {
            const double q = (double)counts[c] / (double)rows;
            h -= q * log(q);
        }
    for (int o = 16; o > 0; o >>= 1) {
        s += __shfl_xor_sync(0xffffffffu, s, o);
        h += __shfl_xor_sync(0xffffffffu, h, o);
    }
    if (lane == 0) {
        part[warp] = s;
        ent[warp] = h;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double ts = 0.0, th = 0.0;
        for (int w = 0; w < warps; ++w) {
            ts += part[w];
            th += ent[w];
        }
        stats[0] = m == 0 ? 0.0f : (float)(ts / (double)m);
        stats[1] = rows == 0 ? 1.0f : (float)exp(th);
    }
}

// The auxiliary losses' weight times the loss scale (the host's `weight * scale as f32`, then `* beta * 2/M`
// or `* 2/M` in that order): under f16 autocast the scale lives on the device.
__device__ __forceinline__ float vq_aux_weight(float weight, const double *loss_scale) {
    return __fmul_rn(weight, (float)loss_scale[0]);
}

// dz = dout + zscale * (z - e[k*]) (overwrites), zscale = weight * scale * beta * 2/M.
template <typename X, typename Y>
__device__ void vq_backward_dz(X *dz, const Y *dout, const X *z, const float *codebook, const unsigned int *indices, size_t n,
                               size_t d, size_t p, float weight, float beta, float two_over_m, const double *loss_scale) {
    const float zscale = __fmul_rn(__fmul_rn(vq_aux_weight(weight, loss_scale), beta), two_over_m);
    FOR_EACH(i, n * d * p) {
        const size_t s = i / (d * p), j = (i / p) % d, pos = i % p;
        const float e = codebook[(size_t)indices[s * p + pos] * d + j];
        st(dz, i, __fadd_rn(ld(dout, i), __fmul_rn(zscale, __fsub_rn(ld(z, i), e))));
    }
}

// dcodebook[c, j] += escale * (e[c, j] - z[n, j, p]) for every position assigned to code c, positions in
// order, added straight onto the gradient as the CPU does: one thread per codebook element. escale = weight *
// scale * 2/M.
template <typename X>
__device__ void vq_backward_codebook(float *dcodebook, const X *z, const float *codebook, const unsigned int *indices, size_t n,
                                     size_t d, size_t p, size_t k, float weight, float two_over_m, const double *loss_scale) {
    const float escale = __fmul_rn(vq_aux_weight(weight, loss_scale), two_over_m);
    FOR_EACH(e, k * d) {
        const size_t c = e / d, j = e % d;
        const float ev = codebook[e];
        float v = dcodebook[e];
        for (size_t row = 0; row < n * p; ++row) {
            if (indices[row] != (unsigned int)c) continue;
            const size_t s = row / p, pos = row % p;
            v = __fadd_rn(v, __fmul_rn(escale, __fsub_rn(ev, ld(z, s * d * p + j * p + pos))));
        }
        dcodebook[e] = v;
    }
}

#define VQ_PAIR(X, XS, Y, YS) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) vq_nearest_##XS##_##YS(unsigned int *indices, unsigned int *counts, Y *out, const X *z, const float *codebook, size_t n, size_t d, size_t p, size_t k) { \
        vq_nearest(indices, counts, out, z, codebook, n, d, p, k); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) vq_backward_dz_##XS##_##YS(X *dz, const Y *dout, const X *z, const float *codebook, const unsigned int *indices, size_t n, size_t d, size_t p, float weight, float beta, float two_over_m, const double *loss_scale) { \
        vq_backward_dz(dz, dout, z, codebook, indices, n, d, p, weight, beta, two_over_m, loss_scale); \
    }
FOR_STORE_PAIRS(VQ_PAIR)

#define VQ(X, XS) \
    extern "C" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) vq_stats_##XS(float *stats, const X *z, const float *codebook, const unsigned int *indices, const unsigned int *counts, size_t d, size_t p, size_t m, size_t rows, size_t k) { \
        __shared__ double part[32], ent[32]; \
        vq_stats(stats, z, codebook, indices, counts, d, p, m, rows, k, part, ent); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) vq_backward_codebook_##XS(float *dcodebook, const X *z, const float *codebook, const unsigned int *indices, size_t n, size_t d, size_t p, size_t k, float weight, float two_over_m, const double *loss_scale) { \
        vq_backward_codebook(dcodebook, z, codebook, indices, n, d, p, k, weight, two_over_m, loss_scale); \
    }
VQ(float, f32)
VQ(f16, f16)
VQ(bf16, bf16)
