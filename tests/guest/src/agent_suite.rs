//! The agent's suite (issue #4), across two boots of one VM with one disk.
//!
//! First boot: `/var/lib/kmend` goes on the virtio disk; the daemon, pointed
//! at a signed feed served inside the guest on loopback, applies a patch on
//! its own; then `kmend apply` is killed while the kernel is still trying to
//! switch a busy patch, and the machine goes down. Second boot, before any
//! network: `kmend boot` re-applies the cached patch and does not retry the
//! one that was being applied when the machine went down.

use std::{
    fs,
    io::{
        BufRead as _,
        BufReader,
    },
    process::{
        Child,
        Command,
        Stdio, //
    },
    thread,
    time::{
        Duration,
        Instant, //
    },
};

use crate::harness::{
    MODULE_DIR,
    Test,
    TestResult,
    check,
    insmod,
    kmend,
    must,
    read, //
};

const STATE_DIR: &str = "/var/lib/kmend";
const PATCHED_CMDLINE: &str = "kmend: this kernel is live patched\n";
/// The daemon's polling interval in these tests.
const INTERVAL_S: u64 = 3;

pub fn first_boot_tests() -> Vec<Test> {
    vec![
        Test { name: "state_on_persistent_disk", run: state_on_persistent_disk },
        Test { name: "daemon_applies_from_feed_within_one_interval", run: daemon_applies_from_feed_within_one_interval },
        Test { name: "machine_goes_down_while_applying", run: machine_goes_down_while_applying },
    ]
}

pub fn second_boot_tests() -> Vec<Test> {
    vec![
        Test { name: "boot_reapplies_cached_patch_before_network", run: boot_reapplies_cached_patch_before_network },
        Test { name: "crash_loop_guard_blocks_interrupted_patch", run: crash_loop_guard_blocks_interrupted_patch },
    ]
}

pub(crate) fn spawn(args: &[&str]) -> Result<Child, String> {
    Command::new("/bin/kmend")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn kmend {}: {e}", args.join(" ")))
}

pub(crate) fn stop(child: &mut Child, signal: i32) {
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let _ = child.wait();
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> TestResult {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what}: not within {timeout:?}"))
}

fn state_on_persistent_disk() -> TestResult {
    fs::create_dir_all(STATE_DIR).map_err(|e| format!("{STATE_DIR}: {e}"))?;
    must("/bin/mke2fs", &["-q", "/dev/vda"])?;
    must("/bin/mount", &["-t", "ext2", "/dev/vda", STATE_DIR])?;
    fs::write(format!("{STATE_DIR}/.probe"), "x").map_err(|e| format!("write to the disk: {e}"))
}

/// A signed feed in `dir` with `artifacts` on its stable channel, served
/// on a loopback port in the guest (`kmend feed serve`): the server and
/// its `host:port`.
pub(crate) fn serve_feed(dir: &str, artifacts: &[&str]) -> Result<(Child, String), String> {
    let key = format!("{dir}-key");
    let (code, _, err) = kmend(&["feed", "keygen", "--out", &key]);
    check(code == 0, || format!("keygen: {err}"))?;
    let (code, _, err) = kmend(&["feed", "init", "--dir", dir, "--root-key", &format!("{key}.key")]);
    check(code == 0, || format!("feed init: {err}"))?;
    let mut build = vec!["feed", "build", "--dir", dir, "--channel", "stable", "--released", "2026-01-01T00:00:00Z"];
    build.extend(artifacts);
    let (code, _, err) = kmend(&build);
    check(code == 0, || format!("feed build: {err}"))?;
    let (code, _, err) = kmend(&["feed", "sign", "--dir", dir, "--key", &format!("{key}.key")]);
    check(code == 0, || format!("feed sign: {err}"))?;
    let mut server = spawn(&["feed", "serve", "--dir", dir, "--listen", "127.0.0.1:0"])?;
    let mut first = String::new();
    if let Some(out) = server.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut first);
    }
    let addr = first.split_whitespace().find(|w| w.contains("127.0.0.1:")).unwrap_or("").trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':').to_owned();
    if addr.is_empty() {
        stop(&mut server, libc::SIGTERM);
        return Err(format!("feed serve said {first:?}"));
    }
    Ok((server, addr))
}

/// The daemon's config for the feed `dir` served at `addr`.
pub(crate) fn daemon_config(dir: &str, addr: &str, interval: &str) -> TestResult {
    fs::create_dir_all("/etc/kmend").map_err(|e| format!("/etc/kmend: {e}"))?;
    fs::write(
        "/etc/kmend/kmend.toml",
        format!(
            "feed_url = \"http://{addr}/\"\nchannel = \"stable\"\ninterval = \"{interval}\"\njitter = \"0s\"\nroot = \"{dir}/metadata/1.root.json\"\nauto_update = true\n"
        ),
    )
    .map_err(|e| format!("write config: {e}"))
}

fn daemon_applies_from_feed_within_one_interval() -> TestResult {
    let (mut server, addr) = serve_feed("/tmp/feed", &[&format!("{MODULE_DIR}/kmend_sample.kmpatch")])?;
    let result = (|| {
        daemon_config("/tmp/feed", &addr, &format!("{INTERVAL_S}s"))?;
        let started = Instant::now();
        let mut daemon = spawn(&["daemon"])?;
        // One interval (plus the first check's own time under emulation).
        let applied = wait_for("the daemon applying kmend_sample", Duration::from_secs(INTERVAL_S + 20), || {
            read("/proc/cmdline").is_ok_and(|c| c == PATCHED_CMDLINE)
        });
        let took = started.elapsed();
        stop(&mut daemon, libc::SIGTERM);
        applied?;
        println!("kmend-guest: daemon applied the feed's patch {:.1} s after start", took.as_secs_f64());
        let (code, out, _) = kmend(&["status", "--json"]);
        check(code == 0 && out.contains("kmend_sample"), || format!("status after the daemon: exit {code}: {out}"))
    })();
    stop(&mut server, libc::SIGTERM);
    result
}

fn machine_goes_down_while_applying() -> TestResult {
    insmod("kmend_testmod.ko")?;
    fs::write("/proc/kmend_testmod_hold", "1").map_err(|e| format!("hold: {e}"))?;
    thread::sleep(Duration::from_millis(300));
    // The kernel retries the busy patch for 5 s; kill kmend in the middle,
    // then (in main) the machine goes down with the apply unfinished.
    let mut apply = spawn(&["apply", &format!("{MODULE_DIR}/kmend_sleepy.kmpatch")])?;
    thread::sleep(Duration::from_millis(1500));
    stop(&mut apply, libc::SIGKILL);
    check(fs::metadata(format!("{STATE_DIR}/applying")).is_ok() || fs::read_dir(STATE_DIR).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains("applying"))), || {
        let names: Vec<String> = fs::read_dir(STATE_DIR).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        format!("no in-progress marker in {STATE_DIR}: {names:?}")
    })?;
    // Make it durable, as a real crash after the marker's fsync would.
    must("/bin/sync", &[])
}

/// Second boot: mount the disk, load the core, run `kmend boot` with the
/// network still down (as kmend-boot.service does before network-pre).
pub fn second_boot_setup() -> Result<bool, String> {
    fs::create_dir_all(STATE_DIR).map_err(|e| format!("{STATE_DIR}: {e}"))?;
    must("/bin/mount", &["-t", "ext2", "/dev/vda", STATE_DIR])?;
    let lo_up_before = fs::read_to_string("/sys/class/net/lo/flags")
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 1 != 0);
    insmod("kmend.ko")?;
    let (code, out, err) = kmend(&["boot"]);
    println!("kmend-guest: kmend boot: exit {code}: {} {}", out.trim(), err.trim());
    must("/bin/ip", &["link", "set", "lo", "up"])?;
    Ok(lo_up_before)
}

fn boot_reapplies_cached_patch_before_network() -> TestResult {
    check(!crate::NETWORK_WAS_UP.load(std::sync::atomic::Ordering::Relaxed), || "loopback was up before kmend boot".into())?;
    let cmdline = read("/proc/cmdline")?;
    check(cmdline == PATCHED_CMDLINE, || format!("/proc/cmdline after kmend boot: {cmdline:?}"))
}

fn crash_loop_guard_blocks_interrupted_patch() -> TestResult {
    let (_, out, _) = kmend(&["status"]);
    check(out.contains("kmend_sleepy") && out.contains("went down while applying"), || format!("status: {out}"))?;
    let (_, json, _) = kmend(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("{e}: {json}"))?;
    let kernel_has_it = v["patches"].as_array().into_iter().flatten().any(|p| p["id"] == "kmend_sleepy");
    check(!kernel_has_it, || format!("the interrupted patch was re-applied: {json}"))
}
