//! What the machine runs, as users and scanners see it: the kernel's
//! status joined with kmend's state (managed patches, blocks, last check),
//! the effective kernel version and the CVEs fixed.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    agent::AgentError,
    feed::index::{
        PatchEntry,
        RebootCve, //
    },
    identity::{
        self,
        KernelIdentity, //
    },
    paths::Paths,
    state::{
        AppliedPatch,
        BlockedPatch,
        LastCheck,
        State, //
    },
    status::KernelStatus,
    sys::Kernel,
    timestamp::Timestamp,
};

/// The kernel's coverage, as Canonical's client reports it: whether live
/// patches still come for it, or a reboot into a newer kernel is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoverageState {
    /// The feed makes live patches for this kernel.
    Covered,
    /// The feed's coverage of this kernel ended: reboot into a newer one.
    UpgradeRequired,
    /// The kernel reached its end of life: no more live patches.
    EndOfLife,
    /// The feed has nothing for this kernel.
    Unsupported,
    /// No successful check yet.
    Unknown,
}

/// Coverage as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CoverageReport {
    pub state: CoverageState,
    /// When coverage ends (or ended), if the feed says.
    pub until: Option<Timestamp>,
    /// Known CVEs of this kernel that no live patch fixes.
    pub needs_reboot: Vec<RebootCve>,
}

impl CoverageReport {
    /// From the last check, judged at `now` (coverage can end between checks).
    pub fn of(last: Option<&LastCheck>, now: Timestamp) -> Self {
        let unknown = Self { state: CoverageState::Unknown, until: None, needs_reboot: Vec::new() };
        let Some(last) = last else { return unknown };
        if last.supported == Some(false) {
            return Self { state: CoverageState::Unsupported, ..unknown };
        }
        let Some(c) = &last.coverage else { return unknown };
        let state = if c.end_of_life {
            CoverageState::EndOfLife
        } else if c.until.is_some_and(|u| u < now) {
            CoverageState::UpgradeRequired
        } else {
            CoverageState::Covered
        };
        Self { state, until: c.until, needs_reboot: c.needs_reboot.clone() }
    }
}

/// The one-word summary `status` exits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    UpToDate,
    NothingApplied,
    UpdatesAvailable,
    KernelUnsupported,
}

/// Everything `status`, `list`, `cves`, `uname` and `report` show.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// Version of the kernel's status format (0: kmend.ko not loaded).
    pub version: u32,
    /// Whether kmend.ko is loaded; when not, nothing is applied and
    /// `kmend update` loads the feed's core module for this kernel.
    pub core_loaded: bool,
    /// What the kernel runs (from kmend.ko), oldest first.
    pub patches: Vec<crate::status::PatchStatus>,
    pub kernel: Option<KernelIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_error: Option<String>,
    /// `uname -r` as a scanner should read it.
    pub effective_version: String,
    /// Patches applied from artifacts and still in the kernel.
    pub managed: Vec<AppliedPatch>,
    pub blocked: Vec<BlockedPatch>,
    pub last_check: Option<LastCheck>,
    /// What the last check selected that is not applied.
    pub pending: Vec<PatchEntry>,
    /// What live patches cover for this kernel (from the last check).
    pub coverage: CoverageReport,
    /// How the last update went.
    pub last_update: Option<crate::state::UpdateOutcome>,
    /// The last `kmend verify` of each applied patch.
    pub verifications: Vec<crate::state::Verification>,
    /// Whether the kernel loads only signed modules (Secure Boot lockdown,
    /// `module.sig_enforce`): then the feed's modules must be signed by a
    /// key it trusts.
    pub module_signatures: crate::module_signature::Policy,
    pub summary: Summary,
}

/// `<release>-kmend<N>`, N the highest version among the applied managed
/// patches; the plain release when none is applied.
pub fn effective_release(release: &str, managed: &[AppliedPatch]) -> String {
    match managed.iter().map(|p| p.version).max() {
        Some(n) => format!("{release}-kmend{n}"),
        None => release.to_owned(),
    }
}

impl Overview {
    /// Reads the kernel's status and kmend's state (no network).
    pub fn gather(paths: &Paths, kernel: &Kernel) -> Result<Self, AgentError> {
        let core_loaded = kernel.core_loaded();
        let status: KernelStatus = if core_loaded { kernel.status()? } else { KernelStatus::default() };
        let state = State::load(paths)?;
        let (kernel_id, kernel_error) = match KernelIdentity::running(paths) {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let release = kernel_id.as_ref().map(|k| k.release.clone()).or_else(|| identity::release(paths).ok()).unwrap_or_default();
        let managed: Vec<AppliedPatch> = state.applied.iter().filter(|p| status.patch(&p.id).is_some()).cloned().collect();
        let is_applied = |e: &PatchEntry| managed.iter().any(|m| m.id == e.id && m.version == e.version);
        let pending: Vec<PatchEntry> = state
            .last_check
            .as_ref()
            .map(|c| c.target.iter().filter(|e| !is_applied(e)).cloned().collect())
            .unwrap_or_default();
        let unsupported = state.last_check.as_ref().is_some_and(|c| c.supported == Some(false));
        let summary = if unsupported {
            Summary::KernelUnsupported
        } else if !pending.is_empty() {
            Summary::UpdatesAvailable
        } else if status.patches.is_empty() {
            Summary::NothingApplied
        } else {
            Summary::UpToDate
        };
        let coverage = CoverageReport::of(state.last_check.as_ref(), Timestamp::now());
        let verifications = state.verifications.iter().filter(|v| status.patch(&v.id).is_some()).cloned().collect();
        Ok(Self {
            version: status.version,
            core_loaded,
            patches: status.patches,
            kernel: kernel_id,
            kernel_error,
            effective_version: effective_release(&release, &managed),
            managed,
            blocked: state.blocked,
            last_check: state.last_check,
            pending,
            coverage,
            last_update: state.last_update,
            verifications,
            module_signatures: crate::module_signature::Policy::read(paths),
            summary,
        })
    }

    /// CVE → the applied patches fixing it.
    pub fn cves(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in &self.managed {
            for c in &p.cves {
                out.entry(c.clone()).or_default().push(p.id.clone());
            }
        }
        out
    }
}

/// One CSV field, quoted when needed (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_release_names_the_patch_level() {
        let m = crate::artifact::tests::manifest("kp_a");
        let mut a = AppliedPatch::from_manifest(&m, None, String::new(), String::new());
        assert_eq!(effective_release("7.2.13", &[]), "7.2.13");
        a.version = 3;
        let mut b = a.clone();
        b.version = 7;
        assert_eq!(effective_release("7.2.13", &[a, b]), "7.2.13-kmend7");
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
