// 2-D convolution helpers around the cuBLAS products (conv2d_cuda.rs); the CPU twin is ops/conv2d.rs.
// Layouts: inp / dinp [N, C, H, W], out / dout [N, OC, OH, OW], col [S, Kg, P] for S samples of one group
// (row k = (c*KH + ki)*KW + kj, column p = oy*OW + ox), P = OH*OW, Kg = Cg*KH*KW.

// The geometry, passed by value (conv2d_cuda.rs `ConvDims`, same field order).
struct ConvDims {
    long long c, h, w, oc, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cg, kg, p;
};

// col[s, k, p] = inp[s, g*Cg + c, oy*sh + ki*dh - ph, ox*sw + kj*dw - pw] (0 in the padding), for the S
// samples `inp` starts at and group g.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_im2col_f32(float *col, const float *inp, size_t samples, int g, ConvDims d) {
    const size_t per = (size_t)d.kg * d.p;
    FOR_EACH(i, samples * per) {
        const size_t s = i / per, r = i % per;
        const long long k = r / d.p, p = r % d.p;
        const long long c = k / (d.kh * d.kw), kk = k % (d.kh * d.kw);
        const long long ki = kk / d.kw, kj = kk % d.kw;
        const long long iy = (p / d.ow) * d.sh + ki * d.dh - d.ph;
        const long long ix = (p % d.ow) * d.sw + kj * d.dw - d.pw;
        float v = 0.0f;
        if (iy >= 0 && iy < d.h && ix >= 0 && ix < d.w)
            v = inp[((s * d.c + (size_t)g * d.cg + c) * d.h + iy) * d.w + ix];
        col[i] = v;
    }
}

// The adjoint of im2col as a gather (no atomics, overwrites): dinp[s, g*Cg + c, iy, ix] = sum of dcol over
// the taps (ki, kj) whose window position lands on (iy, ix).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_col2im_f32(float *dinp, const float *dcol, size_t samples, int g, ConvDims d) {
    const size_t per = (size_t)d.cg * d.h * d.w;
    FOR_EACH(i, samples * per) {
        const size_t s = i / per, r = i % per;
        const long long c = r / (d.h * d.w), iy = (r / d.w) % d.h, ix = r % d.w;
        float acc = 0.0f;
        for (long long ki = 0; ki < d.kh; ++ki) {
            const long long ty = iy + d.ph - ki * d.dh; // = oy * sh
            if (ty < 0 || ty % d.sh != 0 || ty / d.sh >= d.oh) continue;
            for (long long kj = 0; kj < d.kw; ++kj) {
                const long long tx = ix + d.pw - kj * d.dw;
                if (tx < 0 || tx % d.sw != 0 || tx / d.sw >= d.ow) continue;
                const long long k = (c * d.kh + ki) * d.kw + kj;
                acc += dcol[(s * d.kg + k) * d.p + (ty / d.sh) * d.ow + tx / d.sw];
            }
        }
        dinp[((s * d.c + (size_t)g * d.cg + c) * d.h + iy) * d.w + ix] = acc;
    }
}

// out[n, o, p] += bias[o] over all n*OC*P elements.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_bias_add_f32(float *out, const float *bias, size_t total, size_t oc, size_t p) {
    FOR_EACH(i, total) out[i] += bias[(i / p) % oc];
}

// dbias[o] += sum over n and p of dout[n, o, p]: one block per channel (grid-stride over channels), a
// fixed-order block reduction (deterministic).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_bias_grad_f32(float *dbias, const float *dout, size_t n, size_t oc, size_t p) {
    __shared__ float red[32];
    for (size_t o = blockIdx.x; o < oc; o += gridDim.x) {
        float acc = 0.0f;
        for (size_t i = threadIdx.x; i < n * p; i += blockDim.x) acc += dout[((i / p) * oc + o) * p + i % p];
        acc = block_sum(acc, red);
        if (threadIdx.x == 0) dbias[o] += acc;
    }
}

// dweight[e] += sum_i parts[i * len + e] over `items` per-sample weight-gradient products, in sample order
// (the same order for every launch geometry: deterministic).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_weight_grad_sum_f32(float *dweight, const float *parts, size_t items, size_t len) {
    FOR_EACH(e, len) {
        float acc = 0.0f;
        for (size_t i = 0; i < items; ++i) acc = __fadd_rn(acc, parts[i * len + e]);
        dweight[e] = __fadd_rn(dweight[e], acc);
    }
}
