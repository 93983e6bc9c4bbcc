// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_cumulative' (cumulative patch superseding earlier ones).

include!("../seq_replacement.rs");

seq_replacement!(cumulative_show, "cumulative");
