//! The last step on the built module: references to non-exported kernel
//! symbols become livepatch relocations, which the kernel's module loader
//! resolves itself when the module loads (kernel/module/main.c hands every
//! `SHF_RELA_LIVEPATCH` section to `klp_apply_section_relocs()`, which finds
//! each `.klp.sym.vmlinux.<name>,<sympos>` by name and position in kallsyms
//! and refuses a name it cannot place). This is the format the kernel's
//! own livepatch modules use (`objtool klp post-link` writes the same), so
//! resolution is the kernel's, checked by the kernel, on every boot.
//!
//! A copied function of a module refers to that module's symbols the same
//! way (`.klp.sym.<module>.<name>,<sympos>`), in the same `vmlinux`
//! sections: the loader resolves those too at load, in the module as it is
//! loaded then (`klp_find_object_symbol()`), so such a patch loads only
//! while its module is loaded, and is bound to that instance of it
//! (kmend.ko refuses it once the module has gone: docs/safety.md, "Fixes
//! in modules"). The livepatch core's own way, module-specific sections
//! applied when the module comes, needs `klp_info` that only a livepatch
//! (`klp_enable_patch()`) patch uses.
//!
//! The linker cannot produce it (it knows no `SHN_LIVEPATCH` symbols), so
//! it is done on the linked `.ko`: each such symbol is marked
//! `SHN_LIVEPATCH`, and its relocations move from `.rela<sec>` to a new
//! `.klp.rela.vmlinux.<sec>` section aimed at the same section.

use std::collections::{
    HashMap,
    HashSet, //
};

use anyhow::{
    Context as _,
    bail, //
};

use super::{
    extract::klp_name,
    symbols::KernelSymbols,
};
use object::{
    build::{
        Id as _,
        elf::{
            Builder,
            SectionData,
            SectionId, //
        },
    },
    elf,
};

/// Section index of symbols the livepatch core resolves.
const SHN_LIVEPATCH: u16 = 0xff20;
/// Flag of relocation sections the livepatch core applies.
const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
const PREFIX: &[u8] = b".klp.sym.";

/// Refuses a `.klp.sym.vmlinux.<name>,<sympos>` that the kernel's loader
/// would not place (it would refuse the module at load): a name the
/// kernel does not have, a position it does not have, or position 0 for a
/// name it has several times. Module symbols are checked where they are
/// named (`symbols.rs`).
fn check_placeable(klp: &str, kernel: &KernelSymbols) -> anyhow::Result<()> {
    let Some((name, pos)) = klp.strip_prefix(".klp.sym.vmlinux.").and_then(|r| r.rsplit_once(',')) else {
        return Ok(());
    };
    let pos: usize = pos.parse().with_context(|| format!("{klp}: position"))?;
    let n = kernel.named(name).len();
    if n == 0 || pos > n || (pos == 0 && n > 1) {
        bail!("the patch module refers to '{name}' at position {pos}, which the kernel does not place: it has {n} symbols of that name");
    }
    Ok(())
}

/// Rewrites module `ko`; returns how many relocations it moved. Undefined
/// symbols the kernel has but does not export (objtool adds some when it
/// links the module, e.g. static call keys; a hand-written replacement may
/// name a kernel variable) are renamed to their livepatch names too; ones
/// that are neither the kernel's nor exported by `module_exports` are an
/// error here rather than a module the kernel refuses to load.
///
/// References into the modules named in `late` go to `.klp.rela.<module>.*`
/// sections instead, kept in memory (`SHF_ALLOC`): kmend.ko applies them
/// itself each time that module loads (kernel-module/module_relocs.rs).
pub fn post_link(ko: &[u8], kernel: &KernelSymbols, module_exports: &HashSet<String>, late: &[String]) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut b = Builder::read(ko).context("patch module")?;
    let mut klp = Vec::new();
    // The object each livepatch symbol is resolved in.
    let mut object_of: HashMap<usize, String> = HashMap::new();
    for s in b.symbols.iter_mut() {
        let name = String::from_utf8_lossy(&s.name).into_owned();
        let undefined = s.section.is_none() && s.st_shndx == elf::SHN_UNDEF && !name.is_empty();
        let linkable = kernel.is_exported(&name) || kernel.is_exported_by_module(&name) || module_exports.contains(&name);
        if undefined && !name.starts_with(".klp.") && !linkable {
            if kernel.named(&name).is_empty() {
                bail!("the patch module refers to '{name}', which is neither in the kernel nor exported to modules");
            }
            s.name = klp_name(&name, kernel.global_sympos(&name)?).into_bytes().into();
        }
        if s.name.starts_with(PREFIX) {
            if s.section.is_some() {
                bail!("{} is defined in the module: it must refer to the kernel", String::from_utf8_lossy(&s.name));
            }
            check_placeable(&String::from_utf8_lossy(&s.name), kernel)?;
            s.st_shndx = SHN_LIVEPATCH;
            s.set_st_info(elf::STB_GLOBAL, elf::STT_NOTYPE);
            klp.push(s.id());
            let object = s.name[PREFIX.len()..].split(|&c| c == b'.').next().unwrap_or_default();
            object_of.insert(s.id().index(), String::from_utf8_lossy(object).into_owned());
        }
    }
    let symtab = b.sections.iter().find(|s| matches!(s.data, SectionData::Symbol)).map(|s| s.id());
    // By target section and the object the section is applied for.
    let mut moved: HashMap<(usize, String), (SectionId, Vec<object::build::elf::Relocation>)> = HashMap::new();
    for s in b.sections.iter_mut() {
        let Some(target) = s.sh_info_section else { continue };
        let SectionData::Relocation(rs) = &mut s.data else { continue };
        let (to_kernel, rest): (Vec<object::build::elf::Relocation>, Vec<_>) = rs.iter().cloned().partition(|r| r.symbol.is_some_and(|x| klp.contains(&x)));
        for r in &to_kernel {
            let object = r.symbol.and_then(|x| object_of.get(&x.index())).cloned().unwrap_or_default();
            let applied_for = if late.contains(&object) { object } else { "vmlinux".to_owned() };
            moved.entry((target.index(), applied_for)).or_insert_with(|| (target, Vec::new())).1.push(r.clone());
        }
        if !to_kernel.is_empty() {
            *rs = rest;
        }
    }
    let count = moved.values().map(|(_, r)| r.len()).sum();
    let mut targets: Vec<_> = moved.into_iter().collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    for ((_, object), (target, relocations)) in targets {
        let name = [format!(".klp.rela.{object}.").as_bytes(), &b.sections.get(target).name].concat();
        // Applied later by kmend.ko: kept in memory with the module.
        let keep = if object == "vmlinux" { 0 } else { u64::from(elf::SHF_ALLOC) };
        let s = b.sections.add();
        s.name = name.into();
        s.sh_type = elf::SHT_RELA;
        s.sh_flags = SHF_RELA_LIVEPATCH | u64::from(elf::SHF_INFO_LINK) | keep;
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.sh_link_section = symtab;
        s.sh_info_section = Some(target);
        s.data = SectionData::Relocation(relocations);
    }
    let mut out = Vec::new();
    b.write(&mut out).context("writing the patch module")?;
    Ok((out, count))
}
