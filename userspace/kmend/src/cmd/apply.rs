//! `kmend apply <file>`: apply a `.kmpatch` artifact (checked against the
//! running kernel first) or load a bare patch module, which applies it.

use std::{
    fs,
    io::Read as _,
    path::Path, //
};

use anyhow::{
    Context as _,
    bail, //
};
use kmend::{
    exit::Exit,
    modinfo,
    status::KernelStatus, //
};
use serde_json::json;

/// A ustar archive has "ustar" at offset 257.
fn is_artifact(file: &Path) -> bool {
    let mut head = [0u8; 262];
    fs::File::open(file).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[257..262] == b"ustar"
}

pub fn run(file: &Path, json: bool) -> anyhow::Result<Exit> {
    if is_artifact(file) {
        return run_artifact(file, json);
    }
    let id = modinfo::module_name(file)?;
    let agent = super::cli_agent()?;
    // Fail early, with the right message, when the core is missing.
    agent.kernel.read_status()?;
    agent.apply_module(file, &id)?;
    let status = KernelStatus::parse(&agent.kernel.read_status()?)?;
    let Some(patch) = status.patch(&id) else {
        bail!("patch '{id}': module loaded but kmend does not list it: is it a kmend patch module?");
    };
    if json {
        super::print_json(&json!({ "applied": patch }))?;
    } else {
        println!("patch '{id}' applied: {} function(s)", patch.functions.len());
        for f in &patch.functions {
            println!("  {}:{} -> {}", f.object, f.name, f.replacement);
        }
    }
    Ok(Exit::Ok)
}

fn run_artifact(file: &Path, json: bool) -> anyhow::Result<Exit> {
    let agent = super::cli_agent()?;
    let (record, superseded) = agent.apply_artifact(file)?;
    let status = agent.kernel.status()?;
    let patch = status.patch(&record.id).with_context(|| format!("patch '{}': applied but kmend does not list it", record.id))?;
    if json {
        super::print_json(&json!({ "applied": patch, "artifact": record, "superseded": superseded }))?;
    } else {
        println!("patch '{}' version {} applied: {} function(s)", record.id, record.version, patch.functions.len());
        for f in &patch.functions {
            println!("  {}:{} -> {}", f.object, f.name, f.replacement);
        }
        for id in superseded {
            println!("patch '{id}' reverted: superseded by cumulative patch '{}'", record.id);
        }
    }
    Ok(Exit::Ok)
}
