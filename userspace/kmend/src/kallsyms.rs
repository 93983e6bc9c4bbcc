//! Addresses of kernel functions and of their ftrace call sites.
//!
//! The probes need the first instruction of a function's *body*, past the
//! ftrace call site (which a redirected call still passes through). On x86_64
//! the site is a 5-byte call, at the function's start or after an ENDBR; its
//! address comes from tracefs' `available_filter_functions_addrs`.

use std::{
    fs,
    path::Path, //
};

use anyhow::{
    Context as _,
    anyhow, //
};

/// Length of the x86_64 ftrace call (`call __fentry__`, or its NOP).
pub const FTRACE_CALL_LEN: u64 = 5;

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Address of `name` in a `/proc/kallsyms`-format text (first match).
pub fn symbol_address(kallsyms: &str, name: &str) -> Option<u64> {
    kallsyms.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let addr = f.next()?;
        let _kind = f.next()?;
        (f.next()? == name).then(|| u64::from_str_radix(addr, 16).ok()).flatten()
    })
}

/// Address of `name`'s ftrace site in an `available_filter_functions_addrs` text.
pub fn ftrace_site(addrs: &str, name: &str) -> Option<u64> {
    kallsyms_like(addrs, name)
}

fn kallsyms_like(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let addr = f.next()?;
        (f.next()? == name).then(|| u64::from_str_radix(addr, 16).ok()).flatten()
    })
}

/// Offset, from the symbol, of the first instruction of `name`'s body.
pub fn body_offset(name: &str) -> anyhow::Result<u64> {
    let kallsyms = fs::read_to_string("/proc/kallsyms").context("'/proc/kallsyms': read failed")?;
    let func = symbol_address(&kallsyms, name)
        .filter(|&a| a != 0)
        .ok_or_else(|| anyhow!("'{name}': not in /proc/kallsyms (or addresses hidden: run as root)"))?;
    let tracefs = TRACEFS
        .iter()
        .map(Path::new)
        .find(|p| p.join("available_filter_functions_addrs").exists())
        .ok_or_else(|| anyhow!("tracefs is not mounted: mount -t tracefs none /sys/kernel/tracing"))?;
    let path = tracefs.join("available_filter_functions_addrs");
    let addrs = fs::read_to_string(&path).with_context(|| format!("'{}': read failed", path.display()))?;
    let site = ftrace_site(&addrs, name).ok_or_else(|| anyhow!("'{name}': has no ftrace site"))?;
    let offset = site
        .checked_sub(func)
        .ok_or_else(|| anyhow!("'{name}': ftrace site {site:#x} is before the symbol {func:#x}"))?;
    Ok(offset + FTRACE_CALL_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_symbols_and_sites() {
        let kallsyms = "ffffffff81000000 T _text\nffffffff81234560 t cmdline_proc_show\nffffffffc0000000 t foo\t[bar]\n";
        assert_eq!(symbol_address(kallsyms, "cmdline_proc_show"), Some(0xffffffff81234560));
        assert_eq!(symbol_address(kallsyms, "foo"), Some(0xffffffffc0000000));
        assert_eq!(symbol_address(kallsyms, "missing"), None);
        let addrs = "ffffffff81234564 cmdline_proc_show\n";
        assert_eq!(ftrace_site(addrs, "cmdline_proc_show"), Some(0xffffffff81234564));
    }
}

/// Resolves `object:name` (the `sympos`-th of that name, 1-based; 0: must be
/// unique) in a `/proc/kallsyms` text; `object` is `vmlinux` or a module.
pub fn resolve(kallsyms: &str, object: &str, name: &str, sympos: u64) -> Result<u64, String> {
    let matches: Vec<u64> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = f.next()?;
            let kind = f.next()?;
            if f.next()? != name || !matches!(kind, "t" | "T") {
                return None;
            }
            let module = f.next().and_then(|m| m.strip_prefix('[')).and_then(|m| m.strip_suffix(']'));
            let in_object = match module {
                None => object == "vmlinux",
                Some(m) => m == object,
            };
            in_object.then(|| u64::from_str_radix(addr, 16).ok()).flatten()
        })
        .collect();
    match (matches.len(), sympos) {
        (0, _) => Err(format!("'{object}:{name}' not found in /proc/kallsyms (not loaded?)")),
        (_, _) if matches.iter().all(|&a| a == 0) => Err("/proc/kallsyms hides addresses: run as root".to_owned()),
        (1, 0 | 1) => Ok(matches[0]),
        (n, 0) => Err(format!("'{object}:{name}' is ambiguous ({n} symbols): the patch must give a position")),
        (n, pos) if pos as usize > n => Err(format!("'{object}:{name}' has {n} symbols, not {pos}")),
        (_, pos) => Ok(matches[pos as usize - 1]),
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::resolve;

    const KALLSYMS: &str = "ffffffff81000010 t dup\nffffffff81000020 T uniq\nffffffff81000030 t dup\nffffffffc0001000 t dup\t[mod_a]\nffffffff81000040 d uniqdata\n";

    #[test]
    fn resolves_by_object_and_position() {
        assert_eq!(resolve(KALLSYMS, "vmlinux", "uniq", 0), Ok(0xffffffff81000020));
        assert_eq!(resolve(KALLSYMS, "vmlinux", "dup", 2), Ok(0xffffffff81000030));
        assert_eq!(resolve(KALLSYMS, "mod_a", "dup", 0), Ok(0xffffffffc0001000));
        assert!(resolve(KALLSYMS, "vmlinux", "dup", 0).unwrap_err().contains("ambiguous"));
        assert!(resolve(KALLSYMS, "vmlinux", "dup", 3).is_err());
        assert!(resolve(KALLSYMS, "vmlinux", "uniqdata", 0).is_err());
        assert!(resolve(KALLSYMS, "mod_b", "dup", 0).unwrap_err().contains("not found"));
        assert!(resolve("0000000000000000 t hidden\n", "vmlinux", "hidden", 0).unwrap_err().contains("root"));
    }
}
