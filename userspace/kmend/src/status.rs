//! The status text of `/dev/kmend`, parsed (format: docs/control-abi.md).

use serde::Serialize;

/// Everything kmend.ko reports.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct KernelStatus {
    /// Version of the status format.
    pub version: u32,
    /// Applied patches, oldest first.
    pub patches: Vec<PatchStatus>,
}

/// One applied patch.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PatchStatus {
    pub id: String,
    pub enabled: bool,
    pub transition: bool,
    pub replace: bool,
    pub functions: Vec<FunctionStatus>,
}

/// One function of a patch.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FunctionStatus {
    /// `vmlinux` or the module holding the target.
    pub object: String,
    /// The replaced function.
    pub name: String,
    /// Position among same-named symbols (0: unique).
    pub sympos: u64,
    /// `active` (this replacement runs) or `stacked` (a newer patch's runs).
    pub state: String,
    /// The replacement, as kallsyms prints it (`name+0x0/0x40 [module]`).
    pub replacement: String,
}

impl FunctionStatus {
    /// The replacement's symbol name (for a kprobe).
    pub fn replacement_symbol(&self) -> &str {
        self.replacement.split(['+', ' ']).next().unwrap_or_default()
    }
}

/// A status line kmend does not understand.
#[derive(Debug, thiserror::Error)]
#[error("kmend status line {line}: {what}: '{text}'")]
pub struct ParseError {
    pub line: usize,
    pub what: &'static str,
    pub text: String,
}

fn flag(field: Option<&str>, key: &str) -> Option<bool> {
    let v = field?.strip_prefix(key)?.strip_prefix('=')?;
    match v {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

impl KernelStatus {
    /// Parses the text read from `/dev/kmend`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut status = KernelStatus::default();
        for (i, raw) in text.lines().enumerate() {
            let err = |what| ParseError { line: i + 1, what, text: raw.to_owned() };
            let mut f = raw.split(' ');
            match f.next() {
                Some("kmend-status") => {
                    status.version = f.next().and_then(|v| v.parse().ok()).ok_or_else(|| err("bad version"))?;
                }
                Some("patch") => {
                    let id = f.next().ok_or_else(|| err("missing id"))?.to_owned();
                    let enabled = flag(f.next(), "enabled").ok_or_else(|| err("bad enabled"))?;
                    let transition = flag(f.next(), "transition").ok_or_else(|| err("bad transition"))?;
                    let replace = flag(f.next(), "replace").ok_or_else(|| err("bad replace"))?;
                    status.patches.push(PatchStatus { id, enabled, transition, replace, functions: Vec::new() });
                }
                Some("func") => {
                    let id = f.next().ok_or_else(|| err("missing patch id"))?;
                    let patch = status
                        .patches
                        .iter_mut()
                        .rev()
                        .find(|p| p.id == id)
                        .ok_or_else(|| err("function before its patch"))?;
                    let object = f.next().ok_or_else(|| err("missing object"))?.to_owned();
                    let name = f.next().ok_or_else(|| err("missing name"))?.to_owned();
                    let sympos = f.next().and_then(|v| v.parse().ok()).ok_or_else(|| err("bad position"))?;
                    let state = f.next().ok_or_else(|| err("missing state"))?.to_owned();
                    let replacement = f.collect::<Vec<_>>().join(" ");
                    patch.functions.push(FunctionStatus { object, name, sympos, state, replacement });
                }
                Some("") | None => {}
                Some(_) => {} // Newer kernels may add lines; ignore what we do not know.
            }
        }
        if status.version == 0 {
            return Err(ParseError { line: 1, what: "missing header", text: text.lines().next().unwrap_or("").to_owned() });
        }
        Ok(status)
    }

    pub fn patch(&self, id: &str) -> Option<&PatchStatus> {
        self.patches.iter().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "kmend-status 1\n\
patch kmend_sample enabled=1 transition=0 replace=0 funcs=1\n\
func kmend_sample vmlinux cmdline_proc_show 0 active kmend_sample_cmdline_proc_show+0x0/0x50 [kmend_sample]\n";

    #[test]
    fn parses_kernel_status() {
        let s = KernelStatus::parse(SAMPLE).unwrap();
        assert_eq!(s.version, 1);
        let p = s.patch("kmend_sample").unwrap();
        assert!(p.enabled && !p.transition && !p.replace);
        assert_eq!(p.functions.len(), 1);
        let f = &p.functions[0];
        assert_eq!((f.object.as_str(), f.name.as_str(), f.state.as_str()), ("vmlinux", "cmdline_proc_show", "active"));
        assert_eq!(f.replacement_symbol(), "kmend_sample_cmdline_proc_show");
        assert_eq!(f.replacement, "kmend_sample_cmdline_proc_show+0x0/0x50 [kmend_sample]");
    }

    #[test]
    fn empty_status_has_no_patches() {
        let s = KernelStatus::parse("kmend-status 1\n").unwrap();
        assert!(s.patches.is_empty());
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelStatus::parse("").is_err());
        assert!(KernelStatus::parse("kmend-status 1\npatch x enabled=2 transition=0 replace=0\n").is_err());
        assert!(KernelStatus::parse("kmend-status 1\nfunc nopatch vmlinux f 0 active g\n").is_err());
    }
}
