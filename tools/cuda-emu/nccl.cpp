// cuda-emu: the NCCL calls the engine makes (unique id, communicator per rank, all-reduce, broadcast), between
// processes on one machine through a shared-memory file, so the data-parallel CUDA path (the id broadcast over
// MPI, ncclCommInitRank, the gradient all-reduce) runs under mpirun without GPUs. Built as libnccl.so.2.
// Each rank copies its buffer into its slot, waits for the others, and reduces the slots in rank order (the
// same bits on every rank); the result lands in the stream's order (see "deliver").

#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "emu_stream.h"

typedef int ncclResult_t;
enum : int { SUCCESS = 0, SYSTEM_ERROR = 2, INVALID_ARGUMENT = 4, INVALID_USAGE = 5 };
enum : int { SUM = 0, PROD = 1, MAX = 2, MIN = 3, AVG = 4 };
enum : int { FLOAT32 = 7, FLOAT64 = 8 };

struct ncclUniqueId {
    char internal[128];
};

// Per-rank slot of the shared file: the largest buffer one collective may carry.
static const size_t SLOT = (size_t)256 << 20;
static const size_t HEADER = 4096;

struct Header {
    std::atomic<unsigned> arrived;
    std::atomic<unsigned> generation;
};

struct Comm {
    int rank, nranks;
    char *base;
    size_t mapped;
    Header *header;
    char *slot(int r) const { return base + HEADER + SLOT * (size_t)r; }
};

// A barrier of all ranks (sense by generation); gives up after 10 minutes.
static ncclResult_t barrier(Comm *c) {
    const unsigned gen = c->header->generation.load();
    if (c->header->arrived.fetch_add(1) + 1 == (unsigned)c->nranks) {
        c->header->arrived.store(0);
        c->header->generation.fetch_add(1);
        return SUCCESS;
    }
    const time_t start = time(nullptr);
    while (c->header->generation.load() == gen) {
        sched_yield();
        if (time(nullptr) - start > 600) {
            fprintf(stderr, "cuda-emu NCCL: rank %d waited 10 minutes for the other ranks\n", c->rank);
            return SYSTEM_ERROR;
        }
    }
    return SUCCESS;
}

// A collective reads its input when it is called, after its stream's earlier work (which includes that
// stream's waits on other streams: the emulated driver queues a stream's operations until something waits for
// them, so the stream is synchronised first), and its result lands in the stream's order: the copy into the
// output is queued on the stream (through the emulated driver's cuLaunchHostFunc). So both missing
// dependencies show as stale data, as on a GPU where the communicator's stream runs beside the compute
// stream: a collective not ordered after the kernels writing its input reads their old values, and a
// consumer not ordered after the collective's stream reads the old output.
//
// For the race check, the read is an operation of its own on the stream (a host function run at once) and so is
// the delivery; each tells the driver what it touches. Running the stream orders nothing after it on the host.
static void read_input(void *stream, void *into, const void *send, size_t bytes, const char *what) {
    emu_stream::run_on(stream, [=] {
        emu_stream::access(send, bytes, false, what);
        memcpy(into, send, bytes);
    });
    emu_stream::run_stream(stream);
}

// Queues the copy of a collective's result into `recv`.
static void deliver(void *stream, void *recv, std::vector<char> result, const char *what) {
    auto shared = std::make_shared<std::vector<char>>(std::move(result));
    emu_stream::run_on(stream, [recv, shared, what] {
        emu_stream::access(recv, shared->size(), true, what);
        memcpy(recv, shared->data(), shared->size());
    });
}

static std::string shm_path(const ncclUniqueId &id) {
    return std::string("/dev/shm/cuda-emu-nccl-") + std::string(id.internal, strnlen(id.internal, 64));
}

template <class T> static void reduce(const Comm *c, T *recv, size_t count, int op) {
    for (size_t i = 0; i < count; ++i) {
        T acc = ((const T *)c->slot(0))[i];
        for (int r = 1; r < c->nranks; ++r) {
            const T v = ((const T *)c->slot(r))[i];
            acc = op == MAX ? (v > acc ? v : acc) : op == MIN ? (v < acc ? v : acc) : op == PROD ? acc * v : acc + v;
        }
        recv[i] = op == AVG ? acc / (T)c->nranks : acc;
    }
}

extern "C" {

ncclResult_t ncclGetVersion(int *v) {
    *v = 22605;
    return SUCCESS;
}

const char *ncclGetErrorString(ncclResult_t r) { return r == SUCCESS ? "no error" : "cuda-emu NCCL error"; }
const char *ncclGetLastError(void *) { return ""; }

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    unsigned char bytes[12];
    const int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, bytes, sizeof bytes) != (ssize_t)sizeof bytes) return SYSTEM_ERROR;
    close(fd);
    for (size_t i = 0; i < sizeof bytes; ++i) snprintf(id->internal + 2 * i, 3, "%02x", bytes[i]);
    return SUCCESS;
}

ncclResult_t ncclCommInitRank(Comm **out, int nranks, ncclUniqueId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks || id.internal[0] == 0) return INVALID_ARGUMENT;
    const std::string path = shm_path(id);
    const int fd = open(path.c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0) return SYSTEM_ERROR;
    const size_t size = HEADER + SLOT * (size_t)nranks;
    if (ftruncate(fd, (off_t)size) != 0) return SYSTEM_ERROR; // the same size from every rank: no data lost
    char *base = (char *)mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) return SYSTEM_ERROR;
    Comm *c = new Comm{rank, nranks, base, size, (Header *)base};
    if (barrier(c) != SUCCESS) return SYSTEM_ERROR; // every rank has the file open
    if (rank == 0) unlink(path.c_str());
    *out = c;
    return SUCCESS;
}

static ncclResult_t release(Comm *c) {
    munmap(c->base, c->mapped);
    delete c;
    return SUCCESS;
}
ncclResult_t ncclCommDestroy(Comm *c) { return release(c); }
ncclResult_t ncclCommAbort(Comm *c) { return release(c); }
ncclResult_t ncclCommFinalize(Comm *) { return SUCCESS; }
ncclResult_t ncclCommCount(const Comm *c, int *n) {
    *n = c->nranks;
    return SUCCESS;
}
ncclResult_t ncclCommUserRank(const Comm *c, int *r) {
    *r = c->rank;
    return SUCCESS;
}
ncclResult_t ncclCommCuDevice(const Comm *c, int *d) {
    *d = c->rank;
    return SUCCESS;
}
ncclResult_t ncclGroupStart() { return SUCCESS; }
ncclResult_t ncclGroupEnd() { return SUCCESS; }

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, int dtype, int op, Comm *c, void *stream) {
    const size_t width = dtype == FLOAT32 ? 4 : dtype == FLOAT64 ? 8 : 0;
    if (width == 0 || op < SUM || op > AVG) return INVALID_ARGUMENT;
    if (count * width > SLOT) {
        fprintf(stderr, "cuda-emu NCCL: an all-reduce of %zu bytes is over the %zu-byte slot\n", count * width, SLOT);
        return INVALID_USAGE;
    }
    read_input(stream, c->slot(c->rank), send, count * width, "an NCCL all-reduce");
    if (barrier(c) != SUCCESS) return SYSTEM_ERROR;
    std::vector<char> result(count * width);
    if (dtype == FLOAT32)
        reduce(c, (float *)result.data(), count, op);
    else
        reduce(c, (double *)result.data(), count, op);
    if (barrier(c) != SUCCESS) return SYSTEM_ERROR; // no rank overwrites its slot before every rank has read it
    deliver(stream, recv, std::move(result), "an NCCL all-reduce");
    return SUCCESS;
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, int dtype, int root, Comm *c, void *stream) {
    const size_t width = dtype == FLOAT32 ? 4 : dtype == FLOAT64 ? 8 : 0;
    if (width == 0 || root < 0 || root >= c->nranks || count * width > SLOT) return INVALID_ARGUMENT;
    if (c->rank == root)
        read_input(stream, c->slot(root), send, count * width, "an NCCL broadcast");
    else
        emu_stream::run_stream(stream);
    if (barrier(c) != SUCCESS) return SYSTEM_ERROR;
    std::vector<char> result(c->slot(root), c->slot(root) + count * width);
    if (barrier(c) != SUCCESS) return SYSTEM_ERROR;
    deliver(stream, recv, std::move(result), "an NCCL broadcast");
    return SUCCESS;
}

} // extern "C"
