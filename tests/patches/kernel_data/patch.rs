// SPDX-License-Identifier: GPL-2.0
//! Replacement of the kernel-data test patch (see patch.toml).

use kernel::{
    bindings,
    ffi::{
        c_char,
        c_int,
        c_void, //
    },
    seq_file::SeqFile,
    seq_print, //
};

unsafe extern "C" {
    /// The kernel's copy of the command line (init/main.c), not exported.
    static saved_command_line: *const c_char;
}

/// Replacement for `cmdline_proc_show()`: the command line, prefixed.
///
/// # Safety
///
/// Called by the kernel in place of `cmdline_proc_show`, with its
/// arguments: a live `seq_file`.
#[no_mangle]
pub(crate) unsafe extern "C" fn kmend_kernel_data_cmdline_proc_show(m: *mut bindings::seq_file, _v: *mut c_void) -> c_int {
    crate::kmend_traceable!();
    // SAFETY: `m` is the live seq_file of this show call.
    let m = unsafe { SeqFile::from_raw(m) };
    // SAFETY: saved_command_line is set once at boot to a NUL-terminated
    // string that lives as long as the kernel and is never freed.
    let line = unsafe { core::ffi::CStr::from_ptr(saved_command_line.cast()) };
    seq_print!(m, "kmend-data:{}\n", line.to_str().unwrap_or("?"));
    0
}
