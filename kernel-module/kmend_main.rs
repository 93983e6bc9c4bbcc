// SPDX-License-Identifier: GPL-2.0
//! kmend: redirects kernel functions to their live-patched replacements.
//!
//! Patch modules register with [`patch`] through the exported
//! `kmend_register_patch()`; `/dev/kmend` ([`control`]) reports status and
//! reverts patches; [`redirect`] keeps the per-function stack of
//! replacements; [`ftrace`] is the safe wrapper over the ftrace handler.

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
mod ksym;
mod modref;
mod patch;
mod redirect;
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
    _control: MiscDeviceRegistration<control::ControlFile>,
}

impl kernel::InPlaceModule for KmendModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // SAFETY: called once, before `/dev/kmend` exists and before any patch
        // module can resolve `kmend_register_patch`.
        unsafe { patch::STATE.init() };
        pr_info!("loaded (control abi {})\n", uapi::KMEND_UAPI_VERSION);
        try_pin_init!(Self {
            _control <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"kmend" }),
        })
    }
}

#[pinned_drop]
impl PinnedDrop for KmendModule {
    fn drop(self: Pin<&mut Self>) {
        // Patch modules depend on kmend and are pinned while applied, so
        // nothing is left here; revert defensively all the same.
        patch::STATE.lock().revert_all();
        pr_info!("unloaded\n");
    }
}
