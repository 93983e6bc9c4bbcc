//! `kmend verify <id>`: eBPF proof that the patch's code is what runs.

use std::time::Duration;

use anyhow::anyhow;
use kmend::{
    exit::Exit,
    status::KernelStatus,
    paths::Paths,
    sys::Kernel,
    verify, //
};

pub fn run(id: &str, window: Duration, json: bool) -> anyhow::Result<Exit> {
    let kernel = Kernel::from_env(&Paths::from_env());
    let status = KernelStatus::parse(&kernel.read_status()?)?;
    let patch = status.patch(id).ok_or_else(|| anyhow!("patch '{id}': not applied"))?;
    let proof = verify::prove(&kernel, patch, window)?;
    // Kept for `kmend metrics` (kmend_patch_verified): a monitoring system
    // sees the last proof of each patch.
    if let Err(e) = super::cli_agent().and_then(|a| Ok(a.record_verification(proof.record())?)) {
        tracing::warn!("verification result not recorded: {e:#}");
    }
    if json {
        super::print_json(&proof)?;
    } else {
        for f in &proof.functions {
            let verdict = match (f.replacement_hits, f.old_body_hits) {
                (_, old) if old > 0 => "NOT PROVEN: old body ran",
                (0, _) => "not exercised during the window",
                _ => "proven",
            };
            println!("{}: replacement {} hits, old body {} hits: {verdict}", f.function, f.replacement_hits, f.old_body_hits);
        }
        println!("patch '{}': {}", proof.patch, if proof.proven { "verified" } else { "not verified" });
    }
    Ok(if proof.proven { Exit::Ok } else { Exit::NotApplied })
}

/// The daemon's verification after an apply: each applied patch with no
/// proof since it was applied is verified (for `window`) and the result
/// recorded; a failed proof is tried again next cycle.
pub fn unproven(agent: &kmend::agent::Agent, window: Duration) {
    let Ok(state) = kmend::state::State::load(&agent.paths) else { return };
    let status = match agent.kernel.status() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("verification skipped: {e}"),
    };
    for p in &state.applied {
        let proven = state.verifications.iter().any(|v| v.id == p.id && v.proven && v.time >= p.applied_at);
        let Some(patch) = status.patch(&p.id).filter(|_| !proven) else { continue };
        match verify::prove(&agent.kernel, patch, window) {
            Ok(proof) => {
                let r = proof.record();
                if proof.proven {
                    tracing::info!("patch '{}' verified: replacement {} hits, old body 0", p.id, r.replacement_hits);
                } else {
                    tracing::warn!(
                        "patch '{}' not verified: replacement {} hits, old body {} hits",
                        p.id,
                        r.replacement_hits,
                        r.old_body_hits
                    );
                }
                if let Err(e) = agent.record_verification(r) {
                    tracing::warn!("verification of '{}' not recorded: {e}", p.id);
                }
            }
            Err(e) => tracing::warn!("patch '{}': kmend verify could not run: {e:#}", p.id),
        }
    }
}
