// SPDX-License-Identifier: GPL-2.0
//! Safe wrapper around an ftrace "direct jump" registration.
//!
//! C header: [`include/linux/ftrace.h`](srctree/include/linux/ftrace.h).
//!
//! A [`DirectJmp`] turns one function's ftrace call site into a direct `jmp`
//! (DYNAMIC_FTRACE_WITH_JMP): to a kmend trampoline, or straight to the
//! replacement the trampoline jumps to ([`DirectJmp::retarget`]). No ftrace
//! handler runs on the call path at all. Dropping it restores the site.

use kernel::{
    bindings,
    error::to_result,
    ffi::c_ulong,
    prelude::*,
    types::Opaque, //
};

/// ftrace's marker for "jump, don't call" in a direct address.
const FTRACE_JMP: usize = 1;

/// One function's ftrace site, jumping to a trampoline or a replacement.
///
/// # Invariants
///
/// From the end of [`DirectJmp::new`] while `registered`, `ops` is
/// registered as a direct-jump ops on exactly one ftrace site, jumping to
/// `addr` (which carries [`FTRACE_JMP`]).
#[pin_data(PinnedDrop)]
pub(crate) struct DirectJmp {
    #[pin]
    ops: Opaque<bindings::ftrace_ops>,
    addr: usize,
    registered: bool,
}

// SAFETY: `ops` is only touched by ftrace under its own locks after
// registration; `addr` and `registered` only change through `&mut`.
unsafe impl Send for DirectJmp {}
// SAFETY: as for `Send`.
unsafe impl Sync for DirectJmp {}

impl DirectJmp {
    /// Makes the ftrace site of the function at `func` jump to `trampoline`.
    ///
    /// `func` must be the verified start of a kernel function.
    pub(crate) fn new(func: usize, trampoline: usize) -> impl PinInit<Self, Error> {
        let direct = trampoline | FTRACE_JMP;
        try_pin_init!(Self {
            addr: direct,
            registered: true,
            ops <- Opaque::try_ffi_init(move |ops: *mut bindings::ftrace_ops| {
                // SAFETY: `ops` points to pinned memory for a `ftrace_ops`; all
                // zeroes is a valid, unregistered ops with no callback (which
                // is what `register_ftrace_direct` requires).
                unsafe { ops.write(core::mem::zeroed()) };
                // SAFETY: `ops` is initialised; ftrace maps the function start
                // to its call site and fails on a function without one.
                to_result(unsafe { bindings::ftrace_set_filter_ip(ops, func as c_ulong, 0, 0) })?;
                // SAFETY: `ops` has a one-site filter and is not registered.
                let ret = unsafe { bindings::register_ftrace_direct(ops, direct as c_ulong) };
                if ret != 0 {
                    // SAFETY: `ops` is not registered; its filter can go.
                    unsafe { bindings::ftrace_free_filter(ops) };
                    return Err(Error::from_errno(ret));
                }
                Ok(())
            }),
        })
    }

    /// Where the site jumps now.
    pub(crate) fn target(&self) -> usize {
        self.addr & !FTRACE_JMP
    }

    /// Makes the site jump to `to` instead. The kernel's text poking
    /// rewrites the 5 bytes (breakpoint first, every CPU synchronized), so
    /// a CPU calling the function meanwhile goes to the old or the new
    /// target; callers only ever swap two targets that run the same code
    /// (a trampoline and the replacement it jumps to, `redirect.rs`).
    /// On an error the site still jumps where it did.
    pub(crate) fn retarget(self: Pin<&mut Self>, to: usize) -> Result {
        let direct = to | FTRACE_JMP;
        if to & FTRACE_JMP != 0 {
            return Err(EINVAL);
        }
        let this = self.project();
        if *this.addr == direct {
            return Ok(());
        }
        // SAFETY: by the type invariant `ops` is registered as a direct ops
        // on one site; ftrace serializes the change under its own mutexes.
        to_result(unsafe { bindings::modify_ftrace_direct(this.ops.get(), direct as c_ulong) })?;
        *this.addr = direct;
        Ok(())
    }
}

impl DirectJmp {
    /// Gives the site back to ftrace (a NOP again). Unregistering waits
    /// until no CPU can still be in ftrace code for it.
    fn unregister(self: Pin<&mut Self>) -> Result {
        let this = self.project();
        if !*this.registered {
            return Ok(());
        }
        // SAFETY: by the type invariant `ops` is registered with `addr`.
        to_result(unsafe { bindings::unregister_ftrace_direct(this.ops.get(), *this.addr as c_ulong, true) })?;
        *this.registered = false;
        Ok(())
    }

    /// Gives the site back to ftrace and frees the registration; `false`
    /// if ftrace refused. Then ftrace may still use `ops` and the site may
    /// still jump where it did: the registration is leaked, and the caller
    /// must keep what the site jumps to (its trampoline) for good.
    pub(crate) fn release(mut jmp: Pin<KBox<Self>>) -> bool {
        match jmp.as_mut().unregister() {
            Ok(()) => true,
            Err(e) => {
                pr_err!("ftrace: unregister direct jump failed ({}): the site and its trampoline stay\n", e.to_errno());
                core::mem::forget(jmp);
                false
            }
        }
    }
}

#[pinned_drop]
impl PinnedDrop for DirectJmp {
    fn drop(self: Pin<&mut Self>) {
        // Normally released already (`release`, which leaks on failure);
        // here only if a slot is dropped some other way.
        if let Err(e) = self.unregister() {
            pr_err!("ftrace: unregister direct jump failed ({})\n", e.to_errno());
        }
    }
}

/// Offset of the ftrace site in a function starting with `code`.
pub(crate) fn site_offset(code: &[u8; 9]) -> Option<usize> {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    const ENDBR_POISON: [u8; 4] = [0x0f, 0x1f, 0x40, 0xd6];
    const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
    // The site is a NOP while unused, or a call/jmp while some tracer uses it.
    let is_site = |b: &[u8]| b == NOP5 || b[0] == 0xe8 || b[0] == 0xe9;
    let start = if code[..4] == ENDBR64 || code[..4] == ENDBR_POISON { 4 } else { 0 };
    is_site(&code[start..start + 5]).then_some(start)
}
