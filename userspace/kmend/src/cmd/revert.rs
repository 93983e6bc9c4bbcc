//! `kmend revert <id>` and `kmend unload`: revert patches and unload their
//! modules.

use kmend::exit::Exit;
use serde_json::json;

pub fn run(id: &str, json: bool) -> anyhow::Result<Exit> {
    kmend::sys::check_id(id)?;
    let agent = super::cli_agent()?;
    let unloaded = agent.revert(id)?;
    if json {
        super::print_json(&json!({ "reverted": id, "module_unloaded": unloaded }))?;
    } else {
        println!("patch '{id}' reverted{}", if unloaded { "" } else { " (module still loaded)" });
    }
    Ok(Exit::Ok)
}

pub fn unload(json: bool) -> anyhow::Result<Exit> {
    let agent = super::cli_agent()?;
    let reverted = agent.unload_all()?;
    if json {
        super::print_json(&json!({ "reverted": reverted }))?;
    } else if reverted.is_empty() {
        println!("no patches applied");
    } else {
        for id in &reverted {
            println!("patch '{id}' reverted");
        }
    }
    Ok(Exit::Ok)
}
