//! What the running kernel will resolve: its symbols in kallsyms order
//! (for `sympos`) and what it exports to modules.
//!
//! A copied function refers to the rest of the kernel by name. Exported
//! symbols stay ordinary undefined symbols, resolved by the module loader.
//! Everything else is resolved by the kernel when it loads the patch, as
//! for its own livepatch modules: by object, name and position among the
//! symbols of that name (`sympos`, counted in address order as kallsyms
//! does). The position must be known, never guessed: a name the kernel has
//! once is position 0 ("the only one"); a name it has several times (a
//! `static` function in many files) is placed by the addresses of the
//! object's own global symbols, and refused if that does not single it out.

use std::{
    collections::{
        BTreeMap,
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
    /// Exported to every module without a namespace.
    exports: HashSet<String>,
}

impl KernelSymbols {
    /// From `System.map` and `Module.symvers`.
    pub fn load(system_map: &Path, symvers: &Path) -> anyhow::Result<Self> {
        let map = fs::read_to_string(system_map).with_context(|| format!("read {}", system_map.display()))?;
        let symvers = fs::read_to_string(symvers).with_context(|| format!("read {}", symvers.display()))?;
        Ok(Self::parse(&map, &symvers))
    }

    pub(super) fn parse(map: &str, symvers: &str) -> Self {
        let mut by_name: BTreeMap<String, Vec<Sym>> = BTreeMap::new();
        for line in map.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            by_name.entry(name.to_owned()).or_default().push(Sym { addr, text: matches!(kind, "t" | "T"), global: kind.bytes().all(|c| c.is_ascii_uppercase()) });
        }
        for syms in by_name.values_mut() {
            syms.sort_by_key(|s| s.addr);
        }
        // crc, symbol, object, export kind, namespace (empty when none).
        let exports = symvers
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 4 && f[2] == "vmlinux" && f.get(4).is_none_or(|ns| ns.is_empty())).then(|| f[1].to_owned())
            })
            .collect();
        Self { by_name, exports }
    }

    /// Whether modules may link against `name` directly.
    pub fn is_exported(&self, name: &str) -> bool {
        self.exports.contains(name)
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
    /// symbols `object_globals` defines (see the module comment).
    pub fn sympos(&self, name: &str, text: bool, object_globals: &[String]) -> anyhow::Result<u64> {
        let all = self.named(name);
        match all.len() {
            0 => bail!("'{name}' is not in the kernel's symbol table (inlined or discarded in the build that runs?)"),
            1 => return Ok(0),
            _ => {}
        }
        // The span of the object's own uniquely named symbols of this kind.
        let own: Vec<u64> = object_globals
            .iter()
            .filter_map(|g| match self.named(g) {
                [s] if s.text == text => Some(s.addr),
                _ => None,
            })
            .collect();
        let (Some(lo), Some(hi)) = (own.iter().min(), own.iter().max()) else {
            bail!("'{name}' has {} symbols in the kernel and its object has no global symbol to tell which is its own", all.len());
        };
        let inside: Vec<usize> = (0..all.len()).filter(|&i| all[i].text == text && all[i].addr >= *lo && all[i].addr <= *hi).collect();
        match inside.as_slice() {
            [i] => Ok(*i as u64 + 1),
            _ => Err(anyhow!(
                "'{name}' has {} symbols in the kernel and {} lie among its object's symbols ({lo:#x}..{hi:#x}): which one is meant cannot be told",
                all.len(),
                inside.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(k.sympos("alpha", true, &[]).unwrap(), 0);
        // The object defining alpha and beta holds the second 'helper'.
        assert_eq!(k.sympos("helper", true, &["alpha".into(), "beta".into()]).unwrap(), 2);
        // Spanning two copies: refused, not guessed.
        assert!(k.sympos("helper", true, &["_text".into(), "gamma".into()]).is_err());
        // No global symbol to place it by: refused.
        assert!(k.sympos("helper", true, &[]).is_err());
        assert!(k.sympos("missing", true, &[]).is_err());
        assert_eq!(k.global_sympos("alpha").unwrap(), 0);
        assert!(k.global_sympos("helper").is_err(), "only statics of that name");
    }

    #[test]
    fn only_plain_vmlinux_exports_count() {
        let k = KernelSymbols::parse(MAP, SYMVERS);
        assert!(k.is_exported("alpha"));
        assert!(!k.is_exported("gamma"), "a namespaced export needs an import: resolved by name instead");
        assert!(!k.is_exported("m"), "exported by a module, not vmlinux");
        assert!(!k.is_exported("beta"));
    }
}
