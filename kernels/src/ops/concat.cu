// Strided block copy for concatenation along an axis; the CPU twin is ops/concat.rs. Copies `rows` runs of
// `blk` elements: dst[r * dst_ld + dst_off + j] = src[r * src_ld + src_off + j].
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) strided_copy_f32(float *dst, const float *src, size_t rows, size_t blk, size_t dst_ld,
                                            size_t dst_off, size_t src_ld, size_t src_off) {
    FOR_EACH(e, rows * blk) {
        const size_t r = e / blk, j = e % blk;
        dst[r * dst_ld + dst_off + j] = src[r * src_ld + src_off + j];
    }
}
