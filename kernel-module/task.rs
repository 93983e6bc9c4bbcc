// SPDX-License-Identifier: GPL-2.0
//! Threads: walking every thread, and each one's kernel stack, for the
//! activeness check (`transition.rs`).
//!
//! C headers: [`include/linux/sched/signal.h`](srctree/include/linux/sched/signal.h),
//! [`arch/x86/include/asm/unwind.h`](srctree/arch/x86/include/asm/unwind.h).

use kernel::{
    bindings,
    ffi::{
        c_int,
        c_uint,
        c_ulong,
        c_void, //
    },
    prelude::*,
};

unsafe extern "C" {
    /// `kmend_export.c`: `for_each_process_thread` (a macro) for Rust.
    fn kmend_helper_for_each_task(
        cb: Option<unsafe extern "C" fn(*mut bindings::task_struct, *mut c_void) -> c_int>,
        data: *mut c_void,
    ) -> c_int;

    /// `kmend_export.c`: `task_pid_nr()`.
    fn kmend_helper_task_pid(task: *mut bindings::task_struct) -> c_int;

    /// `kmend_export.c`: `__get_task_comm()` into 16 bytes.
    fn kmend_helper_task_comm(task: *mut bindings::task_struct, buf: *mut u8);

    /// `kmend_export.c`: context switches so far, and whether on a CPU now.
    fn kmend_helper_task_switches(task: *mut bindings::task_struct, on_cpu: *mut bool) -> c_ulong;

    /// `kmend_export.c`: a reliable walk of a task's kernel stack.
    fn kmend_helper_stack_walk(task: *mut bindings::task_struct, buf: *mut c_ulong, size: c_uint) -> c_int;

    /// `kmend_export.c`: the idle task of every online CPU.
    fn kmend_helper_idle_tasks(out: *mut *mut bindings::task_struct, max: c_uint) -> c_uint;

    /// `kmend_export.c`: whether the module loader placed `idle_threads`.
    fn kmend_helper_idle_tasks_placed() -> bool;
}

/// A thread, borrowed during [`for_each_task`].
pub(crate) struct TaskRef {
    task: *mut bindings::task_struct,
}

impl TaskRef {
    /// A thread the caller holds a reference on.
    ///
    /// # Safety
    ///
    /// `task` is a live task, and stays so while the result is used.
    pub(crate) unsafe fn from_raw(task: *mut bindings::task_struct) -> Self {
        Self { task }
    }

    /// The task, for taking a reference on it.
    pub(crate) fn as_ptr(&self) -> *mut bindings::task_struct {
        self.task
    }

    /// The thread id.
    pub(crate) fn pid(&self) -> i32 {
        // SAFETY: `task` is valid during the iteration (see `for_each_task`).
        unsafe { kmend_helper_task_pid(self.task) }
    }

    /// The command name, up to 16 bytes.
    pub(crate) fn comm(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        // SAFETY: `task` is valid during the iteration; `out` has the 16
        // bytes (TASK_COMM_LEN) the helper writes.
        unsafe { kmend_helper_task_comm(self.task, out.as_mut_ptr()) };
        out
    }

    /// The task's identity for this walk (its address; stable while it lives).
    pub(crate) fn key(&self) -> usize {
        self.task as usize
    }

    /// How many times the task has been switched out, and whether it is on
    /// a CPU right now (then its stack is moving).
    pub(crate) fn switches(&self) -> (u64, bool) {
        let mut on_cpu = false;
        // SAFETY: `task` is valid during the iteration; `on_cpu` is writable.
        let n = unsafe { kmend_helper_task_switches(self.task, &mut on_cpu) };
        (n as u64, on_cpu)
    }

    /// Walks the thread's kernel stack into `buf`: every return address,
    /// `__sched` functions included, and the interrupted address of every
    /// interrupt frame. Fails with `EINVAL` if the walk cannot be trusted
    /// (an unwinder error, an address outside kernel text), `ENOSPC` if
    /// `buf` filled up first, `ESRCH` if the thread has exited.
    ///
    /// The result is only sure for a thread that is off-CPU and stays so
    /// (the machine is stopped), or for the calling thread.
    pub(crate) fn stack<'a>(&self, buf: &'a mut [c_ulong]) -> Result<&'a [c_ulong]> {
        let len = c_uint::try_from(buf.len()).unwrap_or(c_uint::MAX);
        // SAFETY: `task` is valid during the iteration; `buf` has room for
        // `len` entries.
        let n = unsafe { kmend_helper_stack_walk(self.task, buf.as_mut_ptr(), len) };
        if n < 0 {
            return Err(Error::from_errno(n));
        }
        Ok(&buf[..(n as usize).min(buf.len())])
    }
}

/// Calls `f` on every thread until it returns an error, which is returned.
///
/// Runs under the RCU read lock: `f` must not sleep.
pub(crate) fn for_each_task<F: FnMut(&TaskRef) -> Result>(mut f: F) -> Result {
    unsafe extern "C" fn trampoline<F: FnMut(&TaskRef) -> Result>(
        task: *mut bindings::task_struct,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `&mut F` passed below, alive for the call.
        let f = unsafe { &mut *data.cast::<F>() };
        match f(&TaskRef { task }) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
    // SAFETY: the callback matches the helper's type and `f` outlives it.
    let ret = unsafe { kmend_helper_for_each_task(Some(trampoline::<F>), (&raw mut f).cast()) };
    if ret == 0 { Ok(()) } else { Err(Error::from_errno(ret)) }
}

/// Proof that kmend.ko can find the idle tasks: the module loader placed
/// the kernel's `idle_threads` when kmend.ko loaded (it was linked by
/// `cargo xtask`, which makes that reference a livepatch relocation).
pub(crate) struct IdleTasks;

impl IdleTasks {
    /// Fails (and kmend.ko does not load) if `idle_threads` was not placed:
    /// a switch could not check the idle tasks.
    pub(crate) fn find() -> Result<Self> {
        // SAFETY: compares an address, reads no memory.
        if unsafe { kmend_helper_idle_tasks_placed() } {
            Ok(Self)
        } else {
            pr_err!("the kernel's idle tasks were not placed when kmend.ko loaded: build kmend.ko with `cargo xtask` (-2)\n");
            Err(ENOENT)
        }
    }
}

/// The idle task of every online CPU, into `out`; returns those filled.
/// The task list does not hold them. Call with the machine stopped (the
/// online CPUs fixed, every idle task off-CPU). Idle tasks never exit, so
/// the pointers stay valid without a reference.
pub(crate) fn idle_tasks(out: &mut [*mut bindings::task_struct]) -> &[*mut bindings::task_struct] {
    let max = c_uint::try_from(out.len()).unwrap_or(c_uint::MAX);
    // SAFETY: `out` has room for `max` pointers.
    let n = unsafe { kmend_helper_idle_tasks(out.as_mut_ptr(), max) };
    &out[..(n as usize).min(out.len())]
}
