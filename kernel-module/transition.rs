// SPDX-License-Identifier: GPL-2.0
//! Switching code safely: the activeness check and the stop-the-world switch.
//!
//! A switch changes where the trampolines of some functions jump. It happens
//! under stop_machine, and only if no thread's stack holds an address inside
//! code that stops running (the original or replacement being switched away
//! from, or a replacement whose module is about to be released). Otherwise
//! it is retried with backoff until a deadline, then refused with the name
//! of the thread and the function. A switch is all or nothing.
//!
//! Lock order: callers hold `patch::STATE`; stop_machine and the RCU read
//! lock of the task walk nest inside it.

use kernel::{
    ffi::c_ulong,
    prelude::*, //
};

use crate::{
    kapi,
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

fn find_blocker(ranges: &[Busy], buf: &mut [c_ulong], seen: Option<&mut Clean>, skip: Option<&Clean>, walked: &mut usize) -> Option<Blocker> {
    let mut found = None;
    let mut seen = seen;
    let _ = kapi::for_each_task(|task| {
        let (switches, on_cpu) = task.switches();
        if let Some(clean) = skip {
            if let Ok(i) = clean.binary_search_by_key(&task.key(), |&(k, _)| k) {
                if clean[i].1 == switches {
                    return Ok(());
                }
            }
        }
        *walked += 1;
        let stack = task.stack(buf);
        if stack.len() >= STACK_DEPTH {
            found = Some(Blocker { pid: task.pid(), comm: task.comm(), name: TRUNCATED });
            return Err(EBUSY);
        }
        for &addr in stack {
            let addr = addr as usize;
            if let Some(r) = ranges.iter().find(|r| addr >= r.start && addr < r.end) {
                found = Some(Blocker { pid: task.pid(), comm: task.comm(), name: r.name });
                return Err(EBUSY);
            }
        }
        if let (Some(clean), false) = (seen.as_deref_mut(), on_cpu) {
            // Out of memory only means this task is walked again later.
            let _ = clean.push((task.key(), switches), GFP_ATOMIC);
        }
        Ok(())
    });
    if let Some(clean) = seen {
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

/// Outcome of [`switch`].
pub(crate) enum Switched {
    /// Done, at this cost.
    Done(Pause),
    /// Still blocked at the deadline.
    Blocked(Blocker),
}

/// Checks and switches, retrying with backoff until `timeout_ms`.
pub(crate) fn switch(ranges: &[Busy], stores: &[Store], timeout_ms: u32) -> Result<Switched> {
    let mut buf = KVec::from_elem(0 as c_ulong, STACK_DEPTH, GFP_KERNEL)?;
    let deadline = kapi::now_ns() + i64::from(timeout_ms) * 1_000_000;
    let mut delay_ms = 1;
    loop {
        // Look first without stopping anyone: most blocked attempts end here,
        // and the stop only re-walks the tasks that ran since.
        let mut clean = KVec::with_capacity(512, GFP_KERNEL)?;
        let mut prewalked = 0;
        let mut walked = 0;
        let blocker = match find_blocker(ranges, &mut buf, Some(&mut clean), None, &mut prewalked) {
            Some(b) => Some(b),
            None => {
                let mut blocked = None;
                let mut work_ns = 0;
                let t0 = kapi::now_ns();
                kapi::stop_the_world(|| {
                    let w0 = kapi::now_ns();
                    if let Some(b) = find_blocker(ranges, &mut buf, None, Some(&clean), &mut walked) {
                        blocked = Some(b);
                        return Err(EBUSY);
                    }
                    for s in stores {
                        trampoline::set_target(s.tramp, s.target);
                    }
                    work_ns = kapi::now_ns() - w0;
                    Ok(())
                })
                .or_else(|e| if blocked.is_some() { Ok(()) } else { Err(e) })?;
                // The pause as every CPU sees it: stopping, checking, switching.
                let pause = (kapi::now_ns() - t0).max(0) as u64;
                if blocked.is_none() {
                    return Ok(Switched::Done(Pause {
                        total_ns: pause,
                        work_ns: work_ns.max(0) as u64,
                        rechecked: walked,
                        tasks: prewalked,
                    }));
                }
                blocked
            }
        };
        if kapi::now_ns() >= deadline {
            // `blocker` is always set here: every path without one returned.
            return blocker.map(Switched::Blocked).ok_or(EBUSY);
        }
        kapi::sleep_ms(delay_ms);
        // Short waits: on a preemptible kernel a hot function is often left
        // for a moment by every thread, and each failed attempt that got as
        // far as stopping the machine costs only a re-walk of the tasks that
        // ran since the pre-check.
        delay_ms = (delay_ms * 2).min(MAX_RETRY_DELAY_MS);
    }
}
