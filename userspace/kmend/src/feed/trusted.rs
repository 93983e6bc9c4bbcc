//! The agent's side of a signed feed: TUF metadata checked by `tough`
//! against the machine's trusted root, with the versions already seen kept
//! on disk (rollback protection survives restarts and reboots).
//!
//! Loading follows the TUF client workflow: walk `N+1.root.json` from the
//! trusted root (key rotation, revocation), then `timestamp.json` →
//! `snapshot` → `targets`, each signed by its role's threshold of keys, no
//! older than the version seen before, and not expired by the local clock.
//! Only then are `index.json` and artifacts read, each checked against the
//! length and SHA-256 the targets role lists.

use std::{
    path::{
        Path,
        PathBuf, //
    },
    sync::Arc,
};

use tough::{
    IntoVec as _,
    Repository,
    RepositoryLoader,
    TargetName,
    Transport,
    TransportError,
    TransportErrorKind,
    TransportStream,
    schema::RoleType, //
};
use url::Url;

use super::repo::{
    METADATA_DIR,
    TARGETS_DIR, //
};
use crate::{
    fetch::{
        FetchError,
        Fetcher,
        Source, //
    },
    runtime,
};

/// Largest file the transport reads (artifacts are at most 64 MiB; tough
/// enforces each file's exact length on top of this).
const MAX_FILE: u64 = 80 << 20;

/// A feed that cannot be trusted, or read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trusted root '{path}': {why} (see docs/feed-format.md: machines need the feed's root.json)")]
    Root { path: PathBuf, why: String },
    #[error(
        "feed metadata expired ({role} role): the feed has not been re-signed in time — a stale mirror, or someone \
         replaying old metadata to freeze this machine. The publisher must run `kmend feed sign`; if this machine's \
         clock is wrong, fix it"
    )]
    Expired { role: String },
    #[error(
        "rollback refused: the feed offers {role} version {offered}, older than version {seen} already trusted here — \
         a mirror or attacker is serving old metadata"
    )]
    Rollback { role: String, offered: u64, seen: u64 },
    #[error("the feed's signed metadata does not verify ({what}): {detail}")]
    Signature { what: String, detail: String },
    #[error("{0}")]
    Fetch(String),
    #[error("'{name}' is not listed in the feed's signed targets")]
    NotListed { name: String },
    #[error("'{name}': does not match its signed length and hash: {detail}")]
    Target { name: String, detail: String },
    #[error("feed metadata: {0}")]
    Other(String),
}

/// A tough [`Transport`] over kmend's [`Fetcher`] (its proxy, timeout and
/// TLS settings, and its error messages).
#[derive(Clone)]
struct FetcherTransport(Arc<Fetcher>);

impl std::fmt::Debug for FetcherTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FetcherTransport")
    }
}

#[tough::async_trait]
impl Transport for FetcherTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let fetcher = self.0.clone();
        let location = match url.scheme() {
            "file" => url.to_file_path().map(|p| p.display().to_string()).unwrap_or_default(),
            _ => url.to_string(),
        };
        let result = tokio::task::spawn_blocking(move || fetcher.get_location(&location, MAX_FILE)).await;
        let bytes = match result {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                let kind = if e.is_not_found() { TransportErrorKind::FileNotFound } else { TransportErrorKind::Other };
                return Err(TransportError::new_with_cause(kind, url, e));
            }
            Err(e) => return Err(TransportError::new_with_cause(TransportErrorKind::Other, url, e)),
        };
        Ok(Box::pin(futures::stream::iter([Ok(tough::Bytes::from(bytes))])))
    }
}

/// A feed whose metadata verified.
pub struct TrustedFeed {
    repo: Repository,
}

fn base_url(source: &Source, sub: &str) -> Result<Url, TrustError> {
    let url = match source {
        Source::Dir(dir) => Url::from_directory_path(dir.join(sub)).map_err(|()| format!("'{}' is not absolute", dir.display())),
        Source::Http { base, .. } => Url::parse(&format!("{base}/{sub}/")).map_err(|e| format!("'{base}': {e}")),
    };
    url.map_err(TrustError::Fetch)
}

/// Says what a tough error means for a sysadmin.
fn explain(e: tough::error::Error) -> TrustError {
    use tough::error::Error as E;
    let role = |r: &RoleType| r.to_string();
    match e {
        E::ExpiredMetadata { role: r, .. } => TrustError::Expired { role: role(&r) },
        E::OlderMetadata { role: r, current_version, new_version, .. } => {
            TrustError::Rollback { role: role(&r), offered: new_version, seen: current_version }
        }
        E::OlderSnapshotInTimestamp { snapshot_new, snapshot_old, .. } => {
            TrustError::Rollback { role: "snapshot".into(), offered: snapshot_new, seen: snapshot_old }
        }
        E::SnapshotRoleRollback { role, old_role_version, new_role_version, .. } => {
            TrustError::Rollback { role, offered: new_role_version, seen: old_role_version }
        }
        E::VerifyMetadata { role: r, source, .. } => {
            TrustError::Signature { what: format!("{} role", role(&r)), detail: source.to_string() }
        }
        E::VerifyRoleMetadata { role, source, .. } => {
            TrustError::Signature { what: format!("{role} role"), detail: source.to_string() }
        }
        E::VerifyTrustedMetadata { source, .. } => {
            TrustError::Signature { what: "trusted root".into(), detail: source.to_string() }
        }
        E::Transport { source, .. } => explain_transport(source),
        e @ E::SystemTimeSteppedBackward { .. } => {
            TrustError::Other(format!("{e}: the clock went back since the last check; fix the clock"))
        }
        other => TrustError::Other(other.to_string()),
    }
}

impl TrustedFeed {
    /// Reads the trust anchor at `root`.
    pub fn read_root(root: &Path) -> Result<Vec<u8>, TrustError> {
        std::fs::read(root).map_err(|e| TrustError::Root { path: root.to_owned(), why: format!("read failed: {e}") })
    }

    /// Loads and verifies the feed's metadata with `fetcher`, from the
    /// trusted root `shipped` (read from `root`); `datastore` keeps what
    /// was seen.
    pub fn load(fetcher: Fetcher, root: &Path, shipped: Vec<u8>, datastore: &Path) -> Result<Self, TrustError> {
        let root_err = |why: String| TrustError::Root { path: root.to_owned(), why };
        let shipped_version = root_version(&shipped).map_err(|e| root_err(format!("not TUF root metadata: {e}")))?;
        std::fs::create_dir_all(datastore)
            .map_err(|e| TrustError::Other(format!("'{}': create failed: {e}", datastore.display())))?;
        // Start from the newest root this machine has verified (tough keeps
        // it in the datastore but starts from the one it is given): after a
        // rotation, keys the feed revoked stay revoked even if a mirror
        // hides the newer root files.
        let stored = std::fs::read(datastore.join("root.json")).ok();
        let root_bytes = match stored {
            Some(b) if root_version(&b).is_ok_and(|v| v > shipped_version) => b,
            _ => shipped,
        };
        let metadata = base_url(fetcher.source(), METADATA_DIR)?;
        let targets = base_url(fetcher.source(), TARGETS_DIR)?;
        let transport = FetcherTransport(Arc::new(fetcher));
        let loaded = runtime::block_on(
            RepositoryLoader::new(&root_bytes, metadata, targets).transport(transport).datastore(datastore).load(),
        )
        .map_err(TrustError::Other)?;
        Ok(Self { repo: loaded.map_err(explain)? })
    }

    /// Reads target `name`, checked against its signed length and hash.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, TrustError> {
        let target = TargetName::new(name).map_err(|e| TrustError::Other(e.to_string()))?;
        // The transport reads the whole file when the stream opens, so a
        // transfer failure shows at open; the stream's own errors are the
        // length and hash checks.
        let mismatch = |e: &dyn std::fmt::Display| TrustError::Target { name: name.to_owned(), detail: innermost(e) };
        runtime::block_on(async {
            let stream = match self.repo.read_target(&target).await {
                Ok(Some(stream)) => stream,
                Ok(None) => return Err(TrustError::NotListed { name: name.to_owned() }),
                Err(e) => return Err(explain(e)),
            };
            stream.into_vec().await.map_err(|e| mismatch(&e))
        })
        .map_err(TrustError::Other)?
    }

    /// What this machine now trusts of the feed.
    pub fn signed(&self) -> crate::state::SignedFeed {
        let expires = [
            self.repo.timestamp().signed.expires,
            self.repo.snapshot().signed.expires,
            self.repo.targets().signed.expires,
            self.repo.root().signed.expires,
        ];
        crate::state::SignedFeed {
            root_version: self.repo.root().signed.version.get(),
            version: self.repo.timestamp().signed.version.get(),
            expires: expires.iter().min().map(ToString::to_string).unwrap_or_default(),
        }
    }
}

fn root_version(bytes: &[u8]) -> Result<u64, serde_json::Error> {
    serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(bytes).map(|r| r.signed.version.get())
}

/// The message of the deepest error in `e`'s chain that says something.
fn innermost(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    text.rsplit("error fetching").next().map(|t| t.trim_start_matches(['\'', ':', ' '])).unwrap_or(&text).to_owned()
}

fn explain_transport(source: TransportError) -> TrustError {
    let text = std::error::Error::source(&source).map(|s| s.to_string()).unwrap_or_else(|| source.to_string());
    TrustError::Fetch(text)
}

impl FetchError {
    /// The file does not exist (HTTP 404 or no such file): TUF's "no newer
    /// root" answer.
    pub fn is_not_found(&self) -> bool {
        match self {
            FetchError::Status { code, .. } => *code == 404,
            FetchError::File { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}
