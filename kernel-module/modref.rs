// SPDX-License-Identifier: GPL-2.0
//! A counted reference on a module, so a patch's code cannot be unloaded
//! while calls are redirected into it.
//!
//! C header: [`include/linux/module.h`](srctree/include/linux/module.h).

use kernel::{
    bindings,
    prelude::*, //
};

/// A reference taken with `try_module_get`, dropped with `module_put`.
///
/// # Invariants
///
/// `module` is a live module on which this value holds one reference.
pub(crate) struct ModuleRef {
    module: *mut bindings::module,
}

// SAFETY: a module reference may be taken on one CPU and dropped on another.
unsafe impl Send for ModuleRef {}
// SAFETY: shared access only reads the pointer.
unsafe impl Sync for ModuleRef {}

impl ModuleRef {
    /// Takes a reference on `module`.
    ///
    /// # Safety
    ///
    /// `module` must point to a module that is loaded or being loaded, such
    /// as the `THIS_MODULE` of the caller of an exported function.
    pub(crate) unsafe fn get(module: *mut bindings::module) -> Result<Self> {
        if module.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: the caller guarantees `module` is a loaded module.
        if !unsafe { bindings::try_module_get(module) } {
            return Err(ENOENT);
        }
        // INVARIANT: the reference was just taken.
        Ok(Self { module })
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        // SAFETY: by the type invariant this value holds one reference.
        unsafe { bindings::module_put(self.module) };
    }
}
