// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_hammer' (switched 200 times under load).

include!("../seq_replacement.rs");

seq_replacement!(hammer_show, "patched");
