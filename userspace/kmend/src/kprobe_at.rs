//! A kprobe at a kernel address, with a loaded eBPF program attached.
//!
//! aya attaches kprobes by symbol name (`perf_event_open` on the kprobe PMU
//! with the name in `config1`). A name the kernel has more than once (two
//! `static` functions of the same name in different files are common, and
//! real fixes patch them) is refused by the kernel since 6.6 with
//! `EADDRNOTAVAIL`, and before that went to the first of them, not
//! necessarily the patched one. kmend resolves the function itself (object,
//! name, position: [`crate::kallsyms::resolve`]), so it asks the same PMU for
//! a probe at that address instead (`config1 = 0`, `config2 = address`),
//! which is what aya's attach does apart from the address. aya 0.14 has no
//! address form, hence this small wrapper of the syscall and two ioctls.

use std::{
    fs,
    io,
    os::fd::{
        AsFd,
        AsRawFd as _,
        FromRawFd as _,
        OwnedFd, //
    },
};

use anyhow::{
    Context as _,
    anyhow, //
};
use perf_event_open_sys::{
    bindings::perf_event_attr,
    ioctls,
    perf_event_open, //
};

/// The kprobe PMU's type number.
const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

/// A kprobe at one address running one program; detached when dropped.
pub struct AddressProbe {
    _event: OwnedFd,
}

impl AddressProbe {
    /// Creates a kprobe at `address` and attaches `program` (a loaded
    /// `BPF_PROG_TYPE_KPROBE` program) to it.
    pub fn attach(address: u64, program: impl AsFd) -> anyhow::Result<Self> {
        let pmu: u32 = fs::read_to_string(KPROBE_PMU_TYPE)
            .with_context(|| format!("'{KPROBE_PMU_TYPE}': read failed (kernel without kprobe events?)"))?
            .trim()
            .parse()
            .map_err(|e| anyhow!("'{KPROBE_PMU_TYPE}': not a number: {e}"))?;
        let mut attr = perf_event_attr {
            type_: pmu,
            size: size_of::<perf_event_attr>() as u32,
            ..Default::default()
        };
        // No function name: the kernel probes `kprobe_addr` itself.
        attr.__bindgen_anon_3.kprobe_func = 0;
        attr.__bindgen_anon_4.kprobe_addr = address;
        // SAFETY: `attr` is a fully initialised perf_event_attr whose size
        // field is its own size; it asks for a kprobe event on every task
        // (pid -1) counted on CPU 0, which samples nothing and writes no
        // memory of ours.
        let fd = unsafe { perf_event_open(&mut attr, -1, 0, -1, perf_event_open_sys::bindings::PERF_FLAG_FD_CLOEXEC as _) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("creating a kprobe at {address:#x}"));
        }
        // SAFETY: the syscall just returned this descriptor; nothing else owns it.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        let prog = program.as_fd().as_raw_fd() as u32;
        // SAFETY: both ioctls take an integer argument; `event` is an open
        // perf event and `prog` a BPF program descriptor.
        let ok = unsafe { ioctls::SET_BPF(event.as_raw_fd(), prog) == 0 && ioctls::ENABLE(event.as_raw_fd(), 0) == 0 };
        if !ok {
            return Err(io::Error::last_os_error()).with_context(|| format!("attaching the program to the kprobe at {address:#x}"));
        }
        Ok(Self { _event: event })
    }
}
