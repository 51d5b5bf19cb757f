// Broadcast bias add over rows and its backward (column sums); the CPU twin is ops/bias_add.rs.
// out, dout: [b, n] row-major; bias, dbias: [n].

// out[i, j] += bias[j].
extern "C" __global__ void bias_add_forward_f32(float *out, const float *bias, size_t b, size_t n) {
    FOR_EACH(i, b * n) out[i] = __fadd_rn(out[i], bias[i % n]);
}

// dbias[j] += sum_i dout[i, j]: one thread per column sums the rows in order into a zero accumulator and
// adds once, exactly as the CPU (so the bits agree); neighbouring threads read neighbouring columns, so
// each row is read coalesced.
extern "C" __global__ void bias_add_backward_f32(float *dbias, const float *dout, size_t b, size_t n) {
    FOR_EACH(j, n) {
        float acc = 0.0f;
        for (size_t r = 0; r < b; ++r) acc = __fadd_rn(acc, dout[r * n + j]);
        dbias[j] = __fadd_rn(dbias[j], acc);
    }
}
