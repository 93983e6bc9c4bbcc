//! The only gate between kmend and the kernel: module syscalls and `/dev/kmend`.
//!
//! Every kernel interaction goes through here, so errors carry the same
//! context everywhere: what was attempted, on what, and the errno.

use std::{
    ffi::CString,
    fs,
    io,
    os::fd::AsRawFd,
    path::{
        Path,
        PathBuf, //
    },
};

use kmend_common::uapi::{
    CONTROL_DEVICE,
    KMEND_ID_MAX,
    KMEND_IOC_REVERT,
    KMEND_UAPI_VERSION,
    KmendIdReq, //
};

/// A failed interaction with the kernel.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("kmend core is not loaded ({CONTROL_DEVICE} is missing): load kmend.ko first")]
    CoreNotLoaded,
    #[error("'{path}': {op} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("patch '{id}': {op} failed: {source}{hint}")]
    Patch {
        op: &'static str,
        id: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("invalid patch id '{0}': 1 to 63 characters of [A-Za-z0-9_.-]")]
    BadId(String),
}

fn errno_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EEXIST) => " (already loaded or applied)",
        Some(libc::EBUSY) => " (a function is busy or owned by another ftrace user; see dmesg)",
        Some(libc::ENOENT) => " (no such patch or symbol; see dmesg)",
        Some(libc::EPERM) => " (needs root: CAP_SYS_MODULE)",
        Some(libc::EINVAL) => " (the kernel rejected the patch; see dmesg)",
        _ => " (see dmesg)",
    }
}

/// Checks a patch id the way the kernel does.
pub fn check_id(id: &str) -> Result<(), SysError> {
    let ok = !id.is_empty()
        && id.len() < KMEND_ID_MAX
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok { Ok(()) } else { Err(SysError::BadId(id.to_owned())) }
}

/// Loads a module file; for a patch module this applies the patch.
pub fn load_module(path: &Path, id: &str) -> Result<(), SysError> {
    let file = fs::File::open(path).map_err(|source| SysError::Io {
        op: "open",
        path: path.to_owned(),
        source,
    })?;
    let params = c"";
    // SAFETY: finit_module takes an open fd, a NUL-terminated parameter
    // string and flags; all three are valid for the duration of the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0)
    };
    if ret != 0 {
        let source = io::Error::last_os_error();
        return Err(SysError::Patch { op: "load", id: id.to_owned(), hint: errno_hint(&source), source });
    }
    Ok(())
}

/// Unloads module `name` (does not wait for users to go away).
pub fn unload_module(name: &str) -> Result<(), SysError> {
    let cname = CString::new(name).map_err(|_| SysError::BadId(name.to_owned()))?;
    // SAFETY: delete_module takes a NUL-terminated name and flags.
    let ret = unsafe { libc::syscall(libc::SYS_delete_module, cname.as_ptr(), libc::O_NONBLOCK) };
    if ret != 0 {
        let source = io::Error::last_os_error();
        return Err(SysError::Patch { op: "unload module", id: name.to_owned(), hint: errno_hint(&source), source });
    }
    Ok(())
}

fn open_control() -> Result<fs::File, SysError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL_DEVICE)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SysError::CoreNotLoaded,
            _ => SysError::Io { op: "open", path: CONTROL_DEVICE.into(), source },
        })
}

/// Asks kmend.ko to revert patch `id`.
pub fn revert(id: &str) -> Result<(), SysError> {
    check_id(id)?;
    let mut req = KmendIdReq { version: KMEND_UAPI_VERSION, flags: 0, id: [0; KMEND_ID_MAX] };
    req.id[..id.len()].copy_from_slice(id.as_bytes());
    let dev = open_control()?;
    // SAFETY: the request number encodes the size of `req`, which is a
    // `repr(C)` struct living for the duration of the call.
    let ret = unsafe { libc::ioctl(dev.as_raw_fd(), KMEND_IOC_REVERT as _, &req as *const KmendIdReq) };
    if ret != 0 {
        let source = io::Error::last_os_error();
        return Err(SysError::Patch { op: "revert", id: id.to_owned(), hint: errno_hint(&source), source });
    }
    Ok(())
}

/// Reads the status text of kmend.ko.
pub fn read_status() -> Result<String, SysError> {
    let mut dev = open_control()?;
    let mut text = String::new();
    io::Read::read_to_string(&mut dev, &mut text).map_err(|source| SysError::Io {
        op: "read",
        path: CONTROL_DEVICE.into(),
        source,
    })?;
    Ok(text)
}
