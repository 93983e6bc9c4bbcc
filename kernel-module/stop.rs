// SPDX-License-Identifier: GPL-2.0
//! Stopping the machine: the CPUs work while no task runs, with interrupts
//! off, then every CPU serializes before it resumes.
//!
//! C header: [`include/linux/stop_machine.h`](srctree/include/linux/stop_machine.h).

use core::{
    cell::UnsafeCell,
    sync::atomic::{
        AtomicBool,
        AtomicI32,
        AtomicUsize,
        Ordering, //
    },
};

use kernel::{
    bindings,
    cpumask::Cpumask,
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

/// Stops the machine and works on it: on one CPU `prepare` makes a plan,
/// then up to `lanes.len()` CPUs run `share` on it at once, each with a lane
/// of its own (a CPU's scratch space and results), and once every one of
/// them has returned, `finish` runs on the first CPU with the plan and all
/// the lanes. CPUs without a lane wait with interrupts off. Then every CPU
/// serializes its instruction stream before it resumes, so code that
/// `finish` changed is what any CPU runs next (the cross-modifying code rule
/// of the x86 manuals). If `prepare` fails, nothing else runs and its error
/// is returned.
///
/// None of the three may sleep or allocate with GFP_KERNEL.
pub(crate) fn stop_the_world<L, P, Prep, S, Fin>(lanes: &mut [L], prepare: Prep, share: S, finish: Fin) -> Result
where
    L: Send,
    P: Sync,
    Prep: FnOnce() -> Result<P>,
    S: Fn(&P, &mut L) + Sync,
    Fin: FnOnce(P, &mut [L]) -> Result,
{
    struct Shared<L, P, Prep, S, Fin> {
        lanes: *mut L,
        lane_count: usize,
        /// Only the first CPU to arrive (ticket 0) touches these three.
        prepare: UnsafeCell<Option<Prep>>,
        finish: UnsafeCell<Option<Fin>>,
        plan: UnsafeCell<Option<P>>,
        share: S,
        ticket: AtomicUsize,
        /// Set once `plan` is written (the lanes may start).
        go: AtomicBool,
        /// Lanes whose `share` returned.
        finished: AtomicUsize,
        done: AtomicBool,
        ret: AtomicI32,
    }
    unsafe extern "C" fn on_each_cpu<L, P, Prep, S, Fin>(data: *mut c_void) -> c_int
    where
        L: Send,
        P: Sync,
        Prep: FnOnce() -> Result<P>,
        S: Fn(&P, &mut L) + Sync,
        Fin: FnOnce(P, &mut [L]) -> Result,
    {
        // SAFETY: `data` is the `Shared` below, alive for the whole stop.
        let shared = unsafe { &*data.cast::<Shared<L, P, Prep, S, Fin>>() };
        // Every online CPU runs this once (the stop runs on the online
        // mask, stable under stop_machine's CPU-hotplug lock).
        // SAFETY: the kernel's online mask, valid for the kernel's life.
        let online = unsafe { Cpumask::from_raw(&raw const bindings::__cpu_online_mask) }.weight() as usize;
        let working = shared.lane_count.min(online);
        let ticket = shared.ticket.fetch_add(1, Ordering::AcqRel);
        if ticket == 0 {
            // SAFETY: only ticket 0 touches `prepare` and `plan` until `go`.
            let prepared = unsafe { (*shared.prepare.get()).take() }.map_or(Err(EINVAL), |p| p());
            match prepared {
                Ok(plan) => {
                    // SAFETY: as above; the lanes read it only after `go`.
                    unsafe { *shared.plan.get() = Some(plan) };
                    shared.go.store(true, Ordering::Release);
                }
                Err(e) => {
                    shared.ret.store(e.to_errno(), Ordering::Relaxed);
                    shared.done.store(true, Ordering::Release);
                }
            }
        }
        loop {
            if shared.go.load(Ordering::Acquire) {
                break;
            }
            if shared.done.load(Ordering::Acquire) {
                // SAFETY: serializes this CPU; no other effect.
                unsafe { kmend_helper_sync_core() };
                return shared.ret.load(Ordering::Relaxed);
            }
            core::hint::spin_loop();
        }
        if ticket < working {
            // SAFETY: `plan` is written before `go` and only read from now
            // until every lane has finished; lane `ticket` is this CPU's
            // alone (each ticket is drawn once, and `working` is at most
            // the number of lanes).
            let (plan, lane) = unsafe { ((*shared.plan.get()).as_ref(), &mut *shared.lanes.add(ticket)) };
            if let Some(plan) = plan {
                (shared.share)(plan, lane);
            }
            shared.finished.fetch_add(1, Ordering::AcqRel);
        }
        if ticket == 0 {
            while shared.finished.load(Ordering::Acquire) < working {
                core::hint::spin_loop();
            }
            // SAFETY: every lane has returned its borrow; only ticket 0
            // touches `finish`, `plan` and the lanes now.
            let (finish, plan, lanes) = unsafe {
                (
                    (*shared.finish.get()).take(),
                    (*shared.plan.get()).take(),
                    core::slice::from_raw_parts_mut(shared.lanes, shared.lane_count),
                )
            };
            let ret = match (finish, plan) {
                (Some(finish), Some(plan)) => finish(plan, lanes),
                _ => Err(EINVAL),
            };
            shared.ret.store(ret.err().map_or(0, |e| e.to_errno()), Ordering::Relaxed);
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
        lanes: lanes.as_mut_ptr(),
        lane_count: lanes.len(),
        prepare: UnsafeCell::new(Some(prepare)),
        finish: UnsafeCell::new(Some(finish)),
        plan: UnsafeCell::new(None::<P>),
        share,
        ticket: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
        done: AtomicBool::new(false),
        ret: AtomicI32::new(0),
    };
    // SAFETY: `on_each_cpu` matches `cpu_stop_fn_t`; `shared` outlives the
    // call and is shared safely (atomics; the cells as said there; `share`
    // is `Sync`, lanes `Send`, the plan `Sync`); the online mask is the
    // kernel's, stable under stop_machine's CPU-hotplug lock.
    let ret = unsafe {
        stop_machine(
            Some(on_each_cpu::<L, P, Prep, S, Fin>),
            (&raw const shared).cast_mut().cast(),
            &raw const bindings::__cpu_online_mask,
        )
    };
    if ret == 0 { Ok(()) } else { Err(Error::from_errno(ret)) }
}
