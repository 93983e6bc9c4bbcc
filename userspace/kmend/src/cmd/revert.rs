//! `kmend revert <id>`: revert a patch, then unload its module.

use kmend::{
    exit::Exit,
    sys, //
};
use serde_json::json;

pub fn run(id: &str, json: bool) -> anyhow::Result<Exit> {
    sys::revert(id)?;
    // The patch is reverted; a module that stays loaded is harmless but
    // worth saying.
    let unloaded = match sys::unload_module(id) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("kmend: warning: {e}");
            false
        }
    };
    if json {
        super::print_json(&json!({ "reverted": id, "module_unloaded": unloaded }))?;
    } else {
        println!("patch '{id}' reverted{}", if unloaded { "" } else { " (module still loaded)" });
    }
    Ok(Exit::Ok)
}
