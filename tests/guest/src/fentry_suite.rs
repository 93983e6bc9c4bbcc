//! Issue #8: a BPF fentry program and kmend on the same function, in both
//! orders. A BPF trampoline takes the function's ftrace site through the
//! same direct-call interface as kmend, so ftrace lets only one of them
//! change where the function goes: either both work, or the second is
//! refused with a clear error and the first keeps working.
//!
//! Needs BTF (`/sys/kernel/btf/vmlinux`): Debian's stock kernel has it, the
//! debug kernel does not (there the test says so and passes: nothing to try).

use std::path::Path;

use aya::{
    Btf,
    Ebpf,
    maps::PerCpuArray,
    programs::{
        FEntry,
        links::FdLink, //
    },
};
use kmend::guest_fixtures::FENTRY_WITNESS_OBJ;

use crate::harness::{
    MODULE_DIR,
    Test,
    TestResult,
    apply,
    check,
    kmend,
    module_loaded,
    read,
    revert, //
};

const PATCHED: &str = "kmend: this kernel is live patched\n";
const TARGET: &str = "cmdline_proc_show";

pub fn tests() -> Vec<Test> {
    vec![Test { name: "bpf_fentry_and_kmend_on_one_function_both_orders", run: bpf_fentry_and_kmend_both_orders }]
}

/// The fentry witness, loaded (not attached).
struct Witness {
    ebpf: Ebpf,
}

impl Witness {
    fn load() -> Result<Self, String> {
        let btf = Btf::from_sys_fs().map_err(|e| format!("BTF: {e}"))?;
        let mut ebpf = Ebpf::load(FENTRY_WITNESS_OBJ).map_err(|e| format!("load the fentry object: {e}"))?;
        let program: &mut FEntry = ebpf
            .program_mut("kmend_fentry_witness")
            .ok_or("no fentry program in the object")?
            .try_into()
            .map_err(|e| format!("not an fentry program: {e}"))?;
        program.load(TARGET, &btf).map_err(|e| format!("load fentry on {TARGET}: {e}"))?;
        Ok(Self { ebpf })
    }

    /// Attaches it: the kernel builds a BPF trampoline on the function.
    /// The link is kept alive by the returned value.
    fn attach(&mut self) -> Result<FdLink, String> {
        let program: &mut FEntry = self
            .ebpf
            .program_mut("kmend_fentry_witness")
            .ok_or("no fentry program")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let id = program.attach().map_err(|e| format!("{e:#}"))?;
        let link = program.take_link(id).map_err(|e| format!("take link: {e}"))?;
        FdLink::try_from(link).map_err(|e| format!("fd link: {e}"))
    }

    fn calls(&self) -> Result<u64, String> {
        let map = self.ebpf.map("CALLS").ok_or("no CALLS map")?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|e| format!("CALLS: {e}"))?;
        let values = array.get(&0, 0).map_err(|e| format!("read CALLS: {e}"))?;
        Ok(values.iter().sum())
    }
}

/// Reads /proc/cmdline 5 times, each must be `want`; returns the calls
/// the witness counted meanwhile.
fn five_reads(w: &Witness, want: &str) -> Result<u64, String> {
    let before = w.calls()?;
    for _ in 0..5 {
        let got = read("/proc/cmdline")?;
        check(got == want, || format!("/proc/cmdline: {got:?}, want {want:?}"))?;
    }
    Ok(w.calls()? - before)
}

fn bpf_fentry_and_kmend_both_orders() -> TestResult {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        println!("kmend-guest: no BTF in this kernel: BPF fentry cannot attach here (the stock kernel has it)");
        return Ok(());
    }
    let original = read("/proc/cmdline")?;
    let mut w = Witness::load()?;
    check(five_reads(&w, &original)? == 0, || "the witness counted calls before it was attached".into())?;

    // kmend first, then the BPF trampoline.
    apply("kmend_sample.kmpatch")?;
    let first = (|| {
        match w.attach() {
            Ok(link) => {
                // Both took the site: both must work.
                let n = five_reads(&w, PATCHED)?;
                drop(link);
                check(n == 5, || format!("fentry attached over kmend counted {n} of 5 calls"))?;
                println!("kmend-guest: fentry after kmend: both work");
            }
            Err(e) => {
                println!("kmend-guest: fentry after kmend refused: {e}");
                check(five_reads(&w, PATCHED)? == 0, || "a refused fentry counts calls".into())?;
            }
        }
        let (_, status, _) = kmend(&["status", "--json"]);
        check(status.contains("\"state\":\"active\""), || format!("kmend's patch after the fentry attempt: {status}"))
    })();
    let undo = revert("kmend_sample");
    first.and(undo)?;
    check(read("/proc/cmdline")? == original, || "revert did not restore /proc/cmdline".into())?;

    // The BPF trampoline first, then kmend.
    let link = w.attach().map_err(|e| format!("fentry alone: {e}"))?;
    let second = (|| {
        check(five_reads(&w, &original)? == 5, || "fentry alone missed calls".into())?;
        let (code, out, err) = kmend(&["apply", &format!("{MODULE_DIR}/kmend_sample.kmpatch")]);
        if code == 0 {
            let n = five_reads(&w, PATCHED)?;
            let undo = revert("kmend_sample");
            check(n == 5, || format!("kmend applied over fentry, and fentry counted {n} of 5 calls"))?;
            undo?;
            println!("kmend-guest: kmend after fentry: both work");
        } else {
            check(code == 4, || format!("apply over fentry: exit {code}: {out} {err}"))?;
            check(err.contains(TARGET) && err.contains("another ftrace user"), || format!("refusal does not say what is in the way: {err}"))?;
            check(!module_loaded("kmend_sample"), || "the refused patch left its module loaded".into())?;
            println!("kmend-guest: kmend after fentry refused: {}", err.trim());
        }
        check(five_reads(&w, &original)? == 5, || "fentry stopped counting after kmend's attempt".into())
    })();
    drop(link);
    second?;
    check(five_reads(&w, &original)? == 0, || "fentry still counts after its link was dropped".into())
}
