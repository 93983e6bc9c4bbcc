//! `cargo xtask patch build <dir>`: a patch, from source to shippable artifact.
//!
//! A patch directory holds `patch.toml` (id, CVEs, the functions it
//! replaces) and `patch.rs` (the replacements, in Rust). This generates the
//! patch module around them (descriptor, registration with kmend.ko),
//! builds it against the target kernel, takes each target's fingerprint
//! from the kernel image (or the target module) it was built against, and
//! packs `manifest.json` + `patch.ko` into `<id>.kmpatch` (format:
//! docs/feed-format.md). See docs/patch-format.md.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    path::{
        Path,
        PathBuf, //
    },
    process::Command,
};

use anyhow::{
    Context as _,
    anyhow,
    bail,
    ensure, //
};
use object::{
    Object as _,
    ObjectSection as _,
    ObjectSymbol as _, //
};
use serde::Deserialize;
use sha2::{
    Digest as _,
    Sha256, //
};

use crate::{
    kernel::Kernel,
    modules,
    paths,
    run::exec,
};

/// `patch.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    id: String,
    #[serde(default = "one")]
    version: u32,
    description: String,
    #[serde(default)]
    cves: Vec<String>,
    /// Cumulative: supersedes every applied patch.
    #[serde(default)]
    replace: bool,
    /// A unified diff against the kernel's source (path relative to the
    /// patch directory): the functions come from it (xtask/src/diff_patch).
    #[serde(default)]
    diff: Option<String>,
    /// A shell command that drives the patched code in the VM
    /// (`cargo xtask vm-test --patch <dir>` runs it while `kmend verify`
    /// watches); not part of the artifact.
    #[serde(default)]
    trigger: Option<String>,
    /// Hand-written replacements (patch.rs); none with `diff`.
    #[serde(rename = "function", default)]
    functions: Vec<SpecFunction>,
    /// Functions run around the switches (kernel-module/abi.rs
    /// `KmendCallbacks`): in patch.rs, or functions the diff adds.
    #[serde(default)]
    callbacks: SpecCallbacks,
}

/// `[callbacks]` of patch.toml: function names, each optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SpecCallbacks {
    pre_apply: Option<String>,
    post_apply: Option<String>,
    pre_revert: Option<String>,
    post_revert: Option<String>,
}

impl SpecCallbacks {
    /// `(field, function, returns an errno)` for each one given.
    fn named(&self) -> Vec<(&'static str, &str, bool)> {
        [
            ("pre_apply", &self.pre_apply, true),
            ("post_apply", &self.post_apply, false),
            ("pre_revert", &self.pre_revert, false),
            ("post_revert", &self.post_revert, false),
        ]
        .into_iter()
        .filter_map(|(field, name, ret)| Some((field, name.as_deref()?, ret)))
        .collect()
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFunction {
    #[serde(default = "vmlinux")]
    object: String,
    name: String,
    #[serde(default)]
    sympos: u64,
    /// The replacement in patch.rs (a `#[no_mangle] extern "C"` function).
    replacement: String,
}

fn vmlinux() -> String {
    "vmlinux".to_owned()
}

/// Most fingerprinted bytes per function (the kernel takes up to 64).
const FINGERPRINT_LEN: usize = 32;

/// A built patch.
pub struct BuiltPatch {
    pub id: String,
    /// The functions it replaces.
    pub functions: Vec<String>,
    pub module: PathBuf,
    pub artifact: PathBuf,
    /// patch.toml's `trigger`, for trying the patch in the VM.
    pub trigger: Option<String>,
}

fn check_name(what: &str, s: &str) -> anyhow::Result<()> {
    ensure!(
        !s.is_empty() && s.len() < 128 && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.'),
        "{what} '{s}' must be 1 to 127 characters of [A-Za-z0-9_.]"
    );
    Ok(())
}

fn read_spec(dir: &Path) -> anyhow::Result<Spec> {
    let path = dir.join("patch.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let spec: Spec = toml::from_str(&text).with_context(|| format!("{}: invalid patch spec", path.display()))?;
    check_name("patch id", &spec.id)?;
    match (&spec.diff, spec.functions.is_empty()) {
        (None, true) => bail!("{}: no [[function]] and no diff", path.display()),
        (Some(_), false) => bail!("{}: a patch has either a diff or [[function]]s, not both", path.display()),
        _ => {}
    }
    for (_, name, _) in spec.callbacks.named() {
        check_name("callback", name)?;
    }
    for f in &spec.functions {
        check_name("function", &f.name)?;
        check_name("object", &f.object)?;
        check_name("replacement", &f.replacement)?;
    }
    for cve in &spec.cves {
        ensure!(cve.starts_with("CVE-") && cve.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'), "bad CVE id '{cve}'");
    }
    Ok(spec)
}

/// How a fix's copied code reaches the internals of the modules it fixes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ModuleLinkage {
    /// It does not (a hand-written patch, or fixes to the kernel image).
    None,
    /// Resolved by the module loader when the patch module loads: the
    /// patch is valid for those loads of the modules only.
    AtLoad,
    /// Resolved by kmend.ko each time such a module loads.
    EachLoad,
}

/// The patch module's source: descriptor and registration around the
/// replacements, which are patch.rs or, for a diff, the copied functions
/// linked in from the fix's objects.
/// `linkage`: how the copied code reaches its target modules' internals.
/// `pinned`: modules whose static keys or static calls the copied code
/// uses.
fn generate(spec: &Spec, dir: &Path, linkage: ModuleLinkage, pinned: &[String]) -> anyhow::Result<String> {
    let abi = paths::repo().join("kernel-module/abi.rs");
    let replacements = if spec.diff.is_some() {
        let mut decls = String::new();
        for f in &spec.functions {
            writeln!(decls, "        pub(crate) fn {}();", f.replacement)?;
        }
        for (_, name, ret) in spec.callbacks.named() {
            writeln!(decls, "        pub(crate) fn {name}(){};", if ret { " -> kernel::ffi::c_int" } else { "" })?;
        }
        format!(
            "/// The changed functions, compiled from the fixed C source.\nmod replacements {{\n    unsafe extern \"C\" {{\n{decls}    }}\n}}"
        )
    } else {
        let patch_rs = dir.join("patch.rs").canonicalize().with_context(|| format!("{}/patch.rs", dir.display()))?;
        format!("#[path = \"{}\"]\nmod replacements;", patch_rs.display())
    };
    let mut callbacks = String::new();
    for (field, ret) in [("pre_apply", true), ("post_apply", false), ("pre_revert", false), ("post_revert", false)] {
        let given = spec.callbacks.named().into_iter().find(|(f, _, _)| *f == field).map(|(_, name, _)| name);
        let value = match given {
            Some(name) => format!("Some(replacements::{name} as unsafe extern \"C\" fn(){})", if ret { " -> c_int" } else { "" }),
            None => "None".to_owned(),
        };
        writeln!(callbacks, "            {field}: {value},")?;
    }
    let mut funcs = String::new();
    // Each kernel target, as the module loader places it by name and
    // position (a livepatch relocation, klp_relocs.rs): kmend.ko enables
    // the function at that address only.
    let mut placed = String::new();
    for (i, f) in spec.functions.iter().enumerate() {
        let at = if f.object == "vmlinux" {
            writeln!(placed, "    #[link_name = \"{}\"]\n    pub(crate) fn target_{i}();", crate::diff_patch::klp_name(&f.name, f.sympos))?;
            format!("targets::target_{i} as *const c_void")
        } else {
            "core::ptr::null()".to_owned()
        };
        writeln!(
            funcs,
            "            abi::KmendFunc {{ object: c\"{}\".as_ptr().cast(), name: c\"{}\".as_ptr().cast(), sympos: {}, new_func: replacements::{} as *const c_void, placed: {at} }},",
            f.object, f.name, f.sympos, f.replacement
        )?;
    }
    let targets = format!(
        "/// The functions this patch replaces, as the kernel's module loader places\n/// them by name and position (never called).\nmod targets {{\n    unsafe extern \"C\" {{\n{placed}    }}\n}}"
    );
    let mut pins = pinned_modules(pinned)?;
    if linkage == ModuleLinkage::EachLoad {
        pins.push_str(
            "\n/// A `livepatch` module: the kernel keeps its ELF relocation information,\n/// whose `.klp.rela.<module>.*` sections kmend.ko applies as each target\n/// module loads (kernel-module/module_relocs.rs). `used(compiler)`, as the\n/// `module!` macro's own entries: one `.modinfo` section.\n#[unsafe(link_section = \".modinfo\")]\n#[used(compiler)]\nstatic LIVEPATCH: [u8; 12] = *b\"livepatch=Y\\0\";\n",
        );
    }
    Ok(format!(
        r#"// SPDX-License-Identifier: GPL-2.0
//! Patch module '{id}', generated by `cargo xtask patch build` from
//! {src}: edit patch.toml and patch.rs there, not this file.

use kernel::{{
    error::to_result,
    ffi::{{
        c_int,
        c_void, //
    }},
    prelude::*,
}};

#[allow(dead_code, reason = "the shared ABI file defines more than one patch uses")]
#[path = "{abi}"]
mod abi;

{replacements}

{targets}
{pins}
module! {{
    type: KmendPatchModule,
    name: "{id}",
    authors: ["kmend patch build"],
    description: "kmend live patch {id}",
    license: "GPL",
}}

unsafe extern "C" {{
    /// Exported by kmend.ko (kernel-module/kmend_export.c).
    fn kmend_register_patch(patch: *const abi::KmendPatch) -> c_int;
    fn kmend_unregister_patch(patch: *const abi::KmendPatch);
}}

/// Calls `f` with this patch's descriptor (kmend copies what it keeps).
fn with_descriptor<R>(owner: *mut c_void, f: impl FnOnce(&abi::KmendPatch) -> R) -> R {{
    let funcs = [
{funcs}    ];
    let patch = abi::KmendPatch {{
        abi_version: abi::KMEND_ABI_VERSION,
        flags: {flags},
        id: c"{id}".as_ptr().cast(),
        owner,
        nfuncs: funcs.len() as u32,
        funcs: funcs.as_ptr(),
        cves: c"{cves}".as_ptr().cast(),
        callbacks: abi::KmendCallbacks {{
{callbacks}        }},
    }};
    f(&patch)
}}

struct KmendPatchModule {{
    owner: usize,
}}

impl kernel::Module for KmendPatchModule {{
    fn init(module: &'static ThisModule) -> Result<Self> {{
        let owner = module.as_ptr().cast::<c_void>();
        // SAFETY: a valid descriptor of this module, alive for the call.
        with_descriptor(owner, |p| to_result(unsafe {{ kmend_register_patch(p) }}))?;
        Ok(Self {{ owner: owner as usize }})
    }}
}}

impl Drop for KmendPatchModule {{
    fn drop(&mut self) {{
        // SAFETY: the descriptor this module registered (same id).
        with_descriptor(self.owner as *mut c_void, |p| unsafe {{ kmend_unregister_patch(p) }});
    }}
}}
"#,
        id = spec.id,
        src = dir.display(),
        abi = abi.display(),
        replacements = replacements,
        targets = targets,
        pins = pins,
        funcs = funcs,
        flags = {
            let flags: Vec<&str> = [
                spec.replace.then_some("abi::KMEND_PATCH_REPLACE"),
                (linkage == ModuleLinkage::AtLoad).then_some("abi::KMEND_PATCH_LINKED"),
                (linkage == ModuleLinkage::EachLoad).then_some("abi::KMEND_PATCH_MODULE_RELOCS"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if flags.is_empty() { "0".to_owned() } else { flags.join(" | ") }
        },
        cves = spec.cves.join(","),
        callbacks = callbacks,
    ))
}

/// The `kmend_pinned_modules` array of a patch whose copied code uses the
/// static keys or static calls of `modules`: each module's `struct
/// module`, as the module loader places it (its `__this_module`, by a
/// livepatch relocation). kmend.ko reads the array when the patch module
/// comes and keeps those modules loaded while it is loaded
/// (kernel-module/module_pins.rs). Empty for none.
fn pinned_modules(modules: &[String]) -> anyhow::Result<String> {
    if modules.is_empty() {
        return Ok(String::new());
    }
    let (mut decls, mut entries) = (String::new(), String::new());
    for (i, m) in modules.iter().enumerate() {
        writeln!(decls, "        #[link_name = \".klp.sym.{m}.__this_module,0\"]\n        pub(crate) static MODULE_{i}: u8;")?;
        writeln!(entries, "    &raw const pinned::MODULE_{i} as *const c_void,")?;
    }
    Ok(format!(
        r#"
/// The modules whose static keys or static calls this patch's code uses,
/// as the module loader places them (never read here).
mod pinned {{
    unsafe extern "C" {{
{decls}    }}
}}

/// Read by kmend.ko when this module comes, before its entries are linked to
/// those modules' keys: it keeps them loaded while this module is loaded.
#[repr(transparent)]
struct Pinned([*const c_void; {n}]);

// SAFETY: never written after the module loader filled it in.
unsafe impl Sync for Pinned {{}}

#[allow(non_upper_case_globals, reason = "the name kmend.ko looks up")]
#[no_mangle]
#[used]
static kmend_pinned_modules: Pinned = Pinned([
{entries}]);
"#,
        n = modules.len()
    ))
}

/// A function's code as built: its bytes, and which of them the module
/// loader relocates (none in a linked kernel image).
struct FunctionCode {
    /// Link-time address (in a .ko: the offset in its section).
    address: u64,
    /// In a .ko: the section holding it (the kernel shows where each
    /// section of a loaded module lies in /sys/module/<name>/sections/).
    section: Option<String>,
    bytes: Vec<u8>,
    relocated: Vec<usize>,
}

/// Picks the `sympos`-th (1-based; 0: must be unique) of `addrs`.
fn pick<T: Copy>(name: &str, what: &Path, addrs: &[T], sympos: u64) -> anyhow::Result<T> {
    match (addrs.len(), sympos) {
        (0, _) => bail!("'{name}' is not a function in {}", what.display()),
        (1, 0 | 1) => Ok(addrs[0]),
        (n, 0) => bail!("'{name}' is ambiguous in {} ({n} symbols): set sympos", what.display()),
        (n, p) => addrs.get(p as usize - 1).copied().ok_or_else(|| anyhow!("'{name}' has {n} symbols, not {p}")),
    }
}

/// The code of `name` in an ELF file with a symbol table (vmlinux, a .ko).
fn code_from_elf(elf_path: &Path, name: &str, sympos: u64) -> anyhow::Result<FunctionCode> {
    let data = fs::read(elf_path).with_context(|| format!("read {}", elf_path.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("{}: not ELF", elf_path.display()))?;
    let mut candidates: Vec<_> =
        file.symbols().filter(|s| s.kind() == object::SymbolKind::Text && s.name() == Ok(name)).collect();
    candidates.sort_by_key(|s| s.address());
    let indices: Vec<usize> = (0..candidates.len()).collect();
    let sym = &candidates[pick(name, elf_path, &indices, sympos)?];
    let section = file.section_by_index(sym.section_index().ok_or_else(|| anyhow!("'{name}' has no section"))?)?;
    let sdata = section.data()?;
    let start = (sym.address() - section.address()) as usize;
    let size = sym.size() as usize;
    let bytes = sdata.get(start..start + size).ok_or_else(|| anyhow!("'{name}' lies outside its section"))?.to_vec();
    let relocated = section
        .relocations()
        .map(|(offset, _)| offset as usize)
        .filter(|&off| off >= start && off < start + size)
        .map(|off| off - start)
        .collect();
    let section_name = section.name().ok().map(str::to_owned);
    Ok(FunctionCode { address: sym.address(), section: section_name, bytes, relocated })
}

/// The code of `name` in a stripped kernel image, located by `System.map`
/// (a function ends where the next symbol starts).
fn code_from_map(image: &Path, map: &Path, name: &str, sympos: u64) -> anyhow::Result<FunctionCode> {
    let text = fs::read_to_string(map).with_context(|| format!("read {}", map.display()))?;
    let mut all: Vec<u64> = Vec::new();
    let mut mine: Vec<u64> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(sym)) = (f.next(), f.next(), f.next()) else { continue };
        let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
        all.push(addr);
        if sym == name && matches!(kind, "t" | "T") {
            mine.push(addr);
        }
    }
    all.sort_unstable();
    mine.sort_unstable();
    let addr = pick(name, map, &mine, sympos)?;
    let end = all.iter().copied().find(|&a| a > addr).unwrap_or(addr + 64);
    let data = fs::read(image).with_context(|| format!("read {}", image.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("{}: not ELF", image.display()))?;
    let bytes = file
        .sections()
        .find_map(|s| {
            let (lo, hi) = (s.address(), s.address() + s.size());
            (addr >= lo && end <= hi).then(|| s.data().ok()?.get((addr - lo) as usize..(end - lo) as usize).map(<[u8]>::to_vec))
        })
        .flatten()
        .ok_or_else(|| anyhow!("'{name}' at {addr:#x} is not in {}", image.display()))?;
    Ok(FunctionCode { address: addr, section: None, bytes, relocated: Vec::new() })
}

/// The name kallsyms gives the address of vmlinux symbol `name`, when that
/// is another name (an alias: `SYSCALL_DEFINE0` makes `__x64_sys_X` an
/// alias of `__do_sys_X`). kmend.ko checks a target's name against what
/// the kernel says its address is, so the patch must use that one. Among
/// the names at one address kallsyms reports the first in its order
/// (scripts/kallsyms.c): non-weak before weak, fewer leading underscores
/// first, then `nm -n`'s order, which is by name.
fn kallsyms_name(kernel: &Kernel, name: &str) -> anyhow::Result<Option<String>> {
    // (address, name, weak) of every text symbol.
    let symbols: Vec<(u64, String, bool)> = match &kernel.system_map {
        Some(map) => fs::read_to_string(map)
            .with_context(|| format!("read {}", map.display()))?
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (addr, kind, sym) = (f.next()?, f.next()?, f.next()?);
                matches!(kind, "t" | "T" | "W" | "w").then(|| Some((u64::from_str_radix(addr, 16).ok()?, sym.to_owned(), kind.eq_ignore_ascii_case("w"))))?
            })
            .collect(),
        None => {
            let data = fs::read(&kernel.vmlinux).with_context(|| format!("read {}", kernel.vmlinux.display()))?;
            let file = object::File::parse(&*data)?;
            file.symbols()
                .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
                .filter_map(|s| Some((s.address(), s.name().ok()?.to_owned(), s.is_weak())))
                .collect()
        }
    };
    let addrs: Vec<u64> = symbols.iter().filter(|(_, n, _)| n == name).map(|(a, _, _)| *a).collect();
    let [addr] = addrs.as_slice() else { return Ok(None) };
    let canonical = symbols
        .iter()
        .filter(|(a, _, _)| a == addr)
        .min_by_key(|(_, n, weak)| (*weak, n.bytes().take_while(|&c| c == b'_').count(), n.clone()))
        .map(|(_, n, _)| n.clone());
    Ok(canonical.filter(|c| c != name))
}

/// The link-time address of the kernel's `_text` (what `text_offset`s in
/// the manifest count from).
fn text_address(kernel: &Kernel) -> anyhow::Result<u64> {
    let code = match &kernel.system_map {
        Some(map) => {
            let text = fs::read_to_string(map).with_context(|| format!("read {}", map.display()))?;
            text.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                let addr = f.next()?;
                (f.nth(1)? == "_text").then(|| u64::from_str_radix(addr, 16).ok()).flatten()
            })
        }
        None => {
            let data = fs::read(&kernel.vmlinux).with_context(|| format!("read {}", kernel.vmlinux.display()))?;
            let file = object::File::parse(&*data)?;
            file.symbols().find(|s| s.name() == Ok("_text")).map(|s| s.address())
        }
    };
    code.ok_or_else(|| anyhow!("no _text symbol for the {} kernel", kernel.flavor.name()))
}

/// `<offset>:<hex>`: up to [`FINGERPRINT_LEN`] bytes of a function's body
/// after its ftrace call site: whole instructions, ending before the first
/// one the kernel may rewrite after the build (see [`rewritable`]) or the
/// module loader relocates. What the kernel then compares are bytes that
/// are the same on every boot of that kernel.
fn fingerprint(code: &FunctionCode, name: &str) -> anyhow::Result<String> {
    use iced_x86::{
        Decoder,
        DecoderOptions, //
    };
    let bytes = &code.bytes;
    let site = if bytes.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) { 4 } else { 0 };
    let call = bytes.get(site) == Some(&0xe8);
    let nop5 = bytes.get(site..site + 5) == Some(&[0x0f, 0x1f, 0x44, 0x00, 0x00][..]);
    ensure!(call || nop5, "'{name}' has no ftrace call site (notrace?)");
    let body = site + 5;
    let mut end = body;
    let mut decoder = Decoder::with_ip(64, &bytes[body..], 0, DecoderOptions::NONE);
    while decoder.can_decode() {
        let insn = decoder.decode();
        let next = body + insn.next_ip() as usize;
        if insn.is_invalid()
            || next - body > FINGERPRINT_LEN
            || rewritable(&insn)
            || code.relocated.iter().any(|&r| r >= end && r < next)
        {
            break;
        }
        end = next;
    }
    Ok(format!("{body}:{}", hex::encode(&bytes[body..end])))
}

/// Whether the kernel may rewrite `insn` after the build: branches, calls
/// and returns (retpolines, return thunks, call depth tracking, static
/// calls, jump labels, paravirt), NOPs (alternatives and jump label sites),
/// LOCK prefixes (removed on one CPU), ENDBR (sealed under IBT) and absolute
/// kernel addresses (moved by KASLR).
fn rewritable(insn: &iced_x86::Instruction) -> bool {
    use iced_x86::{
        FlowControl,
        Mnemonic,
        OpKind,
        Register, //
    };
    let kernel_address = |v: u64| v >= 0xffff_ffff_0000_0000;
    insn.flow_control() != FlowControl::Next
        || matches!(insn.mnemonic(), Mnemonic::Nop | Mnemonic::Endbr64 | Mnemonic::Int3)
        || insn.has_lock_prefix()
        || (0..insn.op_count()).any(|i| match insn.op_kind(i) {
            OpKind::Memory => insn.memory_base() != Register::RIP && kernel_address(insn.memory_displacement64()),
            OpKind::Immediate32to64 | OpKind::Immediate64 => insn.try_immediate(i).is_ok_and(kernel_address),
            _ => false,
        })
}

/// Builds the patch in `dir` against `kernel`; `extra_symbols` are the
/// Module.symvers of kmend.ko; `targets` maps module names to built `.ko`s
/// (for patches on modules).
pub fn build(kernel: &Kernel, dir: &Path, extra_symbols: &Path, targets: &[PathBuf]) -> anyhow::Result<BuiltPatch> {
    let mut spec = read_spec(dir)?;
    let out = kernel.out_dir("patches").join(&spec.id);
    fs::create_dir_all(&out)?;
    // A diff: its changed functions are the replacements, linked in as
    // objects next to the generated descriptor.
    let fix = match &spec.diff {
        Some(diff) => {
            let callbacks: Vec<String> = spec.callbacks.named().iter().map(|(_, name, _)| (*name).to_owned()).collect();
            let fix = crate::diff_patch::build_objects(kernel, &dir.join(diff), &spec.id, &callbacks, &out)?;
            spec.functions = fix
                .targets
                .iter()
                .map(|t| SpecFunction { object: t.object.clone(), name: t.name.clone(), sympos: t.sympos, replacement: t.replacement.clone() })
                .collect();
            Some(fix)
        }
        None => None,
    };
    for f in spec.functions.iter_mut().filter(|f| f.object == "vmlinux") {
        if let Some(name) = kallsyms_name(kernel, &f.name)? {
            println!("xtask: {}: '{}' is an alias of '{name}', the name the kernel knows that address by", spec.id, f.name);
            f.name = name;
        }
    }
    // Modules whose internals the copied code refers to. kmend.ko resolves
    // those references each time such a module loads, so the patch follows
    // the module's reloads; but a copy that uses a module's static keys or
    // calls must have them when the patch module loads (the kernel links
    // its special sections then): then every reference is resolved by the
    // module loader, and the patch is bound to the modules' loads then
    // (klp_relocs.rs).
    let links: Vec<String> = match &fix {
        Some(_) => spec.functions.iter().filter(|f| f.object != "vmlinux").map(|f| f.object.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
        None => Vec::new(),
    };
    let pinned: Vec<String> = fix.as_ref().map(|f| f.pinned.iter().cloned().collect()).unwrap_or_default();
    let linkage = match (links.is_empty(), pinned.is_empty()) {
        (true, _) => ModuleLinkage::None,
        (false, true) => ModuleLinkage::EachLoad,
        (false, false) => ModuleLinkage::AtLoad,
    };
    let source = generate(&spec, dir, linkage, &pinned)?;
    let main = match &fix {
        Some(_) => format!("{}_main", spec.id),
        None => spec.id.clone(),
    };
    let rs = out.join(format!("{main}.rs"));
    if fs::read_to_string(&rs).ok().as_deref() != Some(&source) {
        fs::write(&rs, &source)?;
    }
    let mut kbuild = format!("# SPDX-License-Identifier: GPL-2.0\n# Generated by cargo xtask patch build.\nobj-m := {}.o\n", spec.id);
    if let Some(fix) = &fix {
        writeln!(kbuild, "{}-y := {main}.o {}", spec.id, fix.objects.join(" "))?;
    }
    if fs::read_to_string(out.join("Kbuild")).ok().as_deref() != Some(&kbuild) {
        fs::write(out.join("Kbuild"), &kbuild)?;
    }
    // The patch source (and what it includes from its parent) may lie
    // outside the repository: the chroot must see it.
    let source_dir = dir.canonicalize()?.parent().map(Path::to_path_buf).unwrap_or_default();
    // Replacements may refer to kernel symbols that are not exported (a
    // fix's copied code always may), which modpost cannot find: the kernel
    // resolves them when the module loads (post_link), and post_link fails
    // the build on a name that is nowhere.
    modules::kbuild_with(
        kernel,
        &out,
        &[extra_symbols.to_owned()],
        &[source_dir],
        &["KBUILD_MODPOST_WARN=1"],
        &format!("patch-{}-{}", spec.id, kernel.flavor.name()),
    )?;
    let mut module = kernel.strip_debug(&out.join(format!("{}.ko", spec.id)))?;
    let late = if linkage == ModuleLinkage::EachLoad { links.clone() } else { Vec::new() };
    let (ko, moved) = crate::diff_patch::post_link(kernel, &fs::read(&module)?, &[extra_symbols], &late)
        .with_context(|| format!("patch '{}'", spec.id))?;
    if moved > 0 {
        let linked = out.join(format!("{}.klp.ko", spec.id));
        fs::write(&linked, ko)?;
        println!("xtask: {}: {moved} references resolved by the kernel when the module loads", spec.id);
        module = linked;
    }
    // Signed last: the artifact's hash covers the signature too.
    let module = crate::module_signing::sign(kernel, &module)?;

    let text = text_address(kernel)?;
    let mut functions = Vec::new();
    for f in &spec.functions {
        let code = match (f.object.as_str(), &kernel.system_map) {
            ("vmlinux", Some(map)) => code_from_map(&kernel.vmlinux, map, &f.name, f.sympos)?,
            ("vmlinux", None) => code_from_elf(&kernel.vmlinux, &f.name, f.sympos)?,
            (object, _) => {
                let ko = targets
                    .iter()
                    .chain(fix.iter().flat_map(|f| &f.modules))
                    .find(|t| t.file_stem().and_then(|s| s.to_str()) == Some(object))
                    .ok_or_else(|| anyhow!("patch '{}': no built module '{object}' to fingerprint", spec.id))?;
                code_from_elf(ko, &f.name, f.sympos)?
            }
        };
        let mut function = serde_json::json!({
            "object": f.object,
            "name": f.name,
            "sympos": f.sympos,
            "replacement": f.replacement,
            "fingerprint": fingerprint(&code, &f.name)?,
        });
        match (&code.section, f.object.as_str()) {
            (_, "vmlinux") => function["text_offset"] = serde_json::json!(code.address - text),
            (Some(section), _) => {
                function["section"] = serde_json::json!(section);
                function["text_offset"] = serde_json::json!(code.address);
            }
            (None, _) => {}
        }
        functions.push(function);
    }
    let ko = fs::read(&module)?;
    let build_id = crate::kernel::build_id(&kernel.vmlinux)?;
    let manifest = serde_json::json!({
        "format": 1,
        "id": spec.id,
        "version": spec.version,
        "description": spec.description,
        "kernel": { "release": kernel.release, "build_id": build_id },
        "cves": spec.cves,
        "replace": spec.replace,
        // Modules the patch module needs loaded to load at all.
        "links": if linkage == ModuleLinkage::AtLoad { links.clone() } else { Vec::new() },
        "functions": functions,
        "module_sha256": hex::encode(Sha256::digest(&ko)),
    });
    let stage = out.join("artifact");
    fs::create_dir_all(&stage)?;
    fs::write(stage.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    fs::write(stage.join("patch.ko"), &ko)?;
    let artifact = out.join(format!("{}.kmpatch", spec.id));
    exec(
        Command::new("tar")
            .args(["--format=ustar", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-cf"])
            .arg(&artifact)
            .arg("-C")
            .arg(&stage)
            .args(["manifest.json", "patch.ko"]),
    )?;
    let functions = spec.functions.iter().map(|f| f.name.clone()).collect();
    Ok(BuiltPatch { id: spec.id, functions, module, artifact, trigger: spec.trigger })
}

#[cfg(test)]
mod tests {
    use super::{
        FunctionCode,
        fingerprint, //
    };

    fn code(bytes: &[u8], relocated: &[usize]) -> FunctionCode {
        FunctionCode { address: 0, section: None, bytes: bytes.to_vec(), relocated: relocated.to_vec() }
    }

    #[test]
    fn fingerprint_stops_before_what_the_kernel_rewrites() {
        // ENDBR, call __fentry__, mov %rdi,%rbx, mov $<kernel address>,%rsi (KASLR moves it), ret.
        let f = [0xf3, 0x0f, 0x1e, 0xfa, 0xe8, 0, 0, 0, 0, 0x48, 0x89, 0xfb, 0x48, 0xc7, 0xc6, 0, 0, 0, 0x82, 0xc3];
        assert_eq!(fingerprint(&code(&f, &[]), "f").unwrap(), "9:4889fb");
        // NOP5 site, xor %eax,%eax, call (a static call or thunk may be rewritten).
        let g = [0x0f, 0x1f, 0x44, 0, 0, 0x31, 0xc0, 0xe8, 1, 2, 3, 4, 0xc3];
        assert_eq!(fingerprint(&code(&g, &[]), "g").unwrap(), "5:31c0");
        // A NOP (alternative or jump label site) ends it too.
        let h = [0xe8, 0, 0, 0, 0, 0x31, 0xc0, 0x0f, 0x1f, 0x44, 0, 0, 0x31, 0xc0];
        assert_eq!(fingerprint(&code(&h, &[]), "h").unwrap(), "5:31c0");
        // A byte the module loader relocates ends it before its instruction:
        // mov 0x0(%rip),%rax with a relocation at offset 3 of that instruction.
        let m = [0xe8, 0, 0, 0, 0, 0x31, 0xc0, 0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3];
        assert_eq!(fingerprint(&code(&m, &[10]), "m").unwrap(), "5:31c0");
        assert_eq!(fingerprint(&code(&m, &[]), "m").unwrap(), "5:31c0488b0500000000");
        // No ftrace site: refused.
        assert!(fingerprint(&code(&[0x31, 0xc0, 0xc3], &[]), "n").is_err());
    }
}
