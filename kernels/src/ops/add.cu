// Element-wise sum and in-place accumulation; the CPU twin is ops/add.rs. Every buffer: [n].

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_forward_f32(float *out, const float *a, const float *b, size_t n) {
    map_rounds(n, [&](size_t i) { return Loaded2{a[i], b[i]}; }, [&](size_t i, Loaded2 v) { out[i] = __fadd_rn(v.a, v.b); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_assign_f32(float *dst, const float *src, size_t n) {
    map_rounds(n, [&](size_t i) { return Loaded2{dst[i], src[i]}; }, [&](size_t i, Loaded2 v) { dst[i] = __fadd_rn(v.a, v.b); });
}
