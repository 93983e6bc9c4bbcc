//! `kmend`: apply, revert, inspect and prove live patches.

use std::process::ExitCode;

use clap::Parser as _;
use kmend::exit::Exit;

mod cli;
mod cmd;

fn main() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { Exit::Usage } else { Exit::Ok };
            let _ = e.print();
            return code.into();
        }
    };
    match cmd::run(args) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("kmend: {e:#}");
            Exit::Failure.into()
        }
    }
}
