//! `index.json` (feed format 1): which patches exist, per channel and per
//! kernel build. Documented in docs/feed-format.md.

use std::collections::BTreeMap;

use serde::{
    Deserialize,
    Serialize, //
};

use crate::{
    artifact::Artifact,
    identity::KernelIdentity,
    timestamp::Timestamp, //
};

/// The feed format this kmend writes and reads.
pub const FORMAT: u32 = 1;

/// The channels a feed may have: `stable` for production, `test` for
/// patches still being tried (like KernelCare's test feed).
pub const CHANNELS: [&str; 2] = ["stable", "test"];

/// The whole index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    /// When the index was written.
    pub generated: Timestamp,
    /// Keyed by channel name.
    #[serde(default)]
    pub channels: BTreeMap<String, Channel>,
}

/// One channel: the patches for each kernel build it supports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    #[serde(default)]
    pub kernels: Vec<KernelEntry>,
}

/// The patches of one channel for one kernel build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEntry {
    pub release: String,
    pub build_id: String,
    /// In release order, oldest first.
    #[serde(default)]
    pub patches: Vec<PatchEntry>,
    /// kmend.ko built for this kernel (a core artifact), loaded by the
    /// agent before the first patch when it is not loaded yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<PatchEntry>,
    /// What live patching covers for this kernel (`kmend feed coverage`).
    #[serde(default, skip_serializing_if = "Coverage::is_default")]
    pub coverage: Coverage,
}

/// What the publisher says live patches cover for one kernel, as the
/// vendors tell their users when to plan a reboot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Until when the publisher makes live patches for this kernel; after
    /// it: "upgrade required" (reboot into a newer kernel to stay fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// The kernel's end of life: no live patches for it any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end_of_life: bool,
    /// Known CVEs of this kernel that live patches do not fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_reboot: Vec<RebootCve>,
}

/// A CVE that only a newer kernel (and a reboot) fixes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootCve {
    pub cve: String,
    /// The kernel release that fixes it, if known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fixed_in: String,
}

impl Coverage {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// One patch as the feed lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchEntry {
    pub id: String,
    pub version: u32,
    pub released: Timestamp,
    #[serde(default)]
    pub cves: Vec<String>,
    /// Bytes of the artifact.
    pub size: u64,
    /// SHA-256 of the artifact, lowercase hex.
    pub sha256: String,
    /// Path of the artifact relative to the feed's root.
    pub url: String,
    #[serde(default)]
    pub replace: bool,
    #[serde(default)]
    pub description: String,
    /// Modules whose internals the patch's code was linked against (a fix
    /// to module code): it applies only while they are loaded. Absent in
    /// feeds written before it was listed here; the artifact's manifest
    /// says the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
}

/// An index that kmend refuses.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index.json is not valid JSON for feed format {FORMAT}: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported feed format {0} (this kmend reads format {FORMAT}): upgrade kmend")]
    Format(u32),
    #[error("index.json: {0}")]
    Invalid(String),
}

/// A relative artifact path that cannot escape the feed: `patches/<name>`
/// with a plain file name.
pub fn safe_relative_url(url: &str) -> bool {
    let Some(name) = url.strip_prefix("patches/") else { return false };
    !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl PatchEntry {
    /// `id` version `n`, as messages name a patch.
    pub fn label(&self) -> String {
        format!("'{}' version {}", self.id, self.version)
    }
}

impl KernelEntry {
    pub fn identity(&self) -> KernelIdentity {
        KernelIdentity { release: self.release.clone(), build_id: self.build_id.clone() }
    }
}

impl Index {
    pub fn new(generated: Timestamp) -> Self {
        Self { format: FORMAT, generated, channels: BTreeMap::new() }
    }

    /// Parses and checks index.json.
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        // Check the format first, so a newer feed gets the right message.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|source| IndexError::Json { source })?;
        if head.format != FORMAT {
            return Err(IndexError::Format(head.format));
        }
        let index: Self = serde_json::from_slice(bytes).map_err(|source| IndexError::Json { source })?;
        index.validate()?;
        Ok(index)
    }

    fn validate(&self) -> Result<(), IndexError> {
        let bad = |s: String| Err(IndexError::Invalid(s));
        for (name, channel) in &self.channels {
            if !CHANNELS.contains(&name.as_str()) {
                return bad(format!("unknown channel '{name}' (known: {})", CHANNELS.join(", ")));
            }
            for k in &channel.kernels {
                if let Some(c) = &k.core {
                    let at = format!("channel '{name}', kernel '{}', core", k.release);
                    if c.id != crate::artifact::CORE_ID {
                        return bad(format!("{at}: id '{}' is not '{}'", c.id, crate::artifact::CORE_ID));
                    }
                    if !safe_relative_url(&c.url) || c.sha256.len() != 64 || !c.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return bad(format!("{at}: url must be patches/<file name> and sha256 64 hex digits"));
                    }
                }
                for p in &k.patches {
                    let at = || format!("channel '{name}', kernel '{}', patch '{}'", k.release, p.id);
                    if crate::sys::check_id(&p.id).is_err() {
                        return bad(format!("{}: invalid id", at()));
                    }
                    if !safe_relative_url(&p.url) {
                        return bad(format!("{}: url '{}' is not patches/<file name>", at(), p.url));
                    }
                    if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return bad(format!("{}: sha256 is not 64 hex digits", at()));
                    }
                }
                let mut ids: Vec<_> = k.patches.iter().map(|p| &p.id).collect();
                ids.sort();
                if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                    return bad(format!("channel '{name}', kernel '{}': patch '{}' listed twice", k.release, w[0]));
                }
            }
        }
        Ok(())
    }

    /// The patches of `channel` for `kernel`; `None` when the feed does not
    /// support that kernel build on that channel.
    pub fn patches_for(&self, channel: &str, kernel: &KernelIdentity) -> Option<&[PatchEntry]> {
        self.channels
            .get(channel)?
            .kernels
            .iter()
            .find(|k| k.release == kernel.release && k.build_id == kernel.build_id)
            .map(|k| k.patches.as_slice())
    }

    /// The kernel entry of `channel` for `kernel`, if the feed has one.
    pub fn kernel(&self, channel: &str, kernel: &KernelIdentity) -> Option<&KernelEntry> {
        self.channels.get(channel)?.kernels.iter().find(|k| k.release == kernel.release && k.build_id == kernel.build_id)
    }

    /// Sets the coverage of every build of kernel `release` on `channel`;
    /// returns how many kernel entries it changed (0: none of that release).
    pub fn set_coverage(&mut self, channel: &str, release: &str, coverage: &Coverage) -> usize {
        let Some(c) = self.channels.get_mut(channel) else { return 0 };
        let mut n = 0;
        for k in c.kernels.iter_mut().filter(|k| k.release == release) {
            k.coverage = coverage.clone();
            n += 1;
        }
        n
    }

    /// The core module of `channel` for `kernel`, if the feed has one.
    pub fn core_for(&self, channel: &str, kernel: &KernelIdentity) -> Option<&PatchEntry> {
        self.channels
            .get(channel)?
            .kernels
            .iter()
            .find(|k| k.release == kernel.release && k.build_id == kernel.build_id)?
            .core
            .as_ref()
    }

    /// Adds `artifact` (stored at `url`, `size` bytes with hash `sha256`)
    /// to `channel`; an entry with the same id is replaced. A core
    /// artifact becomes the kernel's `core`.
    pub fn add(&mut self, channel: &str, artifact: &Artifact, released: Timestamp, url: String, size: u64, sha256: String) {
        let m = &artifact.manifest;
        let kernels = &mut self.channels.entry(channel.to_owned()).or_default().kernels;
        let pos = match kernels.iter().position(|k| k.identity() == m.kernel) {
            Some(pos) => pos,
            None => {
                kernels.push(KernelEntry {
                    release: m.kernel.release.clone(),
                    build_id: m.kernel.build_id.clone(),
                    patches: Vec::new(),
                    core: None,
                    coverage: Coverage::default(),
                });
                kernels.sort_by(|a, b| (&a.release, &a.build_id).cmp(&(&b.release, &b.build_id)));
                kernels.iter().position(|k| k.identity() == m.kernel).unwrap_or_default()
            }
        };
        let entry = PatchEntry {
            id: m.id.clone(),
            version: m.version,
            released,
            cves: m.cves.clone(),
            size,
            sha256,
            url,
            replace: m.replace,
            description: m.description.clone(),
            links: m.links.clone(),
        };
        if m.core {
            kernels[pos].core = Some(entry);
            return;
        }
        let patches = &mut kernels[pos].patches;
        patches.retain(|p| p.id != m.id);
        patches.push(entry);
        patches.sort_by(|a, b| (a.released, a.version, &a.id).cmp(&(b.released, b.version, &b.id)));
    }

    /// The index as written to index.json (pretty, newline-terminated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::tests::{
        fake_module,
        manifest, //
    };

    fn artifact(id: &str) -> Artifact {
        Artifact::new(manifest(id), fake_module(id)).unwrap()
    }

    #[test]
    fn add_groups_by_kernel_and_replaces_same_id() {
        let mut index = Index::new(Timestamp::from_unix(0));
        let t1 = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let t2 = Timestamp::parse("2026-02-01T00:00:00Z").unwrap();
        index.add("stable", &artifact("kp_b"), t2, "patches/kp_b-1.kmpatch".into(), 10, "0".repeat(64));
        index.add("stable", &artifact("kp_a"), t1, "patches/kp_a-1.kmpatch".into(), 10, "0".repeat(64));
        index.add("stable", &artifact("kp_a"), t1, "patches/kp_a-1.kmpatch".into(), 11, "1".repeat(64));
        let kernel = manifest("x").kernel;
        let patches = index.patches_for("stable", &kernel).unwrap();
        assert_eq!(patches.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["kp_a", "kp_b"]);
        assert_eq!(patches[0].size, 11);
        assert!(index.patches_for("test", &kernel).is_none());
        let other = KernelIdentity { release: kernel.release.clone(), build_id: "cd".repeat(20) };
        assert!(index.patches_for("stable", &other).is_none(), "same release, other build must not match");
        let parsed = Index::parse(&index.to_bytes()).unwrap();
        assert_eq!(parsed, index);
    }

    #[test]
    fn refuses_bad_indexes() {
        assert!(matches!(Index::parse(b"<html>").unwrap_err(), IndexError::Json { .. }));
        assert!(matches!(Index::parse(br#"{"format":2}"#).unwrap_err(), IndexError::Format(2)));
        let mut index = Index::new(Timestamp::from_unix(0));
        index.add("stable", &artifact("kp_a"), Timestamp::from_unix(0), "../../etc/shadow".into(), 1, "0".repeat(64));
        assert!(matches!(Index::parse(&index.to_bytes()).unwrap_err(), IndexError::Invalid(_)));
        let mut index = Index::new(Timestamp::from_unix(0));
        index.add("nightly", &artifact("kp_a"), Timestamp::from_unix(0), "patches/a".into(), 1, "0".repeat(64));
        assert!(matches!(Index::parse(&index.to_bytes()).unwrap_err(), IndexError::Invalid(_)));
    }

    #[test]
    fn relative_urls_stay_inside_the_feed() {
        assert!(safe_relative_url("patches/kp_a-1.kmpatch"));
        for bad in ["patches/", "patches/../x", "/etc/passwd", "patches/a/b", "http://x/y", "patches/.hidden"] {
            assert!(!safe_relative_url(bad), "{bad}");
        }
    }
}
