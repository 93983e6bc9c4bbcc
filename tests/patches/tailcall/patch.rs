// SPDX-License-Identifier: GPL-2.0
//! Replacement of test patch 'kmend_tailcall': hands over to a helper by a
//! tail call (the suite checks the compiled code is a `jmp`).

/// Replacement for `kmend_testmod_sleepy(void)` (called only by the test
/// module's kthread): continues in the helper.
#[no_mangle]
pub(crate) extern "C" fn tailcall_sleepy() {
    crate::kmend_traceable!();
    tailcall_wait()
}

/// Keeps the calling kthread here until it is told to stop (when the test
/// module unloads).
#[no_mangle]
#[inline(never)]
pub(crate) extern "C" fn tailcall_wait() {
    // SAFETY: called by a kthread (see above), in process context.
    while !unsafe { kernel::bindings::kthread_should_stop() } {
        // SAFETY: as above.
        unsafe { kernel::bindings::msleep(20) };
    }
}
