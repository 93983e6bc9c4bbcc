// SPDX-License-Identifier: GPL-2.0
//! The fast path: per-function jump trampolines with switchable targets.
//!
//! Each redirected function's ftrace site becomes a direct `jmp` to one of
//! these trampolines (`ftrace.rs`), and the trampoline jumps on through its
//! slot: to the original body, or to the newest replacement. A call pays two
//! jumps instead of an ftrace handler, and switching any number of functions
//! is a set of pointer stores, done under stop_machine (`transition.rs`),
//! so a patch switches atomically.

use core::sync::atomic::{
    AtomicUsize,
    Ordering, //
};

/// How many functions kmend can redirect at once.
pub(crate) const TRAMPOLINES: usize = 256;

/// Bytes between trampolines (ENDBR and a 6-byte indirect jump, padded).
const STRIDE: usize = 16;

/// Jump targets, one per trampoline.
static SLOTS: [AtomicUsize; TRAMPOLINES] = [const { AtomicUsize::new(0) }; TRAMPOLINES];

core::arch::global_asm!(
    ".pushsection .text.kmend_trampolines, \"ax\"",
    ".balign 16",
    ".globl kmend_trampolines",
    "kmend_trampolines:",
    ".set kmend_i, 0",
    ".rept 256",
    // ENDBR: the table's address is taken, and IBT wants that marked.
    "endbr64",
    "jmp *{slots} + 8 * kmend_i(%rip)",
    ".balign 16, 0xcc",
    ".set kmend_i, kmend_i + 1",
    ".endr",
    ".popsection",
    slots = sym SLOTS,
    options(att_syntax)
);

unsafe extern "C" {
    /// Start of the trampoline table emitted above.
    static kmend_trampolines: u8;
}

const _: () = assert!(TRAMPOLINES == 256, "the .rept count above must match");

/// Address of trampoline `idx`.
pub(crate) fn address(idx: usize) -> usize {
    let base = core::ptr::addr_of!(kmend_trampolines) as usize;
    base + idx * STRIDE
}

/// Points trampoline `idx` at `target`.
pub(crate) fn set_target(idx: usize, target: usize) {
    SLOTS[idx].store(target, Ordering::Release);
}

/// Where trampoline `idx` jumps now.
pub(crate) fn target(idx: usize) -> usize {
    SLOTS[idx].load(Ordering::Acquire)
}

/// Which trampolines are in use.
pub(crate) struct TrampolineSet {
    used: [bool; TRAMPOLINES],
}

impl TrampolineSet {
    pub(crate) const fn new() -> Self {
        Self { used: [false; TRAMPOLINES] }
    }

    /// Takes a free trampoline, already pointing at `target`.
    pub(crate) fn take(&mut self, target: usize) -> Option<usize> {
        let idx = self.used.iter().position(|u| !u)?;
        self.used[idx] = true;
        set_target(idx, target);
        Some(idx)
    }

    /// Returns a trampoline that no ftrace site jumps to any more.
    pub(crate) fn give_back(&mut self, idx: usize) {
        self.used[idx] = false;
    }
}
