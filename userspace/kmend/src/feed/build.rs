//! Staging a feed directory (add artifacts to a channel) and verifying it
//! as an agent would. Signing is [`super::repo`].

use std::{
    fs,
    io,
    path::{
        Path,
        PathBuf, //
    },
};

use super::{
    INDEX,
    PATCH_DIR,
    index::{
        CHANNELS,
        Coverage,
        Index,
        IndexError,
        PatchEntry, //
    },
    trusted::{
        TrustError,
        TrustedFeed, //
    },
};
use crate::{
    artifact::{
        Artifact,
        ArtifactError,
        sha256_hex, //
    },
    fsutil::{
        self,
        FileError, //
    },
    timestamp::Timestamp,
};

/// A feed directory that could not be built, signed or verified.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("artifact '{path}': {source}")]
    Artifact {
        path: PathBuf,
        #[source]
        source: ArtifactError,
    },
    #[error("'{path}': {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: IndexError,
    },
    #[error("unknown channel '{0}' (known: stable, test)")]
    Channel(String),
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("{0}")]
    Fetch(#[from] crate::fetch::FetchError),
    #[error("patch {label}: '{path}' {problem}")]
    Patch { label: String, path: PathBuf, problem: String },
    #[error("channel '{channel}' lists no kernel '{release}': add its patches (`kmend feed build`) first")]
    NoKernel { channel: String, release: String },
}

/// Writes a feed file world-readable (0644), so that a web server running
/// as another user can serve it.
fn write_public(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    fsutil::write_atomic(path, data).map_err(fsutil::at("write", path))?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(fsutil::at("chmod", path))?;
    Ok(())
}

/// Reads `<dir>/index.json`, or starts a new index when there is none.
pub fn load_index(dir: &Path) -> Result<Index, BuildError> {
    let path = dir.join(INDEX);
    match fs::read(&path) {
        Ok(bytes) => Index::parse(&bytes).map_err(|source| BuildError::Index { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::new(Timestamp::now())),
        Err(e) => Err(fsutil::at("read", &path)(e).into()),
    }
}

/// What [`add`] did.
pub struct Added {
    /// Every entry the channel now lists.
    pub listed: Vec<PatchEntry>,
    /// Ids of the added artifacts whose module carries no signature: they
    /// load only where the kernel does not insist on signatures.
    pub unsigned: Vec<String>,
}

/// Adds artifacts to `channel` of the feed in `dir` (created if needed):
/// copies each into `patches/`, lists it as released at `released`, and
/// rewrites index.json. Nothing is published until `kmend feed sign`.
pub fn add(dir: &Path, channel: &str, released: Timestamp, artifacts: &[PathBuf]) -> Result<Added, BuildError> {
    if !CHANNELS.contains(&channel) {
        return Err(BuildError::Channel(channel.to_owned()));
    }
    let mut index = load_index(dir)?;
    let patch_dir = dir.join(PATCH_DIR);
    fs::create_dir_all(&patch_dir).map_err(fsutil::at("create directory", &patch_dir))?;
    let mut unsigned = Vec::new();
    for path in artifacts {
        let bytes = fs::read(path).map_err(fsutil::at("read", path))?;
        let artifact =
            Artifact::from_bytes(&bytes).map_err(|source| BuildError::Artifact { path: path.clone(), source })?;
        if crate::module_signature::appended(&artifact.module).is_none() {
            unsigned.push(artifact.manifest.id.clone());
        }
        let name = artifact.file_name();
        let dest = patch_dir.join(&name);
        write_public(&dest, &bytes)?;
        let url = format!("{PATCH_DIR}/{name}");
        index.add(channel, &artifact, released, url, bytes.len() as u64, sha256_hex(&bytes));
    }
    index.generated = Timestamp::now();
    let path = dir.join(INDEX);
    write_public(&path, &index.to_bytes())?;
    let kernels = index.channels.get(channel).map(|c| c.kernels.as_slice()).unwrap_or_default();
    let listed = kernels.iter().flat_map(|k| k.core.iter().chain(&k.patches).cloned()).collect();
    Ok(Added { listed, unsigned })
}

/// Sets the coverage of kernel `release` on `channel` of the feed in `dir`
/// (every build of it the channel lists) and rewrites index.json; returns
/// how many kernel entries it changed. Nothing is published until `kmend
/// feed sign`.
pub fn set_coverage(dir: &Path, channel: &str, release: &str, coverage: &Coverage) -> Result<usize, BuildError> {
    if !CHANNELS.contains(&channel) {
        return Err(BuildError::Channel(channel.to_owned()));
    }
    let path = dir.join(INDEX);
    let mut index = Index::parse(&fs::read(&path).map_err(fsutil::at("read", &path))?).map_err(|source| BuildError::Index { path: path.clone(), source })?;
    let changed = index.set_coverage(channel, release, coverage);
    if changed == 0 {
        return Err(BuildError::NoKernel { channel: channel.to_owned(), release: release.to_owned() });
    }
    index.generated = Timestamp::now();
    write_public(&path, &index.to_bytes())?;
    Ok(changed)
}

/// Checks a feed directory the way an agent would, from the trusted root
/// `root` with nothing seen before: the TUF metadata, index.json, then
/// every listed artifact's size, hash and manifest.
pub fn verify_dir(dir: &Path, root: &Path) -> Result<usize, BuildError> {
    let dir = fs::canonicalize(dir).map_err(fsutil::at("open", dir))?;
    let fetcher = crate::fetch::Fetcher::new(&dir.display().to_string(), None, std::time::Duration::from_secs(60), None)?;
    let seen = tempfile::tempdir().map_err(fsutil::at("create temporary directory", Path::new("/tmp")))?;
    let feed = TrustedFeed::load(fetcher, root, TrustedFeed::read_root(root)?, seen.path())?;
    let path = dir.join(INDEX);
    let index = Index::parse(&feed.read(INDEX)?).map_err(|source| BuildError::Index { path, source })?;
    let mut checked = 0;
    for channel in index.channels.values() {
        for kernel in &channel.kernels {
            for p in kernel.core.iter().chain(&kernel.patches) {
                let file = dir.join(&p.url);
                let problem = |problem: String| BuildError::Patch { label: p.label(), path: file.clone(), problem };
                let name = p.url.strip_prefix(&format!("{PATCH_DIR}/")).unwrap_or(&p.url);
                let data = feed.read(name).map_err(|e| problem(e.to_string()))?;
                if data.len() as u64 != p.size || sha256_hex(&data) != p.sha256 {
                    return Err(problem("does not match its size and sha256 in index.json".into()));
                }
                let a = Artifact::from_bytes(&data).map_err(|e| problem(e.to_string()))?;
                if a.manifest.id != p.id || a.manifest.version != p.version || a.manifest.kernel != kernel.identity() {
                    return Err(problem("manifest id, version or kernel differs from index.json".into()));
                }
                if a.manifest.core != kernel.core.as_ref().is_some_and(|c| std::ptr::eq(c, p)) {
                    return Err(problem("a core module listed as a patch, or a patch as the core module".into()));
                }
                checked += 1;
            }
        }
    }
    Ok(checked)
}
