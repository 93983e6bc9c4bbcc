//! The core module through the feed, as KernelCare ships its module: a
//! feed carries, per kernel build, kmend.ko built for it (a core artifact,
//! docs/feed-format.md), so a machine needs no compiler, headers or Rust.
//! `update` loads it before the first patch when kmend.ko is not loaded,
//! and caches the artifact; `boot` loads it from the cache, hash checked,
//! before re-applying the patches. A kmend.ko loaded some other way (a
//! local build, modules-load.d) is used as it is.

use super::{
    Agent,
    AgentError,
};
use crate::{
    artifact::{
        Artifact,
        CORE_ID,
        sha256_hex, //
    },
    feed::{
        index::Index,
        trusted::TrustedFeed,
    },
    fsutil,
    identity::KernelIdentity,
    state::{
        CoreModule,
        State, //
    },
    timestamp::Timestamp,
};

impl Agent {
    /// Makes sure kmend.ko is loaded before patches are applied: when it is
    /// not, the feed's core artifact for this kernel is downloaded,
    /// verified (TUF target, index hash, manifest, kernel identity) and
    /// loaded. No core in the feed and none loaded: this kernel is not
    /// supported.
    pub(super) fn ensure_core(&self, state: &mut State, index: &Index, feed: &TrustedFeed, kernel: &KernelIdentity) -> Result<(), AgentError> {
        if self.kernel.core_loaded() {
            return Ok(());
        }
        let channel = &self.config.policy.channel;
        let entry = index
            .core_for(channel, kernel)
            .ok_or_else(|| AgentError::NoCore { kernel: kernel.to_string(), channel: channel.clone() })?;
        let artifact = self.download(feed, entry, kernel)?;
        if !artifact.manifest.core {
            let what = "index.json lists it as the core module, its manifest says it is a patch".to_owned();
            return Err(AgentError::IdentityMismatch { label: entry.label(), what });
        }
        self.load_core(state, &artifact, "load-core")
    }

    /// At boot: loads the cached core module if kmend loaded one before and
    /// kmend.ko is not loaded now. Returns what happened, for the report.
    pub(super) fn reload_core(&self, state: &mut State, kernel: &KernelIdentity) -> Option<Result<u32, String>> {
        let core = state.core.clone()?;
        if self.kernel.core_loaded() {
            return None;
        }
        let path = self.paths.cache_dir().join(&core.file);
        if &core.kernel != kernel {
            // The machine booted another kernel: that module cannot load.
            state.core = None;
            let _ = fsutil::remove_durably(&path);
            return None;
        }
        let loaded = self.read_cached(&path, &core.sha256).and_then(|a| self.load_core(state, &a, "reload-core"));
        Some(loaded.map(|()| core.version).map_err(|e| e.to_string()))
    }

    /// Caches a verified core artifact, loads its module and records it.
    fn load_core(&self, state: &mut State, artifact: &Artifact, action: &str) -> Result<(), AgentError> {
        let m = &artifact.manifest;
        let label = (CORE_ID, Some(m.version));
        self.check_kernel(artifact, &self.identity()?)?;
        let (file, bytes, module) = self.cache_and_stage(artifact)?;
        if let Err(e) = self.kernel.load_core(&module) {
            self.journal(action, label, Some(m), Err(e.to_string()));
            return Err(e.into());
        }
        state.core = Some(CoreModule {
            version: m.version,
            kernel: m.kernel.clone(),
            sha256: sha256_hex(&bytes),
            file,
            loaded_at: Timestamp::now(),
        });
        state.save(&self.paths)?;
        self.journal(action, label, Some(m), Ok(()));
        tracing::info!("core module kmend.ko version {} loaded", m.version);
        Ok(())
    }
}
