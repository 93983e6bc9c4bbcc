//! The userspace ABI of `/dev/kmend`, mirrored in `kernel-module/uapi.rs`.
//!
//! Documented in `docs/control-abi.md`. The size assert matches the kernel's.

/// Version of the control ABI; the first field of every request.
pub const KMEND_UAPI_VERSION: u32 = 1;

/// Longest patch id, including the NUL.
pub const KMEND_ID_MAX: usize = 64;

/// ioctl "type" byte of kmend's commands.
pub const KMEND_IOC_MAGIC: u8 = b'K';

/// Request naming one applied patch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KmendIdReq {
    pub version: u32,
    pub flags: u32,
    pub id: [u8; KMEND_ID_MAX],
}

const _: () = assert!(core::mem::size_of::<KmendIdReq>() == 72);

/// `_IOW(type, nr, size)` as the kernel defines it on x86_64.
const fn iow(nr: u32, size: usize) -> u32 {
    const WRITE: u32 = 1;
    (WRITE << 30) | ((size as u32) << 16) | ((KMEND_IOC_MAGIC as u32) << 8) | nr
}

/// Revert the applied patch named in a [`KmendIdReq`].
pub const KMEND_IOC_REVERT: u32 = iow(1, core::mem::size_of::<KmendIdReq>());

/// Path of the control device.
pub const CONTROL_DEVICE: &str = "/dev/kmend";
