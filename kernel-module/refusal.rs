// SPDX-License-Identifier: GPL-2.0
//! Refusals: an errno and one line saying why, for the kernel log and for
//! userspace (copied into the request's `error` field).

use core::fmt::{
    self,
    Write, //
};

use kernel::prelude::*;

use crate::uapi::KMEND_ERR_MAX;

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
pub(crate) fn refuse(errno: Error, args: fmt::Arguments<'_>) -> Refusal {
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

/// A C string for a message (`?` if it is not UTF-8).
pub(crate) fn text(s: &CStr) -> &str {
    s.to_str().unwrap_or("?")
}
