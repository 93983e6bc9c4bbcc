// SPDX-License-Identifier: GPL-2.0
//! Replacements of the sample patch (see patch.toml).

use kernel::{
    bindings,
    ffi::{
        c_int,
        c_void, //
    },
    seq_file::SeqFile,
    seq_print, //
};

/// The text the replacement prints; the VM suite looks for it.
const PATCHED_TEXT: &str = "kmend: this kernel is live patched";

/// Replacement for `cmdline_proc_show()` in fs/proc/cmdline.c.
///
/// # Safety
///
/// Called by the kernel in place of `cmdline_proc_show`, with its
/// arguments: a live `seq_file`.
#[no_mangle]
pub(crate) unsafe extern "C" fn kmend_sample_cmdline_proc_show(m: *mut bindings::seq_file, _v: *mut c_void) -> c_int {
    crate::kmend_traceable!();
    // SAFETY: `m` is the live seq_file of this show call.
    let m = unsafe { SeqFile::from_raw(m) };
    seq_print!(m, "{}\n", PATCHED_TEXT);
    0
}
