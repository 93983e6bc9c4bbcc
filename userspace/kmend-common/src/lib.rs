// SPDX-License-Identifier: GPL-2.0
//! Types and constants shared by the eBPF probes, the `kmend` CLI and the agent.
//!
//! `no_std`, so the probes can use it; the kernel module mirrors the control
//! ABI in `kernel-module/uapi.rs`, with the same size asserts on both sides.
#![no_std]

#[cfg(feature = "fleet")]
extern crate alloc;

#[cfg(feature = "fleet")]
pub mod fleet;
pub mod probes;
pub mod uapi;
