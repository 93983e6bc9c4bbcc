//! kmend userspace: the CLI and agent that drive `kmend.ko`.
//!
//! Layout, one job per module:
//! - [`sys`]: the only gate to the kernel (module syscalls, `/dev/kmend`).
//! - [`status`]: the kernel's status text, parsed.
//! - [`modinfo`]: reading a patch module file.
//! - [`kallsyms`]: symbol and ftrace-site addresses, for the probes.
//! - [`kprobe_at`]: a kprobe at an address (for names the kernel has twice).
//! - [`metrics`]: the status as Prometheus metrics.
//! - [`verify`]: eBPF proof that the replacement runs and the old body does not.
//! - [`exit`]: the exit codes, in one place.
//! - [`paths`]: every file kmend uses, under one root (`KMEND_ROOT`).
//! - [`identity`]: the running kernel's release and build id.
//! - [`artifact`]: the `.kmpatch` patch artifact.
//! - [`target`]: what a patch targets (function, fingerprint, patch id),
//!   below both [`artifact`] and [`sys`].
//! - [`feed`]: signed patch feeds (index, keys, TUF metadata, building, serving).
//! - [`policy`]: which feed patches this machine should run.
//! - [`config`], [`state`], [`journal`]: settings, remembered state, audit log.
//! - [`fetch`], [`proxy`]: getting feed files over HTTP(S) or from a directory.
//! - [`agent`]: the jobs (check, update, apply, revert, boot re-apply).
//! - [`module_loads`]: modules as they load (the daemon's wake-up for fixes
//!   waiting for their module).
//! - [`report`]: the effective version, CVEs and status views.
//! - [`timestamp`], [`duration`], [`fsutil`], [`runtime`]: small shared helpers.

pub mod agent;
pub mod artifact;
pub mod config;
pub mod duration;
pub mod exit;
pub mod feed;
pub mod fetch;
pub mod fleet;
pub mod fsutil;
#[cfg(feature = "guest-fixtures")]
pub mod guest_fixtures;
pub mod identity;
pub mod journal;
pub mod kallsyms;
pub mod kprobe_at;
pub mod metrics;
pub mod modinfo;
pub mod module_loads;
pub mod module_signature;
pub mod paths;
pub mod policy;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod state;
pub mod status;
pub mod sys;
pub mod target;
pub mod timestamp;
pub mod verify;
