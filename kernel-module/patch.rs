// SPDX-License-Identifier: GPL-2.0
//! The registry of patches: register, enable, revert, status.
//!
//! A patch module registers its descriptor when it loads (disabled) and
//! unregisters when it unloads. Userspace enables it through `/dev/kmend`
//! with the target addresses and fingerprints of the patch's manifest;
//! kmend verifies both, prepares every function, then switches them all at
//! once (`transition.rs`). Enabled patches pin their module.
//!
//! Lock order: [`STATE`] is the only lock; everything else nests inside it.

use core::fmt::{
    self,
    Write, //
};

use kernel::{
    bindings,
    ffi::{
        c_char,
        c_int, //
    },
    prelude::*,
    str::CString, //
};

use crate::{
    abi,
    kapi,
    ksym::Symbol,
    modref::ModuleRef,
    redirect::{
        Entry,
        Redirects,
        Target, //
    },
    transition::{
        self,
        Busy,
        Store,
        Switched, //
    },
    uapi::{
        KMEND_ERR_MAX,
        KMEND_FP_MAX,
        KMEND_FUNCS_MAX,
        KMEND_ID_MAX,
        KmendFuncReq, //
    },
};

kernel::sync::global_lock! {
    // SAFETY: initialised in `KmendModule::init`, before the misc device is
    // registered and before any patch module can link against the export.
    pub(crate) unsafe(uninit) static STATE: Mutex<Registry> = Registry::new();
}

/// A refused request: the errno, and one line saying why (for the log and
/// for userspace, through the request's `error` field).
pub(crate) struct Refusal {
    pub(crate) errno: Error,
    pub(crate) msg: Msg,
}

/// A short message in a fixed buffer (no allocation, truncates).
pub(crate) struct Msg {
    pub(crate) buf: [u8; KMEND_ERR_MAX],
    pub(crate) len: usize,
}

impl Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = KMEND_ERR_MAX - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Msg {
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// Builds a [`Refusal`] and logs it as `kmend: <msg> (<errno>)`.
fn refuse(errno: Error, args: fmt::Arguments<'_>) -> Refusal {
    let mut msg = Msg { buf: [0; KMEND_ERR_MAX], len: 0 };
    let _ = msg.write_fmt(args);
    pr_err!("{} ({})\n", msg.as_str(), errno.to_errno());
    Refusal { errno, msg }
}

impl From<kernel::alloc::AllocError> for Refusal {
    fn from(_: kernel::alloc::AllocError) -> Self {
        refuse(ENOMEM, format_args!("out of memory"))
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        refuse(e, format_args!("internal error"))
    }
}

fn text(s: &CStr) -> &str {
    s.to_str().unwrap_or("?")
}

/// One function of a patch.
struct PatchFunc {
    object: CString,
    name: CString,
    sympos: u64,
    new_func: usize,
    /// Set while enabled and redirected: the verified target's start
    /// (0 while enabled: pending, the target module is not loaded).
    target: usize,
    /// The fingerprint to check, kept for a target module that loads later.
    fp_offset: u32,
    fp: KVec<u8>,
}

/// `THIS_MODULE` of a registered patch module.
struct Owner(*mut bindings::module);

// SAFETY: a module pointer may be used from any thread; it stays valid while
// the patch is registered (the module unregisters in its exit).
unsafe impl Send for Owner {}

enum State {
    /// Loaded, not applied.
    Registered,
    /// Applied; holds the module; the last switch's pause.
    Enabled { _pin: ModuleRef, pause_ns: u64 },
}

/// A registered patch.
struct Patch {
    serial: u64,
    id: CString,
    replace: bool,
    cves: CString,
    owner: Owner,
    funcs: KVec<PatchFunc>,
    state: State,
}

impl Patch {
    fn enabled(&self) -> bool {
        matches!(self.state, State::Enabled { .. })
    }
}

/// Accepts only plain C identifiers (what kallsyms can name).
fn is_symbol_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() < 128
        && name.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

pub(crate) fn is_patch_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() < KMEND_ID_MAX
        && id.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn cves_ok(cves: &[u8]) -> bool {
    cves.len() < 1024 && cves.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b','))
}

/// Copies and validates a patch module's descriptor.
///
/// # Safety
///
/// `desc` must point to a valid [`abi::KmendPatch`] whose strings are
/// NUL-terminated and whose `funcs` has `nfuncs` entries (the contract of
/// `kmend_register_patch`).
unsafe fn patch_from_abi(desc: *const abi::KmendPatch) -> Result<Patch> {
    if desc.is_null() {
        return Err(EINVAL);
    }
    // SAFETY: the caller guarantees `desc` is valid for reads.
    let desc = unsafe { &*desc };
    if desc.abi_version != abi::KMEND_ABI_VERSION {
        pr_err!("patch descriptor has abi version {} (want {}) (-22)\n", desc.abi_version, abi::KMEND_ABI_VERSION);
        return Err(EINVAL);
    }
    if desc.nfuncs == 0 || desc.nfuncs > KMEND_FUNCS_MAX || desc.funcs.is_null() || desc.id.is_null() || desc.owner.is_null() {
        pr_err!("patch descriptor is malformed (-22)\n");
        return Err(EINVAL);
    }
    // SAFETY: NUL-terminated (caller contract).
    let id = unsafe { CStr::from_char_ptr(desc.id) };
    if !is_patch_id(id.to_bytes()) {
        pr_err!("patch descriptor has an invalid id (-22)\n");
        return Err(EINVAL);
    }
    let cves = if desc.cves.is_null() {
        c"".to_cstring()?
    } else {
        // SAFETY: NUL-terminated (caller contract).
        unsafe { CStr::from_char_ptr(desc.cves) }.to_cstring()?
    };
    if !cves_ok(cves.to_bytes()) {
        pr_err!("patch '{}': invalid cve list (-22)\n", text(id));
        return Err(EINVAL);
    }
    // The owner is the module calling us from its init: live.
    let owner = kapi::ModuleRefRaw(desc.owner.cast());
    let mut funcs = KVec::with_capacity(desc.nfuncs as usize, GFP_KERNEL)?;
    for i in 0..desc.nfuncs as usize {
        // SAFETY: `funcs` has `nfuncs` entries (caller contract).
        let f = unsafe { &*desc.funcs.add(i) };
        if f.name.is_null() || f.object.is_null() || f.new_func.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: NUL-terminated (caller contract).
        let (object, name) = unsafe { (CStr::from_char_ptr(f.object as *const c_char), CStr::from_char_ptr(f.name)) };
        if !is_symbol_name(name.to_bytes()) || !is_symbol_name(object.to_bytes()) {
            pr_err!("patch '{}': invalid function or object name (-22)\n", text(id));
            return Err(EINVAL);
        }
        // A replacement must be code of the module registering it: that is
        // the module an enabled patch pins and a revert checks and releases.
        let repl = Symbol::of(f.new_func as usize);
        if symbol_module(repl.as_str()) != Some(owner.name().to_bytes()) {
            pr_err!("patch '{}': replacement for '{}' is '{}', not code of module '{}' (-22)\n",
                text(id), text(name), repl.as_str(), text(owner.name()));
            return Err(EINVAL);
        }
        funcs.push(
            PatchFunc {
                object: object.to_cstring()?,
                name: name.to_cstring()?,
                sympos: f.sympos,
                new_func: f.new_func as usize,
                target: 0,
                fp_offset: 0,
                fp: KVec::new(),
            },
            GFP_KERNEL,
        )?;
    }
    Ok(Patch {
        serial: 0,
        id: id.to_cstring()?,
        replace: desc.flags & abi::KMEND_PATCH_REPLACE != 0,
        cves,
        owner: Owner(desc.owner.cast()),
        funcs,
        state: State::Registered,
    })
}

/// The module of a symbol as `sprint_symbol` prints it
/// (`name+0x0/0x40 [module]`); `None` for the core kernel.
fn symbol_module(sym: &str) -> Option<&[u8]> {
    let (_, module) = sym.rsplit_once(" [")?;
    Some(module.strip_suffix(']')?.as_bytes())
}

/// Parses `name+0x0/0x<size>[ [module]]` and checks it names `name` in
/// `object`; returns the function's size.
fn check_symbol(sym: &str, name: &str, object: &str) -> Option<usize> {
    let rest = sym.strip_prefix(name)?.strip_prefix("+0x0/0x")?;
    let (size, module) = match rest.split_once(' ') {
        Some((size, module)) => (size, Some(module)),
        None => (rest, None),
    };
    let in_object = match module {
        None => object == "vmlinux",
        Some(m) => m.strip_prefix('[').and_then(|m| m.strip_suffix(']')) == Some(object),
    };
    if !in_object {
        return None;
    }
    usize::from_str_radix(size, 16).ok().filter(|&s| s > 0)
}

/// Offset of the ftrace site in a function starting with `code`.
fn ftrace_site(code: &[u8; 9]) -> Option<usize> {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    const ENDBR_POISON: [u8; 4] = [0x0f, 0x1f, 0x40, 0xd6];
    const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
    // The site is a NOP while unused, or a call/jmp while some tracer uses it.
    let is_site = |b: &[u8]| b == NOP5 || b[0] == 0xe8 || b[0] == 0xe9;
    let start = if code[..4] == ENDBR64 || code[..4] == ENDBR_POISON { 4 } else { 0 };
    is_site(&code[start..start + 5]).then_some(start)
}

/// All registered patches and the redirections they make.
pub(crate) struct Registry {
    patches: KVec<Patch>,
    redirects: Redirects,
    next_serial: u64,
}

impl Registry {
    pub(crate) const fn new() -> Self {
        Self {
            patches: KVec::new(),
            redirects: Redirects::new(),
            next_serial: 1,
        }
    }

    fn position(&self, id: &[u8]) -> Option<usize> {
        self.patches.iter().position(|p| p.id.to_bytes() == id)
    }

    fn register(&mut self, mut patch: Patch) -> Result {
        if self.position(patch.id.to_bytes()).is_some() {
            pr_err!("patch '{}': already registered (-17)\n", text(&patch.id));
            return Err(EEXIST);
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

    /// Verifies one target against the request; returns it and its replacement's end.
    fn verify(f: &PatchFunc, req: &KmendFuncReq, id: &str) -> Result<(Target, usize), Refusal> {
        let (name, object) = (text(&f.name), text(&f.object));
        if req.addr == 0 {
            return Err(refuse(ENOENT, format_args!("patch '{id}': '{object}:{name}': no address (is '{object}' loaded?)")));
        }
        let addr = req.addr as usize;
        let sym = Symbol::of(addr);
        let Some(size) = check_symbol(sym.as_str(), name, object) else {
            return Err(refuse(ENXIO, format_args!(
                "patch '{id}': address {addr:#x} is '{}', not '{object}:{name}'", sym.as_str())));
        };
        Self::verify_at(f, addr, size, req.fp_offset, &req.fp[..(req.fp_len as usize).min(KMEND_FP_MAX)], id)
    }

    /// Verifies the code of a located target (ftrace site, fingerprint).
    fn verify_at(f: &PatchFunc, addr: usize, size: usize, fp_offset: u32, fp: &[u8], id: &str) -> Result<(Target, usize), Refusal> {
        let name = text(&f.name);
        let mut head = [0u8; 9];
        kapi::read_text(addr, &mut head)?;
        let Some(site) = ftrace_site(&head) else {
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

    /// Runs a switch; on a blocker, refuses naming the thread and function.
    fn run_switch(&mut self, ranges: &[Busy], names: &[CString], stores: &[Store], timeout: u32, id: &str) -> Result<u64, Refusal> {
        match transition::switch(ranges, stores, timeout)? {
            Switched::Done(p) => {
                pr_info!("patch '{}': switched: pause {} ns (check and switch {} ns, {} of {} tasks re-checked stopped)\n",
                    id, p.total_ns, p.work_ns, p.rechecked, p.tasks);
                Ok(p.total_ns)
            }
            Switched::Blocked(b) => {
                let comm = core::str::from_utf8(&b.comm)
                    .unwrap_or("?")
                    .trim_end_matches('\0');
                if b.name == transition::TRUNCATED {
                    return Err(refuse(EBUSY, format_args!(
                        "patch '{id}': task {} ({comm}) has a stack too deep to check whole; gave up after {timeout} ms",
                        b.pid)));
                }
                let func = names.get(b.name).map_or("?", |n| text(n));
                Err(refuse(EBUSY, format_args!(
                    "patch '{id}': task {} ({comm}) is running '{func}'; gave up after {timeout} ms", b.pid)))
            }
        }
    }

    /// Enables a registered patch: every function switches, or none does.
    pub(crate) fn enable(&mut self, id: &[u8], reqs: &[KmendFuncReq], timeout: u32) -> Result<u64, Refusal> {
        let sid = core::str::from_utf8(id).unwrap_or("?");
        let Some(pos) = self.position(id) else {
            return Err(refuse(ENOENT, format_args!("enable: no patch '{sid}' is loaded")));
        };
        if self.patches[pos].enabled() {
            return Err(refuse(EEXIST, format_args!("patch '{sid}': already enabled")));
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
            verified.push(Self::verify(f, req, sid)?, GFP_KERNEL)?;
            which.push(k, GFP_KERNEL)?;
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
            match self.redirects.prepare(target) {
                Ok(idx) => slots.push(idx, GFP_KERNEL)?,
                Err(e) => {
                    self.redirects.drop_unused();
                    return Err(refuse(e, format_args!("patch '{sid}': cannot redirect a function (ftrace)")));
                }
            }
            news.push(new_end, GFP_KERNEL)?;
        }

        // 3. Plan: what stops running (must not be on a stack) and the stores.
        let mut ranges = KVec::new();
        let mut names = KVec::new();
        let mut stores = KVec::new();
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
            }
            for e in slot.stack.iter().filter(|e| self.patches.iter().any(|p| p.serial == e.patch && superseded(p))) {
                ranges.push(Busy { start: e.start, end: e.end, name }, GFP_KERNEL)?;
            }
        }

        // 4. Switch.
        let pause = match self.run_switch(&ranges, &names, &stores, timeout, sid) {
            Ok(pause) => pause,
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
        pr_info!("patch '{}': enabled ({} functions)\n", sid, slots.len());
        Ok(pause)
    }

    /// Reverts an enabled patch: its functions go back to what ran before it.
    pub(crate) fn revert(&mut self, id: &[u8], timeout: u32) -> Result<u64, Refusal> {
        let sid = core::str::from_utf8(id).unwrap_or("?");
        let Some(pos) = self.position(id) else {
            return Err(refuse(ENOENT, format_args!("revert: no patch '{sid}' is loaded")));
        };
        if !self.patches[pos].enabled() {
            // Registered but not applied (never enabled, or superseded):
            // nothing runs its code, so reverting is already done.
            return Ok(0);
        }
        let serial = self.patches[pos].serial;
        let mut ranges = KVec::new();
        let mut names = KVec::new();
        let mut stores = KVec::new();
        for slot in self.redirects.slots.iter() {
            let Some(entry) = slot.stack.iter().find(|e| e.patch == serial) else { continue };
            let name = names.len();
            names.push(slot.target.name.to_cstring()?, GFP_KERNEL)?;
            // The replacement's module is released afterwards: nobody may be in it.
            ranges.push(Busy { start: entry.start, end: entry.end, name }, GFP_KERNEL)?;
            if slot.stack.last().is_some_and(|e| e.patch == serial) {
                let below = slot.stack.iter().rev().nth(1);
                stores.push(Store { tramp: slot.trampoline(), target: slot.effective_of(below) }, GFP_KERNEL)?;
            }
        }
        let pause = self.run_switch(&ranges, &names, &stores, timeout, sid)?;
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
        Ok(pause)
    }

    /// A module is loading: apply the enabled patches' pending functions in
    /// it. Its code has not run yet, so no stack check or stop is needed.
    /// An error makes the module's load fail.
    pub(crate) fn module_coming(&mut self, module: &kapi::ModuleRefRaw) -> Result {
        let name = module.name();
        for p in self.patches.iter_mut().filter(|p| p.enabled()) {
            let sid = text(&p.id);
            for f in p.funcs.iter_mut().filter(|f| f.target == 0 && f.object.to_bytes() == name.to_bytes()) {
                let Some((addr, size)) = module.symbol(&f.name, f.sympos) else {
                    let r = refuse(ENOENT, format_args!("patch '{sid}': '{}' has no function '{}'", text(name), text(&f.name)));
                    return Err(r.errno);
                };
                let (target, new_end) = Self::verify_at(f, addr, size, f.fp_offset, &f.fp, sid).map_err(|r| r.errno)?;
                let idx = self.redirects.prepare(target)?;
                let slot = &mut self.redirects.slots[idx];
                let _ = slot.stack.push_within_capacity(Entry { patch: p.serial, start: f.new_func, end: new_end });
                crate::trampoline::set_target(slot.trampoline(), f.new_func);
                f.target = addr;
                pr_info!("patch '{}': '{}:{}' applied as the module loads\n", sid, text(name), text(&f.name));
            }
        }
        Ok(())
    }

    /// A module is going: drop its redirections; its functions of enabled
    /// patches go back to pending, for when it loads again.
    pub(crate) fn module_going(&mut self, module: &kapi::ModuleRefRaw) {
        let name = module.name();
        for p in self.patches.iter_mut() {
            for f in p.funcs.iter_mut().filter(|f| f.object.to_bytes() == name.to_bytes()) {
                f.target = 0;
            }
        }
        for slot in self.redirects.slots.iter_mut().filter(|s| s.target.object.to_bytes() == name.to_bytes()) {
            slot.stack.clear();
        }
        self.redirects.drop_unused();
    }

    /// Writes the status text (format in docs/control-abi.md).
    pub(crate) fn write_status(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "kmend-status {}", crate::uapi::KMEND_UAPI_VERSION)?;
        let enabled = self.patches.iter().filter(|p| p.enabled()).count();
        let release = crate::kapi::release();
        writeln!(out, "kernel release={release} effective={release}{}", EffectiveSuffix(enabled))?;
        write!(out, "cves")?;
        let mut sep = ' ';
        for p in self.patches.iter().filter(|p| p.enabled()) {
            for cve in p.cves.to_bytes().split(|&c| c == b',').filter(|c| !c.is_empty()) {
                write!(out, "{sep}{}", core::str::from_utf8(cve).unwrap_or("?"))?;
                sep = ',';
            }
        }
        writeln!(out)?;
        for p in self.patches.iter() {
            let (en, pause) = match p.state {
                State::Enabled { pause_ns, .. } => (1, pause_ns),
                State::Registered => (0, 0),
            };
            writeln!(out, "patch {} enabled={} transition=0 replace={} funcs={} pause_ns={}",
                text(&p.id), en, u8::from(p.replace), p.funcs.len(), pause)?;
            for f in p.funcs.iter() {
                let state = if !p.enabled() {
                    "disabled"
                } else if f.target == 0 {
                    "pending"
                } else if self.redirects.is_active(f.target, p.serial) {
                    "active"
                } else {
                    "stacked"
                };
                writeln!(out, "func {} {} {} {} {} {}", text(&p.id), text(&f.object), text(&f.name),
                    f.sympos, state, Symbol::of(f.new_func))?;
            }
        }
        Ok(())
    }
}

/// `+kmend<N>`: the effective version shows how many patches are applied.
struct EffectiveSuffix(usize);

impl fmt::Display for EffectiveSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 { Ok(()) } else { write!(f, "+kmend{}", self.0) }
    }
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

/// The module notifier's entry: see [`Registry::module_coming`].
pub(crate) fn on_module_event(event: kapi::ModuleEvent, module: &kapi::ModuleRefRaw) -> Result {
    let mut state = STATE.lock();
    match event {
        kapi::ModuleEvent::Coming => state.module_coming(module),
        kapi::ModuleEvent::Going => {
            state.module_going(module);
            Ok(())
        }
    }
}
