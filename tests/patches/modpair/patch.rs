// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_modpair' (two functions of a module
//! that loads after the patch is applied).

include!("../seq_replacement.rs");

seq_replacement!(modpair_show, "modpair");

/// Replacement of `int kmend_bench_f0(int x)`: returns x + 100.
#[no_mangle]
pub(crate) extern "C" fn modpair_f0(x: kernel::ffi::c_int) -> kernel::ffi::c_int {
    crate::kmend_traceable!();
    x.wrapping_add(100)
}
