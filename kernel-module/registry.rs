// SPDX-License-Identifier: GPL-2.0
//! The registry of patches: register, enable, revert.
//!
//! A patch module registers its descriptor when it loads (disabled) and
//! unregisters when it unloads. Userspace enables it through `/dev/kmend`
//! with the target addresses and fingerprints of the patch's manifest;
//! kmend verifies both, prepares every function, then switches them all at
//! once (`transition.rs`). Enabled patches pin their module. Functions in
//! modules that come and go: `module_targets.rs`; the status text:
//! `status.rs`.
//!
//! Lock order: [`SWITCHING`] (one enable or revert at a time, held across
//! its retries), then [`STATE`] (the registry, held for one try, by module
//! events, registrations and status reads); everything else nests inside.

use kernel::{
    bindings,
    ffi::c_int,
    prelude::*,
    str::CString, //
};

use crate::{
    abi,
    callbacks::Armed,
    kapi,
    ftrace,
    ksym::{
        self,
        Symbol, //
    },
    modref::ModuleRef,
    park::{
        self,
        Parking, //
    },
    patch::{
        Patch,
        PatchFunc,
        State,
        patch_from_abi, //
    },
    redirect::{
        Entry,
        Redirects,
        Target, //
    },
    refusal::{
        Refusal,
        refuse,
        text, //
    },
    sched_watch::SchedWatch,
    transition::{
        self,
        Busy,
        Store,
        Switched, //
    },
    uapi::{
        KMEND_FP_MAX,
        KmendFuncReq, //
    },
};

kernel::sync::global_lock! {
    // SAFETY: initialised in `KmendModule::init`, before the misc device is
    // registered and before any patch module can link against the export.
    pub(crate) unsafe(uninit) static STATE: Mutex<Registry> = Registry::new();
}

kernel::sync::global_lock! {
    // SAFETY: initialised in `KmendModule::init`, before the misc device is
    // registered.
    pub(crate) unsafe(uninit) static SWITCHING: Mutex<()> = ();
}

/// Enables registered patch `id`, retrying while a thread is in the way
/// until `timeout_ms`. One switch at a time ([`SWITCHING`], held across the
/// retries); the registry ([`STATE`]) only for each try, so module loads and
/// status reads do not wait for the retries.
///
/// The patch's callbacks (`callbacks.rs`) run around the switch, outside
/// the registry lock: `pre_apply` first (it may refuse), then `post_apply`
/// on success or `post_revert` on failure.
pub(crate) fn enable(id: &[u8], reqs: &[KmendFuncReq], timeout_ms: u32) -> Result<u64, Refusal> {
    let _one_switch = SWITCHING.lock();
    let callbacks = STATE.lock().armed_callbacks(id, false)?;
    if let Some(c) = &callbacks {
        c.pre_apply().map_err(|e| {
            refuse(e, format_args!("patch '{}': its pre_apply callback refused", core::str::from_utf8(id).unwrap_or("?")))
        })?;
    }
    let mut parking = Parking::new();
    let result = transition::retry(timeout_ms, |last| STATE.lock().try_enable(id, reqs, timeout_ms, last, &mut parking));
    park::end_of_switch();
    {
        let mut state = STATE.lock();
        state.watch.disarm();
        if result.is_err() {
            // Sites prepared by an earlier try and left by a later one's error.
            state.redirects.drop_unused();
        }
    }
    shortcut_sites();
    match (&callbacks, &result) {
        (Some(c), Ok(_)) => c.post_apply(),
        (Some(c), Err(_)) => c.post_revert(),
        (None, _) => {}
    }
    result
}

/// Reverts enabled patch `id`, retrying as [`enable`] does; its callbacks
/// run around the switch: `pre_revert`, then `post_revert` on success or
/// `post_apply` if it stays applied.
pub(crate) fn revert(id: &[u8], timeout_ms: u32) -> Result<u64, Refusal> {
    let _one_switch = SWITCHING.lock();
    let callbacks = STATE.lock().armed_callbacks(id, true)?;
    if let Some(c) = &callbacks {
        c.pre_revert();
    }
    let mut parking = Parking::new();
    let result = transition::retry(timeout_ms, |last| STATE.lock().try_revert(id, timeout_ms, last, &mut parking));
    park::end_of_switch();
    STATE.lock().watch.disarm();
    shortcut_sites();
    match (&callbacks, &result) {
        (Some(c), Ok(_)) => c.post_revert(),
        (Some(c), Err(_)) => c.post_apply(),
        (None, _) => {}
    }
    result
}

/// After a switch: the sites whose trampolines jump to a replacement jump
/// there themselves (`redirect.rs`), one at a time with the registry taken
/// for each, so that module loads and status reads wait for one site at
/// most. The caller holds [`SWITCHING`]: no trampoline changes meanwhile.
fn shortcut_sites() {
    let mut from = 0;
    while let Some(next) = STATE.lock().redirects.shortcut_next(from) {
        from = next;
    }
}

/// All registered patches and the redirections they make.
pub(crate) struct Registry {
    pub(crate) patches: KVec<Patch>,
    pub(crate) redirects: Redirects,
    next_serial: u64,
    /// Modules being unloaded or gone: seen going, not seen coming since.
    /// Their symbols may still resolve while they are torn down, but
    /// nothing may be redirected into them (the going notification that
    /// would drop it has already run).
    pub(crate) gone: KVec<CString>,
    /// Who ran during a switch attempt (`sched_watch.rs`).
    pub(crate) watch: SchedWatch,
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Self {
            patches: KVec::new(),
            redirects: Redirects::new(),
            next_serial: 1,
            gone: KVec::new(),
            watch: SchedWatch::new(),
        }
    }

    /// Frees what the registry owns, at module exit.
    fn release(&mut self) {
        self.watch.free();
        self.gone = KVec::new();
        self.patches = KVec::new();
        self.redirects.drop_unused();
    }

    /// The callbacks of patch `id` with its module held, if it has any and
    /// is in the state the switch starts from (`enabled`); otherwise `None`
    /// and the switch's own checks report what is wrong.
    fn armed_callbacks(&self, id: &[u8], enabled: bool) -> Result<Option<Armed>, Refusal> {
        let Some(p) = self.position(id).map(|pos| &self.patches[pos]) else { return Ok(None) };
        if !p.callbacks.any() || p.enabled() != enabled {
            return Ok(None);
        }
        // SAFETY: `owner` is the live module that registered this patch (it
        // unregisters from its exit, under this lock).
        let module = unsafe { ModuleRef::get(p.owner.0) }?;
        Ok(Some(Armed::new(p.callbacks, module)))
    }

    fn position(&self, id: &[u8]) -> Option<usize> {
        self.patches.iter().position(|p| p.id.to_bytes() == id)
    }

    fn register(&mut self, mut patch: Patch) -> Result {
        if self.position(patch.id.to_bytes()).is_some() {
            pr_err!("patch '{}': already registered (-17)\n", text(&patch.id));
            return Err(EEXIST);
        }
        // Linked against a module that unloaded after the loader resolved
        // the patch's references to it, before this registration.
        if let Some(f) = patch.funcs.iter().find(|f| patch.linked && self.is_gone(&f.object)) {
            pr_err!("patch '{}': module '{}' was unloaded while the patch loaded: load the patch again (-11)\n",
                text(&patch.id), text(&f.object));
            return Err(EAGAIN);
        }
        patch.serial = self.next_serial;
        self.next_serial += 1;
        pr_info!("patch '{}': registered ({} functions)\n", text(&patch.id), patch.funcs.len());
        self.patches.push(patch, GFP_KERNEL)?;
        Ok(())
    }

    fn unregister(&mut self, id: &[u8]) {
        if let Some(pos) = self.position(id) {
            if self.patches[pos].enabled() {
                // Cannot happen: an enabled patch pins its module.
                pr_err!("patch '{}': unregistered while enabled\n", text(&self.patches[pos].id));
                return;
            }
            let _ = self.patches.remove(pos);
            // Its functions' ftrace sites go back to NOPs, unless another
            // enabled patch still replaces them.
            self.redirects.drop_unused();
        }
    }

    pub(crate) fn is_gone(&self, object: &CStr) -> bool {
        self.gone.iter().any(|m| m.to_bytes() == object.to_bytes())
    }

    /// Verifies one target against the request; returns it and its replacement's end.
    fn verify(&self, f: &PatchFunc, req: &KmendFuncReq, id: &str) -> Result<(Target, usize), Refusal> {
        let (name, object) = (text(&f.name), text(&f.object));
        if req.addr == 0 {
            return Err(refuse(ENOENT, format_args!("patch '{id}': '{object}:{name}': no address (is '{object}' loaded?)")));
        }
        if self.is_gone(&f.object) {
            return Err(refuse(ENOENT, format_args!("patch '{id}': module '{object}' is being unloaded")));
        }
        let addr = req.addr as usize;
        // The position among same-named functions, checked by the kernel:
        // the loader placed `name,sympos` when the patch module loaded.
        if f.placed != 0 && addr != f.placed {
            return Err(refuse(ENXIO, format_args!(
                "patch '{id}': '{object}:{name}' at position {} is at {:#x} in kallsyms, not at {addr:#x}", f.sympos, f.placed)));
        }
        let sym = Symbol::of(addr);
        let Some(size) = ksym::check_symbol(sym.as_str(), name, object) else {
            return Err(refuse(ENXIO, format_args!(
                "patch '{id}': address {addr:#x} is '{}', not '{object}:{name}'", sym.as_str())));
        };
        Self::verify_at(f, addr, size, req.fp_offset, &req.fp[..(req.fp_len as usize).min(KMEND_FP_MAX)], id)
    }

    /// Verifies the code of a located target (ftrace site, fingerprint).
    pub(crate) fn verify_at(f: &PatchFunc, addr: usize, size: usize, fp_offset: u32, fp: &[u8], id: &str) -> Result<(Target, usize), Refusal> {
        let name = text(&f.name);
        let mut head = [0u8; 9];
        kapi::read_text(addr, &mut head)?;
        let Some(site) = ftrace::site_offset(&head) else {
            return Err(refuse(EINVAL, format_args!("patch '{id}': '{name}' has no ftrace site (notrace or inlined?)")));
        };
        let (off, len) = (fp_offset as usize, fp.len());
        if off + len > size {
            return Err(refuse(EINVAL, format_args!("patch '{id}': '{name}': fingerprint outside the function")));
        }
        if len > 0 {
            let mut code = [0u8; KMEND_FP_MAX];
            kapi::read_text(addr + off, &mut code[..len])?;
            if let Some(i) = (0..len).find(|&i| code[i] != fp[i]) {
                return Err(refuse(Error::from_errno(-(bindings::EBADMSG as i32)), format_args!(
                    "patch '{id}': '{name}': code differs from the patch's fingerprint at +{:#x}", off + i)));
            }
        }
        let repl = Symbol::of(f.new_func);
        let repl_size = repl
            .as_str()
            .split_once("+0x0/0x")
            .and_then(|(_, rest)| usize::from_str_radix(rest.split(' ').next()?, 16).ok())
            .ok_or_else(|| refuse(EINVAL, format_args!("patch '{id}': replacement for '{name}' is not a function start")))?;
        let target = Target {
            name: f.name.to_cstring()?,
            object: f.object.to_cstring()?,
            start: addr,
            end: addr + size,
            body: addr + site + 5,
        };
        Ok((target, f.new_func + repl_size))
    }

    /// Makes the sites of slots `idx` jump through their trampolines, which
    /// a switch is about to rewrite (`redirect.rs`: between switches a site
    /// may jump straight to its replacement).
    fn through_trampolines(&mut self, idx: &[usize], id: &str) -> Result<(), Refusal> {
        for &i in idx {
            self.redirects.through_trampoline(i).map_err(|e| {
                let name = text(&self.redirects.slots[i].target.name);
                refuse(e, format_args!("patch '{id}': the ftrace site of '{name}' cannot be made to jump through kmend's trampoline"))
            })?;
        }
        Ok(())
    }

    /// Tries a switch once: `Some(pause)` when done, `None` when a thread
    /// is in the way; on the `last` try that is a refusal naming the thread
    /// and the function.
    #[allow(clippy::too_many_arguments)]
    fn run_switch(
        watch: &mut SchedWatch,
        ranges: &[Busy],
        names: &[CString],
        stores: &[Store],
        timeout: u32,
        id: &str,
        last: bool,
        parking: &mut Parking,
    ) -> Result<Option<u64>, Refusal> {
        match transition::attempt(ranges, stores, watch, Some(parking))? {
            Switched::Done(p) => {
                pr_info!("patch '{}': switched: pause {} ns (check and switch {} ns, {} {} re-checked stopped, {} checked before)\n",
                    id, p.total_ns, p.work_ns, p.rechecked, if p.watched { "threads that ran" } else { "threads" }, p.tasks);
                Ok(Some(p.total_ns))
            }
            Switched::Blocked(_) if !last => Ok(None),
            Switched::Blocked(b) => {
                let comm = core::str::from_utf8(&b.comm)
                    .unwrap_or("?")
                    .trim_end_matches('\0');
                if b.name == transition::TRUNCATED {
                    return Err(refuse(EBUSY, format_args!(
                        "patch '{id}': task {} ({comm}) has a stack too deep to check whole; gave up after {timeout} ms",
                        b.pid)));
                }
                if b.name == transition::UNRELIABLE {
                    return Err(refuse(EBUSY, format_args!(
                        "patch '{id}': task {} ({comm}) has a stack the unwinder cannot walk reliably; gave up after {timeout} ms",
                        b.pid)));
                }
                let func = names.get(b.name).map_or("?", |n| text(n));
                Err(refuse(EBUSY, format_args!(
                    "patch '{id}': task {} ({comm}) is running '{func}'; gave up after {timeout} ms", b.pid)))
            }
        }
    }

    /// Tries once to enable a registered patch: every function switches, or
    /// none does. `None`: a thread is in the way (see [`Self::run_switch`]);
    /// the slots prepared stay for the next try (they change nothing), and
    /// everything is verified again then: the registry may change between.
    fn try_enable(&mut self, id: &[u8], reqs: &[KmendFuncReq], timeout: u32, last: bool, parking: &mut Parking) -> Result<Option<u64>, Refusal> {
        let sid = core::str::from_utf8(id).unwrap_or("?");
        let Some(pos) = self.position(id) else {
            return Err(refuse(ENOENT, format_args!("enable: no patch '{sid}' is loaded")));
        };
        if self.patches[pos].enabled() {
            return Err(refuse(EEXIST, format_args!("patch '{sid}': already enabled")));
        }
        if self.patches[pos].stale {
            let module = self.patches[pos].modules().next().map_or("?", text);
            return Err(refuse(Error::from_errno(-(bindings::ESTALE as i32)), format_args!(
                "patch '{sid}': module '{module}' has unloaded since the patch loaded (its code is linked to that load): load the patch again")));
        }
        if reqs.len() != self.patches[pos].funcs.len() {
            return Err(refuse(EINVAL, format_args!(
                "patch '{sid}': request has {} functions, the patch {}", reqs.len(), self.patches[pos].funcs.len())));
        }

        // 1. Verify everything; nothing is touched yet. A function of a
        // module that is not loaded stays pending until the module loads.
        let mut verified = KVec::with_capacity(reqs.len(), GFP_KERNEL)?;
        let mut which = KVec::with_capacity(reqs.len(), GFP_KERNEL)?;
        for (k, (f, req)) in self.patches[pos].funcs.iter().zip(reqs).enumerate() {
            if req.addr == 0 && f.object.to_bytes() != b"vmlinux" {
                continue;
            }
            verified.push(self.verify(f, req, sid)?, GFP_KERNEL)?;
            which.push(k, GFP_KERNEL)?;
        }
        // A fix's references into the modules it fixes are resolved before
        // its code for them can run (`module_relocs.rs`); they stay so
        // until the module goes.
        for &k in which.iter() {
            let object = self.patches[pos].funcs[k].object.to_cstring()?;
            if object.to_bytes() != b"vmlinux" {
                self.patches[pos].relocate(&object).map_err(|e| {
                    refuse(e, format_args!("patch '{sid}': its references into module '{}' cannot be resolved", text(&object)))
                })?;
            }
        }
        let mut fps = KVec::with_capacity(reqs.len(), GFP_KERNEL)?;
        for req in reqs {
            let mut fp = KVec::new();
            fp.extend_from_slice(&req.fp[..(req.fp_len as usize).min(KMEND_FP_MAX)], GFP_KERNEL)?;
            fps.push(fp, GFP_KERNEL)?;
        }
        // SAFETY: `owner` is the live module that registered this patch.
        let pin = unsafe { ModuleRef::get(self.patches[pos].owner.0) }?;
        let serial = self.patches[pos].serial;
        let replace = self.patches[pos].replace;

        // 2. Prepare every slot: registered, still running what ran before.
        let mut slots = KVec::with_capacity(verified.len(), GFP_KERNEL)?;
        let mut news = KVec::with_capacity(verified.len(), GFP_KERNEL)?;
        for (target, new_end) in verified {
            let body = target.body;
            let name = target.name.to_cstring()?;
            match self.redirects.prepare(target, body) {
                Ok(idx) => slots.push(idx, GFP_KERNEL)?,
                Err(e) => {
                    self.redirects.drop_unused();
                    return Err(cannot_redirect(sid, &name, e));
                }
            }
            news.push(new_end, GFP_KERNEL)?;
        }

        // 3. Plan: what stops running (must not be on a stack) and the stores.
        let mut ranges = KVec::new();
        let mut names = KVec::new();
        let mut stores = KVec::new();
        let mut rewritten = KVec::new();
        let superseded = |p: &Patch| replace && p.serial != serial && p.enabled();
        for (i, slot) in self.redirects.slots.iter().enumerate() {
            let mine = slots.iter().position(|&s| s == i);
            let removed_any = slot.stack.iter().any(|e| self.patches.iter().any(|p| p.serial == e.patch && superseded(p)));
            if mine.is_none() && !removed_any {
                continue;
            }
            let new_target = match mine {
                Some(k) => self.patches[pos].funcs[which[k]].new_func,
                None => slot.effective_of(slot.stack.iter().rev().find(|e| !self.patches.iter().any(|p| p.serial == e.patch && superseded(p)))),
            };
            let name = names.len();
            names.push(slot.target.name.to_cstring()?, GFP_KERNEL)?;
            if new_target != self.redirects.current(i) {
                let (start, end) = slot.running();
                ranges.push(Busy { start, end, name }, GFP_KERNEL)?;
                stores.push(Store { tramp: slot.trampoline(), target: new_target }, GFP_KERNEL)?;
                rewritten.push(i, GFP_KERNEL)?;
            }
        }
        // Superseded patches release their modules: nobody may be anywhere
        // in their code (replacements, helpers they call, tail calls).
        for p in self.patches.iter().filter(|p| superseded(p)) {
            p.push_module_range(&mut ranges, &mut names)?;
        }

        // 4. Switch: the sites of the trampolines it rewrites jump through them.
        if let Err(r) = self.through_trampolines(&rewritten, sid) {
            self.redirects.drop_unused();
            return Err(r);
        }
        let pause = match Self::run_switch(&mut self.watch, &ranges, &names, &stores, timeout, sid, last, parking) {
            Ok(Some(pause)) => pause,
            Ok(None) => return Ok(None),
            Err(r) => {
                self.redirects.drop_unused();
                return Err(r);
            }
        };

        // 5. Commit (nothing below fails: room was reserved in `prepare`).
        for (k, &idx) in slots.iter().enumerate() {
            let f = &mut self.patches[pos].funcs[which[k]];
            let _ = self.redirects.slots[idx].stack.push_within_capacity(Entry { patch: serial, start: f.new_func, end: news[k] });
            f.target = self.redirects.slots[idx].target.start;
        }
        for (f, (req, fp)) in self.patches[pos].funcs.iter_mut().zip(reqs.iter().zip(fps)) {
            f.fp_offset = req.fp_offset;
            f.fp = fp;
        }
        if replace {
            for p in self.patches.iter_mut().filter(|p| p.serial != serial && p.enabled()) {
                for slot in self.redirects.slots.iter_mut() {
                    slot.stack.retain(|e| e.patch != p.serial);
                }
                pr_info!("patch '{}': superseded by '{}'\n", text(&p.id), sid);
                p.state = State::Registered;
            }
            self.redirects.drop_unused();
        }
        self.patches[pos].state = State::Enabled { _pin: pin, pause_ns: pause };
        self.patches[pos].enabled_at = self.next_serial;
        self.next_serial += 1;
        pr_info!("patch '{}': enabled ({} functions)\n", sid, slots.len());
        Ok(Some(pause))
    }

    /// Tries once to revert an enabled patch: its functions go back to what
    /// ran before it. `None`: a thread is in the way.
    fn try_revert(&mut self, id: &[u8], timeout: u32, last: bool, parking: &mut Parking) -> Result<Option<u64>, Refusal> {
        let sid = core::str::from_utf8(id).unwrap_or("?");
        let Some(pos) = self.position(id) else {
            return Err(refuse(ENOENT, format_args!("revert: no patch '{sid}' is loaded")));
        };
        if !self.patches[pos].enabled() {
            // Registered but not applied (never enabled, or superseded):
            // nothing runs its code, so reverting is already done.
            return Ok(Some(0));
        }
        let serial = self.patches[pos].serial;
        let mut ranges = KVec::new();
        let mut names = KVec::new();
        let mut stores = KVec::new();
        // The patch's module is released afterwards: nobody may be anywhere
        // in its code (replacements, helpers they call, tail calls).
        self.patches[pos].push_module_range(&mut ranges, &mut names)?;
        let mut rewritten = KVec::new();
        for (i, slot) in self.redirects.slots.iter().enumerate() {
            if slot.stack.last().is_some_and(|e| e.patch == serial) {
                let below = slot.stack.iter().rev().nth(1);
                stores.push(Store { tramp: slot.trampoline(), target: slot.effective_of(below) }, GFP_KERNEL)?;
                rewritten.push(i, GFP_KERNEL)?;
            }
        }
        self.through_trampolines(&rewritten, sid)?;
        let Some(pause) = Self::run_switch(&mut self.watch, &ranges, &names, &stores, timeout, sid, last, parking)? else {
            return Ok(None);
        };
        for slot in self.redirects.slots.iter_mut() {
            slot.stack.retain(|e| e.patch != serial);
        }
        // The ftrace sites stay (jumping to the original body) until the patch
        // unregisters: releasing one waits for an RCU-tasks grace period on
        // preemptible kernels (seconds under emulation), which a revert must
        // not spend holding the registry, and which re-enabling would pay again.
        let p = &mut self.patches[pos];
        p.state = State::Registered;
        for f in p.funcs.iter_mut() {
            f.target = 0;
        }
        pr_info!("patch '{}': reverted\n", sid);
        Ok(Some(pause))
    }
}

/// Whether kmend.ko registers the `sched_switch` watch (`sched_watch.rs`).
/// It was off while an unhandled `int3` at the tracepoint's jump label in
/// `__schedule` was suspected to be kmend's; it is multi-threaded QEMU TCG
/// racing the kernel's text poking, also without kmend (docs/testing.md).
/// Off, the stopped check uses the walk that needs no probe, and the pause
/// grows with the number of threads.
const SCHED_WATCH: bool = true;

/// What the registry keeps running while kmend.ko is loaded (the
/// `sched_switch` watch); dropping it frees everything the registry still
/// owns (the registry lives in a static, which is never dropped).
pub(crate) struct Running(());

impl Running {
    /// Starts the watch if it is on ([`SCHED_WATCH`]). Never fails: without
    /// the watch, a switch's stopped check walks every thread whose
    /// context-switch count changed since the pre-check.
    pub(crate) fn start() -> Self {
        if SCHED_WATCH {
            if let Err(e) = STATE.lock().watch.start() {
                pr_warn!("sched_switch watch unavailable ({}): a switch's stopped check walks every thread\n", e.to_errno());
            }
        }
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        STATE.lock().release();
    }
}

/// The refusal for a function whose ftrace site kmend cannot take.
pub(crate) fn cannot_redirect(id: &str, name: &CStr, e: Error) -> Refusal {
    if e == EBUSY {
        // ftrace allows one user that changes where a function goes.
        return refuse(e, format_args!(
            "patch '{id}': '{}' is already redirected by another ftrace user (a livepatch or a BPF trampoline): remove that first",
            text(name)));
    }
    refuse(e, format_args!("patch '{id}': cannot redirect '{}' (ftrace refused)", text(name)))
}

/// Entry point behind the exported `kmend_register_patch()`.
///
/// # Safety
///
/// Only `kmend_export.c` calls this, on behalf of a patch module's init,
/// with that module's descriptor (see [`patch_from_abi`]).
#[no_mangle]
pub(crate) unsafe extern "C" fn kmend_rust_register_patch(desc: *const abi::KmendPatch) -> c_int {
    // SAFETY: forwarded from the caller's contract.
    let patch = match unsafe { patch_from_abi(desc) } {
        Ok(p) => p,
        Err(e) => return e.to_errno(),
    };
    match STATE.lock().register(patch) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Entry point behind the exported `kmend_unregister_patch()`.
///
/// # Safety
///
/// Only `kmend_export.c` calls this, from a patch module's exit, with the
/// descriptor it registered.
#[no_mangle]
pub(crate) unsafe extern "C" fn kmend_rust_unregister_patch(desc: *const abi::KmendPatch) {
    if desc.is_null() {
        return;
    }
    // SAFETY: the caller passes the descriptor it registered.
    let id = unsafe { (*desc).id };
    if id.is_null() {
        return;
    }
    // SAFETY: NUL-terminated (the registration checked it).
    let id = unsafe { CStr::from_char_ptr(id) };
    STATE.lock().unregister(id.to_bytes());
}
