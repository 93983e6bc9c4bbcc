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

/// The furthest an ftrace site sits from its function's start (after ENDBR).
const MAX_SITE_OFFSET: u64 = 16;

/// Address of the ftrace site of the function at `func` called `name`, in
/// an `available_filter_functions_addrs` text: the first site of that name
/// at or just after `func` (same-named functions have their own sites).
pub fn ftrace_site(addrs: &str, name: &str, func: u64) -> Option<u64> {
    addrs
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            (f.next()? == name).then_some(addr)
        })
        .filter(|&site| site >= func && site - func <= MAX_SITE_OFFSET)
        .min()
}

/// `/proc/kallsyms`, read whole (root sees addresses).
pub fn read() -> anyhow::Result<String> {
    fs::read_to_string("/proc/kallsyms").context("'/proc/kallsyms': read failed")
}

/// The address of the first instruction of the body of `object:name` (the
/// `sympos`-th of that name; 0: unique), and its offset from the symbol.
pub fn body_address(kallsyms: &str, object: &str, name: &str, sympos: u64) -> anyhow::Result<(u64, u64)> {
    let func = resolve(kallsyms, object, name, sympos).map_err(|e| anyhow!(e))?;
    let tracefs = TRACEFS
        .iter()
        .map(Path::new)
        .find(|p| p.join("available_filter_functions_addrs").exists())
        .ok_or_else(|| anyhow!("tracefs is not mounted: mount -t tracefs none /sys/kernel/tracing"))?;
    let path = tracefs.join("available_filter_functions_addrs");
    let addrs = fs::read_to_string(&path).with_context(|| format!("'{}': read failed", path.display()))?;
    let site = ftrace_site(&addrs, name, func)
        .ok_or_else(|| anyhow!("'{object}:{name}': has no ftrace site at {func:#x}"))?;
    let body = site + FTRACE_CALL_LEN;
    Ok((body, body - func))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_site_of_the_right_function() {
        // Two functions called `dup`: each has its own site, after ENDBR.
        let addrs = "ffffffff81000014 dup\nffffffff81000034 dup\nffffffff81000044 other\n";
        assert_eq!(ftrace_site(addrs, "dup", 0xffffffff81000010), Some(0xffffffff81000014));
        assert_eq!(ftrace_site(addrs, "dup", 0xffffffff81000030), Some(0xffffffff81000034));
        assert_eq!(ftrace_site(addrs, "dup", 0xffffffff81000040), None);
        assert_eq!(ftrace_site(addrs, "missing", 0xffffffff81000010), None);
    }
}

/// The runtime address of the kernel's `_text`, read from the start of a
/// `/proc/kallsyms` stream: it is among the first lines (kallsyms lists by
/// address), so this stops long before the hundreds of thousands of symbols
/// of a distribution kernel.
pub fn text_address(kallsyms: impl std::io::Read) -> Result<u64, String> {
    use std::io::BufRead as _;
    for line in std::io::BufReader::with_capacity(64 << 10, kallsyms).lines() {
        let line = line.map_err(|e| format!("/proc/kallsyms: {e}"))?;
        let mut f = line.split_whitespace();
        let (Some(addr), Some(_), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
        if name == "_text" {
            let addr = u64::from_str_radix(addr, 16).map_err(|_| format!("/proc/kallsyms: bad address in '{line}'"))?;
            if addr == 0 {
                return Err("/proc/kallsyms hides addresses: run as root".to_owned());
            }
            return Ok(addr);
        }
    }
    Err("/proc/kallsyms has no _text".to_owned())
}

/// Where section `section` of loaded module `module` lies, from
/// `/sys/module/<module>/sections/<section>` (root only).
pub fn section_address(module: &str, section: &str) -> Result<u64, String> {
    if module.contains('/') || section.contains('/') || module.starts_with('.') {
        return Err(format!("'{module}:{section}': not a module section name"));
    }
    let path = format!("/sys/module/{module}/sections/{section}");
    let text = fs::read_to_string(&path).map_err(|e| format!("'{path}': read failed: {e}"))?;
    let hex = text.trim().trim_start_matches("0x");
    match u64::from_str_radix(hex, 16) {
        Ok(0) => Err(format!("'{path}' hides addresses: run as root")),
        Ok(addr) => Ok(addr),
        Err(_) => Err(format!("'{path}': not an address: {:?}", text.trim())),
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
    use super::{
        resolve,
        text_address, //
    };

    #[test]
    fn finds_text_without_reading_on() {
        let head = "ffffffff81000000 T startup_64\nffffffff81000000 T _text\n";
        // A reader that fails after the head: reaching it would be an error.
        let stream = std::io::Read::chain(head.as_bytes(), FailingReader);
        assert_eq!(text_address(stream), Ok(0xffffffff81000000));
        assert!(text_address("0000000000000000 T _text\n".as_bytes()).unwrap_err().contains("root"));
        assert!(text_address("ffffffff81000000 T startup_64\n".as_bytes()).unwrap_err().contains("no _text"));
    }

    struct FailingReader;

    impl std::io::Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("read past _text"))
        }
    }

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
