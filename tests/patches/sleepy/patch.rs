// SPDX-License-Identifier: GPL-2.0
//! Replacement of test patch 'kmend_sleepy': returns at once.

/// Replacement for `kmend_testmod_sleepy(void)`: never sleeps.
#[no_mangle]
pub(crate) extern "C" fn sleepy_replacement() {
    crate::kmend_traceable!();
}
