//! What the hit-count probe and its loader agree on.

/// Name of the map in the probe object (a per-CPU u64 at index 0).
pub const HITS_MAP: &str = "HITS";

/// Name of the kprobe program in the probe object.
pub const HITCOUNT_PROGRAM: &str = "kmend_hitcount";
