// Element-wise sum and in-place accumulation; the CPU twin is ops/add.rs. Every buffer: [n].

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_forward_f32(float *out, const float *a, const float *b, size_t n) {
    FOR_EACH(i, n) out[i] = __fadd_rn(a[i], b[i]);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_assign_f32(float *dst, const float *src, size_t n) {
    FOR_EACH(i, n) dst[i] = __fadd_rn(dst[i], src[i]);
}
