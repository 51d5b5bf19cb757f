// 2-D pooling over NCHW planes; the CPU twin is ops/pool.rs. inp / dinp: [planes, H, W], out / dout /
// argmax: [planes, OH, OW] with planes = N*C. Every kernel visits elements in the CPU's order and uses the
// CPU's f32 operations (_rn: no contraction), so the results are the CPU's bits. Backward passes are
// gathers (each input element sums the outputs that read it, in output order): no atomics, overwrite.

// The geometry by value (pool_cuda.rs `PoolDims`, same fields and order). Adaptive pools leave the
// window fields unused.
struct PoolDims {
    long long planes, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
};

// Window [lo, hi) of output o along one axis, clipped to the input (pool.rs `window`).
__device__ __forceinline__ void pool_window(long long o, long long s, long long pad, long long k, long long size,
                                            long long *start, long long *lo, long long *hi) {
    *start = o * s - pad;
    *lo = *start > 0 ? *start : 0;
    long long e = *start + k;
    *hi = e < size ? e : size;
}

// count_include_pad divisor along one axis (pool.rs `avg_divisor`).
__device__ __forceinline__ long long avg_divisor(long long start, long long k, long long size, long long pad) {
    long long e = start + k, lim = size + pad;
    return (e < lim ? e : lim) - start;
}

// Outputs o in [first, last] whose window (stride s, padding pad, size k) covers input i, clipped to [0, out).
__device__ __forceinline__ void covering(long long i, long long s, long long pad, long long k, long long out,
                                         long long *first, long long *last) {
    long long t = i + pad - k + 1; // o*s >= t
    *first = t <= 0 ? 0 : (t + s - 1) / s;
    long long l = (i + pad) / s; // o*s <= i + pad
    *last = l < out - 1 ? l : out - 1;
}

// Max pooling stores in T (f32, or f16 / bf16 under autocast: the maximum of the stored values is stored as it
// is, exactly; the backward's sums are f32, rounded once).
template <typename T> __device__ void max_pool_forward(T *out, unsigned int *argmax, const T *inp, PoolDims d) {
    FOR_EACH(i, d.planes * d.oh * d.ow) {
        const long long plane = i / (d.oh * d.ow), oy = (i / d.ow) % d.oh, ox = i % d.ow;
        long long s, y0, y1, x0, x1;
        pool_window(oy, d.sh, d.ph, d.kh, d.h, &s, &y0, &y1);
        pool_window(ox, d.sw, d.pw, d.kw, d.w, &s, &x0, &x1);
        const T *x = inp + plane * d.h * d.w;
        long long best_i = y0 * d.w + x0;
        float best = ld(x, best_i);
        for (long long iy = y0; iy < y1; ++iy)
            for (long long ix = x0; ix < x1; ++ix) {
                const long long j = iy * d.w + ix;
                const float v = ld(x, j);
                if (v > best || v != v) { // a NaN wins, as in PyTorch
                    best = v;
                    best_i = j;
                }
            }
        st(out, i, best);
        argmax[i] = (unsigned int)best_i;
    }
}

template <typename T> __device__ void max_pool_backward(T *dinp, const T *dout, const unsigned int *argmax, PoolDims d) {
    FOR_EACH(i, d.planes * d.h * d.w) {
        const long long plane = i / (d.h * d.w), iy = (i / d.w) % d.h, ix = i % d.w;
        const unsigned int self = (unsigned int)(iy * d.w + ix);
        long long oy0, oy1, ox0, ox1;
        covering(iy, d.sh, d.ph, d.kh, d.oh, &oy0, &oy1);
        covering(ix, d.sw, d.pw, d.kw, d.ow, &ox0, &ox1);
        const size_t base = (size_t)plane * d.oh * d.ow;
        float acc = 0.0f;
        for (long long oy = oy0; oy <= oy1; ++oy)
            for (long long ox = ox0; ox <= ox1; ++ox) {
                const size_t j = base + oy * d.ow + ox;
                if (argmax[j] == self) acc = __fadd_rn(acc, ld(dout, j));
            }
        st(dinp, i, acc);
    }
}

#define MAX_POOL(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) max_pool_forward_##S(T *out, unsigned int *argmax, const T *inp, PoolDims d) { \
        max_pool_forward(out, argmax, inp, d); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) max_pool_backward_##S(T *dinp, const T *dout, const unsigned int *argmax, PoolDims d) { \
        max_pool_backward(dinp, dout, argmax, d); \
    }
MAX_POOL(float, f32)
MAX_POOL(f16, f16)
MAX_POOL(bf16, bf16)

// The average pools: stored in T (torch's average pools keep a half input's type), summed in f32.
template <typename T> __device__ void avg_pool_forward(T *out, const T *inp, PoolDims d) {
    FOR_EACH(i, d.planes * d.oh * d.ow) {
        const long long plane = i / (d.oh * d.ow), oy = (i / d.ow) % d.oh, ox = i % d.ow;
        long long ys, y0, y1, xs, x0, x1;
        pool_window(oy, d.sh, d.ph, d.kh, d.h, &ys, &y0, &y1);
        pool_window(ox, d.sw, d.pw, d.kw, d.w, &xs, &x0, &x1);
        const T *x = inp + plane * d.h * d.w;
        float s = 0.0f;
        for (long long iy = y0; iy < y1; ++iy)
            for (long long ix = x0; ix < x1; ++ix) s = __fadd_rn(s, ld(x, iy * d.w + ix));
        const long long count = avg_divisor(ys, d.kh, d.h, d.ph) * avg_divisor(xs, d.kw, d.w, d.pw);
        st(out, i, __fdiv_rn(s, (float)count));
    }
}

template <typename T> __device__ void avg_pool_backward(T *dinp, const T *dout, PoolDims d) {
    FOR_EACH(i, d.planes * d.h * d.w) {
        const long long plane = i / (d.h * d.w), iy = (i / d.w) % d.h, ix = i % d.w;
        long long oy0, oy1, ox0, ox1;
        covering(iy, d.sh, d.ph, d.kh, d.oh, &oy0, &oy1);
        covering(ix, d.sw, d.pw, d.kw, d.ow, &ox0, &ox1);
        const size_t base = (size_t)plane * d.oh * d.ow;
        float acc = 0.0f;
        for (long long oy = oy0; oy <= oy1; ++oy) {
            long long ys, lo, hi;
            pool_window(oy, d.sh, d.ph, d.kh, d.h, &ys, &lo, &hi);
            for (long long ox = ox0; ox <= ox1; ++ox) {
                long long xs;
                pool_window(ox, d.sw, d.pw, d.kw, d.w, &xs, &lo, &hi);
                const long long count = avg_divisor(ys, d.kh, d.h, d.ph) * avg_divisor(xs, d.kw, d.w, d.pw);
                acc = __fadd_rn(acc, __fdiv_rn(ld(dout, base + oy * d.ow + ox), (float)count));
            }
        }
        st(dinp, i, acc);
    }
}

// Adaptive bin [floor(o*size/out), ceil((o+1)*size/out)) (pool.rs `adaptive_bin`).
__device__ __forceinline__ void adaptive_bin(long long o, long long size, long long out, long long *lo, long long *hi) {
    *lo = o * size / out;
    *hi = ((o + 1) * size + out - 1) / out;
}

template <typename T> __device__ void adaptive_avg_pool_forward(T *out, const T *inp, PoolDims d) {
    FOR_EACH(i, d.planes * d.oh * d.ow) {
        const long long plane = i / (d.oh * d.ow), oy = (i / d.ow) % d.oh, ox = i % d.ow;
        long long y0, y1, x0, x1;
        adaptive_bin(oy, d.h, d.oh, &y0, &y1);
        adaptive_bin(ox, d.w, d.ow, &x0, &x1);
        const T *x = inp + plane * d.h * d.w;
        float s = 0.0f;
        for (long long iy = y0; iy < y1; ++iy)
            for (long long ix = x0; ix < x1; ++ix) s = __fadd_rn(s, ld(x, iy * d.w + ix));
        st(out, i, __fdiv_rn(s, (float)((y1 - y0) * (x1 - x0))));
    }
}

template <typename T> __device__ void adaptive_avg_pool_backward(T *dinp, const T *dout, PoolDims d) {
    FOR_EACH(i, d.planes * d.h * d.w) {
        const long long plane = i / (d.h * d.w), iy = (i / d.w) % d.h, ix = i % d.w;
        const size_t base = (size_t)plane * d.oh * d.ow;
        float acc = 0.0f;
        for (long long oy = 0; oy < d.oh; ++oy) {
            long long y0, y1;
            adaptive_bin(oy, d.h, d.oh, &y0, &y1);
            if (iy < y0 || iy >= y1) continue;
            for (long long ox = 0; ox < d.ow; ++ox) {
                long long x0, x1;
                adaptive_bin(ox, d.w, d.ow, &x0, &x1);
                if (ix < x0 || ix >= x1) continue;
                const float area = (float)((y1 - y0) * (x1 - x0));
                acc = __fadd_rn(acc, __fdiv_rn(ld(dout, base + oy * d.ow + ox), area));
            }
        }
        st(dinp, i, acc);
    }
}

#define AVG_POOL(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) avg_pool_forward_##S(T *out, const T *inp, PoolDims d) { avg_pool_forward(out, inp, d); } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) avg_pool_backward_##S(T *dinp, const T *dout, PoolDims d) { avg_pool_backward(dinp, dout, d); } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) adaptive_avg_pool_forward_##S(T *out, const T *inp, PoolDims d) { adaptive_avg_pool_forward(out, inp, d); } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) adaptive_avg_pool_backward_##S(T *dinp, const T *dout, PoolDims d) { adaptive_avg_pool_backward(dinp, dout, d); }
AVG_POOL(float, f32)
AVG_POOL(f16, f16)
AVG_POOL(bf16, bf16)
