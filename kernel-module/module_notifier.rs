// SPDX-License-Identifier: GPL-2.0
//! Modules coming and going, as the module notifier reports them, and the
//! few things kmend reads of a `struct module`.
//!
//! C header: [`include/linux/module.h`](srctree/include/linux/module.h).

use kernel::{
    bindings,
    ffi::{
        c_int,
        c_ulong,
        c_void, //
    },
    prelude::*,
};

unsafe extern "C" {
    /// `kmend_export.c`: a module's core text.
    fn kmend_helper_module_text(module: *mut bindings::module, start: *mut c_ulong, size: *mut c_ulong);

    /// `kmend_export.c`: a module's name.
    fn kmend_helper_module_name(module: *mut bindings::module) -> *const u8;

    /// `kmend_export.c`: a function or variable (`type`: `STT_FUNC`,
    /// `STT_OBJECT`) in a module's symbol table.
    fn kmend_helper_module_symbol(
        module: *mut bindings::module,
        name: *const u8,
        sympos: c_ulong,
        r#type: u8,
        size: *mut c_ulong,
    ) -> c_ulong;
}

/// A module being loaded or unloaded, as the module notifier sees it.
pub(crate) struct ModuleRefRaw(pub(crate) *mut bindings::module);

impl ModuleRefRaw {
    /// The module's name.
    pub(crate) fn name(&self) -> &CStr {
        // SAFETY: the notifier passes a live module; its name is a
        // NUL-terminated array inside it.
        unsafe { CStr::from_char_ptr(kmend_helper_module_name(self.0)) }
    }

    /// The module's core text: `[start, end)`.
    pub(crate) fn text(&self) -> (usize, usize) {
        let (mut start, mut size): (c_ulong, c_ulong) = (0, 0);
        // SAFETY: a live module (see the type's users); two writable outputs.
        unsafe { kmend_helper_module_text(self.0, &mut start, &mut size) };
        (start as usize, (start + size) as usize)
    }

    /// Start and size of function `name` (the `sympos`-th; 0: unique).
    pub(crate) fn symbol(&self, name: &CStr, sympos: u64) -> Option<(usize, usize)> {
        self.lookup(name, sympos, bindings::STT_FUNC as u8)
    }

    /// Start and size of the module's one variable `name`.
    pub(crate) fn variable(&self, name: &CStr) -> Option<(usize, usize)> {
        self.lookup(name, 0, bindings::STT_OBJECT as u8)
    }

    fn lookup(&self, name: &CStr, sympos: u64, r#type: u8) -> Option<(usize, usize)> {
        let mut size: c_ulong = 0;
        // SAFETY: a live module, a NUL-terminated name, and room for the size.
        let addr = unsafe {
            kmend_helper_module_symbol(self.0, name.as_ptr().cast(), sympos as c_ulong, r#type, &mut size)
        };
        (addr != 0 && size != 0).then_some((addr as usize, size as usize))
    }

    /// Whether the module is still coming: a "going" event for a module in
    /// this state undoes a "coming" that a later notifier failed (the
    /// kernel sends it to the notifiers before that one, in their order).
    pub(crate) fn is_coming(&self) -> bool {
        // SAFETY: the notifier passes a live module; `state` is a plain
        // field the loader sets before calling the notifiers.
        unsafe { (*self.0).state == bindings::module_state_MODULE_STATE_COMING }
    }
}

/// A registration of the module notifier.
///
/// # Invariants
///
/// `nb` is registered with `register_module_notifier` until drop.
#[pin_data(PinnedDrop)]
pub(crate) struct ModuleNotifier {
    #[pin]
    nb: kernel::types::Opaque<bindings::notifier_block>,
}

// SAFETY: the notifier block is only used by the notifier chain, under its lock.
unsafe impl Send for ModuleNotifier {}
// SAFETY: as above.
unsafe impl Sync for ModuleNotifier {}

/// Who hears of modules coming and going.
pub(crate) trait ModuleHandler {
    /// A module is coming (its code has not run) or going (its exit has
    /// run); an error for a coming module makes its load fail.
    fn on_event(event: ModuleEvent, module: &ModuleRefRaw) -> Result;
}

/// What the module notifier reports.
pub(crate) enum ModuleEvent {
    Coming,
    Going,
}

impl ModuleNotifier {
    /// Calls `H::on_event` for every module that comes or goes; an error
    /// from a `Coming` event makes that module's load fail. Notifiers of
    /// higher `priority` hear of each event first (the kernel's jump label
    /// notifier has 1, most others 0).
    pub(crate) fn new<H: ModuleHandler>(priority: c_int) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            nb <- kernel::types::Opaque::try_ffi_init(|nb: *mut bindings::notifier_block| {
                // SAFETY: `nb` points to pinned memory for a notifier block;
                // all zeroes plus the callback is a valid one.
                unsafe {
                    nb.write(core::mem::zeroed());
                    (*nb).notifier_call = Some(Self::callback::<H>);
                    (*nb).priority = priority;
                }
                // SAFETY: `nb` is initialised and stays put until drop.
                kernel::error::to_result(unsafe { bindings::register_module_notifier(nb) })
            }),
        })
    }

    unsafe extern "C" fn callback<H: ModuleHandler>(
        _nb: *mut bindings::notifier_block,
        action: c_ulong,
        data: *mut c_void,
    ) -> c_int {
        let event = match action as u32 {
            bindings::module_state_MODULE_STATE_COMING => ModuleEvent::Coming,
            bindings::module_state_MODULE_STATE_GOING => ModuleEvent::Going,
            _ => return bindings::NOTIFY_OK as c_int,
        };
        match H::on_event(event, &ModuleRefRaw(data.cast())) {
            Ok(()) => bindings::NOTIFY_OK as c_int,
            // notifier_from_errno(): stop the chain and carry the errno.
            Err(e) => (bindings::NOTIFY_STOP_MASK as c_int) | ((bindings::NOTIFY_OK as c_int) - e.to_errno()),
        }
    }
}

#[pinned_drop]
impl PinnedDrop for ModuleNotifier {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: by the type invariant `nb` is registered.
        unsafe { bindings::unregister_module_notifier(self.nb.get()) };
    }
}
