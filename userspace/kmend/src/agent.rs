//! The agent's jobs: check the feed, update, apply an artifact, revert,
//! re-apply at boot. The CLI verbs and the daemon call these; every change
//! to what the kernel runs happens here, under one lock, behind the
//! crash-loop guard, and is written to the journal.
//!
//! Order of an apply, so that a crash or `kill -9` at any point leaves a
//! state the next run understands:
//! 1. the artifact is complete and verified in the cache (temporary file,
//!    hash check, fsync, rename);
//! 2. the marker `applying` is written and fsynced;
//! 3. the module is loaded;
//! 4. the marker is removed and `state.json` records the patch.
//!
//! A marker found later was left by a load that did not finish: from an
//! earlier boot it means the machine went down during the load, so the
//! patch is blocked (not re-applied automatically); from this boot it
//! means kmend itself was stopped, and the kernel's status says whether
//! the load happened.

use std::{
    fs,
    io::Write as _,
    path::{
        Path,
        PathBuf, //
    },
};

use serde::Serialize;

mod core_module;

use crate::{
    artifact::{
        self,
        Artifact,
        ArtifactError,
        sha256_hex, //
    },
    config::{
        Config,
        ConfigError, //
    },
    feed::{
        self,
        index::{
            Coverage,
            Index,
            IndexError,
            PatchEntry, //
        },
        trusted::{
            TrustError,
            TrustedFeed, //
        },
    },
    fetch::{
        FetchError,
        Fetcher, //
    },
    fsutil::{
        self,
        FileError, //
    },
    identity::{
        IdentityError,
        KernelIdentity, //
    },
    journal::{
        self,
        Entry, //
    },
    proxy,
    paths::Paths,
    policy::{
        self,
        Plan,
        PolicyError, //
    },
    state::{
        self,
        AppliedPatch,
        BlockedPatch,
        LastCheck,
        Marker,
        State,
        StateError, //
    },
    sys::{
        Kernel,
        SysError, //
    },
    timestamp::Timestamp,
};


/// Why an agent job failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no feed configured: set feed_url in '{0}'")]
    NoFeed(PathBuf),
    #[error(
        "kernel {kernel} is not supported: kmend.ko is not loaded and channel '{channel}' of the feed has no core module for it"
    )]
    NoCore { kernel: String, channel: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("feed '{url}': {source}")]
    Trust {
        url: String,
        #[source]
        source: TrustError,
    },
    #[error("feed '{url}': {source}")]
    Index {
        url: String,
        #[source]
        source: IndexError,
    },
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{what}: {source}")]
    Artifact {
        what: String,
        #[source]
        source: ArtifactError,
    },
    #[error("patch {label}: '{url}': hash mismatch: expected sha256 {expected} (signed index or the apply record), the file is {actual}")]
    HashMismatch { label: String, url: String, expected: String, actual: String },
    #[error("patch {label}: identity mismatch: {what}")]
    IdentityMismatch { label: String, what: String },
    #[error("running kernel: {0}")]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Sys(#[from] SysError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    File(#[from] FileError),
    #[error("patch '{0}' is already applied: revert it first to apply another version")]
    AlreadyApplied(String),
    #[error(
        "patch '{id}' was built against the internals of module '{module}', which is not loaded: load it first (modprobe {module}), then apply the patch"
    )]
    NeedsModule { id: String, module: String },
}

/// What a feed check found.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub time: Timestamp,
    pub feed: String,
    pub kernel: KernelIdentity,
    pub channel: String,
    pub plan: Plan,
    /// What the feed says live patches cover for this kernel.
    pub coverage: Coverage,
}

/// What an update did.
#[derive(Debug, Serialize)]
pub struct UpdateReport {
    pub check: CheckReport,
    pub applied: Vec<AppliedPatch>,
    pub superseded: Vec<String>,
    /// Why the gate (the fleet's rollout) held the update back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// Asked before an update applies anything: `Err(why)` holds it back.
pub type Gate<'a> = &'a mut dyn FnMut(&[policy::PatchRef]) -> Result<(), String>;

/// What `kmend boot` did.
#[derive(Debug, Default, Serialize)]
pub struct BootReport {
    /// Why nothing was done, when it was disabled.
    pub disabled: Option<String>,
    /// The core module loaded from the cache, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<String>,
    pub reapplied: Vec<String>,
    pub blocked: Vec<String>,
    pub skipped: Vec<(String, String)>,
    pub failed: Vec<(String, String)>,
}

/// The agent, for one run (config and paths read once).
pub struct Agent {
    pub paths: Paths,
    pub config: Config,
    pub kernel: Kernel,
    /// Who acts, for the journal: `cli:<user>`, `daemon` or `boot`.
    pub actor: String,
}

impl Agent {
    /// Reads the config under `paths` and picks the kernel backend.
    /// A host registered with a fleet server follows its group's policy
    /// (channel, delay, sticky) as the server last sent it.
    pub fn new(paths: Paths, actor: String) -> Result<Self, AgentError> {
        let config = Config::load(&paths.config_file())?;
        Ok(Self::with_config(paths, actor, config))
    }

    /// [`Self::new`] with the config already read (the daemon reads it
    /// once per cycle).
    pub fn with_config(paths: Paths, actor: String, mut config: Config) -> Self {
        if let Ok(Some(policy)) = crate::fleet::Registration::load(&paths).map(|r| r.and_then(|r| r.policy)) {
            if let Err(e) = crate::fleet::apply_group_policy(&policy, &mut config.policy) {
                tracing::warn!("fleet policy not applied: {e}");
            }
        }
        let kernel = Kernel::from_env(&paths);
        Self { paths, config, kernel, actor }
    }

    fn lock(&self) -> Result<fsutil::Lock, AgentError> {
        let path = self.paths.lock_file();
        Ok(fsutil::Lock::acquire(&path).map_err(fsutil::at("lock", &path))?)
    }

    /// Journals one action on patch `id` (`version` unknown for a bare module).
    fn journal(&self, action: &str, (id, version): (&str, Option<u32>), m: Option<&artifact::Manifest>, result: Result<(), String>) {
        let entry = Entry {
            time: Timestamp::now(),
            actor: self.actor.clone(),
            action: action.to_owned(),
            patch: Some(id.to_owned()),
            version,
            functions: m.map(|m| m.functions.iter().map(|f| format!("{}:{}", f.object, f.name)).collect()).unwrap_or_default(),
            cves: m.map(|m| m.cves.clone()).unwrap_or_default(),
            result: if result.is_ok() { "ok" } else { "error" }.to_owned(),
            error: result.err().map(|e| proxy::redact_text(&e)),
            prev: String::new(),
        };
        // The journal must not turn a done change into a reported failure:
        // say it loudly instead.
        if let Err(e) = journal::append(&self.paths, &entry) {
            tracing::error!("journal not written: {e}");
            eprintln!("kmend: warning: {e}");
        }
    }

    /// The running kernel's identity.
    pub fn identity(&self) -> Result<KernelIdentity, AgentError> {
        Ok(KernelIdentity::running(&self.paths)?)
    }

    /// Cleans up after an interrupted run (see the module docs); call with
    /// the lock held.
    pub fn recover(&self, state: &mut State) -> Result<(), AgentError> {
        let cache = self.paths.cache_dir();
        for name in fsutil::remove_stale_temporaries(&cache).map_err(fsutil::at("clean", &cache))? {
            tracing::info!("removed '{name}', left by an interrupted download");
        }
        let Some(marker) = state::read_marker(&self.paths)? else { return Ok(()) };
        let now_boot = state::boot_id(&self.paths);
        let label = (marker.id.as_str(), Some(marker.version));
        let manifest = Artifact::read(&cache.join(artifact::file_name(&marker.id, marker.version))).ok().map(|a| a.manifest);
        if marker.boot_id != now_boot {
            state.blocked.retain(|b| b.id != marker.id);
            state.blocked.push(BlockedPatch { id: marker.id.clone(), version: marker.version, since: marker.started });
            state.applied.retain(|p| p.id != marker.id);
            let why = format!("the machine went down while applying it at {}: not re-applied", marker.started);
            tracing::warn!("patch '{}': {why}", marker.id);
            self.journal("block", label, manifest.as_ref(), Err(why));
        } else if self.kernel.status()?.patch(&marker.id).is_some() {
            if let Some(m) = &manifest {
                let file = artifact::file_name(&m.id, m.version);
                let sha = fs::read(cache.join(&file)).map(|b| sha256_hex(&b)).unwrap_or_default();
                state.record_applied(AppliedPatch::from_manifest(m, None, sha, file));
            }
            self.journal("apply", label, manifest.as_ref(), Ok(()));
        } else {
            let why = "kmend was stopped while applying it; the kernel did not load it".to_owned();
            self.journal("interrupted", label, manifest.as_ref(), Err(why));
        }
        state.save(&self.paths)?;
        state::remove_marker(&self.paths)?;
        Ok(())
    }

    /// Refuses feed jobs on a machine with no feed before anything is
    /// written (no lock file, no state).
    fn require_feed(&self) -> Result<(), AgentError> {
        match self.config.feed_url {
            Some(_) => Ok(()),
            None => Err(AgentError::NoFeed(self.paths.config_file())),
        }
    }

    /// Loads the configured feed's signed metadata (TUF), checked against
    /// the trusted root and the versions this machine has seen.
    /// The URL returned is for messages: credentials hidden.
    pub fn trusted_feed(&self) -> Result<(TrustedFeed, String), AgentError> {
        let secret_url = self.config.feed_url.clone().ok_or_else(|| AgentError::NoFeed(self.paths.config_file()))?;
        let ca = self.config.ca_certs.as_deref().map(|p| self.paths.at(p));
        let fetcher = Fetcher::new(&secret_url, self.config.proxy.as_deref(), self.config.timeout, ca.as_deref())?;
        let url = proxy::redact(&secret_url);
        let root = self.paths.at(&self.config.root);
        let trust = |source| AgentError::Trust { url: url.clone(), source };
        let shipped = TrustedFeed::read_root(&root).map_err(trust)?;
        let seen = self.paths.tuf_dir(&shipped);
        let feed = TrustedFeed::load(fetcher, &root, shipped, &seen).map_err(trust)?;
        Ok((feed, url))
    }

    /// Fetches the feed's signed metadata, then index.json through it.
    pub fn fetch_index(&self) -> Result<(Index, TrustedFeed, String), AgentError> {
        let (feed, url) = self.trusted_feed()?;
        let bytes = feed.read(feed::INDEX).map_err(|source| AgentError::Trust { url: url.clone(), source })?;
        let index = Index::parse(&bytes).map_err(|source| AgentError::Index { url: url.clone(), source })?;
        Ok((index, feed, url))
    }

    /// Checks the feed; `load_core`: also loads the feed's core module if
    /// kmend.ko is not loaded (an update; a check changes nothing).
    fn check_locked(&self, state: &mut State, force: bool, load_core: bool) -> Result<(CheckReport, TrustedFeed), AgentError> {
        let time = Timestamp::now();
        // Stored and shown: never with its credentials.
        let feed_url = proxy::redact(self.config.feed_url.as_deref().unwrap_or_default());
        let result = (|| {
            let kernel = self.identity()?;
            let (index, fetcher, url) = self.fetch_index()?;
            if load_core {
                self.ensure_core(state, &index, &fetcher, &kernel)?;
            }
            let applied = self.applied_refs(state)?;
            let loaded = |m: &str| self.kernel.module_loaded(m);
            let plan = policy::plan(&index, &kernel, &self.config.policy, time, &applied, &state.blocked_refs(), force, &loaded)?;
            let channel = self.config.policy.channel.clone();
            let coverage = index.kernel(&channel, &kernel).map(|k| k.coverage.clone()).unwrap_or_default();
            Ok((CheckReport { time, feed: url, kernel, channel, plan, coverage }, fetcher))
        })();
        let succeeded = match &result {
            Ok(_) => Some(time),
            Err(_) => state.last_check.as_ref().and_then(LastCheck::last_success),
        };
        state.last_check = Some(match &result {
            Ok((r, feed)) => LastCheck {
                time,
                feed: feed_url,
                supported: Some(true),
                target: r.plan.target.clone(),
                error: None,
                signed: Some(feed.signed()),
                succeeded,
                coverage: Some(r.coverage.clone()),
            },
            Err(e) => LastCheck {
                time,
                feed: feed_url,
                supported: matches!(e, AgentError::Policy(PolicyError::Unsupported { .. }) | AgentError::NoCore { .. })
                    .then_some(false),
                target: Vec::new(),
                error: Some(proxy::redact_text(&e.to_string())),
                signed: None,
                succeeded,
                coverage: None,
            },
        });
        state.save(&self.paths)?;
        result
    }

    /// Applied patches as the policy sees them: recorded in the state and
    /// still listed by the kernel.
    fn applied_refs(&self, state: &State) -> Result<Vec<policy::PatchRef>, AgentError> {
        // No kmend.ko: nothing is applied (a check before the first update
        // of a machine that gets its core module from the feed).
        if !self.kernel.core_loaded() {
            return Ok(Vec::new());
        }
        let status = self.kernel.status()?;
        Ok(state.applied.iter().filter(|p| status.patch(&p.id).is_some()).map(AppliedPatch::patch_ref).collect())
    }

    /// Checks the feed (no change to the kernel); records the result.
    pub fn check(&self, force: bool) -> Result<CheckReport, AgentError> {
        self.require_feed()?;
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        self.recover(&mut state)?;
        Ok(self.check_locked(&mut state, force, false)?.0)
    }

    /// Checks the feed, downloads what the policy selects and applies it.
    /// Nothing is applied unless every download is complete and verified.
    /// The outcome is kept in the state (metrics: `kmend_last_update_success`).
    pub fn update(&self, force: bool) -> Result<UpdateReport, AgentError> {
        self.update_gated(force, &mut |_| Ok(()))
    }

    /// [`Self::update`], asking `gate` before applying anything (the
    /// daemon in a fleet group with a rollout gate).
    pub fn update_gated(&self, force: bool, gate: Gate) -> Result<UpdateReport, AgentError> {
        self.require_feed()?;
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        self.recover(&mut state)?;
        let result = self.update_locked(&mut state, force, gate);
        let error = result.as_ref().err().map(|e| proxy::redact_text(&e.to_string()));
        state.last_update = Some(state::UpdateOutcome { time: Timestamp::now(), error });
        state.save(&self.paths)?;
        result
    }

    /// Records the outcome of a `kmend verify` (under the lock, so that a
    /// concurrent update does not lose it).
    pub fn record_verification(&self, v: state::Verification) -> Result<(), AgentError> {
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        state.record_verification(v);
        Ok(state.save(&self.paths)?)
    }

    fn update_locked(&self, state: &mut State, force: bool, gate: Gate) -> Result<UpdateReport, AgentError> {
        let (check, fetcher) = self.check_locked(state, force, true)?;
        if !check.plan.apply.is_empty() {
            let refs: Vec<policy::PatchRef> =
                check.plan.apply.iter().map(|e| policy::PatchRef { id: e.id.clone(), version: e.version }).collect();
            if let Err(why) = gate(&refs) {
                return Ok(UpdateReport { check, applied: Vec::new(), superseded: Vec::new(), held: Some(why) });
            }
        }
        let mut ready = Vec::new();
        for entry in &check.plan.apply {
            ready.push((self.download(&fetcher, entry, &check.kernel)?, entry.released));
        }
        // All or nothing: if one load fails, the patches this update
        // already applied are reverted (newest first) before the error is
        // returned, so the machine stays at the level it had.
        let mut applied: Vec<AppliedPatch> = Vec::new();
        for (artifact, released) in ready {
            match self.install(state, &artifact, Some(released), "apply") {
                Ok(record) => applied.push(record),
                // A feed written before index.json listed a patch's
                // modules (the plan holds such fixes back otherwise): the
                // fix waits for its module, the others go on.
                Err(AgentError::NeedsModule { id, module }) => {
                    tracing::info!("patch '{id}' fixes module {module}, which is not loaded: applied by the first update after it loads");
                }
                Err(e) => {
                    for done in applied.iter().rev() {
                        if let Err(undo) = self.revert_locked(state, &done.id, "rollback") {
                            tracing::error!("patch '{}' stays applied: rollback failed: {undo}", done.id);
                        }
                    }
                    return Err(e);
                }
            }
        }
        let mut superseded = Vec::new();
        // Only a cumulative patch that is applied supersedes anything.
        let cumulative = check.plan.target.first().filter(|p| p.replace);
        if cumulative.is_some_and(|c| state.applied.iter().any(|a| a.id == c.id && a.version == c.version)) {
            let status = self.kernel.status()?;
            for id in &check.plan.supersede {
                if status.patch(id).is_some() {
                    self.revert_locked(state, id, "supersede")?;
                    superseded.push(id.clone());
                }
            }
        }
        Ok(UpdateReport { check, applied, superseded, held: None })
    }

    /// Downloads one patch (to a temporary file in the cache directory) and
    /// verifies it against the index entry and the running kernel.
    fn download(&self, feed: &TrustedFeed, entry: &PatchEntry, kernel: &KernelIdentity) -> Result<Artifact, AgentError> {
        let url = entry.url.clone();
        let name = entry.url.strip_prefix(&format!("{}/", feed::PATCH_DIR)).unwrap_or(&entry.url);
        // The signed targets role fixes the artifact's length and hash;
        // index.json's own sha256 is checked too (they must agree).
        let bytes = feed.read(name).map_err(|source| AgentError::Trust { url: url.clone(), source })?;
        let actual = sha256_hex(&bytes);
        if actual != entry.sha256 {
            return Err(AgentError::HashMismatch { label: entry.label(), url, expected: entry.sha256.clone(), actual });
        }
        let artifact = Artifact::from_bytes(&bytes)
            .map_err(|source| AgentError::Artifact { what: format!("patch {}: '{url}'", entry.label()), source })?;
        let m = &artifact.manifest;
        if m.id != entry.id || m.version != entry.version {
            let what = format!("the artifact is '{}' version {}, index.json lists another", m.id, m.version);
            return Err(AgentError::IdentityMismatch { label: entry.label(), what });
        }
        self.check_kernel(&artifact, kernel)?;
        // The temporary file goes away here; `install` caches the artifact
        // once every download of the update has been verified.
        Ok(artifact)
    }

    fn check_kernel(&self, artifact: &Artifact, kernel: &KernelIdentity) -> Result<(), AgentError> {
        let m = &artifact.manifest;
        if &m.kernel != kernel {
            let what = format!("built for kernel {}, running kernel is {kernel}", m.kernel);
            return Err(AgentError::IdentityMismatch { label: format!("'{}' version {}", m.id, m.version), what });
        }
        Ok(())
    }

    /// Applies a verified artifact (see the module docs for the order).
    fn install(&self, state: &mut State, artifact: &Artifact, released: Option<Timestamp>, action: &str) -> Result<AppliedPatch, AgentError> {
        let m = &artifact.manifest;
        let label = (m.id.as_str(), Some(m.version));
        self.check_kernel(artifact, &self.identity()?)?;
        if self.kernel.status()?.patch(&m.id).is_some() {
            return Err(AgentError::AlreadyApplied(m.id.clone()));
        }
        if let Some(module) = m.links.iter().find(|l| !self.kernel.module_loaded(l)) {
            let e = AgentError::NeedsModule { id: m.id.clone(), module: module.clone() };
            self.journal(action, label, Some(m), Err(e.to_string()));
            return Err(e);
        }
        let (file, bytes, module) = self.cache_and_stage(artifact)?;
        let marker = Marker {
            id: m.id.clone(),
            version: m.version,
            started: Timestamp::now(),
            boot_id: state::boot_id(&self.paths),
            actor: self.actor.clone(),
        };
        state::write_marker(&self.paths, &marker)?;
        let loaded = self.kernel.load_module(&module, &m.id, &m.functions);
        state::remove_marker(&self.paths)?;
        if let Err(e) = loaded {
            self.journal(action, label, Some(m), Err(e.to_string()));
            return Err(e.into());
        }
        let record = AppliedPatch::from_manifest(m, released, sha256_hex(&bytes), file);
        state.record_applied(record.clone());
        state.save(&self.paths)?;
        self.journal(action, label, Some(m), Ok(()));
        tracing::info!("patch '{}' version {} applied", m.id, m.version);
        Ok(record)
    }

    /// Writes a verified artifact to the cache (for boot; unchanged bytes
    /// are not rewritten) and its module to a closed temporary file there,
    /// ready to load. Returns the cached file's name, its bytes and the
    /// module's path (removed when dropped).
    fn cache_and_stage(&self, artifact: &Artifact) -> Result<(String, Vec<u8>, tempfile::TempPath), AgentError> {
        let cache = self.paths.cache_dir();
        let file = artifact.file_name();
        let cached = cache.join(&file);
        let bytes = artifact.to_bytes();
        if fs::read(&cached).ok().as_deref() != Some(&bytes[..]) {
            fsutil::write_atomic(&cached, &bytes).map_err(fsutil::at("write", &cached))?;
        }
        let mut module = fsutil::temp_in(&cache).map_err(fsutil::at("create temporary file in", &cache))?;
        module.write_all(&artifact.module).map_err(fsutil::at("write", module.path()))?;
        // Closed: the kernel refuses to load a file open for writing (ETXTBSY).
        Ok((file, bytes, module.into_temp_path()))
    }

    /// `kmend apply <artifact>`: verifies the artifact against the running
    /// kernel, applies it, and reverts what a cumulative patch supersedes.
    pub fn apply_artifact(&self, path: &Path) -> Result<(AppliedPatch, Vec<String>), AgentError> {
        let artifact = Artifact::read(path).map_err(|source| AgentError::Artifact { what: format!("'{}'", path.display()), source })?;
        // Before touching anything: this artifact must be for this kernel.
        self.check_kernel(&artifact, &self.identity()?)?;
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        self.recover(&mut state)?;
        let record = self.install(&mut state, &artifact, None, "apply")?;
        let mut superseded = Vec::new();
        if record.replace {
            let others: Vec<String> = state.applied.iter().filter(|p| p.id != record.id).map(|p| p.id.clone()).collect();
            let status = self.kernel.status()?;
            for id in others.into_iter().filter(|id| status.patch(id).is_some()) {
                self.revert_locked(&mut state, &id, "supersede")?;
                superseded.push(id);
            }
        }
        Ok((record, superseded))
    }

    /// `kmend apply <module.ko>`: a bare patch module, without a manifest.
    /// Loaded like an artifact (under the lock, behind the crash-loop
    /// marker, journalled) and recorded with version 0, so `status` and
    /// `uname` count it; not cached, so not re-applied at boot.
    pub fn apply_module(&self, path: &Path, id: &str) -> Result<AppliedPatch, AgentError> {
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        self.recover(&mut state)?;
        if self.kernel.status()?.patch(id).is_some() {
            return Err(AgentError::AlreadyApplied(id.to_owned()));
        }
        let bytes = fs::read(path).map_err(fsutil::at("read", path))?;
        let marker = Marker {
            id: id.to_owned(),
            version: 0,
            started: Timestamp::now(),
            boot_id: state::boot_id(&self.paths),
            actor: self.actor.clone(),
        };
        state::write_marker(&self.paths, &marker)?;
        let loaded = self.kernel.load_module(path, id, &[]);
        state::remove_marker(&self.paths)?;
        if let Err(e) = loaded {
            self.journal("apply", (id, None), None, Err(e.to_string()));
            return Err(e.into());
        }
        let replace = self.kernel.status()?.patch(id).is_some_and(|p| p.replace);
        let record = AppliedPatch {
            id: id.to_owned(),
            version: 0,
            description: format!("bare module {}", path.display()),
            cves: Vec::new(),
            replace,
            functions: Vec::new(),
            released: None,
            applied_at: Timestamp::now(),
            sha256: sha256_hex(&bytes),
            file: String::new(),
        };
        state.record_applied(record.clone());
        state.save(&self.paths)?;
        self.journal("apply", (id, None), None, Ok(()));
        Ok(record)
    }

    /// `kmend revert <id>`: reverts the patch, unloads its module and
    /// forgets it (it is not re-applied at boot). Returns whether the
    /// module could be unloaded.
    pub fn revert(&self, id: &str) -> Result<bool, AgentError> {
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        self.revert_locked(&mut state, id, "revert")
    }

    fn revert_locked(&self, state: &mut State, id: &str, action: &str) -> Result<bool, AgentError> {
        let record = state.applied(id).cloned();
        let manifest = record.as_ref().and_then(|r| Artifact::read(&self.paths.cache_dir().join(&r.file)).ok()).map(|a| a.manifest);
        let label = (id, record.as_ref().map(|r| r.version));
        if let Err(e) = self.kernel.revert(id) {
            self.journal(action, label, manifest.as_ref(), Err(e.to_string()));
            return Err(e.into());
        }
        // The patch is reverted; a module that stays loaded is harmless but
        // worth saying.
        let unloaded = match self.kernel.unload_module(id) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("kmend: warning: {e}");
                false
            }
        };
        if let Some(r) = state.forget(id) {
            // A bare module has no cached file.
            if !r.file.is_empty() {
                let cached = self.paths.cache_dir().join(&r.file);
                fsutil::remove_durably(&cached).map_err(fsutil::at("remove", &cached))?;
            }
            state.save(&self.paths)?;
        }
        self.journal(action, label, manifest.as_ref(), Ok(()));
        Ok(unloaded)
    }

    /// `kmend unload`: reverts every applied patch, newest first.
    pub fn unload_all(&self) -> Result<Vec<String>, AgentError> {
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        let status = self.kernel.status()?;
        let mut done = Vec::new();
        for p in status.patches.iter().rev() {
            self.revert_locked(&mut state, &p.id, "revert")?;
            done.push(p.id.clone());
        }
        Ok(done)
    }

    /// A cached artifact, refused unless its bytes are the ones verified
    /// when it was applied (`sha256` recorded then): a file changed in the
    /// cache since is never loaded.
    fn read_cached(&self, path: &Path, sha256: &str) -> Result<Artifact, AgentError> {
        let bytes = fs::read(path).map_err(fsutil::at("read", path))?;
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(AgentError::HashMismatch {
                label: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                url: path.display().to_string(),
                expected: sha256.to_owned(),
                actual,
            });
        }
        Artifact::from_bytes(&bytes).map_err(|source| AgentError::Artifact { what: format!("'{}'", path.display()), source })
    }

    /// Why the boot-time re-apply is off, if it is.
    pub fn boot_disabled(&self) -> Option<String> {
        if !self.config.install_on_reboot {
            return Some(format!("install_on_reboot = false in '{}'", self.paths.config_file().display()));
        }
        let disable = self.paths.disable_file();
        if disable.exists() {
            return Some(format!("'{}' exists", disable.display()));
        }
        let cmdline = fs::read_to_string(self.paths.cmdline()).unwrap_or_default();
        cmdline
            .split_whitespace()
            .find(|w| matches!(*w, "nokmend" | "kmend.disable" | "kmend.disable=1"))
            .map(|w| format!("'{w}' is on the kernel command line"))
    }

    /// `kmend boot`: re-applies the cached patches, in the order they were
    /// applied, before the network is up; skips blocked ones.
    pub fn boot(&self) -> Result<BootReport, AgentError> {
        let mut report = BootReport::default();
        if let Some(why) = self.boot_disabled() {
            tracing::info!("boot re-apply disabled: {why}");
            report.disabled = Some(why);
            return Ok(report);
        }
        let _lock = self.lock()?;
        let mut state = State::load(&self.paths)?;
        self.recover(&mut state)?;
        report.blocked = state.blocked.iter().map(|b| b.id.clone()).collect();
        let kernel = self.identity()?;
        match self.reload_core(&mut state, &kernel) {
            Some(Ok(version)) => report.core = Some(format!("kmend.ko version {version} loaded from the cache")),
            Some(Err(e)) => report.failed.push((artifact::CORE_ID.to_owned(), e)),
            None => {}
        }
        if !self.kernel.core_loaded() && !state.applied.is_empty() {
            let why = "kmend.ko is not loaded (no core module cached for this kernel)".to_owned();
            report.failed.extend(state.applied.iter().map(|p| (p.id.clone(), why.clone())));
            state.save(&self.paths)?;
            return Ok(report);
        }
        let status = if self.kernel.core_loaded() { self.kernel.status()? } else { Default::default() };
        for record in state.applied.clone() {
            if status.patch(&record.id).is_some() {
                report.skipped.push((record.id.clone(), "already applied".into()));
                continue;
            }
            if record.file.is_empty() {
                state.forget(&record.id);
                report.skipped.push((record.id.clone(), "applied from a bare module: not re-applied at boot".into()));
                continue;
            }
            let path = self.paths.cache_dir().join(&record.file);
            let result = self
                .read_cached(&path, &record.sha256)
                .map(|a| if a.manifest.kernel == kernel { Some(a) } else { None });
            match result {
                Ok(Some(a)) => match self.install(&mut state, &a, record.released, "reapply") {
                    Ok(_) => report.reapplied.push(record.id.clone()),
                    Err(e) => report.failed.push((record.id.clone(), e.to_string())),
                },
                Ok(None) => {
                    // Cached for another kernel (the machine booted a new one).
                    state.forget(&record.id);
                    let _ = fsutil::remove_durably(&path);
                    report.skipped.push((record.id.clone(), "built for another kernel".into()));
                }
                Err(e) => {
                    state.forget(&record.id);
                    self.journal("reapply", (&record.id, Some(record.version)), None, Err(e.to_string()));
                    report.failed.push((record.id.clone(), e.to_string()));
                }
            }
        }
        state.save(&self.paths)?;
        Ok(report)
    }
}
