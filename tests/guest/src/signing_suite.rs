//! Module signatures (issue #10, finding 7): every module kmend ships is
//! signed for the kernel, and a kernel that insists on signatures loads
//! kmend's modules only when it trusts the feed's key.
//!
//! The debug kernel trusts the test feed's module-signing certificate and
//! boots with `module.sig_enforce=1` (as a Secure Boot machine that enrolled
//! it); Debian's stock kernel trusts only Debian's keys and does not enforce
//! by default. The last test of the second boot raises lockdown to
//! `integrity`, as Secure Boot does, on both kernels.

use std::{
    fs,
    path::Path,
    time::Duration,
};

use kmend::module_signature::{
    self,
    Policy, //
};

use crate::harness::{
    MODULE_DIR,
    Test,
    TestResult,
    check,
    kmend,
    module_loaded,
    must,
    read,
    revert,
    verify_while, //
};

/// A patch that no other test of its boot holds applied.
const PATCH: &str = "kmend_sample";
/// What the signature trailer ends with.
const MARKER: &[u8] = b"~Module signature appended~\n";

pub fn first_boot_tests() -> Vec<Test> {
    vec![Test { name: "unsigned_or_altered_module_is_refused_where_signatures_are_enforced", run: unsigned_or_altered_refused }]
}

pub fn second_boot_tests() -> Vec<Test> {
    vec![Test { name: "under_lockdown_only_modules_signed_by_a_trusted_key_load", run: under_lockdown }]
}

fn policy() -> Policy {
    Policy::read(&kmend::paths::Paths::from_env())
}

/// The shipped module of [`PATCH`], which must carry a signature.
fn shipped() -> Result<Vec<u8>, String> {
    let path = format!("{MODULE_DIR}/{PATCH}.ko");
    let ko = fs::read(&path).map_err(|e| format!("read {path}: {e}"))?;
    check(module_signature::appended(&ko).is_some(), || format!("{path} carries no signature"))?;
    Ok(ko)
}

/// Module image `ko` with its signature trailer cut off.
fn without_signature(ko: &[u8]) -> &[u8] {
    let sig = module_signature::appended(ko).map_or(0, |s| s.len as usize);
    &ko[..ko.len() - MARKER.len() - 12 - sig]
}

/// Writes `ko` as `/tmp/<dir>/kmend_sample.ko` (a bare module keeps its
/// name) and asks kmend to apply it; returns (exit, stdout, stderr).
fn apply_copy(dir: &str, ko: &[u8]) -> Result<(i32, String, String), String> {
    let dir = Path::new("/tmp").join(dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{PATCH}.ko"));
    fs::write(&path, ko).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(kmend(&["apply", &path.display().to_string()]))
}

fn refused(what: &str, (code, out, err): (i32, String, String), because: &str) -> TestResult {
    check(code == 4, || format!("{what}: exit {code} (want 4): {out} {err}"))?;
    check(err.contains(because) && err.contains("mokutil"), || format!("{what}: the message does not say why ({because:?}) and what to do: {err}"))?;
    check(!module_loaded(PATCH), || format!("{what}: {PATCH} is loaded"))
}

fn unsigned_or_altered_refused() -> TestResult {
    let ko = shipped()?;
    let p = policy();
    let (code, out, _) = kmend(&["doctor"]);
    check(code == 0 && out.contains(&p.describe()), || format!("doctor does not report {:?}: {out}", p.describe()))?;
    let (_, json, _) = kmend(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("status --json: {e}: {json}"))?;
    check(v["module_signatures"]["enforced"] == serde_json::json!(p.enforced), || format!("status --json module_signatures: {json}"))?;
    if p.enforced != Some(true) {
        // Debian's stock kernel: nothing enforced, as Debian ships it (the
        // shipped, kmend-signed modules load with a taint); the lockdown
        // test of the second boot shows what happens when it insists.
        return check(p.enforced == Some(false), || format!("sig_enforce unreadable: {p:?}"));
    }
    refused("unsigned copy", apply_copy("unsigned", without_signature(&ko))?, "not signed by a key the kernel trusts")?;
    // One bit of the signature flipped: signed, but not these bytes.
    let mut altered = ko.clone();
    let at = ko.len() - MARKER.len() - 12 - 1;
    altered[at] ^= 1;
    refused("altered copy", apply_copy("altered", &altered)?, "does not match its contents")?;
    let log = String::from_utf8_lossy(&crate::harness::sh("/bin/dmesg", &[]).stdout).into_owned();
    check(log.contains("Loading of unsigned module is rejected"), || "the kernel did not log the unsigned module's refusal".into())
}

fn under_lockdown() -> TestResult {
    if !Path::new("/sys/kernel/security/lockdown").exists() {
        must("/bin/mount", &["-t", "securityfs", "securityfs", "/sys/kernel/security"])?;
    }
    fs::write("/sys/kernel/security/lockdown", "integrity").map_err(|e| format!("raise lockdown: {e}"))?;
    let p = policy();
    check(p.lockdown.as_deref() == Some("integrity"), || format!("lockdown after raising it: {p:?}"))?;
    let (_, out, _) = kmend(&["doctor"]);
    check(out.contains("lockdown: integrity"), || format!("doctor: {out}"))?;
    // The patch kmend boot re-applied is still proven by eBPF: integrity
    // lockdown leaves kprobes and BPF reads alone.
    let (proven, report) = verify_while(PATCH, "4s", || {
        read("/proc/cmdline")?;
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    })?;
    check(proven, || format!("verify under lockdown: {report}"))?;
    revert(PATCH)?;
    let artifact = format!("{MODULE_DIR}/{PATCH}.kmpatch");
    let (code, out, err) = kmend(&["apply", &artifact]);
    match p.enforced {
        // The debug kernel trusts the feed's key: the signed module loads.
        Some(true) => {
            check(code == 0 && module_loaded(PATCH), || format!("signed patch under lockdown: exit {code}: {out} {err}"))?;
            revert(PATCH)?;
            refused("unsigned copy under lockdown", apply_copy("unsigned-lockdown", without_signature(&shipped()?))?, "not signed by a key")
        }
        // Debian's kernel does not trust it: refused, and kmend says why.
        _ => {
            refused("signed by a key the stock kernel does not trust", (code, out, err), "locked down")?;
            let log = String::from_utf8_lossy(&crate::harness::sh("/bin/dmesg", &[]).stdout).into_owned();
            check(log.contains("Lockdown:"), || "the kernel did not log the lockdown refusal".into())
        }
    }
}
