// Nearest-neighbour 2-D upsampling by integer factors; the CPU twin is ops/upsample.rs.
// inp / dinp: [planes, h, w], out / dout: [planes, h*sh, w*sw].

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) upsample_nearest_forward_f32(float *out, const float *inp, size_t planes, size_t h, size_t w,
                                                         size_t sh, size_t sw) {
    const size_t oh = h * sh, ow = w * sw;
    FOR_EACH(o, planes * oh * ow) {
        const size_t p = o / (oh * ow), y = (o / ow) % oh, x = o % ow;
        out[o] = inp[(p * h + y / sh) * w + x / sw];
    }
}

// dinp[p, i, j] = sum over the sh x sw block it was copied to, block row outer and column inner, from 0:
// the CPU's additions in the CPU's order (bitwise).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) upsample_nearest_backward_f32(float *dinp, const float *dout, size_t planes, size_t h,
                                                          size_t w, size_t sh, size_t sw) {
    const size_t oh = h * sh, ow = w * sw;
    FOR_EACH(e, planes * h * w) {
        const size_t p = e / (h * w), i = (e / w) % h, j = e % w;
        const float *g = dout + (p * oh + i * sh) * ow + j * sw;
        float acc = 0.0f;
        for (size_t a = 0; a < sh; ++a)
            for (size_t b = 0; b < sw; ++b) acc = __fadd_rn(acc, g[a * ow + b]);
        dinp[e] = acc;
    }
}
