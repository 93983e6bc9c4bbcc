//! The fleet database: SQLite (bundled, one file, the default) or
//! PostgreSQL (a `postgres://` URL), the same schema migrated forward at
//! open (`crate::sql`).
//!
//! Kept per host: its group, hostname, the SHA-256 of its token, when it
//! registered and last checked in, and its last report as the agent sent it
//! (`kmend status --json`). Every change is written to `audit`.

use std::path::Path;

use serde::Serialize;

use crate::{
    policy::GroupPolicy,
    secret,
    sql::{
        Conn,
        SqlError,
        Tx, //
    },
};

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("fleet database '{place}': {source}")]
    Open {
        place: String,
        #[source]
        source: SqlError,
    },
    #[error("fleet database: {0}")]
    Sql(#[from] SqlError),
    #[error("group '{0}' already exists")]
    GroupExists(String),
    #[error("invalid group name '{0}': 1 to 64 characters of [A-Za-z0-9_.-]")]
    BadGroupName(String),
    /// A user that cannot be added (`crate::users`), with why.
    #[error("{0}")]
    BadUser(String),
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
    conn: Conn,
}

/// The server's clock, to the second (RFC 3339), truncated: a time kept
/// is never later than the moment it records (rounding up could put a
/// step's `proven_at` in the future and stretch its health window).
pub(crate) fn now() -> String {
    let t = jiff::Timestamp::now();
    let second = jiff::TimestampRound::new().smallest(jiff::Unit::Second).mode(jiff::RoundMode::Trunc);
    t.round(second).unwrap_or(t).to_string()
}

fn valid_group_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Db {
    /// Opens (creating) the SQLite database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Conn::sqlite(path).map_err(|source| DbError::Open { place: path.display().to_string(), source })?;
        Ok(Self { conn })
    }

    /// Opens the PostgreSQL database at `url` and migrates it.
    pub fn open_postgres(url: &str) -> Result<Self, DbError> {
        let place = redact_url(url);
        let conn = Conn::postgres(url).map_err(|source| DbError::Open { place, source })?;
        Ok(Self { conn })
    }

    /// `--db`: a `postgres://` (or `postgresql://`) URL, else a SQLite file.
    pub fn open_any(db: &str) -> Result<Self, DbError> {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            Self::open_postgres(db)
        } else {
            Self::open(Path::new(db))
        }
    }

    /// Runs `f` in one transaction.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Tx) -> Result<T, DbError>) -> Result<T, DbError> {
        self.conn.transaction(f)
    }

    pub(crate) fn audit(tx: &mut Tx, actor: &str, action: &str, detail: &str) -> Result<(), DbError> {
        tx.execute("INSERT INTO audit (time, actor, action, detail) VALUES ($1, $2, $3, $4)", &[now().into(), actor.into(), action.into(), detail.into()])?;
        Ok(())
    }

    /// Writes one line to the audit log on its own.
    pub fn record(&self, actor: &str, action: &str, detail: &str) -> Result<(), DbError> {
        self.with(|tx| Self::audit(tx, actor, action, detail))
    }

    /// Creates group `name`; returns its registration key (shown once).
    pub fn add_group(&self, name: &str, actor: &str) -> Result<String, DbError> {
        if !valid_group_name(name) {
            return Err(DbError::BadGroupName(name.to_owned()));
        }
        let key = secret::generate(secret::GROUP_KEY_PREFIX);
        self.with(|tx| {
            if tx.query_one("SELECT id FROM groups WHERE name = $1", &[name.into()])?.is_some() {
                return Err(DbError::GroupExists(name.to_owned()));
            }
            tx.execute("INSERT INTO groups (name, key_sha256, created) VALUES ($1, $2, $3)", &[name.into(), secret::digest(&key).into(), now().into()])?;
            Self::audit(tx, actor, "group-add", name)?;
            Ok(key)
        })
    }

    /// Registers a host with a group key: `Some((host id, token))`, the
    /// token shown once; `None` for an unknown key.
    pub fn register(&self, key: &str, hostname: &str) -> Result<Option<(i64, String)>, DbError> {
        let token = secret::generate(secret::HOST_TOKEN_PREFIX);
        self.with(|tx| {
            let Some(group) = tx.query_one("SELECT id, name FROM groups WHERE key_sha256 = $1", &[secret::digest(key).into()])? else {
                return Ok(None);
            };
            let row = tx.query_one(
                "INSERT INTO hosts (group_id, hostname, token_sha256, registered) VALUES ($1, $2, $3, $4) RETURNING id",
                &[group.int(0).into(), hostname.into(), secret::digest(&token).into(), now().into()],
            )?;
            let id = row.map_or(0, |r| r.int(0));
            Self::audit(tx, &format!("host {id}"), "register", &format!("{hostname} in group {}", group.text(1)))?;
            Ok(Some((id, token)))
        })
    }

    /// The live host of `token`: (host id, group id, group policy).
    pub(crate) fn host_by_token(tx: &mut Tx, token: &str) -> Result<Option<(i64, i64, GroupPolicy)>, DbError> {
        let row = tx.query_one(
            "SELECT h.id, h.group_id, g.policy FROM hosts h JOIN groups g ON g.id = h.group_id
             WHERE h.token_sha256 = $1 AND h.revoked IS NULL",
            &[secret::digest(token).into()],
        )?;
        Ok(row.map(|r| (r.int(0), r.int(1), serde_json::from_str(&r.text(2)).unwrap_or_default())))
    }

    /// Stores a host's report and advances its rollout step: the host id
    /// and how soon it should check in again (it is in a rollout step), or
    /// `None` for an unknown or revoked token.
    pub fn check_in(&self, token: &str, report: &serde_json::Value) -> Result<Option<(i64, Option<u64>)>, DbError> {
        self.with(|tx| {
            let Some((id, _, _)) = Self::host_by_token(tx, token)? else { return Ok(None) };
            tx.execute("UPDATE hosts SET last_checkin = $1, report = $2 WHERE id = $3", &[now().into(), report.to_string().into(), id.into()])?;
            Self::queue_report_events(tx, id, report)?;
            let recheck = Self::advance_step(tx, id, report)?;
            Ok(Some((id, recheck)))
        })
    }

    /// Queues what a report announces: patches available to the group,
    /// and a verification that saw old code run.
    fn queue_report_events(tx: &mut Tx, host_id: i64, report: &serde_json::Value) -> Result<(), DbError> {
        let row = tx.query_one(
            "SELECT g.name, h.hostname FROM hosts h JOIN groups g ON g.id = h.group_id WHERE h.id = $1",
            &[host_id.into()],
        )?;
        let Some(row) = row else { return Ok(()) };
        let (group, hostname) = (row.text(0), row.text(1));
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
            Self::enqueue(tx, &format!("available:{group}:{patches}"), event)?;
        }
        for v in report["verifications"].as_array().unwrap_or(&empty) {
            let old = v["old_body_hits"].as_u64().unwrap_or(0);
            if old > 0 {
                let patch = v["id"].as_str().unwrap_or("?");
                let event = serde_json::json!({
                    "event": "verification_failed", "group": group, "host": hostname, "patch": patch, "old_body_hits": old,
                    "verified_at": v["time"],
                });
                Self::enqueue(tx, &format!("verify:{host_id}:{patch}:{}", v["time"]), event)?;
            }
        }
        Ok(())
    }

    /// The policy of the group of host `token` (`None`: unknown token).
    pub fn policy_for_host(&self, token: &str) -> Result<Option<GroupPolicy>, DbError> {
        self.with(|tx| Ok(Self::host_by_token(tx, token)?.map(|(_, _, p)| p)))
    }

    /// Replaces group `name`'s policy: whether the group exists.
    pub fn set_policy(&self, name: &str, policy: &GroupPolicy, actor: &str) -> Result<bool, DbError> {
        let text = serde_json::to_string(policy).unwrap_or_default();
        self.with(|tx| {
            let n = tx.execute("UPDATE groups SET policy = $1 WHERE name = $2", &[text.clone().into(), name.into()])?;
            if n > 0 {
                Self::audit(tx, actor, "policy", &format!("{name}: {text}"))?;
            }
            Ok(n > 0)
        })
    }

    /// Revokes host `id`'s token: whether the host existed.
    pub fn revoke(&self, id: i64, actor: &str) -> Result<bool, DbError> {
        self.with(|tx| {
            let n = tx.execute("UPDATE hosts SET revoked = $1 WHERE id = $2 AND revoked IS NULL", &[now().into(), id.into()])?;
            if n > 0 {
                Self::audit(tx, actor, "revoke", &format!("host {id}"))?;
            }
            Ok(n > 0)
        })
    }

    /// Every host, by group then hostname.
    pub fn hosts(&self) -> Result<Vec<Host>, DbError> {
        self.with(|tx| {
            let rows = tx.query(
                "SELECT h.id, g.name, h.hostname, h.registered, h.revoked, h.last_checkin, h.report
                 FROM hosts h JOIN groups g ON g.id = h.group_id ORDER BY g.name, h.hostname, h.id",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| Host {
                    id: r.int(0),
                    group: r.text(1),
                    hostname: r.text(2),
                    registered: r.text(3),
                    revoked: r.opt_text(4),
                    last_checkin: r.opt_text(5),
                    report: r.opt_text(6).and_then(|t| serde_json::from_str(&t).ok()),
                })
                .collect())
        })
    }

    /// The audit log, oldest first: (time, actor, action, detail).
    pub fn audit_log(&self) -> Result<Vec<(String, String, String, String)>, DbError> {
        self.with(|tx| {
            let rows = tx.query("SELECT time, actor, action, detail FROM audit ORDER BY id", &[])?;
            Ok(rows.iter().map(|r| (r.text(0), r.text(1), r.text(2), r.text(3))).collect())
        })
    }
}

/// A database URL for messages: its password hidden.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Everything the server stores, on one database: registration,
    /// check-ins, revocation, policy, a rollout gate of one host at a
    /// time that halts and resumes, notifications kept once, the audit.
    fn exercise(db: &Db) {
        let key = db.add_group("prod", "admin").unwrap();
        assert!(matches!(db.add_group("prod", "admin"), Err(DbError::GroupExists(_))));
        assert!(matches!(db.add_group("bad name", "admin"), Err(DbError::BadGroupName(_))));
        assert_eq!(db.register("kmg_wrong", "web1").unwrap(), None);
        let (id1, t1) = db.register(&key, "web1").unwrap().unwrap();
        let (id2, t2) = db.register(&key, "web2").unwrap().unwrap();
        assert_ne!(id1, id2);
        assert_eq!(db.check_in(&t1, &json!({"effective_version": "x"})).unwrap(), Some((id1, None)));
        assert_eq!(db.check_in("kmh_other", &json!({})).unwrap(), None);
        let hosts = db.hosts().unwrap();
        assert_eq!((hosts[0].group.as_str(), hosts[0].hostname.as_str()), ("prod", "web1"));
        assert_eq!(hosts[0].report.as_ref().unwrap()["effective_version"], "x");

        // One at a time: web1 goes, web2 waits; web1's proof fails: halt.
        let gate = crate::policy::PolicyInput { rollout_max: Some(1), health_window: Some("0s".into()), ..Default::default() };
        assert!(db.set_policy("prod", &gate.validate().unwrap(), "admin").unwrap());
        assert_eq!(db.policy_for_host(&t2).unwrap().unwrap().rollout.unwrap().max, 1);
        let minute = jiff::SignedDuration::from_mins(1);
        let target = ["kp_a@1".to_owned()];
        let t0 = "2026-01-01T00:00:00Z";
        assert!(db.claim(&t1, &target, t0, minute).unwrap().unwrap().go);
        let wait = db.claim(&t2, &target, t0, minute).unwrap().unwrap();
        assert_eq!((wait.go, wait.reason.as_deref()), (false, Some("waiting for the rollout: web1 applying (1 at a time)")));
        let report = json!({
            "managed": [{ "id": "kp_a", "version": 1, "applied_at": "2026-01-01T00:00:01Z" }],
            "verifications": [{ "id": "kp_a", "time": "2026-01-01T00:00:02Z", "proven": false, "old_body_hits": 2 }],
            "pending": [{ "id": "kp_b", "version": 1 }],
        });
        assert_eq!(db.check_in(&t1, &report).unwrap(), Some((id1, None)));
        let halted = db.claim(&t2, &target, t0, minute).unwrap().unwrap();
        assert_eq!(halted.reason.as_deref(), Some("rollout halted: host web1: kmend verify of kp_a@1: the old body still ran (2 hits)"));
        assert!(db.rollouts(minute).unwrap()[0].halted.is_some());
        // The same report again: no second notification.
        db.check_in(&t1, &report).unwrap();
        let events: Vec<String> = db.events(10).unwrap().iter().map(|e| e["event"]["event"].as_str().unwrap().to_owned()).collect();
        assert_eq!(events, ["rollout_halted", "verification_failed", "updates_available"]);
        assert!(db.resume("prod", "admin").unwrap());
        assert!(db.claim(&t2, &target, t0, minute).unwrap().unwrap().go);
        let proven = json!({
            "managed": [{ "id": "kp_a", "version": 1, "applied_at": "2026-01-01T00:00:01Z" }],
            "verifications": [{ "id": "kp_a", "time": "2026-01-01T00:00:02Z", "proven": true, "old_body_hits": 0 }],
        });
        assert_eq!(db.check_in(&t2, &proven).unwrap(), Some((id2, Some(1))));
        assert_eq!(db.check_in(&t2, &proven).unwrap(), Some((id2, None)), "a 0 s health window is over at the next check-in");
        let steps: Vec<(String, String)> = db.rollouts(minute).unwrap()[0].steps.iter().map(|s| (s.hostname.clone(), s.state.clone())).collect();
        assert_eq!(steps, [("web2".to_owned(), "done".to_owned()), ("web1".to_owned(), "failed".to_owned())]);

        // Dashboard users: only the right password logs in; each try audited.
        db.add_user("alice", "correct horse battery", "admin").unwrap();
        assert!(db.add_user("alice", "another long password", "admin").unwrap_err().to_string().contains("already exists"));
        assert!(db.add_user("bob", "too short", "admin").unwrap_err().to_string().contains("at least 12 characters"));
        assert!(db.log_in("alice", "correct horse battery").unwrap());
        assert!(!db.log_in("alice", "correct horse batter").unwrap());
        assert!(!db.log_in("mallory", "correct horse battery").unwrap());
        assert_eq!(db.users().unwrap(), ["alice"]);
        assert!(db.remove_user("alice", "admin").unwrap());
        assert!(!db.log_in("alice", "correct horse battery").unwrap());

        assert!(db.revoke(id1, "admin").unwrap());
        assert!(!db.revoke(id1, "admin").unwrap());
        assert_eq!(db.check_in(&t1, &json!({})).unwrap(), None);
        let actions: Vec<String> = db.audit_log().unwrap().into_iter().map(|a| a.2).collect();
        assert_eq!(
            actions,
            [
                "group-add", "register", "register", "policy", "rollout-start", "rollout-halt", "rollout-resume", "rollout-start", "rollout-done",
                "user-add", "login", "login-failed", "login-failed", "user-remove", "login-failed", "revoke"
            ]
        );
    }

    #[test]
    fn the_server_state_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("fleet.sqlite")).unwrap();
        exercise(&db);
        let (key, token) = {
            let key = db.add_group("other", "admin").unwrap();
            (key.clone(), db.register(&key, "db1").unwrap().unwrap().1)
        };
        db.add_user("carol", "a password nobody reads", "admin").unwrap();
        // Reopening migrates nothing twice and keeps the data.
        drop(db);
        let db = Db::open(&dir.path().join("fleet.sqlite")).unwrap();
        assert_eq!(db.hosts().unwrap().len(), 3);
        // Nothing secret is stored: neither the key nor the token.
        let raw = std::fs::read(dir.path().join("fleet.sqlite")).unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(!raw.contains(&key) && !raw.contains(&token) && !raw.contains("a password nobody reads"));
        assert!(db.log_in("carol", "a password nobody reads").unwrap(), "the user survives reopening");
    }

    /// The same on a real PostgreSQL server (Debian's, started here on a
    /// loopback port).
    #[test]
    fn the_server_state_on_postgres() {
        let pg = crate::test_postgres::TestPostgres::start();
        let db = Db::open_any(&pg.url).unwrap();
        exercise(&db);
        // A second server opening it migrates nothing twice.
        let again = Db::open_any(&pg.url).unwrap();
        assert_eq!(again.hosts().unwrap().len(), 2);
        let bad = Db::open_any("postgres://kmend:secret@127.0.0.1:9/none").err().unwrap().to_string();
        assert!(bad.starts_with("fleet database 'postgres://kmend:***@127.0.0.1:9/none': "), "{bad}");
    }
}
