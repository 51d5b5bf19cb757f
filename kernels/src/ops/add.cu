// Element-wise sum and in-place accumulation; the CPU twin is ops/add.rs. Every buffer: [n].

// Stored in T (f32, or f16 / bf16 under autocast: the f32 sum rounded once on store).

template <typename T> __device__ void add_forward(T *out, const T *a, const T *b, size_t n) {
    map_rounds(n, [&](size_t i) { return Loaded2{ld(a, i), ld(b, i)}; }, [&](size_t i, Loaded2 v) { st(out, i, __fadd_rn(v.a, v.b)); });
}

template <typename T> __device__ void add_assign(T *dst, const T *src, size_t n) {
    map_rounds(n, [&](size_t i) { return Loaded2{ld(dst, i), ld(src, i)}; }, [&](size_t i, Loaded2 v) { st(dst, i, __fadd_rn(v.a, v.b)); });
}

#define ADD(T, S)                                                                                            \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_forward_##S(T *out, const T *a, const T *b, size_t n) { \
        add_forward(out, a, b, n);                                                                           \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_assign_##S(T *dst, const T *src, size_t n) { \
        add_assign(dst, src, n);                                                                             \
    }
ADD(float, f32)
ADD(f16, f16)
ADD(bf16, bf16)
