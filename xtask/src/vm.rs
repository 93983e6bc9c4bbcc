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
    build,
    initramfs,
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
}

/// Kernel messages that fail a run wherever they appear.
const KERNEL_PROBLEMS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "Call Trace",
    "Kernel panic",
    "general protection fault",
    "soft lockup",
    "self-detected stall",
];

/// What a guest run produced.
pub struct GuestRun {
    pub log: PathBuf,
    /// `(passed, failed)` from the guest's verdict line, if it printed one.
    pub verdict: Option<(u32, u32)>,
    /// Test lines (`kmend-guest: test ...`) as printed.
    pub tests: Vec<String>,
    /// Kernel problem lines found in the console.
    pub problems: Vec<String>,
    pub timed_out: bool,
}

fn parse_verdict(line: &str) -> Option<(u32, u32)> {
    let rest = line.split("kmend-guest: verdict: ").nth(1)?;
    let mut it = rest.split_whitespace();
    let passed = it.next()?.parse().ok()?;
    let failed = it.nth(1)?.parse().ok()?;
    Some((passed, failed))
}

/// Boots the guest in `mode`; `echo_all` copies the whole console to stdout.
pub fn boot(mode: &str, opts: &VmOptions, echo_all: bool, disk: Option<&std::path::Path>) -> anyhow::Result<GuestRun> {
    let artifacts = build::all()?;
    let vm_dir = paths::cache().join("vm");
    fs::create_dir_all(&vm_dir)?;
    let initrd = vm_dir.join("initramfs.cpio");
    initramfs::write(&artifacts.files, &initrd)?;
    let log = vm_dir.join(format!("console-{mode}.log"));

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-m", "1024", "-smp", "2"])
        .arg("-kernel")
        .arg(&artifacts.bzimage)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 loglevel=7 {} kmend_guest={mode}", tsc_params()));
    if let Some(disk) = disk {
        // The guest's /var/lib/kmend, kept from one boot to the next.
        qemu.arg("-drive").arg(format!("file={},format=raw,if=virtio", disk.display()));
    }
    if opts.kvm {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // Multi-threaded TCG; `max` gives the guest every feature TCG emulates.
        qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    println!("xtask: booting the VM ({mode}, {}), console log: {}", if opts.kvm { "kvm" } else { "tcg" }, log.display());
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

    let mut file = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut run = GuestRun { log: log.clone(), verdict: None, tests: Vec::new(), problems: Vec::new(), timed_out: false };
    let deadline = Instant::now() + Duration::from_secs(opts.timeout);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                writeln!(file, "{line}")?;
                let problem = KERNEL_PROBLEMS.iter().any(|p| line.contains(p));
                if problem {
                    run.problems.push(line.clone());
                }
                if line.contains("kmend-guest: test ") && !line.ends_with("...") {
                    run.tests.push(line.clone());
                }
                if let Some(v) = parse_verdict(&line) {
                    run.verdict = Some(v);
                }
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
fn tsc_params() -> String {
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

/// `cargo xtask demo`.
pub fn demo(opts: &VmOptions) -> anyhow::Result<()> {
    let run = boot("demo", opts, true, None)?;
    if run.timed_out {
        bail!("the demo VM did not finish within {} s (log: {})", opts.timeout, run.log.display());
    }
    if !run.problems.is_empty() {
        bail!("the guest kernel reported problems:\n  {}", run.problems.join("\n  "));
    }
    println!("xtask: demo finished; console log: {}", run.log.display());
    Ok(())
}
