//! Real fixes (issue #9): a real stable fix, turned into a patch by
//! `cargo xtask patch build` from its C diff with no hand-written code,
//! applied to Debian's stock kernel, proven by eBPF and reverted; and a
//! target named by a symbol alias, as patch authors name syscalls.
//!
//! The diff patches are built for the stock kernel only (the builder
//! compiles single objects in the stock build tree); on the debug kernel
//! their test is not registered, and the suite says so.

use std::{
    path::Path,
    process::{
        Command,
        Stdio, //
    },
    time::{
        Duration,
        Instant, //
    },
};

use crate::harness::{
    MODULE_DIR,
    Test,
    TestResult,
    apply,
    check,
    kmend,
    revert, //
};

/// kernel/exit.c's fix between Debian's 7.2.12 and 7.2.13: do_wait()
/// sleeps TASK_FREEZABLE (tests/patches/stable_do_wait).
const DO_WAIT: &str = "kp_stable_do_wait";

pub fn tests() -> Vec<Test> {
    let mut tests = vec![Test { name: "target_named_by_its_alias_applies", run: target_named_by_its_alias_applies }];
    if Path::new(&format!("{MODULE_DIR}/{DO_WAIT}.kmpatch")).exists() {
        tests.push(Test { name: "stable_fix_from_c_diff_runs_and_reverts", run: stable_fix_from_c_diff_runs_and_reverts });
    } else {
        println!("kmend-guest: no patches built from C diffs for this kernel (they are built for the stock kernel)");
    }
    tests
}

/// `tests/patches/alias` names `__x64_sys_getpgrp`, an alias of
/// `__do_sys_getpgrp` (what the kernel calls that address). Before the
/// build resolved aliases, kmend.ko refused it with ENXIO.
fn target_named_by_its_alias_applies() -> TestResult {
    // SAFETY: getpgrp has no arguments and cannot fail.
    let pgrp = || unsafe { libc::syscall(libc::SYS_getpgrp) };
    let before = pgrp();
    check(before != 4242, || format!("getpgrp already {before}"))?;
    apply("kmend_alias.kmpatch")?;
    let during = pgrp();
    let (_, status, _) = kmend(&["status", "--json"]);
    revert("kmend_alias")?;
    check(during == 4242, || format!("getpgrp with the patch: {during}, want 4242"))?;
    check(status.contains("__do_sys_getpgrp"), || format!("status does not name the function: {status}"))?;
    let after = pgrp();
    check(after == before, || format!("getpgrp after revert: {after}, before: {before}"))
}

/// Reaps children the way every shell does: `wait4()` into `do_wait()`.
fn reap_children(rounds: u32) -> TestResult {
    for i in 0..rounds {
        let code = i % 100;
        let status = Command::new("/bin/sh")
            .args(["-c", &format!("exit {code}")])
            .status()
            .map_err(|e| format!("spawn sh: {e}"))?;
        check(status.code() == Some(code as i32), || format!("child exited {code}, wait reported {status}"))?;
    }
    Ok(())
}

/// The copied do_wait() calls the kernel's static __do_wait() and
/// child_wait_callback() through relocations the kernel resolved when the
/// module loaded: if one were wrong, reaping a child would crash or hang.
fn stable_fix_from_c_diff_runs_and_reverts() -> TestResult {
    apply(&format!("{DO_WAIT}.kmpatch"))?;
    let (code, out, err) = kmend(&["status", "--json"]);
    check(code == 0, || format!("status: exit {code}: {err}"))?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("status json: {e}: {out}"))?;
    let patch = v["patches"].as_array().into_iter().flatten().find(|p| p["id"] == DO_WAIT);
    let f = patch.map(|p| &p["functions"][0]).ok_or_else(|| format!("{DO_WAIT} not in status: {out}"))?;
    check(f["name"] == "do_wait" && f["state"] == "active", || format!("function: {f}"))?;
    check(
        f["replacement"].as_str().is_some_and(|r| r.starts_with(&format!("{DO_WAIT}__do_wait+0x0/"))),
        || format!("replacement: {f}"),
    )?;

    // Exit codes still reach the parent through the copied code.
    reap_children(50)?;

    // eBPF: the copy runs, the old body does not, while children are reaped.
    let verify = Command::new("/bin/kmend")
        .args(["verify", DO_WAIT, "--window", "3s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn kmend verify: {e}"))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        reap_children(5)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = verify.wait_with_output().map_err(|e| format!("wait kmend verify: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.success(), || format!("verify: {}: {stdout} {}", out.status, String::from_utf8_lossy(&out.stderr)))?;
    let v: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| format!("verify json: {e}: {stdout}"))?;
    let f = &v["functions"][0];
    check(v["proven"] == true, || format!("not proven: {v}"))?;
    check(f["replacement_hits"].as_u64().unwrap_or(0) > 0, || format!("replacement not hit: {f}"))?;
    check(f["old_body_hits"].as_u64() == Some(0), || format!("old body ran: {f}"))?;

    revert(DO_WAIT)?;
    reap_children(10)
}
