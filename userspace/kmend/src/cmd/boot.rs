//! `kmend boot`: early-boot re-apply of the cached patches
//! (kmend-boot.service), with the crash-loop guard.

use kmend::{
    agent::Agent,
    exit::Exit,
    paths::Paths, //
};

pub fn run(json: bool) -> anyhow::Result<Exit> {
    let agent = Agent::new(Paths::from_env(), "boot".into())?;
    let report = agent.boot()?;
    if json {
        super::print_json(&report)?;
    } else {
        if let Some(why) = &report.disabled {
            println!("boot re-apply disabled: {why}");
        }
        if let Some(core) = &report.core {
            println!("{core}");
        }
        for id in &report.reapplied {
            println!("patch '{id}' re-applied");
        }
        for id in &report.blocked {
            println!("patch '{id}' not re-applied: the machine went down while applying it; run `kmend update --force` to retry");
        }
        for (id, why) in &report.skipped {
            println!("patch '{id}' skipped: {why}");
        }
        for (id, why) in &report.failed {
            eprintln!("kmend: patch '{id}': re-apply failed: {why}");
        }
    }
    Ok(if report.failed.is_empty() { Exit::Ok } else { Exit::Failure })
}
