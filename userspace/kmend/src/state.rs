//! What kmend remembers between runs, under `/var/lib/kmend`:
//! `state.json` (applied patches, blocked patches, the last feed check),
//! `cache/` (the artifacts of the applied patches, re-applied at boot) and
//! the crash-loop guard's marker `applying`.

use std::{
    fs,
    io,
    path::{
        Path,
        PathBuf, //
    },
};

use serde::{
    Deserialize,
    Serialize, //
};

use crate::{
    artifact::{
        Function,
        Manifest, //
    },
    feed::index::PatchEntry,
    fsutil::{
        self,
        FileError, //
    },
    paths::Paths,
    policy::PatchRef,
    timestamp::Timestamp,
};

/// A state file kmend cannot read or write.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("'{path}': corrupt ({source}); move it away to start afresh")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Patches kmend applied from artifacts, in the order applied.
    #[serde(default)]
    pub applied: Vec<AppliedPatch>,
    /// Patches the crash-loop guard keeps from being re-applied.
    #[serde(default)]
    pub blocked: Vec<BlockedPatch>,
    #[serde(default)]
    pub last_check: Option<LastCheck>,
    /// kmend.ko as kmend loaded it from the feed (its artifact cached for
    /// boot); absent when kmend.ko came from elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<CoreModule>,
    /// The outcome of the last `update` (the daemon's, or by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<UpdateOutcome>,
    /// The last `kmend verify` of each patch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verifications: Vec<Verification>,
}

/// How the last update went.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub time: Timestamp,
    /// `None`: it succeeded.
    pub error: Option<String>,
}

/// The last eBPF verification of one patch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verification {
    pub id: String,
    pub time: Timestamp,
    pub proven: bool,
    /// Summed over the patch's functions.
    pub replacement_hits: u64,
    pub old_body_hits: u64,
}

/// The core module kmend loaded from a feed's core artifact.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CoreModule {
    pub version: u32,
    /// The kernel it was built for (a new kernel at boot makes it stale).
    pub kernel: crate::identity::KernelIdentity,
    /// SHA-256 of the cached artifact.
    pub sha256: String,
    /// File name of the artifact in the cache directory.
    pub file: String,
    pub loaded_at: Timestamp,
}

/// A patch applied from an artifact (a bare `.ko` is not recorded: it has
/// no manifest to check against the kernel at boot).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppliedPatch {
    pub id: String,
    pub version: u32,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub cves: Vec<String>,
    pub replace: bool,
    pub functions: Vec<Function>,
    /// When the feed released it (absent for `kmend apply <file>`).
    pub released: Option<Timestamp>,
    pub applied_at: Timestamp,
    /// SHA-256 of the cached artifact.
    pub sha256: String,
    /// File name of the artifact in the cache directory.
    pub file: String,
}

impl AppliedPatch {
    pub fn from_manifest(m: &Manifest, released: Option<Timestamp>, sha256: String, file: String) -> Self {
        Self {
            id: m.id.clone(),
            version: m.version,
            description: m.description.clone(),
            cves: m.cves.clone(),
            replace: m.replace,
            functions: m.functions.clone(),
            released,
            applied_at: Timestamp::now(),
            sha256,
            file,
        }
    }

    pub fn patch_ref(&self) -> PatchRef {
        PatchRef { id: self.id.clone(), version: self.version }
    }
}

/// A patch the machine went down while applying.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockedPatch {
    pub id: String,
    pub version: u32,
    /// When the interrupted apply started.
    pub since: Timestamp,
}

/// The outcome of the last feed check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastCheck {
    pub time: Timestamp,
    pub feed: String,
    /// `None` when the check failed before it could tell.
    pub supported: Option<bool>,
    /// What the policy selected for this kernel then.
    #[serde(default)]
    pub target: Vec<PatchEntry>,
    #[serde(default)]
    pub error: Option<String>,
    /// The feed's signed metadata as trusted then: its version and when
    /// it expires (the publisher must re-sign before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedFeed>,
    /// When the feed was last checked successfully, kept across failed
    /// checks (for monitoring: how stale is what this machine knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<Timestamp>,
    /// What the feed said live patches cover for this kernel (a
    /// successful check only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<crate::feed::index::Coverage>,
}

impl LastCheck {
    /// When the feed was last checked successfully, if ever (this check,
    /// or one before it that a failed check remembered).
    pub fn last_success(&self) -> Option<Timestamp> {
        if self.error.is_none() { Some(self.time) } else { self.succeeded }
    }
}

/// What a check trusted of the feed's signed metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedFeed {
    /// Version of the root (the keys) and of the timestamp (the publish).
    pub root_version: u64,
    pub version: u64,
    /// When the first of its roles expires (RFC 3339).
    pub expires: String,
}

/// The crash-loop guard's marker: written (and fsynced) before a patch
/// module is loaded, removed once the load has succeeded or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub id: String,
    pub version: u32,
    pub started: Timestamp,
    /// `/proc/sys/kernel/random/boot_id` then: a different one now means
    /// the machine went down during the load.
    pub boot_id: String,
    pub actor: String,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| StateError::Corrupt { path: path.to_owned(), source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fsutil::at("read", path)(e).into()),
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StateError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(fsutil::at("create directory", dir))?;
    }
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    Ok(fsutil::write_atomic(path, &bytes).map_err(fsutil::at("write", path))?)
}

impl State {
    pub fn load(paths: &Paths) -> Result<Self, StateError> {
        Ok(read_json(&paths.state_file())?.unwrap_or_default())
    }

    pub fn save(&self, paths: &Paths) -> Result<(), StateError> {
        write_json(&paths.state_file(), self)
    }

    pub fn applied(&self, id: &str) -> Option<&AppliedPatch> {
        self.applied.iter().find(|p| p.id == id)
    }

    pub fn applied_refs(&self) -> Vec<PatchRef> {
        self.applied.iter().map(AppliedPatch::patch_ref).collect()
    }

    pub fn blocked_refs(&self) -> Vec<PatchRef> {
        self.blocked.iter().map(|b| PatchRef { id: b.id.clone(), version: b.version }).collect()
    }

    /// Records `patch` as applied (replacing an older record of its id)
    /// and lifts any block on it.
    pub fn record_applied(&mut self, patch: AppliedPatch) {
        self.applied.retain(|p| p.id != patch.id);
        self.blocked.retain(|b| b.id != patch.id);
        self.applied.push(patch);
    }

    /// Keeps `v` as the last verification of its patch.
    pub fn record_verification(&mut self, v: Verification) {
        self.verifications.retain(|o| o.id != v.id);
        self.verifications.push(v);
    }

    /// Forgets `id`; returns its record.
    pub fn forget(&mut self, id: &str) -> Option<AppliedPatch> {
        let pos = self.applied.iter().position(|p| p.id == id)?;
        Some(self.applied.remove(pos))
    }
}

/// The crash-loop marker, if a load was in progress.
pub fn read_marker(paths: &Paths) -> Result<Option<Marker>, StateError> {
    read_json(&paths.applying_marker())
}

/// Writes the marker durably (before the load starts).
pub fn write_marker(paths: &Paths, marker: &Marker) -> Result<(), StateError> {
    write_json(&paths.applying_marker(), marker)
}

/// Removes the marker durably (after the load ended).
pub fn remove_marker(paths: &Paths) -> Result<(), StateError> {
    let path = paths.applying_marker();
    Ok(fsutil::remove_durably(&path).map_err(fsutil::at("remove", &path))?)
}

/// The current boot's id (empty when the kernel does not say).
pub fn boot_id(paths: &Paths) -> String {
    fs::read_to_string(paths.boot_id()).map(|s| s.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let mut state = State::load(&paths).unwrap();
        assert!(state.applied.is_empty());
        let m = crate::artifact::tests::manifest("kp_a");
        state.blocked.push(BlockedPatch { id: "kp_a".into(), version: 1, since: Timestamp::from_unix(5) });
        state.record_applied(AppliedPatch::from_manifest(&m, None, "00".into(), "kp_a-1.kmpatch".into()));
        assert!(state.blocked.is_empty(), "applying a patch lifts its block");
        state.save(&paths).unwrap();
        let back = State::load(&paths).unwrap();
        assert_eq!(back.applied_refs(), [PatchRef { id: "kp_a".into(), version: 1 }]);

        assert_eq!(read_marker(&paths).unwrap(), None);
        let marker = Marker { id: "kp_a".into(), version: 1, started: Timestamp::from_unix(9), boot_id: "b1".into(), actor: "t".into() };
        write_marker(&paths, &marker).unwrap();
        assert_eq!(read_marker(&paths).unwrap(), Some(marker));
        remove_marker(&paths).unwrap();
        assert_eq!(read_marker(&paths).unwrap(), None);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        fs::create_dir_all(paths.state_dir()).unwrap();
        fs::write(paths.state_file(), "{not json").unwrap();
        let err = State::load(&paths).unwrap_err().to_string();
        assert!(err.contains("state.json") && err.contains("corrupt"), "{err}");
    }
}

#[cfg(test)]
mod last_check_tests {
    use super::*;

    #[test]
    fn a_failed_check_remembers_the_last_success() {
        let t = |s| Timestamp::from_unix(s);
        let ok = LastCheck { time: t(100), feed: "f".into(), supported: Some(true), target: Vec::new(), error: None, signed: None, succeeded: Some(t(100)), coverage: None };
        assert_eq!(ok.last_success(), Some(t(100)));
        let failed = LastCheck { time: t(200), error: Some("down".into()), succeeded: ok.last_success(), ..ok.clone() };
        assert_eq!(failed.last_success(), Some(t(100)), "a failed check keeps when the feed last answered");
        let never = LastCheck { succeeded: None, ..failed };
        assert_eq!(never.last_success(), None);
    }
}
