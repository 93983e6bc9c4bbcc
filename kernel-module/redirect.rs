// SPDX-License-Identifier: GPL-2.0
//! Every function kmend redirects, with the stack of replacements on it.
//!
//! One [`IpRedirect`] per target function, shared by all patches that replace
//! it; the newest patch's replacement is on top and is the one that runs.
//! Removing any entry, in any order, leaves the right one on top.

use kernel::{
    prelude::*,
    str::CString, //
};

use crate::ftrace::IpRedirect;

/// One patch's replacement of a function.
struct Entry {
    /// Serial number of the patch (see [`crate::patch::Registry`]).
    patch: u64,
    /// Address of the replacement.
    new_func: usize,
}

/// One redirected function.
struct Slot {
    name: CString,
    redirect: Pin<KBox<IpRedirect>>,
    /// Replacements, oldest first; the last one runs.
    stack: KVec<Entry>,
}

impl Slot {
    fn top(&self) -> usize {
        self.stack.last().map_or(0, |e| e.new_func)
    }
}

/// All redirected functions.
pub(crate) struct Redirects {
    slots: KVec<Slot>,
}

impl Redirects {
    pub(crate) const fn new() -> Self {
        Self { slots: KVec::new() }
    }

    fn find(&self, name: &CStr) -> Option<usize> {
        self.slots.iter().position(|s| s.name.to_bytes() == name.to_bytes())
    }

    /// Makes sure `name` has a slot with room for one more entry, without
    /// changing where calls go. Returns the slot's index.
    pub(crate) fn prepare(&mut self, name: &CStr) -> Result<usize> {
        let idx = match self.find(name) {
            Some(idx) => idx,
            None => {
                let redirect = KBox::pin_init(IpRedirect::new(name, 0), GFP_KERNEL)?;
                self.slots.push(
                    Slot {
                        name: name.to_cstring()?,
                        redirect,
                        stack: KVec::new(),
                    },
                    GFP_KERNEL,
                )?;
                self.slots.len() - 1
            }
        };
        self.slots[idx].stack.reserve(1, GFP_KERNEL)?;
        Ok(idx)
    }

    /// Pushes a replacement on a prepared slot: from now on it runs.
    pub(crate) fn push(&mut self, idx: usize, patch: u64, new_func: usize) {
        let slot = &mut self.slots[idx];
        // Cannot fail: `prepare` reserved the room.
        if slot.stack.push_within_capacity(Entry { patch, new_func }).is_ok() {
            slot.redirect.set_target(new_func);
        }
    }

    /// Drops the slots that no patch uses (after a failed prepare).
    pub(crate) fn drop_unused(&mut self) {
        self.slots.retain(|s| !s.stack.is_empty());
    }

    /// Removes every replacement of `patch`; each function goes back to the
    /// replacement below it, or to the original.
    pub(crate) fn remove_patch(&mut self, patch: u64) {
        for slot in self.slots.iter_mut() {
            slot.stack.retain(|e| e.patch != patch);
            slot.redirect.set_target(slot.top());
        }
        self.drop_unused();
    }

    /// Whether `patch`'s replacement of `name` is the one that runs.
    pub(crate) fn is_active(&self, name: &CStr, patch: u64) -> bool {
        self.find(name).is_some_and(|i| {
            let slot = &self.slots[i];
            slot.stack
                .last()
                .is_some_and(|e| e.patch == patch && e.new_func == slot.redirect.target())
        })
    }
}
