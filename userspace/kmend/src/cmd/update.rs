//! `kmend check` and `kmend update`: ask the feed, then apply.

use kmend::{
    agent::{
        AgentError,
        CheckReport,
    },
    exit::Exit,
    policy::{
        HeldBack,
        PolicyError, //
    },
};

/// The job's report, or exit 3 (with the message) when the feed does not
/// support this kernel: an answer, not a failure.
fn or_unsupported<T>(result: Result<T, AgentError>) -> anyhow::Result<Result<T, Exit>> {
    match result {
        Ok(r) => Ok(Ok(r)),
        Err(e @ (AgentError::Policy(PolicyError::Unsupported { .. }) | AgentError::NoCore { .. })) => {
            eprintln!("kmend: {e}");
            Ok(Err(Exit::Unsupported))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_check(r: &CheckReport) {
    println!("kernel: {}", r.kernel);
    println!("feed: {} (channel {})", r.feed, r.channel);
    for p in &r.plan.apply {
        println!("  available: {} (released {}{})", p.label(), p.released, if p.cves.is_empty() { String::new() } else { format!(", fixes {}", p.cves.join(", ")) });
    }
    for (p, why) in &r.plan.held_back {
        let why = match why {
            HeldBack::Delay { eligible_at } => format!("delayed until {eligible_at}"),
            HeldBack::Sticky => "after the sticky pin".into(),
            HeldBack::Blocked => "blocked: the machine went down while applying it (use --force)".into(),
            HeldBack::Superseded => "superseded by a cumulative patch".into(),
            HeldBack::ModuleNotLoaded { module } => format!("fixes module {module}, which is not loaded: applied by the first update after it loads"),
        };
        println!("  held back: {}: {why}", p.label());
    }
}

pub fn check(force: bool, json: bool) -> anyhow::Result<Exit> {
    let agent = super::cli_agent()?;
    let report = match or_unsupported(agent.check(force))? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let up_to_date = report.plan.up_to_date();
    if json {
        super::print_json(&serde_json::json!({ "up_to_date": up_to_date, "check": report }))?;
    } else {
        print_check(&report);
        println!("{}", if up_to_date { "the newest eligible patches are applied" } else { "updates available: run `kmend update`" });
    }
    Ok(if up_to_date { Exit::Ok } else { Exit::NotApplied })
}

pub fn update(force: bool, json: bool) -> anyhow::Result<Exit> {
    let agent = super::cli_agent()?;
    let report = match or_unsupported(agent.update(force))? {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if json {
        super::print_json(&report)?;
    } else {
        print_check(&report.check);
        for p in &report.applied {
            println!("patch '{}' version {} applied", p.id, p.version);
        }
        for id in &report.superseded {
            println!("patch '{id}' reverted: superseded by a cumulative patch");
        }
        if report.applied.is_empty() {
            println!("kernel is up to date: nothing to apply");
        } else {
            println!("kernel is up to date: {} patch(es) applied", report.applied.len());
        }
    }
    Ok(Exit::Ok)
}
