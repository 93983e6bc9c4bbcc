//! Mode `textpoke`: a control experiment without kmend. The kernel pokes
//! its own text (a tracepoint's static key, an ftrace-based kprobe) over
//! and over while other threads keep waking up, and nothing of kmend is
//! loaded. An `Oops: int3` here is not kmend's: it is the kernel's
//! text-poking racing the emulator's handling of code modified on one
//! vCPU while another runs it (docs/testing.md, "Known flake").

use std::{
    fs,
    io::Write as _,
    sync::{
        Arc,
        atomic::{
            AtomicBool,
            AtomicU64,
            Ordering, //
        },
    },
    thread,
    time::{
        Duration,
        Instant, //
    },
};

const TRACING: &str = "/sys/kernel/tracing";
const ROUNDS_FOR: Duration = Duration::from_secs(120);

fn write(path: &str, text: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("open {path}: {e}"))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("write {text:?} to {path}: {e}"))
}

fn round() -> Result<(), String> {
    write(&format!("{TRACING}/events/sched/sched_wakeup/enable"), "1")?;
    write(&format!("{TRACING}/kprobe_events"), "p:kmend_tp cmdline_proc_show\n")?;
    write(&format!("{TRACING}/events/kprobes/kmend_tp/enable"), "1")?;
    let _ = fs::read_to_string("/proc/cmdline");
    write(&format!("{TRACING}/events/kprobes/kmend_tp/enable"), "0")?;
    write(&format!("{TRACING}/kprobe_events"), "-:kmend_tp\n")?;
    write(&format!("{TRACING}/events/sched/sched_wakeup/enable"), "0")
}

pub fn run() {
    let stop = Arc::new(AtomicBool::new(false));
    let wakeups = Arc::new(AtomicU64::new(0));
    let wakers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, wakeups) = (stop.clone(), wakeups.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_micros(50));
                    wakeups.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut error = None;
    while start.elapsed() < ROUNDS_FOR {
        if let Err(e) = round() {
            error = Some(e);
            break;
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in wakers {
        let _ = w.join();
    }
    println!("kmend-guest: textpoke: {rounds} rounds, {} wakeups, no kmend loaded", wakeups.load(Ordering::Relaxed));
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (passed, failed) = if let Some(e) = error {
        println!("kmend-guest: textpoke: {e}");
        (0, 1)
    } else {
        (1, 0)
    };
    println!("kmend-guest: verdict ({}): {passed} passed, {failed} failed", release.trim());
}
