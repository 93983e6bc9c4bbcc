// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_stack_b' (second of three stacked patches).

include!("../seq_replacement.rs");

seq_replacement!(stack_b_show, "stack-b");
