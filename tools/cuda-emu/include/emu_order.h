// cuda-emu: what orders one stream's work after another's (order.cpp has the bookkeeping and the reasoning).
//
// The driver tells it of every stream, every operation issued to one, every event recorded and waited for, and
// every host synchronisation; the race check (racecheck.cpp) asks it whether an earlier operation that touched
// a byte happens before the operation running now. Two operations on different streams with no event wait or
// host synchronisation between them can run at the same time on a GPU, whatever order the emulator ran them
// in. It is on only in the race-checking driver (instrumented kernels); otherwise every call returns at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "emu_registry.h"

namespace emu::order {

/// One operation issued to a stream, numbered from 1 over the process (0: none).
using Op = uint32_t;

/// A vector clock: for each stream (by index), how many of its operations are ordered before. Sorted by index.
using Clock = std::vector<std::pair<uint32_t, uint64_t>>;

/// Where an event was recorded: everything it orders a waiter after.
struct Mark {
    Clock clock;
};

/// An operation just issued: its number and the clock it was issued with (what is ordered before it on other
/// streams). The driver runs it later through `Running`.
struct Issued {
    Op op = 0;
    std::shared_ptr<const Clock> clock;
};

/// Whether ordering is tracked (the race check is on).
bool enabled();
/// A new stream; returns its index. The null stream is index 0 and exists from the start. `blocking`: created
/// without CU_STREAM_NON_BLOCKING (ordered with the null stream both ways).
uint32_t new_stream(bool blocking);
/// The stream is destroyed (its work has run): accesses of its operations no longer count.
void destroy_stream(uint32_t stream);
/// An operation is issued to `stream`: a kernel (`kernel` set) or what `what` names ("an asynchronous copy
/// to the device").
Issued issue(uint32_t stream, const char *what, const KernelEntry *kernel);
/// An event is recorded on `stream` after its last issued operation.
Mark record(uint32_t stream);
/// `stream`'s later operations wait for what `mark` covers (cuStreamWaitEvent).
void wait(uint32_t stream, const Mark &mark);
/// The host waited for `stream` (cuStreamSynchronize, or a call that returns once its work is done): work
/// issued from now on is ordered after it.
void host_waits_stream(uint32_t stream);
/// The host waited for an event.
void host_waits_mark(const Mark &mark);
/// The host waited for the whole device (cuCtxSynchronize, cuMemFree).
void host_waits_all();

/// Marks the operation `issued` as running while it lives (operations nest: a wait runs another stream's
/// work).
class Running {
  public:
    explicit Running(const Issued &issued);
    ~Running();
    Running(const Running &) = delete;
    Running &operator=(const Running &) = delete;

  private:
    Op previous_op;
    const Clock *previous_clock;
};

/// The operation running now (0: none); read through `current()`.
extern Op running_op;
/// The operation running now (0: none). Inline: the race check asks at every access.
inline Op current() { return running_op; }
/// Whether operation `a` happens before the running one: the same stream, a destroyed stream, or an event
/// wait or host synchronisation between them.
bool before_current(Op a);
/// Names the running operation (a library's work queued as a host function: "a cuBLAS product").
void name_current(const char *what);
/// What operation `a` is ("an asynchronous memset"; null for a kernel).
const char *what(Op a);
/// "kernel K (source) on stream 3", for a report.
std::string describe(Op a);

} // namespace emu::order
