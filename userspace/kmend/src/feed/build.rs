//! Writing a feed directory: add artifacts to a channel, sign, verify.

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
    SIGNATURE,
    index::{
        CHANNELS,
        Index,
        IndexError,
        PatchEntry, //
    },
    sign::{
        self,
        SignError, //
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
    Sign(#[from] SignError),
    #[error("patch {label}: '{path}' {problem}")]
    Patch { label: String, path: PathBuf, problem: String },
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

/// Adds artifacts to `channel` of the feed in `dir` (created if needed):
/// copies each into `patches/`, lists it as released at `released`, and
/// rewrites index.json. The old signature is removed: sign again.
pub fn add(dir: &Path, channel: &str, released: Timestamp, artifacts: &[PathBuf]) -> Result<Vec<PatchEntry>, BuildError> {
    if !CHANNELS.contains(&channel) {
        return Err(BuildError::Channel(channel.to_owned()));
    }
    let mut index = load_index(dir)?;
    let patch_dir = dir.join(PATCH_DIR);
    fs::create_dir_all(&patch_dir).map_err(fsutil::at("create directory", &patch_dir))?;
    for path in artifacts {
        let bytes = fs::read(path).map_err(fsutil::at("read", path))?;
        let artifact =
            Artifact::from_bytes(&bytes).map_err(|source| BuildError::Artifact { path: path.clone(), source })?;
        let name = artifact.file_name();
        let dest = patch_dir.join(&name);
        fsutil::write_atomic(&dest, &bytes).map_err(fsutil::at("write", &dest))?;
        let url = format!("{PATCH_DIR}/{name}");
        index.add(channel, &artifact, released, url, bytes.len() as u64, sha256_hex(&bytes));
    }
    index.generated = Timestamp::now();
    let path = dir.join(INDEX);
    fsutil::write_atomic(&path, &index.to_bytes()).map_err(fsutil::at("write", &path))?;
    let sig = dir.join(SIGNATURE);
    fsutil::remove_durably(&sig).map_err(fsutil::at("remove", &sig))?;
    let kernels = index.channels.get(channel).map(|c| c.kernels.as_slice()).unwrap_or_default();
    Ok(kernels.iter().flat_map(|k| k.patches.iter().cloned()).collect())
}

/// Signs `<dir>/index.json` with the secret key in `key_file`.
pub fn sign_dir(dir: &Path, key_file: &Path) -> Result<PathBuf, BuildError> {
    let key = sign::secret_key(&sign::read_key_file(key_file)?, &format!("secret key '{}'", key_file.display()))?;
    let path = dir.join(INDEX);
    let bytes = fs::read(&path).map_err(fsutil::at("read", &path))?;
    Index::parse(&bytes).map_err(|source| BuildError::Index { path: path.clone(), source })?;
    let sig_path = dir.join(SIGNATURE);
    fsutil::write_atomic(&sig_path, sign::sign(&bytes, &key).as_bytes()).map_err(fsutil::at("write", &sig_path))?;
    Ok(sig_path)
}

/// Checks a feed directory the way an agent would: the signature with
/// `keys`, then every listed artifact's size, hash and manifest.
pub fn verify_dir(dir: &Path, keys: &[ed25519_dalek::VerifyingKey]) -> Result<usize, BuildError> {
    let path = dir.join(INDEX);
    let bytes = fs::read(&path).map_err(fsutil::at("read", &path))?;
    let sig_path = dir.join(SIGNATURE);
    let sig = fs::read_to_string(&sig_path).map_err(fsutil::at("read", &sig_path))?;
    sign::verify(&bytes, &sig, keys)?;
    let index = Index::parse(&bytes).map_err(|source| BuildError::Index { path, source })?;
    let mut checked = 0;
    for channel in index.channels.values() {
        for kernel in &channel.kernels {
            for p in &kernel.patches {
                let file = dir.join(&p.url);
                let problem = |problem: String| BuildError::Patch { label: p.label(), path: file.clone(), problem };
                let data = fs::read(&file).map_err(|e| problem(format!("read failed: {e}")))?;
                if data.len() as u64 != p.size || sha256_hex(&data) != p.sha256 {
                    return Err(problem("does not match its size and sha256 in index.json".into()));
                }
                let a = Artifact::from_bytes(&data).map_err(|e| problem(e.to_string()))?;
                if a.manifest.id != p.id || a.manifest.version != p.version || a.manifest.kernel != kernel.identity() {
                    return Err(problem("manifest id, version or kernel differs from index.json".into()));
                }
                checked += 1;
            }
        }
    }
    Ok(checked)
}
