//! The guest's tiny test harness and helpers: run commands, read files,
//! report one line per test and a verdict, power off.

use std::{
    fs,
    io::Write as _,
    process::{
        Command,
        Output,
        Stdio, //
    },
    time::{
        Duration,
        Instant, //
    },
};

/// Where the initramfs puts kmend's modules.
pub const MODULE_DIR: &str = "/lib/kmend";

/// Result of one test: `Err` carries what went wrong, with values.
pub type TestResult = Result<(), String>;

/// A named test.
pub struct Test {
    pub name: &'static str,
    pub run: fn() -> TestResult,
}

/// Runs the tests in order (they share kernel state) and prints the verdict.
pub fn run_all(tests: &[Test]) {
    let (mut passed, mut failed) = (0, 0);
    for t in tests {
        println!("kmend-guest: test {} ...", t.name);
        let _ = std::io::stdout().flush();
        if report(t.name, (t.run)()) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    verdict(passed, failed);
}

/// Prints one test's result line (the host collects them); whether it passed.
pub fn report(name: &str, result: TestResult) -> bool {
    let ok = match result {
        Ok(()) => {
            println!("kmend-guest: test {name} ... ok");
            true
        }
        Err(e) => {
            println!("kmend-guest: test {name} ... FAILED: {e}");
            false
        }
    };
    let _ = std::io::stdout().flush();
    ok
}

/// Prints the verdict line the host reads.
pub fn verdict(passed: u32, failed: u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kmend-guest: verdict ({}): {passed} passed, {failed} failed", release.trim());
    let _ = std::io::stdout().flush();
}

/// Runs a command and returns its output (never fails: a spawn error is an
/// output with status 127 and the error on stderr).
pub fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: format!("spawn {program}: {e}").into_bytes(),
    })
}

/// Runs `kmend <args>`; returns (exit code, stdout, stderr).
pub fn kmend(args: &[&str]) -> (i32, String, String) {
    let out = sh("/bin/kmend", args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kmend apply` of a file in [`MODULE_DIR`], which must succeed.
pub fn apply(file: &str) -> TestResult {
    let (code, out, err) = kmend(&["apply", &format!("{MODULE_DIR}/{file}")]);
    check(code == 0, || format!("apply {file}: exit {code}: {out} {err}"))
}

/// `kmend revert`, which must succeed and unload the patch module.
pub fn revert(id: &str) -> TestResult {
    let (code, out, err) = kmend(&["revert", id]);
    check(code == 0, || format!("revert {id}: exit {code}: {out} {err}"))?;
    check(!module_loaded(id), || format!("module {id} still loaded after revert"))
}

/// Runs a command that must succeed.
pub fn must(program: &str, args: &[&str]) -> TestResult {
    let out = sh(program, args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Reads a file to a string, as a test error on failure.
pub fn read(path: &str) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))
}

/// Checks a condition, with the message on failure.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> TestResult {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Whether a module is loaded.
pub fn module_loaded(name: &str) -> bool {
    fs::read_to_string("/proc/modules")
        .map(|m| m.lines().any(|l| l.split(' ').next() == Some(name)))
        .unwrap_or(false)
}

/// Loads a module from [`MODULE_DIR`] with busybox insmod.
pub fn insmod(file: &str) -> TestResult {
    must("/bin/insmod", &[&format!("{MODULE_DIR}/{file}")])
}

/// Unloads a module with busybox rmmod.
pub fn rmmod(name: &str) -> TestResult {
    must("/bin/rmmod", &[name])
}

/// Runs `f` with the test module (`kmend_testmod.ko`) loaded, and unloads
/// it afterwards whatever `f` returned.
pub fn with_testmod(f: impl FnOnce() -> TestResult) -> TestResult {
    insmod("kmend_testmod.ko")?;
    let result = f();
    let unload = rmmod("kmend_testmod");
    result.and(unload)
}

/// Where the test module's kthread waits (`/proc/kmend_testmod_hold`): 0
/// nowhere, 1 in `kmend_testmod_sleepy`, 2 deep below `kmend_testmod_deep`,
/// 3 in `usleep_range_state`.
pub fn hold(v: u8) -> TestResult {
    std::fs::write("/proc/kmend_testmod_hold", v.to_string()).map_err(|e| format!("hold: {e}"))
}

/// Syncs and reboots; QEMU runs with -no-reboot, so this ends the VM.
pub fn power_off() -> ! {
    let _ = std::io::stdout().flush();
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::park();
    }
}

/// `kmend verify <id> --window <window> --json`, with `exercise` driving
/// the patched code until the probes' window closes (attaching takes a
/// while under TCG, so the loop follows the process, not a clock).
/// Returns whether verify exited 0 (every function proven) and its report.
pub fn verify_while(id: &str, window: &str, mut exercise: impl FnMut() -> TestResult) -> Result<(bool, serde_json::Value), String> {
    let mut verify = Command::new("/bin/kmend")
        .args(["verify", id, "--window", window, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn kmend verify: {e}"))?;
    let start = Instant::now();
    while verify.try_wait().map_err(|e| format!("kmend verify: {e}"))?.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = verify.kill();
            return Err(format!("kmend verify {id} did not finish in 60 s"));
        }
        exercise()?;
    }
    let out = verify.wait_with_output().map_err(|e| format!("wait kmend verify: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .map_err(|e| format!("verify {id}: {}: {e}: {stdout} {}", out.status, String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.success(), report))
}

/// [`verify_while`] on applied patch `id`, then `kmend revert` of it
/// (whatever the proof said); the first function's proof, once the whole
/// patch is proven.
pub fn verify_then_revert(id: &str, window: &str, exercise: impl FnMut() -> TestResult) -> Result<serde_json::Value, String> {
    let verified = verify_while(id, window, exercise);
    let reverted = revert(id);
    let (ok, v) = verified?;
    reverted?;
    check(ok && v["proven"] == true, || format!("verify failed: {v}"))?;
    Ok(v["functions"][0].clone())
}
