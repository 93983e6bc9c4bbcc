//! `kmend metrics`: the status as Prometheus metrics, on stdout or, with
//! `--textfile`, written atomically for node_exporter's textfile
//! collector. No network.

use std::path::Path;

use anyhow::Context as _;
use kmend::{
    exit::Exit,
    fsutil,
    metrics,
    paths::Paths,
    report::Overview,
    sys::Kernel,
    timestamp::Timestamp, //
};

/// The metrics text of this machine now.
pub fn text(paths: &Paths) -> anyhow::Result<String> {
    let o = Overview::gather(paths, &Kernel::from_env(paths))?;
    Ok(metrics::render(&o, Timestamp::now()))
}

/// Writes `text` to `file` atomically (a scrape never sees half a file).
/// The directory must exist: a mistyped path is an error, not a new
/// directory no collector reads.
pub fn write(file: &Path, text: &str) -> anyhow::Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    anyhow::ensure!(dir.is_dir(), "'{}': write failed: its directory '{}' does not exist", file.display(), dir.display());
    fsutil::write_atomic(file, text.as_bytes()).with_context(|| format!("'{}': write failed", file.display()))
}

pub fn run(textfile: Option<&Path>, json: bool) -> anyhow::Result<Exit> {
    let text = text(&Paths::from_env())?;
    match textfile {
        Some(file) => {
            write(file, &text)?;
            if json {
                super::print_json(&serde_json::json!({ "textfile": file }))?;
            }
        }
        None if json => super::print_json(&serde_json::json!({ "metrics": text }))?,
        None => print!("{text}"),
    }
    Ok(Exit::Ok)
}
