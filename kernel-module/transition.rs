// SPDX-License-Identifier: GPL-2.0
//! Switching code safely: the activeness check and the stop-the-world switch.
//!
//! A switch changes where the trampolines of some functions jump. It happens
//! under stop_machine, and only if no thread's stack (walked whole and
//! reliably: `task::TaskRef::stack`) holds an address inside
//! code that stops running (the original or replacement being switched away
//! from, or a replacement whose module is about to be released). Otherwise
//! it is retried with backoff until a deadline, then refused with the name
//! of the thread and the function. A switch is all or nothing.
//!
//! Lock order: callers hold the registry lock (`core.rs`) for one
//! [`attempt`], not across [`retry`]'s waits; stop_machine and the RCU read
//! lock of the task walk nest inside it.

use kernel::{
    ffi::c_ulong,
    prelude::*, //
};

use crate::{
    kapi,
    stop,
    task,
    trampoline, //
};

/// Code that must not be on any stack for the switch to happen.
pub(crate) struct Busy {
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Index into the caller's names, for the error message.
    pub(crate) name: usize,
}

/// One trampoline retarget.
pub(crate) struct Store {
    pub(crate) tramp: usize,
    pub(crate) target: usize,
}

/// The thread that blocked a switch.
pub(crate) struct Blocker {
    pub(crate) pid: i32,
    pub(crate) comm: [u8; 16],
    pub(crate) name: usize,
}

/// Stack entries looked at per thread. A walk that fills the buffer may
/// have missed frames below it, so it counts as busy: the check never
/// passes a stack it could not see whole. (A 16 KiB kernel stack holds
/// fewer return addresses than this.)
const STACK_DEPTH: usize = 2048;

/// [`Blocker::name`] of a task whose stack is too deep to check whole.
pub(crate) const TRUNCATED: usize = usize::MAX;

/// [`Blocker::name`] of a task whose stack the unwinder could not walk
/// reliably (an unwinder error, or an address outside kernel text).
pub(crate) const UNRELIABLE: usize = usize::MAX - 1;

/// Default and longest time to keep retrying.
pub(crate) const DEFAULT_TIMEOUT_MS: u32 = 5_000;

/// Longest wait between two attempts (the first waits 1 ms, then doubling).
const MAX_RETRY_DELAY_MS: u32 = 8;

/// Tasks whose stacks the pre-check found clean while they were off-CPU,
/// with their context-switch count then, sorted by key. A task whose count
/// is unchanged under stop_machine has not run since: its stack is the one
/// already checked. (A task running when the world stops was switched out
/// by the stopper, so its count has changed.)
type Clean = KVec<(usize, u64)>;

/// Which walk [`find_blocker`] makes.
enum Walk<'a> {
    /// Without stopping anyone: tasks on a CPU are walked too (a busy one
    /// saves a stop) but their stacks are moving, so they never count as
    /// clean, and an unreliable walk of one is not held against it.
    Pre(&'a mut Clean),
    /// With the machine stopped: every task is off-CPU except the stoppers
    /// (one per CPU, running only stop_machine and kmend), which are
    /// skipped; so is every task the pre-check found clean that has not run
    /// since.
    Stopped(&'a Clean),
}

fn find_blocker(ranges: &[Busy], buf: &mut [c_ulong], mut walk: Walk<'_>, walked: &mut usize) -> Option<Blocker> {
    let mut found = None;
    let _ = task::for_each_task(|task| {
        let (switches, on_cpu) = task.switches();
        if let Walk::Stopped(clean) = &walk {
            if on_cpu {
                return Ok(());
            }
            if let Ok(i) = clean.binary_search_by_key(&task.key(), |&(k, _)| k) {
                if clean[i].1 == switches {
                    return Ok(());
                }
            }
        }
        *walked += 1;
        let blocker = |name| Some(Blocker { pid: task.pid(), comm: task.comm(), name });
        let stack = match task.stack(buf) {
            Ok(stack) => stack,
            // Exited: it runs nothing any more.
            Err(e) if e == ESRCH => return Ok(()),
            Err(_) if on_cpu && matches!(walk, Walk::Pre(_)) => return Ok(()),
            Err(e) => {
                found = blocker(if e == ENOSPC { TRUNCATED } else { UNRELIABLE });
                return Err(EBUSY);
            }
        };
        for &addr in stack {
            let addr = addr as usize;
            if let Some(r) = ranges.iter().find(|r| addr >= r.start && addr < r.end) {
                found = blocker(r.name);
                return Err(EBUSY);
            }
        }
        if let (Walk::Pre(clean), false) = (&mut walk, on_cpu) {
            // Out of memory only means this task is walked again later.
            let _ = clean.push((task.key(), switches), GFP_ATOMIC);
        }
        Ok(())
    });
    if let Walk::Pre(clean) = walk {
        clean.sort_unstable_by_key(|&(k, _)| k);
    }
    found
}

/// What a switch cost.
pub(crate) struct Pause {
    /// The whole stop-the-world pause, in nanoseconds.
    pub(crate) total_ns: u64,
    /// Of which: the check and the stores, with the world stopped.
    pub(crate) work_ns: u64,
    /// Tasks re-walked with the world stopped, of those pre-checked.
    pub(crate) rechecked: usize,
    pub(crate) tasks: usize,
}

/// Outcome of one [`attempt`].
pub(crate) enum Switched {
    /// Done, at this cost.
    Done(Pause),
    /// A thread is in code that would stop running: nothing was switched.
    Blocked(Blocker),
}

/// Checks whether every thread is clear of `ranges` and, if so, makes all
/// of `stores` at once: first a walk without stopping anyone, then, if that
/// finds no thread in the way, the check again and the stores with the
/// machine stopped. One try: callers retry a blocked switch (`core.rs`,
/// without holding the registry between tries).
pub(crate) fn attempt(ranges: &[Busy], stores: &[Store]) -> Result<Switched> {
    // Nothing may fail once the first store is made: check every jump first.
    if stores.iter().any(|s| !trampoline::reaches(s.tramp, s.target)) {
        return Err(ERANGE);
    }
    let writer = trampoline::Writer::new()?;
    let mut buf = KVec::from_elem(0 as c_ulong, STACK_DEPTH, GFP_KERNEL)?;
    // Look first without stopping anyone: most blocked attempts end here,
    // and the stop only re-walks the tasks that ran since.
    let mut clean = KVec::with_capacity(512, GFP_KERNEL)?;
    let mut prewalked = 0;
    if let Some(b) = find_blocker(ranges, &mut buf, Walk::Pre(&mut clean), &mut prewalked) {
        return Ok(Switched::Blocked(b));
    }
    let mut walked = 0;
    let mut blocked = None;
    let mut work_ns = 0;
    let t0 = kapi::now_ns();
    stop::stop_the_world(|| {
        let w0 = kapi::now_ns();
        if let Some(b) = find_blocker(ranges, &mut buf, Walk::Stopped(&clean), &mut walked) {
            blocked = Some(b);
            return Err(EBUSY);
        }
        for s in stores {
            // Cannot fail: every jump was checked above.
            let _ = writer.set(s.tramp, s.target);
        }
        work_ns = kapi::now_ns() - w0;
        Ok(())
    })
    .or_else(|e| if blocked.is_some() { Ok(()) } else { Err(e) })?;
    if let Some(b) = blocked {
        return Ok(Switched::Blocked(b));
    }
    // The pause as every CPU sees it: stopping, checking, switching.
    Ok(Switched::Done(Pause {
        total_ns: (kapi::now_ns() - t0).max(0) as u64,
        work_ns: work_ns.max(0) as u64,
        rechecked: walked,
        tasks: prewalked,
    }))
}

/// Retries `attempt` with backoff until it is done (`Some`) or fails, for
/// `timeout_ms`. `attempt` is told when it is the last try, so that it can
/// turn a blocked outcome into its error. Nothing is held across the waits.
///
/// The waits are short (1 ms, doubling to 8 ms): on a preemptible kernel a
/// hot function is often left for a moment by every thread, and an attempt
/// that got as far as stopping the machine re-walks only the tasks that ran
/// since its pre-check.
pub(crate) fn retry<T, E>(timeout_ms: u32, mut attempt: impl FnMut(bool) -> Result<Option<T>, E>) -> Result<T, E>
where
    E: From<Error>,
{
    let deadline = kapi::now_ns() + i64::from(timeout_ms) * 1_000_000;
    let mut delay_ms = 1;
    loop {
        let last = kapi::now_ns() >= deadline;
        if let Some(done) = attempt(last)? {
            return Ok(done);
        }
        if last {
            return Err(E::from(EBUSY));
        }
        kapi::sleep_ms(delay_ms);
        delay_ms = (delay_ms * 2).min(MAX_RETRY_DELAY_MS);
    }
}
