/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Thin assembly helper: the table of kmend's 256 trampolines.
 *
 * In assembly rather than Rust's global_asm! because the annotations objtool
 * needs (UNWIND_HINT_FUNC, ANNOTATE_NOENDBR) are preprocessor macros of the
 * kernel's asm headers, which global_asm! cannot include. trampoline.rs owns
 * the table: its layout, reading and retargeting it.
 *
 * Each redirected function owns one entry, one direct `jmp rel32` to where
 * calls go now: a replacement, or the original body after the ftrace site.
 * Its ftrace site jumps to the entry while a switch may rewrite it, and
 * straight to the replacement between switches (redirect.rs). Nothing on this path is an
 * indirect branch, so it needs no ENDBR at its targets (kernel IBT), no
 * retpoline thunk and no CFI hash. Switching rewrites the rel32 under
 * stop_machine (transition.rs).
 *
 * Layout of entry i, 16 bytes at kmend_trampolines + 16 * i:
 *   +0   int3 int3           padding
 *   +2   nop                 the entry, where the ftrace site jumps: it must
 *                            be even (ftrace marks "jmp, don't call" in bit
 *                            0 of a direct address)
 *   +3   e9 <rel32>          jmp rel32; the rel32 at +4 is 4-byte aligned,
 *                            so one aligned store retargets the entry
 *   +8   int3 x 8            padding (speculation stops here)
 *
 * An entry is entered exactly as the function it stands for (the return
 * address on top of the stack, nothing pushed): UNWIND_HINT_FUNC, so a
 * task interrupted on the jmp is still unwound, and the stack check sees
 * its whole stack.
 */
#include <linux/linkage.h>
#include <linux/objtool.h>
#include <asm/unwind_hints.h>

	.section .text.kmend_trampolines, "ax"
	.balign 16
SYM_CODE_START(kmend_trampolines)
	ANNOTATE_NOENDBR
	.rept 256
	int3
	int3
	UNWIND_HINT_FUNC
	nop
	/* jmp rel32, encoded by hand so the assembler cannot shorten it. */
	.byte 0xe9
	.long kmend_trampoline_unused - (. + 4)
	.fill 8, 1, 0xcc
	.endr
SYM_CODE_END(kmend_trampolines)

/*
 * The table's address, for trampoline.rs: a data reference to the symbol
 * itself (annotated NOENDBR above) rather than code computing addresses
 * inside it, which objtool would flag as references to code without ENDBR.
 */
	.pushsection .rodata
	.balign 8
SYM_DATA(kmend_trampoline_table, .quad kmend_trampolines)
	.popsection

/* Where a trampoline that no site uses points: nothing may get here. */
SYM_CODE_START_LOCAL(kmend_trampoline_unused)
	ANNOTATE_NOENDBR
	UNWIND_HINT_FUNC
	ud2
SYM_CODE_END(kmend_trampoline_unused)
