// SPDX-License-Identifier: GPL-2.0
//! The in-kernel ABI between `kmend.ko` and patch modules.
//!
//! A patch module describes itself with a [`KmendPatch`], hands it to
//! `kmend_register_patch()` from its init and to `kmend_unregister_patch()`
//! from its exit (both exported by `kmend_export.c`). Registering does not
//! apply anything: userspace enables the patch through `/dev/kmend`, passing
//! the verified target addresses and fingerprints from the patch's signed
//! manifest. kmend copies the descriptor. Patch modules include this file
//! with `#[path = ".../abi.rs"] mod abi;` so both sides share one definition.

use kernel::ffi::{
    c_char,
    c_int,
    c_void, //
};

/// Version of [`KmendPatch`]; bumped on any change of layout or meaning.
/// 4 added [`KMEND_PATCH_LINKED`]; 5 added [`KmendFunc::placed`]; 6 added
/// [`KMEND_PATCH_MODULE_RELOCS`].
/// kmend.ko takes only this version: a patch module is built against the
/// kmend.ko it ships with.
pub(crate) const KMEND_ABI_VERSION: u32 = 6;

/// Flag: this patch supersedes every applied patch (cumulative "replace").
pub(crate) const KMEND_PATCH_REPLACE: u32 = 1 << 0;

/// Flag: the patch's code for functions of modules was linked against
/// those modules as they were loaded when the patch module loaded (a fix
/// built from a diff refers to their internal symbols, which the module
/// loader resolved then). It is valid only for those loads of them: once
/// one unloads, kmend refuses to apply the patch, and refuses the
/// module's next load while the patch is applied (docs/safety.md).
pub(crate) const KMEND_PATCH_LINKED: u32 = 1 << 1;

/// Flag: the patch's code for functions of modules refers to those
/// modules' internal symbols by livepatch relocations that kmend.ko
/// applies itself, each time such a module loads (and clears when it
/// goes), in the patch module's `.klp.rela.<module>.*` sections; the patch
/// module is a `livepatch` module, so the kernel keeps them. Unlike
/// [`KMEND_PATCH_LINKED`], the patch stays valid across the module's
/// reloads (`module_relocs.rs`).
pub(crate) const KMEND_PATCH_MODULE_RELOCS: u32 = 1 << 2;

/// One function a patch replaces.
#[repr(C)]
pub(crate) struct KmendFunc {
    /// Object holding the target: `"vmlinux"` or a module name (NUL-terminated).
    pub(crate) object: *const c_char,
    /// Name of the function to replace (NUL-terminated).
    pub(crate) name: *const c_char,
    /// Position among same-named symbols of `object` (0 or 1: the first).
    pub(crate) sympos: u64,
    /// The replacement, with exactly the signature of the original.
    pub(crate) new_func: *const c_void,
    /// For a `vmlinux` target: the target itself, as the kernel's module
    /// loader placed it by name and position when the patch module loaded
    /// (a livepatch relocation to `.klp.sym.vmlinux.<name>,<sympos>`,
    /// which the loader resolves in kallsyms and refuses if the name is
    /// not there, is ambiguous at position 0, or has no such position).
    /// kmend enables the function only at this address. Null for module
    /// targets: kmend.ko places those in the module itself.
    pub(crate) placed: *const c_void,
}

/// A patch: an id and the functions it replaces, switched as one unit.
#[repr(C)]
pub(crate) struct KmendPatch {
    /// Must be [`KMEND_ABI_VERSION`].
    pub(crate) abi_version: u32,
    /// `KMEND_PATCH_*` flags.
    pub(crate) flags: u32,
    /// Patch id (NUL-terminated), unique among registered patches.
    pub(crate) id: *const c_char,
    /// The patch module itself (`THIS_MODULE`); pinned while enabled.
    pub(crate) owner: *mut c_void,
    /// Number of entries in `funcs`.
    pub(crate) nfuncs: u32,
    /// The functions.
    pub(crate) funcs: *const KmendFunc,
    /// CVEs this patch fixes, comma-separated (NUL-terminated, may be empty).
    pub(crate) cves: *const c_char,
    /// Code run around the switches, each optional; see [`KmendCallbacks`].
    pub(crate) callbacks: KmendCallbacks,
}

/// A patch's callbacks (the kernel livepatch's pre/post (un)patch
/// callbacks, for the whole patch). Each is code of the patch module, runs
/// in process context with no kmend lock but the one that orders switches,
/// and may sleep. `pre_apply` runs before the apply's switch and may refuse
/// it (a negative errno; nothing is switched); `post_apply` after it;
/// `pre_revert` before a revert's switch; `post_revert` after it, and also
/// after an apply that failed once `pre_apply` had succeeded, to undo it.
/// The patches a cumulative patch supersedes get no callbacks (as with the
/// kernel's atomic replace): the new patch takes their state over.
#[repr(C)]
pub(crate) struct KmendCallbacks {
    pub(crate) pre_apply: Option<unsafe extern "C" fn() -> c_int>,
    pub(crate) post_apply: Option<unsafe extern "C" fn()>,
    pub(crate) pre_revert: Option<unsafe extern "C" fn()>,
    pub(crate) post_revert: Option<unsafe extern "C" fn()>,
}

/// Makes the enclosing replacement function visible to ftrace, so that
/// kprobes (and so kmend's eBPF verification) may attach to it.
///
/// Rust code in the kernel is compiled without ftrace call sites, and the
/// kernel refuses kprobe events on functions that have none ("notrace").
/// Put this first in every replacement: it emits the same `call __fentry__`
/// that `-mfentry` gives C functions, and records it in `__mcount_loc` as
/// objtool does for C, so ftrace turns it into a NOP at load time.
/// `clobber_abi("C")` makes it an ordinary call to the compiler, so nothing
/// live is lost if tracing ever enables the site.
#[macro_export]
macro_rules! kmend_traceable {
    () => {
        // SAFETY: a call to the kernel's ftrace entry point with the C calling
        // convention; until ftrace enables the site it is a NOP.
        unsafe {
            core::arch::asm!(
                "2: call __fentry__",
                ".pushsection __mcount_loc, \"a\"",
                ".balign 8",
                ".quad 2b",
                ".popsection",
                clobber_abi("C"),
            )
        }
    };
}
