// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_modtarget' (applied before its target module loads).

include!("../seq_replacement.rs");

seq_replacement!(modtarget_show, "modtarget");
