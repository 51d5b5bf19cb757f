// cuda-emu: happens-before between streams, for the race check's second half (racecheck.cpp).
//
// The emulator runs a stream's work only when something waits for it, so a consumer that nothing orders after
// its producer on another stream reads stale data, and the test fails, but only if the stale values differ and
// only in the order the emulator happened to run the two. A write that overtakes a read on another stream
// (the next batch's upload landing in a buffer the previous step still reads) shows only when the upload runs
// first. This file decides it from the structure instead, as a vector-clock race detector does for threads:
//
// - Operations on one stream are ordered (a stream is a queue).
// - Each stream has a clock: for every other stream, how many of its operations are ordered before the
//   stream's next one. `cuEventRecord` takes a copy of the recording stream's clock plus its own count;
//   `cuStreamWaitEvent` joins that copy into the waiting stream's clock.
// - The host has a clock too. A host wait (a stream or event synchronisation, a synchronous copy, cuMemFree)
//   joins what it waited for into it; every operation issued afterwards, on any stream, joins the host's
//   clock. That is how "synchronise, then issue" orders work on two streams.
// - The null stream and the blocking streams are ordered with each other both ways, as CUDA's legacy default
//   stream is; the engine's streams are non-blocking and take no part.
//
// An operation A on stream s happens before the running operation B when B is on s too, or when B's clock
// counts at least A's position on s. The race check keeps, per 2-byte granule of device memory, the last
// operation that wrote it and the newest reads, and asks `before_current` on every access. The host clock is
// one for the whole process, not one per host thread: the engine's ECS systems run on several threads, ordered
// by the scheduler in ways the driver cannot see, so treating the host as one thread errs toward silence.
//
// Every call is made with the driver's stream lock held, so nothing here locks.

#include "emu_order.h"

#include <stdio.h>

#include <algorithm>

namespace emu::race {
bool instrumented(); // racecheck.cpp: the kernels carry the race check's instrumentation
}

namespace emu::order {
namespace {

struct StreamState {
    std::shared_ptr<const Clock> clock = std::make_shared<const Clock>(); // ordered before its next operation
    uint64_t issued = 0;        // operations issued to it
    uint64_t host_joined = ~0ull; // the host clock's version last joined into `clock`
    bool blocking = true;
    bool alive = true;
};

struct OpInfo {
    uint32_t stream;
    uint64_t seq; // its position on the stream, from 1
    const KernelEntry *kernel;
    const char *what;
};

std::vector<StreamState> streams(1); // [0]: the null stream
std::vector<OpInfo> ops(1);          // [0]: none
Clock host;
uint64_t host_version = 0;
const Clock *running_clock = nullptr;

uint64_t at(const Clock &c, uint32_t stream) {
    auto it = std::lower_bound(c.begin(), c.end(), std::make_pair(stream, (uint64_t)0));
    return it != c.end() && it->first == stream ? it->second : 0;
}

// `into` joined with `from`; whether anything changed.
bool join(Clock &into, const Clock &from) {
    bool changed = false;
    for (const auto &[s, n] : from) {
        auto it = std::lower_bound(into.begin(), into.end(), std::make_pair(s, (uint64_t)0));
        if (it != into.end() && it->first == s) {
            if (it->second < n) {
                it->second = n;
                changed = true;
            }
        } else {
            into.insert(it, {s, n});
            changed = true;
        }
    }
    return changed;
}

// A stream's clock with its own issued operations counted: what waiting for it now orders after.
Clock whole(uint32_t s) {
    Clock c = *streams[s].clock;
    join(c, Clock{{s, streams[s].issued}});
    return c;
}

void join_host(const Clock &c) {
    if (join(host, c)) ++host_version;
}

} // namespace

Op running_op = 0;

bool enabled() { return race::instrumented(); }

uint32_t new_stream(bool blocking) {
    if (!enabled()) return 0;
    streams.emplace_back();
    streams.back().blocking = blocking;
    return (uint32_t)(streams.size() - 1);
}

void destroy_stream(uint32_t s) {
    if (!enabled() || s == 0 || s >= streams.size()) return;
    streams[s].alive = false;
    streams[s].clock = std::make_shared<const Clock>();
    // Keeps the clocks that later operations copy small: a test process creates and destroys many streams.
    host.erase(std::remove_if(host.begin(), host.end(), [s](const auto &e) { return e.first == s; }), host.end());
    ++host_version;
}

Issued issue(uint32_t s, const char *what, const KernelEntry *kernel) {
    if (!enabled()) return Issued{};
    StreamState &st = streams[s];
    Clock next;
    bool changed = false;
    const auto start = [&] {
        if (!changed) next = *st.clock;
        changed = true;
    };
    if (st.host_joined != host_version) {
        start();
        join(next, host);
        st.host_joined = host_version;
    }
    if (s == 0) { // the null stream waits for every blocking stream
        for (uint32_t o = 1; o < streams.size(); ++o)
            if (streams[o].alive && streams[o].blocking && streams[o].issued) {
                start();
                join(next, whole(o));
            }
    } else if (st.blocking && streams[0].issued) { // a blocking stream waits for the null stream
        start();
        join(next, whole(0));
    }
    if (changed && next != *st.clock) st.clock = std::make_shared<const Clock>(std::move(next));
    st.issued += 1;
    if (ops.size() == UINT32_MAX) {
        fprintf(stderr, "cuda-emu racecheck: more than 2^32 stream operations in one process\n");
        abort();
    }
    ops.push_back(OpInfo{s, st.issued, kernel, what});
    return Issued{(Op)(ops.size() - 1), st.clock};
}

Mark record(uint32_t s) {
    if (!enabled()) return Mark{};
    return Mark{whole(s)};
}

void wait(uint32_t s, const Mark &mark) {
    if (!enabled()) return;
    Clock next = *streams[s].clock;
    if (join(next, mark.clock)) streams[s].clock = std::make_shared<const Clock>(std::move(next));
}

void host_waits_stream(uint32_t s) {
    if (enabled()) join_host(whole(s));
}

void host_waits_mark(const Mark &mark) {
    if (enabled()) join_host(mark.clock);
}

void host_waits_all() {
    if (!enabled()) return;
    for (uint32_t s = 0; s < streams.size(); ++s)
        if (streams[s].alive) join_host(whole(s));
}

Running::Running(const Issued &issued) : previous_op(running_op), previous_clock(running_clock) {
    running_op = issued.op;
    running_clock = issued.clock.get();
}

Running::~Running() {
    running_op = previous_op;
    running_clock = previous_clock;
}

bool before_current(Op a) {
    const OpInfo &x = ops[a], &me = ops[running_op];
    if (x.stream == me.stream || !streams[x.stream].alive) return true;
    return at(*running_clock, x.stream) >= x.seq;
}

void name_current(const char *what) {
    if (running_op) ops[running_op].what = what;
}

const char *what(Op a) { return ops[a].what; }

std::string describe(Op a) {
    const OpInfo &x = ops[a];
    char text[240];
    const char *stream = x.stream == 0 ? " (the null stream)" : "";
    if (x.kernel)
        snprintf(text, sizeof text, "kernel %s (%s) on stream %u%s", x.kernel->name, x.kernel->source, x.stream,
                 stream);
    else
        snprintf(text, sizeof text, "%s on stream %u%s", x.what, x.stream, stream);
    return text;
}

} // namespace emu::order
