// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_stack_c' (third of three stacked patches).

include!("../seq_replacement.rs");

seq_replacement!(stack_c_show, "stack-c");
