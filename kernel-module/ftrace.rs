// SPDX-License-Identifier: GPL-2.0
//! Safe wrapper around an `ftrace_ops` that rewrites the instruction pointer.
//!
//! C header: [`include/linux/ftrace.h`](srctree/include/linux/ftrace.h).
//!
//! This file and `ksym.rs` hold kmend's `unsafe`: everything above them is
//! safe Rust. An [`IpRedirect`] puts an IPMODIFY ftrace handler on one
//! function; while its target is non-zero, every call to that function
//! continues in the target instead, with the caller's arguments and return
//! address untouched.

use core::{
    sync::atomic::{
        AtomicUsize,
        Ordering, //
    },
};

use kernel::{
    bindings,
    error::to_result,
    ffi::c_ulong,
    prelude::*,
    types::Opaque, //
};

/// One IPMODIFY ftrace registration on one function.
///
/// # Invariants
///
/// From the end of [`IpRedirect::new`] until drop, `ops` is registered with
/// ftrace and filtered to exactly the function it was created for, and its
/// handler is [`IpRedirect::handler`].
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct IpRedirect {
    // Must stay the first field: the handler gets a pointer to `ops` and
    // casts it back to the whole struct.
    #[pin]
    ops: Opaque<bindings::ftrace_ops>,
    /// Address calls continue at; 0 means "run the original function".
    target: AtomicUsize,
}

// SAFETY: `ops` is only touched through ftrace's own locking after
// registration, and `target` is atomic.
unsafe impl Send for IpRedirect {}
// SAFETY: as for `Send`; shared references only read `target` atomically.
unsafe impl Sync for IpRedirect {}

impl IpRedirect {
    /// Registers a handler on the function called `name` in vmlinux or a
    /// loaded module; calls go to `target` (0: nowhere yet).
    ///
    /// `name` must be a plain symbol name: the caller rejects glob characters,
    /// because ftrace would treat them as a pattern.
    pub(crate) fn new(name: &CStr, target: usize) -> impl PinInit<Self, Error> + '_ {
        try_pin_init!(Self {
            target: AtomicUsize::new(target),
            ops <- Opaque::try_ffi_init(move |ops: *mut bindings::ftrace_ops| {
                // SAFETY: `ops` points to memory for a `ftrace_ops` that will not
                // move (pinned); an all-zero `ftrace_ops` is what a C static
                // initialiser with only `.func` and `.flags` set would give.
                unsafe {
                    ops.write(core::mem::zeroed());
                    (*ops).func = Some(Self::handler);
                    (*ops).flags = (bindings::FTRACE_OPS_FL_DYNAMIC
                        | bindings::FTRACE_OPS_FL_IPMODIFY) as c_ulong;
                }
                let len = i32::try_from(name.to_bytes().len()).map_err(|_| EINVAL)?;
                // SAFETY: `ops` is initialised above; ftrace copies `name`.
                to_result(unsafe {
                    bindings::ftrace_set_filter(ops, name.as_ptr().cast_mut().cast(), len, 1)
                })?;
                // SAFETY: `ops` has its filter; it stays valid until
                // `unregister_ftrace_function` in drop.
                let ret = unsafe { bindings::register_ftrace_function(ops) };
                if ret != 0 {
                    // SAFETY: `ops` is not registered, so its filter can go.
                    unsafe { bindings::ftrace_free_filter(ops) };
                    return Err(Error::from_errno(ret));
                }
                Ok(())
            }),
        })
    }

    /// Sends calls to `target` from now on (0: back to the original).
    pub(crate) fn set_target(&self, target: usize) {
        self.target.store(target, Ordering::Release);
    }

    /// The address calls currently continue at (0: the original).
    pub(crate) fn target(&self) -> usize {
        self.target.load(Ordering::Acquire)
    }

    /// The ftrace handler: runs at the entry of the filtered function.
    ///
    /// # Safety
    ///
    /// Only ftrace calls this, with the `ops` of a registered [`IpRedirect`]
    /// and the `fregs` of the interrupted call.
    unsafe extern "C" fn handler(
        _ip: c_ulong,
        _parent_ip: c_ulong,
        op: *mut bindings::ftrace_ops,
        fregs: *mut bindings::ftrace_regs,
    ) {
        // SAFETY: by the type invariant `op` is the first field of a live,
        // `repr(C)` `IpRedirect` (`Opaque` is transparent), which stays alive
        // until it is unregistered and ftrace has quiesced.
        let this = unsafe { &*op.cast::<IpRedirect>() };
        let target = this.target.load(Ordering::Acquire);
        if target != 0 {
            // SAFETY: on x86_64 `struct ftrace_regs` is `struct
            // __arch_ftrace_regs` (arch/x86/include/asm/ftrace.h), and ftrace
            // hands IPMODIFY ops the live register set of this call.
            unsafe {
                (*fregs.cast::<bindings::__arch_ftrace_regs>()).regs.ip = target as c_ulong;
            }
        }
    }
}

#[pinned_drop]
impl PinnedDrop for IpRedirect {
    fn drop(self: Pin<&mut Self>) {
        let ops = self.ops.get();
        // SAFETY: by the type invariant `ops` is registered. For DYNAMIC ops,
        // unregistering waits until no CPU can still be in the handler, so the
        // memory may be freed when this returns.
        unsafe {
            bindings::unregister_ftrace_function(ops);
            bindings::ftrace_free_filter(ops);
        }
    }
}
