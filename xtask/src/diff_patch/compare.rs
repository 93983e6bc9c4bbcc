//! Which functions a fix changes: the functions of the original and the
//! patched object compared section by section.
//!
//! With `-ffunction-sections` each function is one section. A function
//! changed when its bytes or its relocations differ. Relocations are
//! compared by what they point to, not by offsets that move when unrelated
//! code or strings move: a symbol by name, a string by its text. A
//! function the compiler inlined changes every caller it was inlined into,
//! so those callers come out changed too, as they must. A `.cold` part
//! split off a function belongs to it.

use std::collections::{
    BTreeMap,
    BTreeSet, //
};

use anyhow::Context as _;
use object::{
    Object as _,
    ObjectSection as _,
    ObjectSymbol as _,
    RelocationFlags,
    RelocationTarget,
    SectionFlags,
    SymbolKind,
    elf, //
};

use super::static_locals::{
    Match,
    StaticLocals, //
};

/// A function as compiled: its section's bytes and what they refer to.
#[derive(PartialEq, Eq, Debug)]
struct Body {
    bytes: Vec<u8>,
    relocations: Vec<(u64, u32, String)>,
}

/// The outcome of a comparison.
#[derive(Debug, Default)]
pub struct Changes {
    /// Functions of both objects whose code differs.
    pub changed: BTreeSet<String>,
    /// Functions only the patched object has.
    pub added: BTreeSet<String>,
    /// Changed sections of init/exit code, which already ran or never will
    /// in a running kernel: not patched, but reported.
    pub skipped: Vec<String>,
}

/// The function that a `.cold` part (`foo.cold`, `foo.cold.1`) belongs to.
pub fn parent_of_cold(name: &str) -> Option<&str> {
    name.find(".cold").map(|i| &name[..i])
}

/// Whether a relocation type is PC-relative (its addend is offset by the
/// 4 bytes of the field it patches).
pub fn pc_relative(r_type: u32) -> bool {
    matches!(r_type, elf::R_X86_64_PC32 | elf::R_X86_64_PLT32)
}

/// Numbered static variables (`count.3`) by section: start, size, name.
type Statics = std::collections::HashMap<object::SectionIndex, Vec<(u64, u64, String)>>;

/// The functions of an object by name, and its code sections that hold
/// more than one function (explicit `section` attributes: `.sched.text`,
/// `.noinstr.text`, `.init.text`) by section name. `canon` names a
/// numbered static variable as the original object does.
fn bodies(data: &[u8], canon: &dyn Fn(&str) -> String) -> anyhow::Result<(BTreeMap<String, Body>, BTreeMap<String, Body>)> {
    let file = object::File::parse(data).context("not an ELF object")?;
    let mut statics = Statics::new();
    for sym in file.symbols() {
        if let (SymbolKind::Data, Ok(name), Some(ix)) = (sym.kind(), sym.name(), sym.section_index())
            && sym.is_local()
            && super::static_locals::numbered(name)
        {
            statics.entry(ix).or_default().push((sym.address(), sym.size(), canon(name)));
        }
    }
    let mut out = BTreeMap::new();
    let mut shared = BTreeMap::new();
    for section in file.sections() {
        let exec = matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(elf::SHF_EXECINSTR) != 0);
        let name = section.name().unwrap_or_default();
        if exec && !name.starts_with(".text.") && section.size() > 0 {
            shared.insert(name.to_owned(), body(&file, &section, &statics)?);
        }
    }
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text {
            continue;
        }
        let (Ok(name), Some(index)) = (sym.name(), sym.section_index()) else { continue };
        if super::extract::objtool_symbol(name) {
            continue;
        }
        let section = file.section_by_index(index)?;
        if !section.name().is_ok_and(|n| n.starts_with(".text.")) {
            continue;
        }
        out.insert(name.to_owned(), body(&file, &section, &statics)?);
    }
    Ok((out, shared))
}

fn body(file: &object::File, section: &object::Section, statics: &Statics) -> anyhow::Result<Body> {
    let mut relocations = Vec::new();
    for (offset, r) in section.relocations() {
        let RelocationFlags::Elf { r_type } = r.flags() else { continue };
        let target = match r.target() {
            RelocationTarget::Symbol(i) => describe(file, i, r.addend(), r_type, statics),
            _ => String::from("?"),
        };
        relocations.push((offset, r_type, target));
    }
    relocations.sort();
    Ok(Body { bytes: section.data()?.to_vec(), relocations })
}

/// What a relocation points to, independent of where things lie and of
/// how the compiler numbered static variables.
fn describe(file: &object::File, index: object::SymbolIndex, addend: i64, r_type: u32, statics: &Statics) -> String {
    let Ok(sym) = file.symbol_by_index(index) else { return String::from("?") };
    let section = sym.section_index().and_then(|i| file.section_by_index(i).ok());
    // Strings (through the section or a `.LC` label) by their text.
    if let Some(section) = &section {
        let strings = matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(elf::SHF_STRINGS) != 0);
        let at = sym.address() as i64 + addend + if pc_relative(r_type) { 4 } else { 0 };
        if strings && let Some(rest) = usize::try_from(at).ok().and_then(|at| section.data().ok()?.get(at..)) {
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            return format!("string {:?}", String::from_utf8_lossy(&rest[..end]));
        }
        if let Some((start, _, name)) = statics.get(&section.index()).and_then(|v| {
            v.iter().find(|(start, size, _)| at >= *start as i64 && at < (*start + (*size).max(1)) as i64)
        }) {
            return format!("static {name}{:+}", at - *start as i64);
        }
    }
    match (sym.kind(), &section) {
        (SymbolKind::Section, Some(section)) => format!("{}{addend:+}", section.name().unwrap_or("?")),
        _ => format!("{}{addend:+}", sym.name().unwrap_or("?")),
    }
}

/// Compares the functions of `orig` and `patched`; `statics` matches the
/// patched object's static variables to the original's (a renumbered one
/// is no change).
pub fn compare(orig: &[u8], patched: &[u8], statics: &StaticLocals) -> anyhow::Result<Changes> {
    let same = |n: &str| n.to_owned();
    let matched = |n: &str| match statics.get(n) {
        Some(Match::Orig(o)) => o.clone(),
        _ => format!("{n} (new)"),
    };
    let ((orig, orig_shared), (patched, patched_shared)) =
        (bodies(orig, &same).context("original object")?, bodies(patched, &matched).context("patched object")?);
    let mut changes = Changes::default();
    for (name, body) in &patched_shared {
        if orig_shared.get(name) == Some(body) {
            continue;
        }
        if name.starts_with(".init") || name.starts_with(".exit") {
            changes.skipped.push(name.clone());
            continue;
        }
        anyhow::bail!("the fix changes code in {name}, a section shared by several functions: not supported yet");
    }
    for (name, body) in &patched {
        match orig.get(name) {
            None => changes.added.insert(name.clone()),
            Some(old) if old != body => changes.changed.insert(name.clone()),
            Some(_) => false,
        };
    }
    // A changed or new cold part changes its function.
    let cold: Vec<String> = changes.changed.iter().chain(&changes.added).filter_map(|n| parent_of_cold(n).map(str::to_owned)).collect();
    for parent in cold {
        if orig.contains_key(&parent) && patched.contains_key(&parent) {
            changes.changed.insert(parent);
        }
    }
    Ok(changes)
}
