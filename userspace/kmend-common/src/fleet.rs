// SPDX-License-Identifier: GPL-2.0
//! What the fleet server and the agent say to each other about a group
//! (feature `fleet`): one definition for both sides of the wire.

use alloc::string::String;

use serde::{
    Deserialize,
    Serialize, //
};

/// A group's policy, set on the server for all its hosts; a field left
/// unset leaves each host's own config in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// The feed channel (the host's `channel`).
    pub channel: Option<String>,
    /// Patches released less than this ago are held back (`delay`).
    pub delay_seconds: Option<u64>,
    /// `YYYY-MM-DD` or a patch id: nothing newer (`sticky`).
    pub sticky: Option<String>,
    /// The rollout gate: hosts ask the server before applying.
    pub rollout: Option<Rollout>,
}

/// A group's rollout gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Hosts of the group that may be applying at the same time (1 for an
    /// HA cluster).
    pub max: u32,
    /// How long a host must keep checking in, patch applied and proven,
    /// before the next one starts.
    pub health_window_seconds: u64,
}

/// The server's answer to a host that asks to start applying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub go: bool,
    /// Why not, when it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ask again (or check in) after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_after: Option<u64>,
}
