// Inverted dropout with the counter-based mask of ops/dropout.rs (its CPU twin): element i is kept iff
// splitmix64(key ^ i * INDEX_MUL), as a 53-bit uniform in [0, 1), is >= p, where key = splitmix64(seed) is
// computed on the host. splitmix64(x) = mix64(x + GOLDEN) with common.cuh's mix64. Kept elements are
// multiplied by scale = 1 / (1 - p) (rounded to f32 on the host, as the CPU does). out, inp: [n].
// out, inp stored in T (f32, or f16 / bf16 under autocast: the product rounded once on store).
template <typename T> __device__ void dropout(T *out, const T *inp, size_t n, unsigned long long key, double p, float scale) {
    FOR_EACH(i, n) {
        const unsigned long long bits = mix64((key ^ ((unsigned long long)i * 0xD6E8FEB86659FD93ull)) + 0x9E3779B97F4A7C15ull);
        const double u = (double)(bits >> 11) * (1.0 / 9007199254740992.0); // exact: a 53-bit integer / 2^53
        st(out, i, u >= p ? __fmul_rn(ld(inp, i), scale) : 0.0f);
    }
}

#define DROPOUT(T, S)                                                                                        \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) dropout_##S(T *out, const T *inp, size_t n, unsigned long long key, double p, float scale) { \
        dropout(out, inp, n, key, p, scale);                                                                 \
    }
DROPOUT(float, f32)
DROPOUT(f16, f16)
DROPOUT(bf16, bf16)
