//! Patch feeds: static files that any web server, object store or plain
//! directory can serve (format and threat model: docs/feed-format.md).
//!
//! - [`index`]: `index.json`, the list of patches per channel and kernel.
//! - [`keys`]: signing keys (secret PEM, public TUF key with its id).
//! - [`repo`]: the publisher's TUF metadata (init, sign, rotate the root).
//! - [`trusted`]: the agent's TUF client (verify, remember versions).
//! - [`build`]: staging artifacts in a feed directory; verifying it.
//! - [`serve`]: a small static HTTP server for tests and air-gapped sites.

pub mod build;
pub mod index;
pub mod keys;
pub mod repo;
pub mod serve;
pub mod trusted;

/// Name of the index file (a signed target of the feed).
pub const INDEX: &str = "index.json";
/// Directory of the staged artifacts, relative to the feed's root.
pub const PATCH_DIR: &str = "patches";
