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
    process::Command,
    time::Duration, //
};

use kmend::{
    artifact::Artifact,
    kallsyms,
    sys::transition,
};

use crate::harness::{
    MODULE_DIR,
    Test,
    TestResult,
    apply,
    check,
    insmod,
    kmend,
    module_loaded,
    must,
    read,
    revert,
    rmmod,
    verify_then_revert,
    verify_while, //
};

/// kernel/exit.c's fix between Debian's 7.2.12 and 7.2.13: do_wait()
/// sleeps TASK_FREEZABLE (tests/patches/stable_do_wait).
const DO_WAIT: &str = "kp_stable_do_wait";

/// net/ipv4/tcp_dctcp.c's fix between Debian's 7.2.12 and 7.2.13: code of
/// module tcp_dctcp (tests/patches/stable_tcp_dctcp); the stock module is
/// in the image as `tcp_dctcp.ko`.
const DCTCP: &str = "kp_stable_tcp_dctcp";

/// A C-diff patch to module tcp_lp's tcp_lp_pkts_acked(), whose pr_debug()
/// key lives in tcp_lp (tests/patches/lp_debug); the stock module is in
/// the image as `tcp_lp.ko`.
const LP_DEBUG: &str = "kmend_lp_debug";

/// The other real fixes the suite applies together: every
/// `kp_stable_*.kmpatch` of the image (tests/patches/stable_*, each one
/// file's change between Debian's 7.2.12 and 7.2.13).
fn real_fixes() -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = std::fs::read_dir(MODULE_DIR)
        .map_err(|e| format!("{MODULE_DIR}: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".kmpatch").map(str::to_owned))
        .filter(|id| id.starts_with("kp_stable_") && id != DO_WAIT && id != DCTCP)
        .collect();
    ids.sort();
    Ok(ids)
}

pub fn tests() -> Vec<Test> {
    let mut tests = vec![
        Test { name: "target_named_by_its_alias_applies", run: target_named_by_its_alias_applies },
        Test { name: "rust_replacement_reads_unexported_kernel_data", run: rust_replacement_reads_unexported_kernel_data },
    ];
    if Path::new(&format!("{MODULE_DIR}/{DO_WAIT}.kmpatch")).exists() {
        tests.push(Test { name: "stable_fix_from_c_diff_runs_and_reverts", run: stable_fix_from_c_diff_runs_and_reverts });
        tests.push(Test { name: "real_fixes_apply_together_run_and_revert", run: real_fixes_apply_together_run_and_revert });
        tests.push(Test { name: "thread_asleep_in_the_target_is_parked_not_refused", run: thread_asleep_in_the_target_is_parked_not_refused });
        tests.push(Test { name: "static_twin_is_probed_where_it_is", run: static_twin_is_probed_where_it_is });
        tests.push(Test { name: "twin_at_the_wrong_position_is_refused_by_the_kernel", run: twin_at_the_wrong_position_is_refused_by_the_kernel });
        tests.push(Test { name: "shadow_variable_lives_until_the_revert_callback", run: shadow_variable_lives_until_the_revert_callback });
        tests.push(Test { name: "fix_in_a_module_follows_the_module_across_reloads", run: fix_in_a_module_follows_the_module_across_reloads });
        tests.push(Test { name: "fix_enabled_while_its_module_is_out_applies_as_the_module_loads", run: fix_enabled_while_its_module_is_out_applies_as_the_module_loads });
        tests.push(Test { name: "module_static_key_in_the_copy_works_and_pins_the_module", run: module_static_key_in_the_copy_works_and_pins_the_module });
        tests.push(Test { name: "daemon_applies_a_module_fix_as_the_module_loads", run: daemon_applies_a_module_fix_as_the_module_loads });
    } else {
        println!("kmend-guest: no patches built from C diffs for this kernel (they are built for the stock kernel)");
    }
    tests
}

/// `tests/patches/kernel_data`: a hand-written Rust replacement reads
/// `saved_command_line`, which the kernel does not export; the module
/// loader resolved it by name at load. Before, the module could not load
/// ("Unknown symbol").
fn rust_replacement_reads_unexported_kernel_data() -> TestResult {
    let before = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    apply("kmend_kernel_data.kmpatch")?;
    let during = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"));
    revert("kmend_kernel_data")?;
    let during = during?;
    check(during == format!("kmend-data:{before}"), || format!("/proc/cmdline with the patch: {during:?}, before: {before:?}"))?;
    let after = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    check(after == before, || format!("/proc/cmdline after revert: {after:?}"))
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

/// The suite's C-diff patch to fs/proc/generic.c's `proc_single_open`
/// (tests/patches/dup_static), a static whose name fs/proc/base.c has too.
const TWIN: &str = "kmend_dup_static";

/// `kmend verify` on a patched static whose name the kernel has twice:
/// the probes must sit on the patched function (generic.c's, position 2),
/// not on the first of that name (base.c's), while both run. Before, verify
/// attached by name: the kernel refused the ambiguous name (EADDRNOTAVAIL),
/// and older kernels probed the first one, whose body runs for every
/// `/proc/<pid>/status`.
fn static_twin_is_probed_where_it_is() -> TestResult {
    let version = std::fs::read_to_string("/proc/version").map_err(|e| format!("/proc/version: {e}"))?;
    apply(&format!("{TWIN}.kmpatch"))?;
    let f = verify_then_revert(TWIN, "2s", || {
        // generic.c's (patched) and base.c's (not) proc_single_open.
        let during = std::fs::read_to_string("/proc/version").map_err(|e| format!("/proc/version: {e}"))?;
        check(during == version, || format!("/proc/version with the patch: {during:?}"))?;
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    })?;
    check(f["old_body"].as_str().is_some_and(|p| p.starts_with("proc_single_open,2+")), || format!("old-body probe: {f}"))?;
    check(f["replacement_hits"].as_u64().unwrap_or(0) > 0, || format!("replacement not hit: {f}"))?;
    check(f["old_body_hits"].as_u64() == Some(0), || format!("old body ran: {f}"))
}

/// A target's position among same-named functions is checked in the
/// kernel (issue #8): userspace sends, for the patch to generic.c's
/// `proc_single_open` (position 2), the address of base.c's (position 1),
/// with no fingerprint to catch it. The module loader placed
/// `proc_single_open,2` when the patch module loaded, and kmend.ko enables
/// the function there only. Before, kmend.ko checked the name at the
/// address only, and redirected base.c's function to generic.c's fix.
fn twin_at_the_wrong_position_is_refused_by_the_kernel() -> TestResult {
    let artifact = Artifact::read(Path::new(&format!("{MODULE_DIR}/{TWIN}.kmpatch"))).map_err(|e| format!("{e}"))?;
    let symbols = read("/proc/kallsyms")?;
    let text = kallsyms::text_address(symbols.as_bytes())?;
    let first = kallsyms::resolve(&symbols, "vmlinux", "proc_single_open", 1)?;
    let mut functions = artifact.manifest.functions.clone();
    check(functions.len() == 1 && functions[0].sympos == 2, || format!("not the twin patch: {functions:?}"))?;
    functions[0].text_offset = Some(first - text);
    functions[0].fingerprint.clear();
    let ko = format!("/tmp/{TWIN}.ko");
    std::fs::write(&ko, &artifact.module).map_err(|e| format!("{ko}: {e}"))?;
    let result = transition::apply(Path::new("/dev/kmend"), Path::new(&ko), TWIN, &functions);
    if result.is_ok() {
        // Redirected base.c's function: undo before /proc/<pid>/ is read.
        let _ = revert(TWIN);
    }
    let err = result.err().map(|e| e.to_string()).unwrap_or_default();
    println!("kmend-guest: wrong twin: {err}");
    check(err.contains("at position 2") && err.contains(&format!("not at {first:#x}")), || {
        format!("the wrong twin's address was not refused by position: {err:?}")
    })?;
    check(!module_loaded(TWIN), || "refused patch left its module loaded".into())
}

/// A fix in a module, loaded (registered) while the module was loaded,
/// then the module unloads before the patch is enabled: the enable leaves
/// the module's function pending, and the module's next load is fixed as
/// it comes, before its init runs: kmend.ko resolves the patch's
/// references in that load and redirects the function (the copy then
/// runs: eBPF). Before, the enable was refused (ESTALE): the module
/// loader had resolved the references in the load that was gone.
fn fix_enabled_while_its_module_is_out_applies_as_the_module_loads() -> TestResult {
    let module = "tcp_dctcp";
    check(!module_loaded(module), || format!("{module} loaded before the test"))?;
    let artifact = Artifact::read(Path::new(&format!("{MODULE_DIR}/{DCTCP}.kmpatch"))).map_err(|e| format!("{e}"))?;
    let ko = format!("/tmp/{DCTCP}.ko");
    std::fs::write(&ko, &artifact.module).map_err(|e| format!("{ko}: {e}"))?;
    insmod("tcp_dctcp.ko")?;
    let loaded = must("/bin/insmod", &[&ko]);
    let gone = rmmod(module);
    let enabled = match (&loaded, &gone) {
        (Ok(()), Ok(())) => transition::enable(Path::new("/dev/kmend"), DCTCP, &artifact.manifest.functions).map_err(|e| e.to_string()),
        _ => Err("not tried".to_owned()),
    };
    let undo = || {
        let _ = transition::revert(Path::new("/dev/kmend"), DCTCP);
        let _ = rmmod(module);
        if module_loaded(DCTCP) {
            let _ = rmmod(DCTCP);
        }
    };
    if let Err(e) = loaded.and(gone).and(enabled.map(|_| ())) {
        undo();
        return Err(format!("load the patch, unload tcp_dctcp, enable: {e}"));
    }
    let reload = insmod("tcp_dctcp.ko");
    let dmesg = String::from_utf8_lossy(&Command::new("/bin/dmesg").output().map(|o| o.stdout).unwrap_or_default()).into_owned();
    let as_it_loads = dmesg.contains("patch 'kp_stable_tcp_dctcp': 'tcp_dctcp:dctcp_init' applied as the module loads");
    let verified = match (&reload, as_it_loads) {
        (Ok(()), true) => verify_while(DCTCP, "2s", dctcp_connection),
        _ => Err(format!("insmod under the enabled patch: {reload:?}; applied as it loads: {as_it_loads}")),
    };
    undo();
    let (_, v) = verified?;
    let f = v["functions"].as_array().into_iter().flatten().find(|f| f["function"] == "dctcp_init").cloned().unwrap_or_default();
    println!("kmend-guest: {DCTCP}: enabled with tcp_dctcp out, then loaded: dctcp_init: copy hit {}, old body hit {}", f["replacement_hits"], f["old_body_hits"]);
    check(f["replacement_hits"].as_u64().unwrap_or(0) > 0 && f["old_body_hits"].as_u64() == Some(0), || format!("verify: {v}"))?;
    check(!module_loaded(DCTCP) && !module_loaded(module), || "the patch module or tcp_dctcp left loaded".to_owned())
}

/// The suite's C-diff patch with a shadow variable and callbacks
/// (tests/patches/shadow).
const SHADOW: &str = "kmend_shadow";

/// `/proc/version`'s read count, as the shadow patch prints it.
fn shadow_reads() -> Result<Option<u64>, String> {
    let text = std::fs::read_to_string("/proc/version").map_err(|e| format!("/proc/version: {e}"))?;
    let count = text.lines().find_map(|l| l.strip_prefix("kmend-shadow: read "));
    count.map(|n| n.trim().parse().map_err(|e| format!("/proc/version: {e}: {text:?}"))).transpose()
}

/// A fix that keeps state beside an existing kernel object (a shadow
/// variable on the UTS namespace: the kernel's klp_shadow API) and frees
/// it from a post_revert callback; pre_apply runs before the switch. The
/// count goes on while applied, and starts again after a revert and a new
/// apply: the callback freed the variable (without it the count would go
/// on from where it was, the variable left behind in the kernel).
fn shadow_variable_lives_until_the_revert_callback() -> TestResult {
    check(shadow_reads()?.is_none(), || "/proc/version counts reads before the patch".into())?;
    apply(&format!("{SHADOW}.kmpatch"))?;
    let counts = (shadow_reads(), shadow_reads(), shadow_reads());
    revert(SHADOW)?;
    let counts = (counts.0?, counts.1?, counts.2?);
    check(counts == (Some(1), Some(2), Some(3)), || format!("read counts while applied: {counts:?}"))?;
    check(shadow_reads()?.is_none(), || "/proc/version still counts after revert".into())?;

    let log = String::from_utf8_lossy(&crate::harness::sh("/bin/dmesg", &[]).stdout).into_owned();
    let pre = log.find("kmend-shadow: pre_apply");
    let post = log.find("kmend-shadow: post_revert");
    check(pre.is_some() && post.is_some() && pre < post, || format!("callbacks in the kernel log: pre_apply at {pre:?}, post_revert at {post:?}"))?;

    apply(&format!("{SHADOW}.kmpatch"))?;
    let again = shadow_reads();
    revert(SHADOW)?;
    let again = again?;
    check(again == Some(1), || format!("first read after re-apply counts {again:?}: the shadow variable outlived the revert"))
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

    // The copy's tracepoint works: its jump-label entry came with it (the
    // kernel patches the copy's site when the event is enabled) and its
    // static call and tracepoint were resolved by the kernel at load.
    const EVENT: &str = "/sys/kernel/tracing/events/sched/sched_process_wait/enable";
    std::fs::write("/sys/kernel/tracing/trace", "").map_err(|e| format!("clear trace: {e}"))?;
    std::fs::write(EVENT, "1").map_err(|e| format!("enable sched_process_wait: {e}"))?;
    let reaped = reap_children(3);
    let trace = std::fs::read_to_string("/sys/kernel/tracing/trace").map_err(|e| format!("read trace: {e}"));
    std::fs::write(EVENT, "0").map_err(|e| format!("disable sched_process_wait: {e}"))?;
    reaped?;
    let trace = trace?;
    check(trace.contains("sched_process_wait:"), || format!("no sched_process_wait event from the copied do_wait: {trace}"))?;

    // eBPF: the copy runs, the old body does not, while children are reaped.
    let (ok, v) = verify_while(DO_WAIT, "3s", || {
        reap_children(5)?;
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    })?;
    check(ok, || format!("verify failed: {v}"))?;
    let f = &v["functions"][0];
    check(v["proven"] == true, || format!("not proven: {v}"))?;
    check(f["replacement_hits"].as_u64().unwrap_or(0) > 0, || format!("replacement not hit: {f}"))?;
    check(f["old_body_hits"].as_u64() == Some(0), || format!("old body ran: {f}"))?;

    revert(DO_WAIT)?;
    reap_children(10)
}

/// Where a thread sleeps (`/proc/<pid>/wchan`: the function, as kallsyms
/// names it).
fn wchan(pid: u32) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).map_err(|e| format!("/proc/{pid}/wchan: {e}"))
}

/// Waits up to 10 s for thread `pid` to sleep in `function`.
fn sleeps_in(pid: u32, function: &str) -> TestResult {
    let start = std::time::Instant::now();
    loop {
        let now = wchan(pid)?;
        if now == function {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("pid {pid} sleeps in '{now}', not '{function}'"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A thread waits (`waitpid`) for a child that sleeps for the whole test:
/// it is asleep inside `do_wait` the whole time, where the
/// all-threads-clean switch used to retry and then refuse (exit 4, naming
/// the thread). Now kmend asks it to park on its way back to user mode
/// (`park.rs`): the apply succeeds, the wait restarts in the copied
/// `do_wait` (its wchan names the copy), the revert parks it again back
/// into the original, and when the child is killed the wait returns its
/// status. (A thread of this program, not a shell: busybox's `wait` sleeps
/// in `sigsuspend`.)
fn thread_asleep_in_the_target_is_parked_not_refused() -> TestResult {
    use std::os::unix::process::ExitStatusExt as _;
    let mut child = Command::new("/bin/sleep").arg("600").spawn().map_err(|e| format!("spawn sleep: {e}"))?;
    let child_pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        // SAFETY: gettid has no arguments and cannot fail.
        let _ = tx.send(unsafe { libc::gettid() } as u32);
        child.wait()
    });
    let tid = rx.recv().map_err(|e| format!("waiter thread: {e}"))?;
    let result = (|| {
        sleeps_in(tid, "do_wait")?;
        apply(&format!("{DO_WAIT}.kmpatch"))?;
        sleeps_in(tid, &format!("{DO_WAIT}__do_wait"))?;
        revert(DO_WAIT)?;
        sleeps_in(tid, "do_wait")
    })();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child_pid as i32, libc::SIGTERM) };
    let waited = waiter.join().map_err(|_| "waiter thread panicked".to_owned())?;
    if result.is_err() {
        let _ = kmend(&["revert", DO_WAIT]);
    }
    result?;
    let status = waited.map_err(|e| format!("waitpid: {e}"))?;
    check(status.signal() == Some(libc::SIGTERM), || format!("waitpid after the switches reported {status}, want killed by SIGTERM"))
}

/// Drives the code the fixes changed: `O_ASYNC` on a pipe (pipe_fasync), TCP congestion control set and read
/// (tcp_set_congestion_control, do_tcp_getsockopt), new IPC and PID
/// namespaces (copy_ipcs, zap_pid_ns_processes when the namespace's init
/// exits), forks (cgroup_can_fork) and opens (path_openat).
fn exercise() -> TestResult {
    let mut fds = [0; 2];
    // SAFETY: plain syscalls on descriptors this function owns and closes.
    unsafe {
        check(libc::pipe(fds.as_mut_ptr()) == 0, || "pipe".into())?;
        libc::fcntl(fds[0], libc::F_SETOWN, libc::getpid());
        let flags = libc::fcntl(fds[0], libc::F_GETFL);
        check(libc::fcntl(fds[0], libc::F_SETFL, flags | libc::O_ASYNC) == 0, || "F_SETFL O_ASYNC on a pipe".into())?;
        check(libc::fcntl(fds[0], libc::F_GETFL) & libc::O_ASYNC != 0, || "O_ASYNC not set on the pipe".into())?;
        libc::close(fds[0]);
        libc::close(fds[1]);
        let sock = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        check(sock >= 0, || "socket".into())?;
        let reno = b"reno";
        let set = libc::setsockopt(sock, libc::IPPROTO_TCP, libc::TCP_CONGESTION, reno.as_ptr().cast(), reno.len() as u32);
        let mut buf = [0u8; 16];
        let mut len = buf.len() as libc::socklen_t;
        let get = libc::getsockopt(sock, libc::IPPROTO_TCP, libc::TCP_CONGESTION, buf.as_mut_ptr().cast(), &mut len);
        libc::close(sock);
        check(set == 0 && get == 0, || format!("TCP_CONGESTION set {set}, get {get}"))?;
        check(buf.starts_with(reno), || format!("TCP_CONGESTION reads back {:?}", String::from_utf8_lossy(&buf)))?;
    }
    for args in [&["unshare", "-i", "true"][..], &["unshare", "-p", "-f", "true"][..]] {
        let status = Command::new("/bin/busybox").args(args).status().map_err(|e| format!("busybox {args:?}: {e}"))?;
        check(status.success(), || format!("busybox {args:?}: {status}"))?;
    }
    reap_children(5)
}

/// Every other real fix of the image (21: the scheduler, fork's cgroup
/// check, every open(), TCP, namespaces, workqueues, page pools, PCI,
/// SELinux hooks, ...) applied together with do_wait's, the code several
/// of them changed driven, three proven by eBPF, then all reverted newest
/// first.
fn real_fixes_apply_together_run_and_revert() -> TestResult {
    let fixes = real_fixes()?;
    check(fixes.len() >= 20, || format!("only {} real fixes in the image: {fixes:?}", fixes.len()))?;
    apply(&format!("{DO_WAIT}.kmpatch"))?;
    for id in &fixes {
        apply(&format!("{id}.kmpatch"))?;
    }
    let (code, out, err) = kmend(&["status", "--json"]);
    check(code == 0, || format!("status: exit {code}: {err}"))?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("status json: {e}: {out}"))?;
    let patches = v["patches"].as_array().cloned().unwrap_or_default();
    check(patches.len() == fixes.len() + 1, || format!("{} patches applied, want {}", patches.len(), fixes.len() + 1))?;
    for p in &patches {
        for f in p["functions"].as_array().into_iter().flatten() {
            check(f["state"] == "active", || format!("{}: {f}", p["id"]))?;
        }
    }
    exercise()?;

    // eBPF, per exercised function: the copy runs, the old body does not.
    for (id, function) in [
        ("kp_stable_ipc_ns", "copy_ipcs"),
        ("kp_stable_pipe", "pipe_fasync"),
        ("kp_stable_tcp_cong", "tcp_set_congestion_control"),
    ] {
        // Not every function of a patch is driven here: per function.
        let (_, v) = verify_while(id, "2s", exercise)?;
        let f = v["functions"].as_array().into_iter().flatten().find(|f| f["function"] == function);
        let f = f.ok_or_else(|| format!("verify {id}: no {function}: {v}"))?;
        check(f["replacement_hits"].as_u64().unwrap_or(0) > 0, || format!("{id}: copy of {function} not hit: {f}"))?;
        check(f["old_body_hits"].as_u64() == Some(0), || format!("{id}: old {function} ran: {f}"))?;
    }

    for id in fixes.iter().rev() {
        revert(id)?;
    }
    revert(DO_WAIT)?;
    exercise()?;
    let (code, out, _) = kmend(&["status", "--json"]);
    check(code == 1 && out.contains("\"patches\":[]"), || format!("status after reverting all: exit {code}: {out}"))
}

/// A fix whose copied code uses a static key of the module it patches:
/// tcp_lp_pkts_acked()'s pr_debug(), whose dynamic debug key lives in
/// tcp_lp. The kernel links the copy's `__jump_table` entry to that key
/// when the patch module loads and reads the key again when it unloads,
/// so kmend.ko keeps tcp_lp loaded for as long as the patch module is
/// (kernel-module/module_pins.rs): `rmmod tcp_lp` is refused and its
/// reference count shows the hold. The key reaches the copy: enabling the
/// pr_debug through dynamic debug makes the copy print (the old body does
/// not run: eBPF). Reverted (the patch module unloads), tcp_lp unloads,
/// and the guest log stays clean (checked after the suite). Before, the
/// builder refused such fixes (19 of `cargo xtask fixes`).
fn module_static_key_in_the_copy_works_and_pins_the_module() -> TestResult {
    let module = "tcp_lp";
    let refcnt = || read("/sys/module/tcp_lp/refcnt").map(|r| r.trim().parse::<u32>().unwrap_or(u32::MAX));
    insmod("tcp_lp.ko")?;
    let before = refcnt()?;
    apply(&format!("{LP_DEBUG}.kmpatch"))?;
    let undo = || {
        let _ = std::fs::write("/proc/dynamic_debug/control", "func tcp_lp_pkts_acked -p");
        let _ = revert(LP_DEBUG);
        let _ = rmmod(module);
    };
    let held = refcnt()?;
    if held != before + 1 || rmmod(module).is_ok() {
        undo();
        return Err(format!("tcp_lp not held by the patch module: refcnt {before} before, {held} with the patch; rmmod refused: {}", module_loaded(module)));
    }
    println!("kmend-guest: {LP_DEBUG}: tcp_lp held while the patch module is loaded (refcnt {before} -> {held}, rmmod refused)");

    if let Err(e) = std::fs::write("/proc/dynamic_debug/control", "func tcp_lp_pkts_acked +p") {
        undo();
        return Err(format!("/proc/dynamic_debug/control: enable tcp_lp_pkts_acked: {e}"));
    }
    let verified = verify_while(LP_DEBUG, "2s", || congestion_connection("lp"));
    let dmesg = String::from_utf8_lossy(&Command::new("/bin/dmesg").output().map(|o| o.stdout).unwrap_or_default()).into_owned();
    let (ok, v) = match verified {
        Ok(r) => r,
        Err(e) => {
            undo();
            return Err(e);
        }
    };
    let f = v["functions"].as_array().into_iter().flatten().find(|f| f["function"] == "tcp_lp_pkts_acked").cloned();
    let proven = f.as_ref().is_some_and(|f| f["replacement_hits"].as_u64().unwrap_or(0) > 0 && f["old_body_hits"].as_u64() == Some(0));
    let printed = dmesg.lines().filter(|l| l.contains("TCP-LP:")).count();
    if !proven || printed == 0 {
        undo();
        return Err(format!(
            "verify (exit ok: {ok}): tcp_lp_pkts_acked: {f:?}; pr_debug lines from the copy: {printed}; last log lines: {}",
            dmesg.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ));
    }
    if let Some(f) = &f {
        println!(
            "kmend-guest: {LP_DEBUG}: tcp_lp_pkts_acked: copy hit {}, old body hit {}; the copy's pr_debug printed {printed} line(s)",
            f["replacement_hits"], f["old_body_hits"]
        );
    }
    std::fs::write("/proc/dynamic_debug/control", "func tcp_lp_pkts_acked -p").map_err(|e| format!("dynamic debug: disable: {e}"))?;
    revert(LP_DEBUG)?;
    check(refcnt()? == before, || format!("tcp_lp still held after the patch module unloaded: refcnt {:?}", refcnt()))?;
    rmmod(module)
}

/// A fix to module code that must be linked when its patch module loads
/// (its copy uses the module's `pr_debug`: `tests/patches/lp_debug`, module
/// tcp_lp), from a signed feed, on a machine where the module is not
/// loaded: the daemon's update holds it back (the module's code does not
/// run here) without failing, and status lists nothing pending; when the
/// module loads, the daemon hears the kernel's uevent and applies the fix
/// at once, though its interval is an hour. Before, such an update failed
/// (exit 4, nothing applied) on every cycle. (A fix whose references kmend.ko
/// resolves in each load of its module is applied at once and fixes the
/// module as it loads: `fix_in_a_module_follows_the_module_across_reloads`.)
fn daemon_applies_a_module_fix_as_the_module_loads() -> TestResult {
    use crate::agent_suite::{
        daemon_config,
        serve_feed,
        spawn,
        stop,
        wait_for, //
    };
    let module = "tcp_lp";
    check(!module_loaded(module), || format!("{module} loaded before the test"))?;
    let (mut server, addr) = serve_feed("/tmp/modfeed", &[&format!("{MODULE_DIR}/{LP_DEBUG}.kmpatch")])?;
    let mut daemon = None;
    let result = (|| {
        daemon_config("/tmp/modfeed", &addr, "1h")?;
        daemon = Some(spawn(&["daemon"])?);
        // The first cycle: done when status has an update outcome.
        let mut last = String::new();
        wait_for("the daemon's first update", Duration::from_secs(60), || {
            last = kmend(&["status", "--json"]).1;
            serde_json::from_str::<serde_json::Value>(&last).is_ok_and(|v| v["last_update"]["time"].is_string())
        })?;
        let v: serde_json::Value = serde_json::from_str(&last).map_err(|e| format!("status: {e}"))?;
        check(v["last_update"]["error"].is_null() && !module_loaded(LP_DEBUG), || format!("first update with {module} not loaded: {last}"))?;
        // Nothing pending: exit 1 ("no patch applied"), not 2 ("updates
        // available").
        let (code, out, _) = kmend(&["status", "--json"]);
        let pending_none = serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| v["pending"].as_array().is_some_and(Vec::is_empty));
        check(code == 1 && pending_none, || format!("status with the fix waiting for its module: exit {code}: {out}"))?;

        let loaded_at = std::time::Instant::now();
        insmod("tcp_lp.ko")?;
        wait_for("the daemon applying the module's fix", Duration::from_secs(60), || module_loaded(LP_DEBUG))?;
        println!(
            "kmend-guest: {LP_DEBUG}: held back while {module} was not loaded; applied by the daemon {:.1} s after it loaded (interval 1 h)",
            loaded_at.elapsed().as_secs_f64()
        );
        let (code, out, _) = kmend(&["status", "--json"]);
        check(code == 0 && out.contains(LP_DEBUG), || format!("status after the module loaded: exit {code}: {out}"))
    })();
    if let Some(d) = daemon.as_mut() {
        stop(d, libc::SIGTERM);
    }
    stop(&mut server, libc::SIGTERM);
    let _ = std::fs::remove_file("/etc/kmend/kmend.toml");
    if module_loaded(LP_DEBUG) {
        revert(LP_DEBUG)?;
    }
    if module_loaded(module) {
        rmmod(module)?;
    }
    result
}

/// One loopback TCP connection whose server side uses congestion control
/// `name` (set on the listening socket, `TCP_CONGESTION`), the server
/// sending 256 KiB that the client reads: its congestion control hears of
/// every ACK (`pkts_acked`).
fn congestion_connection(name: &str) -> TestResult {
    use std::{
        io::{
            Read as _,
            Write as _,
        },
        net::{
            TcpListener,
            TcpStream,
        },
        os::fd::AsRawFd as _,
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?;
    // SAFETY: a valid socket and a buffer of the given length.
    let r = unsafe { libc::setsockopt(listener.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_ptr().cast(), name.len() as u32) };
    check(r == 0, || format!("setsockopt(TCP_CONGESTION, {name}): {}", std::io::Error::last_os_error()))?;
    let mut client = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let (mut server, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let sender = std::thread::spawn(move || {
        let chunk = [0x5au8; 4096];
        for _ in 0..64 {
            server.write_all(&chunk)?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 64 * 4096];
    client.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    sender.join().map_err(|_| "sender panicked".to_owned())?.map_err(|e| format!("write: {e}"))
}

/// One loopback TCP connection with DCTCP as its congestion control:
/// `dctcp_init` runs as it is established.
fn dctcp_connection() -> TestResult {
    congestion_connection("dctcp")
}

/// A real fix to code built into a module (tcp_dctcp), whose copy refers
/// to the module's own symbols: kmend.ko resolves those in the module each
/// time it loads (kernel-module/module_relocs.rs). `kmend apply` with the
/// module out applies it (its function waits in kmend.ko); the module's
/// load is fixed as it comes, before its init runs, and the copy runs, the
/// old body not (eBPF); while the patch is applied the module may unload
/// (its function goes back to pending, the references are cleared) and
/// load again: fixed as it comes, the copy runs in the new load. Before,
/// `kmend apply` refused without the module ("load it first"), the
/// module's init ran unfixed, and its next load was refused while the
/// patch was applied (the module loader had resolved the copy's
/// references once, in the load that was gone).
fn fix_in_a_module_follows_the_module_across_reloads() -> TestResult {
    let module = "tcp_dctcp";
    check(!module_loaded(module), || format!("{module} loaded before the test"))?;
    let log = || String::from_utf8_lossy(&Command::new("/bin/dmesg").output().map(|o| o.stdout).unwrap_or_default()).into_owned();
    let resolution = "patch 'kp_stable_tcp_dctcp': references into module 'tcp_dctcp' resolved";
    let as_it_loads = "patch 'kp_stable_tcp_dctcp': 'tcp_dctcp:dctcp_init' applied as the module loads";
    let undo = || {
        let _ = revert(DCTCP);
        let _ = rmmod(module);
    };
    // Applied with the module out: its function waits in kmend.ko, and the
    // module is fixed as it loads, before its init runs.
    apply(&format!("{DCTCP}.kmpatch"))?;
    let before = log();
    if let Err(e) = insmod("tcp_dctcp.ko") {
        undo();
        return Err(format!("tcp_dctcp did not load under the applied patch: {e}"));
    }
    let first = log();
    if first.matches(as_it_loads).count() != before.matches(as_it_loads).count() + 1 {
        undo();
        return Err(format!("no '{as_it_loads}' in the kernel log after the first load"));
    }
    let (_, status, _) = kmend(&["status", "--json"]);
    let verified = verify_while(DCTCP, "2s", dctcp_connection);
    let (ok, v) = match verified {
        Ok(r) => r,
        Err(e) => {
            undo();
            return Err(e);
        }
    };
    let f = v["functions"].as_array().into_iter().flatten().find(|f| f["function"] == "dctcp_init").cloned();
    let proven = match &f {
        Some(f) => f["replacement_hits"].as_u64().unwrap_or(0) > 0 && f["old_body_hits"].as_u64() == Some(0),
        None => false,
    };
    if !proven || !status.contains("\"tcp_dctcp\"") {
        undo();
        return Err(format!("verify (exit ok: {ok}): dctcp_init: {f:?}; status: {status}"));
    }
    if let Some(f) = &f {
        println!("kmend-guest: {DCTCP}: applied before tcp_dctcp loaded, fixed as it loaded: dctcp_init: copy hit {}, old body hit {}", f["replacement_hits"], f["old_body_hits"]);
    }

    // The module goes: allowed (its function goes back to pending, the
    // patch's references into it are cleared); its next load is fixed as
    // it comes, before its init runs: kmend.ko resolves the patch's
    // references in the new load and redirects `dctcp_init` there.
    let before = log();
    rmmod(module)?;
    let reload = insmod("tcp_dctcp.ko");
    let dmesg = log();
    if let Err(e) = reload {
        undo();
        return Err(format!("tcp_dctcp did not load again under the applied patch: {e}: {}", dmesg.lines().rev().take(5).collect::<Vec<_>>().join(" | ")));
    }
    let (resolved, applied) = (dmesg.matches(resolution).count(), dmesg.matches(as_it_loads).count());
    if resolved != before.matches(resolution).count() + 1 || applied != before.matches(as_it_loads).count() + 1 {
        undo();
        return Err(format!("kernel log after the reload: '{resolution}' {resolved} time(s), '{as_it_loads}' {applied} time(s), one more of each expected"));
    }
    let again = verify_while(DCTCP, "2s", dctcp_connection);
    let f = again.as_ref().ok().and_then(|(_, v)| v["functions"].as_array()?.iter().find(|f| f["function"] == "dctcp_init").cloned());
    let proven = f.as_ref().is_some_and(|f| f["replacement_hits"].as_u64().unwrap_or(0) > 0 && f["old_body_hits"].as_u64() == Some(0));
    if !proven {
        undo();
        return Err(format!("after the reload: verify {again:?}"));
    }
    if let Some(f) = &f {
        println!("kmend-guest: {DCTCP}: after rmmod and insmod: dctcp_init: copy hit {}, old body hit {}", f["replacement_hits"], f["old_body_hits"]);
    }
    revert(DCTCP)?;
    rmmod(module)
}
