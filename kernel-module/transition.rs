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

use core::sync::atomic::{
    AtomicBool,
    AtomicUsize,
    Ordering, //
};

use kernel::{
    ffi::c_ulong,
    prelude::*, //
};

use kernel::bindings;

use crate::{
    kapi,
    park::Parking,
    sched_watch::{
        Held,
        Ran,
        SchedWatch, //
    },
    stop,
    task::{
        self,
        TaskRef, //
    },
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

/// What the check without stopping learns for the stopped one.
struct PreCheck<'p> {
    /// Where to ask user threads found asleep in the way to park
    /// (`park.rs`); `None`: they only block.
    parking: Option<&'p mut Parking>,
    /// Threads found clean while off-CPU (for the full stopped walk).
    clean: Clean,
    /// Threads seen on a CPU, held: their stacks were moving, so the stopped
    /// check walks them whatever the watch recorded (a thread switched out
    /// just before the watch was armed is still on its CPU for a moment).
    running: Held,
    /// A running thread could not be held (no room): the stopped check
    /// walks every thread.
    incomplete: bool,
}

/// Which walk [`find_blocker`] makes.
enum Walk<'a, 'p> {
    /// Without stopping anyone: tasks on a CPU are walked too (a busy one
    /// saves a stop) but their stacks are moving, so they never count as
    /// clean, and an unreliable walk of one is not held against it. A
    /// sleeping user thread in the way is asked to park.
    Pre(&'a mut PreCheck<'p>),
    /// With the machine stopped, every thread: all are off-CPU except the
    /// stoppers (one per CPU, running only stop_machine and kmend), which
    /// are skipped; so is every thread the pre-check found clean that has
    /// not run since.
    Stopped(&'a Clean),
    /// With the machine stopped, one of the threads of a [`Plan`]: those
    /// switched out since the pre-check began (`sched_watch.rs`; no other
    /// thread has run since, so no other stack has changed), and the CPUs'
    /// idle tasks, which are on no task list. Walked by several CPUs at
    /// once, each with its own [`Lane`].
    Ran,
}

/// CPUs that walk stacks at once with the machine stopped: enough to
/// spread the few threads that ran since the pre-check, few enough that
/// their buffers stay small on a machine with hundreds of CPUs.
const LANES: usize = 8;

/// One CPU's share of the stopped check: its buffer and what it found.
struct Lane {
    buf: KVec<c_ulong>,
    walked: usize,
    blocker: Option<Blocker>,
}

/// What the lanes walk with the machine stopped.
struct Plan<'a> {
    /// When the work with the machine stopped began.
    w0: i64,
    /// The threads to walk, in lists each sorted so that repeats are
    /// adjacent (a repeat is walked once).
    parts: [&'a [*mut bindings::task_struct]; 3],
    /// The watch could not say who ran: after the lanes, the first CPU
    /// walks every thread ([`Walk::Stopped`]).
    every: bool,
}

// SAFETY: the plan is read only while the machine is stopped, and each
// thread it lists is referenced (or an idle task) for the whole attempt.
unsafe impl Sync for Plan<'_> {}

impl Plan<'_> {
    /// Entry `i` of the lists taken end to end: `None` past the end,
    /// `Some(None)` for a repeat of the entry before it.
    fn entry(&self, mut i: usize) -> Option<Option<*mut bindings::task_struct>> {
        for part in self.parts {
            if i < part.len() {
                return Some((i == 0 || part[i - 1] != part[i]).then_some(part[i]));
            }
            i -= part.len();
        }
        None
    }
}

/// Checks one thread's stack against `ranges`.
fn visit(task: &TaskRef, ranges: &[Busy], buf: &mut [c_ulong], walk: &mut Walk<'_, '_>, walked: &mut usize) -> Option<Blocker> {
    let (switches, on_cpu) = task.switches();
    match walk {
        Walk::Stopped(clean) => {
            if on_cpu {
                return None;
            }
            if let Ok(i) = clean.binary_search_by_key(&task.key(), |&(k, _)| k) {
                if clean[i].1 == switches {
                    return None;
                }
            }
        }
        Walk::Ran if on_cpu => return None,
        Walk::Pre(pre) if on_cpu => {
            // SAFETY: the task is live during the iteration.
            if !unsafe { pre.running.hold(task.as_ptr()) } {
                pre.incomplete = true;
            }
        }
        _ => {}
    }
    *walked += 1;
    let blocker = |name| Some(Blocker { pid: task.pid(), comm: task.comm(), name });
    let stack = match task.stack(buf) {
        Ok(stack) => stack,
        // Exited: it runs nothing any more.
        Err(e) if e == ESRCH => return None,
        Err(_) if on_cpu && matches!(walk, Walk::Pre(_)) => return None,
        Err(e) => return blocker(if e == ENOSPC { TRUNCATED } else { UNRELIABLE }),
    };
    for &addr in stack {
        let addr = addr as usize;
        if let Some(r) = ranges.iter().find(|r| addr >= r.start && addr < r.end) {
            if let (Walk::Pre(pre), false) = (&mut *walk, on_cpu) {
                if let Some(parking) = pre.parking.as_deref_mut() {
                    parking.ask(task);
                }
            }
            return blocker(r.name);
        }
    }
    if let (Walk::Pre(pre), false) = (walk, on_cpu) {
        // Out of memory only means this task is walked again later.
        let _ = pre.clean.push((task.key(), switches), GFP_ATOMIC);
    }
    None
}

/// Sorts `v` by `key` in place: a heapsort, no allocation, O(n log n).
/// (core's sorts end in a panic helper objtool does not know returns
/// never, and it then cannot follow the code: it warns when kmend.ko builds.)
fn sort_by_key<T>(v: &mut [T], key: impl Fn(&T) -> usize) {
    let sift = |v: &mut [T], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            break;
        }
        if child + 1 < end && key(&v[child]) < key(&v[child + 1]) {
            child += 1;
        }
        if key(&v[root]) >= key(&v[child]) {
            break;
        }
        v.swap(root, child);
        root = child;
    };
    let n = v.len();
    for start in (0..n / 2).rev() {
        sift(v, start, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

fn find_blocker(ranges: &[Busy], buf: &mut [c_ulong], mut walk: Walk<'_, '_>, walked: &mut usize) -> Option<Blocker> {
    let mut found = None;
    let _ = task::for_each_task(|task| match visit(task, ranges, buf, &mut walk, walked) {
        Some(b) => {
            found = Some(b);
            Err(EBUSY)
        }
        None => Ok(()),
    });
    if let Walk::Pre(pre) = walk {
        sort_by_key(&mut pre.clean, |&(k, _)| k);
    }
    found
}

/// The entries of `tasks` that are not in `sorted`, moved to its front
/// (no allocation: this runs with the machine stopped).
fn not_in<'a>(tasks: &'a mut [*mut bindings::task_struct], sorted: &[*mut bindings::task_struct]) -> &'a [*mut bindings::task_struct] {
    let mut kept = 0;
    for i in 0..tasks.len() {
        let t = tasks[i];
        if sorted.binary_search_by_key(&(t as usize), |&s| s as usize).is_err() {
            tasks[kept] = t;
            kept += 1;
        }
    }
    &tasks[..kept]
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
    /// Whether the stopped check walked only the threads that ran since the
    /// pre-check (else every thread).
    pub(crate) watched: bool,
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
/// without holding the registry between tries). User threads the first
/// walk finds asleep in the way are asked to park (`parking`, `park.rs`),
/// so that a later try finds them out of the way.
pub(crate) fn attempt(ranges: &[Busy], stores: &[Store], watch: &mut SchedWatch, parking: Option<&mut Parking>) -> Result<Switched> {
    // Nothing may fail once the first store is made: check every jump first.
    if stores.iter().any(|s| !trampoline::reaches(s.tramp, s.target)) {
        return Err(ERANGE);
    }
    let writer = trampoline::Writer::new()?;
    // One lane per CPU that walks with the machine stopped (at most
    // `LANES`); lane 0's buffer also serves the walk before the stop.
    let lane_count = (kernel::cpu::nr_cpu_ids() as usize).clamp(1, LANES);
    let mut lanes = KVec::with_capacity(lane_count, GFP_KERNEL)?;
    for _ in 0..lane_count {
        lanes.push(Lane { buf: KVec::from_elem(0 as c_ulong, STACK_DEPTH, GFP_KERNEL)?, walked: 0, blocker: None }, GFP_KERNEL)?;
    }
    // Dropped (references and all) at the end of the attempt, in process
    // context.
    let mut ran = Held::for_watch(watch)?;
    let mut idle = KVec::from_elem(core::ptr::null_mut(), kernel::cpu::nr_cpu_ids() as usize, GFP_KERNEL)?;
    let mut pre = PreCheck {
        parking,
        clean: KVec::with_capacity(512, GFP_KERNEL)?,
        // Threads seen running during the walk: a few per CPU (more makes
        // the stopped check walk every thread).
        running: Held::with_capacity(4 * kernel::cpu::nr_cpu_ids() as usize + 16)?,
        incomplete: false,
    };
    // Record who runs from now on; without the record, the stopped check
    // walks every thread.
    let _ = watch.arm();
    // Look first without stopping anyone: most blocked attempts end here,
    // and the stop only re-walks the tasks that ran since.
    let mut prewalked = 0;
    if let Some(b) = find_blocker(ranges, &mut lanes[0].buf, Walk::Pre(&mut pre), &mut prewalked) {
        watch.pause();
        return Ok(Switched::Blocked(b));
    }
    let mut walked = 0;
    let mut blocked = None;
    let mut work_ns = 0;
    let mut watched = false;
    let incomplete = pre.incomplete;
    let (clean, running) = (&pre.clean, &mut pre.running);
    // The next entry of the plan a lane walks, and whether one found a
    // blocker (the others then stop).
    let next = AtomicUsize::new(0);
    let found = AtomicBool::new(false);
    let t0 = kapi::now_ns();
    let stopped = stop::stop_the_world(
        &mut lanes,
        || {
            let w0 = kapi::now_ns();
            // The idle task of every CPU, on no task list: switched out by
            // the stop on a CPU that was idle, and since whenever on one
            // that was busy, inside the idle loop (`do_idle`,
            // `schedule_idle`, `__schedule`). One per CPU.
            let idle_count = task::idle_tasks(&mut idle).len();
            Ok(match watch.take(&mut ran) {
                Ran::Threads(list) if !incomplete => {
                    // Sorted, so that a thread switched out several times is
                    // walked once. (Only reordered: every entry holds a
                    // reference that dropping `ran` drops.)
                    sort_by_key(list, |&t| t as usize);
                    let running = running.sorted(|l| sort_by_key(l, |&t| t as usize));
                    // The idle tasks the watch saw switched out (every idle
                    // CPU's, by the stop itself) are in `list`: walked once.
                    let idle = not_in(&mut idle[..idle_count], list);
                    Plan { w0, parts: [list, running, idle], every: false }
                }
                _ => Plan { w0, parts: [&[], &[], &idle[..idle_count]], every: true },
            })
        },
        |plan: &Plan<'_>, lane: &mut Lane| {
            loop {
                if found.load(Ordering::Relaxed) {
                    return;
                }
                let Some(t) = plan.entry(next.fetch_add(1, Ordering::Relaxed)) else { return };
                let Some(t) = t else { continue };
                // SAFETY: each entry holds a reference (`sched_watch.rs`,
                // `Held`) or is an idle task, which never exits.
                let task = unsafe { TaskRef::from_raw(t) };
                if let Some(b) = visit(&task, ranges, &mut lane.buf, &mut Walk::Ran, &mut lane.walked) {
                    lane.blocker = Some(b);
                    found.store(true, Ordering::Relaxed);
                    return;
                }
            }
        },
        |plan, lanes| {
            watched = !plan.every;
            if plan.every && lanes.iter().all(|l| l.blocker.is_none()) {
                // The watch could not say who ran: every thread but those
                // the pre-check found clean and that have not run since.
                let lane = &mut lanes[0];
                lane.blocker = find_blocker(ranges, &mut lane.buf, Walk::Stopped(clean), &mut lane.walked);
            }
            walked = lanes.iter().map(|l| l.walked).sum();
            if let Some(b) = lanes.iter_mut().find_map(|l| l.blocker.take()) {
                blocked = Some(b);
                return Err(EBUSY);
            }
            for s in stores {
                // Cannot fail: every jump was checked above.
                let _ = writer.set(s.tramp, s.target);
            }
            work_ns = kapi::now_ns() - plan.w0;
            Ok(())
        },
    );
    let pause = (kapi::now_ns() - t0).max(0) as u64;
    if let Some(b) = blocked {
        return Ok(Switched::Blocked(b));
    }
    stopped?;
    // The pause as every CPU sees it: stopping, checking, switching.
    Ok(Switched::Done(Pause {
        total_ns: pause,
        work_ns: work_ns.max(0) as u64,
        rechecked: walked,
        tasks: prewalked,
        watched,
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
