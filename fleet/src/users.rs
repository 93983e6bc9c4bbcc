//! Dashboard users: a name and a password, for admins who log in with a
//! form rather than ask the API for a one-time link (`crate::session`).
//!
//! Only an Argon2id hash is kept (a PHC string from RustCrypto's `argon2`
//! with its default cost, 19 MiB and 2 passes, OWASP's minimum), so a copy
//! of the database gives no password. Checking an unknown name costs a
//! hash too, so the time of a refusal does not tell which names exist.
//! Adding, removing, logging in and failing to are audited.

use argon2::{
    Argon2,
    PasswordHash,
    PasswordHasher as _,
    PasswordVerifier as _,
    password_hash::{
        SaltString,
        rand_core::OsRng, //
    },
};

use crate::db::{
    Db,
    DbError,
    now,
};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

/// A hash of a password nobody has, checked for unknown names.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$a21lbmQtZGVjb3ktc2FsdA$0mD1Go0aZ2mVwo0fB2pDf6Bdk0nJdNA+cdfqBSzh0aA";

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b))
}

/// The Argon2id hash of `password` (PHC string), with a fresh salt.
pub fn hash(password: &str) -> Result<String, DbError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DbError::BadUser(format!("the password could not be hashed: {e}")))
}

/// Whether `password` matches `hash` (false for a malformed hash).
pub fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

impl Db {
    /// Adds user `name` with `password` (at least [`MIN_PASSWORD`]
    /// characters).
    pub fn add_user(&self, name: &str, password: &str, actor: &str) -> Result<(), DbError> {
        if !valid_name(name) {
            return Err(DbError::BadUser(format!("invalid user name '{name}': 1 to 64 characters of [A-Za-z0-9_.@-]")));
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(DbError::BadUser(format!("the password must have at least {MIN_PASSWORD} characters")));
        }
        let hash = hash(password)?;
        self.with(|tx| {
            if tx.query_one("SELECT id FROM users WHERE name = $1", &[name.into()])?.is_some() {
                return Err(DbError::BadUser(format!("user '{name}' already exists")));
            }
            tx.execute("INSERT INTO users (name, password_hash, created) VALUES ($1, $2, $3)", &[name.into(), hash.into(), now().into()])?;
            Self::audit(tx, actor, "user-add", name)
        })
    }

    /// Removes user `name`; whether there was one.
    pub fn remove_user(&self, name: &str, actor: &str) -> Result<bool, DbError> {
        self.with(|tx| {
            let n = tx.execute("DELETE FROM users WHERE name = $1", &[name.into()])?;
            if n > 0 {
                Self::audit(tx, actor, "user-remove", name)?;
            }
            Ok(n > 0)
        })
    }

    /// The users' names.
    pub fn users(&self) -> Result<Vec<String>, DbError> {
        self.with(|tx| Ok(tx.query("SELECT name FROM users ORDER BY name", &[])?.iter().map(|r| r.text(0)).collect()))
    }

    /// Whether `name` logs in with `password`; audited either way.
    pub fn log_in(&self, name: &str, password: &str) -> Result<bool, DbError> {
        let stored = self.with(|tx| Ok(tx.query_one("SELECT password_hash FROM users WHERE name = $1", &[name.into()])?.map(|r| r.text(0))))?;
        let ok = verify(stored.as_deref().unwrap_or(DECOY), password) && stored.is_some();
        let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        if ok {
            self.record(&format!("user {shown}"), "login", "a dashboard session opened with a password")?;
        } else {
            self.record("dashboard", "login-failed", &format!("wrong password or unknown user '{shown}'"))?;
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoy_is_a_well_formed_hash_of_nothing_anyone_types() {
        assert!(PasswordHash::new(DECOY).is_ok());
        assert!(!verify(DECOY, ""));
        assert!(!verify(DECOY, "password1234"));
    }

    #[test]
    fn only_a_salted_hash_is_kept_and_only_the_password_matches_it() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$") && !a.contains("correct"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify(&a, "correct horse battery") && verify(&b, "correct horse battery"));
        assert!(!verify(&a, "correct horse battery "));
        assert!(!verify("not a hash", "correct horse battery"));
    }
}
