//! Module signatures: every module kmend ships (kmend.ko, each patch, the
//! test fixtures) is signed for the kernel, as a distribution signs its own
//! modules, so it loads where the kernel enforces signatures (Secure Boot
//! lockdown, `module.sig_enforce=1`, `CONFIG_MODULE_SIG_FORCE`).
//!
//! The key is the feed publisher's: `$KMEND_MODULE_KEY` (one PEM file with
//! the private key and its X.509 certificate, the form the kernel's
//! `CONFIG_MODULE_SIG_KEY` takes), or else a test key generated once in the
//! cache. Signing is the kernel's own `scripts/sign-file` from the target
//! kernel's build tree, run in the toolchain chroot: the same bytes a kernel
//! build appends to its own modules (PKCS#7, SHA-256, the signature marker).
//!
//! The debug kernel trusts the key's certificate (`CONFIG_SYSTEM_TRUSTED_KEYS`,
//! as a machine that enrolled it with `mokutil` trusts it through its
//! platform keyring) and boots with `module.sig_enforce=1`; Debian's stock
//! kernel trusts only Debian's keys, so there kmend's modules load only
//! while signatures are not enforced, which the guest suite shows too.

use std::{
    fs,
    path::{
        Path,
        PathBuf, //
    },
};

use anyhow::Context as _;

use crate::{
    chroot::Chroot,
    kernel::Kernel,
    paths,
    run::{
        exec,
        output, //
    },
};

/// Environment variable naming the publisher's module-signing key.
pub const KEY_ENV: &str = "KMEND_MODULE_KEY";

/// What the generated test key's certificate says, besides the key.
const GENKEY: &str = "\
[ req ]
default_bits = 3072
distinguished_name = req_distinguished_name
prompt = no
string_mask = utf8only
x509_extensions = v3

[ req_distinguished_name ]
O = kmend test feed
CN = kmend test feed module signing key

[ v3 ]
basicConstraints = critical,CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// The module-signing key: one PEM file with the private key and the
/// certificate. Generated in the cache (in the chroot, with its openssl)
/// unless `$KMEND_MODULE_KEY` names the publisher's own.
pub fn key(chroot: &Chroot) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(KEY_ENV) {
        let path = PathBuf::from(path);
        let pem = fs::read_to_string(&path).with_context(|| format!("read {KEY_ENV}={}", path.display()))?;
        anyhow::ensure!(
            pem.contains("PRIVATE KEY-----") && pem.contains("BEGIN CERTIFICATE-----"),
            "{KEY_ENV}={}: needs the private key and its X.509 certificate in one PEM file",
            path.display()
        );
        return Ok(path);
    }
    let dir = paths::cache().join("keys");
    let pem = dir.join("module-signing.pem");
    if pem.exists() {
        return Ok(pem);
    }
    fs::create_dir_all(&dir)?;
    let config = dir.join("module-signing.genkey");
    fs::write(&config, GENKEY)?;
    let partial = dir.join("module-signing.pem.partial");
    println!("xtask: generating the test feed's module-signing key ({})", pem.display());
    // Captured: openssl draws its key search as lines of dots.
    output(
        chroot
            .command(&dir)
            .args(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch", "-x509"])
            .arg("-config")
            .arg(&config)
            .args(["-outform", "PEM"])
            .arg("-out")
            .arg(&partial)
            .arg("-keyout")
            .arg(&partial),
    )
    .context("generate the module-signing key")?;
    fs::rename(&partial, &pem)?;
    Ok(pem)
}

/// The certificate alone, PEM (what `CONFIG_SYSTEM_TRUSTED_KEYS` takes),
/// next to the key in the cache.
pub fn certificate(key: &Path) -> anyhow::Result<PathBuf> {
    let pem = fs::read_to_string(key).with_context(|| format!("read {}", key.display()))?;
    let start = pem.find("-----BEGIN CERTIFICATE-----").context("no certificate in the module-signing key file")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = pem[start..].find(end_marker).context("unterminated certificate")? + start + end_marker.len();
    let out = paths::cache().join("keys/module-signing.crt");
    let text = format!("{}\n", &pem[start..end]);
    if fs::read_to_string(&out).ok().as_deref() != Some(&text) {
        fs::create_dir_all(paths::cache().join("keys"))?;
        fs::write(&out, text)?;
    }
    Ok(out)
}

/// A signed copy of module `ko` (same name, in `signed/` beside it), made
/// when `ko` or the key is newer than the copy. Sign last: stripping or
/// relinking a module drops its signature.
pub fn sign(kernel: &Kernel, ko: &Path) -> anyhow::Result<PathBuf> {
    let key = key(&kernel.chroot)?;
    let name = ko.file_name().with_context(|| format!("{}: not a file", ko.display()))?;
    let out = ko.parent().unwrap_or(Path::new("/")).join("signed").join(name);
    fs::create_dir_all(out.parent().unwrap_or(Path::new("/")))?;
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((modified(&out), modified(ko), modified(&key)), (Some(o), Some(i), Some(k)) if o >= i && o >= k);
    if !fresh {
        let dir = ko.parent().unwrap_or(Path::new("/"));
        exec(
            kernel
                .chroot
                .command_binding(dir, &[key.parent().unwrap_or(Path::new("/")).to_owned()])
                .arg(kernel.build.join("scripts/sign-file"))
                .arg("sha256")
                .arg(&key)
                .arg(&key)
                .arg(ko)
                .arg(&out),
        )
        .with_context(|| format!("sign {}", ko.display()))?;
    }
    Ok(out)
}
