// SPDX-License-Identifier: GPL-2.0
//! Stopping the machine: one CPU works while every other waits with
//! interrupts off, then every CPU serializes before it resumes.
//!
//! C header: [`include/linux/stop_machine.h`](srctree/include/linux/stop_machine.h).

use core::sync::atomic::{
    AtomicBool,
    AtomicI32,
    Ordering, //
};

use kernel::{
    bindings,
    ffi::{
        c_int,
        c_void, //
    },
    prelude::*,
};

unsafe extern "C" {
    /// `stop_machine()`: not in the generated bindings.
    fn stop_machine(
        cb: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
        data: *mut c_void,
        cpus: *const bindings::cpumask,
    ) -> c_int;

    /// `kmend_export.c`: the inline `sync_core()`.
    fn kmend_helper_sync_core();
}

/// Runs `f` on one CPU while every other online CPU waits with interrupts
/// off; then every CPU serializes its instruction stream before it resumes,
/// so code that `f` changed is what any CPU runs next (the cross-modifying
/// code rule of the x86 manuals).
///
/// `f` must not sleep or allocate with GFP_KERNEL.
pub(crate) fn stop_the_world<F: FnMut() -> Result>(f: F) -> Result {
    struct Shared<F> {
        f: core::cell::UnsafeCell<F>,
        leader: AtomicBool,
        done: AtomicBool,
        ret: AtomicI32,
    }
    unsafe extern "C" fn on_each_cpu<F: FnMut() -> Result>(data: *mut c_void) -> c_int {
        // SAFETY: `data` is the `Shared<F>` below, alive for the whole stop.
        let shared = unsafe { &*data.cast::<Shared<F>>() };
        if shared.leader.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // SAFETY: only the one CPU that became leader touches `f`.
            let f = unsafe { &mut *shared.f.get() };
            let ret = match f() {
                Ok(()) => 0,
                Err(e) => e.to_errno(),
            };
            shared.ret.store(ret, Ordering::Relaxed);
            shared.done.store(true, Ordering::Release);
        } else {
            while !shared.done.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
        }
        // SAFETY: serializes this CPU; no other effect.
        unsafe { kmend_helper_sync_core() };
        shared.ret.load(Ordering::Relaxed)
    }
    let shared = Shared {
        f: core::cell::UnsafeCell::new(f),
        leader: AtomicBool::new(false),
        done: AtomicBool::new(false),
        ret: AtomicI32::new(0),
    };
    // SAFETY: `on_each_cpu::<F>` matches `cpu_stop_fn_t`; `shared` outlives
    // the call, and is shared safely (atomics; `f` only on the leader); the
    // online mask is the kernel's, stable under stop_machine's CPU-hotplug lock.
    let ret = unsafe {
        stop_machine(
            Some(on_each_cpu::<F>),
            (&raw const shared).cast_mut().cast(),
            &raw const bindings::__cpu_online_mask,
        )
    };
    if ret == 0 { Ok(()) } else { Err(Error::from_errno(ret)) }
}
