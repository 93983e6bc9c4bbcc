//! Where kmend finds the kernel's files and keeps its own.
//!
//! Every path kmend uses is built here, under one root: `/` normally, or
//! the directory named by the environment variable `KMEND_ROOT` (tests run
//! the real binary against a fake tree that way; see docs/agent.md). The
//! root prefixes `/sys`, `/proc`, `/dev`, `/etc/kmend` and `/var/lib/kmend`.

use std::path::{
    Path,
    PathBuf, //
};

/// Name of the environment variable that moves every path under a root.
pub const ROOT_ENV: &str = "KMEND_ROOT";

/// The file system layout kmend works in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
    /// Whether `KMEND_ROOT` was set (the real `/` is used otherwise).
    pub rooted: bool,
}

impl Paths {
    /// The layout for this process: under `$KMEND_ROOT` when it is set and
    /// not empty, else under `/`.
    pub fn from_env() -> Self {
        match std::env::var_os(ROOT_ENV).filter(|v| !v.is_empty()) {
            Some(root) => Self::under(PathBuf::from(root)),
            None => Self { root: PathBuf::from("/"), rooted: false },
        }
    }

    /// The layout under `root` (for tests).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), rooted: true }
    }

    /// `path` (absolute, as on a real system) under the root.
    pub fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// ELF notes of the running kernel (holds its GNU build id).
    pub fn kernel_notes(&self) -> PathBuf {
        self.at("/sys/kernel/notes")
    }

    /// The running kernel's release, as `uname -r` prints it.
    pub fn osrelease(&self) -> PathBuf {
        self.at("/proc/sys/kernel/osrelease")
    }

    /// Changes at every boot: tells a crash from an interrupted command.
    pub fn boot_id(&self) -> PathBuf {
        self.at("/proc/sys/kernel/random/boot_id")
    }

    pub fn cmdline(&self) -> PathBuf {
        self.at("/proc/cmdline")
    }

    pub fn kmsg(&self) -> PathBuf {
        self.at("/dev/kmsg")
    }

    /// A registered host's fleet credentials (server, host id, token).
    pub fn fleet_file(&self) -> PathBuf {
        self.state_dir().join("fleet.json")
    }

    /// The control device of kmend.ko.
    pub fn control_device(&self) -> PathBuf {
        self.at(kmend_common::uapi::CONTROL_DEVICE)
    }

    /// The configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.at("/etc/kmend/kmend.toml")
    }

    /// Its presence disables the boot-time re-apply.
    pub fn disable_file(&self) -> PathBuf {
        self.at("/etc/kmend/disable")
    }

    /// kmend's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.at("/var/lib/kmend")
    }

    /// Artifacts of the applied patches (re-applied at boot).
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir().join("cache")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// Crash-loop guard: names the patch being loaded right now.
    pub fn applying_marker(&self) -> PathBuf {
        self.state_dir().join("applying")
    }

    pub fn journal(&self) -> PathBuf {
        self.state_dir().join("journal.jsonl")
    }

    /// The TUF metadata last trusted from the feed whose trust anchor is
    /// `root` (the bytes of the root.json the machine was given): rollback,
    /// freeze and revocation memory, shared by every mirror of that feed.
    pub fn tuf_dir(&self, root: &[u8]) -> PathBuf {
        let key = crate::artifact::sha256_hex(root);
        self.state_dir().join("tuf").join(&key[..16])
    }

    /// Held (flock) by every command that changes what is applied.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir().join("lock")
    }

    /// State of the test-double kernel (see [`crate::sys`]).
    pub fn fake_kernel_dir(&self) -> PathBuf {
        self.at("/fake-kernel")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_live_under_the_root() {
        let p = Paths::under("/tmp/r");
        assert_eq!(p.kernel_notes(), Path::new("/tmp/r/sys/kernel/notes"));
        assert_eq!(p.control_device(), Path::new("/tmp/r/dev/kmend"));
        assert_eq!(p.journal(), Path::new("/tmp/r/var/lib/kmend/journal.jsonl"));
        assert_eq!(p.config_file(), Path::new("/tmp/r/etc/kmend/kmend.toml"));
    }
}
