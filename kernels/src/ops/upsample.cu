// Nearest-neighbour 2-D upsampling by integer factors; the CPU twin is ops/upsample.rs.
// inp / dinp: [planes, h, w], out / dout: [planes, h*sh, w*sw]. Stored in T (f32, or f16 / bf16 under
// autocast: torch's upsampling keeps a half input's type); the backward's sums are f32, rounded once.

template <typename T>
__device__ void upsample_nearest_forward(T *out, const T *inp, size_t planes, size_t h, size_t w, size_t sh, size_t sw) {
    const size_t oh = h * sh, ow = w * sw;
    FOR_EACH(o, planes * oh * ow) {
        const size_t p = o / (oh * ow), y = (o / ow) % oh, x = o % ow;
        out[o] = inp[(p * h + y / sh) * w + x / sw];
    }
}

// dinp[p, i, j] = sum over the sh x sw block it was copied to, block row outer and column inner, from 0:
// the CPU's additions in the CPU's order (bitwise).
template <typename T>
__device__ void upsample_nearest_backward(T *dinp, const T *dout, size_t planes, size_t h, size_t w, size_t sh, size_t sw) {
    const size_t oh = h * sh, ow = w * sw;
    FOR_EACH(e, planes * h * w) {
        const size_t p = e / (h * w), i = (e / w) % h, j = e % w;
        const T *g = dout + (p * oh + i * sh) * ow + j * sw;
        float acc = 0.0f;
        for (size_t a = 0; a < sh; ++a)
            for (size_t b = 0; b < sw; ++b) acc = __fadd_rn(acc, ld(g, a * ow + b));
        st(dinp, e, acc);
    }
}

#define UPSAMPLE(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) upsample_nearest_forward_##S(T *out, const T *inp, size_t planes, size_t h, size_t w, size_t sh, size_t sw) { \
        upsample_nearest_forward(out, inp, planes, h, w, sh, sw);                                             \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) upsample_nearest_backward_##S(T *dinp, const T *dout, size_t planes, size_t h, size_t w, size_t sh, size_t sw) { \
        upsample_nearest_backward(dinp, dout, planes, h, w, sh, sw);                                          \
    }
UPSAMPLE(float, f32)
UPSAMPLE(f16, f16)
UPSAMPLE(bf16, bf16)
