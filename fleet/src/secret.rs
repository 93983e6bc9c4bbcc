//! Group keys and host tokens: 32 random bytes, hex, with a prefix that
//! says which kind a string is (`kmg_` group key, `kmh_` host token). The
//! server stores only their SHA-256, so a copy of its database lets nobody
//! register or report as a host.

use sha2::{
    Digest as _,
    Sha256, //
};

/// Prefix of a group registration key.
pub const GROUP_KEY_PREFIX: &str = "kmg_";
/// Prefix of a host's token.
pub const HOST_TOKEN_PREFIX: &str = "kmh_";

/// A new secret with `prefix`.
pub fn generate(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// What the database keeps of a secret.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two digests in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_only_their_digest_matches() {
        let a = generate(GROUP_KEY_PREFIX);
        let b = generate(GROUP_KEY_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("kmg_") && a.len() == 4 + 64);
        assert!(same(&digest(&a), &digest(&a)));
        assert!(!same(&digest(&a), &digest(&b)));
        assert!(!same(&digest(&a), &digest(&a)[1..]));
    }
}
