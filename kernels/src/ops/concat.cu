// Strided block copy for concatenation along an axis; the CPU twin is ops/concat.rs. Copies `rows` runs of
// `blk` elements: dst[r * dst_ld + dst_off + j] = src[r * src_ld + src_off + j]. The source is stored in X
// and the destination in Y (common.cuh's FOR_STORE_PAIRS): a copy within one type is exact, and between
// types it rounds on store, as a cast would (a half value read into f32, or an f32 one rounded into the half
// a product would round it to).
template <typename X, typename Y>
__device__ void strided_copy(Y *dst, const X *src, size_t rows, size_t blk, size_t dst_ld, size_t dst_off,
                             size_t src_ld, size_t src_off) {
    FOR_EACH(e, rows * blk) {
        const size_t r = e / blk, j = e % blk;
        st(dst, r * dst_ld + dst_off + j, ld(src, r * src_ld + src_off + j));
    }
}

#define STRIDED_COPY(X, XS, Y, YS) \
    extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) strided_copy_##XS##_##YS(Y *dst, const X *src, size_t rows, size_t blk, size_t dst_ld, size_t dst_off, size_t src_ld, size_t src_off) { \
        strided_copy(dst, src, rows, blk, dst_ld, dst_off, src_ld, src_off);                                 \
    }
FOR_STORE_PAIRS(STRIDED_COPY)
