// SPDX-License-Identifier: GPL-2.0
//! `/dev/kmend`: the root-only control interface.
//!
//! `read` gives the status text (`cat /dev/kmend`), `ioctl` takes commands.
//! Every command validates its input and answers with an errno and a log
//! line; nothing a caller sends can crash the kernel. See docs/control-abi.md.

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
    patch::STATE,
    uapi, //
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
        // SAFETY: `capable` only reads the current task's credentials.
        if !unsafe { bindings::capable(bindings::CAP_SYS_MODULE as i32) } {
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
        let mut reader = UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd)).reader();
        match cmd {
            uapi::KMEND_IOC_REVERT => {
                let req: uapi::KmendIdReq = reader.read()?;
                let id = checked_id(&req)?;
                STATE.lock().revert(id)?;
                Ok(0)
            }
            _ => {
                pr_warn!("control: unknown ioctl {:#x} (-ENOTTY)\n", cmd);
                Err(ENOTTY)
            }
        }
    }
}

/// The id of a request, after checking version, flags and termination.
fn checked_id(req: &uapi::KmendIdReq) -> Result<&[u8]> {
    if req.version != uapi::KMEND_UAPI_VERSION {
        pr_warn!("control: request version {} (want {}) (-EINVAL)\n",
            req.version, uapi::KMEND_UAPI_VERSION);
        return Err(EINVAL);
    }
    if req.flags != 0 {
        pr_warn!("control: unknown flags {:#x} (-EINVAL)\n", req.flags);
        return Err(EINVAL);
    }
    let len = req.id.iter().position(|&b| b == 0).ok_or_else(|| {
        pr_warn!("control: patch id not terminated (-EINVAL)\n");
        EINVAL
    })?;
    if len == 0 {
        pr_warn!("control: empty patch id (-EINVAL)\n");
        return Err(EINVAL);
    }
    Ok(&req.id[..len])
}
