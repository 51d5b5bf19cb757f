// Axis permutation as a strided gather; the CPU twin is ops/permute.rs. out is dense row-major with dims
// d.dims[0..rank]; out element with coordinates (c_0, ..., c_{rank-1}) reads inp[sum_a c_a * d.strides[a]].
// The input is stored in X and the output in Y (common.cuh's FOR_STORE_PAIRS): exact within one type,
// rounded on store between types, as a cast would.
struct PermDims {
    long long rank;
    long long dims[16];
    long long strides[16];
};

template <typename X, typename Y> __device__ void strided_gather(Y *out, const X *inp, size_t n, const PermDims &d) {
    FOR_EACH(o, n) {
        size_t rem = o, src = 0;
        for (int a = (int)d.rank - 1; a >= 0; --a) {
            const size_t dim = (size_t)d.dims[a];
            src += (rem % dim) * (size_t)d.strides[a];
            rem /= dim;
        }
        st(out, o, ld(inp, src));
    }
}

#define STRIDED_GATHER(X, XS, Y, YS) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) strided_gather_##XS##_##YS(Y *out, const X *inp, size_t n, PermDims d) { \
        strided_gather(out, inp, n, d);                                                                      \
    }
FOR_STORE_PAIRS(STRIDED_GATHER)
