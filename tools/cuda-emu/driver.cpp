// cuda-emu: the subset of the CUDA driver API that cudarc calls for the engine, run on the CPU.
//
// Built as libcuda.so.1 (build.sh), it stands in for the NVIDIA driver when its folder is first on
// LD_LIBRARY_PATH, so the engine's CUDA path (probe, context, streams, NVRTC-compiled modules, launches,
// copies, events) runs end to end on a machine without a GPU. Kernels are the engine's own .cu sources
// compiled for the host (gen_kernels.py): a loaded module is matched to its source by the entry points in
// its PTX, and a launch runs the source's C++ twin block after block, each block's threads as fibers that
// switch at barriers and warp shuffles. A stream's work is queued and runs only when something waits for it
// (see "streams"), so a missing dependency between streams shows as stale data. What it checks that a GPU
// would not report as clearly: launch geometry limits, barriers reached by only part of a block, shuffles
// reading an exited lane, and accesses outside an allocation (each allocation sits between guard pages; fresh
// memory is filled with 0xff bytes, NaN as f32).
//
// With the kernels built instrumented (build.sh's racecheck driver), racecheck.cpp also reports every pair
// of accesses within a launch that a GPU could run in either order (race::* calls below tell it of buffers,
// launches, blocks and barriers).
//
// The same driver also reports every pair of accesses on two streams that nothing orders (an event wait or a
// host synchronisation; emu_order.h tracks them): order::* calls below tell it of streams, events and waits.
//
// What it cannot check: the PTX itself (NVRTC still compiles it; CI assembles it with ptxas) and timing.

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "emu_kernel.h"
#include "emu_order.h"
#include "emu_racecheck.h"
#include "emu_registry.h"
#include "emu_stream.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;

enum : CUresult {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    NO_BINARY_FOR_GPU = 209,
    INVALID_IMAGE = 200,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    LAUNCH_OUT_OF_RESOURCES = 701,
    NOT_SUPPORTED = 801,
};

// The built-in indices, in a section of their own so the race check skips them by one range test
// (racecheck.cpp): kernels read them more often than anything else.
#define EMU_BUILTIN __attribute__((section("emu_builtins")))
EMU_BUILTIN emu::Dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

[[noreturn]] static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

// ---- fibers ----------------------------------------------------------------------------------------------

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

// Switching fibers: on x86-64 a few instructions that save the callee-saved registers on the old stack
// and restore them from the new one (swapcontext would also save the signal mask, a system call per
// switch); elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void emu_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
struct Context {
    void *sp;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

struct Fiber {
    Context ctx;
    State state;
    Dim3 index;             // threadIdx while this fiber runs
    unsigned char value[8]; // a shuffle's operand, then its result
    int bytes;
    int src_lane;
};

// Fiber stacks: 32 KiB each, their tops staggered by 64-byte steps so that 256 fibers' frames do not all
// fall into the same cache sets.
static const size_t STACK = 32 * 1024;
static const int MAX_THREADS = 1024;
static char *stacks;               // MAX_THREADS stacks, mapped once
static Fiber fibers[MAX_THREADS];
static Context scheduler;
static int current = -1;           // the running fiber, -1 outside a fiber-mode block
static bool running_kernel = false;
static const KernelEntry *kernel;  // the kernel running now (for messages)
static const std::function<void()> *kernel_call; // it, bound to its launch's arguments

static Dim3 thread_index(unsigned t) {
    return Dim3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}

unsigned linear_tid() {
    return current >= 0 ? (unsigned)current : threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

static unsigned block_threads; // threads of the block running now

// CUDA_EMU_REVERSE=1: a block's threads (between barriers) and a grid's blocks run in descending order. A GPU
// promises no order, and a kernel that reads another thread's or block's write without a barrier (or a
// stream order) between them gets the value in one of the two orders only: running the GPU tests both ways
// turns such races into wrong results.
// Read at every launch (cheap next to a grid), so a test may set it between launches.
static bool reverse = false;
static bool reverse_order() {
    const char *v = getenv("CUDA_EMU_REVERSE");
    return v && *v && strcmp(v, "0") != 0;
}
// The thread that runs at position `k` of a pass over the block's `n` threads.
static unsigned thread_at(unsigned k, unsigned n) { return reverse ? n - 1 - k : k; }
static unsigned position_of(unsigned t, unsigned n) { return reverse ? n - 1 - t : t; }

static void switch_to(Context &save, Context &load) {
#if defined(__x86_64__)
    emu_switch(&save.sp, load.sp);
#else
    swapcontext(&save.uc, &load.uc);
#endif
}

// Leaves the running fiber (whose state the caller has set) for the next runnable fiber of this pass, or
// for the scheduler once the pass is over: one switch per fiber visited, not two.
static void yield_fiber() {
    const int from = current;
    for (unsigned k = position_of((unsigned)from, block_threads) + 1; k < block_threads; ++k) {
        const unsigned t = thread_at(k, block_threads);
        if (fibers[t].state != RUNNABLE) continue;
        current = (int)t;
        threadIdx = fibers[t].index;
        switch_to(fibers[from].ctx, fibers[t].ctx);
        return;
    }
    current = -1;
    switch_to(fibers[from].ctx, scheduler);
}

[[noreturn]] static void fiber_main() {
    (*kernel_call)();
    fibers[current].state = DONE;
    yield_fiber(); // never resumed
    abort();
}

// A fresh fiber on `stack`: its first switch-in enters fiber_main.
static void start_fiber(Fiber &f, char *stack, unsigned t) {
#if defined(__x86_64__)
    void **top = (void **)(((uintptr_t)(stack + STACK - (t % 61) * 64)) & ~(uintptr_t)15);
    *--top = nullptr;                    // fiber_main's return address: never used
    *--top = (void *)&fiber_main;        // popped by emu_switch's ret
    for (int r = 0; r < 6; ++r) *--top = nullptr; // rbp, rbx, r12-r15
    f.ctx.sp = top;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = stack;
    f.ctx.uc.uc_stack.ss_size = STACK - (t % 61) * 64;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, (void (*)())fiber_main, 0);
#endif
}

static void suspend(State s) {
    if (current < 0)
        fail("kernel %s (%s) reached a barrier or shuffle, but its source was classified as barrier-free; "
             "fix gen_kernels.py's SYNC pattern",
             kernel->name, kernel->source);
    fibers[current].state = s;
    yield_fiber();
}

void sync_block() { suspend(AT_BLOCK_BARRIER); }

void shfl(void *value, int bytes, int src_lane) {
    Fiber &f = fibers[current];
    memcpy(f.value, value, (size_t)bytes);
    f.bytes = bytes;
    f.src_lane = src_lane;
    suspend(AT_WARP_BARRIER);
    memcpy(value, f.value, (size_t)bytes);
}

static void run_block_plain(unsigned n) {
    for (unsigned k = 0; k < n; ++k) {
        threadIdx = thread_index(thread_at(k, n));
        (*kernel_call)();
    }
}

static void run_block_fibers(unsigned n) {
    if (!stacks) {
        stacks = (char *)mmap(nullptr, STACK * MAX_THREADS, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (stacks == MAP_FAILED) fail("cannot map fiber stacks");
    }
    block_threads = n;
    for (unsigned t = 0; t < n; ++t) {
        start_fiber(fibers[t], stacks + STACK * t, t);
        fibers[t].state = RUNNABLE;
        fibers[t].index = thread_index(t);
    }
    const unsigned warps = (n + 31) / 32;
    for (;;) {
        // One pass: the first runnable fiber runs, and each hands over to the next (yield_fiber).
        for (unsigned k = 0; k < n; ++k) {
            const unsigned t = thread_at(k, n);
            if (fibers[t].state != RUNNABLE) continue;
            current = (int)t;
            threadIdx = fibers[t].index;
            switch_to(scheduler, fibers[t].ctx);
            break;
        }
        current = -1;
        unsigned done = 0, at_block = 0;
        for (unsigned t = 0; t < n; ++t) {
            done += fibers[t].state == DONE;
            at_block += fibers[t].state == AT_BLOCK_BARRIER;
        }
        if (done == n) return;
        bool released = false;
        for (unsigned w = 0; w < warps; ++w) {
            const unsigned lo = w * 32, hi = lo + 32 < n ? lo + 32 : n;
            bool all = true, any = false;
            for (unsigned t = lo; t < hi; ++t) {
                if (fibers[t].state == DONE) continue;
                any = true;
                all = all && fibers[t].state == AT_WARP_BARRIER;
            }
            if (!any || !all) continue;
            unsigned char result[32][8];
            for (unsigned t = lo; t < hi; ++t) {
                if (fibers[t].state == DONE) continue;
                const unsigned src = lo + (unsigned)fibers[t].src_lane;
                if (src >= hi || fibers[src].state != AT_WARP_BARRIER || fibers[src].bytes != fibers[t].bytes)
                    fail("kernel %s (%s), block (%u,%u,%u): thread %u shuffles from lane %d, which has exited or "
                         "is not at the same shuffle",
                         kernel->name, kernel->source, blockIdx.x, blockIdx.y, blockIdx.z, t, fibers[t].src_lane);
                memcpy(result[t - lo], fibers[src].value, 8);
            }
            for (unsigned t = lo; t < hi; ++t) {
                if (fibers[t].state == DONE) continue;
                memcpy(fibers[t].value, result[t - lo], 8);
                fibers[t].state = RUNNABLE;
            }
            released = true;
        }
        if (released) continue;
        if (at_block == n - done) {
            // CUDA requires every thread of the block to reach the barrier; one that returned early makes
            // it undefined (it hangs on some GPUs).
            if (done > 0)
                fail("kernel %s (%s), block (%u,%u,%u): %u threads wait at __syncthreads after %u others of the "
                     "block returned (a barrier under a branch that not every thread takes)",
                     kernel->name, kernel->source, blockIdx.x, blockIdx.y, blockIdx.z, at_block, done);
            for (unsigned t = 0; t < n; ++t)
                if (fibers[t].state == AT_BLOCK_BARRIER) fibers[t].state = RUNNABLE;
            race::barrier();
            continue;
        }
        fail("kernel %s (%s), block (%u,%u,%u): deadlock: %u threads wait at __syncthreads while others wait at "
             "a warp shuffle (a barrier or shuffle under a branch that not every thread takes)",
             kernel->name, kernel->source, blockIdx.x, blockIdx.y, blockIdx.z, at_block);
    }
}

// ---- memory ----------------------------------------------------------------------------------------------

struct Allocation {
    char *base;
    size_t mapped;
    size_t size;
};
static std::mutex memory_lock;
static std::map<CUdeviceptr, Allocation> allocations;
static const size_t PAGE = 4096;
static size_t bytes_allocated = 0; // under memory_lock

// The device's memory: 16 GiB, or CUDA_EMU_MEMORY bytes (a k / m / g suffix multiplies by 1024^n), so a test
// can make an allocation fail as a full GPU does (CUDA_ERROR_OUT_OF_MEMORY) and free memory drop as a GPU
// reports it. Each allocation counts its size rounded up to 512 bytes, cuMemAlloc's alignment.
static size_t memory_capacity() {
    static const size_t capacity = [] {
        const char *v = getenv("CUDA_EMU_MEMORY");
        if (!v || !*v) return (size_t)16 << 30;
        char *end = nullptr;
        size_t n = strtoull(v, &end, 10);
        switch (end ? *end : 0) {
        case 'k': case 'K': n <<= 10; break;
        case 'm': case 'M': n <<= 20; break;
        case 'g': case 'G': n <<= 30; break;
        default: break;
        }
        return n;
    }();
    return capacity;
}
static size_t charged(size_t size) { return (size + 511) / 512 * 512; }

static CUresult allocate(CUdeviceptr *out, size_t size) {
    {
        std::lock_guard<std::mutex> g(memory_lock);
        if (bytes_allocated + charged(size) > memory_capacity()) return 2; // CUDA_ERROR_OUT_OF_MEMORY
        bytes_allocated += charged(size);
    }
    const size_t body = (size + PAGE - 1) / PAGE * PAGE;
    const size_t mapped = PAGE + body + PAGE;
    char *base = (char *)mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        std::lock_guard<std::mutex> g(memory_lock);
        bytes_allocated -= charged(size);
        return 2; // CUDA_ERROR_OUT_OF_MEMORY
    }
    // Guard pages on both sides. The allocation ends 16-byte aligned just before the back one, so an overrun
    // faults at once; an index below zero faults once it passes the poisoned start of the body (the race
    // checking driver catches both at the first byte).
    mprotect(base, PAGE, PROT_NONE);
    mprotect(base + PAGE + body, PAGE, PROT_NONE);
    char *p = base + PAGE + body - (size + 15) / 16 * 16;
    memset(base + PAGE, 0xff, body);
    race::track(p, size, base + PAGE, base + PAGE + body);
    std::lock_guard<std::mutex> g(memory_lock);
    allocations[(CUdeviceptr)p] = Allocation{base, mapped, size};
    *out = (CUdeviceptr)p;
    return SUCCESS;
}

static CUresult release(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(memory_lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return INVALID_VALUE;
    race::untrack((const void *)p);
    bytes_allocated -= charged(it->second.size);
    munmap(it->second.base, it->second.mapped);
    allocations.erase(it);
    return SUCCESS;
}

// A fault while a kernel runs is reported with the kernel's name, a host access to page-locked memory that a
// queued copy still uses with the copy's direction; any other fault goes to the handler that was there before
// (Rust's stack-overflow report).
static struct sigaction previous_segv;
static bool pinned_fault(const void *addr); // page-locked memory an asynchronous copy has not finished with
static void on_segv(int sig, siginfo_t *info, void *uc) {
    if (!running_kernel && pinned_fault(info->si_addr)) {
        signal(SIGSEGV, SIG_DFL);
        abort();
    }
    if (running_kernel) {
        char msg[512];
        int len = snprintf(msg, sizeof msg,
                           "cuda-emu: kernel %s (%s) accessed %p outside its buffers (block (%u,%u,%u), thread "
                           "(%u,%u,%u))\n",
                           kernel->name, kernel->source, info->si_addr, blockIdx.x, blockIdx.y, blockIdx.z,
                           threadIdx.x, threadIdx.y, threadIdx.z);
        if (len > 0) (void)!write(2, msg, (size_t)len);
        signal(SIGSEGV, SIG_DFL);
        abort();
    }
    if (previous_segv.sa_flags & SA_SIGINFO)
        previous_segv.sa_sigaction(sig, info, uc);
    else if (previous_segv.sa_handler != SIG_DFL && previous_segv.sa_handler != SIG_IGN)
        previous_segv.sa_handler(sig);
    else {
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
    }
}

// ---- streams ---------------------------------------------------------------------------------------------
//
// Work issued to a stream is queued and runs only when something waits for it (a stream or event
// synchronisation, another stream's wait on an event, a copy into pageable host memory): as late as CUDA
// allows, so a missing dependency between streams shows as stale or NaN data instead of passing by luck.
// CUDA_EMU_SYNC=1 runs everything at the call instead.

struct Stream {
    std::deque<std::function<void()>> queue;
    unsigned long long pushed = 0, done = 0; // operations issued / executed
    bool blocking = true;                    // created without CU_STREAM_NON_BLOCKING
    uint32_t index = 0;                      // its number for the race check (emu_order.h; 0: the null stream)
};
static Stream legacy_stream; // the null stream
static std::set<Stream *> streams;
static std::recursive_mutex stream_lock;

static bool deferred() {
    static const bool d = [] {
        const char *v = getenv("CUDA_EMU_SYNC");
        return !(v && v[0] == '1');
    }();
    return d;
}

// The null stream, CU_STREAM_LEGACY (0x1) and CU_STREAM_PER_THREAD (0x2) all run as the null stream here.
static Stream *stream_of(void *handle) {
    return (uintptr_t)handle <= 2 ? &legacy_stream : (Stream *)handle;
}

static void flush(Stream *s);
static void flush_blocking();

// Queues `op` on the stream; `what` names it (or `kernel`) for the race check's reports, which also learns
// what orders it (emu_order.h).
static void enqueue(void *handle, std::function<void()> op, const char *what,
                    const KernelEntry *kernel = nullptr) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    Stream *s = stream_of(handle);
    ++s->pushed;
    const order::Issued issued = order::issue(s->index, what, kernel);
    if (issued.op)
        op = [issued, inner = std::move(op)] {
            order::Running running(issued);
            inner();
        };
    // The null (legacy) stream waits for every blocking stream; its work runs at once.
    if (s == &legacy_stream) flush_blocking();
    if (!deferred() || s == &legacy_stream) {
        op();
        ++s->done;
        return;
    }
    s->queue.push_back(std::move(op));
}

// A synchronous call's work (a cuMemcpy without Async, a cuMemset without Async): ordered as the null stream's
// and run now; the host returns once it is done.
static void run_synchronously(std::function<void()> op, const char *what) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    enqueue(nullptr, std::move(op), what);
    order::host_waits_stream(0);
}

// Runs `s`'s operations until `upto` of them have executed.
static void flush_to(Stream *s, unsigned long long upto) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    while (s->done < upto && !s->queue.empty()) {
        std::function<void()> op = std::move(s->queue.front());
        s->queue.pop_front();
        op();
        ++s->done;
    }
}

static void flush(Stream *s) { flush_to(s, s->pushed); }

// What a synchronous call (cuMemcpy without Async, a legacy-stream operation) is ordered after.
static void flush_blocking() {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    flush(&legacy_stream);
    for (Stream *s : streams)
        if (s->blocking) flush(s);
}

static void flush_all() {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    flush(&legacy_stream);
    for (Stream *s : streams) flush(s);
}

// Pinned host allocations (cuMemHostAlloc): async copies read or write them when they execute; other host
// memory is staged at the call, as CUDA does for pageable memory.
//
// Each allocation is a mapping of its own, and while a queued copy still has to read it (an upload from it)
// the host may not write it, and while one still has to write it (a download into it) the host may not touch
// it: its pages are write- or read-and-write-protected until the copy runs, so the host's access faults and
// the run stops naming it. On a GPU the copy runs at some point after it is issued, so such an access sees or
// leaves whatever the DMA engine got to first; only an event or stream wait orders the host after it (cudarc's
// own per-slice events order nothing when its event tracking is off, as in the engine).
struct Pinned {
    size_t size = 0, mapped = 0;
    unsigned reads = 0, writes = 0; // queued uploads from it, downloads into it
};
static std::map<uintptr_t, Pinned> pinned;

// The allocation holding `p`, or null (caller holds stream_lock).
static std::pair<const uintptr_t, Pinned> *pinned_at(const void *p) {
    auto it = pinned.upper_bound((uintptr_t)p);
    if (it == pinned.begin()) return nullptr;
    --it;
    return (uintptr_t)p < it->first + it->second.size ? &*it : nullptr;
}

static bool is_pinned(const void *p) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    return pinned_at(p) != nullptr;
}

static void protect(uintptr_t base, const Pinned &a) {
    const int prot = a.writes ? PROT_NONE : a.reads ? PROT_READ : PROT_READ | PROT_WRITE;
    mprotect((void *)base, a.mapped, prot);
}

// Queues `copy` (which reads the pinned memory at `h` if `download` is false, writes it if true) on stream `s`;
// the host keeps off it until the copy has run.
static void enqueue_pinned(void *s, const void *h, bool download, std::function<void()> copy, const char *what) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    const uintptr_t base = pinned_at(h)->first;
    Pinned &a = pinned[base];
    (download ? a.writes : a.reads) += 1;
    protect(base, a);
    enqueue(s, [base, download, copy] {
        std::lock_guard<std::recursive_mutex> g(stream_lock);
        Pinned &a = pinned[base];
        mprotect((void *)base, a.mapped, PROT_READ | PROT_WRITE);
        copy();
        (download ? a.writes : a.reads) -= 1;
        protect(base, a);
    }, what);
}

// In the SIGSEGV handler: a host access to protected page-locked memory is reported (no lock: the run stops).
static bool pinned_fault(const void *addr) {
    auto it = pinned.upper_bound((uintptr_t)addr);
    if (it == pinned.begin()) return false;
    --it;
    const Pinned &a = it->second;
    if ((uintptr_t)addr >= it->first + a.mapped || (a.reads == 0 && a.writes == 0)) return false;
    char msg[600];
    const int len = snprintf(
        msg, sizeof msg,
        "cuda-emu: the host touched page-locked memory at %p (byte %zu of a %zu-byte cuMemHostAlloc buffer) while "
        "an asynchronous copy still %s it (%u queued upload(s) from it, %u download(s) into it): nothing orders "
        "this access after the copy; wait for an event recorded after the copy, or synchronize its stream, first\n",
        addr, (size_t)((uintptr_t)addr - it->first), a.size, a.writes ? "writes" : "reads", a.reads, a.writes);
    if (len > 0) (void)!write(2, msg, (size_t)len);
    return true;
}

// ---- modules ---------------------------------------------------------------------------------------------

struct Module {
    std::string source; // the KernelSource name its PTX matched
};
struct Function {
    const KernelEntry *entry;
};
static std::mutex module_lock;
static std::map<std::pair<std::string, std::string>, Function *> functions;

// The PTX's `.entry` names.
static std::set<std::string> ptx_entries(const char *ptx) {
    std::set<std::string> names;
    for (const char *p = strstr(ptx, ".entry"); p; p = strstr(p + 1, ".entry")) {
        const char *s = p + 6;
        while (*s == ' ' || *s == '\t') ++s;
        const char *e = s;
        while (*e && *e != '(' && *e != ' ' && *e != '\n' && *e != '\r') ++e;
        names.insert(std::string(s, e));
    }
    return names;
}

// The architecture the emulated device reports: compute capability 9.0, or CUDA_EMU_ARCH (e.g. 35 or 130) to
// play a GPU older than NVRTC supports or newer than it knows.
static unsigned device_arch() {
    static const unsigned arch = [] {
        const char *v = getenv("CUDA_EMU_ARCH");
        return v && atoi(v) > 0 ? (unsigned)atoi(v) : 90u;
    }();
    return arch;
}

// An image as the driver sees it: its entry points and its architecture (0 when it names none), or false when
// it is neither PTX nor an ELF cubin. A cubin's kernels each have an `.nv.info.<name>` section; its ELF
// header's flags carry the architecture in their low byte (cubin ABI 7, NVRTC 12).
static bool image_entries(const void *image, std::set<std::string> &entries, unsigned &arch) {
    const unsigned char *b = (const unsigned char *)image;
    arch = 0;
    if (memcmp(b, "\x7f" "ELF", 4) != 0) {
        const char *ptx = (const char *)image;
        entries = ptx_entries(ptx);
        if (const char *t = strstr(ptx, ".target sm_")) arch = (unsigned)atoi(t + 11);
        return !entries.empty() || strstr(ptx, ".version") != nullptr;
    }
    if (b[4] != 2) return false; // ELFCLASS64
    uint64_t shoff;
    uint32_t flags;
    uint16_t shentsize, shnum, shstrndx;
    memcpy(&flags, b + 48, 4);
    memcpy(&shoff, b + 40, 8);
    memcpy(&shentsize, b + 58, 2);
    memcpy(&shnum, b + 60, 2);
    memcpy(&shstrndx, b + 62, 2);
    if (shstrndx >= shnum) return false;
    uint64_t names_at;
    memcpy(&names_at, b + shoff + (uint64_t)shstrndx * shentsize + 24, 8); // sh_offset
    for (uint16_t i = 0; i < shnum; ++i) {
        uint32_t name;
        memcpy(&name, b + shoff + (uint64_t)i * shentsize, 4); // sh_name
        const char *n = (const char *)b + names_at + name;
        if (strncmp(n, ".nv.info.", 9) == 0) entries.insert(n + 9);
    }
    arch = flags & 0xff;
    return true;
}

} // namespace emu

using namespace emu;

// ---- call counts -----------------------------------------------------------------------------------------
// Every driver entry point notes its own name, and every launch its kernel's ("kernel:<name>"); the cuBLAS
// stand-in notes its calls here too. Tests read them through `cuda_emu_counts` to state what a training step
// asks of the driver (launches, synchronisations, allocations); a real driver has no such symbol.

static std::mutex count_lock;
static std::map<std::string, unsigned long long> call_counts;

extern "C" void cuda_emu_note(const char *name) {
    std::lock_guard<std::mutex> g(count_lock);
    ++call_counts[name];
}

// Writes "name count\n" lines (sorted by name) into `buf` when they fit in `cap` bytes; returns the length
// they need either way.
extern "C" size_t cuda_emu_counts(char *buf, size_t cap) {
    std::string text;
    {
        std::lock_guard<std::mutex> g(count_lock);
        for (auto &[name, n] : call_counts) text += name + " " + std::to_string(n) + "\n";
    }
    if (buf && text.size() <= cap) memcpy(buf, text.data(), text.size());
    return text.size();
}

#define NOTE() cuda_emu_note(__func__)

// ---- for the libraries beside the driver (emu_stream.h) ----------------------------------------------------

// The running stream operation (a cuBLAS product or an NCCL collective, queued as a host function) reads or
// writes `bytes` of device memory at `p`: the race check's view of it. `what` names the operation.
extern "C" void cuda_emu_access(const void *p, size_t bytes, int write, const char *what) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    order::name_current(what);
    race::range(p, bytes, write != 0);
}

// Runs a stream's queued work now, for a library that must read its input at the call (NCCL's collectives).
// Unlike cuStreamSynchronize it orders nothing after the work: the host did not wait for it.
extern "C" void cuda_emu_run_stream(void *stream) { flush(stream_of(stream)); }

// ---- the driver API --------------------------------------------------------------------------------------

extern "C" {

CUresult cuInit(unsigned) {
    NOTE();
    static std::once_flag once;
    std::call_once(once, [] {
        if (getenv("CUDA_EMU_NO_SEGV")) return;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigaction(SIGSEGV, &sa, &previous_segv);
    });
    return SUCCESS;
}

// NVRTC itself opens libcuda and asks for the driver's private export tables; there are none here, and
// NVRTC compiles without them.
CUresult cuGetExportTable(const void **table, const void *) {
    NOTE();
    *table = nullptr;
    return NOT_SUPPORTED;
}

CUresult cuDriverGetVersion(int *v) {
    NOTE();
    *v = 12090;
    return SUCCESS;
}

// One device, or CUDA_EMU_DEVICES of them (the data-parallel NCCL test wants one per rank). They share the
// process's memory, as one GPU would.
static int device_count() {
    const char *v = getenv("CUDA_EMU_DEVICES");
    const int n = v ? atoi(v) : 1;
    return n >= 1 && n <= 64 ? n : 1;
}

CUresult cuDeviceGetCount(int *count) {
    NOTE();
    *count = device_count();
    return SUCCESS;
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
    NOTE();
    if (ordinal < 0 || ordinal >= device_count()) return INVALID_DEVICE;
    *dev = ordinal;
    return SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice) {
    NOTE();
    snprintf(name, (size_t)len, "cuda-emu (the engine's kernels on the CPU, not a GPU)");
    return SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice) {
    NOTE();
    *bytes = memory_capacity();
    return SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    NOTE();
    std::lock_guard<std::mutex> g(memory_lock);
    *total = memory_capacity();
    *free_bytes = *total - bytes_allocated;
    return SUCCESS;
}

// Reported as a 2-multiprocessor compute capability 9.0 device (NVRTC compiles for compute_90).
CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice) {
    NOTE();
    switch (attr) {
    case 1: *v = 1024; break;                 // MAX_THREADS_PER_BLOCK
    case 2: case 3: *v = attr == 2 ? 1024 : 1024; break; // MAX_BLOCK_DIM_X / Y
    case 4: *v = 64; break;                   // MAX_BLOCK_DIM_Z
    case 5: *v = 2147483647; break;           // MAX_GRID_DIM_X
    case 6: case 7: *v = 65535; break;        // MAX_GRID_DIM_Y / Z
    case 8: *v = 49152; break;                // MAX_SHARED_MEMORY_PER_BLOCK
    case 10: *v = 32; break;                  // WARP_SIZE
    case 16: *v = 2; break;                   // MULTIPROCESSOR_COUNT
    case 75: *v = device_arch() / 10; break;    // COMPUTE_CAPABILITY_MAJOR
    case 76: *v = device_arch() % 10; break;    // COMPUTE_CAPABILITY_MINOR
    case 115: *v = 1; break;                  // MEMORY_POOLS_SUPPORTED
    default: *v = 0;
    }
    return SUCCESS;
}

static int primary_context = 1;
static thread_local void *current_context = nullptr;

CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice) {
    NOTE();
    *ctx = &primary_context;
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { NOTE(); return SUCCESS; }
CUresult cuCtxSetCurrent(void *ctx) {
    NOTE();
    current_context = ctx;
    return SUCCESS;
}
CUresult cuCtxGetCurrent(void **ctx) {
    NOTE();
    *ctx = current_context;
    return SUCCESS;
}

CUresult cuGetErrorName(CUresult e, const char **s) {
    NOTE();
    static thread_local char buf[64];
    snprintf(buf, sizeof buf, "CUDA_ERROR_%d (cuda-emu)", e);
    *s = buf;
    return SUCCESS;
}
CUresult cuGetErrorString(CUresult e, const char **s) { NOTE(); return cuGetErrorName(e, s); }

// Streams (see "streams" above).
CUresult cuStreamCreate(void **s, unsigned flags) {
    NOTE();
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    Stream *stream = new Stream();
    stream->blocking = (flags & 1u) == 0; // CU_STREAM_NON_BLOCKING
    stream->index = order::new_stream(stream->blocking);
    streams.insert(stream);
    *s = stream;
    return SUCCESS;
}
CUresult cuStreamCreateWithPriority(void **s, unsigned flags, int) { NOTE(); return cuStreamCreate(s, flags); }
CUresult cuStreamDestroy_v2(void *s) {
    NOTE();
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    flush(stream_of(s)); // CUDA finishes a destroyed stream's work
    order::destroy_stream(((Stream *)s)->index);
    streams.erase((Stream *)s);
    delete (Stream *)s;
    return SUCCESS;
}
CUresult cuStreamSynchronize(void *s) {
    NOTE();
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    flush(stream_of(s));
    order::host_waits_stream(stream_of(s)->index);
    return SUCCESS;
}
CUresult cuStreamIsCapturing(void *, int *status) {
    NOTE();
    *status = 0;
    return SUCCESS;
}
CUresult cuLaunchHostFunc(void *s, void (*f)(void *), void *data) {
    NOTE();
    enqueue(s, [f, data] { f(data); }, "a host function");
    return SUCCESS;
}
CUresult cuCtxSynchronize() {
    NOTE();
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    flush_all();
    order::host_waits_all();
    return SUCCESS;
}

// Events mark a point in a stream's queue; they record the host clock when that point executes. An event
// may be destroyed before its marker runs (CUDA allows it), so the marker holds the state, not the handle.
struct EventState {
    double ms = 0.0;
};
struct Event {
    Stream *stream = nullptr;
    unsigned long long seq = 0; // the stream's operations up to and including the marker
    std::shared_ptr<EventState> state = std::make_shared<EventState>();
    order::Mark mark; // what a wait for it is ordered after (the race check)
};
static double now_ms() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}
// Runs `s` up to `seq` unless it has been destroyed meanwhile (destroying a stream finishes its work).
static void flush_if_alive(Stream *s, unsigned long long seq) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    if (s == &legacy_stream || streams.count(s)) flush_to(s, seq);
}
// The host waits for the event.
static void complete(Event *e) {
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    if (e->stream) flush_if_alive(e->stream, e->seq);
    order::host_waits_mark(e->mark);
}
CUresult cuEventCreate(void **e, unsigned) {
    NOTE();
    *e = new Event();
    return SUCCESS;
}
CUresult cuEventDestroy_v2(void *e) {
    NOTE();
    delete (Event *)e;
    return SUCCESS;
}
CUresult cuEventRecord(void *e, void *s) {
    NOTE();
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    Event *ev = (Event *)e;
    std::shared_ptr<EventState> state = ev->state;
    enqueue(s, [state] { state->ms = now_ms(); }, "an event marker");
    ev->stream = stream_of(s);
    ev->seq = ev->stream->pushed;
    ev->mark = order::record(ev->stream->index);
    return SUCCESS;
}
CUresult cuStreamWaitEvent(void *s, void *e, unsigned) {
    NOTE();
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    Event *ev = (Event *)e;
    if (ev->stream) {
        Stream *other = ev->stream;
        const unsigned long long seq = ev->seq;
        order::wait(stream_of(s)->index, ev->mark);
        enqueue(s, [other, seq] { flush_if_alive(other, seq); }, "an event wait");
    }
    return SUCCESS;
}
CUresult cuEventQuery(void *e) {
    NOTE();
    complete((Event *)e);
    return SUCCESS;
}
CUresult cuEventSynchronize(void *e) {
    NOTE();
    complete((Event *)e);
    return SUCCESS;
}
CUresult cuEventElapsedTime(float *ms, void *a, void *b) {
    NOTE();
    complete((Event *)a);
    complete((Event *)b);
    *ms = (float)(((Event *)b)->state->ms - ((Event *)a)->state->ms);
    return SUCCESS;
}
CUresult cuEventElapsedTime_v2(float *ms, void *a, void *b) { NOTE(); return cuEventElapsedTime(ms, a, b); }

// Memory. Synchronous copies run at the call, after the null stream and the blocking streams (the engine's
// streams are non-blocking: CUDA orders nothing of theirs before a synchronous copy); asynchronous ones are
// queued on their stream.
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { NOTE(); return allocate(p, n); }
CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, void *) { NOTE(); return allocate(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) {
    NOTE();
    {
        std::lock_guard<std::recursive_mutex> g(stream_lock);
        flush_all(); // cuMemFree waits for the device
        order::host_waits_all();
    }
    return release(p);
}
CUresult cuMemFreeAsync(CUdeviceptr p, void *s) {
    NOTE();
    enqueue(s, [p] { release(p); }, "an asynchronous free");
    return SUCCESS;
}
CUresult cuMemHostAlloc(void **p, size_t n, unsigned) {
    NOTE();
    const size_t size = n ? n : 1, mapped = (size + PAGE - 1) / PAGE * PAGE;
    void *m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 2;
    *p = m;
    std::lock_guard<std::recursive_mutex> g(stream_lock);
    Pinned &a = pinned[(uintptr_t)m];
    a.size = size;
    a.mapped = mapped;
    return SUCCESS;
}
CUresult cuMemAllocHost_v2(void **p, size_t n) { NOTE(); return cuMemHostAlloc(p, n, 0); }
CUresult cuMemFreeHost(void *p) {
    NOTE();
    size_t mapped = 0;
    {
        std::lock_guard<std::recursive_mutex> g(stream_lock);
        flush_all();
        order::host_waits_all();
        auto it = pinned.find((uintptr_t)p);
        if (it == pinned.end()) return INVALID_VALUE;
        mapped = it->second.mapped;
        pinned.erase(it);
    }
    munmap(p, mapped);
    return SUCCESS;
}
// The driver checks that a copy's or memset's device range lies within one allocation (CUDA_ERROR_INVALID_VALUE
// otherwise) instead of writing past it; so does this one, naming the call.
static bool in_one_allocation(const char *call, CUdeviceptr d, size_t n) {
    if (n == 0) return true;
    {
        std::lock_guard<std::mutex> g(memory_lock);
        auto it = allocations.upper_bound(d);
        if (it != allocations.begin()) {
            --it;
            if (d >= it->first && n <= it->second.size && d - it->first <= it->second.size - n) return true;
        }
    }
    fprintf(stderr, "cuda-emu: %s: %zu bytes at device address 0x%llx are not within one allocation\n", call, n, d);
    return false;
}
#define DEVICE_RANGE(d, n)                                                                                       \
    if (!in_one_allocation(__func__, d, n)) return INVALID_VALUE

// A copy or memset's device accesses, for the race check (racecheck.cpp), as it runs.
static void device_reads(CUdeviceptr d, size_t n) { race::range((const void *)d, n, false); }
static void device_writes(CUdeviceptr d, size_t n) { race::range((const void *)d, n, true); }

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *h, size_t n) {
    NOTE();
    DEVICE_RANGE(d, n);
    run_synchronously([d, h, n] {
        device_writes(d, n);
        memcpy((void *)d, h, n);
    }, "a synchronous copy to the device");
    return SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *h, size_t n, void *s) {
    NOTE();
    DEVICE_RANGE(d, n);
    const char *what = "an asynchronous copy to the device";
    if (emu_stream::no_compute()) { // a DMA transfer on a GPU: no host time
        enqueue(s, [] {}, what);
    } else if (is_pinned(h)) {
        enqueue_pinned(s, h, false, [d, h, n] {
            device_writes(d, n);
            memcpy((void *)d, h, n);
        }, what);
    } else {
        auto staged = std::make_shared<std::vector<char>>((const char *)h, (const char *)h + n);
        enqueue(s, [d, staged] {
            device_writes(d, staged->size());
            memcpy((void *)d, staged->data(), staged->size());
        }, what);
    }
    return SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void *h, CUdeviceptr d, size_t n) {
    NOTE();
    DEVICE_RANGE(d, n);
    run_synchronously([h, d, n] {
        device_reads(d, n);
        memcpy(h, (const void *)d, n);
    }, "a synchronous copy to the host");
    return SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void *h, CUdeviceptr d, size_t n, void *s) {
    NOTE();
    DEVICE_RANGE(d, n);
    const char *what = "an asynchronous copy to the host";
    const auto copy = [h, d, n] {
        device_reads(d, n);
        memcpy(h, (const void *)d, n);
    };
    if (is_pinned(h)) {
        enqueue_pinned(s, h, true, copy, what);
    } else { // into pageable memory the copy returns only once done
        std::lock_guard<std::recursive_mutex> g(stream_lock);
        enqueue(s, copy, what);
        flush(stream_of(s));
        order::host_waits_stream(stream_of(s)->index);
    }
    return SUCCESS;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr src, size_t n) {
    NOTE();
    DEVICE_RANGE(d, n);
    DEVICE_RANGE(src, n);
    run_synchronously([d, src, n] {
        device_reads(src, n);
        device_writes(d, n);
        memmove((void *)d, (const void *)src, n);
    }, "a synchronous device-to-device copy");
    return SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr src, size_t n, void *s) {
    NOTE();
    DEVICE_RANGE(d, n);
    DEVICE_RANGE(src, n);
    const char *what = "an asynchronous device-to-device copy";
    if (emu_stream::no_compute())
        enqueue(s, [] {}, what);
    else
        enqueue(s, [d, src, n] {
            device_reads(src, n);
            device_writes(d, n);
            memmove((void *)d, (const void *)src, n);
        }, what);
    return SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) {
    NOTE();
    DEVICE_RANGE(d, n);
    run_synchronously([d, v, n] {
        device_writes(d, n);
        memset((void *)d, v, n);
    }, "a synchronous memset");
    return SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *s) {
    NOTE();
    DEVICE_RANGE(d, n);
    const char *what = "an asynchronous memset";
    if (emu_stream::no_compute())
        enqueue(s, [] {}, what);
    else
        enqueue(s, [d, v, n] {
            device_writes(d, n);
            memset((void *)d, v, n);
        }, what);
    return SUCCESS;
}
static void fill32(CUdeviceptr d, unsigned v, size_t n) {
    device_writes(d, 4 * n);
    for (size_t i = 0; i < n; ++i) memcpy((char *)d + 4 * i, &v, 4);
}
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) {
    NOTE();
    DEVICE_RANGE(d, 4 * n);
    if (d % 4) return INVALID_VALUE; // D32 needs a 4-byte aligned address
    run_synchronously([d, v, n] { fill32(d, v, n); }, "a synchronous memset");
    return SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void *s) {
    NOTE();
    DEVICE_RANGE(d, 4 * n);
    if (d % 4) return INVALID_VALUE; // D32 needs a 4-byte aligned address
    const char *what = "an asynchronous memset";
    if (emu_stream::no_compute())
        enqueue(s, [] {}, what);
    else
        enqueue(s, [d, v, n] { fill32(d, v, n); }, what);
    return SUCCESS;
}

// Modules: the PTX's entry points name the source it was compiled from.
CUresult cuModuleLoadData(void **module, const void *image) {
    NOTE();
    std::set<std::string> entries;
    unsigned arch = 0;
    if (!image_entries(image, entries, arch)) return INVALID_IMAGE;
    // Machine code runs on its own architecture only; PTX on its own and later ones (the driver compiles it).
    const bool cubin = memcmp(image, "\x7f" "ELF", 4) == 0;
    if (cubin ? arch != device_arch() : arch > device_arch()) {
        fprintf(stderr, "cuda-emu: a %s for sm_%u cannot run on this sm_%u device\n", cubin ? "cubin" : "PTX module",
                arch, device_arch());
        return NO_BINARY_FOR_GPU;
    }
    std::map<std::string, std::set<std::string>> by_source;
    for (int i = 0; i < KERNEL_COUNT; ++i) by_source[KERNELS[i].source].insert(KERNELS[i].name);
    for (auto &[source, names] : by_source) {
        if (names != entries) continue;
        *module = new Module{source};
        return SUCCESS;
    }
    fprintf(stderr, "cuda-emu: a module with %zu entry points matches no kernel source this emulator was "
                    "built from (rebuild it: tools/cuda-emu/build.sh)\n",
            entries.size());
    return INVALID_IMAGE;
}
CUresult cuModuleUnload(void *module) {
    NOTE();
    delete (Module *)module;
    return SUCCESS;
}
CUresult cuModuleGetFunction(void **f, void *module, const char *name) {
    NOTE();
    const std::string &source = ((Module *)module)->source;
    std::lock_guard<std::mutex> g(module_lock);
    auto key = std::make_pair(source, std::string(name));
    auto it = functions.find(key);
    if (it == functions.end()) {
        const KernelEntry *found = nullptr;
        for (int i = 0; i < KERNEL_COUNT; ++i)
            if (source == KERNELS[i].source && strcmp(name, KERNELS[i].name) == 0) found = &KERNELS[i];
        if (!found) return NOT_FOUND;
        it = functions.emplace(key, new Function{found}).first;
    }
    *f = it->second;
    return SUCCESS;
}
CUresult cuFuncGetAttribute(int *v, int attr, void *) {
    NOTE();
    *v = attr == 0 ? 1024 : 0; // MAX_THREADS_PER_BLOCK
    return SUCCESS;
}
CUresult cuFuncSetAttribute(void *, int, int) { NOTE(); return SUCCESS; }
CUresult cuFuncSetCacheConfig(void *, int) { NOTE(); return SUCCESS; }

// Runs a whole grid now (from a stream's queue).
static void run_grid(const KernelEntry *entry, const std::function<void()> &call, Dim3 grid, Dim3 block) {
    kernel = entry;
    kernel_call = &call;
    blockDim = block;
    gridDim = grid;
    running_kernel = true;
    const unsigned threads = block.x * block.y * block.z;
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    reverse = reverse_order();
    const size_t shared = entry->shared_end - entry->shared_begin;
    race::begin_launch(entry, grid, block);
    for (unsigned long long k = 0; k < blocks; ++k) {
        const unsigned long long b = reverse ? blocks - 1 - k : k;
        blockIdx = Dim3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
        race::begin_block(b);
        // A block's shared memory starts undefined on a GPU: NaN bytes here, not the previous block's values.
        if (shared) memset(entry->shared_begin, 0xff, shared);
        if (entry->sync)
            run_block_fibers(threads);
        else
            run_block_plain(threads);
    }
    race::end_launch();
    running_kernel = false;
}

CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
    NOTE();
    const KernelEntry *entry = ((Function *)f)->entry;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || threads == 0 || bx > 1024 || by > 1024 || bz > 64 || gy > 65535 ||
        gz > 65535 || gx > 2147483647u) {
        fprintf(stderr, "cuda-emu: kernel %s: invalid launch geometry grid (%u,%u,%u) block (%u,%u,%u)\n",
                entry->name, gx, gy, gz, bx, by, bz);
        return INVALID_VALUE;
    }
    if (threads > 1024) return LAUNCH_OUT_OF_RESOURCES;
    if (threads > entry->max_threads) {
        // A GPU refuses a block larger than the kernel's __launch_bounds__ (its registers were allotted for
        // that many threads) with the same error.
        fprintf(stderr, "cuda-emu: kernel %s (%s): a block of %llu threads exceeds its __launch_bounds__(%u)\n",
                entry->name, entry->source, threads, entry->max_threads);
        return LAUNCH_OUT_OF_RESOURCES;
    }
    if (shared > 49152 || extra) return INVALID_VALUE;
    cuda_emu_note((std::string("kernel:") + entry->name).c_str());
    std::function<void()> call = entry->bind(params); // the arguments' values now, as CUDA copies them
    if (emu_stream::no_compute()) {
        enqueue(stream, [] {}, nullptr, entry);
        return SUCCESS;
    }
    const Dim3 grid{gx, gy, gz}, block{bx, by, bz};
    enqueue(stream, [entry, call, grid, block] { run_grid(entry, call, grid, block); }, nullptr, entry);
    return SUCCESS;
}

} // extern "C"
