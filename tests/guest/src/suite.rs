//! The end-to-end suite: each test is one behaviour the skeleton proves.

use std::{
    path::Path,
    time::Duration, //
};

use crate::harness::{
    Test,
    TestResult,
    apply,
    check,
    insmod,
    kmend,
    module_loaded,
    read,
    revert,
    rmmod,
    verify_while, //
};

/// What the sample patch makes `/proc/cmdline` print.
const PATCHED_CMDLINE: &str = "kmend: this kernel is live patched\n";
const SAMPLE: &str = "kmend_sample";

pub fn run() {
    let mut tests = vec![
        Test { name: "core_module_loads_and_unloads", run: core_module_loads_and_unloads },
        Test { name: "apply_redirects_cmdline_proc_show", run: apply_redirects_cmdline_proc_show },
        Test { name: "status_lists_patch_and_functions", run: status_lists_patch_and_functions },
        Test { name: "ebpf_proves_replacement_runs", run: ebpf_proves_replacement_runs },
        Test { name: "revert_restores_original", run: revert_restores_original },
        Test { name: "ebpf_old_body_probe_counts_when_unpatched", run: ebpf_old_body_probe_counts_when_unpatched },
        Test { name: "control_rejects_bad_input", run: control_rejects_bad_input },
    ];
    tests.extend(crate::core_suite::tests());
    tests.extend(crate::switch_suite::tests());
    tests.extend(crate::fentry_suite::tests());
    tests.extend(crate::fix_suite::tests());
    tests.extend(crate::signing_suite::first_boot_tests());
    tests.extend(crate::agent_suite::first_boot_tests());
    crate::harness::run_all(&tests);
}

/// The second boot of `cargo xtask vm-test`, on the first boot's disk.
pub fn run_second_boot() {
    match crate::agent_suite::second_boot_setup() {
        Ok(up) => crate::NETWORK_WAS_UP.store(up, std::sync::atomic::Ordering::Relaxed),
        Err(e) => println!("kmend-guest: second boot setup failed: {e}"),
    }
    let mut tests = crate::agent_suite::second_boot_tests();
    // Last: lockdown cannot be lowered again.
    tests.extend(crate::signing_suite::second_boot_tests());
    crate::harness::run_all(&tests);
}

fn core_module_loads_and_unloads() -> TestResult {
    insmod("kmend.ko")?;
    check(Path::new("/dev/kmend").exists(), || "/dev/kmend missing after insmod".into())?;
    let (code, out, err) = kmend(&["status", "--json"]);
    check(code == 1, || format!("status with nothing applied: exit {code} (want 1), {out} {err}"))?;
    check(out.contains("\"patches\":[]"), || format!("status not empty: {out}"))?;
    rmmod("kmend")?;
    check(!module_loaded("kmend"), || "kmend still in /proc/modules".into())?;
    check(!Path::new("/dev/kmend").exists(), || "/dev/kmend left behind".into())?;
    // Without kmend.ko: nothing applied, said plainly (a machine that gets
    // kmend.ko from its feed's core module at the first update).
    let (code, out, err) = kmend(&["status"]);
    check(code == 1 && out.contains("kmend.ko is not loaded"), || format!("status without core: exit {code}, {out} {err}"))?;
    insmod("kmend.ko")
}

fn apply_redirects_cmdline_proc_show() -> TestResult {
    let before = read("/proc/cmdline")?;
    check(before != PATCHED_CMDLINE, || "cmdline already patched".into())?;
    apply(&format!("{SAMPLE}.ko"))?;
    let after = read("/proc/cmdline")?;
    check(after == PATCHED_CMDLINE, || format!("/proc/cmdline after apply: {after:?}"))
}

fn status_lists_patch_and_functions() -> TestResult {
    let (code, out, err) = kmend(&["status", "--json"]);
    check(code == 0, || format!("status: exit {code}: {err}"))?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("status json: {e}: {out}"))?;
    let patch = &v["patches"][0];
    check(patch["id"] == SAMPLE, || format!("first patch: {patch}"))?;
    let f = &patch["functions"][0];
    check(f["name"] == "cmdline_proc_show" && f["state"] == "active", || format!("function: {f}"))?;
    check(
        f["replacement"].as_str().is_some_and(|r| r.starts_with("kmend_sample_cmdline_proc_show+0x0/")),
        || format!("replacement: {f}"),
    )
}

fn ebpf_proves_replacement_runs() -> TestResult {
    // Exercise the patched function while the probes watch.
    let (ok, v) = verify_while(SAMPLE, "4s", || {
        read("/proc/cmdline")?;
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    })?;
    check(ok, || format!("verify failed: {v}"))?;
    let f = &v["functions"][0];
    check(v["proven"] == true, || format!("not proven: {v}"))?;
    check(f["replacement_hits"].as_u64().unwrap_or(0) > 0, || format!("replacement not hit: {f}"))?;
    check(f["old_body_hits"].as_u64() == Some(0), || format!("old body ran: {f}"))
}

fn revert_restores_original() -> TestResult {
    revert(SAMPLE)?;
    let after = read("/proc/cmdline")?;
    check(after != PATCHED_CMDLINE && after.contains("kmend_guest="), || format!("/proc/cmdline after revert: {after:?}"))?;
    let (code, out, _) = kmend(&["status", "--json"]);
    check(code == 1 && out.contains("\"patches\":[]"), || format!("status after revert: exit {code}: {out}"))?;
    rmmod("kmend")?;
    insmod("kmend.ko")
}

fn control_rejects_bad_input() -> TestResult {
    let (code, _, err) = kmend(&["revert", "no_such_patch"]);
    check(code == 4 && err.contains("no_such_patch"), || format!("revert unknown: exit {code}: {err}"))?;
    let (code, _, err) = kmend(&["revert", "bad id!"]);
    check(code == 4 && err.contains("invalid patch id"), || format!("revert bad id: exit {code}: {err}"))?;
    let (code, _, err) = kmend(&["apply", "/proc/cmdline"]);
    check(code == 4 && err.contains("not a kernel module"), || format!("apply non-module: exit {code}: {err}"))?;
    check(module_loaded("kmend"), || "kmend unloaded by bad input".into())
}

/// The control for `ebpf_proves_replacement_runs`: the same old-body probe
/// point does count once the original runs again, so "0 hits" there meant
/// something.
fn ebpf_old_body_probe_counts_when_unpatched() -> TestResult {
    let symbols = kmend::kallsyms::read().map_err(|e| format!("{e:#}"))?;
    let (body, offset) =
        kmend::kallsyms::body_address(&symbols, "vmlinux", "cmdline_proc_show", 0).map_err(|e| format!("{e:#}"))?;
    let counter =
        kmend::verify::HitCounter::attach(body, format!("cmdline_proc_show+{offset:#x}")).map_err(|e| format!("{e:#}"))?;
    for _ in 0..5 {
        let _ = read("/proc/cmdline")?;
    }
    let hits = counter.hits().map_err(|e| format!("{e:#}"))?;
    check(hits >= 5, || format!("old body probe at {}: {hits} hits after 5 reads (want >= 5)", counter.point))
}
