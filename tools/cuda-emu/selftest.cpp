// cuda-emu's own test: kernels that are right and kernels with each bug the emulator promises to catch,
// launched through the emulated driver API. Each failing case runs in a child process, which must abort with
// the expected message. Built and run by selftest.sh (and .ci/run).

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "emu_kernel.h"
#include "emu_registry.h"

namespace cases {
__device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// out[block] = sum of in[block * blockDim .. +blockDim): shuffles, a shared array and two barriers.
__global__ void block_sum(float *out, const float *in) {
    __shared__ float part[32];
    const unsigned t = threadIdx.x;
    float v = warp_sum(in[blockIdx.x * blockDim.x + t]);
    if ((t & 31) == 0) part[t >> 5] = v;
    __syncthreads();
    if (t < 32) {
        v = warp_sum(t < blockDim.x / 32 ? part[t] : 0.0f);
        if (t == 0) out[blockIdx.x] = v;
    }
}
// One element past the end of an n-element buffer.
__global__ void out_of_bounds(float *out, size_t n) { out[n + threadIdx.x] = 1.0f; }
// The first warp waits at a barrier, the rest at a shuffle: a GPU would hang.
__global__ void divergent_barrier(float *out) {
    if (threadIdx.x < 32) __syncthreads();
    else out[threadIdx.x] = warp_sum(1.0f);
}
// Lane 5 returns before its warp's shuffle reads it.
__global__ void shuffle_from_exited(float *out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
} // namespace cases

// Kernels with shared memory, in a section of their own as gen_kernels.py places each source's.
#undef __shared__
#define __shared__ static __attribute__((section("emu_shared_selftest")))
extern char __start_emu_shared_selftest[] __attribute__((weak));
extern char __stop_emu_shared_selftest[] __attribute__((weak));
namespace shared_cases {
// out[t] = t - 1 from the left neighbour's slot, with the barrier between the write and the read missing:
// right when threads run in ascending order, a NaN (the poisoned slot) when they run in descending order.
__global__ void racy_left_neighbour(float *out) {
    __shared__ float slot[64];
    const unsigned t = threadIdx.x;
    slot[t] = (float)t;
    out[t] = t == 0 ? -1.0f : slot[t - 1];
}
// Every thread writes its slot when `all`, else only thread 0; then out[t] = slot[1]. With `all` = 0 slot 1 is
// never written in the launch: its value is the poison, not what an earlier launch left there.
__global__ void reads_slot_one(float *out, int all) {
    __shared__ float slot[64];
    const unsigned t = threadIdx.x;
    if (all || t == 0) slot[t] = 7.0f;
    __syncthreads();
    out[t] = slot[1];
}
} // namespace shared_cases
#undef __shared__
#define __shared__ static

const emu::KernelEntry emu::KERNELS[] = {
    {"selftest", "block_sum", &emu::trampoline<&cases::block_sum>, true, 1024},
    {"selftest", "out_of_bounds", &emu::trampoline<&cases::out_of_bounds>, false, 1024},
    {"selftest", "divergent_barrier", &emu::trampoline<&cases::divergent_barrier>, true, 1024},
    {"selftest", "shuffle_from_exited", &emu::trampoline<&cases::shuffle_from_exited>, true, 1024},
    // block_sum again, declared with __launch_bounds__(64).
    {"selftest", "bounded_block_sum", &emu::trampoline<&cases::block_sum>, true, 64},
    {"selftest", "racy_left_neighbour", &emu::trampoline<&shared_cases::racy_left_neighbour>, false, 1024,
     __start_emu_shared_selftest, __stop_emu_shared_selftest},
    {"selftest", "reads_slot_one", &emu::trampoline<&shared_cases::reads_slot_one>, true, 1024,
     __start_emu_shared_selftest, __stop_emu_shared_selftest},
};
const int emu::KERNEL_COUNT = 7;

extern "C" {
int cuInit(unsigned);
int cuMemAlloc_v2(unsigned long long *, size_t);
int cuMemcpyHtoD_v2(unsigned long long, const void *, size_t);
int cuMemcpyDtoH_v2(void *, unsigned long long, size_t);
int cuModuleLoadData(void **, const void *);
int cuModuleGetFunction(void **, void *, const char *);
int cuLaunchKernel(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                   void **);
}

static const char *PTX = ".visible .entry block_sum(\n.visible .entry out_of_bounds(\n"
                         ".visible .entry divergent_barrier(\n.visible .entry shuffle_from_exited(\n"
                         ".visible .entry bounded_block_sum(\n.visible .entry racy_left_neighbour(\n"
                         ".visible .entry reads_slot_one(\n";
static int failures = 0;

static void check(bool ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    failures += !ok;
}

static void *function(const char *name) {
    void *module = nullptr, *f = nullptr;
    if (cuModuleLoadData(&module, PTX) != 0 || cuModuleGetFunction(&f, module, name) != 0) {
        printf("FAIL cannot load %s\n", name);
        exit(1);
    }
    return f;
}

// Runs `launch` in a child; true if it aborted and its stderr contains `expect`.
template <class F> static bool aborts_with(F launch, const char *expect) {
    int fds[2];
    if (pipe(fds) != 0) return false;
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        launch();
        _exit(0); // no abort: the bug went unnoticed
    }
    close(fds[1]);
    std::string err;
    char buf[512];
    for (ssize_t k; (k = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, (size_t)k);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const bool ok = WIFSIGNALED(status) && err.find(expect) != std::string::npos;
    if (!ok) fprintf(stderr, "  child status %d, stderr: %s\n", status, err.c_str());
    return ok;
}

// Runs `body` in a child process with CUDA_EMU_REVERSE set to `reverse` (read once per process); the child's
// exit status.
template <class F> static int in_child(const char *reverse, F body) {
    const pid_t pid = fork();
    if (pid == 0) {
        setenv("CUDA_EMU_REVERSE", reverse, 1);
        _exit(body());
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

// racy_left_neighbour over one block of 64 threads: 0 if every value is right, 1 if any is not.
static int left_neighbour_right() {
    unsigned long long d;
    cuMemAlloc_v2(&d, 64 * sizeof(float));
    void *a[] = {&d};
    if (cuLaunchKernel(function("racy_left_neighbour"), 1, 1, 1, 64, 1, 1, 0, nullptr, a, nullptr) != 0) return 2;
    float out[64];
    cuMemcpyDtoH_v2(out, d, sizeof out);
    for (int t = 0; t < 64; ++t)
        if (out[t] != (float)t - 1.0f) return 1;
    return 0;
}

int main() {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    cuInit(0);
    // A correct two-level reduction over 3 blocks of 256 threads.
    const unsigned blocks = 3, threads = 256;
    float in[blocks * threads], out[blocks];
    for (unsigned i = 0; i < blocks * threads; ++i) in[i] = (float)(i % 7);
    unsigned long long din, dout;
    cuMemAlloc_v2(&din, sizeof in);
    cuMemAlloc_v2(&dout, sizeof out);
    cuMemcpyHtoD_v2(din, in, sizeof in);
    void *args[] = {&dout, &din};
    check(cuLaunchKernel(function("block_sum"), blocks, 1, 1, threads, 1, 1, 0, nullptr, args, nullptr) == 0,
          "block_sum launches");
    cuMemcpyDtoH_v2(out, dout, sizeof out);
    bool right = true;
    for (unsigned b = 0; b < blocks; ++b) {
        float want = 0.0f;
        for (unsigned t = 0; t < threads; ++t) want += in[b * threads + t];
        right = right && out[b] == want;
    }
    check(right, "block_sum: shuffles and barriers give the block sums");

    // Launch geometry the driver rejects.
    check(cuLaunchKernel(function("block_sum"), 1, 1, 1, 2048, 1, 1, 0, nullptr, args, nullptr) != 0,
          "a 2048-thread block is rejected");
    check(cuLaunchKernel(function("block_sum"), 0, 1, 1, 32, 1, 1, 0, nullptr, args, nullptr) != 0,
          "an empty grid is rejected");
    check(cuLaunchKernel(function("bounded_block_sum"), 1, 1, 1, 128, 1, 1, 0, nullptr, args, nullptr) == 701,
          "a block larger than the kernel's __launch_bounds__ is refused (out of resources)");
    check(cuLaunchKernel(function("bounded_block_sum"), 1, 1, 1, 64, 1, 1, 0, nullptr, args, nullptr) == 0,
          "a block within the kernel's __launch_bounds__ launches");

    // A missing barrier: right in one thread order only, so CUDA_EMU_REVERSE=1 shows it.
    check(in_child("0", left_neighbour_right) == 0, "a race that ascending order hides goes unseen in that order");
    check(in_child("1", left_neighbour_right) == 1, "CUDA_EMU_REVERSE=1 turns it into a wrong result");

    // Shared memory starts as poison in every block, not as what the last launch left.
    {
        unsigned long long d;
        cuMemAlloc_v2(&d, 64 * sizeof(float));
        float out[64];
        int all = 1;
        void *a[] = {&d, &all};
        cuLaunchKernel(function("reads_slot_one"), 1, 1, 1, 64, 1, 1, 0, nullptr, a, nullptr);
        cuMemcpyDtoH_v2(out, d, sizeof out);
        const bool written = out[0] == 7.0f;
        all = 0;
        cuLaunchKernel(function("reads_slot_one"), 1, 1, 1, 64, 1, 1, 0, nullptr, a, nullptr);
        cuMemcpyDtoH_v2(out, d, sizeof out);
        check(written && out[0] != out[0], "a shared slot no thread of the block wrote reads as NaN");
    }

    // Bugs, each in a child process (writing into a buffer of 64 floats).
    unsigned long long d64;
    cuMemAlloc_v2(&d64, 64 * sizeof(float));
    check(aborts_with(
              [&] {
                  unsigned long long d;
                  size_t n = 1000;
                  cuMemAlloc_v2(&d, n * sizeof(float));
                  void *a[] = {&d, &n};
                  cuLaunchKernel(function("out_of_bounds"), 1, 1, 1, 32, 1, 1, 0, nullptr, a, nullptr);
              },
              "out_of_bounds (selftest) accessed"),
          "a write past an allocation's end is caught and names the kernel");
    check(aborts_with(
              [&] {
                  void *a[] = {&d64};
                  cuLaunchKernel(function("divergent_barrier"), 1, 1, 1, 64, 1, 1, 0, nullptr, a, nullptr);
              },
              "wait at __syncthreads after"),
          "a barrier reached by part of the block is caught");
    check(aborts_with(
              [&] {
                  void *a[] = {&d64};
                  cuLaunchKernel(function("shuffle_from_exited"), 1, 1, 1, 32, 1, 1, 0, nullptr, a, nullptr);
              },
              "has exited"),
          "a shuffle reading an exited lane is caught");
    printf("%s\n", failures ? "cuda-emu selftest FAILED" : "cuda-emu selftest passed");
    return failures ? 1 : 0;
}
