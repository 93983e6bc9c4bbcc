//! The agent's side of the fleet server (kmend-fleet, docs/fleet.md):
//! registration with a group key, and check-ins with the host's status.
//!
//! A registered host keeps `/var/lib/kmend/fleet.json` (mode 0600): the
//! server's URL, its host id and its token. The group key is used once and
//! not stored. A server that is down or unreachable never stops patching:
//! the daemon logs the failed check-in and goes on.

use std::{
    fs,
    io,
    path::PathBuf,
    time::Duration,
};

use serde::{
    Deserialize,
    Serialize, //
};

use crate::{
    fetch::{
        FetchError,
        Fetcher, //
    },
    fsutil,
    paths::Paths,
};

/// Largest answer read from the server.
const ANSWER_LIMIT: u64 = 64 * 1024;

/// What a registered host keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    /// The server's base URL.
    pub server: String,
    pub host_id: i64,
    pub token: String,
    /// The group's policy as the server last sent it: used while the
    /// server cannot be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<GroupPolicy>,
}

pub use kmend_common::fleet::{
    Claim,
    GroupPolicy,
    Rollout, //
};

/// This host's selection policy with the group's fields in force.
pub fn apply_group_policy(group: &GroupPolicy, policy: &mut crate::policy::Policy) -> Result<(), String> {
    if let Some(c) = &group.channel {
        if !crate::feed::index::CHANNELS.contains(&c.as_str()) {
            return Err(format!("the group's channel '{c}' is not a channel this agent knows"));
        }
        policy.channel = c.clone();
    }
    if let Some(d) = group.delay_seconds {
        policy.delay = Duration::from_secs(d);
    }
    if let Some(s) = &group.sticky {
        policy.sticky = Some(crate::policy::Sticky::parse(s).map_err(|e| format!("the group's sticky value: {e}"))?);
    }
    Ok(())
}

/// A failed exchange with the fleet server.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet server {server}: {source}")]
    Transport {
        server: String,
        #[source]
        source: FetchError,
    },
    #[error("fleet server {server}: {what} refused (HTTP {code}): {message}")]
    Refused { server: String, what: &'static str, code: u16, message: String },
    #[error("fleet server {server}: unexpected answer to {what}: {why}")]
    Answer { server: String, what: &'static str, why: String },
    #[error("not registered with a fleet server: run `kmend register <group key> --server <url>`")]
    NotRegistered,
    #[error("'{path}': {op} failed: {source}")]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{path}': not a kmend fleet registration: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Registration {
    /// The host's registration, if it has one.
    pub fn load(paths: &Paths) -> Result<Option<Self>, FleetError> {
        let path = paths.fleet_file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| FleetError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FleetError::File { op: "read", path, source }),
        }
    }

    /// Writes it (0600: the token is a credential).
    fn save(&self, paths: &Paths) -> Result<(), FleetError> {
        let path = paths.fleet_file();
        let data = serde_json::to_vec_pretty(self).unwrap_or_default();
        fsutil::write_atomic(&path, &data).map_err(|source| FleetError::File { op: "write", path, source })
    }
}

/// How to reach the server: the feed's proxy, CA and timeout apply.
pub struct Client {
    fetcher: Fetcher,
    server: String,
}

impl Client {
    pub fn new(server: &str, proxy: Option<&str>, timeout: Duration, ca_certs: Option<&std::path::Path>) -> Result<Self, FleetError> {
        let server = server.trim_end_matches('/').to_owned();
        let fetcher = Fetcher::new(&server, proxy, timeout, ca_certs)
            .map_err(|source| FleetError::Transport { server: crate::proxy::redact(&server), source })?;
        Ok(Self { fetcher, server })
    }

    fn exchange(
        &self,
        what: &'static str,
        rel: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> Result<Vec<u8>, FleetError> {
        let server = crate::proxy::redact(&self.server);
        let (code, answer) = match body {
            Some(body) => self.fetcher.post_json(rel, body, token, ANSWER_LIMIT),
            None => self.fetcher.get_json(rel, token, ANSWER_LIMIT),
        }
        .map_err(|source| FleetError::Transport { server: server.clone(), source })?;
        if !(200..300).contains(&code) {
            let message = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).chars().take(200).collect());
            return Err(FleetError::Refused { server, what, code, message });
        }
        Ok(answer)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &'static str, answer: &[u8]) -> Result<T, FleetError> {
        serde_json::from_slice(answer).map_err(|e| FleetError::Answer {
            server: crate::proxy::redact(&self.server),
            what,
            why: e.to_string(),
        })
    }

    /// Registers this host in the group of `key` as `hostname`, and keeps
    /// the credentials the server gives.
    pub fn register(&self, paths: &Paths, key: &str, hostname: &str) -> Result<Registration, FleetError> {
        let body = serde_json::json!({ "key": key, "hostname": hostname });
        let answer = self.exchange("registration", "api/v1/register", Some(&body), None)?;
        #[derive(Deserialize)]
        struct Answer {
            host_id: i64,
            token: String,
        }
        let a: Answer = self.parse("registration", &answer)?;
        let reg = Registration { server: self.server.clone(), host_id: a.host_id, token: a.token, policy: None };
        reg.save(paths)?;
        Ok(reg)
    }

    /// Sends `report` (what `kmend status --json` prints) as this host:
    /// how soon the server wants the next check-in (a rollout step runs).
    pub fn check_in(&self, reg: &Registration, report: &serde_json::Value) -> Result<Option<Duration>, FleetError> {
        let answer = self.exchange("check-in", "api/v1/checkin", Some(report), Some(&reg.token))?;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        Ok(v["recheck_after"].as_u64().map(Duration::from_secs))
    }

    /// The group's policy, kept in the registration for when the server
    /// cannot be reached.
    pub fn policy(&self, paths: &Paths, reg: &mut Registration) -> Result<GroupPolicy, FleetError> {
        let answer = self.exchange("policy", "api/v1/policy", None, Some(&reg.token))?;
        let policy: GroupPolicy = self.parse("policy", &answer)?;
        if reg.policy.as_ref() != Some(&policy) {
            reg.policy = Some(policy.clone());
            reg.save(paths)?;
        }
        Ok(policy)
    }

    /// Asks whether this host may apply `target` now (the rollout gate).
    pub fn claim(&self, reg: &Registration, target: &[crate::policy::PatchRef]) -> Result<Claim, FleetError> {
        let target: Vec<String> = target.iter().map(|p| format!("{}@{}", p.id, p.version)).collect();
        let body = serde_json::json!({ "target": target, "time": crate::timestamp::Timestamp::now().to_string() });
        let answer = self.exchange("rollout claim", "api/v1/rollout/claim", Some(&body), Some(&reg.token))?;
        self.parse("rollout claim", &answer)
    }
}
