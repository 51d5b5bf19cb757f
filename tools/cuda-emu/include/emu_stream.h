// cuda-emu: for the libraries beside the emulated driver (cuBLAS, NCCL), work queued on a stream of the
// emulated driver, and the driver's call counts. Each library finds the driver already loaded by the
// process; without it (a library used alone) work runs at once and nothing is counted.
#pragma once

#include <dlfcn.h>

#include <cstddef>
#include <cstdlib>
#include <functional>

namespace emu_stream {

// CUDA_EMU_NO_COMPUTE=1: kernels, products and asynchronous uploads are queued as no-ops (same order, same
// counts), so a run measures what the host spends per step, as if the GPU were infinitely fast. Results are
// meaningless in that mode; it is for timing the host side only (tools/cuda-emu/README.md).
inline bool no_compute() {
    static const bool on = [] {
        const char *v = getenv("CUDA_EMU_NO_COMPUTE");
        return v && v[0] == '1';
    }();
    return on;
}

// The loaded emulated driver's symbol `name`, or null.
template <typename F> F driver_symbol(const char *name) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    return lib ? (F)dlsym(lib, name) : (F) nullptr;
}

// Queues `op` on `stream` through the driver's cuLaunchHostFunc, so it runs in order with the stream's
// kernels (when something waits for them).
inline void run_on(void *stream, std::function<void()> op) {
    typedef int (*HostFunc)(void *, void (*)(void *), void *);
    static HostFunc launch_host = driver_symbol<HostFunc>("cuLaunchHostFunc");
    if (!launch_host) {
        op();
        return;
    }
    auto *boxed = new std::function<void()>(std::move(op));
    launch_host(stream, [](void *p) {
        auto *f = (std::function<void()> *)p;
        (*f)();
        delete f;
    }, boxed);
}

// The running stream operation reads (`write` false) or writes `bytes` of device memory at `p`; `what` names it
// ("a cuBLAS product"). The race-checking driver checks it against other streams' accesses (emu_order.h).
inline void access(const void *p, size_t bytes, bool write, const char *what) {
    typedef void (*Access)(const void *, size_t, int, const char *);
    static Access f = driver_symbol<Access>("cuda_emu_access");
    if (f) f(p, bytes, write ? 1 : 0, what);
}

// Runs `stream`'s queued work now without ordering the host after it (a library reading its input at the
// call).
inline void run_stream(void *stream) {
    typedef void (*Run)(void *);
    static Run f = driver_symbol<Run>("cuda_emu_run_stream");
    if (f) f(stream);
}

// Counts one call named `name` with the driver's own (driver.cpp, "call counts").
inline void note(const char *name) {
    typedef void (*Note)(const char *);
    static Note f = driver_symbol<Note>("cuda_emu_note");
    if (f) f(name);
}

} // namespace emu_stream
