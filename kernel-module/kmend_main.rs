// SPDX-License-Identifier: GPL-2.0
//! kmend: redirects kernel functions to their live-patched replacements.
//!
//! Patch modules register with [`patch`] through the exported
//! `kmend_register_patch()`; `/dev/kmend` ([`control`]) enables, reverts and
//! reports; [`redirect`] keeps the per-function stack of replacements, each
//! function's ftrace site jumping ([`ftrace`]) to a [`trampoline`];
//! [`transition`] switches them under stop_machine when no task runs the
//! code being replaced; [`kapi`] wraps what has no Rust binding.

use kernel::{
    miscdevice::{
        MiscDeviceOptions,
        MiscDeviceRegistration, //
    },
    prelude::*,
};

mod abi;
mod control;
mod ftrace;
mod kapi;
mod ksym;
mod modref;
mod patch;
mod redirect;
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
    _modules: kapi::ModuleNotifier,
    #[pin]
    _control: MiscDeviceRegistration<control::ControlFile>,
}

impl kernel::InPlaceModule for KmendModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // SAFETY: called once, before `/dev/kmend` exists and before any patch
        // module can resolve `kmend_register_patch`.
        unsafe { patch::STATE.init() };
        pr_info!("loaded (control abi {})\n", uapi::KMEND_UAPI_VERSION);
        try_pin_init!(Self {
            _modules <- kapi::ModuleNotifier::new(patch::on_module_event),
            _control <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"kmend" }),
        })
    }
}

#[pinned_drop]
impl PinnedDrop for KmendModule {
    fn drop(self: Pin<&mut Self>) {
        // Patch modules depend on kmend, so none is registered any more and
        // every redirection is gone.
        pr_info!("unloaded\n");
    }
}
