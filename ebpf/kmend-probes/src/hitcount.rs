// SPDX-License-Identifier: GPL-2.0
//! Hit counter: a kprobe program that counts how often its probe point runs.
//!
//! kmend loads one instance per probe point (the map is per instance): one on
//! the replacement's entry, one on the first instruction of the old body,
//! right after the ftrace call site. The old function's *entry* would prove
//! nothing: it is the ftrace site itself, and a kprobe there fires whichever
//! body runs next.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{
        kprobe,
        map, //
    },
    maps::PerCpuArray,
    programs::ProbeContext,
};

/// Slot 0: number of hits on each CPU (per-CPU: the BPF target has no
/// atomic add in Rust, and per-CPU slots need none).
#[map]
static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[kprobe]
pub fn kmend_hitcount(_ctx: ProbeContext) -> u32 {
    if let Some(count) = HITS.get_ptr_mut(0) {
        // SAFETY: the pointer is to this CPU's live u64 slot, and a kprobe
        // program does not nest with itself on one CPU.
        unsafe { *count += 1 };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
