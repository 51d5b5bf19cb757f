// 2-D convolution helpers around the cuBLAS products (conv2d_cuda.rs); the CPU twin is ops/conv2d.rs.
// Layouts: inp / dinp [N, C, H, W], out / dout [N, OC, OH, OW], col [S, Kg, P] for S samples of one group
// (row k = (c*KH + ki)*KW + kj, column p = oy*OW + ox), P = OH*OW, Kg = Cg*KH*KW.
// Activations and their gradients are stored in T (f32, or f16 / bf16 under autocast: loaded to f32, sums in
// f32, each stored value rounded once); bias and its gradient sums are f32. The column matrices are stored in
// the products' type C: an f32 input (the image) is rounded into half columns as im2col writes them, so the
// products read half operands without a cast of their own.

// The geometry, passed by value (conv2d_cuda.rs `ConvDims`, same field order).
struct ConvDims {
    long long c, h, w, oc, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cg, kg, p;
};

// col[s, k, p] = inp[s, g*Cg + c, oy*sh + ki*dh - ph, ox*sw + kj*dw - pw] (0 in the padding), for the S
// samples `inp` starts at and group g; a copy, rounded once when C is narrower than X.
template <typename X, typename C> __device__ void conv_im2col(C *col, const X *inp, size_t samples, int g, ConvDims d) {
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
            v = ld(inp, ((s * d.c + (size_t)g * d.cg + c) * d.h + iy) * d.w + ix);
        st(col, i, v);
    }
}

// The adjoint of im2col as a gather (no atomics, overwrites): dinp[s, g*Cg + c, iy, ix] = sum of dcol over
// the taps (ki, kj) whose window position lands on (iy, ix).
// dcol is f32 whatever T: the products write the column gradients unrounded, so each input gradient is rounded
// once, after its taps are summed.
template <typename T> __device__ void conv_col2im(T *dinp, const float *dcol, size_t samples, int g, ConvDims d) {
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
        st(dinp, ((s * d.c + (size_t)g * d.cg + c) * d.h + iy) * d.w + ix, acc);
    }
}

// out[n, o, p] += bias[o] over all n*OC*P elements.
template <typename T> __device__ void conv_bias_add(T *out, const float *bias, size_t total, size_t oc, size_t p) {
    FOR_EACH(i, total) st(out, i, ld(out, i) + bias[(i / p) % oc]);
}

// The bias gradient's first pass: sums[r] = sum_q dout[r * p + q] over the P pixels of each (sample, channel)
// row r < N*OC; conv2d_cuda.rs then adds these [N, OC] sums per channel with the column sums of bias_add.cu.
// A warp per row (P <= 1024) or a block per row, each in a fixed order: deterministic. (One block per channel
// over all N*P values, with a 64-bit division per element, left all but OC multiprocessors idle.)
template <bool WARP, typename T> __device__ void conv_bias_rowsum(float *sums, const T *dout, size_t rows, size_t p, float *red) {
    const RowGroup<WARP> g;
    for (size_t r = g.first(); r < rows; r += g.stride()) {
        const T *row = dout + r * p;
        float acc = 0.0f;
        for (size_t q = g.lane(); q < p; q += g.lanes()) acc = __fadd_rn(acc, ld(row, q));
        acc = WARP ? warp_sum(acc) : block_sum(acc, red);
        if (g.lane() == 0) sums[r] = acc;
    }
}
#define IM2COL(X, XS, C, CS) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_im2col_##XS##_##CS(C *col, const X *inp, size_t samples, int g, ConvDims d) { \
        conv_im2col(col, inp, samples, g, d); \
    }
FOR_STORE_PAIRS(IM2COL)
#define CONV(T, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_col2im_##S(T *dinp, const float *dcol, size_t samples, int g, ConvDims d) { \
        conv_col2im(dinp, dcol, samples, g, d); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_bias_add_##S(T *out, const float *bias, size_t total, size_t oc, size_t p) { \
        conv_bias_add(out, bias, total, oc, p); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_bias_rowsum_##S(float *sums, const T *dout, size_t rows, size_t p) { \
        __shared__ float red[32]; \
        conv_bias_rowsum<false>(sums, dout, rows, p, red); \
    } \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) conv_bias_rowsum_warp_##S(float *sums, const T *dout, size_t rows, size_t p) { \
        conv_bias_rowsum<true>(sums, dout, rows, p, nullptr); \
    }
CONV(float, f32)
CONV(f16, f16)
CONV(bf16, bf16)
