//! `kmend apply <file>`: load a patch module, which applies the patch.

use std::path::Path;

use anyhow::bail;
use kmend::{
    exit::Exit,
    modinfo,
    status::KernelStatus,
    sys, //
};
use serde_json::json;

pub fn run(file: &Path, json: bool) -> anyhow::Result<Exit> {
    let id = modinfo::module_name(file)?;
    // Fail early, with the right message, when the core is missing.
    sys::read_status()?;
    sys::load_module(file, &id)?;
    let status = KernelStatus::parse(&sys::read_status()?)?;
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
