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


// Mixed storage (autocast's type promotion: a half value added to an f32 one gives f32, as a residual stream
// kept f32 receives a half branch): each operand loaded in its own type, the f32 sum stored in Y's.
template <typename A, typename B, typename Y> __device__ void add_mixed(Y *out, const A *a, const B *b, size_t n) {
    map_rounds(n, [&](size_t i) { return Loaded2{ld(a, i), ld(b, i)}; }, [&](size_t i, Loaded2 v) { st(out, i, __fadd_rn(v.a, v.b)); });
}

// dst (stored in D) += src (stored in S): a half value's gradient receiving an f32 share.
template <typename D, typename S> __device__ void add_assign_mixed(D *dst, const S *src, size_t n) {
    map_rounds(n, [&](size_t i) { return Loaded2{ld(dst, i), ld(src, i)}; }, [&](size_t i, Loaded2 v) { st(dst, i, __fadd_rn(v.a, v.b)); });
}

#define ADD_MIXED(H, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_mixed_f32_##S##_f32(float *out, const float *a, const H *b, size_t n) { add_mixed(out, a, b, n); } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_mixed_##S##_f32_f32(float *out, const H *a, const float *b, size_t n) { add_mixed(out, a, b, n); } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_mixed_##S##_##S##_f32(float *out, const H *a, const H *b, size_t n) { add_mixed(out, a, b, n); } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) add_assign_##S##_f32(H *dst, const float *src, size_t n) { add_assign_mixed(dst, src, n); }
ADD_MIXED(f16, f16)
ADD_MIXED(bf16, bf16)
