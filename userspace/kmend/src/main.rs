//! `kmend`: apply, revert, inspect and prove live patches; the agent that
//! keeps a machine patched from a signed feed.

use std::process::ExitCode;

use clap::Parser as _;
use kmend::exit::Exit;

mod cli;
mod cmd;

/// One line: the error, then each cause that the text above does not
/// already say (library errors often quote their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
    }
    line
}

/// Logs go to stderr; `KMEND_LOG` (e.g. `debug`) overrides the level,
/// which is `info` for the daemon and boot, `warn` otherwise.
fn init_logging(command: &cli::Command) {
    let default = match command {
        cli::Command::Daemon | cli::Command::Boot => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KMEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}

fn main() -> ExitCode {
    // Die quietly of SIGPIPE, as every Unix filter does, when stdout is a
    // pipe that closed (`kmend check | head -1`), instead of panicking in
    // println!.
    // SAFETY: setting a signal's disposition to SIG_DFL before any other
    // thread exists; no handler runs our code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { Exit::Usage } else { Exit::Ok };
            let _ = e.print();
            return code.into();
        }
    };
    init_logging(&args.command);
    let json = args.json;
    match cmd::run(args) {
        Ok(code) => code.into(),
        Err(e) => {
            // Messages may quote a feed URL: never its credentials.
            let message = kmend::proxy::redact_text(&one_line(&e));
            eprintln!("kmend: {message}");
            if json {
                // A script reading stdout gets an answer too.
                let code = Exit::Failure;
                println!("{}", serde_json::json!({ "error": message, "exit_code": code as u8 }));
            }
            Exit::Failure.into()
        }
    }
}
