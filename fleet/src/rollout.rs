//! The rollout gate: in a group whose policy sets `rollout.max = N`, at
//! most N hosts apply new patches at once, and the next host starts only
//! after a host that started has
//! 1. reported the patches applied,
//! 2. reported a `kmend verify` of each that proves it (the replacement
//!    ran, the old body did not), and
//! 3. kept checking in, still applied and proven, for the group's health
//!    window.
//!
//! A host that fails (its update failed, or the old body of a patch still
//! ran) or goes silent during its step halts the group's rollout; the
//! hosts after it are told to wait, and the reason is shown until an admin
//! resumes the rollout. Red Hat's guidance for HA clusters (one node at a
//! time, go on only when it survived) with kmend's proof as the gate.
//!
//! A host asks before applying (`POST /api/v1/rollout/claim` with the
//! patches it is about to apply); its step advances at each of its
//! check-ins ([`progress`] reads the report it sends).

use serde::Serialize;

use crate::{
    db::{
        Db,
        DbError,
        now, //
    },
    policy::{
        GroupPolicy,
        Rollout, //
    },
    sql::Tx,
};

/// Where a host's step stands after a check-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not there yet: what it waits for.
    Wait(String),
    /// Applied and proven: the health window runs from now (first time).
    Proven,
    /// Applied, proven, and healthy for the window: the next host may go.
    Done,
    /// The step failed: the group's rollout halts.
    Failed(String),
}

fn time(v: &serde_json::Value) -> Option<jiff::Timestamp> {
    v.as_str()?.parse().ok()
}

/// How a step with `target` (`id@version`), started at `host_started` by
/// the host's clock, stands given the host's `report` (`kmend status
/// --json`); `proven_at` and `now` by the server's clock.
pub fn progress(
    target: &[String],
    host_started: jiff::Timestamp,
    proven_at: Option<jiff::Timestamp>,
    window: jiff::SignedDuration,
    report: &serde_json::Value,
    now: jiff::Timestamp,
) -> Progress {
    let update = &report["last_update"];
    if let (Some(t), Some(error)) = (time(&update["time"]), update["error"].as_str()) {
        if t >= host_started {
            return Progress::Failed(format!("update failed: {error}"));
        }
    }
    let empty = Vec::new();
    let managed = report["managed"].as_array().unwrap_or(&empty);
    let verifications = report["verifications"].as_array().unwrap_or(&empty);
    for label in target {
        let (id, version) = label.rsplit_once('@').unwrap_or((label, ""));
        let Some(patch) = managed.iter().find(|p| p["id"] == id && p["version"].to_string() == version) else {
            return Progress::Wait(format!("applying {label}"));
        };
        let applied_at = time(&patch["applied_at"]);
        let v = verifications.iter().find(|v| v["id"] == id && time(&v["time"]).zip(applied_at).is_some_and(|(v, a)| v >= a));
        let Some(v) = v else { return Progress::Wait(format!("waiting for kmend verify of {label}")) };
        let old = v["old_body_hits"].as_u64().unwrap_or(0);
        if old > 0 {
            return Progress::Failed(format!("kmend verify of {label}: the old body still ran ({old} hits)"));
        }
        if v["proven"] != true {
            return Progress::Wait(format!("kmend verify of {label}: not exercised yet"));
        }
    }
    match proven_at {
        None => Progress::Proven,
        Some(p) if now.duration_since(p) >= window => Progress::Done,
        Some(p) => Progress::Wait(format!("health window until {}", p + window)),
    }
}

pub use kmend_common::fleet::Claim;

/// How often a host in, or waiting for, a rollout step checks in: often
/// enough to see a short health window through, at most every 5 minutes.
pub fn recheck_after(r: &Rollout) -> u64 {
    (r.health_window_seconds / 2).clamp(1, 300)
}

/// One host's step, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub host_id: i64,
    pub hostname: String,
    pub target: Vec<String>,
    /// `in_progress`, `done`, `failed`.
    pub state: String,
    /// What it waits for, or why it failed.
    pub reason: Option<String>,
    pub started: String,
    pub proven_at: Option<String>,
    pub finished: Option<String>,
}

/// A group's rollout, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GroupRollout {
    pub group: String,
    pub policy: GroupPolicy,
    /// Why the rollout stopped, until an admin resumes it.
    pub halted: Option<String>,
    /// Newest first.
    pub steps: Vec<Step>,
}

fn halt_reason(hostname: &str, reason: &str) -> String {
    format!("host {hostname}: {reason}")
}

impl Db {
    /// Audits and announces that step `step` of `hostname` halted its
    /// group's rollout.
    fn halted(tx: &mut Tx, step: i64, hostname: &str, why: &str) -> Result<(), DbError> {
        Self::audit(tx, "server", "rollout-halt", &halt_reason(hostname, why))?;
        let group = tx
            .query_one("SELECT g.name FROM rollout_steps s JOIN groups g ON g.id = s.group_id WHERE s.id = $1", &[step.into()])?
            .map(|r| r.text(0))
            .unwrap_or_default();
        let event = serde_json::json!({ "event": "rollout_halted", "group": group, "host": hostname, "reason": why });
        Self::enqueue(tx, &format!("halt:{step}"), event)
    }

    fn fail_step(tx: &mut Tx, step: i64, hostname: &str, why: &str) -> Result<(), DbError> {
        tx.execute("UPDATE rollout_steps SET state = 'failed', reason = $1, finished = $2 WHERE id = $3", &[why.into(), now().into(), step.into()])?;
        Self::halted(tx, step, hostname, why)
    }

    /// Marks failed the steps of hosts that stopped checking in for longer
    /// than `silent_after` (their last check-in, or the step's start if
    /// later).
    fn fail_silent_steps(tx: &mut Tx, group_id: i64, silent_after: jiff::SignedDuration) -> Result<(), DbError> {
        let steps = tx.query(
            "SELECT s.id, h.hostname, s.started, h.last_checkin
             FROM rollout_steps s JOIN hosts h ON h.id = s.host_id
             WHERE s.group_id = $1 AND s.state = 'in_progress'",
            &[group_id.into()],
        )?;
        let now_t = jiff::Timestamp::now();
        for r in steps {
            let started: Option<jiff::Timestamp> = r.text(2).parse().ok();
            let checkin: Option<jiff::Timestamp> = r.opt_text(3).and_then(|t| t.parse().ok());
            let Some(last) = started.max(checkin) else { continue };
            if now_t.duration_since(last) > silent_after {
                let why = format!("stopped checking in during its rollout step (last at {last})");
                Self::fail_step(tx, r.int(0), &r.text(1), &why)?;
            }
        }
        Ok(())
    }

    /// Host `token` asks to apply `target` (`id@version`), at `host_time`
    /// by its clock. `None` for an unknown or revoked token.
    pub fn claim(
        &self,
        token: &str,
        target: &[String],
        host_time: &str,
        silent_after: jiff::SignedDuration,
    ) -> Result<Option<Claim>, DbError> {
        self.with(|tx| {
            let Some((host_id, group_id, policy)) = Self::host_by_token(tx, token)? else { return Ok(None) };
            let Some(rollout) = policy.rollout else {
                return Ok(Some(Claim { go: true, reason: None, recheck_after: None }));
            };
            let recheck = Some(recheck_after(&rollout));
            Self::fail_silent_steps(tx, group_id, silent_after)?;
            let halted = tx.query_one(
                "SELECT h.hostname, s.reason FROM rollout_steps s JOIN hosts h ON h.id = s.host_id
                 WHERE s.group_id = $1 AND s.state = 'failed' AND s.acknowledged = 0 ORDER BY s.id LIMIT 1",
                &[group_id.into()],
            )?;
            if let Some(h) = halted {
                let reason = format!("rollout halted: {}", halt_reason(&h.text(0), &h.text(1)));
                return Ok(Some(Claim { go: false, reason: Some(reason), recheck_after: recheck }));
            }
            let target_json = serde_json::to_string(target).unwrap_or_default();
            let mine = tx.query_one("SELECT id FROM rollout_steps WHERE host_id = $1 AND state = 'in_progress'", &[host_id.into()])?;
            if let Some(step) = mine {
                // Asking again (a retry, or more patches since): same step.
                tx.execute("UPDATE rollout_steps SET target = $1 WHERE id = $2", &[target_json.into(), step.int(0).into()])?;
                return Ok(Some(Claim { go: true, reason: None, recheck_after: recheck }));
            }
            let busy: Vec<String> = tx
                .query(
                    "SELECT h.hostname FROM rollout_steps s JOIN hosts h ON h.id = s.host_id
                     WHERE s.group_id = $1 AND s.state = 'in_progress' ORDER BY s.id",
                    &[group_id.into()],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect();
            if busy.len() >= usize::try_from(rollout.max).unwrap_or(usize::MAX) {
                let reason = format!("waiting for the rollout: {} applying ({} at a time)", busy.join(", "), rollout.max);
                return Ok(Some(Claim { go: false, reason: Some(reason), recheck_after: recheck }));
            }
            tx.execute(
                "INSERT INTO rollout_steps (group_id, host_id, target, host_started, started, state, reason)
                 VALUES ($1, $2, $3, $4, $5, 'in_progress', 'applying')",
                &[group_id.into(), host_id.into(), target_json.into(), host_time.into(), now().into()],
            )?;
            Self::audit(tx, &format!("host {host_id}"), "rollout-start", &target.join(" "))?;
            Ok(Some(Claim { go: true, reason: None, recheck_after: recheck }))
        })
    }

    /// Advances host `host_id`'s step, if it has one, with the report it
    /// just sent: how soon it should check in again.
    pub(crate) fn advance_step(tx: &mut Tx, host_id: i64, report: &serde_json::Value) -> Result<Option<u64>, DbError> {
        let step = tx.query_one(
            "SELECT s.id, s.target, s.host_started, s.proven_at, g.policy, h.hostname
             FROM rollout_steps s JOIN groups g ON g.id = s.group_id JOIN hosts h ON h.id = s.host_id
             WHERE s.host_id = $1 AND s.state = 'in_progress'",
            &[host_id.into()],
        )?;
        let Some(step) = step else { return Ok(None) };
        let (id, hostname) = (step.int(0), step.text(5));
        let policy: GroupPolicy = serde_json::from_str(&step.text(4)).unwrap_or_default();
        let rollout = policy.rollout.unwrap_or(Rollout { max: 1, health_window_seconds: 0 });
        let target: Vec<String> = serde_json::from_str(&step.text(1)).unwrap_or_default();
        let started = step.text(2).parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let proven = step.opt_text(3).and_then(|p| p.parse().ok());
        let window = jiff::SignedDuration::from_secs(i64::try_from(rollout.health_window_seconds).unwrap_or(i64::MAX));
        match progress(&target, started, proven, window, report, jiff::Timestamp::now()) {
            Progress::Wait(why) => {
                tx.execute("UPDATE rollout_steps SET reason = $1 WHERE id = $2", &[why.into(), id.into()])?;
            }
            Progress::Proven => {
                let why = format!("health window of {}s", rollout.health_window_seconds);
                tx.execute("UPDATE rollout_steps SET proven_at = $1, reason = $2 WHERE id = $3", &[now().into(), why.into(), id.into()])?;
            }
            Progress::Done => {
                tx.execute("UPDATE rollout_steps SET state = 'done', reason = NULL, finished = $1 WHERE id = $2", &[now().into(), id.into()])?;
                Self::audit(tx, &format!("host {host_id}"), "rollout-done", &target.join(" "))?;
                return Ok(None);
            }
            Progress::Failed(why) => {
                Self::fail_step(tx, id, &hostname, &why)?;
                return Ok(None);
            }
        }
        Ok(Some(recheck_after(&rollout)))
    }

    /// Every group's policy and rollout (silent steps failed first).
    pub fn rollouts(&self, silent_after: jiff::SignedDuration) -> Result<Vec<GroupRollout>, DbError> {
        self.with(|tx| {
            let groups = tx.query("SELECT id, name, policy FROM groups ORDER BY name", &[])?;
            let mut out = Vec::new();
            for g in groups {
                let id = g.int(0);
                Self::fail_silent_steps(tx, id, silent_after)?;
                let rows = tx.query(
                    "SELECT s.host_id, h.hostname, s.target, s.state, s.reason, s.started, s.proven_at, s.finished, s.acknowledged
                     FROM rollout_steps s JOIN hosts h ON h.id = s.host_id WHERE s.group_id = $1 ORDER BY s.id DESC",
                    &[id.into()],
                )?;
                let steps: Vec<(Step, bool)> = rows
                    .iter()
                    .map(|r| {
                        let step = Step {
                            host_id: r.int(0),
                            hostname: r.text(1),
                            target: serde_json::from_str(&r.text(2)).unwrap_or_default(),
                            state: r.text(3),
                            reason: r.opt_text(4),
                            started: r.text(5),
                            proven_at: r.opt_text(6),
                            finished: r.opt_text(7),
                        };
                        (step, r.int(8) != 0)
                    })
                    .collect();
                let halted = steps
                    .iter()
                    .rev()
                    .find(|(s, acked)| s.state == "failed" && !acked)
                    .map(|(s, _)| halt_reason(&s.hostname, s.reason.as_deref().unwrap_or_default()));
                out.push(GroupRollout {
                    group: g.text(1),
                    policy: serde_json::from_str(&g.text(2)).unwrap_or_default(),
                    halted,
                    steps: steps.into_iter().map(|(s, _)| s).collect(),
                });
            }
            Ok(out)
        })
    }

    /// Resumes group `name`'s halted rollout (its failed steps are
    /// acknowledged): whether the group exists.
    pub fn resume(&self, name: &str, actor: &str) -> Result<bool, DbError> {
        self.with(|tx| {
            let Some(group) = tx.query_one("SELECT id FROM groups WHERE name = $1", &[name.into()])? else {
                return Ok(false);
            };
            let n = tx.execute("UPDATE rollout_steps SET acknowledged = 1 WHERE group_id = $1 AND state = 'failed'", &[group.int(0).into()])?;
            Self::audit(tx, actor, "rollout-resume", &format!("{name} ({n} failed step(s) acknowledged)"))?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: &str = "2026-11-24T10:00:00Z";

    fn report(applied: bool, verified: Option<(bool, u64)>, update_error: Option<&str>) -> serde_json::Value {
        json!({
            "last_update": { "time": "2026-11-24T10:00:05Z", "error": update_error },
            "managed": if applied { json!([{ "id": "kp_a", "version": 2, "applied_at": "2026-11-24T10:00:04Z" }]) } else { json!([]) },
            "verifications": match verified {
                Some((proven, old)) => json!([{ "id": "kp_a", "time": "2026-11-24T10:00:06Z", "proven": proven, "old_body_hits": old }]),
                None => json!([]),
            },
        })
    }

    #[test]
    fn a_step_goes_applied_proven_healthy_or_fails_with_its_reason() {
        let target = vec!["kp_a@2".to_owned()];
        let t0: jiff::Timestamp = T0.parse().unwrap();
        let w = jiff::SignedDuration::from_mins(10);
        let p = |r: &serde_json::Value, proven: Option<jiff::Timestamp>, now_min: i64| {
            progress(&target, t0, proven, w, r, t0 + jiff::SignedDuration::from_mins(now_min))
        };
        assert_eq!(p(&report(false, None, None), None, 1), Progress::Wait("applying kp_a@2".into()));
        assert_eq!(p(&report(true, None, None), None, 1), Progress::Wait("waiting for kmend verify of kp_a@2".into()));
        assert_eq!(p(&report(true, Some((false, 0)), None), None, 1), Progress::Wait("kmend verify of kp_a@2: not exercised yet".into()));
        assert_eq!(p(&report(true, Some((true, 0)), None), None, 1), Progress::Proven);
        let proven = Some(t0 + jiff::SignedDuration::from_mins(1));
        assert!(matches!(p(&report(true, Some((true, 0)), None), proven, 5), Progress::Wait(w) if w.starts_with("health window until")));
        assert_eq!(p(&report(true, Some((true, 0)), None), proven, 11), Progress::Done);
        assert_eq!(
            p(&report(true, Some((false, 3)), None), None, 1),
            Progress::Failed("kmend verify of kp_a@2: the old body still ran (3 hits)".into())
        );
        assert_eq!(p(&report(false, None, Some("load refused")), None, 1), Progress::Failed("update failed: load refused".into()));
        // An update that failed before the step started is not this step's.
        let late = progress(&target, "2026-11-24T10:00:09Z".parse().unwrap(), None, w, &report(false, None, Some("old")), t0);
        assert_eq!(late, Progress::Wait("applying kp_a@2".into()));
        // Another version applied is not the target.
        assert_eq!(
            progress(&["kp_a@3".to_owned()], t0, None, w, &report(true, Some((true, 0)), None), t0),
            Progress::Wait("applying kp_a@3".into())
        );
    }
}
