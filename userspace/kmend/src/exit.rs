//! Exit codes of the `kmend` command, in one place (listed in `--help`).

use std::process::ExitCode;

/// Every exit code kmend uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success; for `status`: patches applied and up to date; for `verify`: proven.
    Ok = 0,
    /// `status`: nothing applied. `verify`: not proven (old body ran, or replacement idle).
    NotApplied = 1,
    /// `status`: updates available that are not applied.
    UpdatesAvailable = 2,
    /// `status`, `check`, `update`: the feed does not support this kernel.
    Unsupported = 3,
    /// The operation failed (the message says what and why).
    Failure = 4,
    /// Bad command line.
    Usage = 64,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Text for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success (status: patches applied, up to date; verify: proven)
  1   status: no patch applied; check: newest patch not applied; verify: not proven
  2   status: updates available but not applied
  3   status, check, update: kernel not supported by the feed
  4   the operation failed (see the message)
  64  bad command line";
