// SPDX-License-Identifier: GPL-2.0
//! Small safe wrappers of kernel functions kmend needs that have no Rust
//! abstraction: reading kernel text, the clock, sleeping, the release.
//! (Stopping the machine: `stop.rs`; threads and stacks: `task.rs`;
//! modules: `module_notifier.rs`.)
//!
//! C header: [`include/linux/uaccess.h`](srctree/include/linux/uaccess.h).

use kernel::{
    bindings,
    ffi::c_void,
    prelude::*,
};

unsafe extern "C" {
    /// `kmend_export.c`: `init_utsname()->release`.
    fn kmend_helper_release() -> *const u8;
}

/// Reads kernel text at `addr` into `buf`, without faulting.
pub(crate) fn read_text(addr: usize, buf: &mut [u8]) -> Result {
    // SAFETY: `copy_from_kernel_nofault` checks the source and returns an
    // error instead of faulting; `buf` is valid for its length.
    let ret = unsafe {
        bindings::copy_from_kernel_nofault(buf.as_mut_ptr().cast(), addr as *const c_void, buf.len())
    };
    if ret == 0 { Ok(()) } else { Err(EFAULT) }
}

/// Monotonic time in nanoseconds.
pub(crate) fn now_ns() -> i64 {
    // SAFETY: reads the clock; callable from any context.
    unsafe { bindings::ktime_get() }
}

/// Sleeps for about `ms` milliseconds.
pub(crate) fn sleep_ms(ms: u32) {
    // SAFETY: process context (ioctl), may sleep.
    unsafe { bindings::msleep(ms) };
}

/// The running kernel's release (`uname -r`).
pub(crate) fn release() -> &'static str {
    // SAFETY: the helper returns the NUL-terminated release of the initial
    // UTS namespace, a static that lives as long as the kernel.
    let release = unsafe { CStr::from_char_ptr(kmend_helper_release()) };
    release.to_str().unwrap_or("?")
}
