// SPDX-License-Identifier: GPL-2.0
//! Sample kmend patch: `/proc/cmdline` shows that the kernel is live patched.
//!
//! Loading this module applies the patch (through `kmend_register_patch`);
//! `kmend revert kmend_sample` reverts it, after which the module can be
//! removed. Same target as the kernel's own `samples/livepatch`, so the two
//! can be compared.

use kernel::{
    bindings,
    error::to_result,
    ffi::{
        c_int,
        c_void, //
    },
    prelude::*,
    seq_file::SeqFile,
    seq_print, //
};

#[allow(dead_code, reason = "the shared ABI file defines more than one patch uses")]
#[path = "../abi.rs"]
mod abi;

module! {
    type: KmendSample,
    name: "kmend_sample",
    authors: ["kmend developers"],
    description: "kmend sample patch for cmdline_proc_show",
    license: "GPL",
}

/// The text the replacement prints; the VM suite looks for it.
const PATCHED_TEXT: &str = "kmend: this kernel is live patched";

/// Replacement for `cmdline_proc_show()` in fs/proc/cmdline.c.
///
/// # Safety
///
/// Called by the kernel in place of `cmdline_proc_show`, with its arguments:
/// a live `seq_file`.
#[no_mangle]
unsafe extern "C" fn kmend_sample_cmdline_proc_show(m: *mut bindings::seq_file, _v: *mut c_void) -> c_int {
    kmend_traceable!();
    // SAFETY: `m` is the live seq_file of this show call.
    let m = unsafe { SeqFile::from_raw(m) };
    seq_print!(m, "{}\n", PATCHED_TEXT);
    0
}

unsafe extern "C" {
    /// Exported by kmend.ko (`kernel-module/kmend_export.c`).
    fn kmend_register_patch(patch: *const abi::KmendPatch) -> c_int;
}

struct KmendSample;

impl kernel::Module for KmendSample {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let funcs = [abi::KmendFunc {
            object: c"vmlinux".as_ptr().cast(),
            name: c"cmdline_proc_show".as_ptr().cast(),
            sympos: 0,
            new_func: kmend_sample_cmdline_proc_show as *const c_void,
        }];
        let patch = abi::KmendPatch {
            abi_version: abi::KMEND_ABI_VERSION,
            flags: 0,
            id: c"kmend_sample".as_ptr().cast(),
            owner: module.as_ptr().cast(),
            nfuncs: funcs.len() as u32,
            funcs: funcs.as_ptr(),
        };
        // SAFETY: `patch` is a valid descriptor for this module; kmend copies
        // it before returning.
        to_result(unsafe { kmend_register_patch(&patch) })?;
        Ok(KmendSample)
    }
}
