// SPDX-License-Identifier: GPL-2.0
//! The fast path: per-function jump trampolines with switchable targets.
//!
//! Each redirected function owns one of these trampolines, one direct
//! `jmp rel32`: to the original body, or to the newest replacement. Its
//! ftrace site (`ftrace.rs`) jumps to the trampoline while a switch may
//! rewrite it, and straight to the replacement between switches
//! (`redirect.rs`), so a patched call pays one direct jump. No indirect
//! branch is on the path, so it is the same under IBT, retpolines and CFI
//! (the table and its layout are in `kmend_trampolines.S`).
//!
//! Retargeting rewrites a trampoline's rel32 through a temporary writable
//! alias of the table ([`Writer`]): the kernel's text poking is not exported
//! to modules. Switching any number of functions is a set of aligned 4-byte
//! stores made under stop_machine (`transition.rs`), so a patch switches
//! atomically for every task.

use core::ptr::NonNull;

use kernel::{
    ffi::c_void,
    prelude::*, //
};

/// How many functions kmend can redirect at once.
pub(crate) const TRAMPOLINES: usize = 256;

/// Bytes between trampolines.
const STRIDE: usize = 16;

/// Offset of the entry in a trampoline (a `nop`, then the `jmp rel32`): even,
/// because ftrace keeps a flag in bit 0 of a direct-jump address.
const ENTRY: usize = 2;

/// Offset of the rel32 of the `jmp` (4-byte aligned).
const REL32: usize = 4;

/// Offset of the end of the `jmp`, which its rel32 is relative to.
const NEXT: usize = 8;

unsafe extern "C" {
    /// Address of the trampoline table (`kmend_trampolines.S`), 16-aligned.
    static kmend_trampoline_table: usize;

    /// `kmend_export.c`: a writable alias of `len` bytes of module text at
    /// `addr` (vmap of its pages), or null.
    fn kmend_helper_map_writable(addr: usize, len: usize) -> *mut c_void;

    /// `kmend_export.c`: undoes [`kmend_helper_map_writable`].
    fn kmend_helper_unmap_writable(alias: *mut c_void);
}

const _: () = assert!(TRAMPOLINES == 256, "the .rept count in kmend_trampolines.S must match");

fn table() -> usize {
    // SAFETY: a constant in this module's rodata; read volatile so the
    // compiler does not fold the offsets below into the symbol reference.
    unsafe { core::ptr::read_volatile(&raw const kmend_trampoline_table) }
}

/// Address of trampoline `idx`: where the ftrace site jumps.
pub(crate) fn address(idx: usize) -> usize {
    table() + idx * STRIDE + ENTRY
}

/// The rel32 that makes trampoline `idx` jump to `target`, if in reach
/// (module text and the kernel's text are within 2 GiB on x86_64).
fn rel32(idx: usize, target: usize) -> Option<i32> {
    let next = table() + idx * STRIDE + NEXT;
    i32::try_from(target.wrapping_sub(next) as isize).ok()
}

/// Whether trampoline `idx` can jump to `target`.
pub(crate) fn reaches(idx: usize, target: usize) -> bool {
    idx < TRAMPOLINES && rel32(idx, target).is_some()
}

/// Where trampoline `idx` jumps now.
pub(crate) fn target(idx: usize) -> usize {
    let field = (table() + idx * STRIDE + REL32) as *const i32;
    // SAFETY: `field` is the aligned rel32 of a trampoline in this module's
    // text, which is mapped and readable while the module is loaded; it is
    // only written with aligned 4-byte stores (`Writer::set`).
    let rel = unsafe { core::ptr::read_volatile(field) };
    (table() + idx * STRIDE + NEXT).wrapping_add(rel as isize as usize)
}

/// A writable view of the trampoline table, for one retargeting.
///
/// # Invariants
///
/// `alias` maps the whole table writable, from [`Writer::new`] until drop.
pub(crate) struct Writer {
    alias: NonNull<u8>,
}

// SAFETY: the alias is a kernel mapping, usable from any CPU (the stores in
// `set` happen on whichever CPU runs the stop_machine callback).
unsafe impl Send for Writer {}
// SAFETY: `set` only makes aligned atomic-width stores.
unsafe impl Sync for Writer {}

impl Writer {
    /// Maps the table writable. May sleep: call it before stopping the machine.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: the table is `TRAMPOLINES * STRIDE` bytes of this module's text.
        let alias = unsafe { kmend_helper_map_writable(table(), TRAMPOLINES * STRIDE) };
        Ok(Self { alias: NonNull::new(alias.cast()).ok_or(ENOMEM)? })
    }

    /// Points trampoline `idx` at `target`, with one aligned 4-byte store:
    /// a CPU running the entry sees the old or the new jump, never a mix.
    /// Fails if `target` is out of reach (see [`reaches`]).
    ///
    /// The store is seen by other CPUs' instruction fetch only after they
    /// serialize: callers either switch under stop_machine (every CPU
    /// serializes before it resumes, `stop::stop_the_world`) or retarget a
    /// trampoline no ftrace site jumps to yet (registering the site
    /// synchronizes every CPU).
    pub(crate) fn set(&self, idx: usize, target: usize) -> Result {
        if idx >= TRAMPOLINES {
            return Err(EINVAL);
        }
        let rel = rel32(idx, target).ok_or(ERANGE)?;
        // SAFETY: by the type invariant the alias covers the table, and the
        // rel32 of entry `idx < TRAMPOLINES` lies inside it, 4-byte aligned
        // (the table is 16-aligned and the field is at +4).
        unsafe {
            let field = self.alias.as_ptr().add(idx * STRIDE + REL32).cast::<i32>();
            core::ptr::write_volatile(field, rel);
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `alias` came from the helper.
        unsafe { kmend_helper_unmap_writable(self.alias.as_ptr().cast()) };
    }
}

/// Which trampolines are in use.
pub(crate) struct TrampolineSet {
    used: [bool; TRAMPOLINES],
}

impl TrampolineSet {
    pub(crate) const fn new() -> Self {
        Self { used: [false; TRAMPOLINES] }
    }

    /// Takes a free trampoline, already pointing at `target`. No ftrace
    /// site jumps to a free trampoline, so it may be written at any time.
    pub(crate) fn take(&mut self, target: usize) -> Result<usize> {
        let idx = self.used.iter().position(|u| !u).ok_or(ENOSPC)?;
        Writer::new()?.set(idx, target)?;
        self.used[idx] = true;
        Ok(idx)
    }

    /// Returns a trampoline that no ftrace site jumps to any more.
    pub(crate) fn give_back(&mut self, idx: usize) {
        self.used[idx] = false;
    }
}
