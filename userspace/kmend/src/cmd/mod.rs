//! One module per verb; [`run`] dispatches.

use kmend::{
    agent::Agent,
    exit::Exit,
    journal,
    paths::Paths, //
};

use crate::cli::{
    Args,
    Command, //
};

mod apply;
mod artifact;
mod boot;
mod daemon;
mod doctor;
mod feed;
mod fleet;
mod inspect;
mod manual;
mod metrics;
mod report;
mod revert;
mod status;
mod update;
mod verify;

/// Runs one command; `Ok` carries the exit code of a command that completed.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let json = args.json;
    match args.command {
        Command::Status => status::run(json),
        Command::Check { force } => update::check(force, json),
        Command::Update { force } => update::update(force, json),
        Command::Apply { file } => apply::run(&file, json),
        Command::Revert { id } => revert::run(&id, json),
        Command::Unload => revert::unload(json),
        Command::List => inspect::list(json),
        Command::Info { id } => inspect::info(&id, json),
        Command::Uname { all, .. } => inspect::uname(all, json),
        Command::Cves => inspect::cves(json),
        Command::Metrics { textfile } => metrics::run(textfile.as_deref(), json),
        Command::Report { verify: true, .. } => report::verify(json),
        Command::Report { format, .. } => report::run(format, json),
        Command::Doctor { output } => doctor::run(output.as_deref(), json),
        Command::Daemon => daemon::run(json),
        Command::Boot => boot::run(json),
        Command::Verify { id, window } => verify::run(&id, window, json),
        Command::Register { key, server, hostname } => fleet::register(&key, &server, hostname.as_deref(), json),
        Command::Checkin => fleet::checkin(json),
        Command::Completions { shell } => manual::completions(shell),
        Command::Manpages { dir } => manual::manpages(&dir, json),
        Command::Artifact(c) => artifact::run(c, json),
        Command::Feed(c) => feed::run(c, json),
    }
}

/// The agent for a command-line user.
pub fn cli_agent() -> anyhow::Result<Agent> {
    Ok(Agent::new(Paths::from_env(), journal::cli_actor())?)
}

/// Prints a value as one line of JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
