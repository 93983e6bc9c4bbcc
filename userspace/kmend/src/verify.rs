//! eBPF proof that a patch's replacements run and the old bodies do not.
//!
//! For every function of a patch, one hit-counting kprobe goes on the
//! replacement's entry and one on the first instruction of the old body
//! (past the ftrace call site, see [`crate::kallsyms`]), both at addresses
//! resolved by object, name and position, so a patched `static` function
//! whose name the kernel has twice is probed where it is ([`crate::kprobe_at`]).
//! After the functions
//! have been exercised, a function is *proven* when its replacement was hit
//! and its old body never was.

use std::{
    thread,
    time::Duration, //
};

use anyhow::{
    Context as _,
    anyhow, //
};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::KProbe, //
};
use kmend_common::probes::{
    HITCOUNT_PROGRAM,
    HITS_MAP, //
};
use serde::Serialize;

use crate::{
    kallsyms,
    kprobe_at::AddressProbe,
    state::Verification,
    status::PatchStatus,
    sys::Kernel,
    timestamp::Timestamp, //
};

/// Proves `patch` on `kernel`: counts with eBPF for `window` on the real
/// kernel; the test double answers at once (see `sys::fake`).
pub fn prove(kernel: &Kernel, patch: &PatchStatus, window: Duration) -> anyhow::Result<PatchProof> {
    match kernel {
        Kernel::Real { .. } => PatchProbes::observe(patch, window),
        Kernel::Fake(f) => Ok(f.proof(patch)),
    }
}

impl PatchProof {
    /// What kmend keeps of it (`kmend_patch_verified`, status, check-ins).
    pub fn record(&self) -> Verification {
        Verification {
            id: self.patch.clone(),
            time: Timestamp::now(),
            proven: self.proven,
            replacement_hits: self.functions.iter().map(|f| f.replacement_hits).sum(),
            old_body_hits: self.functions.iter().map(|f| f.old_body_hits).sum(),
        }
    }
}

/// The compiled hit-count probe (built by build.rs from ebpf/kmend-probes).
static HITCOUNT_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hitcount"));

/// One attached hit counter.
pub struct HitCounter {
    /// Dropped before `ebpf`: detaches the probe, then unloads the program.
    _probe: AddressProbe,
    ebpf: Ebpf,
    /// Where it is attached, for messages.
    pub point: String,
}

impl HitCounter {
    /// Attaches a counter at `address`; `point` names it in messages
    /// (`symbol+offset`).
    pub fn attach(address: u64, point: String) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(HITCOUNT_OBJ).context("loading the hit-count probe")?;
        let program: &mut KProbe = ebpf
            .program_mut(HITCOUNT_PROGRAM)
            .ok_or_else(|| anyhow!("probe object has no program '{HITCOUNT_PROGRAM}'"))?
            .try_into()
            .context("hit-count program is not a kprobe")?;
        program.load().context("loading the hit-count program into the kernel")?;
        let fd = program.fd().context("the loaded hit-count program has no descriptor")?;
        let probe = AddressProbe::attach(address, fd).with_context(|| format!("attaching a kprobe at '{point}'"))?;
        Ok(Self { _probe: probe, ebpf, point })
    }

    /// Hits so far.
    pub fn hits(&self) -> anyhow::Result<u64> {
        let map = self.ebpf.map(HITS_MAP).ok_or_else(|| anyhow!("probe has no map '{HITS_MAP}'"))?;
        let hits: PerCpuArray<_, u64> = PerCpuArray::try_from(map).context("hit map has the wrong type")?;
        let per_cpu = hits.get(&0, 0).with_context(|| format!("reading hits at '{}'", self.point))?;
        Ok(per_cpu.iter().sum())
    }
}

/// Counters for one patched function.
struct FunctionProbes {
    target: String,
    replacement: HitCounter,
    old_body: HitCounter,
}

/// Counters for every function of one patch.
pub struct PatchProbes {
    patch: String,
    functions: Vec<FunctionProbes>,
}

/// Verification result for one function.
#[derive(Debug, Serialize)]
pub struct FunctionProof {
    pub function: String,
    pub replacement: String,
    pub replacement_hits: u64,
    pub old_body: String,
    pub old_body_hits: u64,
    pub proven: bool,
}

/// Verification result for a patch.
#[derive(Debug, Serialize)]
pub struct PatchProof {
    pub patch: String,
    pub proven: bool,
    pub functions: Vec<FunctionProof>,
}

impl PatchProbes {
    /// Attaches the counters for every function of `patch`.
    pub fn attach(patch: &PatchStatus) -> anyhow::Result<Self> {
        let symbols = kallsyms::read()?;
        let mut functions = Vec::new();
        for f in &patch.functions {
            let replacement = f.replacement_symbol();
            let replacement_at = kallsyms::resolve(&symbols, &patch.id, replacement, 0).map_err(|e| anyhow!(e))?;
            let (body, offset) = kallsyms::body_address(&symbols, &f.object, &f.name, f.sympos)?;
            let name = if f.sympos > 0 { format!("{},{}", f.name, f.sympos) } else { f.name.clone() };
            functions.push(FunctionProbes {
                target: f.name.clone(),
                replacement: HitCounter::attach(replacement_at, format!("{replacement}+0x0"))?,
                old_body: HitCounter::attach(body, format!("{name}+{offset:#x}"))?,
            });
        }
        Ok(Self { patch: patch.id.clone(), functions })
    }

    /// Reads the counters.
    pub fn proof(&self) -> anyhow::Result<PatchProof> {
        let mut functions = Vec::new();
        for f in &self.functions {
            let replacement_hits = f.replacement.hits()?;
            let old_body_hits = f.old_body.hits()?;
            functions.push(FunctionProof {
                function: f.target.clone(),
                replacement: f.replacement.point.clone(),
                replacement_hits,
                old_body: f.old_body.point.clone(),
                old_body_hits,
                proven: replacement_hits > 0 && old_body_hits == 0,
            });
        }
        Ok(PatchProof {
            patch: self.patch.clone(),
            proven: !functions.is_empty() && functions.iter().all(|f| f.proven),
            functions,
        })
    }

    /// Attaches, waits `window` while the system runs, and reads the counters.
    pub fn observe(patch: &PatchStatus, window: Duration) -> anyhow::Result<PatchProof> {
        let probes = Self::attach(patch)?;
        thread::sleep(window);
        probes.proof()
    }
}
