//! Variables declared `static` inside functions, matched between the
//! original and the patched object.
//!
//! The compiler names each such variable `<name>.<n>` with one counter for
//! the whole file (`count.3`, `__already_done.12`, `_rs.159`, `__key.0`),
//! so a fix that adds or removes one renumbers others: the patched
//! object's `_rs.159` may be the original's `_rs.158`, while the original's
//! `_rs.159` belongs to another function. A copied function must use the
//! variable the running kernel has for it (a lock, a once flag, a rate
//! limit: state shared with the code that stays), so the number is never
//! trusted: each variable is matched by its base name and the functions
//! that use it (as kpatch's create-diff-object does). One a function did
//! not have before is new, and the copy gets its own; when the match
//! cannot be told, the build is refused.

use std::collections::{
    BTreeMap,
    BTreeSet,
    HashMap, //
};

use anyhow::Context as _;
use object::{
    Object as _,
    ObjectSection as _,
    ObjectSymbol as _,
    RelocationFlags,
    RelocationTarget,
    SectionFlags,
    SectionIndex,
    SymbolKind,
    elf, //
};

use super::compare::{
    parent_of_cold,
    pc_relative, //
};

/// What a static variable of the patched object is in the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// The original's variable of this name: the copy uses the kernel's.
    Orig(String),
    /// A variable the fix adds: the copy has its own.
    New,
    /// Cannot be told; the reason refuses the build if the copy needs it.
    Unclear(String),
}

/// The match of every numbered static variable the patched object's
/// functions use, by its name there.
#[derive(Debug, Default)]
pub struct StaticLocals {
    matches: HashMap<String, Match>,
}

impl StaticLocals {
    /// How `name` (a variable of the patched object) matches, if it is a
    /// numbered static that some function uses.
    pub fn get(&self, name: &str) -> Option<&Match> {
        self.matches.get(name)
    }
}

/// Whether `name` is a local the compiler numbered (`count.3`, `__func__.3`).
pub fn numbered(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(base, n)| !base.is_empty() && !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

/// The name without the compiler's numbers: `_rs.159` is `_rs`, and
/// `__UNIQUE_ID_ddebug_999.0` (a `__COUNTER__` in the name too) is
/// `__UNIQUE_ID_ddebug`.
fn base(name: &str) -> &str {
    let b = name.rsplit_once('.').map_or(name, |(b, _)| b);
    match b.rsplit_once('_') {
        Some((head, n)) if b.starts_with("__UNIQUE_ID_") && !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => head,
        _ => b,
    }
}

/// The numbers in a name, to order the variables of one base in one
/// function (the compiler numbers them in a fixed order).
fn numbers(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// Which numbered statics each function of an object uses.
struct Uses {
    /// Static to the functions using it (a `.cold` part counts as its
    /// function).
    by_static: BTreeMap<String, BTreeSet<String>>,
    /// Function to the statics it uses.
    by_function: BTreeMap<String, BTreeSet<String>>,
    /// Every function the object defines.
    functions: BTreeSet<String>,
}

fn uses(data: &[u8]) -> anyhow::Result<Uses> {
    let file = object::File::parse(data).context("not an ELF object")?;
    let mut statics: HashMap<SectionIndex, Vec<(u64, u64, String)>> = HashMap::new();
    let mut functions: HashMap<SectionIndex, Vec<(u64, u64, String)>> = HashMap::new();
    for s in file.symbols() {
        let (Ok(name), Some(ix)) = (s.name(), s.section_index()) else { continue };
        match s.kind() {
            SymbolKind::Data if s.is_local() && numbered(name) => statics.entry(ix).or_default().push((s.address(), s.size(), name.to_owned())),
            SymbolKind::Text if !super::extract::objtool_symbol(name) => {
                let function = parent_of_cold(name).unwrap_or(name);
                functions.entry(ix).or_default().push((s.address(), s.size(), function.to_owned()))
            }
            _ => {}
        }
    }
    let covering = |list: Option<&Vec<(u64, u64, String)>>, at: u64| -> Option<String> {
        list?.iter().find(|(start, size, _)| at >= *start && at < start + (*size).max(1)).map(|(_, _, n)| n.clone())
    };
    let mut out = Uses { by_static: BTreeMap::new(), by_function: BTreeMap::new(), functions: BTreeSet::new() };
    out.functions.extend(functions.values().flatten().map(|(_, _, n)| n.clone()));
    for section in file.sections() {
        let exec = matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(elf::SHF_EXECINSTR) != 0);
        if !exec {
            continue;
        }
        for (offset, r) in section.relocations() {
            let (RelocationTarget::Symbol(i), RelocationFlags::Elf { r_type }) = (r.target(), r.flags()) else { continue };
            let Ok(sym) = file.symbol_by_index(i) else { continue };
            let Some(target) = sym.section_index() else { continue };
            let at = (sym.address() as i64 + r.addend() + if pc_relative(r_type) { 4 } else { 0 }).max(0) as u64;
            let (Some(var), Some(function)) = (covering(statics.get(&target), at), covering(functions.get(&section.index()), offset)) else {
                continue;
            };
            out.by_static.entry(var.clone()).or_default().insert(function.clone());
            out.by_function.entry(function).or_default().insert(var);
        }
    }
    Ok(out)
}

/// Matches the numbered statics the patched object's functions use to the
/// original's.
pub fn correlate(orig: &[u8], patched: &[u8]) -> anyhow::Result<StaticLocals> {
    let orig = uses(orig).context("original object")?;
    let patched = uses(patched).context("patched object")?;
    let mut matches = HashMap::new();
    for (var, users) in &patched.by_static {
        let b = base(var);
        let of_base = |u: &Uses, f: &str| -> Vec<String> {
            let mut v: Vec<String> = u.by_function.get(f).into_iter().flatten().filter(|s| base(s) == b).cloned().collect();
            v.sort_by_key(|s| numbers(s));
            v
        };
        // What each user known to the original says: the original's
        // variable of the same rank among that function's of this base
        // (the compiler numbers them in a fixed order), or none (new there).
        let mut said: BTreeSet<Option<String>> = BTreeSet::new();
        let mut unclear = None;
        let mut unknown_user = None;
        for f in users {
            if !orig.functions.contains(f) {
                unknown_user.get_or_insert(f);
                continue;
            }
            let (before, after) = (of_base(&orig, f), of_base(&patched, f));
            match after.iter().position(|v| v == var) {
                _ if before.is_empty() => {
                    said.insert(None);
                }
                Some(rank) if before.len() == after.len() => {
                    said.insert(Some(before[rank].clone()));
                }
                _ => {
                    unclear.get_or_insert(format!(
                        "'{f}' has {} static '{b}' variables before the fix and {} after: which is which cannot be told",
                        before.len(),
                        after.len()
                    ));
                }
            }
        }
        let m = match (unclear, said.len(), said.into_iter().next()) {
            (Some(reason), _, _) => Match::Unclear(reason),
            (None, 1, Some(Some(o))) => Match::Orig(o),
            (None, 1, Some(None)) => Match::New,
            (None, 0, _) => match unknown_user {
                // Used only by code the original does not have as a
                // function (new, or no longer inlined): it may be one the
                // original has inside another function.
                Some(f) if orig.by_static.keys().any(|s| base(s) == b) => Match::Unclear(format!(
                    "the fixed code's static variable '{var}' is used by '{f}', which the original object does not have as a function, and the original has '{b}' variables elsewhere: which one (or a new one) it is cannot be told"
                )),
                _ => Match::New,
            },
            _ => Match::Unclear(format!("the fixed code's static variable '{var}' is used by functions that had different ones before the fix")),
        };
        matches.insert(var.clone(), m);
    }
    Ok(StaticLocals { matches })
}
