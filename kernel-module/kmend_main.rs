// SPDX-License-Identifier: GPL-2.0
//! kmend: redirects kernel functions to their live-patched replacements.
//!
//! Patch modules register a [`patch`] with the [`registry`] through the
//! exported `kmend_register_patch()`; `/dev/kmend` ([`control`]) enables,
//! reverts and reports ([`status`]); [`redirect`] keeps the per-function
//! stack of replacements, each function's ftrace site jumping ([`ftrace`])
//! to a [`trampoline`]; [`transition`] switches them under stop_machine
//! ([`stop`]) when no [`task`] runs the code being replaced;
//! [`module_targets`] follows patched modules as they come and go
//! ([`module_notifier`]), and [`module_pins`] keeps loaded the modules whose
//! static keys a patch's code uses; [`kapi`], [`ksym`] and [`modref`] wrap what has no
//! Rust binding; [`refusal`] is the one-line error every refusal carries.

use kernel::{
    ffi::c_int,
    miscdevice::{
        MiscDeviceOptions,
        MiscDeviceRegistration, //
    },
    prelude::*,
};

mod abi;
mod callbacks;
mod control;
mod ftrace;
mod kapi;
mod ksym;
mod module_notifier;
mod module_pins;
mod module_relocs;
mod module_targets;
mod modref;
mod park;
mod patch;
mod redirect;
mod refusal;
mod registry;
mod sched_watch;
mod status;
mod stop;
mod task;
mod trampoline;
mod transition;
mod uapi;

module! {
    type: KmendModule,
    name: "kmend",
    authors: ["kmend developers"],
    description: "kmend live-patching core: function redirection",
    license: "GPL",
}

#[pin_data(PinnedDrop)]
struct KmendModule {
    #[pin]
    _modules: module_notifier::ModuleNotifier,
    /// Module references for patch modules' static keys ([`module_pins`]):
    /// taken first when a module comes, dropped last when it goes.
    #[pin]
    _pin: module_notifier::ModuleNotifier,
    #[pin]
    _unpin: module_notifier::ModuleNotifier,
    #[pin]
    _control: MiscDeviceRegistration<control::ControlFile>,
    /// What the registry keeps running (the `sched_switch` probe); dropped
    /// last, after `/dev/kmend` and the module notifier are gone.
    _running: registry::Running,
    _idle: task::IdleTasks,
}

impl kernel::InPlaceModule for KmendModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        park::init(module.as_ptr());
        // SAFETY: called once, before `/dev/kmend` exists and before any patch
        // module can resolve `kmend_register_patch`.
        unsafe { registry::STATE.init() };
        // SAFETY: as above, before `/dev/kmend` exists.
        unsafe { registry::SWITCHING.init() };
        // SAFETY: called once, before the notifiers that use it exist.
        unsafe { module_pins::PINS.init() };
        pr_info!("loaded (control abi {})\n", uapi::KMEND_UAPI_VERSION);
        try_pin_init!(Self {
            // First: without it a switch could not check the idle tasks.
            _idle <- task::IdleTasks::find(),
            _modules <- module_notifier::ModuleNotifier::new::<module_targets::ModuleTargets>(0),
            _pin <- module_notifier::ModuleNotifier::new::<module_pins::PinOnComing>(c_int::MAX),
            _unpin <- module_notifier::ModuleNotifier::new::<module_pins::UnpinOnGoing>(c_int::MIN),
            _control <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"kmend" }),
            // Last: if anything above fails, nothing is left registered.
            _running: registry::Running::start(),
        })
    }
}

#[pinned_drop]
impl PinnedDrop for KmendModule {
    fn drop(self: Pin<&mut Self>) {
        // Patch modules depend on kmend, so none is registered any more and
        // every redirection is gone; `_running` frees what the registry
        // still owns when it drops, after this. No thread is parked any
        // more (each held kmend), but one may still be leaving `park`.
        park::drain();
        module_pins::release_all();
        pr_info!("unloaded\n");
    }
}
