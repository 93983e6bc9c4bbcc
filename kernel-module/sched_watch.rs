// SPDX-License-Identifier: GPL-2.0
//! Which threads ran since a moment.
//!
//! While a switch is being tried, a probe on the `sched_switch` tracepoint
//! records, per CPU, every thread switched out (holding a reference on it).
//! With the machine stopped, only those threads can have a stack other than
//! the one the check without stopping saw: everything else has not run
//! since. So only they are walked again, and the work inside the stop
//! grows with how much ran during the check, not with how many threads
//! exist (`transition.rs`). The threads that were on a CPU during the check
//! are among them: the stop itself switches them out. (The per-CPU idle
//! tasks, which the task list does not hold, are walked in the stop
//! whatever the watch saw: `task::idle_tasks`.)
//!
//! C headers: [`include/linux/tracepoint.h`](srctree/include/linux/tracepoint.h),
//! [`include/trace/events/sched.h`](srctree/include/trace/events/sched.h).

use core::{
    ffi::CStr,
    ptr,
    sync::atomic::{
        AtomicBool,
        AtomicPtr,
        AtomicUsize,
        Ordering, //
    },
};

use kernel::{
    alloc::KVVec,
    bindings,
    cpu::CpuId,
    ffi::c_void,
    prelude::*,
};

/// Threads recorded per CPU before the record overflows (then the stopped
/// check walks every thread, as without the watch).
const PER_CPU: usize = 512;

/// One CPU's record, written only by that CPU (from the probe, with
/// preemption off) and read only with the machine stopped or the probe
/// unregistered.
struct CpuLog {
    len: AtomicUsize,
    overflow: AtomicBool,
    tasks: [AtomicPtr<bindings::task_struct>; PER_CPU],
}

/// Whether the probe records. Cleared with the machine stopped once a
/// switch is done, so nothing is recorded after it.
static ARMED: AtomicBool = AtomicBool::new(false);
// Cleared with the machine stopped (`take`), when no probe can be running:
// a CPU enters the stop only after its last context switch is done.

/// The `sched_switch` probe.
///
/// # Safety
///
/// Called by the tracepoint with the `data` it was registered with: the
/// [`CpuLog`] array of a live [`SchedWatch`], on the CPU switching, with
/// preemption off; `prev` is a live task.
unsafe extern "C" fn on_sched_switch(
    data: *mut c_void,
    _preempt: bool,
    prev: *mut bindings::task_struct,
    _next: *mut bindings::task_struct,
    _prev_state: u32,
) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let cpu = CpuId::current().as_u32() as usize;
    // SAFETY: `data` points to `nr_cpu_ids` logs (see `SchedWatch::arm`),
    // and `cpu` is below `nr_cpu_ids`.
    let log = unsafe { &*data.cast::<CpuLog>().add(cpu) };
    let n = log.len.load(Ordering::Relaxed);
    if n == PER_CPU {
        log.overflow.store(true, Ordering::Relaxed);
        return;
    }
    // SAFETY: `prev` is live; the reference is dropped by `SchedWatch::release`.
    unsafe { bindings::get_task_struct(prev) };
    log.tasks[n].store(prev, Ordering::Relaxed);
    log.len.store(n + 1, Ordering::Relaxed);
}

/// The probe, as the tracepoint API takes it.
fn probe() -> *mut c_void {
    on_sched_switch as *const () as *mut c_void
}

/// Finds a tracepoint by name (`for_each_kernel_tracepoint` callback).
unsafe extern "C" fn find_tracepoint(tp: *mut bindings::tracepoint, found: *mut c_void) {
    // SAFETY: `tp` is a built-in tracepoint with a static, NUL-terminated name.
    let name = unsafe { CStr::from_ptr((*tp).name.cast()) };
    if name.to_bytes() == b"sched_switch" {
        // SAFETY: `found` is the `*mut tracepoint` slot passed by `SchedWatch::arm`.
        unsafe { *found.cast::<*mut bindings::tracepoint>() = tp };
    }
}

/// The watch: the probe's registration and the per-CPU records.
///
/// # Invariants
///
/// `tp` is non-null exactly while the probe is registered on it with
/// `logs` as its data; `logs` has `nr_cpu_ids` entries once allocated.
pub(crate) struct SchedWatch {
    tp: *mut bindings::tracepoint,
    logs: KVVec<CpuLog>,
}

// SAFETY: used only under the registry lock; the probe reaches `logs` only
// through atomics, one CPU per log.
unsafe impl Send for SchedWatch {}

/// What the stopped check gets from the watch.
pub(crate) enum Ran<'a> {
    /// The threads switched out since arming (possibly repeated).
    Threads(&'a mut [*mut bindings::task_struct]),
    /// Not known (the watch is off, or a CPU's record overflowed).
    Unknown,
}

impl SchedWatch {
    pub(crate) const fn new() -> Self {
        Self { tp: ptr::null_mut(), logs: KVVec::new() }
    }

    /// Registers the probe (at module load). Recording starts only when
    /// [`Self::arm`]ed; until then the probe returns at once. Registered
    /// for the module's life rather than per switch: registering patches
    /// the tracepoint's jump label and static call in `__schedule`, which
    /// kmend should not do hundreds of times a minute. On failure nothing
    /// records, and the stopped check walks every thread.
    pub(crate) fn start(&mut self) -> Result {
        let cpus = kernel::cpu::nr_cpu_ids() as usize;
        self.logs.reserve(cpus, GFP_KERNEL)?;
        for _ in 0..cpus {
            self.logs.push(
                CpuLog {
                    len: AtomicUsize::new(0),
                    overflow: AtomicBool::new(false),
                    tasks: [const { AtomicPtr::new(ptr::null_mut()) }; PER_CPU],
                },
                GFP_KERNEL,
            )?;
        }
        let mut tp: *mut bindings::tracepoint = ptr::null_mut();
        // SAFETY: the callback matches and `tp` outlives the call.
        unsafe { bindings::for_each_kernel_tracepoint(Some(find_tracepoint), (&raw mut tp).cast()) };
        if tp.is_null() {
            return Err(ENOENT);
        }
        // SAFETY: `on_sched_switch` has the probe signature of
        // `sched_switch` (data first); `logs` stays allocated until `free`
        // has unregistered the probe and waited for it.
        kernel::error::to_result(unsafe {
            bindings::tracepoint_probe_register(tp, probe(), self.logs.as_mut_ptr().cast())
        })?;
        self.tp = tp;
        Ok(())
    }

    /// Starts recording. Call before the check without stopping begins:
    /// the full fence orders the store before the check's reads of the
    /// threads' `on_cpu` (a thread switched out before it could be recorded
    /// is still seen on its CPU by the check, which holds it; see
    /// `transition.rs`).
    pub(crate) fn arm(&mut self) -> Result {
        if self.tp.is_null() {
            return Err(ENOENT);
        }
        ARMED.store(true, Ordering::SeqCst);
        core::sync::atomic::fence(Ordering::SeqCst);
        Ok(())
    }

    /// Stops recording without dropping what was recorded (an attempt that
    /// ended before stopping the machine; the next one arms again, and the
    /// records stay until a stop takes them or [`Self::disarm`] drops them).
    pub(crate) fn pause(&self) {
        ARMED.store(false, Ordering::Release);
    }

    /// With the machine stopped: stops recording and moves what was
    /// recorded into `out` (whose references the caller drops with
    /// [`release`] once the machine runs). The next attempt arms again.
    pub(crate) fn take<'a>(&self, out: &'a mut Held) -> Ran<'a> {
        if self.tp.is_null() {
            return Ran::Unknown;
        }
        let mut overflow = false;
        for log in self.logs.iter() {
            let n = log.len.load(Ordering::Relaxed);
            for t in &log.tasks[..n] {
                // `out` has room for every record (`Held::for_watch`).
                let _ = out.0.push_within_capacity(t.load(Ordering::Relaxed));
            }
            log.len.store(0, Ordering::Relaxed);
            overflow |= log.overflow.swap(false, Ordering::Relaxed);
        }
        ARMED.store(false, Ordering::Relaxed);
        if overflow { Ran::Unknown } else { Ran::Threads(&mut out.0) }
    }

    /// Stops recording. Records left behind (an attempt that ended without
    /// stopping the machine) are dropped once no CPU can still be in the
    /// probe, which costs an RCU grace period; after a switch the stop has
    /// already taken everything, so no wait is needed. Sleeps.
    pub(crate) fn disarm(&mut self) {
        ARMED.store(false, Ordering::Release);
        if self.logs.iter().any(|l| l.len.load(Ordering::Relaxed) > 0) {
            self.drain();
        }
    }

    /// Waits until no CPU is in the probe (it runs with preemption off, so
    /// one RCU grace period), then drops every record. Sleeps.
    fn drain(&mut self) {
        // SAFETY: process context (an ioctl, or the module's exit).
        unsafe { bindings::synchronize_rcu() };
        for log in self.logs.iter() {
            let n = log.len.swap(0, Ordering::Relaxed);
            for t in &log.tasks[..n] {
                // SAFETY: the probe took this reference.
                unsafe { bindings::put_task_struct(t.load(Ordering::Relaxed)) };
            }
            log.overflow.store(false, Ordering::Relaxed);
        }
    }

    /// Unregisters the probe and frees the records, at module exit.
    pub(crate) fn free(&mut self) {
        ARMED.store(false, Ordering::Release);
        if !self.tp.is_null() {
            // SAFETY: by the type invariant the probe is registered on `tp`
            // with this data.
            let ret = unsafe { bindings::tracepoint_probe_unregister(self.tp, probe(), self.logs.as_mut_ptr().cast()) };
            if ret != 0 {
                pr_err!("sched_switch probe: unregister failed ({})\n", ret);
            }
            self.tp = ptr::null_mut();
        }
        // A CPU may still be returning from the probe: wait before the
        // memory goes.
        self.drain();
        self.logs = KVVec::new();
    }
}

/// Threads held by reference, each entry one reference (repeats allowed);
/// dropping it drops them, so it must drop in process context.
pub(crate) struct Held(KVVec<*mut bindings::task_struct>);

impl Held {
    /// Room for everything [`SchedWatch::take`] can move out.
    pub(crate) fn for_watch(watch: &SchedWatch) -> Result<Self> {
        Ok(Self(KVVec::with_capacity(watch.logs.len() * PER_CPU, GFP_KERNEL)?))
    }

    /// Room for `n` threads.
    pub(crate) fn with_capacity(n: usize) -> Result<Self> {
        Ok(Self(KVVec::with_capacity(n, GFP_KERNEL)?))
    }

    /// Takes a reference on `task` and keeps it; false (and nothing taken)
    /// if there is no room. Callable with interrupts off.
    ///
    /// # Safety
    ///
    /// `task` is a live task.
    pub(crate) unsafe fn hold(&mut self, task: *mut bindings::task_struct) -> bool {
        if self.0.len() == self.0.capacity() {
            return false;
        }
        // SAFETY: `task` is live (caller); the reference is dropped in `drop`.
        unsafe { bindings::get_task_struct(task) };
        let _ = self.0.push_within_capacity(task);
        true
    }

    /// The threads, sorted so that repeats are adjacent.
    pub(crate) fn sorted(&mut self, sort: impl FnOnce(&mut [*mut bindings::task_struct])) -> &[*mut bindings::task_struct] {
        sort(&mut self.0);
        &self.0
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for &t in self.0.iter() {
            // SAFETY: each entry holds a reference (`hold`, or the probe's,
            // moved here by `SchedWatch::take`).
            unsafe { bindings::put_task_struct(t) };
        }
    }
}
