// SPDX-License-Identifier: GPL-2.0
//! A patch, as its module registered it: the descriptor copied and
//! checked (`kmend_register_patch()`), its functions and their state.

use kernel::{
    bindings,
    ffi::c_char,
    prelude::*,
    str::CString, //
};

use crate::{
    abi,
    callbacks::Callbacks,
    module_notifier::ModuleRefRaw,
    ksym::{
        self,
        Symbol, //
    },
    modref::ModuleRef,
    refusal::text,
    transition::Busy,
    uapi::{
        KMEND_FUNCS_MAX,
        KMEND_ID_MAX, //
    },
};

/// One function of a patch.
pub(crate) struct PatchFunc {
    pub(crate) object: CString,
    pub(crate) name: CString,
    pub(crate) sympos: u64,
    /// A `vmlinux` target as the kernel's module loader placed it by name
    /// and position ([`abi::KmendFunc::placed`]); 0 for module targets.
    pub(crate) placed: usize,
    pub(crate) new_func: usize,
    /// Set while enabled and redirected: the verified target's start
    /// (0 while enabled: pending, the target module is not loaded).
    pub(crate) target: usize,
    /// The fingerprint to check, kept for a target module that loads later.
    pub(crate) fp_offset: u32,
    pub(crate) fp: KVec<u8>,
}

/// `THIS_MODULE` of a registered patch module.
pub(crate) struct Owner(pub(crate) *mut bindings::module);

// SAFETY: a module pointer may be used from any thread; it stays valid while
// the patch is registered (the module unregisters in its exit).
unsafe impl Send for Owner {}

pub(crate) enum State {
    /// Loaded, not applied.
    Registered,
    /// Applied; holds the module; the last switch's pause.
    Enabled { _pin: ModuleRef, pause_ns: u64 },
}

/// A registered patch.
pub(crate) struct Patch {
    pub(crate) serial: u64,
    /// When it was last enabled (registry-wide order): the order its
    /// replacements stack in, also for functions of modules that load later.
    pub(crate) enabled_at: u64,
    pub(crate) id: CString,
    pub(crate) replace: bool,
    /// The code for its module functions is bound to the loads of those
    /// modules it was linked against ([`abi::KMEND_PATCH_LINKED`]).
    pub(crate) linked: bool,
    /// A module it is linked against has unloaded since (its code for
    /// that module refers to memory that is gone).
    pub(crate) stale: bool,
    /// Its references into modules are relocated by kmend.ko as each
    /// module loads ([`abi::KMEND_PATCH_MODULE_RELOCS`]).
    pub(crate) relocs: bool,
    /// The modules its references are resolved in now (`module_relocs.rs`).
    pub(crate) relocated: KVec<CString>,
    pub(crate) cves: CString,
    pub(crate) owner: Owner,
    pub(crate) funcs: KVec<PatchFunc>,
    pub(crate) callbacks: Callbacks,
    pub(crate) state: State,
}

impl Patch {
    pub(crate) fn enabled(&self) -> bool {
        matches!(self.state, State::Enabled { .. })
    }

    /// Whether its code was linked against module `object` as it was
    /// loaded when the patch loaded.
    pub(crate) fn linked_to(&self, object: &CStr) -> bool {
        self.linked && self.funcs.iter().any(|f| f.object.to_bytes() == object.to_bytes())
    }

    /// The modules (not `vmlinux`) its functions are in, for messages.
    pub(crate) fn modules(&self) -> impl Iterator<Item = &CStr> {
        self.funcs.iter().map(|f| &*f.object).filter(|o| o.to_bytes() != b"vmlinux")
    }

    /// Adds the patch module's whole text to `ranges`, named for messages.
    pub(crate) fn push_module_range(&self, ranges: &mut KVec<Busy>, names: &mut KVec<CString>) -> Result {
        let module = ModuleRefRaw(self.owner.0);
        let (start, end) = module.text();
        let name = names.len();
        names.push(CString::try_from_fmt(format_args!("code of module {}", text(module.name())))?, GFP_KERNEL)?;
        ranges.push(Busy { start, end, name }, GFP_KERNEL)?;
        Ok(())
    }
}

/// Accepts only plain C identifiers (what kallsyms can name).
fn is_symbol_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() < 128
        && name.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

pub(crate) fn is_patch_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() < KMEND_ID_MAX
        && id.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn cves_ok(cves: &[u8]) -> bool {
    cves.len() < 1024 && cves.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b','))
}

/// Copies and validates a patch module's descriptor.
///
/// # Safety
///
/// `desc` must point to a valid [`abi::KmendPatch`] whose strings are
/// NUL-terminated and whose `funcs` has `nfuncs` entries (the contract of
/// `kmend_register_patch`).
pub(crate) unsafe fn patch_from_abi(desc: *const abi::KmendPatch) -> Result<Patch> {
    if desc.is_null() {
        return Err(EINVAL);
    }
    // SAFETY: the caller guarantees `desc` is valid for reads.
    let desc = unsafe { &*desc };
    if desc.abi_version != abi::KMEND_ABI_VERSION {
        pr_err!("patch descriptor has abi version {} (this kmend.ko takes {}): rebuild the patch against it (-22)\n",
            desc.abi_version, abi::KMEND_ABI_VERSION);
        return Err(EINVAL);
    }
    let known_flags = abi::KMEND_PATCH_REPLACE | abi::KMEND_PATCH_LINKED | abi::KMEND_PATCH_MODULE_RELOCS;
    if desc.flags & !known_flags != 0 {
        pr_err!("patch descriptor has unknown flags {:#x} for abi version {} (-22)\n", desc.flags & !known_flags, desc.abi_version);
        return Err(EINVAL);
    }
    if desc.flags & abi::KMEND_PATCH_LINKED != 0 && desc.flags & abi::KMEND_PATCH_MODULE_RELOCS != 0 {
        pr_err!("patch descriptor is both linked to its modules' loads and relocated at each (-22)\n");
        return Err(EINVAL);
    }
    if desc.nfuncs == 0 || desc.nfuncs > KMEND_FUNCS_MAX || desc.funcs.is_null() || desc.id.is_null() || desc.owner.is_null() {
        pr_err!("patch descriptor is malformed (-22)\n");
        return Err(EINVAL);
    }
    // SAFETY: NUL-terminated (caller contract).
    let id = unsafe { CStr::from_char_ptr(desc.id) };
    if !is_patch_id(id.to_bytes()) {
        pr_err!("patch descriptor has an invalid id (-22)\n");
        return Err(EINVAL);
    }
    let cves = if desc.cves.is_null() {
        c"".to_cstring()?
    } else {
        // SAFETY: NUL-terminated (caller contract).
        unsafe { CStr::from_char_ptr(desc.cves) }.to_cstring()?
    };
    if !cves_ok(cves.to_bytes()) {
        pr_err!("patch '{}': invalid cve list (-22)\n", text(id));
        return Err(EINVAL);
    }
    // The owner is the module calling us from its init: live.
    let owner = ModuleRefRaw(desc.owner.cast());
    let mut funcs = KVec::with_capacity(desc.nfuncs as usize, GFP_KERNEL)?;
    for i in 0..desc.nfuncs as usize {
        // SAFETY: `funcs` has `nfuncs` entries (caller contract).
        let f = unsafe { &*desc.funcs.add(i) };
        if f.name.is_null() || f.object.is_null() || f.new_func.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: NUL-terminated (caller contract).
        let (object, name) = unsafe { (CStr::from_char_ptr(f.object as *const c_char), CStr::from_char_ptr(f.name)) };
        if !is_symbol_name(name.to_bytes()) || !is_symbol_name(object.to_bytes()) {
            pr_err!("patch '{}': invalid function or object name (-22)\n", text(id));
            return Err(EINVAL);
        }
        // A replacement must be code of the module registering it: that is
        // the module an enabled patch pins and a revert checks and releases.
        let repl = Symbol::of(f.new_func as usize);
        if ksym::symbol_module(repl.as_str()) != Some(owner.name().to_bytes()) {
            pr_err!("patch '{}': replacement for '{}' is '{}', not code of module '{}' (-22)\n",
                text(id), text(name), repl.as_str(), text(owner.name()));
            return Err(EINVAL);
        }
        // Where the module loader placed a kernel target by name and
        // position; module targets are placed by kmend.ko.
        let in_vmlinux = object.to_bytes() == b"vmlinux";
        if in_vmlinux == f.placed.is_null() {
            pr_err!("patch '{}': '{}:{}' {} (-22)\n", text(id), text(object), text(name),
                if in_vmlinux { "has no placed address (the module loader resolves it)" } else { "must not carry a placed address" });
            return Err(EINVAL);
        }
        funcs.push(
            PatchFunc {
                object: object.to_cstring()?,
                name: name.to_cstring()?,
                sympos: f.sympos,
                placed: f.placed as usize,
                new_func: f.new_func as usize,
                target: 0,
                fp_offset: 0,
                fp: KVec::new(),
            },
            GFP_KERNEL,
        )?;
    }
    let callbacks = Callbacks::from_abi(&desc.callbacks, owner.name()).map_err(|sym| {
        pr_err!("patch '{}': callback '{}' is not code of module '{}' (-22)\n", text(id), sym.as_str(), text(owner.name()));
        EINVAL
    })?;
    Ok(Patch {
        serial: 0,
        enabled_at: 0,
        id: id.to_cstring()?,
        replace: desc.flags & abi::KMEND_PATCH_REPLACE != 0,
        linked: desc.flags & abi::KMEND_PATCH_LINKED != 0,
        stale: false,
        relocs: desc.flags & abi::KMEND_PATCH_MODULE_RELOCS != 0,
        relocated: KVec::new(),
        cves,
        owner: Owner(desc.owner.cast()),
        funcs,
        callbacks,
        state: State::Registered,
    })
}
