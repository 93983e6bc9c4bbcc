// SPDX-License-Identifier: GPL-2.0
//! `/dev/kmend`: the root-only control interface.
//!
//! `read` gives the status text (`cat /dev/kmend`), `ioctl` takes commands.
//! Every command validates its input and answers with an errno, a log line
//! and (for transitions) the reason in the request's `error` field; nothing
//! a caller sends can crash the kernel. See docs/control-abi.md.

use core::fmt;

use kernel::{
    bindings,
    fs::{
        File,
        Kiocb, //
    },
    ioctl::_IOC_SIZE,
    iov::IovIterDest,
    miscdevice::{
        MiscDevice,
        MiscDeviceRegistration, //
    },
    new_mutex,
    prelude::*,
    sync::Mutex,
    uaccess::{
        UserPtr,
        UserSlice, //
    },
};

use crate::{
    patch,
    refusal::{
        Msg,
        Refusal, //
    },
    registry::{
        self,
        STATE, //
    },
    transition::DEFAULT_TIMEOUT_MS,
    uapi::{
        self,
        KmendFuncReq,
        KmendReq, //
    },
};

/// One open file of `/dev/kmend`.
#[pin_data]
pub(crate) struct ControlFile {
    /// Status text, taken when a read starts at offset 0, so one `cat` sees
    /// one consistent snapshot.
    #[pin]
    snapshot: Mutex<KVVec<u8>>,
}

/// `fmt::Write` into a kernel vector.
struct TextBuf<'a>(&'a mut KVVec<u8>);

impl fmt::Write for TextBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes(), GFP_KERNEL).map_err(|_| fmt::Error)
    }
}

#[vtable]
impl MiscDevice for ControlFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Self::Ptr> {
        if !capable_sys_module() {
            return Err(EPERM);
        }
        KBox::try_pin_init(
            try_pin_init!(Self {
                snapshot <- new_mutex!(KVVec::new()),
            }),
            GFP_KERNEL,
        )
    }

    fn read_iter(mut kiocb: Kiocb<'_, Self::Ptr>, iov: &mut IovIterDest<'_>) -> Result<usize> {
        let me = kiocb.file();
        let mut snapshot = me.snapshot.lock();
        if *kiocb.ki_pos_mut() == 0 {
            snapshot.clear();
            STATE
                .lock()
                .write_status(&mut TextBuf(&mut snapshot))
                .map_err(|_| ENOMEM)?;
        }
        iov.simple_read_from_buffer(kiocb.ki_pos_mut(), &snapshot)
    }

    fn ioctl(_me: Pin<&Self>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        // Checked on every command, not only at open: an open file can be
        // passed to a process without the capability.
        if !capable_sys_module() {
            return Err(EPERM);
        }
        let slice = UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd));
        match cmd {
            uapi::KMEND_IOC_ENABLE | uapi::KMEND_IOC_REVERT => {
                let (mut reader, mut writer) = slice.reader_writer();
                let mut req: KmendReq = reader.read()?;
                let result = transition_request(cmd, &req);
                req.error = [0; uapi::KMEND_ERR_MAX];
                req.pause_ns = 0;
                match result {
                    Ok(pause) => {
                        req.pause_ns = pause;
                        writer.write(&req)?;
                        Ok(0)
                    }
                    Err(r) => {
                        req.error[..r.msg.len].copy_from_slice(&r.msg.buf[..r.msg.len]);
                        writer.write(&req)?;
                        Err(r.errno)
                    }
                }
            }
            uapi::KMEND_IOC_VERSION => {
                slice.writer().write(&uapi::KMEND_UAPI_VERSION)?;
                Ok(0)
            }
            _ => {
                pr_warn!("control: unknown ioctl {:#x} (-25)\n", cmd);
                Err(ENOTTY)
            }
        }
    }
}

/// Whether the calling task may load and unload kernel code.
fn capable_sys_module() -> bool {
    // SAFETY: `capable` only reads the current task's credentials.
    unsafe { bindings::capable(bindings::CAP_SYS_MODULE as i32) }
}

/// Validates and runs an enable or revert request.
fn transition_request(cmd: u32, req: &KmendReq) -> Result<u64, Refusal> {
    let id = checked(req)?;
    let timeout = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT_MS,
        t => t,
    };
    if cmd == uapi::KMEND_IOC_REVERT {
        if req.nfuncs != 0 {
            return Err(bad("revert takes no functions"));
        }
        return registry::revert(id, timeout);
    }
    if req.nfuncs == 0 || req.nfuncs > uapi::KMEND_FUNCS_MAX {
        return Err(bad("function count out of range"));
    }
    let n = req.nfuncs as usize;
    let size = n * core::mem::size_of::<KmendFuncReq>();
    let mut reader = UserSlice::new(UserPtr::from_addr(req.funcs as usize), size).reader();
    let mut funcs = KVec::with_capacity(n, GFP_KERNEL)?;
    for _ in 0..n {
        funcs.push(reader.read::<KmendFuncReq>()?, GFP_KERNEL)?;
    }
    registry::enable(id, &funcs, timeout)
}

fn bad(what: &str) -> Refusal {
    let mut msg = Msg { buf: [0; uapi::KMEND_ERR_MAX], len: 0 };
    let _ = fmt::Write::write_fmt(&mut msg, format_args!("control: {what}"));
    pr_warn!("{} (-22)\n", msg.as_str());
    Refusal { errno: EINVAL, msg }
}

/// The id of a request, after checking version, flags, timeout and id.
fn checked(req: &KmendReq) -> Result<&[u8], Refusal> {
    if req.version != uapi::KMEND_UAPI_VERSION {
        return Err(bad("unsupported request version"));
    }
    if req.flags != 0 {
        return Err(bad("unknown flags"));
    }
    if req.timeout_ms > uapi::KMEND_TIMEOUT_MAX_MS {
        return Err(bad("timeout too long"));
    }
    let len = req.id.iter().position(|&b| b == 0).ok_or_else(|| bad("patch id not terminated"))?;
    let id = &req.id[..len];
    if !patch::is_patch_id(id) {
        return Err(bad("invalid patch id"));
    }
    Ok(id)
}
