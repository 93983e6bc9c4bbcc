//! `try` mode (`cargo xtask vm-test --patch <dir>`): a patch author's
//! patches, tried on a fresh kernel. The core loads; each patch of
//! `/lib/kmend/try/order` is applied in turn and shown active; then each is
//! watched by `kmend verify` while its trigger (patch.toml's `trigger`, run
//! by `sh -c`) drives the patched code; all are reverted newest first. The
//! host fails the run on any kernel warning, as for the suite.
//!
//! With a trigger, every function must be proven (its replacement hit, its
//! old body never). Without one, nothing may run the old bodies, and the
//! replacements' hits are only reported: what calls them is up to the
//! system.

use std::{
    fs,
    process::Command,
    time::Duration, //
};

use crate::harness::{
    TestResult,
    check,
    insmod,
    kmend,
    report,
    revert,
    verdict,
    verify_while, //
};

/// Where xtask puts the tried patches (xtask/src/build.rs `TRY_DIR`).
const TRY_DIR: &str = "/lib/kmend/try";

pub fn run() {
    let ids: Vec<String> = match fs::read_to_string(format!("{TRY_DIR}/order")) {
        Ok(order) => order.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect(),
        Err(e) => {
            println!("kmend-guest: no patches to try ({TRY_DIR}/order: {e})");
            Vec::new()
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let mut tally = |name: &str, result: TestResult| {
        if report(name, result) { passed += 1 } else { failed += 1 }
    };
    tally("core_module_loads", insmod("kmend.ko"));
    let mut applied = Vec::new();
    for id in &ids {
        let result = apply(id);
        if result.is_ok() {
            applied.push(id.clone());
        }
        tally(&format!("apply {id}"), result);
    }
    for id in &applied {
        tally(&format!("verify {id}"), verify(id));
    }
    for id in applied.iter().rev() {
        tally(&format!("revert {id}"), revert(id));
    }
    verdict(passed, failed);
}

/// `kmend apply`, then every function of the patch active in `kmend status`.
fn apply(id: &str) -> TestResult {
    let (code, out, err) = kmend(&["apply", &format!("{TRY_DIR}/{id}.kmpatch")]);
    check(code == 0, || format!("kmend apply: exit {code}: {out} {err}"))?;
    print!("{out}");
    let (_, status, _) = kmend(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).map_err(|e| format!("status json: {e}: {status}"))?;
    let patch = v["patches"].as_array().into_iter().flatten().find(|p| p["id"] == id);
    let patch = patch.ok_or_else(|| format!("{id} not in kmend status: {status}"))?;
    for f in patch["functions"].as_array().into_iter().flatten() {
        println!("kmend-guest: {id}: {} {} -> {}", f["name"], f["state"], f["replacement"]);
        check(f["state"] == "active", || format!("{id}: {f}"))?;
    }
    Ok(())
}

/// `kmend verify` while the trigger runs (or 3 s of whatever the system does).
fn verify(id: &str) -> TestResult {
    let trigger = fs::read_to_string(format!("{TRY_DIR}/{id}.trigger")).ok();
    let (ok, v) = verify_while(id, "3s", || {
        if let Some(cmd) = &trigger {
            let status = Command::new("/bin/sh").args(["-c", cmd]).status().map_err(|e| format!("sh -c {cmd:?}: {e}"))?;
            check(status.success(), || format!("trigger `{cmd}` failed: {status}"))?;
        }
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    })?;
    for f in v["functions"].as_array().into_iter().flatten() {
        println!(
            "kmend-guest: {id}: {}: replacement {} hit {}, old body {} hit {}",
            f["function"], f["replacement"], f["replacement_hits"], f["old_body"], f["old_body_hits"]
        );
        check(f["old_body_hits"].as_u64() == Some(0), || format!("{id}: the old body ran: {f}"))?;
    }
    match trigger {
        Some(cmd) => check(ok, || format!("{id}: not proven while `{cmd}` ran: {v}")),
        None => {
            println!("kmend-guest: {id}: no trigger in patch.toml: old bodies checked, replacement hits not required");
            Ok(())
        }
    }
}
