// Element-wise activations, forward and backward; the CPU twins are ops/{relu,gelu,silu,tanh,sigmoid}.rs.
// `act` is the code of ops/activation.rs (0 relu, 1 gelu, 2 gelu_tanh, 3 tanh, 4 sigmoid, 5 silu); it is the
// same for every thread, so the switch does not diverge.
//
// y, x, dx, dy: [n]. Math in f32 whatever the storage type.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float act_forward(int act, float x) {
    switch (act) {
    case 0: return x > 0.0f ? x : 0.0f;
    case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 2: {
        float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    case 3: return tanhf(x);
    case 4: return sigmoidf_(x);
    default: return x * sigmoidf_(x);
    }
}

// d act / dx at x.
__device__ __forceinline__ float act_grad(int act, float x) {
    switch (act) {
    case 0: return x > 0.0f ? 1.0f : 0.0f;
    case 1: {
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        return cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
    }
    case 2: {
        float x2 = x * x;
        float u = 0.79788456080286536f * (x + 0.044715f * x2 * x);
        float du = 0.79788456080286536f * (1.0f + 3.0f * 0.044715f * x2);
        float t = tanhf(u);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    case 3: {
        float t = tanhf(x);
        return 1.0f - t * t;
    }
    case 4: {
        float s = sigmoidf_(x);
        return s * (1.0f - s);
    }
    default: {
        float s = sigmoidf_(x);
        return s * (1.0f + x * (1.0f - s));
    }
    }
}

template <typename T>
__device__ void activation_forward(T *y, const T *x, size_t n, int act) {
    map_rounds(n, [&](size_t i) { return ld(x, i); }, [&](size_t i, float v) { st(y, i, act_forward(act, v)); });
}

template <typename T>
__device__ void activation_backward(T *dx, const T *dy, const T *x, size_t n, int act) {
    map_rounds(
        n, [&](size_t i) { return Loaded2{ld(dy, i), ld(x, i)}; },
        [&](size_t i, Loaded2 v) {
            // relu passes the gradient through untouched (no multiply by 1), as the CPU does.
            const float g = v.a, xi = v.b;
            st(dx, i, act == 0 ? (xi > 0.0f ? g : 0.0f) : g * act_grad(act, xi));
        });
}

#define ACTIVATION(T, S)                                                                                    \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) activation_forward_##S(T *y, const T *x, size_t n, int act) {               \
        activation_forward(y, x, n, act);                                                                    \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) activation_backward_##S(T *dx, const T *dy, const T *x, size_t n, int act) { \
        activation_backward(dx, dy, x, n, act);                                                              \
    }
ACTIVATION(float, f32)
ACTIVATION(f16, f16)
ACTIVATION(bf16, bf16)
