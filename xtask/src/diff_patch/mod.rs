//! Live patches from upstream C diffs: `patch.toml` names a unified diff
//! against the target kernel's source instead of hand-written replacements.
//!
//! The steps, one file each: [`compile`] builds the touched objects before
//! and after the fix; [`static_locals`] matches the static variables of
//! both, which the compiler numbers anew; [`compare`] finds the functions
//! whose code changed;
//! [`extract`] copies them (and only what they need) into an object whose
//! references to the rest of the kernel go to the running kernel's own
//! symbols ([`symbols`] says which are exported and the position of each
//! name); the patch module is then built around that object as for a Rust
//! patch (xtask/src/patch.rs), and [`klp_relocs`] turns the references the
//! module loader cannot link into relocations the kernel resolves at load.

mod compare;
mod compile;
mod extract;
mod header_change;
mod includers;
mod klp_relocs;
mod layouts;
mod static_locals;
mod symbols;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
};

use anyhow::{
    Context as _,
    bail, //
};
pub use compile::{
    precompile,
    touched_files,
};
pub use includers::groups;
pub use extract::{
    Target,
    klp_name, //
};
use object::{
    Object as _,
    ObjectSymbol as _, //
};

use crate::kernel::Kernel;

/// The copied code of a fix, ready to link into the patch module.
pub struct FixObjects {
    /// Object files (`<id>_fixN.o`, in the module's build directory).
    pub objects: Vec<String>,
    pub targets: Vec<Target>,
    /// The target modules (`.ko`s as the kernel ships them) of functions
    /// in modules, to fingerprint them.
    pub modules: Vec<std::path::PathBuf>,
    /// Modules whose static keys or static calls the copied code uses
    /// (kmend.ko keeps them loaded while the patch module is loaded).
    pub pinned: BTreeSet<String>,
}

/// Builds the objects of the fix `diff` for patch `id` into `out` (the
/// patch module's build directory), as prebuilt objects kbuild links.
/// `callbacks`: functions the diff adds that the patch's descriptor names
/// (kept, with their names, though no changed code calls them).
pub fn build_objects(kernel: &Kernel, diff: &Path, id: &str, callbacks: &[String], out: &Path) -> anyhow::Result<FixObjects> {
    let text = fs::read_to_string(diff).with_context(|| format!("read {}", diff.display()))?;
    let files = compile::touched_files(&text).with_context(|| format!("{}", diff.display()))?;
    let work = out.join("diff");
    let pairs = compile::compile(kernel, diff, &files, &work)?;
    let symbols = kernel_symbols(kernel)?;
    let mut objects = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut modules = Vec::new();
    let mut pinned = BTreeSet::new();
    let mut compared = Vec::new();
    for pair in &pairs {
        let orig = fs::read(&pair.orig).with_context(|| format!("read {}", pair.orig.display()))?;
        let patched = fs::read(&pair.patched).with_context(|| format!("read {}", pair.patched.display()))?;
        // Code of a module: its references go to that module's symbols.
        let module = match &pair.module {
            Some(name) => {
                let tree = kernel.modules.as_deref().ok_or_else(|| anyhow::anyhow!("{}: this kernel has no modules package", pair.source))?;
                let found = crate::stock_kernel::module_with_dependencies(tree, name);
                if pair.by_header && found.is_err() {
                    continue; // A module of another config includes the header.
                }
                let ko = found
                    .with_context(|| format!("{} is built into module {name}", pair.source))?
                    .pop()
                    .ok_or_else(|| anyhow::anyhow!("module {name}: not found"))?;
                let data = fs::read(&ko).with_context(|| format!("read {}", ko.display()))?;
                modules.push(ko);
                Some(symbols::ModuleSymbols::from_ko(name, &data)?)
            }
            None => None,
        };
        if pair.by_header && module.is_none() && !in_kernel(&orig, &symbols)? {
            continue;
        }
        if module.is_none() && !in_kernel(&orig, &symbols)? {
            bail!("{} is not built into the stock kernel (none of its functions is in its symbol table)", pair.source);
        }
        refuse_layout_changes(&pair.source, &orig, &patched)?;
        let statics = static_locals::correlate(&orig, &patched).with_context(|| pair.source.clone())?;
        let changes = compare::compare(&orig, &patched, &statics).with_context(|| pair.source.clone())?;
        for s in &changes.skipped {
            println!("xtask: {}: the fix changes {s} (init/exit code): not live patched", pair.source);
        }
        if changes.changed.is_empty() && changes.added.is_empty() {
            println!("xtask: {}: no function's code changed", pair.source);
            continue;
        }
        compared.push((pair, orig, patched, module, statics, changes));
    }
    // A function one object of the fix adds and another calls (a new
    // helper declared in a changed header) is kept by its name and linked
    // inside the patch module.
    let mut roots: Vec<String> = callbacks.to_vec();
    let pieces: Vec<(&[u8], &compare::Changes)> = compared.iter().map(|c| (c.2.as_slice(), &c.5)).collect();
    for name in called_across(&pieces)? {
        if !roots.contains(&name) {
            roots.push(name);
        }
    }
    for (n, (pair, orig, patched, module, statics, changes)) in compared.iter().enumerate() {
        if changes.changed.is_empty() && !changes.added.iter().any(|a| roots.contains(a)) {
            println!("xtask: {}: no function's code changed", pair.source);
            continue;
        }
        let extracted = extract::extract(patched, &defined_names(orig)?, statics, changes, &roots, &symbols, module.as_ref(), &format!("{id}__"))
            .with_context(|| format!("{}: copying the changed functions", pair.source))?;
        let names = |t: &[Target]| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>().join(", ");
        println!("xtask: {}: replaces {}", pair.source, names(&extracted.targets));
        if !extracted.helpers.is_empty() {
            println!("xtask: {}: also copies {}", pair.source, extracted.helpers.join(", "));
        }
        if !extracted.kernel_references.is_empty() {
            let refs: Vec<&str> = extracted.kernel_references.iter().map(String::as_str).collect();
            println!("xtask: {}: resolved by the kernel at load: {}", pair.source, refs.join(" "));
        }
        for m in &extracted.pinned {
            println!("xtask: {}: uses static keys or static calls of module {m}: it stays loaded while the patch is", pair.source);
        }
        pinned.extend(extracted.pinned);
        // A prebuilt object: kbuild has no rule for it and links it as is.
        let name = format!("{id}_fix{n}.o");
        let object = out.join(&name);
        if fs::read(&object).ok().as_deref() != Some(&extracted.object) {
            fs::write(&object, &extracted.object)?;
        }
        // kbuild wants a command file for every object it links.
        fs::write(out.join(format!(".{name}.cmd")), "")?;
        objects.push(name);
        targets.extend(extracted.targets);
        found.extend(extracted.helpers);
    }
    if let Some(missing) = callbacks.iter().find(|c| !found.contains(*c)) {
        bail!("{}: callback '{missing}' is not a function the diff adds (a global one, so the compiler keeps it)", diff.display());
    }
    if targets.is_empty() {
        bail!(
            "{}: the fix changes no function's code (only data, initialisation, or nothing the compiler emits differently): nothing to live patch",
            diff.display()
        );
    }
    Ok(FixObjects { objects, targets, modules, pinned })
}

/// Refuses a fix that changes the layout of a type the code of `source`
/// uses (see [`layouts`]), naming the type and the member.
fn refuse_layout_changes(source: &str, orig: &[u8], patched: &[u8]) -> anyhow::Result<()> {
    let changed = layouts::changed(orig, patched).with_context(|| format!("{source}: reading the types of its objects"))?;
    let Some(first) = changed.first() else { return Ok(()) };
    let more = match changed.len() {
        1 => String::new(),
        n => format!(" and {} other type(s): {}", n - 1, changed[1..].iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")),
    };
    bail!(
        "{source}: the fix changes the data layout of {} ({}){more}: the running kernel's existing objects keep the old layout, so copied code cannot use them; rewrite the fix to keep the layout and hold new state in a shadow variable (docs/patch-format.md)",
        first.name,
        first.how
    )
}

fn kernel_symbols(kernel: &Kernel) -> anyhow::Result<symbols::KernelSymbols> {
    let symvers = kernel.build.join("Module.symvers");
    match &kernel.system_map {
        Some(map) => symbols::KernelSymbols::load(map, &symvers),
        None => symbols::KernelSymbols::from_elf(&kernel.vmlinux, &symvers),
    }
}

/// The built patch module `ko`, with its references to non-exported
/// kernel symbols as livepatch relocations (see [`klp_relocs`]); returns
/// the module and how many relocations the kernel will resolve. `modules`
/// are the `Module.symvers` of the modules it may link against (kmend.ko).
pub fn post_link(kernel: &Kernel, ko: &[u8], modules: &[&Path], late: &[String]) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut module_exports = std::collections::HashSet::new();
    for symvers in modules {
        let text = fs::read_to_string(symvers).with_context(|| format!("read {}", symvers.display()))?;
        module_exports.extend(text.lines().filter_map(|l| l.split('\t').nth(1).map(str::to_owned)));
    }
    klp_relocs::post_link(ko, &kernel_symbols(kernel)?, &module_exports, late)
}

/// Whether the object `orig`, compiled for the kernel image, is built into
/// the kernel whose symbols are `symbols`. kbuild compiles any file it is
/// asked for: one none of whose functions is in the running kernel is not
/// built into it. Judged by its global functions, or by its static ones if
/// it has none (a driver whose every function is static); an object with
/// no function at all counts as built in (nothing to tell by).
pub(super) fn in_kernel(orig: &[u8], symbols: &symbols::KernelSymbols) -> anyhow::Result<bool> {
    let mut functions = functions_of(orig, true)?;
    if functions.is_empty() {
        functions = functions_of(orig, false)?;
    }
    Ok(functions.is_empty() || functions.iter().any(|f| !symbols.named(f).is_empty()))
}

/// The functions an object defines: its global ones, or its static ones.
fn functions_of(data: &[u8], global: bool) -> anyhow::Result<Vec<String>> {
    let file = object::File::parse(data)?;
    Ok(file
        .symbols()
        .filter(|s| s.is_global() == global && s.section_index().is_some() && s.kind() == object::SymbolKind::Text)
        .filter(|s| s.name().is_ok_and(|n| !extract::objtool_symbol(n) && !n.contains(".cold")))
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect())
}

/// The global functions one patched object adds and another refers to
/// (`objects`: each patched object with its changes).
pub(super) fn called_across(objects: &[(&[u8], &compare::Changes)]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, (patched, _)) in objects.iter().enumerate() {
        for name in undefined_names(patched)? {
            let elsewhere = objects.iter().enumerate().any(|(m, (data, changes))| m != n && changes.added.contains(&name) && global_in(data, &name));
            if elsewhere && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// The symbols an object refers to without defining them.
fn undefined_names(data: &[u8]) -> anyhow::Result<Vec<String>> {
    let file = object::File::parse(data)?;
    Ok(file.symbols().filter(|s| s.is_undefined() && s.is_global()).filter_map(|s| s.name().ok().map(str::to_owned)).collect())
}

/// Whether `name` is a global function `data` defines.
fn global_in(data: &[u8], name: &str) -> bool {
    object::File::parse(data).is_ok_and(|f| f.symbols().any(|s| s.is_global() && s.section_index().is_some() && s.name() == Ok(name)))
}

/// The functions and variables an object defines.
fn defined_names(data: &[u8]) -> anyhow::Result<BTreeSet<String>> {
    let file = object::File::parse(data)?;
    Ok(file
        .symbols()
        .filter(|s| s.section_index().is_some() && matches!(s.kind(), object::SymbolKind::Text | object::SymbolKind::Data))
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect())
}
