// SPDX-License-Identifier: GPL-2.0
//! A patch's references into the modules it fixes, resolved each time such
//! a module loads.
//!
//! A fix built from a diff calls and reads internal symbols of the module
//! it fixes. With [`crate::abi::KMEND_PATCH_MODULE_RELOCS`] those references are
//! livepatch relocations in the patch module's `.klp.rela.<module>.*`
//! sections, which the kernel keeps for a `livepatch` module; kmend.ko
//! applies them, resolved by name and position in the module as it is
//! loaded then, before anything can run the patch's code for it (when the
//! patch is enabled with the module loaded, or as the module comes), and
//! clears them once the module has gone, as the livepatch core does for
//! its own patches. So the patch follows the module across unloads and
//! reloads, and the module's next load is fixed before its init runs.
//!
//! C side: `kmend_helper_module_relocs()` in `kmend_export.c`.

use kernel::{
    bindings,
    ffi::{
        c_char,
        c_int, //
    },
    prelude::*,
};

use crate::{
    patch::Patch,
    refusal::text, //
};

unsafe extern "C" {
    /// `kmend_export.c`: applies or clears the patch module's livepatch
    /// relocations for module `objname`.
    fn kmend_helper_module_relocs(pmod: *mut bindings::module, objname: *const c_char, apply: bool) -> c_int;
}

impl Patch {
    /// Whether its references into module `name` are resolved now.
    pub(crate) fn relocated_for(&self, name: &CStr) -> bool {
        self.relocated.iter().any(|m| m.to_bytes() == name.to_bytes())
    }

    /// Resolves its references into module `name`, unless they are already
    /// (or the patch has none: not [`crate::abi::KMEND_PATCH_MODULE_RELOCS`]).
    /// Call under the registry lock, with the module loaded: coming, or
    /// live and not yet past kmend's "going" handler, which clears them
    /// (`module_targets.rs`) before the module is freed.
    pub(crate) fn relocate(&mut self, name: &CStr) -> Result {
        if !self.relocs || self.relocated_for(name) {
            return Ok(());
        }
        self.relocated.reserve(1, GFP_KERNEL)?;
        let n = name.to_cstring()?;
        // SAFETY: `owner` is the live patch module (registered patches
        // unregister in their exit); `name` is NUL-terminated.
        let ret = unsafe { kmend_helper_module_relocs(self.owner.0, name.as_ptr().cast(), true) };
        if ret != 0 {
            pr_err!("patch '{}': its references into module '{}' cannot be resolved ({ret})\n", text(&self.id), text(name));
            return Err(Error::from_errno(ret));
        }
        let _ = self.relocated.push_within_capacity(n);
        pr_info!("patch '{}': references into module '{}' resolved\n", text(&self.id), text(name));
        Ok(())
    }

    /// Clears its references into module `name` (which is going), if
    /// resolved: no code may reach the module's memory through them.
    pub(crate) fn unrelocate(&mut self, name: &CStr) {
        let Some(i) = self.relocated.iter().position(|m| m.to_bytes() == name.to_bytes()) else { return };
        // SAFETY: as in `relocate`; the relocations were applied for `name`.
        unsafe { kmend_helper_module_relocs(self.owner.0, name.as_ptr().cast(), false) };
        let _ = self.relocated.remove(i);
    }
}
