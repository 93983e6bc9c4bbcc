//! What the running kernel will resolve: its symbols in kallsyms order
//! (for `sympos`) and what it exports to modules.
//!
//! A copied function refers to the rest of the kernel by name. Exported
//! symbols stay ordinary undefined symbols, resolved by the module loader.
//! Everything else is resolved by the kernel when it loads the patch, as
//! for its own livepatch modules: by object, name and position among the
//! symbols of that name (`sympos`, counted in address order as kallsyms
//! does). The position must be known, never guessed: a name the kernel has
//! once is position 0 ("the only one"). A name it has several times (a
//! `static` function in many files) is placed by the object's own symbols,
//! since the kernel lays out each object's code (and each kind of data) as
//! one block: the copy lying among the object's uniquely named globals, or
//! else the one whose neighbours on both sides are symbols the object
//! defines. If neither singles it out, the build is refused.

use std::{
    collections::{
        BTreeMap,
        BTreeSet,
        HashSet, //
    },
    fs,
    path::Path,
};

use anyhow::{
    Context as _,
    anyhow,
    bail, //
};

/// One symbol of the kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sym {
    pub addr: u64,
    pub text: bool,
    pub global: bool,
}

/// The kernel image's symbols and exports.
pub struct KernelSymbols {
    /// Name to its symbols in address order.
    by_name: BTreeMap<String, Vec<Sym>>,
    /// Every symbol by address: (address, name, text).
    by_addr: Vec<(u64, String, bool)>,
    /// Exported to every module without a namespace.
    exports: HashSet<String>,
    /// Exported by the kernel's own modules without a namespace (a module's
    /// code may call them; the patch then depends on that module, which the
    /// patched module depends on too).
    module_exports: HashSet<String>,
}

impl KernelSymbols {
    /// From `System.map` and `Module.symvers`.
    pub fn load(system_map: &Path, symvers: &Path) -> anyhow::Result<Self> {
        let map = fs::read_to_string(system_map).with_context(|| format!("read {}", system_map.display()))?;
        let symvers = fs::read_to_string(symvers).with_context(|| format!("read {}", symvers.display()))?;
        Ok(Self::parse(&map, &symvers))
    }

    /// From an unstripped `vmlinux` (its symbol table, as `System.map`
    /// lines) and `Module.symvers`.
    pub fn from_elf(vmlinux: &Path, symvers: &Path) -> anyhow::Result<Self> {
        use object::{
            Object as _,
            ObjectSymbol as _,
        };
        let data = fs::read(vmlinux).with_context(|| format!("read {}", vmlinux.display()))?;
        let file = object::File::parse(&*data).with_context(|| format!("{}: not ELF", vmlinux.display()))?;
        let mut map = String::new();
        for s in file.symbols() {
            let kind = match s.kind() {
                object::SymbolKind::Text => 't',
                object::SymbolKind::Data => 'd',
                _ => continue,
            };
            let (Ok(name), false) = (s.name(), s.is_undefined()) else { continue };
            let kind = if s.is_global() { kind.to_ascii_uppercase() } else { kind };
            map.push_str(&format!("{:016x} {kind} {name}\n", s.address()));
        }
        let symvers = fs::read_to_string(symvers).with_context(|| format!("read {}", symvers.display()))?;
        Ok(Self::parse(&map, &symvers))
    }

    pub(super) fn parse(map: &str, symvers: &str) -> Self {
        let mut by_name: BTreeMap<String, Vec<Sym>> = BTreeMap::new();
        let mut by_addr = Vec::new();
        for line in map.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            let text = matches!(kind, "t" | "T");
            by_name.entry(name.to_owned()).or_default().push(Sym { addr, text, global: kind.bytes().all(|c| c.is_ascii_uppercase()) });
            by_addr.push((addr, name.to_owned(), text));
        }
        for syms in by_name.values_mut() {
            syms.sort_by_key(|s| s.addr);
        }
        by_addr.sort();
        // crc, symbol, object, export kind, namespace (empty when none).
        let mut exports = HashSet::new();
        let mut module_exports = HashSet::new();
        for l in symvers.lines() {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 4 || f.get(4).is_some_and(|ns| !ns.is_empty()) {
                continue;
            }
            match f[2] {
                "vmlinux" => exports.insert(f[1].to_owned()),
                _ => module_exports.insert(f[1].to_owned()),
            };
        }
        Self { by_name, by_addr, exports, module_exports }
    }

    /// Whether modules may link against `name` directly.
    pub fn is_exported(&self, name: &str) -> bool {
        self.exports.contains(name)
    }

    /// Whether one of the kernel's modules exports `name` to other modules.
    pub fn is_exported_by_module(&self, name: &str) -> bool {
        self.module_exports.contains(name)
    }

    /// The symbols named `name`, in address order.
    pub fn named(&self, name: &str) -> &[Sym] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    /// The `sympos` of the global symbol `name` (a static elsewhere may
    /// share its name).
    pub fn global_sympos(&self, name: &str) -> anyhow::Result<u64> {
        let all = self.named(name);
        let globals: Vec<usize> = (0..all.len()).filter(|&i| all[i].global).collect();
        match (all.len(), globals.as_slice()) {
            (0, _) => bail!("'{name}' is not in the kernel's symbol table"),
            (1, _) => Ok(0),
            (_, [i]) => Ok(*i as u64 + 1),
            (n, _) => bail!("'{name}' has {n} symbols in the kernel and not exactly one global"),
        }
    }

    /// The `sympos` of the symbol `name` that the object with the global
    /// symbols `object_globals` and the symbols `own` defines (see the
    /// module comment).
    pub fn sympos(&self, name: &str, text: bool, object_globals: &[String], own: &BTreeSet<String>) -> anyhow::Result<u64> {
        let all = self.named(name);
        match all.len() {
            0 => bail!("'{name}' is not in the kernel's symbol table (inlined or discarded in the build that runs?)"),
            1 => return Ok(0),
            _ => {}
        }
        // The span of the object's own uniquely named symbols of this kind.
        let own_addrs: Vec<u64> = object_globals
            .iter()
            .filter_map(|g| match self.named(g) {
                [s] if s.text == text => Some(s.addr),
                _ => None,
            })
            .collect();
        if let (Some(lo), Some(hi)) = (own_addrs.iter().min(), own_addrs.iter().max()) {
            let inside: Vec<usize> = (0..all.len()).filter(|&i| all[i].text == text && all[i].addr >= *lo && all[i].addr <= *hi).collect();
            if let [i] = inside.as_slice() {
                return Ok(*i as u64 + 1);
            }
        }
        // The copy whose neighbours (of its kind, other addresses) are both
        // the object's own symbols. The padding before each function
        // (`__pfx_<f>`, `__cfi_<f>`) is named in the kernel's table but not
        // in the object: it is no neighbour.
        let neighbour = |(_, n, t): &&(u64, String, bool)| *t == text && !n.starts_with("__pfx_") && !n.starts_with("__cfi_");
        let neighbours_own = |addr: u64| -> bool {
            let at = self.by_addr.partition_point(|(a, _, _)| *a < addr);
            let before = self.by_addr[..at].iter().rev().find(neighbour);
            let after = self.by_addr[at..].iter().filter(|(a, _, _)| *a > addr).find(neighbour);
            matches!((before, after), (Some((_, b, _)), Some((_, c, _))) if own.contains(b) && own.contains(c))
        };
        let placed: Vec<usize> = (0..all.len()).filter(|&i| all[i].text == text && neighbours_own(all[i].addr)).collect();
        match placed.as_slice() {
            [i] => Ok(*i as u64 + 1),
            _ => Err(anyhow!(
                "'{name}' has {} symbols in the kernel and {} lie among its object's own symbols: which one is meant cannot be told",
                all.len(),
                placed.len()
            )),
        }
    }
}

/// The symbols of a module, as the kernel's kallsyms for it will hold them
/// once it is loaded: what a copied function of that module refers to is
/// resolved there, by name and position (`.klp.sym.<module>.<name>,<pos>`;
/// kernel/livepatch/core.c walks `module_kallsyms_on_each_symbol()` in
/// symbol-table order). Only what the module keeps after its init counts
/// (kernel/module/kallsyms.c `is_core_symbol()`): named, defined, in an
/// allocated section that is not init code or data.
pub struct ModuleSymbols {
    /// The module's name, as the kernel knows it.
    pub name: String,
    /// How many of its kept symbols have each name.
    counts: BTreeMap<String, usize>,
    /// Its kept symbols' names in symbol-table order (the order kallsyms
    /// keeps, and counts positions in).
    order: Vec<String>,
}

impl ModuleSymbols {
    /// From the module as the kernel's package ships it.
    pub fn from_ko(name: &str, ko: &[u8]) -> anyhow::Result<Self> {
        use object::{
            Object as _,
            ObjectSection as _,
            ObjectSymbol as _,
        };
        let file = object::File::parse(ko).with_context(|| format!("module {name}: not ELF"))?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut order = Vec::new();
        for s in file.symbols() {
            let (Ok(n), Some(ix)) = (s.name(), s.section_index()) else { continue };
            let Ok(section) = file.section_by_index(ix) else { continue };
            let object::SectionFlags::Elf { sh_flags } = section.flags() else { continue };
            let init = section.name().is_ok_and(|n| n.starts_with(".init"));
            if n.is_empty() || sh_flags & u64::from(object::elf::SHF_ALLOC) == 0 || init {
                continue;
            }
            *counts.entry(n.to_owned()).or_default() += 1;
            order.push(n.to_owned());
        }
        Ok(Self { name: name.to_owned(), counts, order })
    }

    /// Whether the module defines `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.counts.contains_key(name)
    }

    /// The position of `name` in the module: 0, the only one; a name the
    /// module has several times is refused (the copy's own cannot be told
    /// apart yet).
    pub fn sympos(&self, name: &str) -> anyhow::Result<u64> {
        match self.counts.get(name) {
            Some(1) => Ok(0),
            None => bail!("'{name}' is not in module {}'s symbol table (inlined or discarded in the build that runs?)", self.name),
            Some(n) => bail!("'{name}' has {n} symbols in module {}: which one is meant cannot be told", self.name),
        }
    }

    /// The livepatch name of the module's symbol `name`.
    pub fn klp_name(&self, name: &str) -> anyhow::Result<String> {
        Ok(format!(".klp.sym.{}.{name},{}", self.name, self.sympos(name)?))
    }

    /// The position of `name` as defined by the object whose symbols are
    /// `own`: a name the module has once is 0; of several, the one whose
    /// nearest uniquely named neighbours on both sides in the symbol table
    /// are the object's own symbols (the linker keeps each object's locals
    /// together). Refused when that does not single one out.
    pub fn sympos_in(&self, name: &str, own: &BTreeSet<String>) -> anyhow::Result<u64> {
        if self.counts.get(name).is_none_or(|&n| n < 2) {
            return self.sympos(name);
        }
        let unique = |n: &String| self.counts.get(n) == Some(&1);
        let mut placed = Vec::new();
        let mut position = 0u64;
        for (i, n) in self.order.iter().enumerate() {
            if n != name {
                continue;
            }
            position += 1;
            let before = self.order[..i].iter().rev().find(|n| unique(n));
            let after = self.order[i + 1..].iter().find(|n| unique(n));
            if before.is_some_and(|b| own.contains(b)) && after.is_some_and(|a| own.contains(a)) {
                placed.push(position);
            }
        }
        match placed.as_slice() {
            [p] => Ok(*p),
            _ => bail!(
                "'{name}' has {} symbols in module {} and {} lie among its object's own symbols: which one is meant cannot be told",
                self.counts[name],
                self.name,
                placed.len()
            ),
        }
    }

    /// [`Self::klp_name`], placed by the object's own symbols `own`.
    pub fn klp_name_in(&self, name: &str, own: &BTreeSet<String>) -> anyhow::Result<String> {
        Ok(format!(".klp.sym.{}.{name},{}", self.name, self.sympos_in(name, own)?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::KernelSymbols;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81001000 t helper
ffffffff81002000 T alpha
ffffffff81003000 t helper
ffffffff81004000 T beta
ffffffff81005000 t helper
ffffffff81006000 T gamma
ffffffff82000000 d helper
ffffffff82001000 D shared_data
";
    const SYMVERS: &str = "0x0\talpha\tvmlinux\tEXPORT_SYMBOL_GPL\t\n0x0\tgamma\tvmlinux\tEXPORT_SYMBOL\tNS\n0x0\tm\tsome_mod\tEXPORT_SYMBOL\t\n";

    #[test]
    fn sympos_is_unique_or_placed_by_the_objects_own_symbols() {
        let k = KernelSymbols::parse(MAP, SYMVERS);
        let none = BTreeSet::new();
        assert_eq!(k.sympos("alpha", true, &[], &none).unwrap(), 0);
        // The object defining alpha and beta holds the second 'helper'.
        assert_eq!(k.sympos("helper", true, &["alpha".into(), "beta".into()], &none).unwrap(), 2);
        // Spanning two copies: refused, not guessed.
        assert!(k.sympos("helper", true, &["_text".into(), "gamma".into()], &none).is_err());
        // No global symbol to place it by, nor neighbours: refused.
        assert!(k.sympos("helper", true, &[], &none).is_err());
        assert!(k.sympos("missing", true, &[], &none).is_err());
        // Placed by its neighbours: the object defines beta and gamma, which
        // surround the third 'helper' (and no other copy).
        let own: BTreeSet<String> = ["beta".into(), "gamma".into(), "helper".into()].into();
        assert_eq!(k.sympos("helper", true, &[], &own).unwrap(), 3);
        // Neighbours on one side only do not place it.
        let one_side: BTreeSet<String> = ["gamma".into()].into();
        assert!(k.sympos("helper", true, &[], &one_side).is_err());
        assert_eq!(k.global_sympos("alpha").unwrap(), 0);
        assert!(k.global_sympos("helper").is_err(), "only statics of that name");
    }

    /// The stock kernel names each function's padding (`__pfx_<f>`, with
    /// CALL_PADDING; `__cfi_<f>` with kCFI), which objects do not have:
    /// `io_run_task_work` of io_uring/cancel.o lies between two of the
    /// object's functions, but its nearest neighbours in System.map are
    /// `__pfx_` symbols, and the fix to cancel.c was refused as "3 symbols
    /// in the kernel and 0 lie among its object's own symbols".
    #[test]
    fn function_padding_symbols_are_not_neighbours() {
        const PADDED: &str = "\
ffffffff81247730 T __pfx_io_cancel_ctx_cb
ffffffff81247740 T io_cancel_ctx_cb
ffffffff81247760 t __pfx_io_run_task_work
ffffffff81247770 t io_run_task_work
ffffffff81247880 T __pfx_io_uring_try_cancel_requests
ffffffff81247890 T io_uring_try_cancel_requests
ffffffff81ad59e0 t __pfx_io_wake_function
ffffffff81ad59f0 t io_wake_function
ffffffff81ad5a90 t __cfi_io_run_task_work
ffffffff81ad5aa0 t io_run_task_work
ffffffff81ad5bf0 T __pfx_io_run_task_work_sig
ffffffff81ad5c00 T io_run_task_work_sig
";
        let k = KernelSymbols::parse(PADDED, "");
        let own: BTreeSet<String> =
            ["io_cancel_ctx_cb".into(), "io_run_task_work".into(), "io_uring_try_cancel_requests".into()].into();
        assert_eq!(k.sympos("io_run_task_work", true, &[], &own).unwrap(), 1);
        let other: BTreeSet<String> = ["io_wake_function".into(), "io_run_task_work_sig".into()].into();
        assert_eq!(k.sympos("io_run_task_work", true, &[], &other).unwrap(), 2);
    }

    #[test]
    fn only_plain_vmlinux_exports_count() {
        let k = KernelSymbols::parse(MAP, SYMVERS);
        assert!(k.is_exported("alpha"));
        assert!(!k.is_exported("gamma"), "a namespaced export needs an import: resolved by name instead");
        assert!(!k.is_exported("m"), "exported by a module, not vmlinux");
        assert!(k.is_exported_by_module("m") && !k.is_exported_by_module("alpha") && !k.is_exported_by_module("gamma"));
        assert!(!k.is_exported("beta"));
    }
}
