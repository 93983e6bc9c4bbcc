//! The audit journal: append-only JSON lines in
//! `/var/lib/kmend/journal.jsonl`, one per action that touched (or tried
//! to touch) what the kernel runs. `kmend report` exports it.

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
}

/// The journal could not be written or read.
pub type JournalError = crate::fsutil::FileError;

/// Appends `entry` as one line and fsyncs it.
pub fn append(paths: &Paths, entry: &Entry) -> Result<(), JournalError> {
    let path = paths.journal();
    let err = |op| crate::fsutil::at(op, &path);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err("create directory"))?;
    }
    let mut line = serde_json::to_vec(entry).unwrap_or_default();
    line.push(b'\n');
    let mut file = fs::OpenOptions::new().append(true).create(true).mode(0o640).open(&path).map_err(err("open"))?;
    // One write of a whole line: concurrent appenders do not interleave.
    file.write_all(&line).map_err(err("append"))?;
    file.sync_data().map_err(err("fsync"))
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

/// Who is acting, for the journal: `cli:<user>` (the sudo user when there
/// is one).
pub fn cli_actor() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        // SAFETY: getuid cannot fail.
        .unwrap_or_else(|| format!("uid={}", unsafe { libc::getuid() }));
    format!("cli:{user}")
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
        assert_eq!(read_all(&paths).unwrap(), [a, b]);
    }
}
