// SPDX-License-Identifier: GPL-2.0
//! The userspace ABI of `/dev/kmend`: ioctl numbers and argument layouts.
//!
//! Mirrored in `userspace/kmend-common/src/uapi.rs`; both files assert the
//! same sizes, so a layout change that is made on one side only fails to build.
//! Documented in `docs/control-abi.md`.

use kernel::{
    ioctl::_IOW,
    transmute::FromBytes, //
};

/// Version of this ABI; the first field of every request.
pub(crate) const KMEND_UAPI_VERSION: u32 = 1;

/// Longest patch id, including the NUL.
pub(crate) const KMEND_ID_MAX: usize = 64;

const KMEND_IOC_MAGIC: u32 = b'K' as u32;

/// Request naming one applied patch.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct KmendIdReq {
    /// Must be [`KMEND_UAPI_VERSION`].
    pub(crate) version: u32,
    /// Reserved, must be 0.
    pub(crate) flags: u32,
    /// Patch id, NUL-terminated.
    pub(crate) id: [u8; KMEND_ID_MAX],
}

const _: () = assert!(core::mem::size_of::<KmendIdReq>() == 72);

// SAFETY: two integers and a byte array: every bit pattern is valid.
unsafe impl FromBytes for KmendIdReq {}

/// Revert (disable) the applied patch named in a [`KmendIdReq`].
pub(crate) const KMEND_IOC_REVERT: u32 = _IOW::<KmendIdReq>(KMEND_IOC_MAGIC, 1);
