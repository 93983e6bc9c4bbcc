// SPDX-License-Identifier: GPL-2.0
//! A patch's callbacks (`abi::KmendCallbacks`): code of the patch module
//! run before and after the switches that apply and revert it, for fixes
//! that must set up or tear down state (shadow variables, a flag the new
//! code reads) when the code changes. The kernel livepatch's equivalent is
//! `struct klp_callbacks` (pre/post patch and unpatch, per object).
//!
//! Called by `registry::enable`/`revert` with the switch lock held and the
//! registry lock not held: callbacks may sleep, take locks, allocate, and
//! read kmend's status; they must not apply or revert patches.

use kernel::{
    ffi::c_int,
    prelude::*, //
};

use crate::{
    abi,
    ksym::{
        self,
        Symbol, //
    },
    modref::ModuleRef,
};

/// The callbacks of a registered patch, checked to be code of its module.
#[derive(Clone, Copy, Default)]
pub(crate) struct Callbacks {
    pre_apply: Option<unsafe extern "C" fn() -> c_int>,
    post_apply: Option<unsafe extern "C" fn()>,
    pre_revert: Option<unsafe extern "C" fn()>,
    post_revert: Option<unsafe extern "C" fn()>,
}

impl Callbacks {
    /// Copies `abi`'s callbacks; each must be code of module `owner`
    /// (`Err`: what the first that is not resolves to).
    pub(crate) fn from_abi(abi: &abi::KmendCallbacks, owner: &CStr) -> Result<Self, Symbol> {
        let addrs = [
            abi.pre_apply.map(|f| f as usize),
            abi.post_apply.map(|f| f as usize),
            abi.pre_revert.map(|f| f as usize),
            abi.post_revert.map(|f| f as usize),
        ];
        for addr in addrs.into_iter().flatten() {
            let sym = Symbol::of(addr);
            if ksym::symbol_module(sym.as_str()) != Some(owner.to_bytes()) {
                return Err(sym);
            }
        }
        Ok(Self { pre_apply: abi.pre_apply, post_apply: abi.post_apply, pre_revert: abi.pre_revert, post_revert: abi.post_revert })
    }

    /// Whether the patch has any.
    pub(crate) fn any(&self) -> bool {
        self.pre_apply.is_some() || self.post_apply.is_some() || self.pre_revert.is_some() || self.post_revert.is_some()
    }
}

/// A patch's callbacks with its module held, so they can run while the
/// registry is unlocked (a racing `rmmod` waits, it does not free them).
pub(crate) struct Armed {
    callbacks: Callbacks,
    _module: ModuleRef,
}

impl Armed {
    /// Holds `module` (the patch module that registered `callbacks`).
    pub(crate) fn new(callbacks: Callbacks, module: ModuleRef) -> Self {
        Self { callbacks, _module: module }
    }

    /// `pre_apply`: `Err` with its errno if it refuses.
    pub(crate) fn pre_apply(&self) -> Result {
        let Some(f) = self.callbacks.pre_apply else { return Ok(()) };
        // SAFETY: `f` lies in the text of the patch module (checked in
        // `from_abi`), which `_module` keeps loaded; it takes no arguments.
        let ret = unsafe { f() };
        if ret < 0 { Err(Error::from_errno(ret)) } else { Ok(()) }
    }

    pub(crate) fn post_apply(&self) {
        Self::call(self.callbacks.post_apply);
    }

    pub(crate) fn pre_revert(&self) {
        Self::call(self.callbacks.pre_revert);
    }

    pub(crate) fn post_revert(&self) {
        Self::call(self.callbacks.post_revert);
    }

    fn call(f: Option<unsafe extern "C" fn()>) {
        if let Some(f) = f {
            // SAFETY: as in `pre_apply`.
            unsafe { f() };
        }
    }
}
