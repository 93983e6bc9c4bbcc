//! Feed signatures: ed25519 over the exact bytes of index.json.
//!
//! Keys and signatures are standard base64 text: a secret key file holds
//! the 32-byte seed, a public key file the 32-byte public key, and
//! `index.json.sig` the 64-byte signature.

use std::{
    fs,
    path::{
        Path,
        PathBuf, //
    },
};

use base64::{
    Engine as _,
    engine::general_purpose::STANDARD, //
};
use ed25519_dalek::{
    Signer as _,
    SigningKey,
    Verifier as _,
    VerifyingKey, //
};

/// A key or signature problem.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0}")]
    File(#[from] crate::fsutil::FileError),
    #[error("{what} is not base64 of {len} bytes")]
    Encoding { what: String, len: usize },
    #[error("bad signature: index.json is not signed by any trusted key ({keys} key(s) tried)")]
    BadSignature { keys: usize },
    #[error("no trusted keys: set trusted_keys in the config (kmend refuses unsigned feeds)")]
    NoTrustedKeys,
}

fn decode<const N: usize>(text: &str, what: &str) -> Result<[u8; N], SignError> {
    let err = || SignError::Encoding { what: what.to_owned(), len: N };
    let bytes = STANDARD.decode(text.trim()).map_err(|_| err())?;
    bytes.try_into().map_err(|_| err())
}

/// A new key pair: (secret key text, public key text).
pub fn generate() -> (String, String) {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    (STANDARD.encode(key.to_bytes()), STANDARD.encode(key.verifying_key().to_bytes()))
}

/// Parses a secret key text.
pub fn secret_key(text: &str, what: &str) -> Result<SigningKey, SignError> {
    Ok(SigningKey::from_bytes(&decode::<32>(text, what)?))
}

/// Parses a public key text.
pub fn public_key(text: &str, what: &str) -> Result<VerifyingKey, SignError> {
    VerifyingKey::from_bytes(&decode::<32>(text, what)?).map_err(|_| SignError::Encoding { what: what.to_owned(), len: 32 })
}

/// Reads a key text file.
pub fn read_key_file(path: &Path) -> Result<String, SignError> {
    Ok(fs::read_to_string(path).map_err(crate::fsutil::at("read key", path))?)
}

/// A trusted key as the config gives it: the base64 key itself, or the path
/// of a file holding it (resolved with `resolve`, e.g. under KMEND_ROOT).
pub fn trusted_key(entry: &str, resolve: impl Fn(&str) -> PathBuf) -> Result<VerifyingKey, SignError> {
    if let Ok(key) = public_key(entry, "") {
        return Ok(key);
    }
    let path = resolve(entry);
    let text = read_key_file(&path)?;
    public_key(&text, &format!("key file '{}'", path.display()))
}

/// The detached signature text of `data`.
pub fn sign(data: &[u8], key: &SigningKey) -> String {
    STANDARD.encode(key.sign(data).to_bytes()) + "\n"
}

/// Checks that `signature` (text) over `data` was made by one of `keys`.
pub fn verify(data: &[u8], signature: &str, keys: &[VerifyingKey]) -> Result<(), SignError> {
    if keys.is_empty() {
        return Err(SignError::NoTrustedKeys);
    }
    let sig = decode::<64>(signature, "index.json.sig")
        .map_err(|_| SignError::BadSignature { keys: keys.len() })?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    if keys.iter().any(|k| k.verify(data, &sig).is_ok()) {
        Ok(())
    } else {
        Err(SignError::BadSignature { keys: keys.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_exact_bytes() {
        let (secret, public) = generate();
        let sk = secret_key(&secret, "secret").unwrap();
        let pk = public_key(&public, "public").unwrap();
        let sig = sign(b"{\"format\":1}", &sk);
        verify(b"{\"format\":1}", &sig, &[pk]).unwrap();
        // One byte more (even whitespace) is a different document.
        assert!(matches!(verify(b"{\"format\":1} ", &sig, &[pk]), Err(SignError::BadSignature { .. })));
        let (_, other) = generate();
        let other = public_key(&other, "other").unwrap();
        assert!(matches!(verify(b"{\"format\":1}", &sig, &[other]), Err(SignError::BadSignature { .. })));
        verify(b"{\"format\":1}", &sig, &[other, pk]).unwrap();
        assert!(matches!(verify(b"x", &sig, &[]), Err(SignError::NoTrustedKeys)));
        assert!(matches!(verify(b"x", "garbage", &[pk]), Err(SignError::BadSignature { .. })));
    }

    #[test]
    fn trusted_keys_may_be_files() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = generate();
        std::fs::write(dir.path().join("feed.pub"), &public).unwrap();
        let key = trusted_key("/feed.pub", |p| dir.path().join(p.trim_start_matches('/'))).unwrap();
        assert_eq!(key, public_key(&public, "").unwrap());
        assert!(trusted_key("/missing.pub", |p| dir.path().join(p.trim_start_matches('/'))).is_err());
    }
}
