//! `kmend register` and `kmend checkin`: the host's side of the fleet
//! server (docs/fleet.md).

use std::time::Duration;

use kmend::{
    agent::Agent,
    config::Config,
    exit::Exit,
    fleet::{
        Client,
        FleetError,
        GroupPolicy,
        Registration, //
    },
    policy::PatchRef,
    identity::Uname,
    paths::Paths,
    report::Overview,
};
use serde_json::json;

fn client(paths: &Paths, server: &str, config: &Config) -> anyhow::Result<Client> {
    let ca = config.ca_certs.as_deref().map(|p| paths.at(p));
    Ok(Client::new(server, config.proxy.as_deref(), config.timeout, ca.as_deref())?)
}

/// Journal entries a check-in carries (the dashboard's host page).
const JOURNAL_EXCERPT: usize = 20;

/// What a check-in reports: what `kmend status --json` prints
/// (`overview`), the last entries of the journal under `journal`, and the
/// host's `channel` (its group's, if the group sets one: `config` as the
/// agent applied the policy) and `tags`.
fn report(paths: &Paths, config: &Config, overview: &Overview) -> anyhow::Result<serde_json::Value> {
    let mut report = serde_json::to_value(overview)?;
    report["channel"] = serde_json::json!(config.policy.channel);
    report["tags"] = serde_json::json!(config.tags);
    // A journal that cannot be read costs the excerpt, not the check-in.
    let journal = kmend::journal::read_all(paths).unwrap_or_default();
    let excerpt = &journal[journal.len().saturating_sub(JOURNAL_EXCERPT)..];
    report["journal"] = serde_json::to_value(excerpt)?;
    Ok(report)
}

/// Fetches the group's policy and sends this host's status to its server,
/// if it registered with one: whether it did (`kmend register`, `kmend
/// checkin`; the daemon uses [`FleetCycle`]).
pub fn check_in_if_registered(paths: &Paths) -> anyhow::Result<bool> {
    let config = Config::load(&paths.config_file())?;
    let Some(mut fleet) = FleetCycle::begin(paths, &config)? else { return Ok(false) };
    // After `begin`: the group's policy as the server just sent it applies.
    let agent = Agent::with_config(paths.clone(), "checkin".into(), config);
    let overview = Overview::gather(paths, &agent.kernel)?;
    fleet.check_in(paths, &agent.config, &overview)?;
    Ok(true)
}

/// One daemon cycle's view of the fleet: the host's registration and its
/// group's policy (from the server, or the last one it sent when it
/// cannot be reached).
pub struct FleetCycle {
    reg: Registration,
    client: Client,
    pub policy: Option<GroupPolicy>,
    /// How soon the server wants to hear from this host again.
    pub recheck: Option<Duration>,
}

impl FleetCycle {
    /// `None` when the host is not registered. `config` gives the
    /// client's proxy, timeout and CA.
    pub fn begin(paths: &Paths, config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(mut reg) = Registration::load(paths)? else { return Ok(None) };
        let client = client(paths, &reg.server, config)?;
        let policy = match client.policy(paths, &mut reg) {
            Ok(p) => Some(p),
            Err(e) => {
                let e = kmend::proxy::redact_text(&e.to_string());
                tracing::warn!("fleet policy not fetched: {e}; the last one the server sent applies");
                reg.policy.clone()
            }
        };
        Ok(Some(Self { reg, client, policy, recheck: None }))
    }

    /// Whether the group's rollout gate applies.
    pub fn gated(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.rollout.is_some())
    }

    fn sooner(&mut self, d: Duration) {
        self.recheck = Some(self.recheck.map_or(d, |r| r.min(d)));
    }

    /// The gate before applying `target`: `Err(why)` holds it back. A
    /// gated group whose server cannot be asked holds too: applying
    /// anyway could take down more hosts than the group allows at once.
    pub fn gate(&mut self, target: &[PatchRef]) -> Result<(), String> {
        if !self.gated() {
            return Ok(());
        }
        match self.client.claim(&self.reg, target) {
            Ok(c) => {
                if let Some(s) = c.recheck_after {
                    self.sooner(Duration::from_secs(s));
                }
                if c.go { Ok(()) } else { Err(c.reason.unwrap_or_else(|| "the fleet server said to wait".into())) }
            }
            Err(e) => Err(format!("the group's rollout gate could not be asked: {}", kmend::proxy::redact_text(&e.to_string()))),
        }
    }

    /// Sends this host's status (`overview`, and from `config` its channel
    /// and tags).
    pub fn check_in(&mut self, paths: &Paths, config: &Config, overview: &Overview) -> anyhow::Result<()> {
        if let Some(d) = self.client.check_in(&self.reg, &report(paths, config, overview)?)? {
            self.sooner(d);
        }
        Ok(())
    }
}

pub fn register(key: &str, server: &str, hostname: Option<&str>, json: bool) -> anyhow::Result<Exit> {
    let paths = Paths::from_env();
    let hostname = hostname.map_or_else(|| Uname::get().nodename, str::to_owned);
    let reg = client(&paths, server, &Config::load(&paths.config_file())?)?.register(&paths, key, &hostname)?;
    // The first check-in at once, so the host shows up with its state.
    let checked_in = check_in_if_registered(&paths);
    if json {
        super::print_json(&json!({ "server": reg.server, "host_id": reg.host_id, "hostname": hostname, "checked_in": checked_in.is_ok() }))?;
    } else {
        println!("registered with {} as host {} ({hostname})", kmend::proxy::redact(&reg.server), reg.host_id);
    }
    checked_in?;
    Ok(Exit::Ok)
}

pub fn checkin(json: bool) -> anyhow::Result<Exit> {
    if !check_in_if_registered(&Paths::from_env())? {
        return Err(FleetError::NotRegistered.into());
    }
    if json {
        super::print_json(&json!({ "checked_in": true }))?;
    } else {
        println!("checked in");
    }
    Ok(Exit::Ok)
}
