//! kmend-fleet: the server a fleet of kmend agents registers with and
//! reports to (issue #12, first step: registration, check-ins, the hosts
//! API; docs/fleet.md).
//!
//! - [`secret`]: group keys and host tokens; only their SHA-256 is stored.
//! - [`db`]: the database (SQLite), its migrations and queries.
//! - [`drift`]: hosts that differ from the rest of their group.
//! - [`metrics`]: Prometheus text.
//! - [`api`]: the HTTP API (axum).

pub mod api;
pub mod db;
pub mod drift;
pub mod metrics;
pub mod secret;
