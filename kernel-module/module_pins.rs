// SPDX-License-Identifier: GPL-2.0
//! Modules a patch module's code uses the static keys or static calls of,
//! kept loaded for as long as the patch module is.
//!
//! A fix's copied code that hits a tracepoint, a `pr_debug()` or a static
//! call of a module has entries in the patch module's `__jump_table` and
//! `.static_call_sites` that point at keys inside that module. The kernel
//! links each entry to its key when the patch module comes, and follows
//! the pointer again when it goes (`jump_label_del_module()`,
//! `static_call_del_module()`): if the module holding the key had been
//! unloaded in between, that would read freed memory. So kmend holds a
//! reference on each such module from before the patch module's entries
//! are linked until after they are unlinked:
//!
//! - taken when the patch module comes, by a notifier of the highest
//!   priority, which runs before the jump label (priority 1) and static
//!   call notifiers; if a module cannot be held (it is being unloaded), the
//!   patch module's load fails there, before anything was linked;
//! - dropped when the patch module goes, by a notifier of the lowest
//!   priority, after theirs.
//!
//! The kernel sends a failed "coming" back as "going" only to the
//! notifiers before the one that failed, and in their order: kmend's
//! first, before the jump label notifier unlinks. Dropping the references
//! then could free a key the next notifier reads, so they are kept instead
//! (the module stays loaded) until kmend.ko itself unloads, when no patch
//! module is left. That only happens when the kernel runs out of memory
//! linking the patch module.
//!
//! A patch module names the modules in `kmend_pinned_modules`, an array of
//! `struct module` pointers that its own load filled in (livepatch
//! relocations to each module's `__this_module`; `cargo xtask patch build`
//! writes it for copied code with such entries).
//!
//! C header: [`include/linux/module.h`](srctree/include/linux/module.h).

use kernel::{
    bindings,
    prelude::*, //
};

use crate::{
    modref::ModuleRef,
    module_notifier::{
        ModuleEvent,
        ModuleHandler,
        ModuleRefRaw, //
    },
    refusal::text,
};

/// The variable a patch module names its pinned modules in.
const PINNED: &CStr = c"kmend_pinned_modules";

/// The references held for one patch module.
pub(crate) struct Pins {
    /// The patch module (compared, never dereferenced).
    owner: usize,
    _refs: KVec<ModuleRef>,
}

kernel::sync::global_lock! {
    // SAFETY: initialised in `KmendModule::init`, before the notifiers that
    // use it are registered.
    pub(crate) unsafe(uninit) static PINS: Mutex<KVec<Pins>> = KVec::new();
}

/// Takes the references when a patch module comes (highest priority).
pub(crate) struct PinOnComing;

/// Drops them when it goes (lowest priority).
pub(crate) struct UnpinOnGoing;

/// The modules `module` names in [`PINNED`], held; none if it names none.
fn hold(module: &ModuleRefRaw) -> Result<KVec<ModuleRef>> {
    let mut refs = KVec::new();
    let Some((addr, size)) = module.variable(PINNED) else {
        return Ok(refs);
    };
    let n = size / core::mem::size_of::<*mut bindings::module>();
    for i in 0..n {
        // SAFETY: `addr` is the start of the coming module's array of `n`
        // module pointers (its size from the symbol table); the module's
        // data is mapped while it comes.
        let target = unsafe { *(addr as *const *mut bindings::module).add(i) };
        // SAFETY: the module loader filled each entry with a module it found
        // loaded (by name, with the module list locked) while this one
        // loaded; a module is freed only after its "going" notifiers, and
        // `try_module_get` refuses one that is going.
        match unsafe { ModuleRef::get(target) } {
            Ok(r) => refs.push(r, GFP_KERNEL)?,
            Err(e) => {
                pr_err!(
                    "patch module '{}' uses static keys of a module that is being unloaded: it cannot load now\n",
                    text(module.name())
                );
                return Err(e);
            }
        }
    }
    Ok(refs)
}

impl ModuleHandler for PinOnComing {
    fn on_event(event: ModuleEvent, module: &ModuleRefRaw) -> Result {
        match event {
            ModuleEvent::Coming => {
                let refs = hold(module)?;
                if !refs.is_empty() {
                    PINS.lock().push(Pins { owner: module.0 as usize, _refs: refs }, GFP_KERNEL)?;
                }
            }
            // A failed "coming" being undone (see the module docs): the
            // references stay, logged, until kmend.ko unloads.
            ModuleEvent::Going if module.is_coming() => {
                let mut pins = PINS.lock();
                if let Some(p) = pins.iter_mut().find(|p| p.owner == module.0 as usize) {
                    // Never matches again: no module lives at address 0.
                    p.owner = 0;
                    pr_warn!(
                        "patch module '{}' failed to load: the modules whose static keys it uses stay loaded until kmend unloads\n",
                        text(module.name())
                    );
                }
            }
            ModuleEvent::Going => {}
        }
        Ok(())
    }
}

impl ModuleHandler for UnpinOnGoing {
    fn on_event(event: ModuleEvent, module: &ModuleRefRaw) -> Result {
        if let ModuleEvent::Going = event {
            // Dropping an entry drops its references.
            PINS.lock().retain(|p| p.owner != module.0 as usize);
        }
        Ok(())
    }
}

/// Drops every reference still held (kmend.ko is unloading; no patch
/// module is loaded, since each depends on kmend.ko).
pub(crate) fn release_all() {
    PINS.lock().clear();
}
