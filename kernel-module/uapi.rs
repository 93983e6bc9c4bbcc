// SPDX-License-Identifier: GPL-2.0
//! The userspace ABI of `/dev/kmend`: ioctl numbers and argument layouts.
//!
//! Mirrored in `userspace/kmend-common/src/uapi.rs`; both files assert the
//! same sizes, so a layout change made on one side only fails to build.
//! Documented in `docs/control-abi.md`.

use kernel::{
    ioctl::{
        _IOR,
        _IOWR, //
    },
    transmute::{
        AsBytes,
        FromBytes, //
    },
};

/// Version of this ABI; the first field of every request.
pub(crate) const KMEND_UAPI_VERSION: u32 = 2;

/// Longest patch id, including the NUL.
pub(crate) const KMEND_ID_MAX: usize = 64;

/// Longest error text returned to userspace, including the NUL.
pub(crate) const KMEND_ERR_MAX: usize = 160;

/// Most fingerprint bytes per function.
pub(crate) const KMEND_FP_MAX: usize = 64;

/// Most functions per patch.
pub(crate) const KMEND_FUNCS_MAX: u32 = 256;

/// Longest transition timeout a request may ask for.
pub(crate) const KMEND_TIMEOUT_MAX_MS: u32 = 60_000;

const KMEND_IOC_MAGIC: u32 = b'K' as u32;

/// A transition request: enable or revert one registered patch.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct KmendReq {
    /// Must be [`KMEND_UAPI_VERSION`].
    pub(crate) version: u32,
    /// Reserved, must be 0.
    pub(crate) flags: u32,
    /// Patch id, NUL-terminated.
    pub(crate) id: [u8; KMEND_ID_MAX],
    /// How long to retry while a task runs code being switched (0: default).
    pub(crate) timeout_ms: u32,
    /// Entries in `funcs` (enable: the patch's function count; revert: 0).
    pub(crate) nfuncs: u32,
    /// User pointer to `nfuncs` [`KmendFuncReq`] (enable only).
    pub(crate) funcs: u64,
    /// Out: stop-the-world pause of the switch, in nanoseconds.
    pub(crate) pause_ns: u64,
    /// Out: why the request failed, NUL-terminated ("" on success).
    pub(crate) error: [u8; KMEND_ERR_MAX],
}

/// Where one target function is, and what its code must look like.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct KmendFuncReq {
    /// Address of the target, from `/proc/kallsyms` (0: module not loaded yet).
    pub(crate) addr: u64,
    /// Offset from `addr` of the fingerprinted bytes.
    pub(crate) fp_offset: u32,
    /// Number of fingerprinted bytes (0: no fingerprint check).
    pub(crate) fp_len: u32,
    /// The expected code bytes.
    pub(crate) fp: [u8; KMEND_FP_MAX],
}

const _: () = assert!(core::mem::size_of::<KmendReq>() == 256);
const _: () = assert!(core::mem::size_of::<KmendFuncReq>() == 80);

// SAFETY: integers and byte arrays only, no padding (sizes asserted above):
// every bit pattern is valid and every byte is initialised.
unsafe impl FromBytes for KmendReq {}
// SAFETY: as above.
unsafe impl AsBytes for KmendReq {}
// SAFETY: as above.
unsafe impl FromBytes for KmendFuncReq {}

/// Enable a registered patch: all its functions switch, or none does.
pub(crate) const KMEND_IOC_ENABLE: u32 = _IOWR::<KmendReq>(KMEND_IOC_MAGIC, 2);
/// Revert (disable) an enabled patch.
pub(crate) const KMEND_IOC_REVERT: u32 = _IOWR::<KmendReq>(KMEND_IOC_MAGIC, 3);
// Number 4 was a benchmark-only command (time empty stop_machine calls);
// the test module does that now. Not to be reused.
/// The ABI version, as a u32 (lets userspace check before anything else).
pub(crate) const KMEND_IOC_VERSION: u32 = _IOR::<u32>(KMEND_IOC_MAGIC, 0);
