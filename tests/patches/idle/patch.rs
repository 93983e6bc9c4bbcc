// SPDX-License-Identifier: GPL-2.0
//! Replacement of test patch 'kmend_idle' (see patch.toml).

use kernel::ffi::c_int;

unsafe extern "C" {
    /// The scheduler's core (kernel/sched/core.c), not exported: the module
    /// loader places it by name when the patch loads.
    fn __schedule(sched_mode: c_int);
}

/// `SM_IDLE` of kernel/sched/core.c: a switch out of the idle task.
const SM_IDLE: c_int = -1;

/// Replacement for `schedule_idle()`: one switch out of the idle task (the
/// idle loop calls it again while a reschedule is still due).
#[no_mangle]
pub(crate) extern "C" fn kmend_idle_schedule_idle() {
    crate::kmend_traceable!();
    // SAFETY: called in place of schedule_idle(), by the idle task, with
    // preemption off, as __schedule(SM_IDLE) requires.
    unsafe { __schedule(SM_IDLE) };
}
