// SPDX-License-Identifier: GPL-2.0
/*
 * kmend_testmod: functions for the VM suite and the benchmark to patch.
 *
 *  /proc/kmend_testmod        prints what kmend_testmod_show() prints
 *  /proc/kmend_testmod_hold   write 1: the "kmend-sleeper" kthread stays
 *                             inside kmend_testmod_sleepy(); write 2: it
 *                             sleeps DEEP_FRAMES calls below
 *                             kmend_testmod_deep(); write 3: it sleeps in
 *                             usleep_range_state(), a vmlinux __sched
 *                             function; write 0: it leaves
 *  /proc/kmend_testmod_wait   read: sleeps interruptibly in
 *                             kmend_testmod_wait_here() until released,
 *                             then reads "old" (what that function
 *                             returned: 1 old, 2 a replacement); write 1:
 *                             release the readers, 0: the next ones wait
 *  /proc/kmend_bench          write N: call kmend_bench_target() N times;
 *                             write "hop N": call kmend_bench_hop() N times
 *                             (the floor of any redirection, see there);
 *                             read: nanoseconds the last run took
 *  kmend_bench_f0..f9         ten small functions for a 10-function patch
 *  /proc/kmend_stop           write N: run N empty stop_machine calls on every
 *                             online CPU; read: nanoseconds they took (the
 *                             benchmark's floor for kmend's pause)
 *  /proc/kmend_peek           write "<hex address> <length>", then read:
 *                             that much live kernel memory, in hex (up to
 *                             PEEK_MAX bytes; "fault" if unmapped), so the
 *                             suite can disassemble what kmend wrote
 *  /proc/kmend_unwind_at      write "<hex address>": a kprobe there walks,
 *                             from the registers it interrupted, the stack
 *                             of every task it stops (as kmend's check
 *                             walks a task preempted there); write "0":
 *                             remove it; read: "<walks> <reliable>
 *                             <unreliable> <frames of the last walk>"
 */
#include <linux/delay.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/stop_machine.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>
#include <asm/unwind.h>

int kmend_testmod_show(struct seq_file *m, void *v);
void kmend_testmod_sleepy(void);
int kmend_testmod_wait_here(void);
int kmend_bench_target(int x);

noinline int kmend_testmod_show(struct seq_file *m, void *v)
{
	seq_puts(m, "original\n");
	return 0;
}

static atomic_t hold = ATOMIC_INIT(0);
static struct task_struct *sleeper;

noinline void kmend_testmod_sleepy(void)
{
	while (atomic_read(&hold) == 1 && !kthread_should_stop())
		msleep(20);
}

/* More frames than a stack walk with a small fixed buffer sees. */
#define DEEP_FRAMES 80

static noinline int deep_recurse(int n)
{
	/* Read after the call: keeps the compiler from making this a loop. */
	volatile int depth = n;
	int below;

	if (n == 0) {
		while (atomic_read(&hold) == 2 && !kthread_should_stop())
			msleep(20);
		return 0;
	}
	below = deep_recurse(n - 1);
	return below + depth;
}

static int deep_result;

void kmend_testmod_deep(void);
noinline void kmend_testmod_deep(void)
{
	/* Not a tail call: this function's frame stays below the recursion. */
	WRITE_ONCE(deep_result, deep_recurse(DEEP_FRAMES));
}

static int sleeper_fn(void *data)
{
	while (!kthread_should_stop()) {
		if (atomic_read(&hold) == 2)
			kmend_testmod_deep();
		else if (atomic_read(&hold) == 3)
			/*
			 * Long sleeps: the thread is outside usleep_range_state()
			 * only between two of them, and a switch that catches it
			 * there is allowed (the test needs it to be inside).
			 */
			while (atomic_read(&hold) == 3 && !kthread_should_stop())
				usleep_range(1000000, 1000000);
		else
			kmend_testmod_sleepy();
		msleep(20);
	}
	return 0;
}

noinline int kmend_bench_target(int x)
{
	return x + 1;
}

/*
 * The floor of any redirection, for the benchmark: kmend_bench_hop() is
 * called like kmend_bench_target() and goes on with one direct jump (a
 * tail call) to kmend_bench_far(), which lies in a page of its own, as a
 * patched call's ftrace site jumps to the replacement in its patch module.
 */
int kmend_bench_far(int x);
int kmend_bench_hop(int x);

noinline __section(".text.kmend_far") __aligned(4096) int kmend_bench_far(int x)
{
	return x + 1;
}

noinline int kmend_bench_hop(int x)
{
	return kmend_bench_far(x);
}

#define BENCH_F(n) \
	int kmend_bench_f##n(int x); \
	noinline int kmend_bench_f##n(int x) { return x + n; }
BENCH_F(0) BENCH_F(1) BENCH_F(2) BENCH_F(3) BENCH_F(4)
BENCH_F(5) BENCH_F(6) BENCH_F(7) BENCH_F(8) BENCH_F(9)

static u64 bench_ns;

static int show(struct seq_file *m, void *v)
{
	return kmend_testmod_show(m, v);
}

static int show_open(struct inode *inode, struct file *file)
{
	return single_open(file, show, NULL);
}

static const struct proc_ops show_ops = {
	.proc_open = show_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

static DECLARE_WAIT_QUEUE_HEAD(wait_queue);
static atomic_t wait_released = ATOMIC_INIT(0);

/*
 * Where a user thread sleeps, interruptibly, for the parking test. noipa:
 * without it GCC sees that this returns only 1 or an error and folds the
 * caller's choice of text to "old", so a replacement returning 2 would be
 * ignored (interprocedural value ranges: a live-patching hazard).
 */
noinline __attribute__((__noipa__)) int kmend_testmod_wait_here(void)
{
	if (wait_event_interruptible(wait_queue, atomic_read(&wait_released)))
		return -ERESTARTSYS;
	return 1;
}

static ssize_t wait_read(struct file *f, char __user *buf, size_t len, loff_t *off)
{
	int ret;

	if (*off)
		return 0;
	ret = kmend_testmod_wait_here();
	if (ret < 0)
		return ret;
	return simple_read_from_buffer(buf, len, off, ret == 1 ? "old\n" : "new\n", 4);
}

static ssize_t wait_write(struct file *f, const char __user *buf, size_t len, loff_t *off)
{
	int v;
	int err = kstrtoint_from_user(buf, len, 10, &v);

	if (err)
		return err;
	if (v < 0 || v > 1)
		return -EINVAL;
	atomic_set(&wait_released, v);
	if (v)
		wake_up_all(&wait_queue);
	return len;
}

static const struct proc_ops wait_ops = {
	.proc_read = wait_read,
	.proc_write = wait_write,
};

static ssize_t hold_write(struct file *f, const char __user *buf, size_t len, loff_t *off)
{
	int v;
	int err = kstrtoint_from_user(buf, len, 10, &v);

	if (err)
		return err;
	if (v < 0 || v > 3)
		return -EINVAL;
	atomic_set(&hold, v);
	return len;
}

static const struct proc_ops hold_ops = {
	.proc_write = hold_write,
};

static ssize_t bench_write(struct file *f, const char __user *ubuf, size_t len, loff_t *off)
{
	char buf[24];
	unsigned int n, i;
	int acc = 0;
	bool hop;
	u64 t0;
	int err;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	hop = str_has_prefix(buf, "hop ");
	err = kstrtouint(buf + (hop ? 4 : 0), 10, &n);
	if (err)
		return err;
	t0 = ktime_get_ns();
	/* Two loops, so that each makes a direct call, as real callers do. */
	if (hop)
		for (i = 0; i < n; i++)
			acc = kmend_bench_hop(acc);
	else
		for (i = 0; i < n; i++)
			acc = kmend_bench_target(acc);
	bench_ns = ktime_get_ns() - t0;
	if (acc != (int)n && acc != 2 * (int)n)
		pr_info("kmend_testmod: bench result %d for %u calls\n", acc, n);
	return len;
}

static int bench_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%llu\n", bench_ns);
	return 0;
}

static int bench_open(struct inode *inode, struct file *file)
{
	return single_open(file, bench_show, NULL);
}

static const struct proc_ops bench_ops = {
	.proc_open = bench_open,
	.proc_read = seq_read,
	.proc_write = bench_write,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

static u64 stop_ns;

static int stop_nothing(void *data)
{
	return 0;
}

static ssize_t stop_write(struct file *f, const char __user *buf, size_t len, loff_t *off)
{
	unsigned int n, i;
	u64 t0;
	int err = kstrtouint_from_user(buf, len, 10, &n);

	if (err)
		return err;
	if (n == 0 || n > 1000)
		return -EINVAL;
	t0 = ktime_get_ns();
	for (i = 0; i < n; i++) {
		err = stop_machine(stop_nothing, NULL, cpu_online_mask);
		if (err)
			return err;
	}
	stop_ns = ktime_get_ns() - t0;
	return len;
}

static int stop_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%llu\n", stop_ns);
	return 0;
}

static int stop_open(struct inode *inode, struct file *file)
{
	return single_open(file, stop_show, NULL);
}

static const struct proc_ops stop_ops = {
	.proc_open = stop_open,
	.proc_read = seq_read,
	.proc_write = stop_write,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

#define PEEK_MAX 4096

static DEFINE_MUTEX(peek_lock);
static unsigned long peek_addr;
static size_t peek_len;

static ssize_t peek_write(struct file *f, const char __user *ubuf, size_t len, loff_t *off)
{
	char buf[64];
	unsigned long addr;
	size_t n;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	if (sscanf(buf, "%lx %zu", &addr, &n) != 2 || n == 0 || n > PEEK_MAX)
		return -EINVAL;
	mutex_lock(&peek_lock);
	peek_addr = addr;
	peek_len = n;
	mutex_unlock(&peek_lock);
	return len;
}

static int peek_show(struct seq_file *m, void *v)
{
	u8 *bytes;
	size_t i;

	bytes = kmalloc(PEEK_MAX, GFP_KERNEL);
	if (!bytes)
		return -ENOMEM;
	mutex_lock(&peek_lock);
	if (!peek_len || copy_from_kernel_nofault(bytes, (void *)peek_addr, peek_len)) {
		seq_puts(m, "fault\n");
	} else {
		for (i = 0; i < peek_len; i++)
			seq_printf(m, "%02x", bytes[i]);
		seq_putc(m, '\n');
	}
	mutex_unlock(&peek_lock);
	kfree(bytes);
	return 0;
}

static int peek_open(struct inode *inode, struct file *file)
{
	return single_open_size(file, peek_show, NULL, 2 * PEEK_MAX + 16);
}

static const struct proc_ops peek_ops = {
	.proc_open = peek_open,
	.proc_read = seq_read,
	.proc_write = peek_write,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

static DEFINE_MUTEX(unwind_lock);
static struct kprobe unwind_probe;
static bool unwind_armed;
static atomic_t unwind_walks, unwind_reliable, unwind_unreliable, unwind_frames;

/*
 * Walks the interrupted task's stack from the registers the kprobe's
 * breakpoint saved, with the reliability rules of kmend's check
 * (kmend_helper_stack_walk): the walk must end at the user-mode registers
 * with no unwinder error and no address outside kernel text.
 */
static int unwind_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct unwind_state state;
	struct pt_regs *r;
	bool reliable = true;
	int frames = 0;

	for (unwind_start(&state, current, regs, NULL);
	     !unwind_done(&state) && !unwind_error(&state);
	     unwind_next_frame(&state)) {
		r = unwind_get_entry_regs(&state, NULL);
		if (r && user_mode(r))
			break;
		if (!unwind_get_return_address(&state)) {
			reliable = false;
			break;
		}
		frames++;
	}
	if (unwind_error(&state))
		reliable = false;
	atomic_inc(&unwind_walks);
	atomic_inc(reliable ? &unwind_reliable : &unwind_unreliable);
	atomic_set(&unwind_frames, frames);
	return 0;
}

static void unwind_disarm(void)
{
	if (unwind_armed)
		unregister_kprobe(&unwind_probe);
	unwind_armed = false;
}

static ssize_t unwind_write(struct file *f, const char __user *ubuf, size_t len, loff_t *off)
{
	char buf[32];
	unsigned long addr;
	int ret = 0;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	if (kstrtoul(strim(buf), 16, &addr))
		return -EINVAL;
	mutex_lock(&unwind_lock);
	unwind_disarm();
	if (addr) {
		memset(&unwind_probe, 0, sizeof(unwind_probe));
		unwind_probe.addr = (kprobe_opcode_t *)addr;
		unwind_probe.pre_handler = unwind_pre;
		atomic_set(&unwind_walks, 0);
		atomic_set(&unwind_reliable, 0);
		atomic_set(&unwind_unreliable, 0);
		atomic_set(&unwind_frames, 0);
		ret = register_kprobe(&unwind_probe);
		unwind_armed = !ret;
	}
	mutex_unlock(&unwind_lock);
	return ret ? ret : len;
}

static int unwind_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%d %d %d %d\n", atomic_read(&unwind_walks), atomic_read(&unwind_reliable),
		   atomic_read(&unwind_unreliable), atomic_read(&unwind_frames));
	return 0;
}

static int unwind_open(struct inode *inode, struct file *file)
{
	return single_open(file, unwind_show, NULL);
}

static const struct proc_ops unwind_ops = {
	.proc_open = unwind_open,
	.proc_read = seq_read,
	.proc_write = unwind_write,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

static int __init kmend_testmod_init(void)
{
	if (!proc_create("kmend_testmod", 0444, NULL, &show_ops) ||
	    !proc_create("kmend_testmod_hold", 0200, NULL, &hold_ops) ||
	    !proc_create("kmend_testmod_wait", 0600, NULL, &wait_ops) ||
	    !proc_create("kmend_bench", 0600, NULL, &bench_ops) ||
	    !proc_create("kmend_peek", 0600, NULL, &peek_ops) ||
	    !proc_create("kmend_unwind_at", 0600, NULL, &unwind_ops) ||
	    !proc_create("kmend_stop", 0600, NULL, &stop_ops))
		goto fail;
	sleeper = kthread_run(sleeper_fn, NULL, "kmend-sleeper");
	if (IS_ERR(sleeper))
		goto fail;
	return 0;
fail:
	remove_proc_entry("kmend_unwind_at", NULL);
	remove_proc_entry("kmend_stop", NULL);
	remove_proc_entry("kmend_peek", NULL);
	remove_proc_entry("kmend_bench", NULL);
	remove_proc_entry("kmend_testmod_wait", NULL);
	remove_proc_entry("kmend_testmod_hold", NULL);
	remove_proc_entry("kmend_testmod", NULL);
	return -ENOMEM;
}

static void __exit kmend_testmod_exit(void)
{
	atomic_set(&hold, 0);
	kthread_stop(sleeper);
	/* Readers still asleep go; removing the entry waits for them. */
	atomic_set(&wait_released, 1);
	wake_up_all(&wait_queue);
	remove_proc_entry("kmend_unwind_at", NULL);
	mutex_lock(&unwind_lock);
	unwind_disarm();
	mutex_unlock(&unwind_lock);
	remove_proc_entry("kmend_stop", NULL);
	remove_proc_entry("kmend_peek", NULL);
	remove_proc_entry("kmend_bench", NULL);
	remove_proc_entry("kmend_testmod_wait", NULL);
	remove_proc_entry("kmend_testmod_hold", NULL);
	remove_proc_entry("kmend_testmod", NULL);
}

module_init(kmend_testmod_init);
module_exit(kmend_testmod_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmend test fixture: patch targets, a sleeping kthread, a benchmark loop");
