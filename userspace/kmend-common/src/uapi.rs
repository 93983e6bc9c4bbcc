//! The userspace ABI of `/dev/kmend`, mirrored in `kernel-module/uapi.rs`.
//!
//! Documented in `docs/control-abi.md`. The size asserts match the kernel's.

/// Version of the control ABI; the first field of every request.
pub const KMEND_UAPI_VERSION: u32 = 2;

/// Longest patch id, including the NUL.
pub const KMEND_ID_MAX: usize = 64;

/// Longest error text the kernel returns, including the NUL.
pub const KMEND_ERR_MAX: usize = 160;

/// Most fingerprint bytes per function.
pub const KMEND_FP_MAX: usize = 64;

/// ioctl "type" byte of kmend's commands.
pub const KMEND_IOC_MAGIC: u8 = b'K';

/// A transition request: enable or revert one registered patch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KmendReq {
    pub version: u32,
    pub flags: u32,
    pub id: [u8; KMEND_ID_MAX],
    /// How long the kernel retries while a task runs code being switched (0: 5 s).
    pub timeout_ms: u32,
    pub nfuncs: u32,
    /// Pointer to `nfuncs` [`KmendFuncReq`].
    pub funcs: u64,
    /// Out: the stop-the-world pause, in nanoseconds.
    pub pause_ns: u64,
    /// Out: the kernel's reason for a refusal.
    pub error: [u8; KMEND_ERR_MAX],
}

/// Where one target function is, and what its code must look like.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KmendFuncReq {
    pub addr: u64,
    pub fp_offset: u32,
    pub fp_len: u32,
    pub fp: [u8; KMEND_FP_MAX],
}

const _: () = assert!(core::mem::size_of::<KmendReq>() == 256);
const _: () = assert!(core::mem::size_of::<KmendFuncReq>() == 80);

/// `_IOC(dir, type, nr, size)` as the kernel defines it on x86_64.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((KMEND_IOC_MAGIC as u32) << 8) | nr
}
const READ: u32 = 2;
const WRITE: u32 = 1;

/// Enable a registered patch (all functions switch, or none).
pub const KMEND_IOC_ENABLE: u32 = ioc(READ | WRITE, 2, core::mem::size_of::<KmendReq>());
/// Revert an enabled patch.
pub const KMEND_IOC_REVERT: u32 = ioc(READ | WRITE, 3, core::mem::size_of::<KmendReq>());
// Number 4 (a benchmark-only command) is retired; not to be reused.
/// Read the ABI version (a u32).
pub const KMEND_IOC_VERSION: u32 = ioc(READ, 0, 4);

/// Path of the control device.
pub const CONTROL_DEVICE: &str = "/dev/kmend";
