//! `kmend completions <shell>` and `kmend manpages <dir>`: shell completion
//! scripts and man pages, generated from the CLI definition (cli.rs) so they
//! cannot drift from it. The Debian package ships both (`cargo xtask package`).

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;
use kmend::exit::Exit;

use crate::cli::Args;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<Exit> {
    let mut cmd = Args::command();
    clap_complete::generate(shell, &mut cmd, "kmend", &mut std::io::stdout());
    Ok(Exit::Ok)
}

/// Writes `kmend.1` and one page per verb (`kmend-status.1`, ...) into `dir`.
pub fn manpages(dir: &Path, json: bool) -> anyhow::Result<Exit> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    clap_mangen::generate_to(Args::command(), dir).with_context(|| format!("write man pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".1"))
        .collect();
    pages.sort();
    if json {
        super::print_json(&serde_json::json!({ "dir": dir, "pages": pages }))?;
    } else {
        println!("{} man pages in {}", pages.len(), dir.display());
    }
    Ok(Exit::Ok)
}
