// SPDX-License-Identifier: GPL-2.0
//! Replacement of the benchmark patch (same behaviour as klp_bench.c).

/// Replacement for `int kmend_bench_target(int x)`.
#[no_mangle]
pub(crate) extern "C" fn bench_target(x: kernel::ffi::c_int) -> kernel::ffi::c_int {
    crate::kmend_traceable!();
    x.wrapping_add(2)
}
