//! The only gate between kmend and the kernel: module syscalls and `/dev/kmend`.
//!
//! Every kernel interaction goes through [`Kernel`], so errors carry the
//! same context everywhere: what was attempted, on what, and the errno.
//!
//! [`Kernel`] has two backends. `Real` makes the syscalls. `Fake` is a test
//! double ([`fake`]), chosen only when both `KMEND_ROOT` and
//! `KMEND_FAKE_KERNEL=1` are set: a host test cannot load kernel modules,
//! so the host tests of the agent (feeds, policy, boot re-apply, crash
//! guard) run the real `kmend` binary against it. The real path is proven
//! by the VM suite (tests/guest).

mod fake;
pub mod transition;

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


use crate::{
    target::Function,
    paths::Paths,
    status::KernelStatus, //
};

/// A failed interaction with the kernel.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("kmend core is not loaded ({} is missing): load kmend.ko first", .0.display())]
    CoreNotLoaded(PathBuf),
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
    #[error("patch '{id}': the kernel refused to load '{}': {why} ({source}). {}", .path.display(), crate::module_signature::REMEDY)]
    Signature {
        id: String,
        path: PathBuf,
        why: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid patch id '{0}': 1 to 63 characters of [A-Za-z0-9_.-]")]
    BadId(String),
    #[error("{0}")]
    Status(#[from] crate::status::ParseError),
    #[error("patch '{id}': {op} refused by the kernel: {reason} ({source})")]
    Refused {
        op: &'static str,
        id: String,
        reason: String,
        #[source]
        source: io::Error,
    },
    #[error("patch '{id}': {what}")]
    Resolve { id: String, what: String },
    #[error("test-double kernel: '{path}': {what}")]
    Fake { path: PathBuf, what: String },
}

pub(crate) fn errno_hint(err: &io::Error) -> &'static str {
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
    if crate::target::is_patch_id(id) { Ok(()) } else { Err(SysError::BadId(id.to_owned())) }
}

/// Environment variable that selects the test-double kernel (with `KMEND_ROOT`).
pub const FAKE_KERNEL_ENV: &str = "KMEND_FAKE_KERNEL";

/// The kernel kmend talks to.
pub enum Kernel {
    /// The running kernel, through syscalls and the control device.
    Real { control: PathBuf },
    /// A test double keeping its state in files (see [`fake`]).
    Fake(fake::FakeKernel),
}

impl Kernel {
    /// The backend for this process: `Fake` only when `KMEND_ROOT` is set
    /// and `KMEND_FAKE_KERNEL=1`, else `Real`.
    pub fn from_env(paths: &Paths) -> Self {
        let fake = std::env::var(FAKE_KERNEL_ENV).is_ok_and(|v| v == "1");
        if paths.rooted && fake {
            Self::Fake(fake::FakeKernel::new(paths))
        } else {
            Self::Real { control: paths.control_device() }
        }
    }

    /// Applies a patch module: loads it, then enables it with the targets
    /// resolved in kallsyms and the fingerprints of `functions` (from the
    /// artifact's manifest; empty for a bare module: nothing to check). The
    /// test double takes the functions as they are. See [`transition`].
    pub fn load_module(&self, path: &Path, id: &str, functions: &[Function]) -> Result<(), SysError> {
        match self {
            Self::Real { control } => transition::apply(control, path, id, functions).map(|_| ()),
            Self::Fake(f) => f.load_module(path, id, functions),
        }
    }

    /// Loads the core module (kmend.ko) from `path`: a plain module load,
    /// after which the control device exists.
    pub fn load_core(&self, path: &Path) -> Result<(), SysError> {
        match self {
            Self::Real { .. } => load_module(path, crate::artifact::CORE_ID),
            Self::Fake(f) => f.load_core(path),
        }
    }

    /// Whether module `name` is loaded. The test double has every module
    /// loaded (it has no modules to come and go).
    pub fn module_loaded(&self, name: &str) -> bool {
        match self {
            Self::Real { .. } => transition::module_loaded(name),
            Self::Fake(f) => f.module_loaded(name),
        }
    }

    /// Whether kmend.ko is loaded (its control device exists).
    pub fn core_loaded(&self) -> bool {
        match self {
            Self::Real { control } => control.exists(),
            Self::Fake(f) => f.core_loaded(),
        }
    }

    /// Unloads module `name` (does not wait for users to go away).
    pub fn unload_module(&self, name: &str) -> Result<(), SysError> {
        match self {
            Self::Real { .. } => unload_module(name),
            Self::Fake(f) => f.unload_module(name),
        }
    }

    /// Asks kmend.ko to revert patch `id`.
    pub fn revert(&self, id: &str) -> Result<(), SysError> {
        check_id(id)?;
        match self {
            Self::Real { control } => transition::revert(control, id).map(|_| ()),
            Self::Fake(f) => f.revert(id),
        }
    }

    /// The status text of kmend.ko (format: docs/control-abi.md).
    pub fn read_status(&self) -> Result<String, SysError> {
        match self {
            Self::Real { control } => read_status(control),
            Self::Fake(f) => f.read_status(),
        }
    }

    /// The status, parsed.
    pub fn status(&self) -> Result<KernelStatus, SysError> {
        Ok(KernelStatus::parse(&self.read_status()?)?)
    }
}

pub(crate) fn load_module(path: &Path, id: &str) -> Result<(), SysError> {
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
        let policy = crate::module_signature::Policy::read(&Paths::from_env());
        if let Some(why) = crate::module_signature::refusal(&source, &policy) {
            return Err(SysError::Signature { id: id.to_owned(), path: path.to_owned(), why, source });
        }
        return Err(SysError::Patch { op: "load", id: id.to_owned(), hint: errno_hint(&source), source });
    }
    Ok(())
}

pub(crate) fn unload_module(name: &str) -> Result<(), SysError> {
    let cname = CString::new(name).map_err(|_| SysError::BadId(name.to_owned()))?;
    // SAFETY: delete_module takes a NUL-terminated name and flags.
    let ret = unsafe { libc::syscall(libc::SYS_delete_module, cname.as_ptr(), libc::O_NONBLOCK) };
    if ret != 0 {
        let source = io::Error::last_os_error();
        return Err(SysError::Patch { op: "unload module", id: name.to_owned(), hint: errno_hint(&source), source });
    }
    Ok(())
}

pub(crate) fn open_control(control: &Path) -> Result<fs::File, SysError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SysError::CoreNotLoaded(control.to_owned()),
            _ => SysError::Io { op: "open", path: control.to_owned(), source },
        })
}

pub(crate) fn read_status(control: &Path) -> Result<String, SysError> {
    let mut dev = open_control(control)?;
    let mut text = String::new();
    io::Read::read_to_string(&mut dev, &mut text).map_err(|source| SysError::Io {
        op: "read",
        path: control.to_owned(),
        source,
    })?;
    Ok(text)
}
