// Embedding lookup and its backward; the CPU twin is ops/embedding.rs. ids: [n] (int64), table / dtable:
// [vocab, dim], out / dout: [n, dim].

// out[i, :] = table[ids[i], :]. An id outside [0, vocab) gives a NaN row (the CPU reports an error; the
// ids are range-checked at assembly, so this only makes a bug visible).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) embedding_forward_f32(float *out, const long long *ids, const float *table, size_t n,
                                                 size_t vocab, size_t dim) {
    FOR_EACH(e, n * dim) {
        const size_t i = e / dim, j = e % dim;
        const long long id = ids[i];
        out[e] = (id >= 0 && (unsigned long long)id < vocab) ? table[(size_t)id * dim + j] : __int_as_float(0x7fc00000);
    }
}

// dtable[ids[i], :] += dout[i, :] with atomicAdd (rows hit by several positions add in an unspecified
// order: equal to the CPU up to rounding). Out-of-range ids are skipped.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) embedding_backward_f32(float *dtable, const float *dout, const long long *ids, size_t n,
                                                  size_t vocab, size_t dim) {
    FOR_EACH(e, n * dim) {
        const size_t i = e / dim, j = e % dim;
        const long long id = ids[i];
        if (id >= 0 && (unsigned long long)id < vocab) atomicAdd(&dtable[(size_t)id * dim + j], dout[e]);
    }
}

// ids[i] = x[i] as a 64-bit integer, as Rust's `f32 as i64` (the host executor's conversion of float ids):
// truncation toward zero, saturation at the i64 range, NaN to 0.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) embedding_ids_from_f32(long long *ids, const float *x, size_t n) {
    FOR_EACH(i, n) {
        const float v = x[i];
        long long id;
        if (v != v) id = 0;
        else if (v >= 9223372036854775808.0f) id = 0x7fffffffffffffffLL;
        else if (v < -9223372036854775808.0f) id = -0x7fffffffffffffffLL - 1;
        else id = (long long)v;
        ids[i] = id;
    }
}
