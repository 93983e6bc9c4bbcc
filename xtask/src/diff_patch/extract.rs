//! The patch's code: the changed functions, copied out of the patched
//! object with what they need, and nothing else.
//!
//! Kept: the changed functions (renamed, global: the replacements), their
//! `.cold` parts, functions the fix adds, anonymous data they use (string
//! literals, jump tables), and their entries of the special sections the
//! module loader and objtool read (bug table, exception table, jump
//! labels, alternatives, ftrace call sites, objtool annotations). Every
//! other reference goes to the running kernel's own symbol: the module
//! loader links exported ones; the rest become livepatch relocations
//! (`.klp.sym.vmlinux.<name>,<sympos>`), which [`super::klp_relocs`] turns
//! into the form the kernel resolves when it loads the module. The kernel's
//! data is never copied: a fix's code works on the running kernel's state.

use std::collections::{
    BTreeMap,
    BTreeSet,
    HashMap,
    HashSet, //
};

use anyhow::{
    Context as _,
    anyhow,
    bail, //
};
use object::{
    build::{
        Id as _,
        elf::{
            Builder,
            Relocation,
            SectionData,
            SectionId,
            SymbolId, //
        },
    },
    elf,
};

use super::{
    compare::{
        Changes,
        parent_of_cold,
        pc_relative, //
    },
    static_locals::{
        Match,
        StaticLocals,
        numbered, //
    },
    symbols::{
        KernelSymbols,
        ModuleSymbols, //
    },
};

/// A function the patch replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `vmlinux`, or the module the function is in.
    pub object: String,
    pub name: String,
    pub sympos: u64,
    /// Its copy in the patch module.
    pub replacement: String,
}

/// The extracted object and what it holds.
pub struct Extracted {
    pub object: Vec<u8>,
    pub targets: Vec<Target>,
    /// Functions copied besides the targets (cold parts, new functions).
    pub helpers: Vec<String>,
    /// Non-exported kernel symbols the copies refer to, as the kernel will
    /// resolve them (`name,sympos`, or `module:name,sympos` for a module's).
    pub kernel_references: BTreeSet<String>,
    /// Modules whose static keys or static calls the copies' special
    /// section entries refer to: kept loaded while the patch module is.
    pub pinned: BTreeSet<String>,
}

/// Entry size and, in each entry, where the relocation naming the code it
/// belongs to lies.
fn special_layout(name: &str) -> Option<(u64, u64)> {
    Some(match name {
        // bug_addr, format, file, line, flags (relative pointers, verbose).
        "__bug_table" => (16, 0),
        // code, target, key.
        "__jump_table" => (16, 0),
        // insn, fixup, data.
        "__ex_table" => (12, 0),
        // instr_offset, repl_offset, ft_flags, instrlen, replacementlen.
        ".altinstructions" => (14, 0),
        "__mcount_loc" => (8, 0),
        ".discard.annotate_insn" => (8, 0),
        _ => return None,
    })
}

/// What objtool adds to an object after the compiler (unwind data, call
/// and return sites, static call sites, prefix symbols): a module's objects
/// get it as each is compiled, the kernel image's only on `vmlinux.o`. The
/// copy is left without it: objtool makes it for the whole patch module
/// when kbuild links it (and refuses an object that has it already).
const OBJTOOL_SECTIONS: &[&str] = &[
    ".orc_unwind",
    ".orc_unwind_ip",
    ".orc_header",
    ".return_sites",
    ".call_sites",
    ".retpoline_sites",
    ".ibt_endbr_seal",
    ".static_call_sites",
];

/// Whether `name` is a symbol objtool adds (`__pfx_<f>`: the padding before
/// function `f`; `__cfi_<f>`: its CFI hash): not functions of their own.
pub fn objtool_symbol(name: &str) -> bool {
    name.starts_with("__pfx_") || name.starts_with("__cfi_")
}

/// Whether the copy gets its own instance of the variable `o` of the
/// patched object, rather than using the running kernel's: one the fix
/// adds, or one that holds nothing (of no size: `__key` without lockdep).
/// A numbered static is decided by its match, not by its name
/// (`static_locals.rs`).
fn copied_variable(o: &Sym, orig_names: &BTreeSet<String>, statics: &StaticLocals) -> anyhow::Result<bool> {
    if o.size == 0 && numbered(&o.name) {
        return Ok(true);
    }
    match statics.get(&o.name) {
        Some(Match::Orig(_)) => Ok(false),
        Some(Match::New) => Ok(true),
        Some(Match::Unclear(reason)) => Err(anyhow!("{reason}")),
        None => Ok(!orig_names.contains(&o.name)),
    }
}

struct Sym {
    name: String,
    section: Option<SectionId>,
    value: u64,
    size: u64,
    st_type: u8,
    global: bool,
}

/// Copies the changed functions of `patched` into a new object.
/// `orig_names`: the functions and variables of the original object;
/// `statics`: the patched object's numbered static variables matched to
/// the original's;
/// `prefix`: what replacements are named (`<prefix><function>`);
/// `roots`: functions the diff adds that the patch module keeps by their
/// names though no changed code of this object calls them (the patch's
/// callbacks, and new functions another object of the fix calls): a
/// reference to one is linked inside the patch module; `module`: the module the object is
/// built into (its symbols, which its copied code refers to), `None` for
/// the kernel image.
pub fn extract(
    patched: &[u8],
    orig_names: &BTreeSet<String>,
    statics: &StaticLocals,
    changes: &Changes,
    roots: &[String],
    kernel: &KernelSymbols,
    module: Option<&ModuleSymbols>,
    prefix: &str,
) -> anyhow::Result<Extracted> {
    let mut b = Builder::read(patched).context("patched object")?;
    let objtool_made: HashSet<usize> = b
        .sections
        .iter()
        .filter(|s| {
            let of = |x: &object::build::elf::Section| OBJTOOL_SECTIONS.iter().any(|n| n.as_bytes() == x.name.as_slice());
            of(s) || s.sh_info_section.is_some_and(|t| of(b.sections.get(t)))
        })
        .map(|s| s.id().index())
        .collect();
    let syms: HashMap<usize, Sym> = b
        .symbols
        .iter()
        .map(|s| {
            let sym = Sym {
                name: String::from_utf8_lossy(&s.name).into_owned(),
                section: s.section,
                value: s.st_value,
                size: s.st_size,
                st_type: s.st_type(),
                global: s.st_bind() != elf::STB_LOCAL,
            };
            (s.id().index(), sym)
        })
        .collect();
    let globals: Vec<String> = syms.values().filter(|s| s.global && s.section.is_some()).map(|s| s.name.clone()).collect();
    let own: BTreeSet<String> = syms.values().filter(|s| s.section.is_some() && !s.name.is_empty()).map(|s| s.name.clone()).collect();
    let section_name = |b: &Builder, id: SectionId| String::from_utf8_lossy(&b.sections.get(id).name).into_owned();
    let mut rela_of: HashMap<usize, SectionId> = HashMap::new();
    let section_ids: HashMap<usize, SectionId> = b.sections.iter().map(|s| (s.id().index(), s.id())).collect();
    for s in &b.sections {
        if let (SectionData::Relocation(_), Some(t)) = (&s.data, s.sh_info_section) {
            rela_of.insert(t.index(), s.id());
        }
    }
    let relocations = |b: &Builder, id: SectionId| -> Vec<Relocation> {
        match rela_of.get(&id.index()).map(|r| &b.sections.get(*r).data) {
            Some(SectionData::Relocation(r)) => r.clone(),
            _ => Vec::new(),
        }
    };
    let is_text = |b: &Builder, id: SectionId| b.sections.get(id).sh_flags & u64::from(elf::SHF_EXECINSTR) != 0;
    let functions_in = |id: SectionId| syms.values().filter(move |s| s.section == Some(id) && s.st_type == elf::STT_FUNC);
    let objects_in = |id: SectionId| syms.values().filter(move |s| s.section == Some(id) && s.st_type == elf::STT_OBJECT);
    let wanted = |name: &str| changes.changed.contains(name) || parent_of_cold(name).is_some_and(|p| changes.changed.contains(p));

    // What to keep: the changed code, and what only it can provide.
    let mut keep: HashSet<usize> = HashSet::new();
    let root = |name: &str| wanted(name) || (changes.added.contains(name) && roots.iter().any(|r| r == name));
    let mut queue: Vec<SectionId> = syms.values().filter(|s| s.st_type == elf::STT_FUNC && root(&s.name)).filter_map(|s| s.section).collect();
    let mut entries: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    loop {
        while let Some(id) = queue.pop() {
            if !keep.insert(id.index()) {
                continue;
            }
            for r in relocations(&b, id) {
                let Some(sym) = r.symbol.and_then(|s| syms.get(&s.index())) else { continue };
                let Some(t) = sym.section else { continue };
                if keep.contains(&t.index()) || b.sections.get(t).sh_flags & u64::from(elf::SHF_ALLOC) == 0 {
                    continue;
                }
                let own = if is_text(&b, t) {
                    functions_in(t).any(|f| changes.added.contains(&f.name) || wanted(&f.name))
                } else {
                    // Anonymous data, data the fix adds, and constants the
                    // compiler named for one function (`__func__.3`): their
                    // copies read the same, and the kernel has many of each
                    // name, which no position could single out.
                    let read_only = b.sections.get(t).sh_flags & u64::from(elf::SHF_WRITE) == 0;
                    let mut objects = objects_in(t).peekable();
                    objects.peek().is_none()
                        || (read_only && objects_in(t).all(|o| numbered(&o.name)))
                        || objects_in(t).map(|o| copied_variable(o, orig_names, statics)).collect::<anyhow::Result<Vec<bool>>>()?.contains(&true)
                };
                if own {
                    queue.push(t);
                }
            }
        }
        // Special-section entries of kept code, and what those refer to.
        let before = keep.len();
        entries.clear();
        for s in b.sections.iter() {
            let name = section_name(&b, s.id());
            if name == "__patchable_function_entries" && s.sh_link_section.is_some_and(|l| keep.contains(&l.index())) {
                queue.push(s.id());
                continue;
            }
            let Some((size, anchor)) = special_layout(&name) else { continue };
            let mut kept = Vec::new();
            for r in relocations(&b, s.id()) {
                if r.r_offset % size != anchor {
                    continue;
                }
                let target = r.symbol.and_then(|x| syms.get(&x.index())).and_then(|x| x.section);
                if target.is_some_and(|t| keep.contains(&t.index()) && is_text(&b, t)) {
                    kept.push(r.r_offset - anchor);
                }
            }
            if kept.is_empty() {
                continue;
            }
            kept.sort_unstable();
            entries.insert(s.id().index(), kept);
            for r in relocations(&b, s.id()) {
                let Some(t) = r.symbol.and_then(|x| syms.get(&x.index())).and_then(|x| x.section) else { continue };
                let in_kept_entry = entries[&s.id().index()].iter().any(|&e| r.r_offset >= e && r.r_offset < e + size);
                let anonymous = !is_text(&b, t) && objects_in(t).next().is_none();
                if in_kept_entry && anonymous && !keep.contains(&t.index()) {
                    queue.push(t);
                }
            }
            if name == ".altinstructions"
                && let Some(repl) = b.sections.iter().find(|x| x.name.as_slice() == b".altinstr_replacement")
            {
                queue.push(repl.id());
            }
        }
        queue.retain(|id| !keep.contains(&id.index()));
        if queue.is_empty() && keep.len() == before {
            break;
        }
    }

    // Other sections may point at a copied function (exports, function
    // pointer tables, initcalls): those keep pointing at the original,
    // which the switch redirects. A section pointing *into* a copied body
    // annotates its instructions: one this builder does not know would be
    // lost, so it refuses. (`.smp_locks` only matters on one CPU.)
    for s in b.sections.iter() {
        let id = s.id();
        if keep.contains(&id.index()) || entries.contains_key(&id.index()) || s.sh_flags & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        let name = section_name(&b, id);
        if name == ".smp_locks" || objtool_made.contains(&id.index()) {
            continue;
        }
        for r in relocations(&b, id) {
            let Some(sym) = r.symbol.and_then(|x| syms.get(&x.index())) else { continue };
            let Some(t) = sym.section.filter(|t| keep.contains(&t.index()) && is_text(&b, *t)) else { continue };
            let at = sym.value as i64 + r.r_addend + if pc_relative(r.r_type) { 4 } else { 0 };
            let at_entry = functions_in(t).any(|f| f.value as i64 == at);
            if !at_entry {
                bail!("section {name} annotates instructions of the changed code: this kind of special section is not supported yet");
            }
        }
    }

    // Filtered special sections.
    for (&ix, kept) in &entries {
        let id = section_ids[&ix];
        let name = section_name(&b, id);
        let (size, _) = special_layout(&name).ok_or_else(|| anyhow!("{name}"))?;
        let SectionData::Data(data) = &b.sections.get(id).data else { bail!("{name} has no data") };
        let mut new = Vec::new();
        let mut moved = HashMap::new();
        for (i, &e) in kept.iter().enumerate() {
            new.extend_from_slice(data.get(e as usize..(e + size) as usize).ok_or_else(|| anyhow!("{name}: entry outside the section"))?);
            moved.insert(e, i as u64 * size);
        }
        let section = b.sections.get_mut(id);
        section.sh_size = new.len() as u64;
        section.data = SectionData::Data(new.into());
        if let Some(&rela) = rela_of.get(&ix)
            && let SectionData::Relocation(rs) = &mut b.sections.get_mut(rela).data
        {
            rs.retain(|r| moved.contains_key(&(r.r_offset - r.r_offset % size)));
            for r in rs.iter_mut() {
                let base = r.r_offset - r.r_offset % size;
                r.r_offset = moved[&base] + r.r_offset % size;
            }
        }
        keep.insert(ix);
    }

    // References to what was not kept: the running kernel's symbols.
    let mut external: HashMap<String, SymbolId> = HashMap::new();
    let mut kernel_references = BTreeSet::new();
    let mut pinned = BTreeSet::new();
    let mut rewrites: Vec<(SectionId, usize, SymbolId, i64)> = Vec::new();
    let mut pending: Vec<(SectionId, usize, String, i64)> = Vec::new();
    for &ix in &keep {
        let id = section_ids[&ix];
        for (i, r) in relocations(&b, id).iter().enumerate() {
            let Some(sid) = r.symbol else { continue };
            let sym = &syms[&sid.index()];
            let (name, global, addend) = match sym.section {
                Some(t) if keep.contains(&t.index()) => continue,
                Some(t) => {
                    // The named symbol the reference lands in.
                    let at = sym.value as i64 + r.r_addend + if pc_relative(r.r_type) { 4 } else { 0 };
                    // The symbol covering the target; else the nearest one of
                    // that section (an instruction with an immediate after its
                    // rel32 has an addend below -4, and `&array[-1]` is legal
                    // arithmetic): a section lies in the kernel as one block,
                    // so any of its symbols with the addend adjusted lands on
                    // the same byte.
                    let named = || {
                        syms.values().filter(|y| y.section == Some(t) && matches!(y.st_type, elf::STT_FUNC | elf::STT_OBJECT) && !objtool_symbol(&y.name))
                    };
                    let y = named()
                        .find(|y| (y.value as i64) <= at && at < (y.value + y.size.max(1)) as i64)
                        .or_else(|| named().min_by_key(|y| (y.value as i64 - at).abs()))
                        .ok_or_else(|| anyhow!("a reference to {}{at:+} in a section with no symbol", section_name(&b, t)))?;
                    // The object's own symbols are its module's, when it is
                    // built into one: found in that module, exported or not
                    // (the patch must not depend on the module to load).
                    // A static variable is the original's of its match,
                    // placed among the original's symbols.
                    let (y_name, placed_by) = match statics.get(&y.name) {
                        Some(Match::Orig(o)) => (o.as_str(), orig_names),
                        _ => (y.name.as_str(), &own),
                    };
                    let name = match module {
                        Some(m) => m.klp_name_in(y_name, placed_by)?,
                        None => {
                            let sympos = if y.global {
                                kernel.global_sympos(y_name)?
                            } else {
                                kernel.sympos(y_name, y.st_type == elf::STT_FUNC, &globals, placed_by)?
                            };
                            let exported = y.global && kernel.is_exported(y_name);
                            if exported { y_name.to_owned() } else { klp_name(y_name, sympos) }
                        }
                    };
                    (name, true, r.r_addend + sym.value as i64 - y.value as i64)
                }
                None if sym.name.is_empty() => continue,
                None => match module {
                    // Defined by another object of the module.
                    Some(m) if m.defines(&sym.name) => (m.klp_name(&sym.name)?, true, r.r_addend),
                    // Exported by a module the patched module depends on.
                    Some(_) if kernel.is_exported_by_module(&sym.name) => continue,
                    _ if kernel.is_exported(&sym.name) || sym.name.starts_with("kmend_") || roots.contains(&sym.name) => continue,
                    _ => (klp_name(&sym.name, kernel.global_sympos(&sym.name)?), true, r.r_addend),
                },
            };
            let _ = global;
            if let Some(rest) = name.strip_prefix(".klp.sym.vmlinux.") {
                kernel_references.insert(rest.to_owned());
            } else if let (Some(m), Some(rest)) = (module, name.strip_prefix(".klp.sym.")) {
                // A static key or static call of the module, in a special
                // section: the kernel links the patch's entries to the
                // module's key when the patch loads and reads the key again
                // when it unloads, so kmend.ko keeps the module loaded as
                // long as the patch module is (kernel-module/module_pins.rs).
                let section = section_name(&b, id);
                if special_layout(&section).is_some() && section != "__bug_table" && section != "__ex_table" {
                    pinned.insert(m.name.clone());
                }
                kernel_references.insert(rest.replacen('.', ":", 1));
            }
            pending.push((id, i, name, addend));
        }
    }
    for (id, i, name, addend) in pending {
        let sid = *external.entry(name.clone()).or_insert_with(|| {
            let s = b.symbols.add();
            s.name = name.into_bytes().into();
            s.set_st_info(elf::STB_GLOBAL, elf::STT_NOTYPE);
            s.id()
        });
        rewrites.push((id, i, sid, addend));
    }
    for (id, i, sid, addend) in rewrites {
        let rela = rela_of[&id.index()];
        if let SectionData::Relocation(rs) = &mut b.sections.get_mut(rela).data {
            rs[i].symbol = Some(sid);
            rs[i].r_addend = addend;
        }
    }

    // Declarations the kept code does not use: the module loader would
    // try to resolve each one.
    let mut used: HashSet<usize> = HashSet::new();
    for sec in b.sections.iter() {
        if let (SectionData::Relocation(rs), Some(t)) = (&sec.data, sec.sh_info_section)
            && keep.contains(&t.index())
        {
            used.extend(rs.iter().filter_map(|r| r.symbol.map(|x| x.index())));
        }
    }
    for s in b.symbols.iter_mut() {
        if s.section.is_none() && s.st_shndx == elf::SHN_UNDEF && !s.name.is_empty() && !used.contains(&s.id().index()) {
            s.delete = true;
        }
    }

    // The replacements: the changed functions, renamed and global; their
    // cold parts renamed alike (objtool finds a `.cold` part's function by
    // name).
    let mut targets = Vec::new();
    let mut helpers = Vec::new();
    let mut renamed: HashMap<String, String> = HashMap::new();
    for s in b.symbols.iter_mut() {
        let Some(info) = syms.get(&s.id().index()) else { continue };
        if info.st_type != elf::STT_FUNC || !info.section.is_some_and(|t| keep.contains(&t.index())) || objtool_symbol(&info.name) {
            continue;
        }
        if changes.changed.contains(&info.name) && parent_of_cold(&info.name).is_none() && orig_names.contains(&info.name) {
            let sympos = match module {
                Some(m) => m.sympos_in(&info.name, &own)?,
                None if info.global => kernel.global_sympos(&info.name)?,
                None => kernel.sympos(&info.name, true, &globals, &own)?,
            };
            let object = module.map_or_else(|| "vmlinux".to_owned(), |m| m.name.clone());
            // A valid identifier for the descriptor (`foo.isra.0` is a
            // compiler clone the kernel knows by that name).
            let replacement = format!("{prefix}{}", info.name.replace('.', "_"));
            s.name = replacement.clone().into_bytes().into();
            s.set_st_info(elf::STB_GLOBAL, elf::STT_FUNC);
            s.st_other = elf::STV_DEFAULT;
            renamed.insert(info.name.clone(), replacement.clone());
            targets.push(Target { object, name: info.name.clone(), sympos, replacement });
        } else {
            helpers.push(info.name.clone());
        }
    }
    for s in b.symbols.iter_mut() {
        let Some(info) = syms.get(&s.id().index()) else { continue };
        if let Some(parent) = parent_of_cold(&info.name)
            && let Some(new) = renamed.get(parent)
            && info.section.is_some_and(|t| keep.contains(&t.index()))
        {
            s.name = format!("{new}{}", &info.name[parent.len()..]).into_bytes().into();
        }
    }
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    helpers.sort();

    // Drop the rest.
    for s in b.sections.iter_mut() {
        let id = s.id();
        let structural = matches!(s.data, SectionData::Symbol | SectionData::String | SectionData::SectionString);
        let relocating_kept = matches!(s.data, SectionData::Relocation(_)) && s.sh_info_section.is_some_and(|t| keep.contains(&t.index()));
        let note = s.name.as_slice() == b".note.GNU-stack";
        s.delete = !(keep.contains(&id.index()) || structural || relocating_kept || note)
            || s.sh_type == elf::SHT_GROUP
            || objtool_made.contains(&id.index());
        s.sh_flags &= !u64::from(elf::SHF_GROUP);
    }
    for s in b.symbols.iter_mut() {
        if objtool_symbol(&String::from_utf8_lossy(&s.name)) {
            s.delete = true;
        }
    }
    b.delete_orphan_symbols();
    let mut out = Vec::new();
    b.write(&mut out).context("writing the patch object")?;
    Ok(Extracted { object: out, targets, helpers, kernel_references, pinned })
}

/// The livepatch name of a kernel symbol: `.klp.sym.vmlinux.<name>,<pos>`.
pub fn klp_name(name: &str, sympos: u64) -> String {
    format!(".klp.sym.vmlinux.{name},{sympos}")
}
