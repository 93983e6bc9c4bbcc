// SPDX-License-Identifier: GPL-2.0
//! Replacement of test patch 'kmend_deep': returns at once.

/// Replacement for `kmend_testmod_deep(void)`: never recurses or sleeps.
#[no_mangle]
pub(crate) extern "C" fn deep_replacement() {
    crate::kmend_traceable!();
}
