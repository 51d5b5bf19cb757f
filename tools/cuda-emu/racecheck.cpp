// cuda-emu's race check: two accesses to the same byte of device or shared memory, within one launch, at
// least one a write and not both atomics, that nothing orders.
//
// The emulator runs a block's threads one after another between barriers, and blocks one after another, so a
// kernel that races on a GPU usually still gives the right answer here: a thread's read-modify-write is never
// interrupted, and a value written by an earlier thread or block is simply there. Reversing the order
// (CUDA_EMU_REVERSE=1) shows only the races whose outcome depends on that order. This check shows all of
// them, whatever the values, by recording who touched each byte:
//
// - Different blocks of one launch are never ordered (the engine's kernels use no grid-wide synchronisation):
//   any conflicting pair across blocks is a race.
// - Two threads of one block are ordered only by a `__syncthreads` between their accesses. Every live thread
//   of a block passes a barrier together, so the block's barrier count (its "phase") orders them: accesses in
//   different phases are ordered, in the same phase they are not. Warp shuffles exchange registers and
//   order no memory here (the sources use no `__syncwarp`).
// - Atomics (atomicAdd, atomicMax, atomicExch) do not race with each other; an atomic and a plain access do.
//
// Records live in a shadow of every device buffer (mapped when the buffer is allocated; pages that are never
// touched cost nothing) and of the running kernel's shared memory, one record per 2-byte granule (the
// smallest element the sources store is an f16 / bf16). A record keeps the last writer and the newest reads,
// which is enough because accesses arrive in a block's phase order and blocks do not interleave.
//
// Phases are numbered by one counter over the whole process, advanced at every block's start and every
// barrier. So one number tells all a record needs: a phase before the launch's first is a previous launch's
// (void: launches on a stream are ordered), one before the running block's first is another block's of this
// launch (unordered), the running phase is unordered with other threads, any other is ordered. Nothing is
// cleared between launches or blocks.
//
// The hooks are the ThreadSanitizer ABI that `-fsanitize=thread` compiles calls to; this file provides it
// instead of ThreadSanitizer's runtime, which is never linked. Accesses outside device buffers and shared
// memory (the kernel's own stack, its bound arguments) are not device memory and are ignored. Since the hooks
// see every access's address and size, they also stop at two faults x86 forgives: a scalar access not aligned
// to its size, and an access to the padding around a buffer. Which launches are checked is sampled per launch
// shape (`sampled`).

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "emu_order.h"
#include "emu_racecheck.h"

// The built-in indices' section (threadIdx, blockIdx, blockDim, gridDim; driver.cpp), bounds from the linker.
extern "C" char __start_emu_builtins[], __stop_emu_builtins[];

namespace emu::race {
namespace {

// One 2-byte granule's accesses. A field whose phase is before the launch's first (the block's, for shared
// memory) is void.
struct Record {
    uint32_t write_phase;  // the last write
    uint32_t read_phase;   // the newest read group: plain reads in one phase
    uint32_t prior_phase;  // a plain read by another block than the newest group's
    uint16_t write_thread; // thread | ATOMIC
    uint16_t read_thread;  // the newest group's first reader
    uint16_t read_second;  // another thread that read in the newest group | SECOND (0: none)
    uint16_t prior_thread;
    // Across streams (order.cpp): the operation that last wrote the granule, the newest that read it since,
    // and an older reader that the newest is not ordered after (0: none).
    order::Op op_write, op_read, op_read_other;
};
constexpr uint16_t THREAD = 0x03ff; // a thread's linear index in its block (at most 1024 threads)
constexpr uint16_t ATOMIC = 0x0400; // the last write was an atomic
constexpr uint16_t SECOND = 0x0800; // read_second holds a thread
constexpr size_t GRANULE = 2;

// A device buffer and its shadow (one Record per granule).
struct Buffer {
    uintptr_t begin, end;
    uintptr_t zone_begin, zone_end; // the poisoned bytes around it, its own: any access there is out of bounds
    Record *shadow;
};

bool kernels_instrumented = false;
bool active = false;          // a launch of instrumented kernels is running
const KernelEntry *kernel;    // the running kernel
uint32_t phase = 0;           // the running phase (0: none yet; zeroed records are void)
uint32_t launch_first = 1;    // the running launch's first phase
uint32_t block_first = 1;     // the running block's first phase
std::vector<uint32_t> phase_block; // the block (linear) of each phase of the launch, from launch_first

std::mutex buffers_lock;      // cuMemAlloc / cuMemFree run on other threads than a launch
std::map<uintptr_t, Buffer> buffers;
uint64_t buffers_version = 0; // counts changes to `buffers`
// The buffers as the running launch sees them, by address (a launch's arguments were bound when it was
// issued, so every buffer it can reach is here), the few it touched last (a kernel's arguments), and the last
// gap between buffers an access fell in (the emulator's variables such as threadIdx). Only the launch's
// thread uses them, unlocked.
std::vector<Buffer> snapshot;
uint64_t snapshot_version = ~0ull;
constexpr unsigned RECENT = 8;
Buffer recent[RECENT];
unsigned recent_next = 0;
uintptr_t gap_begin = 0, gap_end = 0;

std::vector<Record> shared_shadow;

Dim3 thread_of(unsigned t) {
    return Dim3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}
Dim3 block_of(uint32_t b) {
    return Dim3{b % gridDim.x, b / gridDim.x % gridDim.y, b / gridDim.x / gridDim.y};
}

// The granule's record for device address `p`, or null when `p` is in no device buffer; `where` is the buffer
// (also when null is returned for an address in a buffer's zone: out of bounds).
inline Record *global_record(uintptr_t p, const Buffer **where) {
    for (const Buffer &b : recent)
        if (p - b.begin < b.end - b.begin) {
            *where = &b;
            return &b.shadow[(p - b.begin) / GRANULE];
        }
    if (p - gap_begin < gap_end - gap_begin) return nullptr;
    size_t lo = 0, hi = snapshot.size(); // the first zone beginning after p is at `lo`
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (snapshot[mid].zone_begin <= p) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0 || p >= snapshot[lo - 1].zone_end) {
        gap_begin = lo == 0 ? 0 : snapshot[lo - 1].zone_end;
        gap_end = lo == snapshot.size() ? UINTPTR_MAX : snapshot[lo].zone_begin;
        return nullptr;
    }
    const Buffer &z = snapshot[lo - 1];
    if (p - z.begin >= z.end - z.begin) {
        *where = &z;
        return nullptr;
    }
    Buffer &b = recent[recent_next++ % RECENT];
    b = z;
    *where = &b;
    return &b.shadow[(p - b.begin) / GRANULE];
}

size_t shadow_bytes(size_t size) { return (size / GRANULE + 1) * sizeof(Record); }

enum Kind { READ, WRITE, ATOMIC_RMW };

// Stops the run: "cuda-emu: <prefix>kernel K (source): block (b) thread (t) <verb> " and the rest.
[[noreturn]] __attribute__((noinline, format(printf, 3, 4))) void stop(const char *prefix, Kind kind,
                                                                      const char *rest, ...) {
    const Dim3 b = block_of(phase_block[phase - launch_first]), t = thread_of(linear_tid());
    fprintf(stderr, "cuda-emu: %skernel %s (%s): block (%u,%u,%u) thread (%u,%u,%u) %s ", prefix, kernel->name,
            kernel->source, b.x, b.y, b.z, t.x, t.y, t.z,
            kind == READ ? "reads" : kind == WRITE ? "writes" : "atomically updates");
    va_list ap;
    va_start(ap, rest);
    vfprintf(stderr, rest, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    abort();
}

// Where `p` is, for a message: `buffer` is null for shared memory.
std::string place(uintptr_t p, const Buffer *buffer) {
    char text[160];
    if (buffer)
        snprintf(text, sizeof text, "byte %zu of a %zu-byte device buffer", (size_t)(p - buffer->begin),
                 (size_t)(buffer->end - buffer->begin));
    else
        snprintf(text, sizeof text, "byte %zu of the source's __shared__ memory",
                 (size_t)(p - (uintptr_t)kernel->shared_begin));
    return text;
}

[[noreturn]] void report(Kind kind, uintptr_t p, const Buffer *buffer, uint32_t other_phase, unsigned other_thread,
                         const char *other_what) {
    const Dim3 ob = block_of(phase_block[other_phase - launch_first]), ot = thread_of(other_thread);
    stop("race in ", kind, "%s, which block (%u,%u,%u) thread (%u,%u,%u) %s %s (nothing orders the two on a GPU)",
         place(p, buffer).c_str(), ob.x, ob.y, ob.z, ot.x, ot.y, ot.z, other_what,
         other_phase < block_first ? "in the same launch" : "with no __syncthreads between");
}

// One access by thread `t` in the running phase to the granule `r` at `p`; `first` is the first phase whose
// records count (the launch's for device memory, the block's for shared memory).
inline void check(Record &r, uint32_t first, Kind kind, unsigned t, uintptr_t p, const Buffer *buffer) {
    if (r.write_phase >= first) {
        const unsigned w = r.write_thread & THREAD;
        const bool unordered = r.write_phase < block_first || (r.write_phase == phase && w != t);
        if (unordered && !(kind == ATOMIC_RMW && (r.write_thread & ATOMIC)))
            report(kind, p, buffer, r.write_phase, w, (r.write_thread & ATOMIC) ? "atomically updated" : "wrote");
    }
    if (kind == READ) {
        if (r.read_phase != phase) {
            // A new read group. The old one, if another block's in this launch, is kept as the prior reader.
            if (r.read_phase >= first && r.read_phase < block_first) {
                r.prior_phase = r.read_phase;
                r.prior_thread = r.read_thread;
            }
            r.read_phase = phase;
            r.read_thread = (uint16_t)t;
            r.read_second = 0;
        } else if (r.read_thread != t && !r.read_second) {
            r.read_second = (uint16_t)(t | SECOND);
        }
        return;
    }
    if (r.read_phase >= first) {
        if (r.read_phase < block_first) report(kind, p, buffer, r.read_phase, r.read_thread, "read");
        // The newest group is this block's, so a prior reader of this launch is another block's.
        if (r.prior_phase >= first) report(kind, p, buffer, r.prior_phase, r.prior_thread, "read");
        if (r.read_phase == phase) {
            if (r.read_thread != t) report(kind, p, buffer, phase, r.read_thread, "read");
            if (r.read_second) report(kind, p, buffer, phase, r.read_second & THREAD, "read");
        }
    }
    r.write_phase = phase;
    r.write_thread = (uint16_t)(t | (kind == ATOMIC_RMW ? ATOMIC : 0));
}

// Two operations on different streams touched one granule, at least one writing, and nothing orders them
// (order.cpp): on a GPU they may run at the same time. `other` is the earlier one, `what` its access.
[[noreturn]] __attribute__((noinline)) void stream_race(Kind kind, uintptr_t p, const Buffer *buffer, order::Op other,
                                                       const char *what) {
    std::string who = order::describe(order::current());
    if (active) { // a kernel's access: which thread
        const Dim3 b = block_of(phase_block[phase - launch_first]), t = thread_of(linear_tid());
        char at[96];
        snprintf(at, sizeof at, ", block (%u,%u,%u) thread (%u,%u,%u),", b.x, b.y, b.z, t.x, t.y, t.z);
        who += at;
    }
    fprintf(stderr,
            "cuda-emu: race between streams: %s %s %s, which %s %s: nothing orders the two on a GPU (record an "
            "event after the first and make the second's stream wait for it, or synchronize between them)\n",
            who.c_str(), kind == READ ? "reads" : "writes", place(p, buffer).c_str(), order::describe(other).c_str(),
            what);
    fflush(stderr);
    abort();
}

// `order::before_current` for the running operation, remembered: one launch meets few earlier operations (the
// writers and readers of its buffers) at millions of accesses, and the answer cannot change while it runs.
struct OrderedCache {
    order::Op me = 0;
    order::Op op[16] = {};
    bool before[16] = {};
} ordered_cache;

inline bool ordered(order::Op a, order::Op me) {
    if (ordered_cache.me != me) ordered_cache = OrderedCache{me};
    const unsigned slot = a & 15u;
    if (ordered_cache.op[slot] != a) {
        ordered_cache.op[slot] = a;
        ordered_cache.before[slot] = order::before_current(a);
    }
    return ordered_cache.before[slot];
}

// One access by the running stream operation (a kernel's, a copy's, a library's) to the granule `r` at `p`,
// checked against the other streams' operations that touched it before. Within one operation the launch
// check above decides.
inline void check_streams(Record &r, order::Op me, Kind kind, uintptr_t p, const Buffer *buffer) {
    if (r.op_write && r.op_write != me && !ordered(r.op_write, me)) stream_race(kind, p, buffer, r.op_write, "wrote");
    if (kind == READ) {
        if (r.op_read != me) {
            // A reader the new one is not ordered after may still race with a later write: keep it.
            if (r.op_read && !ordered(r.op_read, me)) r.op_read_other = r.op_read;
            r.op_read = me;
        }
        return;
    }
    if (r.op_read && r.op_read != me && !ordered(r.op_read, me)) stream_race(kind, p, buffer, r.op_read, "read");
    if (r.op_read_other && r.op_read_other != me && !ordered(r.op_read_other, me))
        stream_race(kind, p, buffer, r.op_read_other, "read");
    // Whatever is ordered after this write is ordered after those reads.
    r.op_write = me;
    r.op_read = r.op_read_other = 0;
}

// A GPU requires every access of a scalar type to be aligned to its size, and faults on one that is not
// (CUDA_ERROR_MISALIGNED_ADDRESS); x86 does not care, so the emulator says it. `buffer` is null for shared
// memory.
[[noreturn]] void misaligned(Kind kind, uintptr_t p, size_t bytes, const Buffer *buffer) {
    stop("", kind, "%zu bytes at %s, not aligned to %zu (a GPU faults: CUDA_ERROR_MISALIGNED_ADDRESS)", bytes,
         place(p, buffer).c_str(), bytes);
}

// An access outside a buffer but next to it (the driver pads every allocation with poisoned bytes up to its
// guard pages): a GPU may not fault there, but the access reads or overwrites what is not the kernel's. The
// plain driver faults only at the guard pages; here the first byte out is caught.
[[noreturn]] void out_of_bounds(Kind kind, uintptr_t p, size_t bytes, const Buffer *b) {
    if (p < b->begin)
        stop("", kind, "%zu bytes %zu bytes before the start of a %zu-byte device buffer (out of bounds)", bytes,
             (size_t)(b->begin - p), (size_t)(b->end - b->begin));
    stop("", kind, "%zu bytes at byte %zu, past the end of a %zu-byte device buffer (out of bounds)", bytes,
         (size_t)(p - b->begin), (size_t)(b->end - b->begin));
}

// One access of `bytes` at `address`; `aligned` when the compiler emitted it as a naturally aligned access
// (the `__tsan_readN` hooks, atomics), which a GPU would fault on if it were not.
inline void access(const void *address, size_t bytes, Kind kind, bool aligned) {
    const uintptr_t p = (uintptr_t)address;
    if (p - (uintptr_t)__start_emu_builtins < (uintptr_t)(__stop_emu_builtins - __start_emu_builtins)) return;
    const uintptr_t shared_begin = (uintptr_t)kernel->shared_begin;
    if (p - shared_begin < (uintptr_t)kernel->shared_end - shared_begin) {
        if (aligned && (p & (bytes - 1))) misaligned(kind, p, bytes, nullptr);
        const unsigned t = linear_tid();
        const uintptr_t end = (uintptr_t)kernel->shared_end;
        for (uintptr_t q = p & ~(uintptr_t)(GRANULE - 1); q < p + bytes && q < end; q += GRANULE)
            check(shared_shadow[(q - shared_begin) / GRANULE], block_first, kind, t, q, nullptr);
        return;
    }
    const Buffer *buffer = nullptr;
    Record *r = global_record(p, &buffer);
    if (!r) {
        if (buffer) out_of_bounds(kind, p, bytes, buffer);
        return;
    }
    if (p + bytes > buffer->end) out_of_bounds(kind, p, bytes, buffer);
    if (aligned && (p & (bytes - 1))) misaligned(kind, p, bytes, buffer);
    const unsigned t = linear_tid();
    const order::Op me = order::current();
    // Buffers start 16-byte aligned, so granules are aligned in them; an access never spans two buffers.
    for (uintptr_t q = p & ~(uintptr_t)(GRANULE - 1); q < p + bytes; q += GRANULE, ++r) {
        check(*r, launch_first, kind, t, q, buffer);
        check_streams(*r, me, kind, q, buffer);
    }
}

// Starts a new phase of the running block.
void next_phase(uint32_t block) {
    if (phase == UINT32_MAX) {
        fprintf(stderr, "cuda-emu racecheck: more than 2^32 phases in one process\n");
        abort();
    }
    ++phase;
    phase_block.push_back(block);
}

} // namespace

void track(const void *p, size_t size, const void *zone_begin, const void *zone_end) {
    if (!kernels_instrumented) return;
    // Zero pages (phase 0: before every launch), only the touched ones ever backed.
    void *m = mmap(nullptr, shadow_bytes(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "cuda-emu racecheck: cannot map a shadow for a buffer of %zu bytes\n", size);
        abort();
    }
    std::lock_guard<std::mutex> g(buffers_lock);
    buffers[(uintptr_t)p] = Buffer{(uintptr_t)p, (uintptr_t)p + size, (uintptr_t)zone_begin, (uintptr_t)zone_end,
                                   (Record *)m};
    ++buffers_version;
}

namespace {

// A buffer freed by a stream operation (cuMemFreeAsync) while an access of another stream is not ordered
// before the free: on a GPU the stream-ordered allocator may hand the memory to a new allocation while that
// access still runs. Only the shadow's resident pages can hold records, so the others are skipped.
void check_free(const Buffer &b) {
    const order::Op me = order::current();
    const size_t granules = (b.end - b.begin) / GRANULE + 1, page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t bytes = shadow_bytes(b.end - b.begin), pages = (bytes + page - 1) / page;
    std::vector<unsigned char> resident(pages);
    if (mincore(b.shadow, bytes, resident.data()) != 0) resident.assign(pages, 1);
    for (size_t k = 0; k < granules; ++k) {
        if (!(resident[k * sizeof(Record) / page] & 1)) continue;
        const Record &r = b.shadow[k];
        for (const auto &[op, what] : {std::pair{r.op_write, "wrote"}, {r.op_read, "read"}, {r.op_read_other, "read"}}) {
            if (!op || op == me || order::before_current(op)) continue;
            fprintf(stderr,
                    "cuda-emu: race between streams: %s frees a %zu-byte device buffer whose byte %zu %s %s: nothing "
                    "orders the two on a GPU (the memory may be reused while the other stream still uses it)\n",
                    order::describe(me).c_str(), (size_t)(b.end - b.begin), k * GRANULE, order::describe(op).c_str(),
                    what);
            fflush(stderr);
            abort();
        }
    }
}

} // namespace

void untrack(const void *p) {
    std::lock_guard<std::mutex> g(buffers_lock);
    auto it = buffers.find((uintptr_t)p);
    if (it == buffers.end()) return;
    if (order::current()) check_free(it->second);
    munmap(it->second.shadow, shadow_bytes(it->second.end - it->second.begin));
    buffers.erase(it);
    ++buffers_version;
}

bool instrumented() { return kernels_instrumented; }

namespace {
bool checked_occurrence(uint64_t n);

// Whether the running stream operation's declared ranges (a copy's, a memset's, a library's) are checked:
// sampled per site as launches are, the site being what the operation is and its first range (a memset of the
// gradients, one product's first operand column), decided at that first range. Every declared byte costs a
// record update, and a step's memsets and products declare whole buffers.
bool range_sampled(order::Op me, const void *p, size_t bytes) {
    static order::Op decided_op = 0;
    static bool decided = false;
    if (me != decided_op) {
        static std::map<std::tuple<const char *, const void *, size_t>, uint64_t> sites;
        decided_op = me;
        decided = checked_occurrence(sites[{order::what(me), p, bytes}]++);
    }
    return decided;
}
} // namespace

void range(const void *p, size_t bytes, bool write) {
    if (!kernels_instrumented || bytes == 0 || !order::current()) return;
    if (!range_sampled(order::current(), p, bytes)) return;
    Buffer b;
    {
        std::lock_guard<std::mutex> g(buffers_lock);
        auto it = buffers.upper_bound((uintptr_t)p);
        if (it == buffers.begin()) return;
        b = std::prev(it)->second;
    }
    const uintptr_t begin = (uintptr_t)p;
    if (begin < b.begin || begin >= b.end) return; // not device memory: the driver checked the range already
    const uintptr_t end = std::min(begin + bytes, b.end);
    const order::Op me = order::current();
    Record *r = &b.shadow[(begin - b.begin) / GRANULE];
    for (uintptr_t q = begin & ~(uintptr_t)(GRANULE - 1); q < end; q += GRANULE, ++r)
        check_streams(*r, me, write ? WRITE : READ, q, &b);
}

namespace {

// Whether the `n`-th (from 0) occurrence of something is checked. A race is a property of the kernel and its
// launch shape (or of a copy's site) far more than of the data, and a training run repeats the same work
// thousands of times: each is checked at its first FULL occurrences and then at every SAMPLE-th, which keeps
// a whole run's check within a small factor of an unchecked one. CUDA_EMU_RACECHECK_ALL=1 checks everything.
bool checked_occurrence(uint64_t n) {
    static const bool all = [] {
        const char *v = getenv("CUDA_EMU_RACECHECK_ALL");
        return v && v[0] == '1';
    }();
    constexpr uint64_t FULL = 8, SAMPLE = 32;
    return all || n < FULL || n % SAMPLE == 0;
}

// Whether this launch is checked, per (kernel, grid, block).
bool sampled(const KernelEntry *k, Dim3 grid, Dim3 block) {
    static std::map<std::tuple<const KernelEntry *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned>,
                    uint64_t>
        launches;
    return checked_occurrence(launches[{k, grid.x, grid.y, grid.z, block.x, block.y, block.z}]++);
}

} // namespace

void begin_launch(const KernelEntry *k, Dim3 grid, Dim3 block) {
    if (!kernels_instrumented || !sampled(k, grid, block)) return;
    kernel = k;
    {
        std::lock_guard<std::mutex> g(buffers_lock);
        if (snapshot_version != buffers_version) {
            snapshot.clear();
            for (const auto &[begin, b] : buffers) snapshot.push_back(b);
            snapshot_version = buffers_version;
        }
    }
    for (Buffer &b : recent) b = Buffer{0, 0, 0, 0, nullptr}; // a buffer may have been freed since
    gap_begin = gap_end = 0;
    const size_t shared = (size_t)(k->shared_end - k->shared_begin);
    if (shared_shadow.size() < shared / GRANULE + 1) shared_shadow.resize(shared / GRANULE + 1);
    phase_block.clear();
    launch_first = phase + 1;
    active = true;
}

void begin_block(unsigned long long linear) {
    if (!active) return;
    next_phase((uint32_t)linear);
    block_first = phase;
}

void barrier() {
    if (active) next_phase(phase_block.back());
}

void end_launch() { active = false; }

} // namespace emu::race

namespace emu {
void atomic_access(const void *p, int bytes) {
    if (race::active) race::access(p, (size_t)bytes, race::ATOMIC_RMW, true);
}
} // namespace emu

// ---- the ThreadSanitizer ABI that -fsanitize=thread compiles calls to --------------------------------------

using emu::race::access;
using emu::race::active;
using emu::race::READ;
using emu::race::WRITE;

#define EMU_TSAN_ACCESS(N)                                                                                       \
    void __tsan_read##N(void *p) {                                                                                \
        if (active) access(p, N, READ, true);                                                                     \
    }                                                                                                             \
    void __tsan_write##N(void *p) {                                                                               \
        if (active) access(p, N, WRITE, true);                                                                    \
    }                                                                                                             \
    void __tsan_unaligned_read##N(void *p) {                                                                      \
        if (active) access(p, N, READ, false);                                                                    \
    }                                                                                                             \
    void __tsan_unaligned_write##N(void *p) {                                                                     \
        if (active) access(p, N, WRITE, false);                                                                   \
    }

extern "C" {
void __tsan_init() { emu::race::kernels_instrumented = true; }
void __tsan_func_entry(void *) {}
void __tsan_func_exit() {}
EMU_TSAN_ACCESS(1)
EMU_TSAN_ACCESS(2)
EMU_TSAN_ACCESS(4)
EMU_TSAN_ACCESS(8)
EMU_TSAN_ACCESS(16)
void __tsan_read_range(void *p, unsigned long n) {
    if (active) access(p, n, READ, false);
}
void __tsan_write_range(void *p, unsigned long n) {
    if (active) access(p, n, WRITE, false);
}
void __tsan_vptr_update(void **, void *) {}
void __tsan_vptr_read(void **) {}
}
