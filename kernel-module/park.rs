// SPDX-License-Identifier: GPL-2.0
//! Parking sleepers: moving a user thread that sleeps inside a function
//! being switched out of it, to a point where it runs nothing of the patch,
//! until the switch is over.
//!
//! A switch needs every thread clear of the code that stops running
//! (`transition.rs`). A thread asleep in such a function (a shell waiting
//! in `do_wait`, a server in `ep_poll` or `pipe_read`) never leaves it by
//! itself, and the switch would retry and then refuse. The kernel
//! livepatch moves such threads with a fake signal, and switches each one
//! when it is on its way back to user mode. kmend does the first half the
//! same way and keeps its one switch for all threads: it queues a task
//! work with `TWA_SIGNAL` on the thread, which wakes it from an
//! interruptible sleep like a signal that delivers nothing; the syscall
//! gives up (`-ERESTARTSYS`: restarted afterwards, invisibly to the
//! program; some calls, like `epoll_wait`, return `EINTR` as they would for
//! the livepatch's fake signal), and on the way out the work runs
//! [`park`], which sleeps until this switch is over. Its stack then holds
//! only the syscall exit path and kmend's park, so the next try of the
//! switch finds it clean; afterwards it goes back to user mode and restarts
//! the call, in the new code. Every thread still sees all old or all new
//! functions of a patch: the switch is still one instant for all threads.
//!
//! Kernel threads have no way back to user mode and are never parked;
//! neither is a thread in an uninterruptible sleep (the work waits for it
//! to wake up). A park lasts until the switch ends ([`end_of_switch`]) and
//! at most [`MAX_PARK_MS`].

use core::sync::atomic::{
    AtomicPtr,
    AtomicU64,
    Ordering, //
};

use kernel::{
    bindings,
    prelude::*, //
};

use crate::{
    kapi,
    modref::ModuleRef,
    task::TaskRef,
};

/// Longest a thread stays parked, whatever happens to the switch.
const MAX_PARK_MS: i64 = 10_000;

/// How often a parked thread looks whether its switch is over.
const PARK_POLL_MS: u32 = 1;

/// Counts the switches that ended; a parked thread waits for it to move.
static SWITCHES_ENDED: AtomicU64 = AtomicU64::new(0);

/// kmend.ko (`THIS_MODULE`), held by every queued park: kmend cannot be
/// unloaded while a thread may still run [`park`].
static THIS_MODULE: AtomicPtr<bindings::module> = AtomicPtr::new(core::ptr::null_mut());

/// Records kmend.ko's own module, from its init.
pub(crate) fn init(module: *mut bindings::module) {
    THIS_MODULE.store(module, Ordering::Release);
}

/// The threads parked (or asked to park) for one switch, so that each is
/// asked once.
pub(crate) struct Parking {
    /// Which switch: the value of [`SWITCHES_ENDED`] while it runs.
    switch: u64,
    asked: KVec<usize>,
}

impl Parking {
    /// For the switch about to be tried.
    pub(crate) fn new() -> Self {
        Self { switch: SWITCHES_ENDED.load(Ordering::Acquire), asked: KVec::new() }
    }

    /// Asks `task`, found asleep in code being switched away from, to park
    /// on its way back to user mode, if it is a user thread in an
    /// interruptible sleep. Returns whether it was asked (now or before).
    /// Callable under the RCU read lock (nothing sleeps).
    pub(crate) fn ask(&mut self, task: &TaskRef) -> bool {
        if self.asked.contains(&task.key()) {
            return true;
        }
        let t = task.as_ptr();
        // SAFETY: the task is live during the caller's walk; `flags` is a
        // plain word the task itself changes only by adding bits as it
        // exits, `__state` one the scheduler changes (read once, as
        // READ_ONCE does).
        let (flags, state) = unsafe { ((*t).flags, core::ptr::read_volatile(&raw const (*t).__state)) };
        if flags & (bindings::PF_KTHREAD | bindings::PF_EXITING | bindings::PF_IO_WORKER | bindings::PF_USER_WORKER) != 0 {
            return false;
        }
        // Only a sleeper the wake-up reaches; a thread preempted in the
        // code leaves it by itself.
        if state & bindings::TASK_INTERRUPTIBLE == 0 {
            return false;
        }
        let module = THIS_MODULE.load(Ordering::Acquire);
        // SAFETY: kmend.ko is loaded: this code is running.
        let Ok(module) = (unsafe { ModuleRef::get(module) }) else { return false };
        if self.asked.push(task.key(), GFP_ATOMIC).is_err() {
            return false;
        }
        let work = Park {
            head: bindings::callback_head { next: core::ptr::null_mut(), func: Some(park) },
            switch: self.switch,
            _module: module,
        };
        let Ok(work) = KBox::new(work, GFP_ATOMIC) else { return false };
        let raw = KBox::into_raw(work);
        // SAFETY: `raw` is a valid, unqueued callback head (first field of
        // `Park`), which stays allocated until `park` frees it; the task is
        // live during the walk. TWA_SIGNAL wakes an interruptible sleeper.
        let ret = unsafe {
            bindings::task_work_add(task.as_ptr(), raw.cast(), bindings::task_work_notify_mode_TWA_SIGNAL)
        };
        if ret != 0 {
            // Not queued (the task is exiting): ours to free.
            // SAFETY: `raw` came from `KBox::into_raw` and was not queued.
            drop(unsafe { KBox::from_raw(raw) });
            return false;
        }
        true
    }
}

/// Ends the switch that parked threads waited for: they go on.
pub(crate) fn end_of_switch() {
    SWITCHES_ENDED.fetch_add(1, Ordering::AcqRel);
}

/// Waits, at kmend.ko's unload, until no thread can still be on its way
/// out of [`park`] (the reference it held is dropped a few instructions
/// before it returns): an RCU-tasks grace period ends only when every
/// thread has been back to user mode or voluntarily scheduled since.
pub(crate) fn drain() {
    // SAFETY: plain call; may sleep, as module exit can.
    unsafe { bindings::synchronize_rcu_tasks() };
}

/// A queued park request.
#[repr(C)]
struct Park {
    /// First: the task work API hands back this pointer.
    head: bindings::callback_head,
    switch: u64,
    _module: ModuleRef,
}

/// Runs as a parked thread returns to user mode (`task_work_run`): waits
/// until the switch it was asked for is over.
///
/// # Safety
///
/// `head` is the `head` of a [`Park`] queued by [`Parking::ask`], handed
/// back once by the task work API.
unsafe extern "C" fn park(head: *mut bindings::callback_head) {
    // SAFETY: `head` is the first field of a `Park` from `KBox::into_raw`
    // (function contract), so this is that box, freed once here.
    let work = unsafe { KBox::from_raw(head.cast::<Park>()) };
    let deadline = kapi::now_ns() + MAX_PARK_MS * 1_000_000;
    while SWITCHES_ENDED.load(Ordering::Acquire) == work.switch && kapi::now_ns() < deadline {
        kapi::sleep_ms(PARK_POLL_MS);
    }
    // Drops the module reference last (see `drain`).
    drop(work);
}
