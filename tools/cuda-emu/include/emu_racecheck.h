// cuda-emu's race check: what the driver tells it (racecheck.cpp has the checker and the reasoning).
//
// The kernels of the racecheck build are compiled with `-fsanitize=thread`, which makes the compiler call
// `__tsan_read4(p)`, `__tsan_write8(p)`, ... before every memory access. Those functions are ours
// (racecheck.cpp), not ThreadSanitizer's runtime: they record, per launch, which CUDA thread (block, thread,
// barrier phase) read or wrote each byte of device and shared memory, and stop at the first two accesses that
// a GPU could run in either order. In the plain build nothing calls them (the instrumented kernels' constructor
// calls `__tsan_init`, which turns the check on) and every function here returns at once.
#pragma once

#include <cstddef>

#include "emu_kernel.h"
#include "emu_registry.h"

namespace emu::race {

/// Device memory `[p, p + size)` is a buffer accesses are checked against (cuMemAlloc); the rest of
/// `[zone_begin, zone_end)` around it is padding that no access may touch.
void track(const void *p, size_t size, const void *zone_begin, const void *zone_end);
/// The buffer at `p` is freed (cuMemFree): its records go. Freed by a stream operation (cuMemFreeAsync), it is
/// first checked for accesses of other streams that nothing orders before the free.
void untrack(const void *p);
/// A launch of `kernel` over `grid` x `block` starts: records of earlier launches no longer count. Whether it
/// is checked at all is sampled per launch shape (racecheck.cpp).
void begin_launch(const KernelEntry *kernel, Dim3 grid, Dim3 block);
/// Block `linear` (its index in launch order's numbering, x fastest) starts: barrier phase 0, fresh shared
/// memory records.
void begin_block(unsigned long long linear);
/// Every thread of the running block passed a `__syncthreads`: accesses after it are ordered after those
/// before it.
void barrier();
/// The launch is over.
void end_launch();
/// Whether the kernels are instrumented (the race-checking driver): only then are accesses recorded.
bool instrumented();
/// The running stream operation (a copy, a memset, a library's product) reads or writes `bytes` of device
/// memory at `p`: checked against the other streams' accesses (emu_order.h). Kernels' accesses come
/// through the instrumentation instead. Addresses outside device buffers are ignored.
void range(const void *p, size_t bytes, bool write);

} // namespace emu::race
