// SPDX-License-Identifier: GPL-2.0
/*
 * vigil test fixture: a kernel module that plays a syscall-table rootkit.
 *
 * On load it overwrites one entry of sys_call_table (nr=N) with the address of the kernel
 * symbol target=NAME, remembering the old entry; on unload it writes the old entry back. It
 * exists so vigil's introspection tests can make a real guest kernel show the change a
 * rootkit makes (see guest/README.md). It does nothing unless root loads it with insmod.
 *
 * sys_call_table is not exported; kallsyms_lookup_name is not either (since 5.7), so its
 * address comes from a kprobe registered on it (registering resolves the symbol) and removed
 * at once. The table is read-only data: the single write happens with CR0.WP cleared, with
 * interrupts off on this CPU, and CR0 is restored right after. native_write_cr0 would put WP
 * back (CR pinning), so CR0 is written with inline asm.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/irqflags.h>
#include <linux/string.h>
#include <asm/processor-flags.h>
#include <asm/unistd.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vigil test fixture: writes one sys_call_table entry, restores it on unload");

static int nr = -1;
module_param(nr, int, 0444);
MODULE_PARM_DESC(nr, "system call number whose table entry is replaced");

static char target[128];
module_param_string(target, target, sizeof(target), 0444);
MODULE_PARM_DESC(target, "kernel symbol the entry will point at, e.g. __x64_sys_getpid");

static unsigned long *table;
static unsigned long saved;

typedef unsigned long (*lookup_fn)(const char *name);

static lookup_fn find_lookup(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	lookup_fn fn;

	if (register_kprobe(&kp) < 0)
		return NULL;
	fn = (lookup_fn)kp.addr;
	unregister_kprobe(&kp);
	return fn;
}

static inline unsigned long read_cr0_raw(void)
{
	unsigned long v;

	asm volatile("mov %%cr0, %0" : "=r"(v));
	return v;
}

static inline void write_cr0_raw(unsigned long v)
{
	asm volatile("mov %0, %%cr0" : : "r"(v) : "memory");
}

static void write_entry(unsigned long *slot, unsigned long value)
{
	unsigned long flags, cr0;

	local_irq_save(flags);
	cr0 = read_cr0_raw();
	write_cr0_raw(cr0 & ~X86_CR0_WP);
	WRITE_ONCE(*slot, value);
	write_cr0_raw(cr0);
	local_irq_restore(flags);
}

static int __init vigil_sct_init(void)
{
	lookup_fn lookup;
	unsigned long addr;

	if (nr < 0 || nr >= NR_syscalls) {
		pr_err("vigil_sct: nr=%d: give a system call number from 0 to %d\n", nr, NR_syscalls - 1);
		return -EINVAL;
	}
	if (!target[0]) {
		pr_err("vigil_sct: target= is missing: give a kernel symbol name\n");
		return -EINVAL;
	}
	lookup = find_lookup();
	if (!lookup) {
		pr_err("vigil_sct: cannot resolve kallsyms_lookup_name\n");
		return -ENOENT;
	}
	table = (unsigned long *)lookup("sys_call_table");
	if (!table) {
		pr_err("vigil_sct: cannot resolve sys_call_table\n");
		return -ENOENT;
	}
	addr = lookup(target);
	if (!addr) {
		pr_err("vigil_sct: target=%s: no such kernel symbol\n", target);
		return -ENOENT;
	}
	saved = READ_ONCE(table[nr]);
	write_entry(&table[nr], addr);
	pr_info("vigil_sct: sys_call_table[%d] %px -> %px (%s)\n", nr, (void *)saved, (void *)addr, target);
	return 0;
}

static void __exit vigil_sct_exit(void)
{
	write_entry(&table[nr], saved);
	pr_info("vigil_sct: sys_call_table[%d] restored to %px\n", nr, (void *)saved);
}

module_init(vigil_sct_init);
module_exit(vigil_sct_exit);
