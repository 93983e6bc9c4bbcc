//! kmend userspace: the CLI and agent that drive `kmend.ko`.
//!
//! Layout, one job per module:
//! - [`sys`]: the only gate to the kernel (module syscalls, `/dev/kmend`).
//! - [`status`]: the kernel's status text, parsed.
//! - [`modinfo`]: reading a patch module file.
//! - [`kallsyms`]: symbol and ftrace-site addresses, for the probes.
//! - [`verify`]: eBPF proof that the replacement runs and the old body does not.
//! - [`exit`]: the exit codes, in one place.

pub mod duration;
pub mod exit;
pub mod kallsyms;
pub mod modinfo;
pub mod status;
pub mod sys;
pub mod verify;
