//! The test VM: build, pack the initramfs, boot QEMU, watch the console.
//!
//! The guest's PID 1 (`tests/guest`) runs the mode given on the kernel
//! command line and reboots; QEMU runs with `-no-reboot`, so that ends it.
//! The console streams to a log file; pass or fail comes from the guest's
//! verdict line plus a scan of the kernel's messages for warnings, BUGs,
//! oopses and panics, any of which fails the run.

use std::{
    fs,
    io::{
        BufRead as _,
        BufReader,
        Write as _, //
    },
    path::PathBuf,
    process::{
        Command,
        Stdio, //
    },
    sync::mpsc,
    time::{
        Duration,
        Instant, //
    },
};

use anyhow::{
    Context as _,
    bail, //
};

use crate::{
    build::{
        self,
        Artifacts, //
    },
    initramfs,
    kernel::Flavor,
    paths, //
};

/// Options of every command that boots the VM.
#[derive(clap::Args, Clone)]
pub struct VmOptions {
    /// Use KVM. Off by default: on these machines a KVM guest hangs at
    /// "Decompressing Linux", while TCG boots to userspace in about 10 s.
    #[arg(long)]
    pub kvm: bool,
    /// Give up on the guest after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Which kernel(s) to boot, in order (repeat the flag for several);
    /// default: both for tests and bench, the stock one for the demo.
    #[arg(long = "kernel", value_enum)]
    pub kernels: Vec<Flavor>,
    /// `vm-test` only: boot this guest mode once per kernel instead of the
    /// suite (e.g. `textpoke`, the control run without kmend).
    #[arg(long)]
    pub mode: Option<String>,
    /// `vm-test` only: how many times to boot `--mode`.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// `vm-test` only: try this patch directory (repeat for several,
    /// applied in order): boot, apply, `kmend verify` while its `trigger`
    /// runs, revert, kernel log checked. Default kernel: stock.
    #[arg(long = "patch", value_name = "DIR")]
    pub patches: Vec<PathBuf>,
}

impl VmOptions {
    /// The kernels asked for, or `default`.
    pub fn kernels_or(&self, default: &[Flavor]) -> Vec<Flavor> {
        if self.kernels.is_empty() { default.to_vec() } else { self.kernels.clone() }
    }
}

/// Every kernel, the stock one first.
pub const ALL_KERNELS: &[Flavor] = &[Flavor::Stock, Flavor::Debug];

/// Kernel messages that fail a run: WARN()s and lockdep reports start
/// with `WARNING:`, KFENCE/KASAN and sleeping-in-atomic reports with `BUG:`.
/// Matched at the start of the message (after the timestamp), so that a
/// CPU-bug notice such as `RETBleed: WARNING: ...` is not taken for one.
const KERNEL_PROBLEMS: &[&str] = &["WARNING:", "BUG:", "UBSAN:", "INFO: task", "Oops", "Kernel panic"];

/// Problems matched anywhere in a line.
const KERNEL_PROBLEMS_ANYWHERE: &[&str] =
    &["Call Trace", "general protection fault", "soft lockup", "self-detected stall", "Kernel panic"];

/// Whether a console line is a kernel problem report.
fn is_problem(line: &str) -> bool {
    let message = match line.trim_start().strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(rest, |(_, m)| m),
        None => line,
    };
    KERNEL_PROBLEMS.iter().any(|p| message.starts_with(p)) || KERNEL_PROBLEMS_ANYWHERE.iter().any(|p| line.contains(p))
}

/// What a guest run produced.
pub struct GuestRun {
    pub log: PathBuf,
    /// `(release, passed, failed)` from the guest's verdict line, if any.
    pub verdict: Option<(String, u32, u32)>,
    /// Test lines (`kmend-guest: test ...`) as printed.
    pub tests: Vec<String>,
    /// Kernel problem lines found in the console.
    pub problems: Vec<String>,
    pub timed_out: bool,
}

/// `kmend-guest: verdict (<uname -r>): N passed, M failed`.
fn parse_verdict(line: &str) -> Option<(String, u32, u32)> {
    let rest = line.split("kmend-guest: verdict (").nth(1)?;
    let (release, rest) = rest.split_once("): ")?;
    let mut it = rest.split_whitespace();
    let passed = it.next()?.parse().ok()?;
    let failed = it.nth(1)?.parse().ok()?;
    Some((release.to_owned(), passed, failed))
}

/// Boots `artifacts`' kernel in `mode`; `echo_all` copies the whole console
/// to stdout.
pub fn boot(artifacts: &Artifacts, mode: &str, opts: &VmOptions, echo_all: bool, disk: Option<&std::path::Path>) -> anyhow::Result<GuestRun> {
    let flavor = artifacts.kernel.flavor.name();
    let vm_dir = paths::cache().join("vm");
    fs::create_dir_all(&vm_dir)?;
    let initrd = vm_dir.join(format!("initramfs-{flavor}.cpio"));
    initramfs::write(&artifacts.files, &artifacts.kernel.boot_modules, &artifacts.extra, &initrd)?;
    let log = vm_dir.join(format!("console-{mode}-{flavor}.log"));
    // The debug kernel gets 4 vCPUs (stop_machine and the stack check across
    // more CPUs than host cores); the stock kernel the 2 the suite was
    // written for, to keep the TCG run short.
    let cpus = match artifacts.kernel.flavor {
        Flavor::Debug => "4",
        Flavor::Stock => "2",
    };
    // The debug kernel enforces module signatures from the first instant,
    // as a Secure Boot machine does (xtask/src/module_signing.rs); the stock
    // kernel does not trust the feed's key, so it runs as Debian ships it.
    let enforce = match artifacts.kernel.flavor {
        Flavor::Debug => " module.sig_enforce=1",
        Flavor::Stock => "",
    };

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-m", "1024", "-smp", cpus])
        .arg("-kernel")
        .arg(&artifacts.kernel.bzimage)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 loglevel=7 {}{enforce} kmend_guest={mode}", tsc_params()));
    if let Some(disk) = disk {
        // The guest's /var/lib/kmend, kept from one boot to the next.
        qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio", disk.display()));
    }
    if opts.kvm {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // `max` gives the guest every feature TCG emulates. The stock
        // kernel runs on single-threaded TCG: with one host thread per vCPU,
        // QEMU races the kernel's own text poking (text_poke_bp's int3
        // protocol) and the stock kernel takes an unhandled `int3` within
        // seconds with nothing of kmend loaded (`vm-test --mode textpoke`:
        // 5 of 5 boots; 0 of 3 single-threaded). The debug kernel keeps one
        // host thread per vCPU (0 of 2 crashed), so some run has real
        // parallelism (docs/testing.md).
        let accel = match artifacts.kernel.flavor {
            Flavor::Stock => "tcg,thread=single",
            Flavor::Debug => "tcg,thread=multi",
        };
        qemu.args(["-accel", accel, "-cpu", "max"]);
    }
    println!(
        "xtask: booting the {flavor} kernel {} ({mode}, {}, {cpus} vCPUs), console log: {}",
        artifacts.kernel.release,
        match (opts.kvm, artifacts.kernel.flavor) {
            (true, _) => "kvm",
            (false, Flavor::Stock) => "tcg single-threaded",
            (false, Flavor::Debug) => "tcg multi-threaded",
        },
        log.display()
    );
    watch(&mut qemu, &log, Duration::from_secs(opts.timeout), echo_all, &mut |_| {})
}

/// Runs `qemu`, copying its serial console to `log` and collecting test
/// lines, the verdict and kernel problems, until it exits or `timeout`.
/// `on_line` sees every console line (the host's part of a test).
pub fn watch(
    qemu: &mut Command,
    log: &std::path::Path,
    timeout: Duration,
    echo_all: bool,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<GuestRun> {
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut file = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut run = GuestRun { log: log.to_path_buf(), verdict: None, tests: Vec::new(), problems: Vec::new(), timed_out: false };
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                writeln!(file, "{line}")?;
                let problem = is_problem(&line);
                if problem {
                    run.problems.push(line.clone());
                }
                if line.contains("kmend-guest: test ") && !line.ends_with("...") {
                    run.tests.push(line.clone());
                }
                if let Some(v) = parse_verdict(&line) {
                    run.verdict = Some(v);
                }
                on_line(&line);
                if echo_all || problem || line.contains("kmend-guest:") {
                    println!("  | {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() > deadline {
            run.timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    Ok(run)
}

/// The guest's clock. Under TCG the kernel cannot calibrate the TSC (no
/// HPET or PM timer in a tinyconfig guest, and PIT calibration fails), falls
/// back to jiffies and measures nothing shorter than a tick. TCG's TSC runs
/// at the host's rate, so the host's frequency, declared reliable, gives the
/// guest a nanosecond clock for the benchmark and the suite's timeouts.
pub fn tsc_params() -> String {
    let khz = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("cpu MHz").and_then(|v| v.split(':').nth(1)).and_then(|v| v.trim().parse::<f64>().ok()))
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64);
    format!("tsc=reliable tsc_early_khz={khz}")
}

/// A fresh, empty disk image for the guest (sparse, 64 MiB).
pub fn fresh_disk(name: &str) -> anyhow::Result<PathBuf> {
    let path = paths::cache().join("vm").join(name);
    fs::create_dir_all(path.parent().unwrap_or(&paths::cache()))?;
    let file = fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    file.set_len(64 << 20)?;
    Ok(path)
}

/// `cargo xtask demo`: on Debian's stock kernel unless told otherwise.
pub fn demo(opts: &VmOptions) -> anyhow::Result<()> {
    for artifacts in build::all(&opts.kernels_or(&[Flavor::Stock]))? {
        let run = boot(&artifacts, "demo", opts, true, None)?;
        if run.timed_out {
            bail!("the demo VM did not finish within {} s (log: {})", opts.timeout, run.log.display());
        }
        if !run.problems.is_empty() {
            bail!("the guest kernel reported problems:\n  {}", run.problems.join("\n  "));
        }
        println!("xtask: demo finished; console log: {}", run.log.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        is_problem,
        parse_verdict, //
    };

    #[test]
    fn kernel_problems_are_reports_not_notices() {
        assert!(is_problem("[    3.1] WARNING: CPU: 1 PID: 77 at kernel/stop_machine.c:300 foo+0x1/0x2"));
        assert!(is_problem("[    3.1] WARNING: possible circular locking dependency detected"));
        assert!(is_problem("[    3.1] BUG: KFENCE: use-after-free read in bar+0x1/0x2"));
        assert!(is_problem("[    3.1] BUG: sleeping function called from invalid context at x.c:1"));
        assert!(is_problem("[    3.1]  Call Trace:"));
        assert!(is_problem("WARNING: CPU: 0 PID: 1 at x.c:1"));
        assert!(!is_problem("[    0.1] RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable"));
        assert!(!is_problem("[    0.1] kmend: loaded"));
    }

    #[test]
    fn verdict_names_the_kernel() {
        assert_eq!(
            parse_verdict("kmend-guest: verdict (7.2.12+deb14-amd64): 18 passed, 1 failed"),
            Some(("7.2.12+deb14-amd64".to_owned(), 18, 1))
        );
        assert_eq!(parse_verdict("kmend-guest: verdict: 18 passed, 0 failed"), None);
    }
}
