//! The command line (clap derive): one variant per verb.

use std::{
    path::PathBuf,
    time::Duration, //
};

use clap::{
    Parser,
    Subcommand, //
};
use kmend::exit::EXIT_CODES_HELP;

/// kmend: live patches for the running Linux kernel, with eBPF proof.
#[derive(Debug, Parser)]
#[command(name = "kmend", version, after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply a patch module file (its module name is the patch id).
    Apply {
        /// Path of the patch module (`.ko`).
        file: PathBuf,
    },
    /// Revert an applied patch and unload its module.
    Revert {
        /// Patch id, as `kmend status` shows it.
        id: String,
    },
    /// Show the applied patches and their functions.
    Status,
    /// Prove with eBPF that a patch's replacements run and the old code does not.
    Verify {
        /// Patch id, as `kmend status` shows it.
        id: String,
        /// How long to watch the patched functions, e.g. `2s`, `500ms`.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        window: Duration,
    },
}

/// Parses `500ms`, `2s`, `5m`, `12h`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    kmend::duration::parse(s).map_err(|e| e.to_string())
}
