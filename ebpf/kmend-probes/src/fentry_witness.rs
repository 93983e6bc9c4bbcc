// SPDX-License-Identifier: GPL-2.0
//! A BPF fentry program on `cmdline_proc_show`, for the guest suite only:
//! another user of a function kmend redirects (a BPF trampoline takes the
//! function's ftrace site through the same direct-call interface as kmend).
//! It counts calls, so the suite can tell whether it runs. kmend itself
//! never loads it (src/verify.rs embeds only `hitcount`).
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{
        fentry,
        map, //
    },
    maps::PerCpuArray,
    programs::FEntryContext,
};

/// Slot 0: calls seen on each CPU.
#[map]
static CALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[fentry(function = "cmdline_proc_show")]
pub fn kmend_fentry_witness(_ctx: FEntryContext) -> u32 {
    if let Some(count) = CALLS.get_ptr_mut(0) {
        // SAFETY: the pointer is to this CPU's live u64 slot, and a
        // tracing program does not nest with itself on one CPU.
        unsafe { *count += 1 };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
