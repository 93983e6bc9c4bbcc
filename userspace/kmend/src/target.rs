//! What a patch targets, as both the artifact (`artifact.rs`) and the gate
//! to the kernel (`sys/`) see it: a function, its fingerprint, and the rules
//! for patch ids. Below both, so that dependencies run one way
//! (`artifact` → `target` ← `sys`).

use kmend_common::uapi::{
    KMEND_FP_MAX,
    KMEND_ID_MAX, //
};
use serde::{
    Deserialize,
    Serialize, //
};

/// One function a patch replaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// `vmlinux`, or the name of the module holding the function.
    pub object: String,
    pub name: String,
    /// Position among same-named symbols (0: unique).
    #[serde(default)]
    pub sympos: u64,
    /// Symbol of the replacement in the patch module.
    pub replacement: String,
    /// The old function's code: `<offset>:<hex bytes>` (offset from the
    /// function's start; empty: not checked). See docs/patch-format.md.
    #[serde(default)]
    pub fingerprint: String,
    /// Where the function lies, as built, so that apply need not read all
    /// of `/proc/kallsyms`: for `vmlinux`, its distance from `_text` (KASLR
    /// moves the image as one); for a module, its offset in [`Self::section`]
    /// (whose address a loaded module shows in `/sys/module/<name>/sections/`).
    /// kmend.ko still checks the name at the address this gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_offset: Option<u64>,
    /// For a module function: the ELF section holding it, e.g. `.text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
}

/// Whether `id` is a valid patch id (what kmend.ko accepts: letters,
/// digits, `_`, `-`, `.`, shorter than the kernel's limit).
pub fn is_patch_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() < KMEND_ID_MAX
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// Parses a manifest fingerprint, `<offset>:<hex bytes>` (offset from the
/// function's start, decimal); empty means "no fingerprint".
pub fn parse_fingerprint(fp: &str) -> Result<Option<(u32, Vec<u8>)>, String> {
    if fp.is_empty() {
        return Ok(None);
    }
    let (off, hex) = fp.split_once(':').ok_or("expected <offset>:<hex bytes>")?;
    let off: u32 = off.parse().map_err(|_| format!("bad offset '{off}'"))?;
    if hex.len() % 2 != 0 || hex.len() / 2 > KMEND_FP_MAX {
        return Err(format!("at most {KMEND_FP_MAX} bytes of hex"));
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex '{hex}'")))
        .collect::<Result<Vec<u8>, String>>()?;
    Ok(Some((off, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fingerprints() {
        assert_eq!(parse_fingerprint("").unwrap(), None);
        assert_eq!(parse_fingerprint("9:4889e5").unwrap(), Some((9, vec![0x48, 0x89, 0xe5])));
        assert!(parse_fingerprint("9").is_err());
        assert!(parse_fingerprint("x:00").is_err());
        assert!(parse_fingerprint("9:0").is_err());
        assert!(parse_fingerprint("9:zz").is_err());
        assert!(parse_fingerprint(&format!("0:{}", "00".repeat(65))).is_err());
    }

    #[test]
    fn patch_ids() {
        assert!(is_patch_id("kmend_sample-1.2"));
        assert!(!is_patch_id(""));
        assert!(!is_patch_id("a/b"));
        assert!(!is_patch_id(&"x".repeat(KMEND_ID_MAX)));
    }
}
