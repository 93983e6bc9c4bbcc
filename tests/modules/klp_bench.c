// SPDX-License-Identifier: GPL-2.0
/*
 * klp_bench: the kernel's own livepatch on the benchmark target, for
 * `cargo xtask bench` to compare with kmend on the same function.
 */
#include <linux/livepatch.h>
#include <linux/module.h>

static int klp_bench_target(int x)
{
	return x + 2;
}

static struct klp_func funcs[] = {
	{ .old_name = "kmend_bench_target", .new_func = klp_bench_target, },
	{ }
};

static struct klp_object objs[] = {
	{ .name = "kmend_testmod", .funcs = funcs, },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init klp_bench_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit klp_bench_exit(void)
{
}

module_init(klp_bench_init);
module_exit(klp_bench_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("livepatch of kmend_bench_target, for comparison");
