//! The fleet database: SQLite (bundled), one file, schema migrated forward
//! at open (`PRAGMA user_version` counts the migrations applied).
//!
//! Kept per host: its group, hostname, the SHA-256 of its token, when it
//! registered and last checked in, and its last report as the agent sent it
//! (`kmend status --json`). Every change is written to `audit`.

use std::{
    path::Path,
    sync::{
        Arc,
        Mutex, //
    },
};

use rusqlite::{
    Connection,
    OptionalExtension as _,
    params, //
};
use serde::Serialize;

use crate::{
    policy::GroupPolicy,
    secret, //
};

/// The schema, one migration per entry, never edited once released.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_sha256 TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL
    );
    CREATE TABLE hosts (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        hostname TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        registered TEXT NOT NULL,
        revoked TEXT,
        last_checkin TEXT,
        report TEXT
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
", "
    ALTER TABLE groups ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE rollout_steps (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        host_id INTEGER NOT NULL REFERENCES hosts(id),
        target TEXT NOT NULL,
        host_started TEXT NOT NULL,
        started TEXT NOT NULL,
        proven_at TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        finished TEXT,
        acknowledged INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX rollout_steps_group ON rollout_steps (group_id, state);
", "
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        created TEXT NOT NULL,
        done_channels TEXT NOT NULL DEFAULT '[]',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt TEXT NOT NULL,
        last_error TEXT,
        delivered TEXT
    );
    CREATE INDEX outbox_due ON outbox (delivered, next_attempt);
"];

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("fleet database '{path}': {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("fleet database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("group '{0}' already exists")]
    GroupExists(String),
    #[error("invalid group name '{0}': 1 to 64 characters of [A-Za-z0-9_.-]")]
    BadGroupName(String),
}

/// A host as the API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub id: i64,
    pub group: String,
    pub hostname: String,
    pub registered: String,
    pub revoked: Option<String>,
    pub last_checkin: Option<String>,
    /// The last `kmend status --json` the host sent.
    pub report: Option<serde_json::Value>,
}

/// The database, shared by the server's handlers.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

/// The server's clock, to the second (RFC 3339).
pub(crate) fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

fn valid_group_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Db {
    /// Opens (creating) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path).map_err(|source| DbError::Open { path: path.display().to_string(), source })?;
        Self::migrate(conn)
    }

    fn migrate(mut conn: Connection) -> Result<Self, DbError> {
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(applied).unwrap_or(0)) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", n + 1)?;
            tx.commit()?;
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, DbError>) -> Result<T, DbError> {
        // A handler that panicked cannot leave SQLite half-written (each
        // change is one transaction), so a poisoned lock is still usable.
        let mut conn = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    }

    pub(crate) fn audit(conn: &Connection, actor: &str, action: &str, detail: &str) -> Result<(), DbError> {
        conn.execute("INSERT INTO audit (time, actor, action, detail) VALUES (?1, ?2, ?3, ?4)", params![now(), actor, action, detail])?;
        Ok(())
    }

    /// Creates group `name`; returns its registration key (shown once).
    pub fn add_group(&self, name: &str, actor: &str) -> Result<String, DbError> {
        if !valid_group_name(name) {
            return Err(DbError::BadGroupName(name.to_owned()));
        }
        let key = secret::generate(secret::GROUP_KEY_PREFIX);
        self.with(|conn| {
            let tx = conn.transaction()?;
            let exists: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM groups WHERE name = ?1)", [name], |r| r.get(0))?;
            if exists {
                return Err(DbError::GroupExists(name.to_owned()));
            }
            tx.execute("INSERT INTO groups (name, key_sha256, created) VALUES (?1, ?2, ?3)", params![name, secret::digest(&key), now()])?;
            Self::audit(&tx, actor, "group-add", name)?;
            tx.commit()?;
            Ok(key)
        })
    }

    /// Registers a host with a group key: `Some((host id, token))`, the
    /// token shown once; `None` for an unknown key.
    pub fn register(&self, key: &str, hostname: &str) -> Result<Option<(i64, String)>, DbError> {
        let token = secret::generate(secret::HOST_TOKEN_PREFIX);
        self.with(|conn| {
            let tx = conn.transaction()?;
            let group: Option<(i64, String)> = tx
                .query_row("SELECT id, name FROM groups WHERE key_sha256 = ?1", [secret::digest(key)], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((group_id, group)) = group else { return Ok(None) };
            tx.execute(
                "INSERT INTO hosts (group_id, hostname, token_sha256, registered) VALUES (?1, ?2, ?3, ?4)",
                params![group_id, hostname, secret::digest(&token), now()],
            )?;
            let id = tx.last_insert_rowid();
            Self::audit(&tx, &format!("host {id}"), "register", &format!("{hostname} in group {group}"))?;
            tx.commit()?;
            Ok(Some((id, token)))
        })
    }

    /// The live host of `token`: (host id, group id, group policy).
    pub(crate) fn host_by_token(conn: &Connection, token: &str) -> Result<Option<(i64, i64, GroupPolicy)>, DbError> {
        let row: Option<(i64, i64, String)> = conn
            .query_row(
                "SELECT h.id, h.group_id, g.policy FROM hosts h JOIN groups g ON g.id = h.group_id
                 WHERE h.token_sha256 = ?1 AND h.revoked IS NULL",
                [secret::digest(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row.map(|(h, g, p)| (h, g, serde_json::from_str(&p).unwrap_or_default())))
    }

    /// Stores a host's report and advances its rollout step: the host id
    /// and how soon it should check in again (it is in a rollout step), or
    /// `None` for an unknown or revoked token.
    pub fn check_in(&self, token: &str, report: &serde_json::Value) -> Result<Option<(i64, Option<u64>)>, DbError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let Some((id, _, _)) = Self::host_by_token(&tx, token)? else { return Ok(None) };
            tx.execute("UPDATE hosts SET last_checkin = ?1, report = ?2 WHERE id = ?3", params![now(), report.to_string(), id])?;
            Self::queue_report_events(&tx, id, report)?;
            let recheck = Self::advance_step(&tx, id, report)?;
            tx.commit()?;
            Ok(Some((id, recheck)))
        })
    }

    /// Queues what a report announces: patches available to the group,
    /// and a verification that saw old code run.
    fn queue_report_events(conn: &Connection, host_id: i64, report: &serde_json::Value) -> Result<(), DbError> {
        let (group, hostname): (String, String) = conn.query_row(
            "SELECT g.name, h.hostname FROM hosts h JOIN groups g ON g.id = h.group_id WHERE h.id = ?1",
            [host_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let empty = Vec::new();
        let mut pending: Vec<String> = report["pending"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|p| format!("{}@{}", p["id"].as_str().unwrap_or("?"), p["version"]))
            .collect();
        pending.sort();
        if !pending.is_empty() {
            let patches = pending.join(" ");
            let event = serde_json::json!({ "event": "updates_available", "group": group, "host": hostname, "patches": patches });
            Self::enqueue(conn, &format!("available:{group}:{patches}"), event)?;
        }
        for v in report["verifications"].as_array().unwrap_or(&empty) {
            let old = v["old_body_hits"].as_u64().unwrap_or(0);
            if old > 0 {
                let patch = v["id"].as_str().unwrap_or("?");
                let event = serde_json::json!({
                    "event": "verification_failed", "group": group, "host": hostname, "patch": patch, "old_body_hits": old,
                    "verified_at": v["time"],
                });
                Self::enqueue(conn, &format!("verify:{host_id}:{patch}:{}", v["time"]), event)?;
            }
        }
        Ok(())
    }

    /// The policy of the group of host `token` (`None`: unknown token).
    pub fn policy_for_host(&self, token: &str) -> Result<Option<GroupPolicy>, DbError> {
        self.with(|conn| Ok(Self::host_by_token(conn, token)?.map(|(_, _, p)| p)))
    }

    /// Replaces group `name`'s policy: whether the group exists.
    pub fn set_policy(&self, name: &str, policy: &GroupPolicy, actor: &str) -> Result<bool, DbError> {
        let text = serde_json::to_string(policy).unwrap_or_default();
        self.with(|conn| {
            let tx = conn.transaction()?;
            let n = tx.execute("UPDATE groups SET policy = ?1 WHERE name = ?2", params![text, name])?;
            if n > 0 {
                Self::audit(&tx, actor, "policy", &format!("{name}: {text}"))?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Revokes host `id`'s token: whether the host existed.
    pub fn revoke(&self, id: i64, actor: &str) -> Result<bool, DbError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let n = tx.execute("UPDATE hosts SET revoked = ?1 WHERE id = ?2 AND revoked IS NULL", params![now(), id])?;
            if n > 0 {
                Self::audit(&tx, actor, "revoke", &format!("host {id}"))?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Every host, by group then hostname.
    pub fn hosts(&self) -> Result<Vec<Host>, DbError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT h.id, g.name, h.hostname, h.registered, h.revoked, h.last_checkin, h.report
                 FROM hosts h JOIN groups g ON g.id = h.group_id ORDER BY g.name, h.hostname, h.id",
            )?;
            let rows = stmt.query_map([], |r| {
                let report: Option<String> = r.get(6)?;
                Ok(Host {
                    id: r.get(0)?,
                    group: r.get(1)?,
                    hostname: r.get(2)?,
                    registered: r.get(3)?,
                    revoked: r.get(4)?,
                    last_checkin: r.get(5)?,
                    report: report.and_then(|t| serde_json::from_str(&t).ok()),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The audit log, oldest first: (time, actor, action, detail).
    pub fn audit_log(&self) -> Result<Vec<(String, String, String, String)>, DbError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT time, actor, action, detail FROM audit ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_check_in_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("fleet.sqlite")).unwrap();
        let key = db.add_group("prod", "admin").unwrap();
        assert!(matches!(db.add_group("prod", "admin"), Err(DbError::GroupExists(_))));
        assert!(matches!(db.add_group("bad name", "admin"), Err(DbError::BadGroupName(_))));
        assert_eq!(db.register("kmg_wrong", "web1").unwrap(), None);
        let (id, token) = db.register(&key, "web1").unwrap().unwrap();
        assert_eq!(db.check_in(&token, &serde_json::json!({"effective_version": "x"})).unwrap(), Some((id, None)));
        assert_eq!(db.check_in("kmh_other", &serde_json::json!({})).unwrap(), None);
        let hosts = db.hosts().unwrap();
        assert_eq!((hosts[0].group.as_str(), hosts[0].hostname.as_str()), ("prod", "web1"));
        assert_eq!(hosts[0].report.as_ref().unwrap()["effective_version"], "x");
        assert!(db.revoke(id, "admin").unwrap());
        assert_eq!(db.check_in(&token, &serde_json::json!({})).unwrap(), None);
        let actions: Vec<String> = db.audit_log().unwrap().into_iter().map(|a| a.2).collect();
        assert_eq!(actions, ["group-add", "register", "revoke"]);
        // Reopening migrates nothing twice and keeps the data.
        drop(db);
        let db = Db::open(&dir.path().join("fleet.sqlite")).unwrap();
        assert_eq!(db.hosts().unwrap().len(), 1);
        // Nothing secret is stored: neither the key nor the token.
        let raw = std::fs::read(dir.path().join("fleet.sqlite")).unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(!raw.contains(&key) && !raw.contains(&token));
    }
}
