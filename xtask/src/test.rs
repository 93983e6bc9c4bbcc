//! `cargo xtask test` (host tests, then the VM suite) and `vm-test`.

use std::process::Stdio;

use anyhow::{
    bail,
    ensure, //
};

use crate::{
    build::{
        self,
        Artifacts, //
    },
    kernel::Flavor,
    vm::{
        self,
        ALL_KERNELS,
        VmOptions, //
    },
};

/// Totals over every suite.
#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
}

/// Runs `cargo test` on the host crates; counts from libtest's summary lines.
fn host_tests(tally: &mut Tally) -> anyhow::Result<()> {
    println!("xtask: host tests (cargo test --workspace)");
    let out = build::cargo()
        .args(["test", "--workspace", "--exclude", "kmend-guest", "--exclude", "kmend-probes"])
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let mut seen = false;
    for line in stdout.lines() {
        // "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            seen = true;
            let num = |label: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(label).and_then(|n| n.trim().rsplit(' ').next()?.parse::<u32>().ok()))
                    .unwrap_or(0)
            };
            tally.passed += num(" passed");
            tally.failed += num(" failed");
        }
    }
    if !out.status.success() && !seen {
        bail!("cargo test failed to build or run ({})", out.status);
    }
    if !out.status.success() {
        tally.failed = tally.failed.max(1);
    }
    Ok(())
}

/// Boots the suite twice on one disk per kernel (the second boot checks
/// what the agent does at boot) and adds the results; kernel problems fail
/// too. Each kernel's verdict lines are repeated at the end.
fn vm_suites(all: &[Artifacts], opts: &VmOptions, tally: &mut Tally) -> anyhow::Result<()> {
    let mut verdicts = Vec::new();
    for artifacts in all {
        let flavor = artifacts.kernel.flavor.name();
        let disk = vm::fresh_disk(&format!("disk-test-{flavor}.img"))?;
        for mode in ["test", "test-reboot"] {
            let start = std::time::Instant::now();
            let run = vm::boot(artifacts, mode, opts, false, Some(&disk))?;
            let secs = start.elapsed().as_secs_f64();
            verdicts.push(match &run.verdict {
                Some((release, p, f)) => format!("kmend-guest: verdict ({release}): {p} passed, {f} failed  [{flavor}, {mode}, {secs:.0} s]"),
                None => format!("kmend-guest: no verdict from the {flavor} kernel ({mode}, {secs:.0} s)"),
            });
            add_run(run, tally);
        }
    }
    println!("xtask: per kernel:");
    for v in verdicts {
        println!("  {v}");
    }
    Ok(())
}

fn add_run(run: vm::GuestRun, tally: &mut Tally) {
    match run.verdict {
        Some((_, p, f)) => {
            tally.passed += p;
            tally.failed += f;
        }
        None => {
            println!("xtask: the guest printed no verdict{}", if run.timed_out { " (timed out)" } else { "" });
            tally.failed += 1;
        }
    }
    if run.problems.is_empty() {
        println!("xtask: guest kernel log clean (no WARNING/BUG/Oops/panic): ok");
        tally.passed += 1;
    } else {
        println!("xtask: guest kernel log has problems: FAILED\n  {}", run.problems.join("\n  "));
        tally.failed += 1;
    }
    println!("xtask: console log: {}", run.log.display());
}

fn finish(tally: &Tally) -> anyhow::Result<()> {
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        bail!("{} test(s) failed", tally.failed);
    }
    Ok(())
}

/// `cargo xtask vm-test`.
pub fn vm_only(opts: &VmOptions) -> anyhow::Result<()> {
    if !opts.patches.is_empty() {
        return try_patches(opts);
    }
    let mut tally = Tally::default();
    let all = build::all(&opts.kernels_or(ALL_KERNELS))?;
    match &opts.mode {
        Some(mode) => {
            for artifacts in &all {
                for _ in 0..opts.repeat {
                    add_run(vm::boot(artifacts, mode, opts, false, None)?, &mut tally);
                }
            }
        }
        None => vm_suites(&all, opts, &mut tally)?,
    }
    finish(&tally)
}

/// `cargo xtask vm-test --patch <dir>...`: a patch author's one command.
/// The guest's `try` mode applies the patches in order, runs `kmend verify`
/// on each while its trigger runs, and reverts them; the host checks the
/// kernel log as for the suite.
fn try_patches(opts: &VmOptions) -> anyhow::Result<()> {
    ensure!(opts.mode.is_none(), "--patch runs the guest's `try` mode: leave out --mode");
    let mut tally = Tally::default();
    for artifacts in build::trying(&opts.kernels_or(&[Flavor::Stock]), &opts.patches)? {
        for _ in 0..opts.repeat {
            add_run(vm::boot(&artifacts, "try", opts, false, None)?, &mut tally);
        }
    }
    finish(&tally)
}

/// The end-to-end test on a Debian server (stock kernel only).
fn server(all: &[Artifacts], opts: &VmOptions, tally: &mut Tally) -> anyhow::Result<()> {
    let Some(stock) = all.iter().find(|a| a.kernel.flavor == Flavor::Stock) else {
        return Ok(());
    };
    let runs = crate::server_vm::run(stock, opts)?;
    for (_, ok) in &runs.host_checks {
        if *ok {
            tally.passed += 1;
        } else {
            tally.failed += 1;
        }
    }
    for run in runs.boots {
        add_run(run, tally);
    }
    Ok(())
}

/// `cargo xtask server-test`.
pub fn server_only(opts: &VmOptions) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    let all = build::all(&[Flavor::Stock])?;
    server(&all, opts, &mut tally)?;
    finish(&tally)
}

/// `cargo xtask test`.
pub fn all(opts: &VmOptions) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    let all = build::all(&opts.kernels_or(ALL_KERNELS))?;
    host_tests(&mut tally)?;
    let (passed, failed) = crate::package_test::run()?;
    tally.passed += passed;
    tally.failed += failed;
    vm_suites(&all, opts, &mut tally)?;
    server(&all, opts, &mut tally)?;
    finish(&tally)
}
