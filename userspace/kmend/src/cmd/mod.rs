//! One module per verb; [`run`] dispatches.

use kmend::exit::Exit;

use crate::cli::{
    Args,
    Command, //
};

mod apply;
mod revert;
mod status;
mod verify;

/// Runs one command; `Ok` carries the exit code of a command that completed.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    match args.command {
        Command::Apply { file } => apply::run(&file, args.json),
        Command::Revert { id } => revert::run(&id, args.json),
        Command::Status => status::run(args.json),
        Command::Verify { id, window } => verify::run(&id, window, args.json),
    }
}

/// Prints a value as one line of JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
