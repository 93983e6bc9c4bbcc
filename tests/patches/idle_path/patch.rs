// SPDX-License-Identifier: GPL-2.0
//! Replacement of test patch 'kmend_idle_path' (see patch.toml).

unsafe extern "C" {
    /// arch/x86/kernel/tsc_sync.c, not exported: the module loader places it.
    fn tsc_verify_tsc_adjust(resume: bool) -> bool;
    /// arch/x86/kernel/nmi.c, not exported.
    fn local_touch_nmi();
}

/// Replacement for `arch_cpu_idle_enter()` (arch/x86/kernel/process.c):
/// what the original does.
#[no_mangle]
pub(crate) extern "C" fn kmend_idle_path_arch_cpu_idle_enter() {
    crate::kmend_traceable!();
    // SAFETY: called in place of arch_cpu_idle_enter(), from the idle loop
    // with interrupts off, where the original calls both.
    unsafe {
        tsc_verify_tsc_adjust(false);
        local_touch_nmi();
    }
}
