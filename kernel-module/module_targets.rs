// SPDX-License-Identifier: GPL-2.0
//! Functions in modules that come and go: a patch for a module that is not
//! loaded stays pending, applies as the module loads, and goes back to
//! pending when it unloads (docs/safety.md, "Module targets").

use kernel::prelude::*;

use crate::{
    registry::{
        Registry,
        STATE,
        cannot_redirect, //
    },
    module_notifier::{
        ModuleEvent,
        ModuleHandler,
        ModuleRefRaw, //
    },
    redirect::Entry,
    refusal::{
        refuse,
        text, //
    },
};

impl Registry {
    /// A module is loading: apply the enabled patches' pending functions in
    /// it. Its code has not run yet, so no stack check or stop is needed.
    /// Every function is verified before any is redirected, and a failure
    /// while redirecting undoes what was done: an error makes the module's
    /// load fail, and the kernel sends no "going" event to the notifier
    /// that failed it, so nothing may be left behind.
    pub(crate) fn module_coming(&mut self, module: &ModuleRefRaw) -> Result {
        let name = module.name();
        // 1. Verify, touching nothing: (patch, function, target, replacement
        // end), in the order the patches were enabled, the order their
        // replacements stack in everywhere else.
        let mut order = KVec::with_capacity(self.patches.len(), GFP_KERNEL)?;
        for (pi, p) in self.patches.iter().enumerate().filter(|(_, p)| p.enabled()) {
            order.push((p.enabled_at, pi), GFP_KERNEL)?;
        }
        // A handful of patches: insertion sort (core's sorts make objtool warn).
        for i in 1..order.len() {
            let mut j = i;
            while j > 0 && order[j - 1].0 > order[j].0 {
                order.swap(j - 1, j);
                j -= 1;
            }
        }
        let mut plan = KVec::new();
        for &(_, pi) in order.iter() {
            let p = &self.patches[pi];
            let sid = text(&p.id);
            // Its code for this module refers to the module's previous
            // load (which is gone): it cannot run on this one.
            if p.linked_to(name) {
                let r = refuse(EBUSY, format_args!(
                    "module '{}' cannot load while patch '{sid}' is applied (linked to its previous load): revert the patch first",
                    text(name)));
                return Err(r.errno);
            }
            for (fi, f) in p.funcs.iter().enumerate().filter(|(_, f)| f.target == 0 && f.object.to_bytes() == name.to_bytes()) {
                let Some((addr, size)) = module.symbol(&f.name, f.sympos) else {
                    let r = refuse(ENOENT, format_args!("patch '{sid}': '{}' has no function '{}'", text(name), text(&f.name)));
                    return Err(r.errno);
                };
                let (target, new_end) = Self::verify_at(f, addr, size, f.fp_offset, &f.fp, sid).map_err(|r| r.errno)?;
                plan.push((pi, fi, target, new_end), GFP_KERNEL)?;
            }
        }
        // 2. Resolve the fixes' references into the module, before any of
        // their code for it can run (`module_relocs.rs`).
        for &(pi, _, _, _) in plan.iter() {
            if let Err(e) = self.patches[pi].relocate(name) {
                self.forget_module(name);
                return Err(e);
            }
        }
        // 3. Redirect. Each new site's trampoline points at the newest
        // replacement before the site is registered (which synchronizes
        // every CPU), so no trampoline is rewritten after its site is live.
        let mut newest = KVec::with_capacity(plan.len(), GFP_KERNEL)?;
        for (_, _, target, _) in plan.iter() {
            let top = plan.iter().rev().find(|e| e.2.start == target.start);
            let _ = newest.push_within_capacity(top.map_or(0, |e| self.patches[e.0].funcs[e.1].new_func));
        }
        // Nothing below fails but the redirection itself, which undoes all.
        for ((pi, fi, target, new_end), newest) in plan.into_iter().zip(newest) {
            let start = target.start;
            let idx = match self.redirects.prepare(target, newest) {
                Ok(idx) => idx,
                Err(e) => {
                    self.forget_module(name);
                    let _ = cannot_redirect(text(&self.patches[pi].id), &self.patches[pi].funcs[fi].name, e);
                    return Err(e);
                }
            };
            let p = &mut self.patches[pi];
            let f = &mut p.funcs[fi];
            let _ = self.redirects.slots[idx].stack.push_within_capacity(Entry { patch: p.serial, start: f.new_func, end: new_end });
            f.target = start;
            pr_info!("patch '{}': '{}:{}' applied as the module loads\n", text(&p.id), text(name), text(&f.name));
        }
        // Loaded: patchable again. (Only now: a refused load leaves it gone.)
        self.gone.retain(|m| m.to_bytes() != name.to_bytes());
        self.redirects.shortcut();
        Ok(())
    }

    /// Drops every redirection into module `name`; its functions of enabled
    /// patches go back to pending, for when it loads again, and the
    /// patches' references into it are cleared.
    fn forget_module(&mut self, name: &CStr) {
        for p in self.patches.iter_mut() {
            p.unrelocate(name);
            for f in p.funcs.iter_mut().filter(|f| f.object.to_bytes() == name.to_bytes()) {
                f.target = 0;
            }
        }
        for slot in self.redirects.slots.iter_mut().filter(|s| s.target.object.to_bytes() == name.to_bytes()) {
            slot.stack.clear();
        }
        self.redirects.drop_unused();
    }

    /// A module is going: drop its redirections, and refuse new ones into
    /// it until it loads again.
    pub(crate) fn module_going(&mut self, module: &ModuleRefRaw) {
        let name = module.name();
        // Patches linked against this load of the module are bound to it.
        for p in self.patches.iter_mut().filter(|p| p.linked_to(name)) {
            p.stale = true;
        }
        if !self.is_gone(name) {
            match name.to_cstring() {
                Ok(n) => {
                    let _ = self.gone.push(n, GFP_KERNEL);
                }
                Err(_) => pr_err!("module '{}': out of memory noting it gone\n", text(name)),
            }
        }
        self.forget_module(name);
    }
}

/// kmend's module notifier: see [`Registry::module_coming`] and
/// [`Registry::module_going`].
pub(crate) struct ModuleTargets;

impl ModuleHandler for ModuleTargets {
    fn on_event(event: ModuleEvent, module: &ModuleRefRaw) -> Result {
        let mut state = STATE.lock();
        match event {
            ModuleEvent::Coming => state.module_coming(module),
            ModuleEvent::Going => {
                state.module_going(module);
                Ok(())
            }
        }
    }
}
