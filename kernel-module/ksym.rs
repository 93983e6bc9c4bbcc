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

/// The module of a symbol as `sprint_symbol` prints it
/// (`name+0x0/0x40 [module]`); `None` for the core kernel.
pub(crate) fn symbol_module(sym: &str) -> Option<&[u8]> {
    let (_, module) = sym.rsplit_once(" [")?;
    Some(module.strip_suffix(']')?.as_bytes())
}

/// Parses `name+0x0/0x<size>[ [module]]` and checks it names `name` in
/// `object`; returns the function's size.
pub(crate) fn check_symbol(sym: &str, name: &str, object: &str) -> Option<usize> {
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
