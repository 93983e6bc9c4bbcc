// SPDX-License-Identifier: GPL-2.0
//! Safe wrapper around an ftrace "direct jump" registration.
//!
//! C header: [`include/linux/ftrace.h`](srctree/include/linux/ftrace.h).
//!
//! A [`DirectJmp`] turns one function's ftrace call site into a `jmp` to a
//! kmend trampoline (DYNAMIC_FTRACE_WITH_JMP): no ftrace handler runs on the
//! call path at all. Dropping it restores the site.

use kernel::{
    bindings,
    error::to_result,
    ffi::c_ulong,
    prelude::*,
    types::Opaque, //
};

/// ftrace's marker for "jump, don't call" in a direct address.
const FTRACE_JMP: usize = 1;

/// One function's ftrace site, jumping to a trampoline.
///
/// # Invariants
///
/// From the end of [`DirectJmp::new`] until drop, `ops` is registered as a
/// direct-jump ops on exactly one ftrace site, jumping to `addr`.
#[pin_data(PinnedDrop)]
pub(crate) struct DirectJmp {
    #[pin]
    ops: Opaque<bindings::ftrace_ops>,
    addr: usize,
}

// SAFETY: `ops` is only touched by ftrace under its own locks after
// registration; `addr` is immutable.
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
}

#[pinned_drop]
impl PinnedDrop for DirectJmp {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: by the type invariant `ops` is registered with `addr`.
        // Unregistering waits until no CPU can still be in ftrace code for
        // it, so the memory may be freed when this returns.
        let ret = unsafe { bindings::unregister_ftrace_direct(self.ops.get(), self.addr as c_ulong, true) };
        if ret != 0 {
            pr_err!("ftrace: unregister direct jump failed ({})\n", ret);
        }
    }
}
