// cuda-emu, kernel side: what our .cu sources use of CUDA C++ (built-in indices, barriers, warp shuffles,
// atomics, _rn intrinsics, f16 / bf16 storage types), defined for a host C++ compiler so the same sources run
// on the CPU under the emulated driver (driver.cpp). Every CUDA thread of a block is a fiber; blocks run one
// after another, so `__shared__` is a function-local static and atomics need no locking.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

namespace emu {
struct Dim3 {
    unsigned x, y, z;
};
/// Block barrier (`__syncthreads`): suspends the calling fiber until every live thread of the block arrives.
void sync_block();
/// Warp exchange: the calling lane publishes `bytes` bytes at `value`, waits for its warp, and receives the
/// same bytes of lane `src_lane` (0-31 within the warp) in `value`.
void shfl(void *value, int bytes, int src_lane);
/// The calling thread's linear index within its block.
unsigned linear_tid();
/// Race check (racecheck.cpp): the calling thread makes an atomic read-modify-write of `bytes` bytes at `p`.
/// Atomics do not race with each other, so their bodies are not instrumented as plain accesses.
void atomic_access(const void *p, int bytes);
} // namespace emu

extern emu::Dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
#define __launch_bounds__(...)

inline void __syncthreads() { emu::sync_block(); }

template <class T> inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    const int lane = (int)(emu::linear_tid() & 31u);
    int src = lane ^ lane_mask;
    if (src >= ((lane / width) + 1) * width) src = lane; // outside the lane's segment: own value, as CUDA
    emu::shfl(&v, (int)sizeof(T), src);
    return v;
}

template <class T> inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
    const int lane = (int)(emu::linear_tid() & 31u);
    emu::shfl(&v, (int)sizeof(T), (lane / width) * width + (src_lane % width));
    return v;
}

// Blocks run one at a time and their threads are fibers on one OS thread: a read-modify-write is atomic. The
// race check's instrumentation is off in these bodies (no_sanitize), which tell it of an atomic access instead.
#define EMU_ATOMIC __attribute__((no_sanitize("thread"))) inline
template <class T> EMU_ATOMIC T atomicAdd(T *p, T v) {
    emu::atomic_access(p, (int)sizeof(T));
    T old = *p;
    *p = old + v;
    return old;
}
template <class T> EMU_ATOMIC T atomicMax(T *p, T v) {
    emu::atomic_access(p, (int)sizeof(T));
    T old = *p;
    if (v > old) *p = v;
    return old;
}
template <class T> EMU_ATOMIC T atomicExch(T *p, T v) {
    emu::atomic_access(p, (int)sizeof(T));
    T old = *p;
    *p = v;
    return old;
}

// Round-to-nearest intrinsics: plain IEEE operations (the emulator is built with -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return sqrt(a); }
inline float __double2float_rn(double a) { return (float)a; }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
// CUDA's integer min / max overloads (for equal types, as the device code uses them).
template <typename T> inline T min(T a, T b) { return b < a ? b : a; }
template <typename T> inline T max(T a, T b) { return a < b ? b : a; }

inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline int __float_as_int(float f) {
    int u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
using std::isfinite;
using std::isinf;
using std::isnan;

// IEEE binary16 and bfloat16 storage types with round-to-nearest-even conversions.
struct __half {
    unsigned short x;
};
struct __nv_bfloat16 {
    unsigned short x;
};

inline __half __float2half_rn(float f) {
    // Round to nearest even in integer arithmetic (F. Giesen's float_to_half_fast3_rtne).
    unsigned u = __float_as_uint(f);
    const unsigned sign = u & 0x80000000u;
    u ^= sign;
    unsigned short o;
    if (u >= (127u + 16u) << 23) {
        o = u > 0x7f800000u ? 0x7e00 : 0x7c00;
    } else if (u < 113u << 23) {
        const float magic = __uint_as_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
        o = (unsigned short)(__float_as_uint(__uint_as_float(u) + magic) - __float_as_uint(magic));
    } else {
        const unsigned mant_odd = (u >> 13) & 1u;
        u += ((unsigned)(15 - 127) << 23) + 0xfffu;
        u += mant_odd;
        o = (unsigned short)(u >> 13);
    }
    return __half{(unsigned short)(o | (sign >> 16))};
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) {
    const unsigned shifted_exp = 0x7c00u << 13;
    unsigned o = (unsigned)(h.x & 0x7fffu) << 13;
    const unsigned exp = shifted_exp & o;
    o += (127u - 15u) << 23;
    if (exp == shifted_exp) {
        o += (128u - 16u) << 23;
    } else if (exp == 0) {
        o += 1u << 23;
        o = __float_as_uint(__uint_as_float(o) - __uint_as_float(113u << 23));
    }
    return __uint_as_float(o | ((unsigned)(h.x & 0x8000u) << 16));
}
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(unsigned short)((u >> 16) | 0x40u)};
    return __nv_bfloat16{(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.x << 16); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
