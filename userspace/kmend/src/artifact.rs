//! The patch artifact (`.kmpatch`, format 1): what a feed serves and what
//! kmend caches for boot.
//!
//! An uncompressed ustar archive holding exactly two members, in order:
//! `manifest.json` (a [`Manifest`]) and `patch.ko` (the patch module). The
//! manifest names the kernel build the module was built for and the
//! SHA-256 of the module; reading an artifact checks both, so a module is
//! never loaded from an artifact that does not vouch for it. Documented in
//! docs/feed-format.md.

use std::{
    fs,
    io::Read as _,
    path::Path,
};

use serde::{
    Deserialize,
    Serialize, //
};
use sha2::{
    Digest as _,
    Sha256, //
};

use crate::identity::KernelIdentity;

/// The artifact format this kmend writes and reads.
pub const FORMAT: u32 = 1;
const MANIFEST_NAME: &str = "manifest.json";
const MODULE_NAME: &str = "patch.ko";
/// Larger manifests or modules are refused (a patch module is small).
const MAX_MEMBER: u64 = 64 << 20;

/// `manifest.json`: what a patch is and what it was built for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Must be [`FORMAT`].
    pub format: u32,
    /// The patch id, which is also the kernel module name.
    pub id: String,
    pub version: u32,
    #[serde(default)]
    pub description: String,
    /// The exact kernel build the module is for.
    pub kernel: KernelIdentity,
    #[serde(default)]
    pub cves: Vec<String>,
    /// A cumulative patch: it supersedes every patch applied before it.
    #[serde(default)]
    pub replace: bool,
    /// Modules whose internal symbols the patch's code was linked against
    /// when it loads (a fix built from a diff of a module's source): it
    /// loads only while they are loaded (docs/patch-format.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    pub functions: Vec<Function>,
    /// SHA-256 of `patch.ko`, lowercase hex.
    #[serde(default)]
    pub module_sha256: String,
    /// Not a patch: kmend.ko itself, built for `kernel` (id [`CORE_ID`], no
    /// functions). A feed carries one per kernel, so machines need no
    /// compiler; the agent loads it before the first patch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub core: bool,
}

/// The module name, and artifact id, of the core module.
pub const CORE_ID: &str = "kmend";

pub use crate::target::Function;

/// An artifact in memory: the checked manifest and the module image.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub manifest: Manifest,
    pub module: Vec<u8>,
}

/// Why an artifact was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0}")]
    File(#[from] crate::fsutil::FileError),
    #[error("not a kmend artifact: {0}")]
    Layout(String),
    #[error("bad manifest: {source}")]
    ManifestJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported artifact format {0} (this kmend reads format {FORMAT}): upgrade kmend")]
    Format(u32),
    #[error("bad manifest: {0}")]
    Invalid(String),
    #[error("module hash mismatch: manifest says {expected}, patch.ko is {actual}")]
    ModuleHash { expected: String, actual: String },
    #[error("module name '{module}' differs from the manifest id '{id}'")]
    ModuleName { module: String, id: String },
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn is_hex(s: &str) -> bool {
    s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Checks everything but the module hash.
    pub fn validate(&self) -> Result<(), ArtifactError> {
        let bad = |s: String| Err(ArtifactError::Invalid(s));
        if self.format != FORMAT {
            return Err(ArtifactError::Format(self.format));
        }
        if !crate::target::is_patch_id(&self.id) {
            return bad(format!("id '{}' is not 1 to 63 characters of [A-Za-z0-9_.-]", self.id));
        }
        if self.kernel.release.is_empty() || self.kernel.release.contains(char::is_whitespace) {
            return bad(format!("kernel.release '{}' is empty or has spaces", self.kernel.release));
        }
        if self.kernel.build_id.is_empty() || !is_hex(&self.kernel.build_id) {
            return bad(format!("kernel.build_id '{}' is not lowercase hex", self.kernel.build_id));
        }
        if self.core {
            if self.id != CORE_ID || !self.functions.is_empty() || self.replace {
                return bad(format!("a core artifact has id '{CORE_ID}', no functions and no replace"));
            }
        } else if self.id == CORE_ID {
            return bad(format!("id '{CORE_ID}' is the core module's: a patch needs another"));
        } else if self.functions.is_empty() {
            return bad("no functions".into());
        }
        for f in &self.functions {
            let word = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
            if !word(&f.object) || !word(&f.name) || !word(&f.replacement) {
                return bad(format!("function '{}': object, name and replacement must be single words", f.name));
            }
            if let Err(e) = crate::target::parse_fingerprint(&f.fingerprint) {
                return bad(format!("function '{}': fingerprint: {e}", f.name));
            }
        }
        if let Some(c) = self.cves.iter().find(|c| c.is_empty() || c.contains(char::is_whitespace) || c.contains(',')) {
            return bad(format!("cve '{c}' is empty or has spaces or commas"));
        }
        Ok(())
    }
}

impl Artifact {
    /// Builds an artifact from a manifest and a module image: fills in the
    /// module hash (or checks it when the manifest has one) and checks that
    /// the module's name is the patch id.
    pub fn new(mut manifest: Manifest, module: Vec<u8>) -> Result<Self, ArtifactError> {
        let actual = sha256_hex(&module);
        if manifest.module_sha256.is_empty() {
            manifest.module_sha256 = actual;
        }
        let artifact = Self { manifest, module };
        artifact.check()?;
        let name = crate::modinfo::module_name_of(&artifact.module)
            .map_err(|e| ArtifactError::Invalid(format!("patch.ko: not a kernel module: {e:#}")))?;
        if name != artifact.manifest.id {
            return Err(ArtifactError::ModuleName { module: name, id: artifact.manifest.id.clone() });
        }
        Ok(artifact)
    }

    fn check(&self) -> Result<(), ArtifactError> {
        self.manifest.validate()?;
        let actual = sha256_hex(&self.module);
        if actual != self.manifest.module_sha256 {
            return Err(ArtifactError::ModuleHash { expected: self.manifest.module_sha256.clone(), actual });
        }
        Ok(())
    }

    /// Parses and checks an artifact image.
    pub fn from_bytes(data: &[u8]) -> Result<Self, ArtifactError> {
        let layout = |s: &str| ArtifactError::Layout(s.to_owned());
        let mut archive = tar::Archive::new(data);
        let mut members = archive.entries().map_err(|_| layout("not a tar archive"))?;
        let mut next = |want: &str| -> Result<Vec<u8>, ArtifactError> {
            let entry = members.next().ok_or_else(|| layout(&format!("'{want}' is missing")))?;
            let mut entry = entry.map_err(|e| layout(&format!("unreadable tar member: {e}")))?;
            let path = entry.path().map_err(|_| layout("bad member name"))?.to_string_lossy().into_owned();
            if path != want {
                return Err(layout(&format!("member '{path}' where '{want}' belongs")));
            }
            if entry.header().entry_type() != tar::EntryType::Regular || entry.size() > MAX_MEMBER {
                return Err(layout(&format!("'{want}' is not a regular file under {MAX_MEMBER} bytes")));
            }
            let mut buf = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut buf).map_err(|e| layout(&format!("'{want}' is truncated: {e}")))?;
            Ok(buf)
        };
        let manifest_json = next(MANIFEST_NAME)?;
        let module = next(MODULE_NAME)?;
        if let Some(extra) = members.next() {
            let name = extra.ok().and_then(|e| e.path().ok().map(|p| p.display().to_string())).unwrap_or_default();
            return Err(layout(&format!("unexpected member '{name}' after {MODULE_NAME}")));
        }
        let manifest: Manifest =
            serde_json::from_slice(&manifest_json).map_err(|source| ArtifactError::ManifestJson { source })?;
        let artifact = Self { manifest, module };
        artifact.check()?;
        Ok(artifact)
    }

    /// Reads and checks an artifact file.
    pub fn read(path: &Path) -> Result<Self, ArtifactError> {
        let data = fs::read(path).map_err(crate::fsutil::at("read", path))?;
        Self::from_bytes(&data)
    }

    /// The artifact image: a ustar archive with fixed metadata, so the
    /// same inputs always give the same bytes (and the same feed hash).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let manifest = serde_json::to_vec_pretty(&self.manifest).unwrap_or_default();
        for (name, data) in [(MANIFEST_NAME, &manifest[..]), (MODULE_NAME, &self.module[..])] {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            // Appending to a Vec cannot fail, and the names are short ASCII.
            let _ = builder.append_data(&mut header, name, data);
        }
        builder.into_inner().unwrap_or_default()
    }

    /// Writes the artifact atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), ArtifactError> {
        Ok(crate::fsutil::write_atomic(path, &self.to_bytes()).map_err(crate::fsutil::at("write", path))?)
    }

    /// The file name a feed and the cache use: `<id>-<version>.kmpatch`.
    pub fn file_name(&self) -> String {
        file_name(&self.manifest.id, self.manifest.version)
    }
}

/// `<id>-<version>.kmpatch`.
pub fn file_name(id: &str, version: u32) -> String {
    format!("{id}-{version}.kmpatch")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF relocatable with `.modinfo` holding `name=<name>`:
    /// what the module loader reads first; enough for the artifact checks.
    pub fn fake_module(name: &str) -> Vec<u8> {
        use object::write;
        let mut obj = write::Object::new(object::BinaryFormat::Elf, object::Architecture::X86_64, object::Endianness::Little);
        let sec = obj.add_section(Vec::new(), b".modinfo".to_vec(), object::SectionKind::ReadOnlyData);
        obj.append_section_data(sec, format!("license=GPL\0name={name}\0").as_bytes(), 1);
        obj.write().unwrap()
    }

    pub fn manifest(id: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            id: id.into(),
            version: 1,
            description: "test patch".into(),
            kernel: KernelIdentity { release: "7.2.13".into(), build_id: "ab".repeat(20) },
            cves: vec!["CVE-2026-0001".into()],
            replace: false,
            links: Vec::new(),
            functions: vec![Function {
                object: "vmlinux".into(),
                name: "cmdline_proc_show".into(),
                sympos: 0,
                replacement: format!("{id}_cmdline_proc_show"),
                fingerprint: String::new(),
                text_offset: None,
                section: None,
            }],
            module_sha256: String::new(),
            core: false,
        }
    }

    #[test]
    fn core_artifacts_are_kmend_with_no_functions_and_patches_are_not_kmend() {
        let mut core = manifest(CORE_ID);
        core.core = true;
        assert!(core.validate().unwrap_err().to_string().contains("no functions"), "a core with functions");
        core.functions.clear();
        core.validate().unwrap();
        core.id = "kp_core".into();
        assert!(core.validate().is_err(), "a core not named kmend");
        let patch = manifest(CORE_ID);
        assert!(patch.validate().unwrap_err().to_string().contains("core module's"), "a patch named kmend");
    }

    #[test]
    fn round_trips_and_is_reproducible() {
        let a = Artifact::new(manifest("kp_one"), fake_module("kp_one")).unwrap();
        let bytes = a.to_bytes();
        assert_eq!(bytes, Artifact::new(manifest("kp_one"), fake_module("kp_one")).unwrap().to_bytes());
        let b = Artifact::from_bytes(&bytes).unwrap();
        assert_eq!(b.manifest, a.manifest);
        assert_eq!(b.module, a.module);
        assert_eq!(b.manifest.module_sha256, sha256_hex(&a.module));
    }

    #[test]
    fn refuses_a_module_that_does_not_match_its_hash() {
        let a = Artifact::new(manifest("kp_one"), fake_module("kp_one")).unwrap();
        let mut tampered = a.clone();
        tampered.module.push(0);
        let err = Artifact::from_bytes(&tampered.to_bytes()).unwrap_err();
        assert!(matches!(err, ArtifactError::ModuleHash { .. }), "{err}");
    }

    #[test]
    fn refuses_a_module_named_differently() {
        let err = Artifact::new(manifest("kp_one"), fake_module("kp_two")).unwrap_err();
        assert!(matches!(err, ArtifactError::ModuleName { .. }), "{err}");
    }

    #[test]
    fn refuses_wrong_layouts_and_formats() {
        assert!(matches!(Artifact::from_bytes(b"hello").unwrap_err(), ArtifactError::Layout(_)));
        let mut m = manifest("kp_one");
        m.format = 2;
        m.module_sha256 = sha256_hex(&fake_module("kp_one"));
        let a = Artifact { manifest: m, module: fake_module("kp_one") };
        assert!(matches!(Artifact::from_bytes(&a.to_bytes()).unwrap_err(), ArtifactError::Format(2)));
        // Members in the wrong order.
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in [("patch.ko", &b"x"[..]), ("manifest.json", &b"{}"[..])] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            builder.append_data(&mut h, name, data).unwrap();
        }
        let err = Artifact::from_bytes(&builder.into_inner().unwrap()).unwrap_err();
        assert!(matches!(err, ArtifactError::Layout(_)), "{err}");
    }

    #[test]
    fn validates_manifest_fields() {
        for (what, edit) in [
            ("id", Box::new(|m: &mut Manifest| m.id = "bad id".into()) as Box<dyn Fn(&mut Manifest)>),
            ("build id", Box::new(|m: &mut Manifest| m.kernel.build_id = "XYZ".into())),
            ("functions", Box::new(|m: &mut Manifest| m.functions.clear())),
            ("cve", Box::new(|m: &mut Manifest| m.cves.push("CVE 1".into()))),
        ] {
            let mut m = manifest("kp_one");
            edit(&mut m);
            assert!(m.validate().is_err(), "{what} accepted");
        }
    }
}
