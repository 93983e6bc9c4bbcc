// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_stack_a' (first of three stacked patches).

include!("../seq_replacement.rs");

seq_replacement!(stack_a_show, "stack-a");
