//! `kmend verify <id>`: eBPF proof that the patch's code is what runs.

use std::time::Duration;

use anyhow::anyhow;
use kmend::{
    exit::Exit,
    status::KernelStatus,
    paths::Paths,
    state::Verification,
    sys::Kernel,
    timestamp::Timestamp,
    verify::PatchProbes, //
};

pub fn run(id: &str, window: Duration, json: bool) -> anyhow::Result<Exit> {
    let status = KernelStatus::parse(&Kernel::from_env(&Paths::from_env()).read_status()?)?;
    let patch = status.patch(id).ok_or_else(|| anyhow!("patch '{id}': not applied"))?;
    let proof = PatchProbes::observe(patch, window)?;
    // Kept for `kmend metrics` (kmend_patch_verified): a monitoring system
    // sees the last proof of each patch.
    let record = Verification {
        id: proof.patch.clone(),
        time: Timestamp::now(),
        proven: proof.proven,
        replacement_hits: proof.functions.iter().map(|f| f.replacement_hits).sum(),
        old_body_hits: proof.functions.iter().map(|f| f.old_body_hits).sum(),
    };
    if let Err(e) = super::cli_agent().and_then(|a| Ok(a.record_verification(record)?)) {
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
