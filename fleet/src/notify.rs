//! Notifications: a webhook (a JSON `POST`) and mail through the local MTA
//! (`sendmail -t`, as Ksplice mails about available updates) when
//!
//! | event | when |
//! |---|---|
//! | `updates_available` | a host of a group reports patches it has not applied (once per group and set of patches) |
//! | `rollout_halted` | a host's rollout step failed: its update failed, its old code still ran, or it went silent |
//! | `verification_failed` | a host's `kmend verify` saw the old body of a patch run |
//! | `host_silent` | a host has not checked in for longer than `--silent-after` (once per silence) |
//!
//! Each event is written to the `outbox` table in the same transaction as
//! the change that caused it, under a key that makes it unique (the same
//! halt is not announced twice). A delivery task sends what is due to every
//! configured channel, records which channels have it, and retries the
//! others with exponential backoff (30 s, doubling, at most 1 h; given up
//! after 20 attempts, with the last error kept). The retry schedule lives
//! in the database rather than in a retry library's memory, so a restart
//! of the server loses no notification.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{
        Command,
        Stdio, //
    },
    time::Duration,
};

use serde_json::{
    Value,
    json, //
};

use crate::{
    db::{
        Db,
        DbError,
        now, //
    },
    sql::Tx,
};

/// Where notifications go.
#[derive(Clone, Debug, Default)]
pub struct Notify {
    /// URLs that get each event as a JSON `POST`.
    pub webhooks: Vec<String>,
    /// Addresses that get each event by mail.
    pub mail_to: Vec<String>,
    /// The local MTA's `sendmail` (`/usr/sbin/sendmail`).
    pub sendmail: PathBuf,
}

/// Attempts before a notification is given up.
const MAX_ATTEMPTS: i64 = 20;

impl Notify {
    fn channels(&self) -> Vec<String> {
        let mut c: Vec<String> = self.webhooks.iter().map(|w| format!("webhook {w}")).collect();
        c.extend(self.mail_to.iter().map(|m| format!("mail {m}")));
        c
    }

    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.mail_to.is_empty()
    }
}

/// One line saying what happened (a mail's subject).
pub fn summary(event: &Value) -> String {
    let s = |f: &str| event[f].as_str().unwrap_or("?").to_owned();
    let line = match event["event"].as_str() {
        Some("updates_available") => format!("group {}: new patches available: {}", s("group"), s("patches")),
        Some("rollout_halted") => format!("group {}: rollout halted at host {}: {}", s("group"), s("host"), s("reason")),
        Some("verification_failed") => format!("host {} (group {}): kmend verify of {} failed: the old body still ran", s("host"), s("group"), s("patch")),
        Some("host_silent") => format!("host {} (group {}) stopped checking in (last at {})", s("host"), s("group"), s("last_checkin")),
        _ => format!("event {}", event["event"]),
    };
    // A subject header is one line.
    line.replace(['\r', '\n'], " ")
}

impl Db {
    /// Queues `event` under `key`; an event already queued under that key
    /// is not queued again.
    pub(crate) fn enqueue(tx: &mut Tx, key: &str, mut event: Value) -> Result<(), DbError> {
        let time = now();
        event["time"] = json!(time);
        tx.execute(
            "INSERT INTO outbox (key, event, created, next_attempt) VALUES ($1, $2, $3, $3) ON CONFLICT (key) DO NOTHING",
            &[key.into(), event.to_string().into(), time.into()],
        )?;
        Ok(())
    }

    /// Queues `host_silent` for every live host silent at `now`.
    pub fn queue_silent_hosts(&self, silent_after: jiff::SignedDuration) -> Result<(), DbError> {
        let hosts = self.hosts()?;
        let now_t = jiff::Timestamp::now();
        self.with(|tx| {
            for h in hosts.iter().filter(|h| crate::drift::silent(h, now_t, silent_after)) {
                let last = h.last_checkin.clone().unwrap_or_else(|| "never".into());
                let event = json!({ "event": "host_silent", "group": h.group, "host": h.hostname, "last_checkin": last });
                Self::enqueue(tx, &format!("silent:{}:{last}", h.id), event)?;
            }
            Ok(())
        })
    }

    /// Events due for delivery: (id, event, channels that have it).
    fn due(&self) -> Result<Vec<(i64, Value, Vec<String>)>, DbError> {
        self.with(|tx| {
            let rows = tx.query(
                "SELECT id, event, done_channels FROM outbox
                 WHERE delivered IS NULL AND attempts < $1 AND next_attempt <= $2 ORDER BY id LIMIT 100",
                &[MAX_ATTEMPTS.into(), now().into()],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.int(0), serde_json::from_str(&r.text(1)).unwrap_or_default(), serde_json::from_str(&r.text(2)).unwrap_or_default()))
                .collect())
        })
    }

    /// Records one delivery round of event `id`.
    fn record_delivery(&self, id: i64, done: &[String], all: bool, error: Option<&str>) -> Result<(), DbError> {
        self.with(|tx| {
            let attempts = tx.query_one("SELECT attempts FROM outbox WHERE id = $1", &[id.into()])?.map_or(0, |r| r.int(0));
            let backoff = 30i64.saturating_mul(1 << attempts.clamp(0, 7)).min(3600);
            let next = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(backoff)).round(jiff::Unit::Second).unwrap_or_default();
            let delivered = all.then(now);
            tx.execute(
                "UPDATE outbox SET done_channels = $1, attempts = attempts + 1, next_attempt = $2, last_error = $3, delivered = $4 WHERE id = $5",
                &[serde_json::to_string(done).unwrap_or_default().into(), next.to_string().into(), error.into(), delivered.into(), id.into()],
            )?;
            Ok(())
        })
    }

    /// The newest events, newest first (`GET /api/v1/events`).
    pub fn events(&self, limit: u32) -> Result<Vec<Value>, DbError> {
        self.with(|tx| {
            let rows = tx.query(
                "SELECT event, done_channels, attempts, last_error, delivered FROM outbox ORDER BY id DESC LIMIT $1",
                &[i64::from(limit).into()],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    json!({
                        "event": serde_json::from_str::<Value>(&r.text(0)).unwrap_or_default(),
                        "sent_to": serde_json::from_str::<Value>(&r.text(1)).unwrap_or_default(),
                        "attempts": r.int(2),
                        "last_error": r.opt_text(3),
                        "delivered": r.opt_text(4),
                    })
                })
                .collect())
        })
    }
}

fn post(url: &str, event: &Value) -> Result<(), String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).http_status_as_error(false).build(),
    );
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("kmend-fleet/", env!("CARGO_PKG_VERSION")))
        .send(event.to_string().as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let code = response.status().as_u16();
    if (200..300).contains(&code) { Ok(()) } else { Err(format!("{url}: HTTP {code}")) }
}

fn mail(sendmail: &PathBuf, to: &str, event: &Value) -> Result<(), String> {
    let body = format!(
        "To: {to}\nSubject: kmend-fleet: {}\nContent-Type: text/plain; charset=utf-8\n\n{}\n\n{}\n",
        summary(event),
        summary(event),
        serde_json::to_string_pretty(event).unwrap_or_default()
    );
    let mut child = Command::new(sendmail)
        .args(["-t", "-oi"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("'{}': {e} (install a local MTA, or pass --sendmail)", sendmail.display()))?;
    child.stdin.take().map(|mut s| s.write_all(body.as_bytes())).transpose().map_err(|e| format!("'{}': {e}", sendmail.display()))?;
    let out = child.wait_with_output().map_err(|e| format!("'{}': {e}", sendmail.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("'{}' {}: {}", sendmail.display(), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// One round: queues silent hosts, then sends what is due.
pub fn deliver_once(db: &Db, notify: &Notify, silent_after: jiff::SignedDuration) -> Result<(), DbError> {
    db.queue_silent_hosts(silent_after)?;
    let channels = notify.channels();
    for (id, event, mut done) in db.due()? {
        let mut errors = Vec::new();
        let todo: Vec<&String> = channels.iter().filter(|c| !done.contains(c)).collect();
        for c in todo {
            let sent = if let Some(url) = c.strip_prefix("webhook ") {
                post(url, &event)
            } else {
                mail(&notify.sendmail, c.strip_prefix("mail ").unwrap_or_default(), &event)
            };
            match sent {
                Ok(()) => done.push(c.clone()),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            tracing::warn!("notification {id} ({}) not delivered: {}", summary(&event), errors.join("; "));
        }
        db.record_delivery(id, &done, errors.is_empty(), (!errors.is_empty()).then(|| errors.join("; ")).as_deref())?;
    }
    Ok(())
}

/// Delivers notifications every `tick` until the server stops.
pub async fn run(db: Db, notify: Notify, silent_after: jiff::SignedDuration, tick: Duration) {
    loop {
        let (db2, n) = (db.clone(), notify.clone());
        match tokio::task::spawn_blocking(move || deliver_once(&db2, &n, silent_after)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("notifications: {e}"),
            Err(e) => tracing::error!("notifications: task failed: {e}"),
        }
        tokio::time::sleep(tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_one_line_whatever_the_reason_says() {
        let e = json!({ "event": "rollout_halted", "group": "ha", "host": "ha3", "reason": "bad\r\nBcc: x@y" });
        assert_eq!(summary(&e), "group ha: rollout halted at host ha3: bad  Bcc: x@y");
    }
}
