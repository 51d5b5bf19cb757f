// Axis permutation as a strided gather; the CPU twin is ops/permute.rs. out is dense row-major with dims
// d.dims[0..rank]; out element with coordinates (c_0, ..., c_{rank-1}) reads inp[sum_a c_a * d.strides[a]].
struct PermDims {
    long long rank;
    long long dims[16];
    long long strides[16];
};

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) strided_gather_f32(float *out, const float *inp, size_t n, PermDims d) {
    FOR_EACH(o, n) {
        size_t rem = o, src = 0;
        for (int a = (int)d.rank - 1; a >= 0; --a) {
            const size_t dim = (size_t)d.dims[a];
            src += (rem % dim) * (size_t)d.strides[a];
            rem /= dim;
        }
        out[o] = inp[src];
    }
}
