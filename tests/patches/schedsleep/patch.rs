// SPDX-License-Identifier: GPL-2.0
//! Replacement of test patch 'kmend_schedsleep'.

/// Replacement for `usleep_range_state(min, max, state)`: sleeps the
/// minimum, rounded up to milliseconds (uninterruptibly, whatever `state`).
#[no_mangle]
pub(crate) extern "C" fn schedsleep_usleep_range_state(
    min: kernel::ffi::c_ulong,
    _max: kernel::ffi::c_ulong,
    _state: kernel::ffi::c_uint,
) {
    crate::kmend_traceable!();
    let ms = u32::try_from(min.div_ceil(1000)).unwrap_or(u32::MAX);
    // SAFETY: process context (the callers of usleep_range may sleep).
    unsafe { kernel::bindings::msleep(ms) };
}
