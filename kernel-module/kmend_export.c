// SPDX-License-Identifier: GPL-2.0
/*
 * Thin C helpers, for the two things Rust-for-Linux has no way to do from an
 * out-of-tree module:
 *
 *  - EXPORT_SYMBOL_GPL: patch modules call kmend_register_patch() and
 *    kmend_unregister_patch() from their init/exit; the logic is in patch.rs.
 *  - for_each_process_thread() is a macro over the task lists, which bindgen
 *    cannot translate; kmend_helper_for_each_task() runs a Rust callback on
 *    every thread (transition.rs, under stop_machine).
 *  - init_utsname() is a static inline over a struct bindgen leaves opaque;
 *    kmend_helper_release() returns the release for the status text.
 *  - task_pid_nr() and get_task_comm() are inlines/macros: the task's id
 *    and name for the message that names a blocking task.
 *  - kmend_helper_task_switches(): a task's context-switch count and whether
 *    it is on a CPU (fields behind CONFIG_SMP and READ_ONCE), so the check
 *    under stop_machine can skip tasks that have not run since the pre-check.
 *  - A coming module's symbols are only reachable through its RCU-protected
 *    mod_kallsyms and the ELF_ST_* macros: kmend_helper_module_symbol() looks
 *    one function up, for patches applied when their target module loads,
 *    or one variable (a coming patch module's kmend_pinned_modules).
 *    kmend_helper_module_text() gives a module's core text, which a revert
 *    checks no thread is in before the module is released.
 *  - The per-CPU idle tasks are on no list a module can reach:
 *    kmend_helper_idle_tasks() reads kernel/smpboot.c's `idle_threads`,
 *    which the kernel does not export. kmend.ko names it by its livepatch
 *    name; `cargo xtask` links kmend.ko so that the module loader places
 *    it by name when kmend.ko loads (a livepatch relocation, the format the
 *    kernel's own livepatch modules use; xtask/src/diff_patch/klp_relocs.rs).
 *  - The kernel's reliable stack walker (arch_stack_walk_reliable) is not
 *    exported, and the exported stack_trace_save_tsk() drops __sched
 *    functions and hides unwinder errors: kmend_helper_stack_walk() walks
 *    a task with the exported ORC unwinder, whose state and accessors are
 *    inlines, and says when the walk cannot be trusted.
 *  - A fix built from a diff refers to internal symbols of the module it
 *    fixes by livepatch relocations in `.klp.rela.<module>.*` sections of
 *    the patch module (a `livepatch` module, whose ELF information the
 *    kernel keeps). The livepatch core applies such sections only for its
 *    own patches (klp_apply_object_relocs() and klp_clear_object_relocs()
 *    in klp_module_coming()/going()); kmend_helper_module_relocs() does the
 *    same for a kmend patch as its module comes and goes, with the kernel's
 *    klp_apply_section_relocs() and clear_relocate_add(), which are not
 *    exported: named by their livepatch names, like idle_threads.
 *  - The kernel's text poking is not exported: kmend_helper_map_writable()
 *    makes a writable alias of kmend's own trampoline table (vmap of its
 *    pages; PAGE_KERNEL is a macro over runtime masks), and
 *    kmend_helper_sync_core() is the inline sync_core(), which every CPU
 *    runs after a retargeting, before it may execute the new jumps.
 */
#include <linux/export.h>
#include <linux/kallsyms.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/rcupdate.h>
#include <linux/sched/signal.h>
#include <linux/sched/task_stack.h>
#include <linux/utsname.h>
#include <linux/vmalloc.h>
#include <asm/ptrace.h>
#include <asm/sync_core.h>
#include <asm/unwind.h>

struct kmend_patch;

int kmend_rust_register_patch(const struct kmend_patch *patch);
void kmend_rust_unregister_patch(const struct kmend_patch *patch);
int kmend_register_patch(const struct kmend_patch *patch);
void kmend_unregister_patch(const struct kmend_patch *patch);
int kmend_helper_for_each_task(int (*fn)(struct task_struct *, void *), void *data);
const char *kmend_helper_release(void);
pid_t kmend_helper_task_pid(struct task_struct *t);
void kmend_helper_task_comm(struct task_struct *t, char *buf);
const char *kmend_helper_module_name(struct module *mod);
unsigned long kmend_helper_task_switches(struct task_struct *t, bool *on_cpu);
unsigned long kmend_helper_module_symbol(struct module *mod, const char *name,
					 unsigned long sympos, unsigned char type, unsigned long *size);
void kmend_helper_module_text(struct module *mod, unsigned long *start, unsigned long *size);
int kmend_helper_stack_walk(struct task_struct *task, unsigned long *buf, unsigned int size);
unsigned int kmend_helper_idle_tasks(struct task_struct **out, unsigned int max);
bool kmend_helper_idle_tasks_placed(void);
void *kmend_helper_map_writable(unsigned long addr, size_t len);
void kmend_helper_unmap_writable(void *alias);
void kmend_helper_sync_core(void);
int kmend_helper_module_relocs(struct module *pmod, const char *objname, bool apply);

int kmend_register_patch(const struct kmend_patch *patch)
{
	return kmend_rust_register_patch(patch);
}
EXPORT_SYMBOL_GPL(kmend_register_patch);

void kmend_unregister_patch(const struct kmend_patch *patch)
{
	kmend_rust_unregister_patch(patch);
}
EXPORT_SYMBOL_GPL(kmend_unregister_patch);

/*
 * Stops at the first non-zero return of @fn and returns it. (A `break` in
 * for_each_process_thread() leaves only the inner loop, over one process's
 * threads: the walk would go on with the next process.)
 */
int kmend_helper_for_each_task(int (*fn)(struct task_struct *, void *), void *data)
{
	struct task_struct *g, *t;
	int ret = 0;

	rcu_read_lock();
	for_each_process_thread(g, t) {
		ret = fn(t, data);
		if (ret)
			goto out;
	}
out:
	rcu_read_unlock();
	return ret;
}

const char *kmend_helper_release(void)
{
	return init_utsname()->release;
}

pid_t kmend_helper_task_pid(struct task_struct *t)
{
	return task_pid_nr(t);
}

/* @buf has room for TASK_COMM_LEN bytes. */
void kmend_helper_task_comm(struct task_struct *t, char *buf)
{
	strscpy_pad(buf, t->comm, TASK_COMM_LEN);
}

const char *kmend_helper_module_name(struct module *mod)
{
	return mod->name;
}

/*
 * Address of the @sympos-th (1-based; 0: must be unique) function called
 * @name in @mod, its size in @size; 0 if there is no such single function.
 */
unsigned long kmend_helper_module_symbol(struct module *mod, const char *name,
					 unsigned long sympos, unsigned char type, unsigned long *size)
{
	struct mod_kallsyms *kallsyms;
	unsigned long addr = 0, count = 0;
	unsigned int i;

	rcu_read_lock();
	kallsyms = rcu_dereference(mod->kallsyms);
	for (i = 0; kallsyms && i < kallsyms->num_symtab; i++) {
		const Elf_Sym *sym = &kallsyms->symtab[i];

		if (sym->st_shndx == SHN_UNDEF || ELF_ST_TYPE(sym->st_info) != type)
			continue;
		if (strcmp(kallsyms->strtab + sym->st_name, name))
			continue;
		count++;
		if (count == sympos || (sympos == 0 && count == 1)) {
			addr = sym->st_value;
			*size = sym->st_size;
		}
	}
	rcu_read_unlock();
	if (sympos == 0 && count > 1)
		return 0;
	return addr;
}

unsigned long kmend_helper_task_switches(struct task_struct *t, bool *on_cpu)
{
	*on_cpu = READ_ONCE(t->on_cpu);
	return READ_ONCE(t->nvcsw) + READ_ONCE(t->nivcsw);
}

void kmend_helper_module_text(struct module *mod, unsigned long *start, unsigned long *size)
{
	*start = (unsigned long)mod->mem[MOD_TEXT].base;
	*size = mod->mem[MOD_TEXT].size;
}

/*
 * Saves @task's kernel return addresses (and the interrupted address of
 * every interrupt frame on the way) into @buf, like the kernel's reliable
 * walker: the walk must end at the user-mode registers or the end of a
 * kthread's stack, with no unwinder error and no address outside kernel
 * text. Returns the number of entries; -EINVAL if the walk is not
 * reliable; -ENOSPC if @buf filled up before the end; -ESRCH if the task
 * has no stack any more (it has exited).
 *
 * @task must not change stacks under the walk: it is current, or it is
 * off-CPU (the caller checks, or the machine is stopped), and alive (the
 * task list's RCU, or a reference). Task stacks are freed after an RCU
 * grace period, so under the RCU read lock taken here a stack seen here
 * stays readable for the walk without a reference on it (put_task_stack()
 * is not exported).
 */
int kmend_helper_stack_walk(struct task_struct *task, unsigned long *buf, unsigned int size)
{
	struct unwind_state state;
	struct pt_regs *regs;
	unsigned long addr;
	unsigned int n = 0;
	int ret = 0;

	rcu_read_lock();
	if (!refcount_read(&task->stack_refcount) || !task_stack_page(task)) {
		rcu_read_unlock();
		return -ESRCH;
	}
	for (unwind_start(&state, task, NULL, NULL);
	     !unwind_done(&state) && !unwind_error(&state);
	     unwind_next_frame(&state)) {
		regs = unwind_get_entry_regs(&state, NULL);
		if (regs && user_mode(regs))
			break;
		addr = unwind_get_return_address(&state);
		if (!addr) {
			ret = -EINVAL;
			break;
		}
		if (n == size) {
			ret = -ENOSPC;
			break;
		}
		buf[n++] = addr;
	}
	if (!ret && unwind_error(&state))
		ret = -EINVAL;
	rcu_read_unlock();
	return ret ? ret : n;
}

/* @addr and @len lie in module text; at most two pages. */
void *kmend_helper_map_writable(unsigned long addr, size_t len)
{
	unsigned long first = addr & PAGE_MASK;
	unsigned int count = DIV_ROUND_UP(addr + len - first, PAGE_SIZE);
	struct page *pages[2];
	unsigned int i;
	void *alias;

	if (!len || count > ARRAY_SIZE(pages))
		return NULL;
	for (i = 0; i < count; i++) {
		pages[i] = vmalloc_to_page((void *)(first + i * PAGE_SIZE));
		if (!pages[i])
			return NULL;
	}
	alias = vmap(pages, count, VM_MAP, PAGE_KERNEL);
	return alias ? alias + (addr - first) : NULL;
}

void kmend_helper_unmap_writable(void *alias)
{
	vunmap((void *)((unsigned long)alias & PAGE_MASK));
}

void kmend_helper_sync_core(void)
{
	sync_core();
}

/*
 * kernel/smpboot.c's `static DEFINE_PER_CPU(struct task_struct *,
 * idle_threads)`: the idle task of every CPU. Weak, so that modpost does
 * not refuse a name it cannot see; the module loader places it (see the
 * comment at the top). Its address is that of a per-CPU variable, which
 * per_cpu_offset() moves to each CPU's copy.
 */
extern struct task_struct *kmend_idle_threads
	__asm__("\".klp.sym.vmlinux.idle_threads,0\"") __attribute__((weak));

/* Whether the loader placed `idle_threads` (kmend.ko was linked by xtask). */
bool kmend_helper_idle_tasks_placed(void)
{
	return &kmend_idle_threads != NULL;
}

/*
 * The idle task of every online CPU, into @out (at most @max); returns how
 * many. Call with the online CPUs fixed (under stop_machine). Idle tasks
 * never exit: no reference is taken.
 */
unsigned int kmend_helper_idle_tasks(struct task_struct **out, unsigned int max)
{
	unsigned long base = (unsigned long)&kmend_idle_threads;
	unsigned int cpu, n = 0;

	if (!base)
		return 0;
	for_each_online_cpu(cpu) {
		if (n == max)
			break;
		out[n++] = *(struct task_struct **)(base + per_cpu_offset(cpu));
	}
	return n;
}

/* Not exported; placed when kmend.ko loads (see idle_threads above). */
extern int kmend_klp_apply_section_relocs(struct module *pmod, Elf_Shdr *sechdrs,
					  const char *shstrtab, const char *strtab,
					  unsigned int symndx, unsigned int secndx,
					  const char *objname)
	__asm__("\".klp.sym.vmlinux.klp_apply_section_relocs,0\"") __attribute__((weak));
extern void kmend_clear_relocate_add(Elf_Shdr *sechdrs, const char *strtab,
				     unsigned int symindex, unsigned int relsec,
				     struct module *me)
	__asm__("\".klp.sym.vmlinux.clear_relocate_add,0\"") __attribute__((weak));

/* Whether section @i of @info holds livepatch relocations for @objname. */
static bool kmend_relocs_for(const struct klp_modinfo *info, unsigned int i,
			     const char *objname)
{
	const char *name = info->secstrings + info->sechdrs[i].sh_name;
	size_t prefix = strlen(".klp.rela."), len = strlen(objname);

	return (info->sechdrs[i].sh_flags & SHF_RELA_LIVEPATCH) &&
	       !strncmp(name, ".klp.rela.", prefix) &&
	       !strncmp(name + prefix, objname, len) && name[prefix + len] == '.';
}

/*
 * Applies (@apply) or clears the livepatch relocations of patch module @pmod
 * for module @objname: resolved by name and position in @objname as it is
 * loaded now. Call with @objname loaded (coming or live), and clear before
 * it is freed. A failed apply clears the sections it applied. -ENOEXEC if
 * @pmod is not a livepatch module or kmend.ko was not linked by xtask.
 */
int kmend_helper_module_relocs(struct module *pmod, const char *objname, bool apply)
{
	struct klp_modinfo *info = pmod->klp_info;
	const char *strtab = pmod->core_kallsyms.strtab;
	unsigned int i, j;
	int ret = 0;

	if (!info || !kmend_klp_apply_section_relocs || !kmend_clear_relocate_add)
		return -ENOEXEC;
	for (i = 1; i < info->hdr.e_shnum; i++) {
		if (!kmend_relocs_for(info, i, objname))
			continue;
		if (!apply) {
			kmend_clear_relocate_add(info->sechdrs, strtab, info->symndx, i, pmod);
			continue;
		}
		ret = kmend_klp_apply_section_relocs(pmod, info->sechdrs, info->secstrings,
						     strtab, info->symndx, i, objname);
		if (ret)
			break;
	}
	if (ret) {
		for (j = 1; j < i; j++)
			if (kmend_relocs_for(info, j, objname))
				kmend_clear_relocate_add(info->sechdrs, strtab, info->symndx, j, pmod);
	}
	return ret;
}
