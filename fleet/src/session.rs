//! Browser sessions for the dashboard.
//!
//! A browser cannot send the admin token as a header, and a token in a URL
//! ends up in histories and proxy logs. So an admin asks, with the token,
//! for a one-time login link (`POST /api/v1/login-links`, valid 5 minutes,
//! as Jupyter's token URLs); opening it sets an `HttpOnly`,
//! `SameSite=Strict` session cookie valid 12 hours. Only SHA-256 digests
//! of codes and session ids are kept, in memory: a restart logs everyone
//! out. Dashboard users (`crate::users`) open the same sessions with a
//! name and a password (`POST /login`).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        Mutex, //
    },
    time::{
        Duration,
        Instant, //
    },
};

use crate::secret;

/// The session cookie's name.
pub const COOKIE: &str = "kmend_fleet_session";
/// How long a login link may wait to be opened.
pub const LINK_LIFETIME: Duration = Duration::from_secs(300);
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Login codes and sessions, by digest, with their expiry.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    links: HashMap<String, Instant>,
    sessions: HashMap<String, Instant>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Two maps of expiries: nothing a panic could leave inconsistent.
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        inner.links.retain(|_, t| *t > now);
        inner.sessions.retain(|_, t| *t > now);
        inner
    }

    /// A new one-time login code.
    pub fn new_link(&self) -> String {
        let code = secret::generate("kml_");
        self.lock().links.insert(secret::digest(&code), Instant::now() + LINK_LIFETIME);
        code
    }

    /// Spends login `code`: a new session id, or `None` for a code that is
    /// unknown, expired or already used.
    pub fn open(&self, code: &str) -> Option<String> {
        let mut inner = self.lock();
        inner.links.remove(&secret::digest(code))?;
        Some(Self::new_session(&mut inner))
    }

    /// A new session for a user who gave the right password
    /// (`crate::users`).
    pub fn open_for_user(&self) -> String {
        Self::new_session(&mut self.lock())
    }

    fn new_session(inner: &mut Inner) -> String {
        let id = secret::generate("kms_");
        inner.sessions.insert(secret::digest(&id), Instant::now() + SESSION_LIFETIME);
        id
    }

    /// Whether session `id` is live.
    pub fn valid(&self, id: &str) -> bool {
        self.lock().sessions.contains_key(&secret::digest(id))
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.lock().sessions.remove(&secret::digest(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_code_opens_one_session_once() {
        let s = Sessions::default();
        let code = s.new_link();
        assert!(s.open("kml_unknown").is_none());
        let id = s.open(&code).unwrap();
        assert!(s.open(&code).is_none(), "a code was used twice");
        assert!(s.valid(&id) && !s.valid(&code));
        s.close(&id);
        assert!(!s.valid(&id));
    }
}
