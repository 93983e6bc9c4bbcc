//! The audit journal: append-only JSON lines in
//! `/var/lib/kmend/journal.jsonl`, one per action that touched (or tried
//! to touch) what the kernel runs. `kmend report` exports it.
//!
//! Tamper-evident: each line carries `prev`, the SHA-256 of the line
//! before it (the first: 64 zeros), and `journal.head` holds the hash of
//! the last line. Editing, inserting or deleting a line breaks the chain,
//! and cutting lines off the end no longer matches the head: [`verify`]
//! (`kmend report --verify`) names the first line that does not fit. This
//! shows tampering by someone who did not rewrite the whole chain and its
//! head; a root attacker can do that, so ship the journal off the machine
//! (`kmend report`) where that matters.

use std::{
    fs,
    io::{
        self,
        BufRead as _,
        Write as _, //
    },
    os::unix::fs::OpenOptionsExt as _,
};

use serde::{
    Deserialize,
    Serialize, //
};

use crate::{
    paths::Paths,
    timestamp::Timestamp, //
};

/// One journal line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub time: Timestamp,
    /// `cli:<user>`, `daemon` or `boot`.
    pub actor: String,
    /// `apply`, `revert`, `supersede`, `reapply`, `block`, `interrupted`, `check`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// `object:function` of every function the patch replaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    /// `ok` or `error`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SHA-256 of the previous line (chain); set by [`append`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev: String,
}

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn head_file(paths: &Paths) -> std::path::PathBuf {
    paths.state_dir().join("journal.head")
}

/// SHA-256 (hex) of the last line of the journal, or [`GENESIS`].
fn last_hash(path: &std::path::Path) -> io::Result<String> {
    use std::io::{
        Read as _,
        Seek as _, //
    };
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(GENESIS.to_owned()),
        Err(e) => return Err(e),
    };
    // The last line is within the last 1 MiB (lines are a few hundred bytes).
    let len = file.metadata()?.len();
    file.seek(io::SeekFrom::Start(len.saturating_sub(1 << 20)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let last = tail.strip_suffix(b"\n").unwrap_or(&tail).rsplit(|&b| b == b'\n').next().unwrap_or_default();
    Ok(if last.is_empty() { GENESIS.to_owned() } else { crate::artifact::sha256_hex(last) })
}

/// The journal could not be written or read.
pub type JournalError = crate::fsutil::FileError;

/// Appends `entry` as one line chained to the last one, fsyncs it and
/// moves the head. Callers hold the agent lock (one appender at a time).
pub fn append(paths: &Paths, entry: &Entry) -> Result<(), JournalError> {
    let path = paths.journal();
    let err = |op| crate::fsutil::at(op, &path);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err("create directory"))?;
    }
    let entry = Entry { prev: last_hash(&path).map_err(err("read"))?, ..entry.clone() };
    let mut line = serde_json::to_vec(&entry).unwrap_or_default();
    let hash = crate::artifact::sha256_hex(&line);
    line.push(b'\n');
    let mut file = fs::OpenOptions::new().append(true).create(true).mode(0o640).open(&path).map_err(err("open"))?;
    // One write of a whole line: concurrent appenders do not interleave.
    file.write_all(&line).map_err(err("append"))?;
    file.sync_data().map_err(err("fsync"))?;
    let head = head_file(paths);
    crate::fsutil::write_atomic(&head, format!("{hash}\n").as_bytes()).map_err(crate::fsutil::at("write", &head))
}

/// Where the chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("journal line {line}: does not follow line {}: edited, inserted or a line before it deleted", line - 1)]
    Broken { line: usize },
    #[error("journal line {line}: not a journal entry")]
    Unreadable { line: usize },
    #[error("journal ends at line {lines}, but its head names another last line: lines were cut off the end, or the journal replaced")]
    Truncated { lines: usize },
}

/// Checks the chain of the whole journal and its head; returns the number
/// of lines. Lines written before kmend chained them (no `prev`) are
/// accepted only at the start.
pub fn verify(paths: &Paths) -> Result<Result<usize, ChainError>, JournalError> {
    let path = paths.journal();
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(crate::fsutil::at("read", &path)(source)),
    };
    let mut expected = GENESIS.to_owned();
    let mut chained = false;
    let mut lines = 0;
    for (i, line) in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        lines = i + 1;
        let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
            return Ok(Err(ChainError::Unreadable { line: i + 1 }));
        };
        if entry.prev.is_empty() && !chained {
            // Legacy line, before chaining.
        } else if entry.prev != expected {
            return Ok(Err(ChainError::Broken { line: i + 1 }));
        } else {
            chained = true;
        }
        expected = crate::artifact::sha256_hex(line);
    }
    let head = fs::read_to_string(head_file(paths)).unwrap_or_default();
    let head = head.trim();
    if (!head.is_empty() || chained) && head != expected {
        return Ok(Err(ChainError::Truncated { lines }));
    }
    Ok(Ok(lines))
}

/// Every entry, oldest first; lines that do not parse are skipped.
pub fn read_all(paths: &Paths) -> Result<Vec<Entry>, JournalError> {
    let path = paths.journal();
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(crate::fsutil::at("open", &path)(source)),
    };
    let mut out = Vec::new();
    for line in io::BufReader::new(file).lines() {
        let line = line.map_err(crate::fsutil::at("read", &path))?;
        if let Ok(e) = serde_json::from_str(&line) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Who is acting, for the journal: `cli:<user>`, from the kernel, not
/// from environment variables anyone can set: the audit login uid (set at
/// login by pam_loginuid, kept across `sudo` and `su`), else the real uid.
pub fn cli_actor() -> String {
    let login = fs::read_to_string("/proc/self/loginuid").ok().and_then(|s| s.trim().parse::<u32>().ok());
    // u32::MAX: no login session (a service, a container).
    // SAFETY: getuid cannot fail and has no preconditions.
    let uid = login.filter(|&u| u != u32::MAX).unwrap_or_else(|| unsafe { libc::getuid() });
    format!("cli:{}", user_name(uid).unwrap_or_else(|| format!("uid={uid}")))
}

/// The name of `uid` in /etc/passwd (kmend is static: no NSS).
fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert!(read_all(&paths).unwrap().is_empty());
        let a = Entry { actor: "boot".into(), action: "reapply".into(), patch: Some("kp_a".into()), result: "ok".into(), ..Entry::default() };
        let b = Entry { actor: "daemon".into(), action: "apply".into(), result: "error".into(), error: Some("x".into()), ..Entry::default() };
        append(&paths, &a).unwrap();
        append(&paths, &b).unwrap();
        let text = fs::read_to_string(paths.journal()).unwrap();
        assert_eq!(text.lines().count(), 2);
        let read = read_all(&paths).unwrap();
        assert_eq!(read[0].prev, GENESIS);
        assert_eq!(read[1].prev, crate::artifact::sha256_hex(text.lines().next().unwrap().as_bytes()));
        assert_eq!(read.iter().map(|e| Entry { prev: String::new(), ..e.clone() }).collect::<Vec<_>>(), [a, b]);
        assert_eq!(verify(&paths).unwrap(), Ok(2));
    }

    #[test]
    fn edits_deletions_and_truncation_break_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        for i in 0..4 {
            let e = Entry { actor: "daemon".into(), action: "apply".into(), patch: Some(format!("kp_{i}")), result: "ok".into(), ..Entry::default() };
            append(&paths, &e).unwrap();
        }
        let original = fs::read_to_string(paths.journal()).unwrap();
        let lines: Vec<&str> = original.lines().collect();
        let write = |ls: &[String]| fs::write(paths.journal(), ls.join("\n") + "\n").unwrap();
        let owned = |ls: &[&str]| ls.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        // An edited result.
        let mut edited = owned(&lines);
        edited[1] = edited[1].replace("\"ok\"", "\"error\"");
        write(&edited);
        assert_eq!(verify(&paths).unwrap(), Err(ChainError::Broken { line: 3 }));
        // A deleted line in the middle.
        write(&owned(&[lines[0], lines[2], lines[3]]));
        assert_eq!(verify(&paths).unwrap(), Err(ChainError::Broken { line: 2 }));
        // The last line cut off.
        write(&owned(&lines[..3]));
        assert_eq!(verify(&paths).unwrap(), Err(ChainError::Truncated { lines: 3 }));
        write(&owned(&lines));
        assert_eq!(verify(&paths).unwrap(), Ok(4));
    }

}
