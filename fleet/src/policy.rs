//! A group's policy, set in one place for all its hosts (KernelCare's
//! sticky tag and "deploy after X hours", Canonical's tiers): which
//! channel, how long to wait after a release, a sticky pin, and the
//! rollout gate. A field left unset leaves the host's own config in force.

use serde::Deserialize;

pub use kmend_common::fleet::{
    GroupPolicy,
    Rollout, //
};

/// A policy as an admin writes it (`PUT /api/v1/groups/{name}/policy`,
/// `kmend-fleet group policy`): durations as text (`24h`, `10m`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub channel: Option<String>,
    pub delay: Option<String>,
    pub sticky: Option<String>,
    pub rollout_max: Option<u32>,
    pub health_window: Option<String>,
}

/// Default health window: a host keeps checking in for this long with the
/// patch applied and proven before the next one starts.
pub const DEFAULT_HEALTH_WINDOW_SECONDS: u64 = 600;

fn name_like(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn seconds(what: &str, text: &str) -> Result<u64, String> {
    let d: jiff::SignedDuration =
        text.trim().parse().map_err(|e| format!("{what}: '{text}' is not a duration such as 24h or 10m ({e})"))?;
    u64::try_from(d.as_secs()).map_err(|_| format!("{what}: '{text}' is negative"))
}

impl PolicyInput {
    /// The policy, checked: a clear message for a bad field.
    pub fn validate(&self) -> Result<GroupPolicy, String> {
        if let Some(c) = &self.channel {
            if !name_like(c) {
                return Err(format!("channel: '{c}' is not a channel name (1 to 64 characters of [A-Za-z0-9_.-])"));
            }
        }
        if let Some(s) = &self.sticky {
            if !name_like(s) {
                return Err(format!("sticky: '{s}' is neither a date (YYYY-MM-DD) nor a patch id"));
            }
        }
        let delay_seconds = self.delay.as_deref().map(|d| seconds("delay", d)).transpose()?;
        let rollout = match (self.rollout_max, &self.health_window) {
            (None, None) => None,
            (None, Some(_)) => return Err("health_window: set rollout_max too (the gate it belongs to)".into()),
            (Some(0), _) => return Err("rollout_max: at least 1 host at a time".into()),
            (Some(max), window) => Some(Rollout {
                max,
                health_window_seconds: window
                    .as_deref()
                    .map(|w| seconds("health_window", w))
                    .transpose()?
                    .unwrap_or(DEFAULT_HEALTH_WINDOW_SECONDS),
            }),
        };
        Ok(GroupPolicy { channel: self.channel.clone(), delay_seconds, sticky: self.sticky.clone(), rollout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_checked_field_by_field() {
        let ok = PolicyInput {
            channel: Some("stable".into()),
            delay: Some("24h".into()),
            sticky: Some("2026-01-05".into()),
            rollout_max: Some(1),
            health_window: Some("10m".into()),
        };
        assert_eq!(
            ok.validate().unwrap(),
            GroupPolicy {
                channel: Some("stable".into()),
                delay_seconds: Some(86400),
                sticky: Some("2026-01-05".into()),
                rollout: Some(Rollout { max: 1, health_window_seconds: 600 }),
            }
        );
        let gate_only = PolicyInput { rollout_max: Some(2), ..Default::default() }.validate().unwrap();
        assert_eq!(gate_only.rollout, Some(Rollout { max: 2, health_window_seconds: DEFAULT_HEALTH_WINDOW_SECONDS }));
        for (bad, says) in [
            (PolicyInput { channel: Some("a b".into()), ..Default::default() }, "channel: 'a b'"),
            (PolicyInput { delay: Some("soon".into()), ..Default::default() }, "delay: 'soon'"),
            (PolicyInput { rollout_max: Some(0), ..Default::default() }, "at least 1 host"),
            (PolicyInput { health_window: Some("5m".into()), ..Default::default() }, "set rollout_max"),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
