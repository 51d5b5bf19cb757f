// cuda-emu's own test: kernels that are right and kernels with each bug the emulator promises to catch,
// launched through the emulated driver API. Each failing case runs in a child process, which must abort with
// the expected message. Built and run by selftest.sh (and .ci/run).

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <math.h>

#include <string>
#include <vector>

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
// Thread 0 writes out[i] (any index, negative too).
__global__ void write_at(float *out, long long i) {
    if (threadIdx.x == 0) out[i] = 1.0f;
}
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
// Each thread copies its right neighbour's slot into its own, with no barrier between the read and the
// write: a write-after-read race in shared memory.
__global__ void racy_shift(float *out) {
    __shared__ float slot[64];
    const unsigned t = threadIdx.x;
    slot[t] = (float)t;
    __syncthreads();
    const float v = slot[(t + 1) % blockDim.x];
    slot[t] = v;
    __syncthreads();
    out[t] = slot[t];
}
} // namespace shared_cases
#undef __shared__
#define __shared__ static

// Races in device memory, and the right ways to do the same (the race check's cases).
namespace race_cases {
// Every block's thread 0 writes out[0]: blocks are never ordered.
__global__ void blocks_write_one_slot(float *out) {
    if (threadIdx.x == 0) out[0] = (float)blockIdx.x;
}
// Block 1 writes what block 0 reads.
__global__ void block_reads_anothers_write(float *buf, float *out) {
    if (threadIdx.x != 0) return;
    if (blockIdx.x == 1) buf[0] = 5.0f;
    else out[0] = buf[0];
}
// Every thread of every block adds one: atomics do not race.
__global__ void atomic_count(float *out) { atomicAdd(out, 1.0f); }
// The same counter, then read plainly in the same launch.
__global__ void atomic_then_read(float *count, float *out) {
    atomicAdd(count, 1.0f);
    out[blockIdx.x * blockDim.x + threadIdx.x] = count[0];
}
// torch's found-inf pattern: every thread that sees a NaN sets the flag, plainly (a race) or atomically.
__global__ void flag_plain(const float *x, float *flag) {
    if (x[blockIdx.x * blockDim.x + threadIdx.x] != x[blockIdx.x * blockDim.x + threadIdx.x]) flag[0] = 1.0f;
}
__global__ void flag_atomic(const float *x, float *flag) {
    if (x[blockIdx.x * blockDim.x + threadIdx.x] != x[blockIdx.x * blockDim.x + threadIdx.x])
        atomicExch(flag, 1.0f);
}
// Neighbouring threads write neighbouring 2-byte halves: different bytes, no race.
__global__ void half_per_thread(__half *out) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = __float2half((float)i);
}
// A float read 2 bytes into a buffer: fine on x86, a fault on a GPU.
__global__ void misaligned_read(float *out, const char *base) {
    if (threadIdx.x == 0) out[0] = *(const float *)(base + 2);
}
// In place: each thread reads and writes only its own element.
__global__ void scale_in_place(float *x) { x[blockIdx.x * blockDim.x + threadIdx.x] *= 2.0f; }
} // namespace race_cases

const emu::KernelEntry emu::KERNELS[] = {
    {"selftest", "block_sum", &emu::trampoline<&cases::block_sum>, true, 1024},
    {"selftest", "out_of_bounds", &emu::trampoline<&cases::out_of_bounds>, false, 1024},
    {"selftest", "write_at", &emu::trampoline<&cases::write_at>, false, 1024},
    {"selftest", "divergent_barrier", &emu::trampoline<&cases::divergent_barrier>, true, 1024},
    {"selftest", "shuffle_from_exited", &emu::trampoline<&cases::shuffle_from_exited>, true, 1024},
    // block_sum again, declared with __launch_bounds__(64).
    {"selftest", "bounded_block_sum", &emu::trampoline<&cases::block_sum>, true, 64},
    {"selftest", "racy_left_neighbour", &emu::trampoline<&shared_cases::racy_left_neighbour>, false, 1024,
     __start_emu_shared_selftest, __stop_emu_shared_selftest},
    {"selftest", "reads_slot_one", &emu::trampoline<&shared_cases::reads_slot_one>, true, 1024,
     __start_emu_shared_selftest, __stop_emu_shared_selftest},
    {"selftest", "racy_shift", &emu::trampoline<&shared_cases::racy_shift>, true, 1024,
     __start_emu_shared_selftest, __stop_emu_shared_selftest},
    {"selftest", "blocks_write_one_slot", &emu::trampoline<&race_cases::blocks_write_one_slot>, false, 1024},
    {"selftest", "block_reads_anothers_write", &emu::trampoline<&race_cases::block_reads_anothers_write>, false,
     1024},
    {"selftest", "atomic_count", &emu::trampoline<&race_cases::atomic_count>, false, 1024},
    {"selftest", "atomic_then_read", &emu::trampoline<&race_cases::atomic_then_read>, false, 1024},
    {"selftest", "flag_plain", &emu::trampoline<&race_cases::flag_plain>, false, 1024},
    {"selftest", "flag_atomic", &emu::trampoline<&race_cases::flag_atomic>, false, 1024},
    {"selftest", "half_per_thread", &emu::trampoline<&race_cases::half_per_thread>, false, 1024},
    {"selftest", "scale_in_place", &emu::trampoline<&race_cases::scale_in_place>, false, 1024},
    {"selftest", "misaligned_read", &emu::trampoline<&race_cases::misaligned_read>, false, 1024},
};
const int emu::KERNEL_COUNT = sizeof(emu::KERNELS) / sizeof(emu::KERNELS[0]);

extern "C" {
int cuInit(unsigned);
int cuMemAlloc_v2(unsigned long long *, size_t);
int cuMemcpyHtoD_v2(unsigned long long, const void *, size_t);
int cuMemcpyDtoH_v2(void *, unsigned long long, size_t);
int cuMemsetD32_v2(unsigned long long, unsigned, size_t);
int cuModuleLoadData(void **, const void *);
int cuModuleGetFunction(void **, void *, const char *);
int cuLaunchKernel(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                   void **);
int cuStreamCreate(void **, unsigned);
int cuStreamWaitEvent(void *, void *, unsigned);
int cuMemFreeAsync(unsigned long long, void *);
int cuStreamSynchronize(void *);
int cuEventCreate(void **, unsigned);
int cuEventRecord(void *, void *);
int cuEventSynchronize(void *);
int cuMemHostAlloc(void **, size_t, unsigned);
int cuMemFreeHost(void *);
int cuMemcpyHtoDAsync_v2(unsigned long long, const void *, size_t, void *);
int cuMemcpyDtoHAsync_v2(void *, unsigned long long, size_t, void *);
}

static const char *PTX = ".visible .entry block_sum(\n.visible .entry out_of_bounds(\n"
                         ".visible .entry divergent_barrier(\n.visible .entry shuffle_from_exited(\n"
                         ".visible .entry bounded_block_sum(\n.visible .entry racy_left_neighbour(\n"
                         ".visible .entry reads_slot_one(\n.visible .entry racy_shift(\n"
                         ".visible .entry blocks_write_one_slot(\n.visible .entry block_reads_anothers_write(\n"
                         ".visible .entry atomic_count(\n.visible .entry atomic_then_read(\n"
                         ".visible .entry flag_plain(\n.visible .entry flag_atomic(\n"
                         ".visible .entry half_per_thread(\n.visible .entry scale_in_place(\n"
                         ".visible .entry misaligned_read(\n.visible .entry write_at(\n";
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

static int launch(const char *name, unsigned blocks, unsigned threads, void **args) {
    return cuLaunchKernel(function(name), blocks, 1, 1, threads, 1, 1, 0, nullptr, args, nullptr);
}

static unsigned long long device_floats(size_t n, float value) {
    unsigned long long d;
    cuMemAlloc_v2(&d, n * sizeof(float));
    std::vector<float> v(n, value);
    cuMemcpyHtoD_v2(d, v.data(), n * sizeof(float));
    return d;
}

static float read_float(unsigned long long d, size_t i) {
    std::vector<float> v(i + 1);
    cuMemcpyDtoH_v2(v.data(), d, (i + 1) * sizeof(float));
    return v[i];
}

// The race check (racecheck.cpp), in the build whose kernels are instrumented: each race is caught with both
// accesses named, and the right ways to do the same run without a report.
static void race_checks() {
    check(aborts_with([] { left_neighbour_right(); },
                      "race in kernel racy_left_neighbour (selftest): block (0,0,0) thread (1,0,0) reads byte"),
          "a shared-memory read of another thread's write in the same phase is a race");
    check(aborts_with(
              [] {
                  unsigned long long d = device_floats(64, 0.0f);
                  void *a[] = {&d};
                  launch("racy_shift", 1, 64, a);
              },
              "race in kernel racy_shift (selftest): block (0,0,0) thread (1,0,0) writes byte"),
          "a shared-memory write over a slot another thread read in the same phase is a race");
    check(aborts_with(
              [] {
                  unsigned long long d = device_floats(1, 0.0f);
                  void *a[] = {&d};
                  launch("blocks_write_one_slot", 2, 32, a);
              },
              "race in kernel blocks_write_one_slot (selftest): block (1,0,0) thread (0,0,0) writes byte 0 of a "
              "4-byte device buffer, which block (0,0,0) thread (0,0,0) wrote in the same launch"),
          "two blocks writing one element is a race");
    check(aborts_with(
              [] {
                  unsigned long long buf = device_floats(1, 0.0f), out = device_floats(1, 0.0f);
                  void *a[] = {&buf, &out};
                  launch("block_reads_anothers_write", 2, 32, a);
              },
              "block (1,0,0) thread (0,0,0) writes byte 0 of a 4-byte device buffer, which block (0,0,0) thread "
              "(0,0,0) read in the same launch"),
          "a block writing what another block read is a race");
    check(aborts_with(
              [] {
                  unsigned long long count = device_floats(1, 0.0f), out = device_floats(64, 0.0f);
                  void *a[] = {&count, &out};
                  launch("atomic_then_read", 2, 32, a);
              },
              "thread (1,0,0) atomically updates byte 0 of a 4-byte device buffer, which block (0,0,0) thread "
              "(0,0,0) read with no __syncthreads between"),
          "a plain read of an atomically updated counter in the same launch is a race");
    check(aborts_with(
              [] {
                  unsigned long long x = device_floats(64, NAN), flag = device_floats(1, 0.0f);
                  void *a[] = {&x, &flag};
                  launch("flag_plain", 2, 32, a);
              },
              "race in kernel flag_plain"),
          "setting a flag from many threads with plain stores is a race, even of one value");
    check(aborts_with(
              [] {
                  unsigned long long d = device_floats(64, 0.0f);
                  long long i = -1;
                  void *a[] = {&d, &i};
                  launch("write_at", 1, 32, a);
              },
              "kernel write_at (selftest): block (0,0,0) thread (0,0,0) writes 4 bytes 4 bytes before the start of "
              "a 256-byte device buffer (out of bounds)"),
          "a write one element before a buffer is caught at once");
    check(aborts_with(
              [] {
                  unsigned long long d = device_floats(3, 0.0f); // 12 bytes: 4 bytes of padding before the guard
                  long long i = 3;
                  void *a[] = {&d, &i};
                  launch("write_at", 1, 32, a);
              },
              "writes 4 bytes at byte 12, past the end of a 12-byte device buffer (out of bounds)"),
          "a write one element past a buffer that ends inside its page is caught at once");
    check(aborts_with(
              [] {
                  unsigned long long out = device_floats(1, 0.0f), base = device_floats(4, 1.0f);
                  void *a[] = {&out, &base};
                  launch("misaligned_read", 1, 32, a);
              },
              "kernel misaligned_read (selftest): block (0,0,0) thread (0,0,0) reads 4 bytes at byte 2 of a 16-byte "
              "device buffer, not aligned to 4 (a GPU faults: CUDA_ERROR_MISALIGNED_ADDRESS)"),
          "a misaligned access is caught, as a GPU faults on it");
    {
        unsigned long long count = device_floats(1, 0.0f);
        void *a[] = {&count};
        check(launch("atomic_count", 4, 64, a) == 0 && read_float(count, 0) == 256.0f,
              "atomicAdd from every thread of 4 blocks: no race, and the count is right");
        unsigned long long x = device_floats(64, NAN), flag = device_floats(1, 0.0f);
        void *b[] = {&x, &flag};
        check(launch("flag_atomic", 2, 32, b) == 0 && read_float(flag, 0) == 1.0f,
              "setting a flag with atomicExch from many threads is no race");
        unsigned long long h;
        cuMemAlloc_v2(&h, 128 * 2);
        void *c[] = {&h};
        check(launch("half_per_thread", 2, 64, c) == 0, "threads writing neighbouring halves do not race");
        unsigned long long y = device_floats(128, 3.0f);
        void *e[] = {&y};
        check(launch("scale_in_place", 2, 64, e) == 0 && read_float(y, 127) == 6.0f,
              "each thread updating its own element in place is no race");
        // The same launch twice: the second does not race with the first (launches are ordered).
        check(launch("scale_in_place", 2, 64, e) == 0 && read_float(y, 127) == 12.0f,
              "a launch does not race with the launch before it");
    }
}

// The race check between streams (order.cpp): two non-blocking streams and one buffer of 64 floats. Work on
// two streams with nothing ordering it is caught whichever order the emulator runs it in; an event wait or a
// host synchronisation between them, or disjoint bytes, pass.
static std::vector<float> ones(64, 1.0f);
static void stream_race_checks() {
    struct Two {
        void *copy = nullptr, *compute = nullptr, *event = nullptr;
        unsigned long long d = device_floats(64, 0.0f), out = device_floats(1, 0.0f);
        Two() {
            cuStreamCreate(&copy, 1); // CU_STREAM_NON_BLOCKING
            cuStreamCreate(&compute, 1);
            cuEventCreate(&event, 0);
        }
        void upload(size_t first = 0, size_t count = 64) {
            cuMemcpyHtoDAsync_v2(d + 4 * first, ones.data(), 4 * count, copy);
        }
        void launch_on_compute(const char *name) {
            void *scale[] = {&d}, *sum[] = {&out, &d};
            const bool reads_only = strcmp(name, "block_sum") == 0;
            cuLaunchKernel(function(name), 1, 1, 1, reads_only ? 64 : 32, 1, 1, 0, compute, reads_only ? sum : scale,
                           nullptr);
        }
    };
    check(aborts_with(
              [] {
                  Two t;
                  t.upload();
                  t.launch_on_compute("scale_in_place");
                  cuStreamSynchronize(t.copy); // the upload runs first here; on a GPU either may
                  cuStreamSynchronize(t.compute);
              },
              "cuda-emu: race between streams: kernel scale_in_place (selftest) on stream"),
          "a kernel reading what an upload on another stream writes, with no wait between, is a race");
    check(aborts_with(
              [] {
                  Two t;
                  t.upload();
                  t.launch_on_compute("scale_in_place");
                  cuStreamSynchronize(t.copy);
                  cuStreamSynchronize(t.compute);
              },
              ", block (0,0,0) thread (0,0,0), reads byte 0 of a 256-byte device buffer, which an asynchronous copy "
              "to the device on stream"),
          "the report names the kernel's thread, the byte and the copy");
    check(aborts_with(
              [] {
                  Two t;
                  t.launch_on_compute("block_sum");
                  t.upload();
                  cuStreamSynchronize(t.compute); // the kernel reads first here
                  cuStreamSynchronize(t.copy);
              },
              "an asynchronous copy to the device on stream"),
          "an upload overwriting what a kernel on another stream reads, with no wait between, is a race");
    check(aborts_with(
              [] {
                  Two t;
                  t.launch_on_compute("block_sum");
                  t.upload();
                  cuStreamSynchronize(t.compute);
                  cuStreamSynchronize(t.copy);
              },
              "writes byte 0 of a 256-byte device buffer, which kernel block_sum (selftest) on stream"),
          "the write-after-read report names the reading kernel");
    check(aborts_with(
              [] {
                  Two t;
                  t.upload();
                  cuMemFreeAsync(t.d, t.compute);
                  cuStreamSynchronize(t.copy);
                  cuStreamSynchronize(t.compute);
              },
              "an asynchronous free on stream"),
          "freeing on one stream a buffer that another stream's upload writes, with no wait between, is a race");
    {
        Two t;
        t.upload();
        cuEventRecord(t.event, t.copy);
        cuStreamWaitEvent(t.compute, t.event, 0);
        cuMemFreeAsync(t.d, t.compute);
        cuStreamSynchronize(t.compute);
        check(true, "freeing a buffer on a stream that waited for the other stream's upload passes");
    }
    {
        Two t;
        t.upload();
        cuEventRecord(t.event, t.copy);
        cuStreamWaitEvent(t.compute, t.event, 0);
        t.launch_on_compute("scale_in_place");
        cuStreamSynchronize(t.compute);
        check(read_float(t.d, 0) == 2.0f, "an event wait orders a kernel after an upload on another stream");
        t.launch_on_compute("block_sum");
        cuEventRecord(t.event, t.compute);
        cuStreamWaitEvent(t.copy, t.event, 0);
        t.upload();
        cuStreamSynchronize(t.copy);
        check(read_float(t.d, 0) == 1.0f, "an event wait orders an upload after a kernel reading the buffer");
        t.upload();
        cuStreamSynchronize(t.copy);
        t.launch_on_compute("scale_in_place");
        cuStreamSynchronize(t.compute);
        check(read_float(t.d, 0) == 2.0f, "a host synchronisation orders work issued after it");
        t.launch_on_compute("scale_in_place"); // elements 0..31
        t.upload(32, 32);
        cuStreamSynchronize(t.copy);
        cuStreamSynchronize(t.compute);
        check(read_float(t.d, 0) == 4.0f && read_float(t.d, 32) == 1.0f,
              "two streams writing disjoint parts of one buffer at once do not race");
    }
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

#ifdef EMU_RACECHECK_SELFTEST
    race_checks();
    stream_race_checks();
#else
    // A missing barrier: right in one thread order only, so CUDA_EMU_REVERSE=1 shows it.
    check(in_child("0", left_neighbour_right) == 0, "a race that ascending order hides goes unseen in that order");
    check(in_child("1", left_neighbour_right) == 1, "CUDA_EMU_REVERSE=1 turns it into a wrong result");
#endif

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

    // Copies and memsets must stay within one allocation, as the driver checks.
    {
        unsigned long long d = device_floats(64, 0.0f);
        std::vector<float> host(65, 1.0f);
        check(cuMemcpyHtoD_v2(d, host.data(), 64 * sizeof(float)) == 0 &&
                  cuMemcpyHtoD_v2(d + 4, host.data(), 63 * sizeof(float)) == 0,
              "copies within an allocation are accepted");
        check(cuMemcpyHtoD_v2(d, host.data(), 65 * sizeof(float)) == 1 &&
                  cuMemcpyDtoH_v2(host.data(), d + 8, 63 * sizeof(float)) == 1,
              "a copy running past an allocation's end is refused (invalid value)");
        check(cuMemsetD32_v2(d + 2, 0u, 4) == 1, "a 32-bit memset at an unaligned address is refused");
    }

    // Page-locked host memory and asynchronous copies on a non-blocking stream: the host may read what a
    // download wrote, or rewrite what an upload read, only once a wait orders it after the copy.
    {
        void *stream = nullptr, *event = nullptr;
        cuStreamCreate(&stream, 1); // CU_STREAM_NON_BLOCKING
        cuEventCreate(&event, 0);
        unsigned long long d = device_floats(3, 5.0f);
        float *host = nullptr;
        cuMemHostAlloc((void **)&host, 3 * sizeof(float), 0);
        host[0] = 1.0f;
        check(cuMemcpyDtoHAsync_v2(host, d, 3 * sizeof(float), stream) == 0, "a download into pinned memory queues");
        check(aborts_with([&] { printf("%f\n", (double)host[2]); },
                          "the host touched page-locked memory"),
              "reading pinned memory before its download is waited for stops the run");
        cuEventRecord(event, stream);
        cuEventSynchronize(event);
        check(host[0] == 5.0f && host[2] == 5.0f, "after an event wait the host reads the downloaded values");
        host[1] = 9.0f;
        check(cuMemcpyHtoDAsync_v2(d, host, 3 * sizeof(float), stream) == 0, "an upload from pinned memory queues");
        const float seen = host[1];
        check(seen == 9.0f, "the host may read pinned memory an upload reads");
        check(aborts_with([&] { host[1] = 2.0f; }, "an asynchronous copy still reads it"),
              "rewriting pinned memory before its upload is waited for stops the run");
        cuStreamSynchronize(stream);
        host[1] = 3.0f; // the upload has run: the host owns the buffer again
        check(read_float(d, 1) == 9.0f, "the upload carried the value staged before it");
        check(cuMemFreeHost(host) == 0, "pinned memory is freed");
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
                  long long i = -1100; // 4400 bytes before a 256-byte buffer: the guard page before it
                  void *a[] = {&d64, &i};
                  cuLaunchKernel(function("write_at"), 1, 1, 1, 32, 1, 1, 0, nullptr, a, nullptr);
              },
              "write_at (selftest) accessed"),
          "a write far below an allocation's start is caught and names the kernel");
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
