// SPDX-License-Identifier: GPL-2.0
//! Test patch 'kmend_foreign': names a core-kernel function as its
//! replacement, which kmend.ko must refuse.

pub(crate) use kernel::bindings::seq_printf as foreign_replacement;
