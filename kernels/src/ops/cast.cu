// AMP casts; the CPU twin is ops/cast.rs. Conversions between f32 and f16 / bf16 give the bits of the
// `half` crate's from_f32 / to_f32: round to nearest even, overflow to infinity, subnormals kept, and NaNs
// quieted with their payload truncated (f32 -> 16 bits) or widened (16 bits -> f32) exactly as `half` does
// (the hardware conversions would return a canonical NaN instead). Storage is the raw 16-bit pattern.
//
// y, x: [n].

__device__ __forceinline__ unsigned short f32_to_f16_bits(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)(((u >> 16) & 0x8000u) | 0x7e00u | ((u & 0x007fffffu) >> 13));
    return __half_as_ushort(__float2half_rn(x)); // cvt.rn: round to nearest even, exact for subnormals
}

__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
    if ((h & 0x7fffu) > 0x7c00u) return __uint_as_float(((h & 0x8000u) << 16) | 0x7fc00000u | ((h & 0x03ffu) << 13));
    return __half2float(__ushort_as_half(h)); // exact
}

// bf16 is the top half of an f32, so the rounding is integer arithmetic on the bits (as `half` does it).
__device__ __forceinline__ unsigned short f32_to_bf16_bits(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);
    const unsigned round_bit = 0x00008000u;
    const unsigned up = ((u & round_bit) != 0 && (u & (3u * round_bit - 1u)) != 0) ? 1u : 0u;
    return (unsigned short)((u >> 16) + up);
}

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short h) {
    const unsigned w = ((h & 0x7fffu) > 0x7f80u) ? (h | 0x0040u) : h;
    return __uint_as_float(w << 16);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) cast_f32_to_f16(unsigned short *y, const float *x, size_t n) {
    map_rounds(n, [&](size_t i) { return x[i]; }, [&](size_t i, float v) { y[i] = f32_to_f16_bits(v); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) cast_f16_to_f32(float *y, const unsigned short *x, size_t n) {
    map_rounds(n, [&](size_t i) { return x[i]; }, [&](size_t i, unsigned short v) { y[i] = f16_bits_to_f32(v); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) cast_f32_to_bf16(unsigned short *y, const float *x, size_t n) {
    map_rounds(n, [&](size_t i) { return x[i]; }, [&](size_t i, float v) { y[i] = f32_to_bf16_bits(v); });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) cast_bf16_to_f32(float *y, const unsigned short *x, size_t n) {
    map_rounds(n, [&](size_t i) { return x[i]; }, [&](size_t i, unsigned short v) { y[i] = bf16_bits_to_f32(v); });
}
