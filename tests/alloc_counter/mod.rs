//! A counting global allocator for the steady-state tests (tests/steady_state_alloc.rs,
//! tests/cuda_steady_state.rs): while [`COUNTING`] is set, every allocation and reallocation records its
//! size and a backtrace in [`TRACES`]. Included by those test binaries only (`mod alloc_counter;`), since it
//! installs itself as the binary's global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

struct Counting;

/// Whether allocations are being recorded now.
pub static COUNTING: AtomicBool = AtomicBool::new(false);
/// One entry per allocation recorded: its size and backtrace.
pub static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread records a trace, so the recording's own allocations are not counted.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

fn record(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) || RECORDING.with(Cell::get) {
        return;
    }
    RECORDING.with(|r| r.set(true));
    let trace = format!("size {size}\n{}", std::backtrace::Backtrace::force_capture());
    TRACES.lock().unwrap().push(trace);
    RECORDING.with(|r| r.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
