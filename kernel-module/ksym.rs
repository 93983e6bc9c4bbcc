// SPDX-License-Identifier: GPL-2.0
//! Kernel symbol names for addresses, for status and log lines.
//!
//! C header: [`include/linux/kallsyms.h`](srctree/include/linux/kallsyms.h).

use core::fmt;

use kernel::bindings;

/// Room for `name+0xoff/0xsize [module]` (KSYM_SYMBOL_LEN is below this).
const SYMBOL_BUF: usize = 640;

/// `sprint_symbol()` of an address, e.g. `foo+0x0/0x40 [bar]`.
pub(crate) struct Symbol {
    buf: [u8; SYMBOL_BUF],
    len: usize,
}

impl Symbol {
    /// Looks up `addr` in kallsyms.
    pub(crate) fn of(addr: usize) -> Self {
        let mut buf = [0u8; SYMBOL_BUF];
        // SAFETY: `buf` is larger than KSYM_SYMBOL_LEN, the most
        // `sprint_symbol` writes (including the NUL).
        let len = unsafe { bindings::sprint_symbol(buf.as_mut_ptr().cast(), addr as _) };
        let len = usize::try_from(len).unwrap_or(0).min(SYMBOL_BUF);
        Self { buf, len }
    }

    /// The text, or `?` if kallsyms returned something that is not UTF-8.
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
