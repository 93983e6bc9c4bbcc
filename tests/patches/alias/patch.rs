// SPDX-License-Identifier: GPL-2.0
//! Replacement of the alias test patch (see patch.toml).

use kernel::ffi::{
    c_long,
    c_void, //
};

/// What `getpgrp()` returns while the patch is applied.
const PATCHED_PGRP: c_long = 4242;

/// Replacement for `__x64_sys_getpgrp()` (the syscall entry; the argument
/// is the unused `pt_regs` of a `SYSCALL_DEFINE0`).
#[no_mangle]
pub(crate) extern "C" fn kmend_alias_getpgrp(_regs: *const c_void) -> c_long {
    crate::kmend_traceable!();
    PATCHED_PGRP
}
