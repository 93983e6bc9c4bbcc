//! `cargo xtask bench`: measurements inside the VM, printed as
//! `kmend-bench: <key> <value>` lines for the host to tabulate.
//!
//! Per-call cost of one function (`kmend_bench_target` in the test module,
//! called in a loop in the kernel): unpatched, patched by kmend, patched by
//! the kernel's livepatch (klp_bench.ko). Stop-the-world pause of applying
//! a 10-function patch with 200, 2,000 and 10,000 threads alive, each next
//! to an empty stop_machine. TCG emulates the CPU, so only ratios mean anything.

use std::{
    fs,
    path::Path,
    thread,
    time::Duration, //
};

use kmend::sys::transition;

use crate::harness::{
    MODULE_DIR,
    insmod,
    kmend,
    rmmod, //
};

/// Calls per round: enough that the guest clock's tick (jiffies under TCG)
/// is small against a round.
const CALLS: u32 = 5_000_000;
const ROUNDS: usize = 7;
const CONTROL: &str = "/dev/kmend";
/// Threads parked in the kernel while the pause is measured.
const THREADS: [usize; 3] = [200, 2_000, 10_000];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Nanoseconds per call of the benchmark target (median of rounds).
fn per_call() -> Result<f64, String> {
    per_call_of("")
}

/// Nanoseconds per call of the test module's loop `prefix` names: "" for
/// the benchmark target, "hop " for a call that goes on with one direct
/// jump to another page (the floor of any redirection).
fn per_call_of(prefix: &str) -> Result<f64, String> {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        fs::write("/proc/kmend_bench", format!("{prefix}{CALLS}")).map_err(|e| format!("bench write: {e}"))?;
        let ns: f64 = fs::read_to_string("/proc/kmend_bench")
            .map_err(|e| format!("bench read: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("bench value: {e}"))?;
        samples.push(ns / f64::from(CALLS));
    }
    Ok(median(samples))
}

/// One empty stop_machine on every online CPU, timed by the test module
/// (`/proc/kmend_stop`): the floor of any stop-the-world switch.
fn empty_stop_machine_ns() -> Result<u64, String> {
    fs::write("/proc/kmend_stop", "1").map_err(|e| format!("stop write: {e}"))?;
    fs::read_to_string("/proc/kmend_stop")
        .map_err(|e| format!("stop read: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("stop: {e}"))
}

fn wait_klp(transition_file: &str) -> Result<(), String> {
    for _ in 0..600 {
        // Done when the transition is over, or (after disabling) when the
        // patch and its sysfs directory are gone.
        let state = fs::read_to_string(transition_file);
        if state.as_ref().is_ok_and(|t| t.trim() == "0") || state.is_err() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{transition_file}: transition did not finish"))
}

fn run_bench() -> Result<(), String> {
    insmod("kmend.ko")?;
    insmod("kmend_testmod.ko")?;

    let base = per_call()?;
    println!("kmend-bench: percall_unpatched_ns {base:.3}");
    let hop = per_call_of("hop ")?;
    println!("kmend-bench: percall_hop_ns {hop:.3}");

    let (code, out, err) = kmend(&["apply", &format!("{MODULE_DIR}/kmend_bench.ko")]);
    if code != 0 {
        return Err(format!("apply kmend_bench: {out} {err}"));
    }
    let kmend_ns = per_call()?;
    println!("kmend-bench: percall_kmend_ns {kmend_ns:.3}");
    let (code, _, err) = kmend(&["revert", "kmend_bench"]);
    if code != 0 {
        return Err(format!("revert kmend_bench: {err}"));
    }

    insmod("klp_bench.ko")?;
    wait_klp("/sys/kernel/livepatch/klp_bench/transition")?;
    let klp_ns = per_call()?;
    println!("kmend-bench: percall_klp_ns {klp_ns:.3}");
    fs::write("/sys/kernel/livepatch/klp_bench/enabled", "0").map_err(|e| format!("klp disable: {e}"))?;
    wait_klp("/sys/kernel/livepatch/klp_bench/transition")?;
    thread::sleep(Duration::from_millis(200));
    rmmod("klp_bench")?;

    let control = Path::new(CONTROL);

    // `kmend apply` of a local 2-function artifact, process start to
    // switched (identity check, module load, target resolution, switch).
    let artifact = format!("{MODULE_DIR}/kmend_multi.kmpatch");
    let mut applies = Vec::new();
    for _ in 0..ROUNDS {
        let start = std::time::Instant::now();
        let (code, out, err) = kmend(&["apply", &artifact]);
        let ns = start.elapsed().as_nanos() as f64;
        if code != 0 {
            return Err(format!("apply {artifact}: exit {code}: {out} {err}"));
        }
        applies.push(ns);
        let (code, _, err) = kmend(&["revert", "kmend_multi"]);
        if code != 0 {
            return Err(format!("revert kmend_multi: {err}"));
        }
    }
    println!("kmend-bench: apply_local_artifact_ns {:.0}", median(applies));

    // Where that time goes: the same patch through the library (module
    // load, resolve, ftrace sites, switch: no process start, no artifact
    // checks, no state or journal), then enable alone on the loaded,
    // reverted patch (its ftrace sites stay while it is registered).
    let manifest = kmend::artifact::Artifact::read(Path::new(&artifact)).map_err(|e| format!("{e}"))?.manifest.functions;
    let ko = format!("{MODULE_DIR}/kmend_multi.ko");
    let (mut loads, mut enables) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = std::time::Instant::now();
        transition::apply(control, Path::new(&ko), "kmend_multi", &manifest).map_err(|e| e.to_string())?;
        loads.push(start.elapsed().as_nanos() as f64);
        transition::revert(control, "kmend_multi").map_err(|e| e.to_string())?;
        let start = std::time::Instant::now();
        transition::enable(control, "kmend_multi", &manifest).map_err(|e| e.to_string())?;
        enables.push(start.elapsed().as_nanos() as f64);
        let (code, _, err) = kmend(&["revert", "kmend_multi"]);
        if code != 0 {
            return Err(format!("revert kmend_multi: {err}"));
        }
    }
    println!("kmend-bench: apply_library_ns {:.0}", median(loads));
    // The floor of any CLI verb: starting and ending the static binary.
    let mut starts = Vec::new();
    for _ in 0..ROUNDS {
        let start = std::time::Instant::now();
        let (code, _, err) = kmend(&["--version"]);
        starts.push(start.elapsed().as_nanos() as f64);
        if code != 0 {
            return Err(format!("kmend --version: {err}"));
        }
    }
    println!("kmend-bench: cli_start_ns {:.0}", median(starts));
    println!("kmend-bench: enable_loaded_ns {:.0}", median(enables));

    // The pause at 200, 2,000 and 10,000 threads parked in the kernel (the
    // stack check walks them all before stopping; with the machine stopped
    // it walks only those that ran since), next to an empty stop_machine
    // at the same moment.
    let ten = format!("{MODULE_DIR}/kmend_bench10.ko");
    transition::apply(control, Path::new(&ten), "kmend_bench10", &[]).map_err(|e| e.to_string())?;
    // The default limit is sized by RAM (8,192 threads for the guest's 1 GiB).
    fs::write("/proc/sys/kernel/threads-max", "16384").map_err(|e| format!("threads-max: {e}"))?;
    let mut parked = Vec::new();
    for target in THREADS {
        while parked.len() < target {
            let t = thread::Builder::new()
                .stack_size(32 * 1024)
                .spawn(|| thread::sleep(Duration::from_secs(600)))
                .map_err(|e| format!("spawning thread {}: {e}", parked.len()))?;
            parked.push(t);
        }
        let alive = fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .map(|e| fs::read_dir(e.path().join("task")).map(|t| t.count()).unwrap_or(1))
                    .sum::<usize>()
            })
            .unwrap_or(0);
        let (mut pauses, mut empty) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            transition::revert(control, "kmend_bench10").map_err(|e| e.to_string())?;
            pauses.push(transition::enable(control, "kmend_bench10", &[]).map_err(|e| e.to_string())? as f64);
            empty.push(empty_stop_machine_ns()? as f64);
        }
        println!("kmend-bench: threads_alive@{target} {alive}");
        println!("kmend-bench: pause_10fn_ns@{target} {:.0}", median(pauses));
        println!("kmend-bench: empty_stop_machine_ns@{target} {:.0}", median(empty));
    }
    transition::revert(control, "kmend_bench10").map_err(|e| e.to_string())?;
    let _ = kmend(&["revert", "kmend_bench10"]);
    // The parked threads sleep on (last measurement: everything above ran
    // without them); the VM powers off at the end.
    std::mem::forget(parked);
    Ok(())
}

pub fn run() {
    match run_bench() {
        Ok(()) => println!("kmend-bench: done"),
        Err(e) => println!("kmend-bench: failed: {e}"),
    }
}
