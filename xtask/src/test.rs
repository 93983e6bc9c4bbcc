//! `cargo xtask test` (host tests, then the VM suite) and `vm-test`.

use std::process::Stdio;

use anyhow::bail;

use crate::{
    build,
    vm::{
        self,
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

/// Boots the suite twice on one disk (the second boot checks what the
/// agent does at boot) and adds the results; kernel problems fail too.
fn vm_suite(opts: &VmOptions, tally: &mut Tally) -> anyhow::Result<()> {
    let disk = vm::fresh_disk("disk-test.img")?;
    for mode in ["test", "test-reboot"] {
        let run = vm::boot(mode, opts, false, Some(&disk))?;
        add_run(run, tally);
    }
    Ok(())
}

fn add_run(run: vm::GuestRun, tally: &mut Tally) {
    match run.verdict {
        Some((p, f)) => {
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
    let mut tally = Tally::default();
    vm_suite(opts, &mut tally)?;
    finish(&tally)
}

/// `cargo xtask test`.
pub fn all(opts: &VmOptions) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    build::all()?;
    host_tests(&mut tally)?;
    vm_suite(opts, &mut tally)?;
    finish(&tally)
}
