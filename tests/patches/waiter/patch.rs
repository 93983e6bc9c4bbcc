// SPDX-License-Identifier: GPL-2.0
//! Replacement of test patch 'kmend_waiter': returns at once.

/// Replacement for `int kmend_testmod_wait_here(void)`: never sleeps, and
/// says it is the new code (2; the original returns 1).
#[no_mangle]
pub(crate) extern "C" fn wait_here_replacement() -> kernel::ffi::c_int {
    crate::kmend_traceable!();
    2
}
