//! The signed side of a feed: TUF metadata (The Update Framework, written
//! and checked by AWS's `tough`, the library behind Bottlerocket's updater).
//!
//! `feed build` stages `index.json` and `patches/*.kmpatch`; this module
//! makes them trusted:
//! - [`init`] writes `metadata/1.root.json`, the trust anchor machines are
//!   given once (`/etc/kmend/root.json`): which keys sign which role, and
//!   how many of them must (threshold).
//! - [`sign`] publishes: `targets` lists index.json and every artifact by
//!   length and SHA-256, `snapshot` pins the targets version, `timestamp`
//!   pins the snapshot; each gets a version one above the last and an
//!   expiry, and the targets are copied to `targets/<sha256>.<name>`
//!   (consistent snapshots: a client reading during a publish never mixes
//!   two).
//! - [`rotate_root`] writes root version N+1, signed by the old root keys
//!   and the new ones, so machines follow a key change (or a revocation)
//!   without being touched.
//!
//! What each role stops is in docs/feed-format.md.

use std::{
    collections::HashMap,
    fs,
    num::NonZeroU64,
    os::unix::fs::PermissionsExt as _,
    path::{
        Path,
        PathBuf, //
    },
    time::Duration,
};

use aws_lc_rs::rand::SystemRandom;
use tough::{
    TargetName,
    editor::{
        RepositoryEditor,
        signed::{
            PathExists,
            SignedRole, //
        },
    },
    key_source::KeySource,
    schema::{
        KeyHolder,
        RoleKeys,
        RoleType,
        Root,
        Signed,
        Target,
        key::Key, //
    },
};

use super::{
    INDEX,
    PATCH_DIR,
    index::Index,
    keys::{
        self,
        SecretKey, //
    },
};
use crate::runtime;

/// Where the signed metadata goes, under the feed directory.
pub const METADATA_DIR: &str = "metadata";
/// Where the signed targets go (as `<sha256>.<name>`).
pub const TARGETS_DIR: &str = "targets";

/// A feed's metadata that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    #[error("'{path}': {what}")]
    Feed { path: PathBuf, what: String },
    #[error("{what}: {source}")]
    Tough {
        what: String,
        #[source]
        source: Box<tough::error::Error>,
    },
    #[error("{0}")]
    Runtime(String),
}

fn tough_err(what: impl Into<String>) -> impl FnOnce(tough::error::Error) -> RepoError {
    let what = what.into();
    move |source| RepoError::Tough { what, source: Box::new(source) }
}

fn feed_err(path: &Path, what: impl Into<String>) -> RepoError {
    RepoError::Feed { path: path.to_owned(), what: what.into() }
}

fn expiry(after: Duration) -> jiff::Timestamp {
    let secs = i64::try_from(after.as_secs()).unwrap_or(i64::MAX / 2);
    jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(secs)).unwrap_or(jiff::Timestamp::MAX)
}

fn sources(keys: &[SecretKey]) -> Vec<Box<dyn KeySource>> {
    keys.iter()
        .map(|k| Box::new(k.clone()) as Box<dyn KeySource>)
        .collect()
}

/// The highest `N.root.json` in `<dir>/metadata`, and N.
pub fn latest_root(dir: &Path) -> Result<(PathBuf, u64), RepoError> {
    let meta = dir.join(METADATA_DIR);
    let entries = fs::read_dir(&meta)
        .map_err(|e| feed_err(&meta, format!("no signed metadata ({e}): run `kmend feed init` first")))?;
    let best = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".root.json").and_then(|n| n.parse::<u64>().ok()).map(|n| (e.path(), n))
        })
        .max_by_key(|(_, n)| *n);
    best.ok_or_else(|| feed_err(&meta, "no N.root.json: run `kmend feed init` first"))
}

fn read_root(path: &Path) -> Result<Signed<Root>, RepoError> {
    let bytes = fs::read(path).map_err(|e| feed_err(path, format!("read failed: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| feed_err(path, format!("not TUF root metadata: {e}")))
}

/// A root listing `root_keys` (threshold `threshold`) for the root role and
/// `online` (threshold 1) for targets, snapshot and timestamp.
fn build_root(version: u64, root_keys: &[Key], threshold: u64, online: &[Key], expires: Duration) -> Result<Root, RepoError> {
    let too_many = |n: usize| RepoError::Feed {
        path: PathBuf::from("--threshold"),
        what: format!("threshold {threshold} but only {n} distinct root key(s)"),
    };
    let mut all: HashMap<_, Key> = HashMap::new();
    let ids = |keys: &[Key], all: &mut HashMap<_, Key>| {
        let mut v = Vec::new();
        for k in keys {
            if let Ok(id) = k.key_id() {
                if !v.contains(&id) {
                    v.push(id.clone());
                }
                all.insert(id, k.clone());
            }
        }
        v
    };
    let root_ids = ids(root_keys, &mut all);
    let online_ids = ids(online, &mut all);
    let threshold = NonZeroU64::new(threshold).ok_or_else(|| too_many(root_ids.len()))?;
    if threshold.get() > root_ids.len() as u64 {
        return Err(too_many(root_ids.len()));
    }
    let role = |keyids: Vec<_>, threshold| RoleKeys { keyids, threshold, _extra: HashMap::new() };
    let one = NonZeroU64::MIN;
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role(root_ids, threshold));
    roles.insert(RoleType::Targets, role(online_ids.clone(), one));
    roles.insert(RoleType::Snapshot, role(online_ids.clone(), one));
    roles.insert(RoleType::Timestamp, role(online_ids, one));
    Ok(Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version: NonZeroU64::new(version).unwrap_or(NonZeroU64::MIN),
        expires: expiry(expires),
        keys: all,
        roles,
        _extra: HashMap::new(),
    })
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|e| feed_err(path, format!("write failed: {e}")))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(|e| feed_err(path, format!("chmod failed: {e}")))
}

/// Signs `root` with `signers` (each checked against `holder`).
async fn sign_root(root: Root, holder: &Root, signers: &[SecretKey]) -> Result<SignedRole<Root>, RepoError> {
    let rng = SystemRandom::new();
    SignedRole::new(root, &KeyHolder::Root(holder.clone()), &sources(signers), &rng)
        .await
        .map_err(tough_err("sign root metadata (are these the root keys?)"))
}

/// `kmend feed init`: a new feed's root. `online` keys sign everyday
/// publishes (default: the root keys). Refuses a directory that has one.
pub fn init(dir: &Path, root_keys: &[SecretKey], threshold: u64, online: &[Key], expires: Duration) -> Result<PathBuf, RepoError> {
    let meta = dir.join(METADATA_DIR);
    if latest_root(dir).is_ok() {
        return Err(feed_err(&meta, "already has root metadata: use `kmend feed rotate-root` to change keys"));
    }
    let public: Vec<Key> = root_keys.iter().map(|k| k.public.clone()).collect();
    let online = if online.is_empty() { public.clone() } else { online.to_vec() };
    let root = build_root(1, &public, threshold, &online, expires)?;
    let signed = runtime::block_on(sign_root(root.clone(), &root, root_keys)).map_err(RepoError::Runtime)??;
    fs::create_dir_all(&meta).map_err(|e| feed_err(&meta, format!("create failed: {e}")))?;
    let path = meta.join("1.root.json");
    write_public(&path, signed.buffer())?;
    Ok(path)
}

/// `kmend feed rotate-root`: root N+1 with `new_keys` (and `online`),
/// signed by the current root's keys (`old_keys`, at least its threshold)
/// and by the new ones.
pub fn rotate_root(
    dir: &Path,
    old_keys: &[SecretKey],
    new_keys: &[SecretKey],
    threshold: u64,
    online: &[Key],
    expires: Duration,
) -> Result<PathBuf, RepoError> {
    let (path, n) = latest_root(dir)?;
    let old = read_root(&path)?.signed;
    let public: Vec<Key> = new_keys.iter().map(|k| k.public.clone()).collect();
    let online = if online.is_empty() { public.clone() } else { online.to_vec() };
    let root = build_root(n + 1, &public, threshold, &online, expires)?;
    let signed = runtime::block_on(async {
        let by_new = sign_root(root.clone(), &root, new_keys).await?;
        let by_old = sign_root(root.clone(), &old, old_keys).await?;
        by_new.add_old_signatures(by_old.signed().signatures.clone()).map_err(tough_err("merge root signatures"))
    })
    .map_err(RepoError::Runtime)??;
    // What every machine will check: a threshold of the current root's
    // keys and of the new root's keys. Refuse to write less.
    for (which, holder) in [("current", &old), ("new", &root)] {
        holder.verify_role(signed.signed()).map_err(|e| {
            feed_err(&path, format!("the new root is not signed by the threshold of {which} root keys: {e}"))
        })?;
    }
    let out = dir.join(METADATA_DIR).join(format!("{}.root.json", n + 1));
    write_public(&out, signed.buffer())?;
    Ok(out)
}

/// What a publish wrote.
#[derive(Debug, serde::Serialize)]
pub struct Published {
    /// Version of targets, snapshot and timestamp.
    pub version: u64,
    pub expires: String,
    pub root_version: u64,
    pub targets: Vec<String>,
}

/// The version the next publish gets: one above every version the feed has
/// published, so a client that saw any of them accepts it.
fn next_version(meta: &Path) -> u64 {
    let mut last = 0u64;
    for entry in fs::read_dir(meta).into_iter().flatten().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let role = ["timestamp.json", ".snapshot.json", ".targets.json"].iter().any(|s| name.ends_with(s));
        if !role {
            continue;
        }
        let version = fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["signed"]["version"].as_u64());
        last = last.max(version.unwrap_or(0));
    }
    last + 1
}

/// `kmend feed sign`: publishes the staged index and artifacts under new
/// targets, snapshot and timestamp metadata, valid for `expires`.
/// Run it after every `feed build`, and regularly (cron) so the timestamp
/// never expires: machines refuse an expired feed.
pub fn sign(dir: &Path, keys: &[SecretKey], expires: Duration) -> Result<Published, RepoError> {
    let (root_path, root_version) = latest_root(dir)?;
    let index_path = dir.join(INDEX);
    let index_bytes = fs::read(&index_path).map_err(|e| feed_err(&index_path, format!("read failed ({e}): run `kmend feed build` first")))?;
    let index = Index::parse(&index_bytes).map_err(|e| feed_err(&index_path, e.to_string()))?;
    let mut files = vec![(INDEX.to_owned(), index_path)];
    for channel in index.channels.values() {
        for kernel in &channel.kernels {
            for p in kernel.core.iter().chain(&kernel.patches) {
                let name = p.url.strip_prefix(&format!("{PATCH_DIR}/")).unwrap_or(&p.url).to_owned();
                if !files.iter().any(|(n, _)| *n == name) {
                    files.push((name, dir.join(&p.url)));
                }
            }
        }
    }
    let meta = dir.join(METADATA_DIR);
    let version = next_version(&meta);
    let nz = NonZeroU64::new(version).unwrap_or(NonZeroU64::MIN);
    let when = expiry(expires);
    let targets_dir = dir.join(TARGETS_DIR);
    runtime::block_on(async {
        let mut editor = RepositoryEditor::new(&root_path).await.map_err(tough_err(format!("read '{}'", root_path.display())))?;
        for (name, path) in &files {
            let target = Target::from_path(path).await.map_err(|e| feed_err(path, format!("hash failed: {e}")))?;
            let name = TargetName::new(name.as_str()).map_err(tough_err(format!("target name '{name}'")))?;
            editor.add_target(name, target).map_err(tough_err("add target"))?;
        }
        editor.targets_version(nz).map_err(tough_err("set targets version"))?;
        editor.targets_expires(when).map_err(tough_err("set targets expiry"))?;
        editor.snapshot_version(nz).snapshot_expires(when).timestamp_version(nz).timestamp_expires(when);
        let signed = editor.sign(&sources(keys)).await.map_err(tough_err("sign (are these the feed's online keys?)"))?;
        tokio::fs::create_dir_all(&targets_dir).await.map_err(|e| feed_err(&targets_dir, format!("create failed: {e}")))?;
        for (name, path) in &files {
            let target_name = TargetName::new(name.as_str()).map_err(tough_err("target name"))?;
            signed
                .copy_target(path, &targets_dir, PathExists::Skip, Some(&target_name))
                .await
                .map_err(tough_err(format!("copy '{}' into {TARGETS_DIR}/", path.display())))?;
        }
        // Metadata last: a client sees the new timestamp only once every
        // file it names is in place.
        signed.write(&meta).await.map_err(tough_err(format!("write metadata into '{}'", meta.display())))
    })
    .map_err(RepoError::Runtime)??;
    // World-readable, so a web server running as another user serves it.
    for d in [&meta, &targets_dir] {
        for entry in fs::read_dir(d).into_iter().flatten().filter_map(Result::ok) {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o644));
        }
    }
    Ok(Published {
        version,
        expires: when.to_string(),
        root_version,
        targets: files.into_iter().map(|(n, _)| n).collect(),
    })
}
