//! Enabling and reverting patches on the real kernel (`/dev/kmend` ioctls).
//!
//! Applying a patch module is three steps: loading it registers the patch
//! (nothing switches yet); its functions are then resolved in
//! `/proc/kallsyms` and sent with their fingerprints in one ENABLE request,
//! which kmend.ko verifies and switches all at once, or refuses with a
//! reason; on a refusal the module is unloaded again, leaving nothing.

use std::{
    fs,
    io,
    os::fd::AsRawFd,
    path::Path,
    time::Duration, //
};

use kmend_common::uapi::{
    KMEND_ERR_MAX,
    KMEND_FP_MAX,
    KMEND_ID_MAX,
    KMEND_IOC_ENABLE,
    KMEND_IOC_REVERT,
    KMEND_UAPI_VERSION,
    KmendFuncReq,
    KmendReq, //
};

use super::{
    SysError,
    errno_hint,
    open_control, //
};
use crate::{
    target::{
        Function,
        parse_fingerprint, //
    },
    kallsyms,
    status::KernelStatus, //
};

/// How long the kernel may retry while a task runs code being switched.
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(5);


fn request(id: &str) -> KmendReq {
    let mut req = KmendReq {
        version: KMEND_UAPI_VERSION,
        flags: 0,
        id: [0; KMEND_ID_MAX],
        timeout_ms: SWITCH_TIMEOUT.as_millis() as u32,
        nfuncs: 0,
        funcs: 0,
        pause_ns: 0,
        error: [0; KMEND_ERR_MAX],
    };
    req.id[..id.len()].copy_from_slice(id.as_bytes());
    req
}

fn kernel_reason(req: &KmendReq) -> String {
    let len = req.error.iter().position(|&b| b == 0).unwrap_or(KMEND_ERR_MAX);
    String::from_utf8_lossy(&req.error[..len]).into_owned()
}

fn ioctl(control: &Path, cmd: u32, req: &mut KmendReq, op: &'static str, id: &str) -> Result<u64, SysError> {
    let dev = open_control(control)?;
    // SAFETY: `cmd` encodes the size of `KmendReq`, a `repr(C)` struct that
    // lives for the call; `funcs` points to a live array of `nfuncs` entries.
    let ret = unsafe { libc::ioctl(dev.as_raw_fd(), cmd as _, req as *mut KmendReq) };
    if ret != 0 {
        let source = io::Error::last_os_error();
        let reason = kernel_reason(req);
        if !reason.is_empty() {
            return Err(SysError::Refused { op, id: id.to_owned(), reason, source });
        }
        return Err(SysError::Patch { op, id: id.to_owned(), hint: errno_hint(&source), source });
    }
    Ok(req.pause_ns)
}

/// Whether module `name` is loaded (listed in /proc/modules).
pub(crate) fn module_loaded(name: &str) -> bool {
    fs::read_to_string("/proc/modules")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').next() == Some(name)))
}

/// Resolves and enables registered patch `id`; `manifest` supplies the
/// fingerprints (empty: none are checked).
pub fn enable(control: &Path, id: &str, manifest: &[Function]) -> Result<u64, SysError> {
    let text = super::read_status(control)?;
    let status = KernelStatus::parse(&text)?;
    let patch = status.patch(id).ok_or_else(|| SysError::Fake {
        path: control.to_owned(),
        what: format!("patch '{id}' did not register: is it a kmend patch module?"),
    })?;
    let resolve_err = |what: String| SysError::Resolve { id: id.to_owned(), what };
    let wanted = |f: &crate::status::FunctionStatus| {
        manifest.iter().find(|m| m.object == f.object && m.name == f.name && m.sympos == f.sympos)
    };
    // Reading all of /proc/kallsyms takes the kernel long on a distribution
    // kernel: do it only for what the manifest cannot place.
    let placed = |f: &crate::status::FunctionStatus| {
        wanted(f).is_some_and(|m| m.text_offset.is_some() && (f.object == "vmlinux" || m.section.is_some()))
    };
    let needs_kallsyms = patch
        .functions
        .iter()
        .any(|f| !placed(f) && (f.object == "vmlinux" || module_loaded(&f.object)));
    let kallsyms = if needs_kallsyms {
        fs::read_to_string("/proc/kallsyms").map_err(|source| SysError::Io { op: "read", path: "/proc/kallsyms".into(), source })?
    } else {
        String::new()
    };
    let mut text = None;
    let mut funcs = Vec::with_capacity(patch.functions.len());
    for f in &patch.functions {
        let object = f.object.as_str();
        let addr = if object != "vmlinux" && !module_loaded(object) {
            // A function of a module that is not loaded yet is sent as
            // address 0: kmend.ko applies it when the module loads.
            0
        } else if !placed(f) {
            kallsyms::resolve(&kallsyms, object, &f.name, f.sympos).map_err(resolve_err)?
        } else {
            let m = wanted(f).ok_or_else(|| resolve_err(format!("'{object}:{}': not in the manifest", f.name)))?;
            let offset = m.text_offset.unwrap_or_default();
            let base = if object == "vmlinux" {
                if text.is_none() {
                    let head = fs::File::open("/proc/kallsyms")
                        .map_err(|source| SysError::Io { op: "open", path: "/proc/kallsyms".into(), source })?;
                    text = Some(kallsyms::text_address(head).map_err(resolve_err)?);
                }
                text.unwrap_or_default()
            } else {
                kallsyms::section_address(object, m.section.as_deref().unwrap_or(".text")).map_err(resolve_err)?
            };
            base.wrapping_add(offset)
        };
        let mut req = KmendFuncReq { addr, fp_offset: 0, fp_len: 0, fp: [0; KMEND_FP_MAX] };
        if let Some(m) = wanted(f) {
            let fp = parse_fingerprint(&m.fingerprint).map_err(|what| SysError::Resolve {
                id: id.to_owned(),
                what: format!("'{}': fingerprint: {what}", m.name),
            })?;
            if let Some((off, bytes)) = fp {
                req.fp_offset = off;
                req.fp_len = bytes.len() as u32;
                req.fp[..bytes.len()].copy_from_slice(&bytes);
            }
        }
        funcs.push(req);
    }
    let mut req = request(id);
    req.nfuncs = funcs.len() as u32;
    req.funcs = funcs.as_ptr() as u64;
    ioctl(control, KMEND_IOC_ENABLE, &mut req, "enable", id)
}

/// Reverts enabled patch `id`; returns the stop-the-world pause.
pub fn revert(control: &Path, id: &str) -> Result<u64, SysError> {
    let mut req = request(id);
    ioctl(control, KMEND_IOC_REVERT, &mut req, "revert", id)
}

/// Loads, resolves and enables a patch module; on any refusal the module is
/// unloaded again, so nothing is left half-done.
pub fn apply(control: &Path, path: &Path, id: &str, manifest: &[Function]) -> Result<u64, SysError> {
    super::load_module(path, id)?;
    match enable(control, id, manifest) {
        Ok(pause) => Ok(pause),
        Err(e) => {
            let _ = super::unload_module(id);
            Err(e)
        }
    }
}
