//! Module signatures: whether a module file carries one, whether the running
//! kernel insists on them, and what to tell a sysadmin whose kernel refused
//! a module for its signature.
//!
//! A signed module ends with a PKCS#7 signature, a 12-byte
//! `struct module_signature` and the marker `~Module signature appended~\n`
//! (the kernel's `scripts/sign-file`; `kernel/module/signing.c` checks it).
//! The kernel insists when `module.sig_enforce` is on
//! (`CONFIG_MODULE_SIG_FORCE`, the boot parameter, or a write to the
//! parameter) or when lockdown is on (Secure Boot machines boot with
//! `integrity`): then only modules signed by a key of its trusted, secondary
//! or platform (MOK) keyrings load. kmend checks nothing itself here: the
//! kernel is the judge; this module only explains its verdicts.

use std::{
    fs,
    io,
};

use crate::paths::Paths;

/// What ends a signed module.
const MARKER: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`: algo, hash, id_type, signer_len, key_id_len,
/// 3 bytes of padding, then the signature's length, big-endian.
const INFO_LEN: usize = 12;
/// `id_type` of a PKCS#7 signature (the only kind the kernel accepts).
const PKEY_ID_PKCS7: u8 = 2;

/// The signature appended to a module image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Appended {
    /// Length of the PKCS#7 message.
    pub len: u32,
}

/// The signature appended to module image `ko`, if it has a well-formed one.
pub fn appended(ko: &[u8]) -> Option<Appended> {
    let body = ko.strip_suffix(MARKER)?;
    let info = body.get(body.len().checked_sub(INFO_LEN)?..)?;
    let len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]);
    let fits = (len as usize).checked_add(INFO_LEN).is_some_and(|n| n <= body.len());
    (info[2] == PKEY_ID_PKCS7 && fits).then_some(Appended { len })
}

/// How the running kernel treats module signatures.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// `module.sig_enforce`: `None` on a kernel built without module signing.
    pub enforced: Option<bool>,
    /// The lockdown level in force (`none`, `integrity`, `confidentiality`);
    /// `None` when the kernel has no lockdown LSM or securityfs is not mounted.
    pub lockdown: Option<String>,
}

impl Policy {
    /// Reads the running kernel's policy.
    pub fn read(paths: &Paths) -> Self {
        let enforced = fs::read_to_string(paths.at("/sys/module/module/parameters/sig_enforce"))
            .ok()
            .map(|v| v.trim() == "Y");
        let lockdown = fs::read_to_string(paths.at("/sys/kernel/security/lockdown")).ok().and_then(|v| {
            // "none [integrity] confidentiality": the level in brackets.
            let start = v.find('[')? + 1;
            let end = v[start..].find(']')? + start;
            Some(v[start..end].to_owned())
        });
        Self { enforced, lockdown }
    }

    /// Whether only validly signed modules load.
    pub fn insists(&self) -> bool {
        self.enforced == Some(true) || self.lockdown.as_deref().is_some_and(|l| l != "none")
    }

    /// One line for `doctor` and `status`.
    pub fn describe(&self) -> String {
        let enforced = match self.enforced {
            Some(true) => "enforced",
            Some(false) => "not enforced",
            None => "not supported by this kernel",
        };
        let lockdown = self.lockdown.as_deref().unwrap_or("unknown (no lockdown LSM, or securityfs not mounted)");
        format!("module signatures {enforced}; lockdown: {lockdown}")
    }
}

/// What to do when the kernel will not load a feed's module.
pub const REMEDY: &str = "The kernel loads only modules signed by a key it trusts: enroll the feed's \
module-signing certificate (`mokutil --import <certificate.der>`, then confirm at the next boot), \
or use a feed whose modules are signed for this kernel. docs/agent.md, \"Secure Boot\", has the details.";

/// Why the kernel refused to load a module with `err`, when the reason is
/// its signature (given the kernel's `policy`); `None` for other errors.
pub fn refusal(err: &io::Error, policy: &Policy) -> Option<String> {
    let why = match err.raw_os_error()? {
        // Enforcement and no trusted signature; or a signature that does not
        // match the module, refused even when nothing is enforced.
        libc::EKEYREJECTED if policy.enforced == Some(true) => {
            "module signatures are enforced (module.sig_enforce), and this module is not signed by a key the kernel trusts, or its signature does not match its contents"
        }
        libc::EKEYREJECTED => "its signature does not match its contents, or the key is rejected",
        libc::EPERM if policy.insists() => {
            "the kernel is locked down, and this module is not signed by a key the kernel trusts"
        }
        libc::ENOKEY | libc::ENOPKG => "it is signed, but with a key or algorithm the kernel does not know",
        libc::EBADMSG => "its signature is malformed",
        _ => return None,
    };
    Some(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(body: &[u8], sig: &[u8]) -> Vec<u8> {
        let mut ko = body.to_vec();
        ko.extend_from_slice(sig);
        ko.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
        ko.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        ko.extend_from_slice(MARKER);
        ko
    }

    #[test]
    fn finds_an_appended_signature_and_nothing_else() {
        let ko = signed(b"\x7fELF module body", b"pkcs7 bytes");
        assert_eq!(appended(&ko), Some(Appended { len: 11 }));
        assert_eq!(appended(b"\x7fELF module body"), None);
        // A marker without room for the signature it claims.
        let mut short = b"xx".to_vec();
        short.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        short.extend_from_slice(MARKER);
        assert_eq!(appended(&short), None);
        // Not PKCS#7.
        let mut other = signed(b"body", b"sig");
        let at = other.len() - MARKER.len() - INFO_LEN + 2;
        other[at] = 1;
        assert_eq!(appended(&other), None);
    }

    #[test]
    fn reads_the_kernels_policy() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert_eq!(Policy::read(&paths), Policy { enforced: None, lockdown: None });
        fs::create_dir_all(dir.path().join("sys/module/module/parameters")).unwrap();
        fs::create_dir_all(dir.path().join("sys/kernel/security")).unwrap();
        fs::write(dir.path().join("sys/module/module/parameters/sig_enforce"), "N\n").unwrap();
        fs::write(dir.path().join("sys/kernel/security/lockdown"), "none [integrity] confidentiality\n").unwrap();
        let p = Policy::read(&paths);
        assert_eq!(p, Policy { enforced: Some(false), lockdown: Some("integrity".into()) });
        assert!(p.insists());
        assert_eq!(p.describe(), "module signatures not enforced; lockdown: integrity");
        fs::write(dir.path().join("sys/kernel/security/lockdown"), "[none] integrity confidentiality\n").unwrap();
        assert!(!Policy::read(&paths).insists());
    }

    #[test]
    fn explains_signature_refusals_only() {
        let enforced = Policy { enforced: Some(true), lockdown: Some("none".into()) };
        let locked = Policy { enforced: Some(false), lockdown: Some("integrity".into()) };
        let open = Policy { enforced: Some(false), lockdown: Some("none".into()) };
        let e = |n| io::Error::from_raw_os_error(n);
        assert!(refusal(&e(libc::EKEYREJECTED), &enforced).unwrap().contains("enforced"));
        assert!(refusal(&e(libc::EKEYREJECTED), &open).unwrap().contains("does not match"));
        assert!(refusal(&e(libc::EPERM), &locked).unwrap().contains("locked down"));
        // EPERM without lockdown is a missing capability, not a signature.
        assert_eq!(refusal(&e(libc::EPERM), &open), None);
        assert_eq!(refusal(&e(libc::EEXIST), &enforced), None);
    }
}
