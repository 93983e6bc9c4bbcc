//! Feed signing keys: typed, with ids, and impossible to confuse.
//!
//! - A **secret key** file is PEM (`-----BEGIN PRIVATE KEY-----`): an
//!   ed25519 key in PKCS#8, mode 0600. Only a publisher has one.
//! - A **public key** file is the key as TUF metadata lists it: JSON
//!   `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":<hex>}}`.
//!   Its key id is TUF's: the SHA-256 of its canonical JSON.
//!
//! Each loader refuses the other kind by name ("this is a public key"),
//! so `feed sign --key feed.pub` cannot "sign".

use std::{
    fs,
    io::{
        self,
        Write as _, //
    },
    os::unix::fs::OpenOptionsExt as _,
    path::{
        Path,
        PathBuf, //
    },
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::Ed25519KeyPair, //
};
use tough::{
    key_source::KeySource,
    schema::key::Key,
    sign::{
        Sign,
        parse_keypair, //
    },
};

/// A key file kmend cannot use.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("'{path}': {op} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{0}' already exists: kmend does not overwrite keys (move it away or pick another --out)")]
    Exists(PathBuf),
    #[error("'{0}' is a public key: signing needs the secret key (the .key file from `kmend feed keygen`)")]
    PublicNotSecret(PathBuf),
    #[error("'{0}' is a secret key: give the public key (the .pub file); keep secret keys off the machines that apply patches")]
    SecretNotPublic(PathBuf),
    #[error("'{path}': not a kmend key file: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("key generation failed")]
    Generate,
}

const PEM_TAG: &str = "PRIVATE KEY";

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KeyError {
    let path = path.to_owned();
    move |source| KeyError::Io { op, path, source }
}

/// The TUF key id of `key` (lowercase hex).
pub fn key_id(key: &Key) -> String {
    key.key_id().map(|id| hex::encode(&*id)).unwrap_or_default()
}

/// The files a new key pair goes to: `<out>.key` and `<out>.pub`. `out`
/// may be a bare name (current directory); its directory must exist.
pub fn pair_paths(out: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        return Err(KeyError::Invalid { path: out.to_owned(), why: "--out must end in a file name prefix".into() });
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(KeyError::Io {
            op: "use directory",
            path: dir,
            source: io::Error::new(io::ErrorKind::NotFound, "no such directory (kmend does not create it)"),
        });
    }
    Ok((dir.join(format!("{name}.key")), dir.join(format!("{name}.pub"))))
}

/// Creates a new ed25519 key pair at `<out>.key` (0600) and `<out>.pub`;
/// refuses to overwrite either. Returns (secret, public, key id).
pub fn generate(out: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let (secret_path, public_path) = pair_paths(out)?;
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pem = pem::encode(&pem::Pem::new(PEM_TAG, der.as_ref().to_vec()));
    let pair = parse_keypair(der.as_ref()).map_err(|_| KeyError::Generate)?;
    let key = pair.tuf_key();
    // The secret key is 0600 from its first byte.
    create_new(&secret_path, 0o600, pem.as_bytes())?;
    let public = serde_json::to_string(&key).unwrap_or_default() + "\n";
    create_new(&public_path, 0o644, public.as_bytes())?;
    Ok((secret_path, public_path, key_id(&key)))
}

/// Writes a new file with `mode`; an existing one (even one created since
/// the caller checked) is never replaced.
fn create_new(path: &Path, mode: u32, data: &[u8]) -> Result<(), KeyError> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io_err("create", path))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io_err("write", path))
}

/// A secret key file, checked: signs as a [`KeySource`].
#[derive(Clone, Debug)]
pub struct SecretKey {
    path: PathBuf,
    der: Vec<u8>,
    /// Its public half.
    pub public: Key,
}

impl SecretKey {
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read(path).map_err(io_err("read", path))?;
        if serde_json::from_slice::<Key>(&text).is_ok() {
            return Err(KeyError::PublicNotSecret(path.to_owned()));
        }
        let invalid = |why: &str| KeyError::Invalid { path: path.to_owned(), why: why.to_owned() };
        let pem = pem::parse(&text).map_err(|_| invalid("expected a PEM secret key from `kmend feed keygen`"))?;
        if pem.tag() != PEM_TAG {
            return Err(invalid(&format!("PEM block is '{}', expected '{PEM_TAG}'", pem.tag())));
        }
        let der = pem.contents().to_vec();
        let pair = parse_keypair(&der).map_err(|_| invalid("not an ed25519, ECDSA P-256 or RSA PKCS#8 key"))?;
        Ok(Self { path: path.to_owned(), public: pair.tuf_key(), der })
    }

    pub fn key_id(&self) -> String {
        key_id(&self.public)
    }
}

#[tough::async_trait]
impl KeySource for SecretKey {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(parse_keypair(&self.der)?))
    }

    async fn write(&self, _value: &str, _key_id_hex: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err(format!("'{}': kmend never rewrites a key file", self.path.display()).into())
    }
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<Key, KeyError> {
    let text = fs::read(path).map_err(io_err("read", path))?;
    if pem::parse(&text).is_ok() {
        return Err(KeyError::SecretNotPublic(path.to_owned()));
    }
    serde_json::from_slice(&text)
        .map_err(|e| KeyError::Invalid { path: path.to_owned(), why: format!("expected a TUF public key (JSON): {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_refuses_to_overwrite_and_the_kinds_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("feed");
        let (secret, public, id) = generate(&out).unwrap();
        assert_eq!(id.len(), 64);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        let before = fs::read(&secret).unwrap();
        assert!(matches!(generate(&out), Err(KeyError::Exists(_))));
        assert_eq!(fs::read(&secret).unwrap(), before, "an existing secret key must survive keygen");
        let sk = SecretKey::read(&secret).unwrap();
        assert_eq!(sk.public, read_public(&public).unwrap());
        assert_eq!(sk.key_id(), id);
        assert!(matches!(SecretKey::read(&public), Err(KeyError::PublicNotSecret(_))));
        assert!(matches!(read_public(&secret), Err(KeyError::SecretNotPublic(_))));
    }

    #[test]
    fn keygen_out_may_be_a_bare_name_but_not_a_missing_directory() {
        let (s, p) = pair_paths(Path::new("feed2")).unwrap();
        assert_eq!((s, p), (PathBuf::from("./feed2.key"), PathBuf::from("./feed2.pub")));
        let missing = pair_paths(Path::new("/nonexistent/dir/x")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/dir"), "{missing}");
        assert!(!Path::new("/nonexistent").exists());
    }
}
