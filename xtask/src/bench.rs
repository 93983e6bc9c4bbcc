//! `cargo xtask bench`: boots the VM in bench mode and prints the table.
//!
//! The guest (tests/guest/src/bench.rs) measures everything in one run, on
//! one function, side by side; this turns its `kmend-bench:` lines into a
//! table with the two ratios that matter. No thresholds: these are numbers
//! to read, not assertions.

use std::collections::BTreeMap;

use anyhow::{
    anyhow,
    bail, //
};

use crate::{
    build::{
        self,
        Artifacts, //
    },
    vm::{
        self,
        ALL_KERNELS,
        VmOptions, //
    },
};

/// One table per kernel, each from its own VM run.
pub fn run(opts: &VmOptions) -> anyhow::Result<()> {
    for artifacts in build::all(&opts.kernels_or(ALL_KERNELS))? {
        one(&artifacts, opts)?;
    }
    println!("goals: overhead ratio <= 0.25 (stock), patched / unpatched call <= 1.5, pause ratio <= 2 at every thread count, apply <= 100 ms (reported, not enforced)");
    Ok(())
}

/// The fleet server's load table (fleet/examples/checkin_load.rs): no VM,
/// Debian's PostgreSQL on loopback.
pub fn fleet() -> anyhow::Result<()> {
    crate::run::exec(build::cargo().args(["run", "--release", "-q", "-p", "kmend-fleet", "--features", "test-postgres", "--example", "checkin_load"]))
}

fn one(artifacts: &Artifacts, opts: &VmOptions) -> anyhow::Result<()> {
    let run = vm::boot(artifacts, "bench", opts, false, None)?;
    let log = std::fs::read_to_string(&run.log)?;
    let mut values = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.trim_end_matches('\r').strip_prefix("kmend-bench: ") else { continue };
        if let Some(why) = rest.strip_prefix("failed: ") {
            bail!("the guest benchmark failed: {why} (log: {})", run.log.display());
        }
        if let Some((key, value)) = rest.split_once(' ') {
            if let Ok(v) = value.trim().parse::<f64>() {
                values.insert(key.to_owned(), v);
            }
        }
    }
    if !run.problems.is_empty() {
        bail!("the guest kernel reported problems:\n  {}", run.problems.join("\n  "));
    }
    let get = |k: &str| values.get(k).copied().ok_or_else(|| anyhow!("the guest did not report '{k}' (log: {})", run.log.display()));
    let (base, kmend, klp) = (get("percall_unpatched_ns")?, get("percall_kmend_ns")?, get("percall_klp_ns")?);
    let (kmend_over, klp_over) = (kmend - base, klp - base);
    // Pause rows, one per thread count the guest measured (`key@threads`).
    let mut pauses: Vec<(u64, f64, f64, f64)> = Vec::new();
    for (key, &pause) in values.iter().filter(|(k, _)| k.starts_with("pause_10fn_ns@")) {
        let Some(n) = key.split_once('@').and_then(|(_, n)| n.parse::<u64>().ok()) else { continue };
        let empty = get(&format!("empty_stop_machine_ns@{n}"))?;
        let alive = values.get(&format!("threads_alive@{n}")).copied().unwrap_or(0.0);
        pauses.push((n, alive, pause, empty));
    }
    pauses.sort_by_key(|p| p.0);
    if pauses.is_empty() {
        bail!("the guest reported no pause measurements (log: {})", run.log.display());
    }

    let apply = get("apply_local_artifact_ns")?;
    println!();
    println!(
        "kmend bench, {} kernel {} (one VM run, TCG: compare ratios, not absolute times)",
        artifacts.kernel.flavor.name(),
        artifacts.kernel.release
    );
    println!("| measurement                                  | value        |");
    println!("|----------------------------------------------|--------------|");
    println!("| per call, unpatched                          | {base:>9.2} ns |");
    println!("| per call, patched by kmend (one direct jump) | {kmend:>9.2} ns |");
    println!("| per call, patched by klp (ftrace handler)    | {klp:>9.2} ns |");
    println!("| overhead kmend / overhead klp                | {:>12.3} |", kmend_over / klp_over);
    println!("| patched call / unpatched call (kmend)        | {:>12.3} |", kmend / base);
    if let Ok(hop) = get("percall_hop_ns") {
        println!("| per call, unpatched + one direct jump        | {hop:>9.2} ns |");
        println!("|   that / unpatched (floor of a redirection)  | {:>12.3} |", hop / base);
    }
    for (_, alive, pause, empty) in &pauses {
        println!("| pause, 10-function patch, {alive:>6.0} threads    | {:>9.1} us |", pause / 1000.0);
        println!("|   empty stop_machine, same moment            | {:>9.1} us |", empty / 1000.0);
        println!("|   pause / empty stop_machine                 | {:>12.3} |", pause / empty);
    }
    println!("| kmend apply of a local artifact, 3 functions | {:>9.1} ms |", apply / 1e6);
    if let (Ok(library), Ok(enable)) = (get("apply_library_ns"), get("enable_loaded_ns")) {
        println!("|   the same, library call: load + enable      | {:>9.1} ms |", library / 1e6);
        println!("|   enable alone (loaded, sites kept)          | {:>9.1} ms |", enable / 1e6);
    }
    if let Ok(start) = get("cli_start_ns") {
        println!("|   kmend --version (process start and exit)   | {:>9.1} ms |", start / 1e6);
    }
    println!();
    Ok(())
}
