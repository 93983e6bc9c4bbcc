//! Running commands: one helper, errors that show the command.

use std::{
    fs,
    path::Path,
    process::Command, //
};

use anyhow::{
    Context as _,
    bail, //
};
use sha2::{
    Digest as _,
    Sha256, //
};

/// Runs `cmd`, failing with the command line and status.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, sending its output to `log` (for long builds); on failure,
/// the tail of the log is shown.
pub fn exec_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    cmd.stdout(file.try_clone()?).stderr(file);
    let start = std::time::Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("failed to start {cmd:?}"))?;
    // A long step says it is alive once a minute: elapsed time and the
    // last line of its log, not minutes of silence.
    let mut next_note = HEARTBEAT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        if start.elapsed() >= next_note {
            next_note += HEARTBEAT;
            let last = last_line(log);
            println!("xtask:   ... {} min, {}", start.elapsed().as_secs() / 60, last.chars().take(100).collect::<String>());
        }
    };
    let secs = start.elapsed().as_secs_f64();
    if secs >= 10.0 {
        // Long steps say what they cost, so a slow cold run can be read.
        println!("xtask:   ({secs:.0} s, log: {})", log.display());
    }
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{cmd:?} failed: {status}; last lines of {}:\n{}", log.display(), tail.join("\n"));
    }
    Ok(())
}

/// How often a long logged step reports progress.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(60);

/// The last non-empty line of a log (its tail only is read).
fn last_line(log: &Path) -> String {
    use std::io::{
        Read as _,
        Seek as _,
        SeekFrom,
    };
    let Ok(mut f) = fs::File::open(log) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut tail = Vec::new();
    let _ = f.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
}

/// Hex SHA-256 of some byte strings (a cache key).
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..12])
}

/// Whether the stamp file holds `key`.
pub fn stamp_matches(stamp: &Path, key: &str) -> bool {
    fs::read_to_string(stamp).is_ok_and(|s| s.trim() == key)
}

/// Records `key` in the stamp file.
pub fn write_stamp(stamp: &Path, key: &str) -> anyhow::Result<()> {
    fs::write(stamp, key).with_context(|| format!("write {}", stamp.display()))
}
