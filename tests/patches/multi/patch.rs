// SPDX-License-Identifier: GPL-2.0
//! Replacements of test patch 'kmend_multi' (three vmlinux functions switched as one).

include!("../seq_replacement.rs");

seq_replacement!(multi_cmdline_show, "multi-cmdline");
seq_replacement!(multi_version_show, "multi-version");
seq_replacement!(multi_loadavg_show, "multi-loadavg");
