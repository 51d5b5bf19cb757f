// Prepended to every kernel source (compile.rs). Loads and stores convert through float so one template
// body serves f32, f16 and bf16 tensors; arithmetic and accumulation are always f32.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef __half f16;
typedef __nv_bfloat16 bf16;

// The most threads a block of each kernel has (launch.rs: BLOCK, and ONE_BLOCK for the one-block sums). Every
// kernel declares its bound with __launch_bounds__: ptxas then keeps its registers within what such a block may
// use (64 per thread at 1024 threads), so a launch can never fail for want of registers on a real GPU, and a
// launch with a bigger block is refused (cuda-emu checks every launch against the bound).
#define BLOCK_THREADS 256
#define ONE_BLOCK_THREADS 1024

__device__ __forceinline__ float ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const f16 *p, size_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float ld(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(f16 *p, size_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void st(bf16 *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Instantiates M(X, XS, Y, YS) for each (input, output) storage pair an op converting between types serves:
// both f32, or one or both in one half type (a value's type, its name in entry points). f16 beside bf16 is
// never planned. store.rs's `pick_pair` lists the same pairs in the same order.
#define FOR_STORE_PAIRS(M)                                                                                    \
    M(float, f32, float, f32)                                                                                 \
    M(float, f32, f16, f16)                                                                                   \
    M(f16, f16, float, f32)                                                                                   \
    M(f16, f16, f16, f16)                                                                                     \
    M(float, f32, bf16, bf16)                                                                                 \
    M(bf16, bf16, float, f32)                                                                                 \
    M(bf16, bf16, bf16, bf16)

// A grid-stride loop over [0, n): launches size the grid to the device, not to n (launch.rs).
#define FOR_EACH(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)(n); i += (size_t)blockDim.x * gridDim.x)

// The memory-bound element-wise kernels' loop: grid-stride, in rounds of MAP_UNROLL elements per thread whose
// loads (`load(i)`, returning what element i reads) are all issued before the round's first store (`store(i,
// loaded)`). A plain grid-stride loop has one load per thread in flight: at full occupancy about 1 MiB of f32
// on an H100, no more than its bandwidth times its memory latency (Little's law), and less once a kernel's
// registers cut its occupancy, so the loop runs at the edge of stalling on memory; four in flight leave it
// room. Each element keeps its own arithmetic, so the results are the plain loop's bits. Element i's loads may only meet element i's stores (in-place updates),
// never another element's.
#define MAP_UNROLL 4
template <typename Load, typename Store>
__device__ __forceinline__ void map_rounds(size_t n, Load load, Store store) {
    const size_t stride = (size_t)blockDim.x * gridDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i + (MAP_UNROLL - 1) * stride < n; i += MAP_UNROLL * stride) {
        decltype(load(i)) v[MAP_UNROLL];
#pragma unroll
        for (int k = 0; k < MAP_UNROLL; ++k) v[k] = load(i + k * stride);
#pragma unroll
        for (int k = 0; k < MAP_UNROLL; ++k) store(i + k * stride, v[k]);
    }
    for (; i < n; i += stride) store(i, load(i));
}

// Two loaded values of one element (map_rounds' `load` for binary ops).
struct Loaded2 {
    float a, b;
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum of every thread's `acc` over one block in a fixed order: each warp's by shuffles, then thread 0 adds
// the warps' sums in warp order (the same bits every run, no atomics). The result is valid in thread 0 only;
// `part` holds at least one double per warp. The one-block losses (MSE, L1, cosine) end with it.
__device__ __forceinline__ double ordered_block_sum_f64(double acc, double *part) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    acc = warp_sum_f64(acc);
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    double total = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < warps; ++w) total += part[w];
    return total;
}

// The threads that share one row of a row kernel: a warp per row (WARP, for short rows: a block of 256
// threads then takes 8 rows) or the whole block. Every loop over rows is uniform over the group, so its
// shuffles and barriers are reached by all of it.
template <bool WARP> struct RowGroup {
    __device__ __forceinline__ size_t lanes() const { return WARP ? 32 : blockDim.x; }
    __device__ __forceinline__ size_t lane() const { return WARP ? (threadIdx.x & 31) : threadIdx.x; }
    __device__ __forceinline__ size_t first() const {
        return WARP ? (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5) : blockIdx.x;
    }
    __device__ __forceinline__ size_t stride() const { return WARP ? (size_t)gridDim.x * (blockDim.x >> 5) : gridDim.x; }
};

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `shared` holds 32 floats. Block size: a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(v);
}

// Max over the block; every thread gets the result. `shared` holds 32 floats.
__device__ __forceinline__ float block_max(float v, float *shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : -__int_as_float(0x7f800000); // -inf (NVRTC has no INFINITY macro)
    return warp_max(v);
}

// SplitMix64's finaliser: the counter-based hash the dropout masks are built from (as ops/dropout.rs).
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// One parameter's range of an arena and its step coefficients (cuda/segments.rs).
struct Segment {
    unsigned long long start, end;
    float c[12];
    unsigned int flags, pad;
};

// The segment holding element i, or nullptr (a frozen parameter). `segs` is sorted by start.
__device__ __forceinline__ const Segment *find_segment(const Segment *segs, int nsegs, size_t i) {
    int lo = 0, hi = nsegs - 1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1;
        if (i < segs[mid].start) hi = mid - 1;
        else if (i >= segs[mid].end) lo = mid + 1;
        else return &segs[mid];
    }
    return nullptr;
}

// Column sums over [rows, cols] in a fixed order (cuda/launch.rs `column_grid`): block (x, c) covers columns
// 32x .. 32x+31 and the rows of chunk c; thread t takes column 32x + t % 32 and every 8th row of the chunk
// from phase t / 32. COLUMN_PHASES partial sums per column meet here and are added in phase order; the
// result is valid in the threads of phase 0. Every thread of the block must call it. `red`: shared
// [COLUMN_PHASES][33]. Block size: 32 * COLUMN_PHASES.
#define COLUMN_PHASES 8
template <typename T>
__device__ __forceinline__ T column_phase_sum(T v, T (*red)[33]) {
    const int col = threadIdx.x & 31, phase = threadIdx.x >> 5;
    red[phase][col] = v;
    __syncthreads();
    T s = red[0][col];
    for (int k = 1; k < COLUMN_PHASES; ++k) s += red[k][col];
    return s;
}
