// SPDX-License-Identifier: GPL-2.0
//! The registry of applied patches: apply, revert, status.
//!
//! Lock order: [`STATE`] is the only lock; it is taken by the export
//! (`kmend_register_patch`, from a patch module's init) and by `/dev/kmend`
//! (revert, status). ftrace's own locks nest inside it.

use core::fmt::Write;

use kernel::{
    bindings,
    ffi::{
        c_char,
        c_int, //
    },
    prelude::*,
    str::CString, //
};

use crate::{
    abi,
    ksym::Symbol,
    modref::ModuleRef,
    redirect::Redirects, //
};

kernel::sync::global_lock! {
    // SAFETY: initialised in `KmendModule::init`, before the misc device is
    // registered and before any patch module can link against the export.
    pub(crate) unsafe(uninit) static STATE: Mutex<Registry> = Registry::new();
}

/// Most functions one patch may replace.
const MAX_FUNCS: u32 = 256;

/// One function of an applied patch.
struct PatchFunc {
    object: CString,
    name: CString,
    sympos: u64,
    new_func: usize,
}

/// An applied patch.
struct Patch {
    serial: u64,
    id: CString,
    replace: bool,
    funcs: KVec<PatchFunc>,
    /// Keeps the patch module, and so the replacements, loaded.
    _owner: ModuleRef,
}

/// What a patch module asked for, copied out of its descriptor.
pub(crate) struct PatchSpec {
    id: CString,
    replace: bool,
    funcs: KVec<PatchFunc>,
    owner: ModuleRef,
}

/// Accepts only plain C identifiers: ftrace would read `*`, `?`, `[` or `:`
/// as a pattern and redirect more than one function.
fn is_symbol_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() < 128
        && name.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

fn is_patch_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() < crate::uapi::KMEND_ID_MAX
        && id.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

impl PatchSpec {
    /// Copies and validates a patch module's descriptor.
    ///
    /// # Safety
    ///
    /// `desc` must point to a valid [`abi::KmendPatch`] whose strings are
    /// NUL-terminated and whose `funcs` has `nfuncs` entries, and `owner` must
    /// be the calling module (the contract of `kmend_register_patch`).
    pub(crate) unsafe fn from_abi(desc: *const abi::KmendPatch) -> Result<Self> {
        if desc.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: the caller guarantees `desc` is valid for reads.
        let desc = unsafe { &*desc };
        if desc.abi_version != abi::KMEND_ABI_VERSION {
            pr_err!("patch descriptor has abi version {} (want {}) (-EINVAL)\n",
                desc.abi_version, abi::KMEND_ABI_VERSION);
            return Err(EINVAL);
        }
        if desc.nfuncs == 0 || desc.nfuncs > MAX_FUNCS || desc.funcs.is_null() || desc.id.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: `id` is a NUL-terminated string (caller contract).
        let id = unsafe { CStr::from_char_ptr(desc.id) };
        if !is_patch_id(id.to_bytes()) {
            pr_err!("invalid patch id (-EINVAL)\n");
            return Err(EINVAL);
        }
        let mut funcs = KVec::with_capacity(desc.nfuncs as usize, GFP_KERNEL)?;
        for i in 0..desc.nfuncs as usize {
            // SAFETY: `funcs` has `nfuncs` entries (caller contract).
            let f = unsafe { &*desc.funcs.add(i) };
            if f.name.is_null() || f.object.is_null() || f.new_func.is_null() {
                return Err(EINVAL);
            }
            // SAFETY: NUL-terminated strings (caller contract).
            let (object, name) = unsafe {
                (CStr::from_char_ptr(f.object as *const c_char), CStr::from_char_ptr(f.name))
            };
            if !is_symbol_name(name.to_bytes()) || !is_symbol_name(object.to_bytes()) {
                pr_err!("patch '{}': invalid function or object name (-EINVAL)\n", id.to_str().unwrap_or("?"));
                return Err(EINVAL);
            }
            if object.to_bytes() != b"vmlinux" || f.sympos > 1 {
                pr_err!("patch '{}': '{}': only unique vmlinux functions are supported (-EOPNOTSUPP)\n",
                    id.to_str().unwrap_or("?"), name.to_str().unwrap_or("?"));
                return Err(Error::from_errno(-(bindings::EOPNOTSUPP as i32)));
            }
            funcs.push(
                PatchFunc {
                    object: object.to_cstring()?,
                    name: name.to_cstring()?,
                    sympos: f.sympos,
                    new_func: f.new_func as usize,
                },
                GFP_KERNEL,
            )?;
        }
        // SAFETY: `owner` is the calling patch module (caller contract).
        let owner = unsafe { ModuleRef::get(desc.owner.cast::<bindings::module>()) }?;
        Ok(Self {
            id: id.to_cstring()?,
            replace: desc.flags & abi::KMEND_PATCH_REPLACE != 0,
            funcs,
            owner,
        })
    }
}

/// All applied patches and the redirections they make.
pub(crate) struct Registry {
    patches: KVec<Patch>,
    redirects: Redirects,
    next_serial: u64,
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Self {
            patches: KVec::new(),
            redirects: Redirects::new(),
            next_serial: 1,
        }
    }

    fn position(&self, id: &[u8]) -> Option<usize> {
        self.patches.iter().position(|p| p.id.to_bytes() == id)
    }

    /// Applies a patch: all its functions switch, or none does.
    pub(crate) fn apply(&mut self, spec: PatchSpec) -> Result {
        let id = spec.id.to_str().unwrap_or("?");
        if self.position(spec.id.to_bytes()).is_some() {
            pr_err!("patch '{}': already applied (-EEXIST)\n", id);
            return Err(EEXIST);
        }
        self.patches.reserve(1, GFP_KERNEL)?;

        // Phase 1: every function gets a registered, still inert, slot.
        let mut slots = KVec::with_capacity(spec.funcs.len(), GFP_KERNEL)?;
        for f in spec.funcs.iter() {
            match self.redirects.prepare(&f.name) {
                Ok(idx) => slots.push(idx, GFP_KERNEL)?,
                Err(e) => {
                    self.redirects.drop_unused();
                    pr_err!("patch '{}': cannot redirect '{}' ({})\n", id,
                        f.name.to_str().unwrap_or("?"), e.to_errno());
                    return Err(e);
                }
            }
        }

        // Phase 2: nothing below can fail; switch every function.
        let serial = self.next_serial;
        self.next_serial += 1;
        for (f, idx) in spec.funcs.iter().zip(slots.iter()) {
            self.redirects.push(*idx, serial, f.new_func);
        }
        pr_info!("patch '{}': applied ({} functions)\n", id, spec.funcs.len());
        let patch = Patch {
            serial,
            id: spec.id,
            replace: spec.replace,
            funcs: spec.funcs,
            _owner: spec.owner,
        };
        // Cannot fail: reserved above.
        let _ = self.patches.push_within_capacity(patch);
        Ok(())
    }

    /// Reverts the patch `id`: its functions go back to what ran before it.
    pub(crate) fn revert(&mut self, id: &[u8]) -> Result {
        let Some(pos) = self.position(id) else {
            pr_err!("revert: no applied patch '{}' (-ENOENT)\n",
                core::str::from_utf8(id).unwrap_or("?"));
            return Err(ENOENT);
        };
        let patch = self.patches.remove(pos)?;
        self.redirects.remove_patch(patch.serial);
        pr_info!("patch '{}': reverted\n", patch.id.to_str().unwrap_or("?"));
        // Dropping `patch` releases the patch module.
        Ok(())
    }

    /// Writes the status text (format in docs/control-abi.md).
    pub(crate) fn write_status(&self, out: &mut impl Write) -> core::fmt::Result {
        writeln!(out, "kmend-status {}", crate::uapi::KMEND_UAPI_VERSION)?;
        for p in self.patches.iter() {
            let id = p.id.to_str().unwrap_or("?");
            writeln!(out, "patch {} enabled=1 transition=0 replace={} funcs={}",
                id, u8::from(p.replace), p.funcs.len())?;
            for f in p.funcs.iter() {
                let state = if self.redirects.is_active(&f.name, p.serial) { "active" } else { "stacked" };
                writeln!(out, "func {} {} {} {} {} {}", id,
                    f.object.to_str().unwrap_or("?"), f.name.to_str().unwrap_or("?"),
                    f.sympos, state, Symbol::of(f.new_func))?;
            }
        }
        Ok(())
    }

    /// Reverts everything, newest first (module exit).
    pub(crate) fn revert_all(&mut self) {
        while let Some(p) = self.patches.pop() {
            self.redirects.remove_patch(p.serial);
        }
    }
}

/// Entry point behind the exported `kmend_register_patch()`.
///
/// # Safety
///
/// Only `kmend_export.c` calls this, on behalf of a patch module's init,
/// with that module's descriptor (see [`PatchSpec::from_abi`]).
#[no_mangle]
pub(crate) unsafe extern "C" fn kmend_rust_register_patch(desc: *const abi::KmendPatch) -> c_int {
    // SAFETY: forwarded from the caller's contract.
    let spec = match unsafe { PatchSpec::from_abi(desc) } {
        Ok(spec) => spec,
        Err(e) => return e.to_errno(),
    };
    match STATE.lock().apply(spec) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}
