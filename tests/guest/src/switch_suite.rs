//! The sound switch (issue #8): what the patched path is made of, whole and
//! reliable stack checks, and module targets that come and go.

use std::{
    ffi::CString,
    fs,
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc,
        atomic::{
            AtomicBool,
            Ordering, //
        },
    },
    thread,
    time::Duration, //
};

use iced_x86::{
    Decoder,
    DecoderOptions,
    FlowControl,
    Instruction,
    Mnemonic, //
};
use kmend::{
    artifact::Artifact,
    sys::transition,
};

use crate::harness::{
    MODULE_DIR,
    Test,
    TestResult,
    apply,
    check,
    hold,
    insmod,
    kmend,
    module_loaded,
    read,
    revert,
    rmmod,
    verify_then_revert,
    with_testmod, //
};

const CONTROL: &str = "/dev/kmend";
const TESTMOD: &str = "/proc/kmend_testmod";

pub fn tests() -> Vec<Test> {
    vec![
        Test { name: "patched_path_has_no_indirect_branch", run: patched_path_has_no_indirect_branch },
        Test { name: "sched_sleeper_blocks_until_it_leaves", run: sched_sleeper_blocks_until_it_leaves },
        Test { name: "idle_tasks_of_busy_cpus_are_checked", run: idle_tasks_of_busy_cpus_are_checked },
        Test { name: "idle_path_function_reverted_and_its_module_removed", run: idle_path_function_reverted_and_its_module_removed },
        Test { name: "task_interrupted_on_a_trampoline_is_walked_whole", run: task_interrupted_on_a_trampoline_is_walked_whole },
        Test { name: "user_thread_asleep_in_the_target_is_parked", run: user_thread_asleep_in_the_target_is_parked },
        Test { name: "module_load_refused_leaves_nothing_redirected", run: module_load_refused_leaves_nothing_redirected },
        Test { name: "apply_racing_rmmod_of_its_target", run: apply_racing_rmmod_of_its_target },
        Test { name: "pending_patches_stack_in_enable_order", run: pending_patches_stack_in_enable_order },
        Test { name: "retrying_apply_does_not_hold_up_others", run: retrying_apply_does_not_hold_up_others },
        Test { name: "revert_waits_for_threads_anywhere_in_the_patch_module", run: revert_waits_for_threads_anywhere_in_the_patch_module },
        Test { name: "kprobe_on_a_patched_function_both_orders", run: kprobe_on_a_patched_function_both_orders },
        Test { name: "livepatch_and_kmend_refuse_each_other_cleanly", run: livepatch_and_kmend_refuse_each_other_cleanly },
    ]
}


/// Address of function `name` in `module` (`None`: vmlinux), from /proc/kallsyms.
fn symbol(name: &str, module: Option<&str>) -> Result<u64, String> {
    let kallsyms = read("/proc/kallsyms")?;
    let want = module.map(|m| format!("[{m}]"));
    kallsyms
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            let (addr, _kind, sym, owner) = (it.next()?, it.next()?, it.next()?, it.next());
            (sym == name && owner == want.as_deref()).then(|| u64::from_str_radix(addr, 16).ok()).flatten()
        })
        .filter(|&a| a != 0)
        .ok_or_else(|| format!("{name} ({}) not in /proc/kallsyms", module.unwrap_or("vmlinux")))
}

/// Live kernel memory, read by the test module (`/proc/kmend_peek`).
fn peek(addr: u64, len: usize) -> Result<Vec<u8>, String> {
    fs::write("/proc/kmend_peek", format!("{addr:x} {len}")).map_err(|e| format!("peek {addr:#x}: {e}"))?;
    let hex = read("/proc/kmend_peek")?;
    let hex = hex.trim();
    if hex == "fault" {
        return Err(format!("peek {addr:#x}: not mapped"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("peek: {e}")))
        .collect()
}

/// Decodes the instructions of `bytes` at `addr`.
fn decode(addr: u64, bytes: &[u8]) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE);
    decoder.iter().collect()
}

/// An instruction for a message (the decoder has no formatter built in).
fn show(insn: &Instruction) -> String {
    format!("{:?}, {} bytes", insn.code(), insn.len())
}

/// Where the ftrace site of `func` jumps, failing on anything but a direct jump.
fn site_target(func: u64) -> Result<u64, String> {
    let head = decode(func, &peek(func, 16)?);
    let site = head
        .iter()
        .find(|i| i.mnemonic() != Mnemonic::Endbr64)
        .ok_or_else(|| format!("{func:#x}: nothing to decode"))?;
    check(site.mnemonic() == Mnemonic::Jmp && site.flow_control() == FlowControl::UnconditionalBranch, || {
        format!("ftrace site at {:#x} is `{}`, not a direct jmp", site.ip(), show(site))
    })?;
    Ok(site.near_branch_target())
}

/// Where the trampoline at `tramp` jumps, failing on anything but a direct jump.
fn trampoline_target(tramp: u64) -> Result<u64, String> {
    for insn in decode(tramp, &peek(tramp, 8)?) {
        match insn.flow_control() {
            FlowControl::Next => continue,
            FlowControl::UnconditionalBranch if insn.mnemonic() == Mnemonic::Jmp => return Ok(insn.near_branch_target()),
            _ => return Err(format!("trampoline {tramp:#x}: `{}` at {:#x} is not a direct jmp", show(&insn), insn.ip())),
        }
    }
    Err(format!("trampoline {tramp:#x}: no jmp"))
}

/// Follows the path a call to `func` takes through its ftrace site into
/// kmend's trampoline table; returns (trampoline, where the trampoline
/// jumps), failing on anything but direct jumps.
fn follow(func: u64, table: u64) -> Result<(u64, u64), String> {
    let tramp = site_target(func)?;
    check((table..table + 4096).contains(&tramp), || {
        format!("site of {func:#x} jumps to {tramp:#x}, outside kmend's trampolines at {table:#x}")
    })?;
    Ok((tramp, trampoline_target(tramp)?))
}

/// Issue #8: on a CPU enforcing IBT an indirect branch into a body without
/// ENDBR faults, and under retpolines a bare `jmp *mem` escapes the thunks.
/// Disassembles the live code: once applied, every target's ftrace site is
/// one direct jmp straight to its replacement (the call pays one jump; it
/// went through a trampoline, two jumps, before), and a trampoline in the
/// table jumps there too (the one the next switch rewrites); after the
/// revert the site jumps into the table and its trampoline to the original
/// body after the site; the whole table holds no indirect branch, call or
/// return.
fn patched_path_has_no_indirect_branch() -> TestResult {
    const PAIRS: [(&str, &str); 3] = [
        ("cmdline_proc_show", "multi_cmdline_show"),
        ("version_proc_show", "multi_version_show"),
        ("loadavg_proc_show", "multi_loadavg_show"),
    ];
    with_testmod(|| {
        let table = symbol("kmend_trampolines", Some("kmend"))?;
        apply("kmend_multi.kmpatch")?;
        let mut sites = Vec::new();
        let mut result = (|| {
            for (target, replacement) in PAIRS {
                let func = symbol(target, None)?;
                let to = site_target(func)?;
                let want = symbol(replacement, Some("kmend_multi"))?;
                check(to == want, || format!("{target}: its site jumps to {to:#x}, not straight to {replacement} at {want:#x}"))?;
                let insns = decode(table, &peek(table, 4096)?);
                let tramp = insns
                    .iter()
                    .find(|i| i.mnemonic() == Mnemonic::Jmp && i.near_branch_target() == want)
                    .map(|i| (i.ip() & !15) + 2)
                    .ok_or_else(|| format!("{target}: no trampoline jumps to {replacement} at {want:#x}"))?;
                sites.push((target, func, tramp));
            }
            let insns = decode(table, &peek(table, 4096)?);
            let bad: Vec<String> = insns
                .iter()
                .filter(|i| {
                    matches!(
                        i.flow_control(),
                        FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return | FlowControl::Call
                    )
                })
                .map(|i| format!("{:#x}: {}", i.ip(), show(i)))
                .collect();
            check(bad.is_empty(), || format!("trampoline table holds {bad:?}"))?;
            let jumps = insns.iter().filter(|i| i.mnemonic() == Mnemonic::Jmp).count();
            check(jumps == 256, || format!("trampoline table holds {jumps} jmps, not 256"))
        })();
        // Reverted (the module still loaded): the same trampolines now jump
        // to the original bodies, right after each ftrace site.
        if result.is_ok() {
            result = transition::revert(Path::new(CONTROL), "kmend_multi").map(drop).map_err(|e| format!("{e}"));
        }
        for &(target, func, tramp) in &sites {
            if result.is_err() {
                break;
            }
            result = follow(func, table).and_then(|(t, to)| {
                let head = decode(func, &peek(func, 16)?);
                let site = head.iter().find(|i| i.mnemonic() != Mnemonic::Endbr64).ok_or("no site")?;
                check(t == tramp && to == site.next_ip(), || {
                    format!("{target} reverted: trampoline {t:#x} jumps to {to:#x}, not the body at {:#x}", site.next_ip())
                })
            });
        }
        let undo = kmend(&["revert", "kmend_multi"]);
        result?;
        check(undo.0 == 0 && !module_loaded("kmend_multi"), || format!("revert: {undo:?}"))?;
        // Unregistered: the sites are NOPs again.
        for (target, func, _) in sites {
            let head = decode(func, &peek(func, 16)?);
            let site = head.iter().find(|i| i.mnemonic() != Mnemonic::Endbr64).ok_or("no site")?;
            check(site.mnemonic() == Mnemonic::Nop && site.len() == 5, || {
                format!("{target}: site after unload is `{}`, not a 5-byte NOP", show(site))
            })?;
        }
        Ok(())
    })
}


/// Issue #8: the kernel's exported stack walker leaves `__sched` functions
/// out of a sleeping task's trace. The test kthread sleeps in
/// `usleep_range_state` (vmlinux, `__sched`): a check built on that walker
/// does not see it and switches under it.
fn sched_sleeper_blocks_until_it_leaves() -> TestResult {
    with_testmod(|| {
        hold(3)?;
        thread::sleep(Duration::from_millis(300));
        let (code, out, err) = kmend(&["apply", &format!("{MODULE_DIR}/kmend_schedsleep.ko")]);
        let released = hold(0);
        if code == 0 {
            let _ = kmend(&["revert", "kmend_schedsleep"]);
        }
        check(code == 4, || format!("apply while a thread sleeps in the __sched target: exit {code}: {out} {err}"))?;
        check(err.contains("kmend-sleeper") && err.contains("usleep_range_state"), || {
            format!("refusal does not name the task and function: {err}")
        })?;
        check(!module_loaded("kmend_schedsleep"), || "refused patch left its module loaded".into())?;
        released?;
        thread::sleep(Duration::from_millis(300));
        apply("kmend_schedsleep.ko")?;
        revert("kmend_schedsleep")
    })
}

/// Issue #8: the idle tasks are on no task list. A CPU's idle task is
/// switched out inside the idle loop's `schedule_idle` whenever another
/// task runs there; on a CPU that stays busy it is never switched during a
/// switch's check, so only a check that finds the idle tasks itself (the
/// kernel's `idle_threads`) sees it. With a thread spinning on every CPU,
/// `kmend_idle` (a patch to `schedule_idle`) must be refused, naming an
/// idle task. Before, it applied; its revert, with the CPUs still busy,
/// would have freed the replacement under their idle tasks.
fn idle_tasks_of_busy_cpus_are_checked() -> TestResult {
    let cpus = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..cpus)
        .map(|cpu| {
            let stop = stop.clone();
            thread::spawn(move || {
                // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
                let pinned = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
                };
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
                pinned
            })
        })
        .collect();
    // Every CPU busy from before the apply's check on.
    thread::sleep(Duration::from_millis(300));
    let (code, out, err) = kmend(&["apply", &format!("{MODULE_DIR}/kmend_idle.ko")]);
    if code == 0 {
        // Applied over the idle tasks: undo while the CPUs are still busy
        // would free code they are in; leave it applied and fail.
        stop.store(true, Ordering::Relaxed);
        return Err(format!("kmend_idle applied while every idle task was in schedule_idle: {out}"));
    }
    stop.store(true, Ordering::Relaxed);
    let pinned = spinners.into_iter().all(|s| s.join().unwrap_or(false));
    println!("kmend-guest: idle: {}", err.trim());
    check(pinned, || "could not pin a spinning thread to every CPU".into())?;
    check(code == 4 && err.contains("swapper/") && err.contains("schedule_idle"), || {
        format!("apply of a patch to schedule_idle with every CPU busy: exit {code}: {out} {err}")
    })?;
    check(!module_loaded("kmend_idle"), || "refused patch left its module loaded".into())
}

/// Issue #8: a function on the idle path, `arch_cpu_idle_enter` (every idle
/// CPU's idle task calls it on each pass of its loop, interrupts off), is
/// patched, proven by eBPF to run from idle, reverted and its patch module
/// removed; then the CPUs keep idling through the original. The revert
/// walks the idle tasks too, and none is ever inside that function when
/// switched out, so it is not held up, and nothing runs the freed code.
fn idle_path_function_reverted_and_its_module_removed() -> TestResult {
    const ID: &str = "kmend_idle_path";
    apply(&format!("{ID}.kmpatch"))?;
    let f = verify_then_revert(ID, "2s", || {
        thread::sleep(Duration::from_millis(100));
        Ok(())
    })?;
    let hits = f["replacement_hits"].as_u64().unwrap_or(0);
    println!("kmend-guest: idle path: replacement hit {hits} times while the CPUs idled; old body {}", f["old_body_hits"]);
    check(hits > 0 && f["old_body_hits"].as_u64() == Some(0), || format!("idle path: {f}"))?;
    // The module is gone; every CPU idles on through the original.
    thread::sleep(Duration::from_millis(500));
    check(!module_loaded(ID), || format!("{ID} still loaded"))
}

/// Issue #8: a task interrupted or preempted on one of kmend's trampolines
/// must still be walked whole and reliably by the check. Calls go through
/// a trampoline while a switch may rewrite it, and while a patch is
/// reverted but still loaded (its site then jumps through the trampoline
/// to the original body): the test reverts `kmend_sample` keeping its
/// module, so calls to `cmdline_proc_show` pass the trampoline. The test
/// module's kprobe on that trampoline stops every call there and walks
/// the interrupted task's stack from the saved registers, as kmend's check
/// walks a task preempted there: every walk must reach the user-mode
/// registers with no unwinder error. Without the trampolines' unwind hints
/// (UNWIND_HINT_FUNC in kmend_trampolines.S) the ORC unwinder has nothing
/// for those addresses and each walk ends in an error.
fn task_interrupted_on_a_trampoline_is_walked_whole() -> TestResult {
    const READS: u32 = 20;
    with_testmod(|| {
        let table = symbol("kmend_trampolines", Some("kmend"))?;
        apply("kmend_sample.kmpatch")?;
        let walked = (|| {
            transition::revert(Path::new(CONTROL), "kmend_sample").map_err(|e| format!("revert keeping the module: {e}"))?;
            let (tramp, _) = follow(symbol("cmdline_proc_show", None)?, table)?;
            fs::write("/proc/kmend_unwind_at", format!("{tramp:x}")).map_err(|e| format!("kprobe at {tramp:#x}: {e}"))?;
            let reads = (0..READS).try_for_each(|_| read("/proc/cmdline").map(drop));
            let report = read("/proc/kmend_unwind_at");
            let removed = fs::write("/proc/kmend_unwind_at", "0").map_err(|e| format!("remove the kprobe: {e}"));
            reads?;
            removed?;
            let n: Vec<u64> = report?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            println!("kmend-guest: interrupted on trampoline {tramp:#x}: walks, reliable, unreliable, frames: {n:?}");
            check(n.len() == 4 && n[0] >= u64::from(READS) && n[1] == n[0] && n[2] == 0 && n[3] > 3, || {
                format!("walks from the trampoline {tramp:#x} (walks, reliable, unreliable, frames): {n:?}")
            })
        })();
        let reverted = revert("kmend_sample");
        walked.and(reverted)
    })
}

/// A user thread asleep (interruptibly) in the target, reading
/// `/proc/kmend_testmod_wait`: before parking, the apply retried for 5 s
/// and was refused, naming the thread. Now kmend parks it on its way back
/// to user mode: the apply succeeds at once, and the thread's read, which
/// the kernel restarts, runs the replacement and returns "new" without
/// anyone releasing it.
fn user_thread_asleep_in_the_target_is_parked() -> TestResult {
    const WAIT: &str = "/proc/kmend_testmod_wait";
    with_testmod(|| {
        std::fs::write(WAIT, "0").map_err(|e| format!("{WAIT}: {e}"))?;
        let reader = thread::spawn(|| std::fs::read_to_string(WAIT));
        thread::sleep(Duration::from_millis(300));
        let (code, out, err) = kmend(&["apply", &format!("{MODULE_DIR}/kmend_waiter.ko")]);
        // Whatever happened, nobody stays asleep in the module.
        let release = std::fs::write(WAIT, "1").map_err(|e| format!("{WAIT}: {e}"));
        let read = reader.join().map_err(|_| "reader panicked".to_owned())?;
        if code == 0 {
            revert("kmend_waiter")?;
        }
        release?;
        check(code == 0, || format!("apply while a user thread sleeps in the target: exit {code}: {out} {err}"))?;
        let read = read.map_err(|e| format!("read {WAIT}: {e}"))?;
        check(read == "new\n", || format!("the sleeping reader got {read:?}: its read did not restart in the replacement"))
    })
}

fn function_states(id: &str) -> Result<Vec<String>, String> {
    let (_, status, _) = kmend(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).map_err(|e| format!("{e}: {status}"))?;
    let patch = v["patches"].as_array().into_iter().flatten().find(|p| p["id"] == id);
    Ok(patch
        .and_then(|p| p["functions"].as_array())
        .into_iter()
        .flatten()
        .map(|f| f["state"].as_str().unwrap_or("?").to_owned())
        .collect())
}

/// Issue #8: a patch for two functions of a module that is not loaded; the
/// second's fingerprint does not match. Loading the module must fail, and
/// fail whole: the first function, redirected as the module came, is
/// undone (the kernel sends no "going" event to the notifier that failed).
fn module_load_refused_leaves_nothing_redirected() -> TestResult {
    check(!module_loaded("kmend_testmod"), || "kmend_testmod already loaded".into())?;
    let good = Artifact::read(Path::new(&format!("{MODULE_DIR}/kmend_modpair.kmpatch"))).map_err(|e| format!("{e}"))?;
    let mut manifest = good.manifest.clone();
    let fp = &mut manifest.functions[1].fingerprint;
    check(!fp.is_empty(), || "kmend_modpair has no fingerprint for its second function".into())?;
    let flipped = if fp.ends_with('0') { "1" } else { "0" };
    fp.replace_range(fp.len() - 1.., flipped);
    let bad = Artifact::new(manifest, good.module.clone()).map_err(|e| format!("{e}"))?;
    bad.write(Path::new("/tmp/modpair-bad.kmpatch")).map_err(|e| format!("{e}"))?;

    let (code, out, err) = kmend(&["apply", "/tmp/modpair-bad.kmpatch"]);
    check(code == 0, || format!("apply before the module loads: exit {code}: {out} {err}"))?;
    let states = function_states("kmend_modpair")?;
    check(states == ["pending", "pending"], || format!("before the module loads: {states:?}"))?;
    let load = insmod("kmend_testmod.ko");
    if load.is_ok() {
        let _ = rmmod("kmend_testmod");
    }
    check(load.is_err(), || "the module loaded although its code differs from the fingerprint".into())?;
    let states = function_states("kmend_modpair")?;
    check(states == ["pending", "pending"], || format!("after the refused load: {states:?}"))?;
    revert("kmend_modpair")?;
    with_testmod(|| {
        let got = read(TESTMOD)?;
        check(got == "original\n", || format!("after the refused load and revert: {got:?}"))
    })?;

    // The good artifact: both functions applied as the module loads.
    apply("kmend_modpair.kmpatch")?;
    let loaded = with_testmod(|| {
        let got = read(TESTMOD)?;
        check(got == "modpair\n", || format!("module loaded under the patch: {got:?}"))?;
        let states = function_states("kmend_modpair")?;
        check(states == ["active", "active"], || format!("module loaded under the patch: {states:?}"))
    });
    let undo = revert("kmend_modpair");
    loaded.and(undo)
}

fn finit_module(file: &str) -> Result<(), String> {
    let f = fs::File::open(file).map_err(|e| format!("open {file}: {e}"))?;
    // SAFETY: a plain syscall on an open fd with an empty parameter string.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
    if ret == 0 { Ok(()) } else { Err(format!("finit_module {file}: {}", std::io::Error::last_os_error())) }
}

fn delete_module(name: &str) -> Result<(), String> {
    let c = CString::new(name).map_err(|e| format!("{e}"))?;
    // SAFETY: a plain syscall with a NUL-terminated name.
    let ret = unsafe { libc::syscall(libc::SYS_delete_module, c.as_ptr(), libc::O_NONBLOCK) };
    if ret == 0 { Ok(()) } else { Err(format!("delete_module {name}: {}", std::io::Error::last_os_error())) }
}

/// Issue #8: applying a patch to a module while that module is unloaded.
/// Whatever the interleaving, the apply either takes the module before it
/// goes (and its "going" event undoes it) or is refused: it must never
/// redirect into a module that has already gone past its going event.
fn apply_racing_rmmod_of_its_target() -> TestResult {
    const ROUNDS: usize = 200;
    check(!module_loaded("kmend_testmod"), || "kmend_testmod already loaded".into())?;
    let manifest = Artifact::read(Path::new(&format!("{MODULE_DIR}/kmend_modtarget.kmpatch")))
        .map_err(|e| format!("{e}"))?
        .manifest
        .functions;
    apply("kmend_modtarget.kmpatch")?;
    let control = Path::new(CONTROL);
    let mut result = transition::revert(control, "kmend_modtarget").map(drop).map_err(|e| format!("{e}"));
    let testmod = format!("{MODULE_DIR}/kmend_testmod.ko");
    let (mut active, mut pending, mut refused) = (0, 0, 0);
    for round in 0..ROUNDS {
        if result.is_err() {
            break;
        }
        result = (|| {
            finit_module(&testmod)?;
            let remover = thread::spawn(|| delete_module("kmend_testmod"));
            // Sweep the apply across the unload: from before it starts to
            // after the module is gone.
            thread::sleep(Duration::from_micros((round % 25) as u64 * 200));
            match transition::enable(control, "kmend_modtarget", &manifest) {
                Ok(_) => {
                    // Taken before the module went (then undone by its going
                    // event), or after (pending until it loads again).
                    let status = read(CONTROL)?;
                    let func = status.lines().find(|l| l.starts_with("func kmend_modtarget ")).unwrap_or("");
                    if func.contains(" pending ") {
                        pending += 1;
                    } else {
                        active += 1;
                    }
                    transition::revert(control, "kmend_modtarget").map_err(|e| format!("revert: {e}"))?;
                }
                Err(_) => refused += 1,
            }
            remover.join().map_err(|_| "remover panicked".to_string())??;
            check(!module_loaded("kmend_testmod"), || "kmend_testmod still loaded".into())
        })()
        .map_err(|e: String| format!("round {round}: {e}"));
    }
    println!("kmend-guest: rmmod race: {ROUNDS} rounds: {active} applied to the module, {pending} pending, {refused} refused");
    // Nothing was left redirected into a module that went.
    let after = with_testmod(|| {
        let got = read(TESTMOD)?;
        check(got == "original\n", || format!("after the race: {got:?}"))
    });
    let undo = revert("kmend_modtarget");
    result.and(after).and(undo)
}

/// Issue #8: an apply that keeps retrying because a thread is in the way
/// must not hold the registry across its waits: a status read and a module
/// load (which registers a patch) complete while it is still retrying.
/// (Ordering, not timing: both must return before the apply does.)
fn retrying_apply_does_not_hold_up_others() -> TestResult {
    with_testmod(|| {
        hold(1)?;
        thread::sleep(Duration::from_millis(300));
        let apply = thread::spawn(|| kmend(&["apply", &format!("{MODULE_DIR}/kmend_sleepy.ko")]));
        // Registered: the apply is past loading its module and into the
        // enable, which keeps retrying (the kthread holds the target).
        let mut registered = false;
        for _ in 0..200 {
            if read(CONTROL)?.contains("patch kmend_sleepy ") {
                registered = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(500));
        let status = read(CONTROL);
        let load = insmod("kmend_stack_a.ko");
        let apply_still_running = !apply.is_finished();
        let released = hold(0);
        let (code, out, err) = apply.join().map_err(|_| "apply thread panicked".to_string())?;
        if code == 0 {
            let _ = kmend(&["revert", "kmend_sleepy"]);
        }
        if load.is_ok() {
            rmmod("kmend_stack_a")?;
        }
        released?;
        check(registered, || "the apply never registered its patch".into())?;
        status?;
        load?;
        check(apply_still_running, || {
            format!("status read and module load returned only after the apply ended (exit {code}: {out} {err})")
        })?;
        // Released while it was retrying: it got through.
        check(code == 0, || format!("apply, the kthread released while it retried: exit {code}: {out} {err}"))
    })
}

const TRACING: &str = "/sys/kernel/tracing";

/// Adds (and enables) a kprobe event `kmend_co` on `func`'s entry.
fn kprobe_add(func: &str) -> TestResult {
    use std::io::Write as _;
    let mut events = fs::OpenOptions::new()
        .append(true)
        .open(format!("{TRACING}/kprobe_events"))
        .map_err(|e| format!("open kprobe_events: {e}"))?;
    // One write per command: tracefs parses each write() as whole lines.
    events.write_all(format!("p:kmend_co {func}\n").as_bytes()).map_err(|e| format!("add kprobe on {func}: {e}"))?;
    fs::write(format!("{TRACING}/events/kprobes/kmend_co/enable"), "1").map_err(|e| format!("enable kprobe: {e}"))
}

fn kprobe_remove() -> TestResult {
    use std::io::Write as _;
    fs::write(format!("{TRACING}/events/kprobes/kmend_co/enable"), "0").map_err(|e| format!("disable kprobe: {e}"))?;
    let mut events = fs::OpenOptions::new()
        .append(true)
        .open(format!("{TRACING}/kprobe_events"))
        .map_err(|e| format!("open kprobe_events: {e}"))?;
    events.write_all(b"-:kmend_co\n").map_err(|e| format!("remove kprobe: {e}"))
}

/// Hits of the `kmend_co` kprobe so far.
fn kprobe_hits() -> Result<u64, String> {
    let profile = read(&format!("{TRACING}/kprobe_profile"))?;
    profile
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == "kmend_co").then(|| it.next()?.parse().ok()).flatten()
        })
        .ok_or_else(|| format!("kmend_co not in kprobe_profile: {profile:?}"))
}

/// Issue #8: a kprobe on the entry of a function kmend redirects (ftrace
/// puts both on the function's one ftrace site), in both orders: the probe
/// counts every call and the replacement is what runs; either can go first
/// and leave the other working.
fn kprobe_on_a_patched_function_both_orders() -> TestResult {
    const PATCHED: &str = "kmend: this kernel is live patched\n";
    let original = read("/proc/cmdline")?;
    let calls = |want: &str| -> Result<u64, String> {
        let before = kprobe_hits()?;
        for _ in 0..5 {
            let got = read("/proc/cmdline")?;
            check(got == want, || format!("/proc/cmdline: {got:?}, want {want:?}"))?;
        }
        Ok(kprobe_hits()? - before)
    };
    // kmend first, then the kprobe.
    apply("kmend_sample.kmpatch")?;
    let first = kprobe_add("cmdline_proc_show").and_then(|()| {
        let n = calls(PATCHED)?;
        check(n == 5, || format!("kprobe added after the patch counted {n} of 5 calls"))?;
        kprobe_remove()?;
        let got = read("/proc/cmdline")?;
        check(got == PATCHED, || format!("kprobe removed: /proc/cmdline {got:?}"))
    });
    let undo = revert("kmend_sample");
    first.and(undo)?;
    // The kprobe first, then kmend.
    kprobe_add("cmdline_proc_show")?;
    let second = (|| {
        check(calls(&original)? == 5, || "kprobe alone missed calls".into())?;
        apply("kmend_sample.kmpatch")?;
        let n = calls(PATCHED)?;
        check(n == 5, || format!("kprobe counted {n} of 5 calls once the patch applied"))?;
        revert("kmend_sample")?;
        let n = calls(&original)?;
        check(n == 5, || format!("kprobe counted {n} of 5 calls after the revert"))
    })();
    let _ = kmend(&["revert", "kmend_sample"]);
    let removed = kprobe_remove();
    second.and(removed)
}

fn klp_enabled() -> bool {
    read("/sys/kernel/livepatch/klp_bench/enabled").is_ok_and(|v| v.trim() == "1")
}

fn klp_settle() -> TestResult {
    for _ in 0..500 {
        if read("/sys/kernel/livepatch/klp_bench/transition").map_or(true, |t| t.trim() == "0") {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err("klp_bench transition did not finish".into())
}

fn klp_remove() -> TestResult {
    if module_loaded("klp_bench") {
        if klp_enabled() {
            fs::write("/sys/kernel/livepatch/klp_bench/enabled", "0").map_err(|e| format!("klp disable: {e}"))?;
            klp_settle()?;
        }
        for _ in 0..100 {
            if rmmod("klp_bench").is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        return Err("klp_bench would not unload".into());
    }
    Ok(())
}

/// Issue #8: the kernel's livepatch and kmend on the same function, in both
/// orders. ftrace lets one user change where a function goes: the second
/// one is refused with a clear error, and the first keeps working.
fn livepatch_and_kmend_refuse_each_other_cleanly() -> TestResult {
    with_testmod(|| {
        // kmend first: the livepatch module's load fails.
        apply("kmend_bench.ko")?;
        let klp = insmod("klp_bench.ko");
        let klp_took = klp.is_ok() && klp_enabled();
        let cleanup = klp_remove();
        let (_, status, _) = kmend(&["status", "--json"]);
        let undo = revert("kmend_bench");
        check(!klp_took, || "a livepatch was enabled on a function kmend redirects".into())?;
        cleanup?;
        check(status.contains("\"state\":\"active\""), || format!("kmend's patch after the refused livepatch: {status}"))?;
        undo?;
        // The livepatch first: kmend refuses, naming the conflict.
        insmod("klp_bench.ko")?;
        let result = (|| {
            klp_settle()?;
            check(klp_enabled(), || "klp_bench did not enable".into())?;
            let (code, out, err) = kmend(&["apply", &format!("{MODULE_DIR}/kmend_bench.ko")]);
            if code == 0 {
                let _ = kmend(&["revert", "kmend_bench"]);
            }
            check(code == 4, || format!("apply over a livepatch: exit {code}: {out} {err}"))?;
            check(err.contains("kmend_bench_target") && err.contains("another ftrace user"), || {
                format!("refusal does not say what is in the way: {err}")
            })?;
            check(!module_loaded("kmend_bench"), || "refused patch left its module loaded".into())?;
            check(klp_enabled(), || "the livepatch was disabled by kmend's refused apply".into())
        })();
        let cleanup = klp_remove();
        result.and(cleanup)
    })
}

/// Reverts `id` through `/dev/kmend` with a short retry window; returns the
/// kernel's refusal text on failure.
fn revert_within(id: &str, timeout_ms: u32) -> Result<(), String> {
    use kmend_common::uapi::*;
    let dev = fs::OpenOptions::new().read(true).write(true).open(CONTROL).map_err(|e| format!("open: {e}"))?;
    let mut req = KmendReq {
        version: KMEND_UAPI_VERSION,
        flags: 0,
        id: [0; KMEND_ID_MAX],
        timeout_ms,
        nfuncs: 0,
        funcs: 0,
        pause_ns: 0,
        error: [0; KMEND_ERR_MAX],
    };
    req.id[..id.len()].copy_from_slice(id.as_bytes());
    // SAFETY: the request is a live `repr(C)` struct of the size the command encodes.
    let ret = unsafe { libc::ioctl(dev.as_raw_fd(), KMEND_IOC_REVERT as _, &mut req as *mut KmendReq) };
    if ret == 0 {
        return Ok(());
    }
    let len = req.error.iter().position(|&b| b == 0).unwrap_or(req.error.len());
    Err(String::from_utf8_lossy(&req.error[..len]).into_owned())
}

/// Issue #8: a revert releases the patch module, so no thread may be
/// anywhere in its code, not only in the replacements. Here the replacement
/// tail-calls a helper of its module that keeps the test kthread until the
/// test module unloads: the kthread has no frame of the replacement on its
/// stack, only of the helper. A revert is refused naming the module; once
/// the kthread has left (the test module unloads), it goes through.
fn revert_waits_for_threads_anywhere_in_the_patch_module() -> TestResult {
    check(!module_loaded("kmend_testmod"), || "kmend_testmod already loaded".into())?;
    insmod("kmend_testmod.ko")?;
    let held = (|| {
        apply("kmend_tailcall.ko")?;
        // The premise: the replacement reaches the helper by a jump, not a call.
        let repl = symbol("tailcall_sleepy", Some("kmend_tailcall"))?;
        let helper = symbol("tailcall_wait", Some("kmend_tailcall"))?;
        let insns = decode(repl, &peek(repl, 64)?);
        let exit = insns
            .iter()
            .find(|i| i.flow_control() != FlowControl::Next)
            .ok_or("no branch in the replacement's first 64 bytes")?;
        check(exit.mnemonic() == Mnemonic::Jmp && exit.near_branch_target() == helper, || {
            format!("the replacement does not tail-call its helper (first branch: `{}` at {:#x})", show(exit), exit.ip())
        })?;
        // The kthread calls the target every 20 ms; from then on it stays in the helper.
        thread::sleep(Duration::from_millis(300));
        let refusal = match revert_within("kmend_tailcall", 300) {
            Ok(()) => return Err("revert went through while the kthread was in the patch module's helper".into()),
            Err(e) => e,
        };
        check(refusal.contains("kmend-sleeper") && refusal.contains("code of module kmend_tailcall"), || {
            format!("refusal does not name the thread and the module: {refusal}")
        })
    })();
    // Unloading the test module stops its kthread, which leaves the helper.
    let unload = rmmod("kmend_testmod");
    let undo = revert("kmend_tailcall");
    held.and(unload).and(undo)
}

/// Issue #8 (found by review): two patches for a function of a module that
/// is not loaded, registered a then b but enabled b then a. When the module
/// loads, a (enabled last) must run, as it would for a loaded function.
/// The first version stacked them in registration order.
fn pending_patches_stack_in_enable_order() -> TestResult {
    check(!module_loaded("kmend_testmod"), || "kmend_testmod already loaded".into())?;
    insmod("kmend_stack_a.ko")?;
    let result = (|| {
        apply("kmend_stack_b.ko")?;
        transition::enable(Path::new(CONTROL), "kmend_stack_a", &[]).map_err(|e| format!("enable kmend_stack_a: {e}"))?;
        with_testmod(|| {
            let got = read(TESTMOD)?;
            check(got == "stack-a\n", || format!("module loaded under b then a: {got:?}, want the last enabled (stack-a)"))
        })
    })();
    let undo_a = revert("kmend_stack_a");
    let undo_b = revert("kmend_stack_b");
    result.and(undo_a).and(undo_b)
}
