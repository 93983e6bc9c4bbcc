// SPDX-License-Identifier: GPL-2.0
//! Every redirected function, with the stack of replacements on it.
//!
//! One [`Slot`] per target function, shared by all patches that replace it:
//! its ftrace site jumps to a trampoline whose target is the newest
//! replacement, or the original body when none is left. Removing any entry,
//! in any order, leaves the right one on top.
//!
//! Between switches a site whose trampoline jumps to a replacement jumps to
//! that replacement itself ([`Redirects::shortcut`]): a patched call pays
//! one direct jump, not two. A switch only ever rewrites trampolines, so
//! first the sites of the trampolines it rewrites go back through them
//! ([`Redirects::through_trampoline`]). Invariant: every site jumps to its
//! trampoline, or to exactly where its trampoline jumps; the two run the
//! same code, so changing one for the other changes nothing for any task.

use kernel::{
    prelude::*,
    str::CString, //
};

use crate::{
    ftrace::DirectJmp,
    trampoline::{
        self,
        TrampolineSet, //
    },
};

/// One patch's replacement of a function.
pub(crate) struct Entry {
    /// Serial number of the patch.
    pub(crate) patch: u64,
    /// The replacement's code: `[start, end)`.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// A verified target function.
pub(crate) struct Target {
    pub(crate) name: CString,
    /// `vmlinux` or the module holding it.
    pub(crate) object: CString,
    /// The function's code: `[start, end)`.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// First instruction after the ftrace site: where "the original" continues.
    pub(crate) body: usize,
}

/// One redirected function.
pub(crate) struct Slot {
    pub(crate) target: Target,
    tramp: usize,
    jmp: Pin<KBox<DirectJmp>>,
    /// Replacements, oldest first; the last one runs.
    pub(crate) stack: KVec<Entry>,
}

impl Slot {
    /// Where calls go with `stack` as the replacement stack.
    pub(crate) fn effective_of(&self, stack_top: Option<&Entry>) -> usize {
        stack_top.map_or(self.target.body, |e| e.start)
    }

    /// The code that runs now, for the activeness check.
    pub(crate) fn running(&self) -> (usize, usize) {
        self.stack
            .last()
            .map_or((self.target.start, self.target.end), |e| (e.start, e.end))
    }

    pub(crate) fn trampoline(&self) -> usize {
        self.tramp
    }
}

/// All redirected functions.
pub(crate) struct Redirects {
    pub(crate) slots: KVec<Slot>,
    tramps: TrampolineSet,
}

impl Redirects {
    pub(crate) const fn new() -> Self {
        Self {
            slots: KVec::new(),
            tramps: TrampolineSet::new(),
        }
    }

    pub(crate) fn find(&self, start: usize) -> Option<usize> {
        self.slots.iter().position(|s| s.target.start == start)
    }

    /// Makes sure `target` has a slot, with room for one more entry. An
    /// existing slot is unchanged; a new one's site jumps to a trampoline
    /// that already points at `initial` (the original body, to change
    /// nothing yet; a replacement, for a module whose code has not run).
    pub(crate) fn prepare(&mut self, target: Target, initial: usize) -> Result<usize> {
        if let Some(idx) = self.find(target.start) {
            self.slots[idx].stack.reserve(1, GFP_KERNEL)?;
            return Ok(idx);
        }
        // Room first: nothing may fail once the site is registered.
        let mut stack = KVec::new();
        stack.reserve(1, GFP_KERNEL)?;
        self.slots.reserve(1, GFP_KERNEL)?;
        let tramp = self.tramps.take(initial)?;
        let jmp = match KBox::pin_init(DirectJmp::new(target.start, trampoline::address(tramp)), GFP_KERNEL) {
            Ok(jmp) => jmp,
            Err(e) => {
                self.tramps.give_back(tramp);
                return Err(e);
            }
        };
        let _ = self.slots.push_within_capacity(Slot { target, tramp, jmp, stack });
        Ok(self.slots.len() - 1)
    }

    /// Makes slot `idx`'s site jump to its trampoline, before a switch
    /// rewrites the trampoline. On an error the site is unchanged.
    pub(crate) fn through_trampoline(&mut self, idx: usize) -> Result {
        let slot = &mut self.slots[idx];
        slot.jmp.as_mut().retarget(trampoline::address(slot.tramp))
    }

    /// Makes every site whose trampoline jumps to a replacement jump there
    /// itself (see [`Self::shortcut_next`]).
    pub(crate) fn shortcut(&mut self) {
        let mut from = 0;
        while let Some(next) = self.shortcut_next(from) {
            from = next;
        }
    }

    /// Makes the site of the first slot from index `from` on whose
    /// trampoline jumps to a replacement, and whose site does not yet, jump
    /// there itself; returns the index to go on from, or `None` when no
    /// such slot is left. One site at a time, so that a caller can let go
    /// of the registry between sites: each change scans ftrace's records
    /// twice (milliseconds under emulation). A site that cannot be changed
    /// keeps going through its trampoline, which is as correct and one jump
    /// slower.
    pub(crate) fn shortcut_next(&mut self, from: usize) -> Option<usize> {
        let i = from
            + self.slots.get(from..)?.iter().position(|slot| {
                let to = trampoline::target(slot.tramp);
                to != slot.target.body && slot.jmp.target() != to
            })?;
        let slot = &mut self.slots[i];
        let to = trampoline::target(slot.tramp);
        if let Err(e) = slot.jmp.as_mut().retarget(to) {
            pr_warn!("'{}': its site stays jumping through the trampoline ({})\n", slot.target.name.to_str().unwrap_or("?"), e.to_errno());
        }
        Some(i + 1)
    }

    /// Unregisters the slots no patch uses any more; their sites go back to
    /// NOPs and their trampolines are free again. A site ftrace refuses to
    /// give back may still jump to its trampoline: that trampoline is never
    /// used again (it keeps jumping where it does, the original body of an
    /// unused slot).
    pub(crate) fn drop_unused(&mut self) {
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].stack.is_empty() {
                if let Ok(Slot { tramp, jmp, .. }) = self.slots.remove(i) {
                    if DirectJmp::release(jmp) {
                        self.tramps.give_back(tramp);
                    }
                }
            } else {
                i += 1;
            }
        }
    }

    /// Where calls to slot `idx` go now.
    pub(crate) fn current(&self, idx: usize) -> usize {
        trampoline::target(self.slots[idx].tramp)
    }

    /// Whether `patch`'s replacement of the function at `start` is the one that runs.
    pub(crate) fn is_active(&self, start: usize, patch: u64) -> bool {
        self.find(start).is_some_and(|i| {
            let slot = &self.slots[i];
            slot.stack
                .last()
                .is_some_and(|e| e.patch == patch && e.start == trampoline::target(slot.tramp))
        })
    }
}
