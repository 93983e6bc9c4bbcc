// SPDX-License-Identifier: GPL-2.0
//! Safe wrappers for the kernel functions kmend needs that have no Rust
//! abstraction: stop_machine, task iteration and stack traces, reading
//! kernel text, and the clock. The one place they are declared or wrapped.
//!
//! C headers: [`include/linux/stop_machine.h`](srctree/include/linux/stop_machine.h),
//! [`include/linux/stacktrace.h`](srctree/include/linux/stacktrace.h),
//! [`include/linux/uaccess.h`](srctree/include/linux/uaccess.h).

use kernel::{
    bindings,
    ffi::{
        c_int,
        c_ulong,
        c_void, //
    },
    prelude::*,
};

unsafe extern "C" {
    /// `stop_machine()`: not in the generated bindings.
    fn stop_machine(
        cb: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
        data: *mut c_void,
        cpus: *const bindings::cpumask,
    ) -> c_int;

    /// `kmend_export.c`: `for_each_process_thread` (a macro) for Rust.
    fn kmend_helper_for_each_task(
        cb: Option<unsafe extern "C" fn(*mut bindings::task_struct, *mut c_void) -> c_int>,
        data: *mut c_void,
    ) -> c_int;

    /// `kmend_export.c`: `init_utsname()->release`.
    fn kmend_helper_release() -> *const u8;

    /// `kmend_export.c`: `task_pid_nr()`.
    fn kmend_helper_task_pid(task: *mut bindings::task_struct) -> c_int;

    /// `kmend_export.c`: `__get_task_comm()` into 16 bytes.
    fn kmend_helper_task_comm(task: *mut bindings::task_struct, buf: *mut u8);

    /// `kmend_export.c`: context switches so far, and whether on a CPU now.
    fn kmend_helper_task_switches(task: *mut bindings::task_struct, on_cpu: *mut bool) -> c_ulong;

    /// `kmend_export.c`: a module's name.
    fn kmend_helper_module_name(module: *mut bindings::module) -> *const u8;

    /// `kmend_export.c`: a function in a module's symbol table.
    fn kmend_helper_module_symbol(
        module: *mut bindings::module,
        name: *const u8,
        sympos: c_ulong,
        size: *mut c_ulong,
    ) -> c_ulong;
}

/// Runs `f` on one CPU while every other CPU spins with interrupts off.
///
/// `f` must not sleep or allocate with GFP_KERNEL.
pub(crate) fn stop_the_world<F: FnMut() -> Result>(mut f: F) -> Result {
    unsafe extern "C" fn trampoline<F: FnMut() -> Result>(data: *mut c_void) -> c_int {
        // SAFETY: `data` is the `&mut F` passed below, alive for the call.
        let f = unsafe { &mut *data.cast::<F>() };
        match f() {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
    // SAFETY: `trampoline::<F>` matches `cpu_stop_fn_t` and `f` outlives the
    // call; a null mask means "run on any one CPU".
    let ret = unsafe {
        stop_machine(Some(trampoline::<F>), (&raw mut f).cast(), core::ptr::null())
    };
    if ret == 0 { Ok(()) } else { Err(Error::from_errno(ret)) }
}

/// A thread, borrowed during [`for_each_task`].
pub(crate) struct TaskRef {
    task: *mut bindings::task_struct,
}

impl TaskRef {
    /// The thread id.
    pub(crate) fn pid(&self) -> i32 {
        // SAFETY: `task` is valid during the iteration (see `for_each_task`).
        unsafe { kmend_helper_task_pid(self.task) }
    }

    /// The command name, up to 16 bytes.
    pub(crate) fn comm(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        // SAFETY: `task` is valid during the iteration; `out` has the 16
        // bytes (TASK_COMM_LEN) the helper writes.
        unsafe { kmend_helper_task_comm(self.task, out.as_mut_ptr()) };
        out
    }

    /// The task's identity for this walk (its address; stable while it lives).
    pub(crate) fn key(&self) -> usize {
        self.task as usize
    }

    /// How many times the task has been switched out, and whether it is on
    /// a CPU right now (then its stack is moving).
    pub(crate) fn switches(&self) -> (u64, bool) {
        let mut on_cpu = false;
        // SAFETY: `task` is valid during the iteration; `on_cpu` is writable.
        let n = unsafe { kmend_helper_task_switches(self.task, &mut on_cpu) };
        (n as u64, on_cpu)
    }

    /// Saves the thread's kernel stack (return addresses) into `buf`.
    pub(crate) fn stack<'a>(&self, buf: &'a mut [c_ulong]) -> &'a [c_ulong] {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // SAFETY: `task` is valid; `buf` has room for `len` entries.
        let n = unsafe { bindings::stack_trace_save_tsk(self.task, buf.as_mut_ptr(), len, 0) };
        &buf[..(n as usize).min(buf.len())]
    }
}

/// Calls `f` on every thread until it returns an error, which is returned.
///
/// Runs under the RCU read lock: `f` must not sleep.
pub(crate) fn for_each_task<F: FnMut(&TaskRef) -> Result>(mut f: F) -> Result {
    unsafe extern "C" fn trampoline<F: FnMut(&TaskRef) -> Result>(
        task: *mut bindings::task_struct,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `&mut F` passed below, alive for the call.
        let f = unsafe { &mut *data.cast::<F>() };
        match f(&TaskRef { task }) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
    // SAFETY: the callback matches the helper's type and `f` outlives it.
    let ret = unsafe { kmend_helper_for_each_task(Some(trampoline::<F>), (&raw mut f).cast()) };
    if ret == 0 { Ok(()) } else { Err(Error::from_errno(ret)) }
}

/// Reads kernel text at `addr` into `buf`, without faulting.
pub(crate) fn read_text(addr: usize, buf: &mut [u8]) -> Result {
    // SAFETY: `copy_from_kernel_nofault` checks the source and returns an
    // error instead of faulting; `buf` is valid for its length.
    let ret = unsafe {
        bindings::copy_from_kernel_nofault(buf.as_mut_ptr().cast(), addr as *const c_void, buf.len())
    };
    if ret == 0 { Ok(()) } else { Err(EFAULT) }
}

/// Monotonic time in nanoseconds.
pub(crate) fn now_ns() -> i64 {
    // SAFETY: reads the clock; callable from any context.
    unsafe { bindings::ktime_get() }
}

/// Sleeps for about `ms` milliseconds.
pub(crate) fn sleep_ms(ms: u32) {
    // SAFETY: process context (ioctl), may sleep.
    unsafe { bindings::msleep(ms) };
}

/// The running kernel's release (`uname -r`).
pub(crate) fn release() -> &'static str {
    // SAFETY: the helper returns the NUL-terminated release of the initial
    // UTS namespace, a static that lives as long as the kernel.
    let release = unsafe { CStr::from_char_ptr(kmend_helper_release()) };
    release.to_str().unwrap_or("?")
}

/// A module being loaded or unloaded, as the module notifier sees it.
pub(crate) struct ModuleRefRaw(pub(crate) *mut bindings::module);

impl ModuleRefRaw {
    /// The module's name.
    pub(crate) fn name(&self) -> &CStr {
        // SAFETY: the notifier passes a live module; its name is a
        // NUL-terminated array inside it.
        unsafe { CStr::from_char_ptr(kmend_helper_module_name(self.0)) }
    }

    /// Start and size of function `name` (the `sympos`-th; 0: unique).
    pub(crate) fn symbol(&self, name: &CStr, sympos: u64) -> Option<(usize, usize)> {
        let mut size: c_ulong = 0;
        // SAFETY: a live module, a NUL-terminated name, and room for the size.
        let addr = unsafe {
            kmend_helper_module_symbol(self.0, name.as_ptr().cast(), sympos as c_ulong, &mut size)
        };
        (addr != 0 && size != 0).then_some((addr as usize, size as usize))
    }
}

/// A registration of the module notifier.
///
/// # Invariants
///
/// `nb` is registered with `register_module_notifier` until drop.
#[pin_data(PinnedDrop)]
pub(crate) struct ModuleNotifier {
    #[pin]
    nb: kernel::types::Opaque<bindings::notifier_block>,
}

// SAFETY: the notifier block is only used by the notifier chain, under its lock.
unsafe impl Send for ModuleNotifier {}
// SAFETY: as above.
unsafe impl Sync for ModuleNotifier {}

/// What the module notifier reports.
pub(crate) enum ModuleEvent {
    Coming,
    Going,
}

impl ModuleNotifier {
    /// Calls `on_event` for every module that comes or goes; an error from
    /// a `Coming` event makes that module's load fail.
    pub(crate) fn new(on_event: fn(ModuleEvent, &ModuleRefRaw) -> Result) -> impl PinInit<Self, Error> {
        // One callback per kmend, so the function pointer lives in a static.
        // SAFETY: set once here, before registration; read only by `callback`.
        unsafe { ON_EVENT = Some(on_event) };
        try_pin_init!(Self {
            nb <- kernel::types::Opaque::try_ffi_init(|nb: *mut bindings::notifier_block| {
                // SAFETY: `nb` points to pinned memory for a notifier block;
                // all zeroes plus the callback is a valid one.
                unsafe {
                    nb.write(core::mem::zeroed());
                    (*nb).notifier_call = Some(Self::callback);
                }
                // SAFETY: `nb` is initialised and stays put until drop.
                kernel::error::to_result(unsafe { bindings::register_module_notifier(nb) })
            }),
        })
    }

    unsafe extern "C" fn callback(_nb: *mut bindings::notifier_block, action: c_ulong, data: *mut c_void) -> c_int {
        let event = match action as u32 {
            bindings::module_state_MODULE_STATE_COMING => ModuleEvent::Coming,
            bindings::module_state_MODULE_STATE_GOING => ModuleEvent::Going,
            _ => return bindings::NOTIFY_OK as c_int,
        };
        // SAFETY: written once before registration.
        let Some(on_event) = (unsafe { ON_EVENT }) else { return bindings::NOTIFY_OK as c_int };
        match on_event(event, &ModuleRefRaw(data.cast())) {
            Ok(()) => bindings::NOTIFY_OK as c_int,
            // notifier_from_errno(): stop the chain and carry the errno.
            Err(e) => (bindings::NOTIFY_STOP_MASK as c_int) | ((bindings::NOTIFY_OK as c_int) - e.to_errno()),
        }
    }
}

static mut ON_EVENT: Option<fn(ModuleEvent, &ModuleRefRaw) -> Result> = None;

#[pinned_drop]
impl PinnedDrop for ModuleNotifier {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: by the type invariant `nb` is registered.
        unsafe { bindings::unregister_module_notifier(self.nb.get()) };
    }
}
