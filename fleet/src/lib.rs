//! kmend-fleet: the server a fleet of kmend agents registers with and
//! reports to (issue #12, first step: registration, check-ins, the hosts
//! API; docs/fleet.md).
//!
//! - [`secret`]: group keys and host tokens; only their SHA-256 is stored.
//! - [`sql`]: SQLite and PostgreSQL behind one interface, and their migrations.
//! - [`pg_pool`]: PostgreSQL's connection pool and TLS, from its URL.
//! - [`db`]: the database's queries (hosts, groups, audit).
//! - [`policy`]: a group's channel, delay, sticky pin and rollout gate.
//! - [`rollout`]: the gate: N hosts at a time, each proven and healthy.
//! - [`notify`]: webhooks and mail when something needs an admin.
//! - [`compliance`]: which CVEs are fixed live where.
//! - [`drift`]: hosts that differ from the rest of their group.
//! - [`metrics`]: Prometheus text.
//! - [`api`]: the HTTP API (axum).
//! - [`dashboard`]: the web pages (server-rendered HTML).
//! - [`session`]: one-time login links and browser sessions.
//! - [`users`]: dashboard users and their hashed passwords.

pub mod api;
pub mod compliance;
pub mod dashboard;
pub mod db;
pub mod drift;
pub mod metrics;
pub mod notify;
pub mod pg_pool;
pub mod policy;
pub mod rollout;
pub mod secret;
pub mod session;
pub mod sql;
pub mod users;
#[cfg(any(test, feature = "test-postgres"))]
pub mod test_postgres;
