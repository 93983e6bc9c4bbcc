// SPDX-License-Identifier: GPL-2.0
/*
 * Thin C helper: the one thing Rust-for-Linux has no way to do for an
 * out-of-tree module is EXPORT_SYMBOL_GPL. Patch modules call
 * kmend_register_patch() from their init; the logic is in patch.rs.
 */
#include <linux/export.h>
#include <linux/module.h>

struct kmend_patch;

int kmend_rust_register_patch(const struct kmend_patch *patch);
int kmend_register_patch(const struct kmend_patch *patch);

int kmend_register_patch(const struct kmend_patch *patch)
{
	return kmend_rust_register_patch(patch);
}
EXPORT_SYMBOL_GPL(kmend_register_patch);
