//! Patch feeds: static files that any web server, object store or plain
//! directory can serve (format: docs/feed-format.md).
//!
//! - [`index`]: `index.json`, the list of patches per channel and kernel.
//! - [`sign`]: the ed25519 signature `index.json.sig`.
//! - [`build`]: writing a feed directory from artifacts (the publisher side).
//! - [`serve`]: a small static HTTP server for tests and air-gapped sites.

pub mod build;
pub mod index;
pub mod serve;
pub mod sign;

/// Name of the index file at the feed's root.
pub const INDEX: &str = "index.json";
/// Name of the detached signature of the index.
pub const SIGNATURE: &str = "index.json.sig";
/// Directory of the artifacts, relative to the feed's root.
pub const PATCH_DIR: &str = "patches";
