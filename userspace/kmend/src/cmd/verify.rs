//! `kmend verify <id>`: eBPF proof that the patch's code is what runs.

use std::time::Duration;

use anyhow::anyhow;
use kmend::{
    exit::Exit,
    status::KernelStatus,
    paths::Paths,
    sys::Kernel,
    verify::PatchProbes, //
};

pub fn run(id: &str, window: Duration, json: bool) -> anyhow::Result<Exit> {
    let status = KernelStatus::parse(&Kernel::from_env(&Paths::from_env()).read_status()?)?;
    let patch = status.patch(id).ok_or_else(|| anyhow!("patch '{id}': not applied"))?;
    let proof = PatchProbes::observe(patch, window)?;
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
