//! Prometheus metrics: the state `kmend status` shows, in the text format
//! monitoring reads (`kmend metrics`, or a node_exporter textfile written
//! with `--textfile` or by the daemon after each check).
//!
//! Encoded with `prometheus-client` (the Prometheus project's Rust client)
//! rather than by hand; only gauges, so the output also parses as the
//! classic text format node_exporter's textfile collector reads.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{
        EncodeLabelSet,
        text::encode, //
    },
    metrics::{
        family::Family,
        gauge::Gauge, //
    },
    registry::Registry,
};

use crate::{
    report::{
        CoverageState,
        Overview,
        Summary, //
    },
    timestamp::Timestamp,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PatchLabels {
    id: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    release: String,
    effective: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdLabels {
    id: String,
}

/// A gauge holding seconds (a timestamp or an age).
type Seconds = Gauge<f64, AtomicU64>;

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

fn seconds(v: f64) -> Seconds {
    let g = Seconds::default();
    g.set(v);
    g
}

/// The name of a [`Summary`] as a label value (as `kmend status` words it).
pub fn summary_name(s: Summary) -> &'static str {
    match s {
        Summary::UpToDate => "up_to_date",
        Summary::NothingApplied => "nothing_applied",
        Summary::UpdatesAvailable => "updates_available",
        Summary::KernelUnsupported => "kernel_unsupported",
    }
}

/// The metrics of `o`, ages taken at `now`, in the Prometheus text format.
pub fn render(o: &Overview, now: Timestamp) -> String {
    let mut r = Registry::with_prefix("kmend");
    let enabled: Vec<_> = o.patches.iter().filter(|p| p.enabled).collect();
    r.register("patches_applied", "Patches applied to the running kernel", gauge(enabled.len() as i64));
    let patches = Family::<PatchLabels, Gauge>::default();
    for p in &enabled {
        let version = o.managed.iter().find(|m| m.id == p.id).map(|m| m.version.to_string()).unwrap_or_default();
        patches.get_or_create(&PatchLabels { id: p.id.clone(), version }).set(1);
    }
    r.register("patch_applied", "Each applied patch (version empty: not applied from an artifact)", patches);
    let release = o.kernel.as_ref().map(|k| k.release.clone()).unwrap_or_default();
    let version = Family::<VersionLabels, Gauge>::default();
    version.get_or_create(&VersionLabels { release, effective: o.effective_version.clone() }).set(1);
    r.register("effective_version", "The kernel release and the effective version a scanner should see", version);
    let mut cves: Vec<&String> = o.managed.iter().flat_map(|m| &m.cves).collect();
    cves.sort();
    cves.dedup();
    r.register("cves_fixed", "CVEs fixed by the applied patches", gauge(cves.len() as i64));
    r.register("updates_available", "Patches the last check selected that are not applied", gauge(o.pending.len() as i64));
    r.register("patches_blocked", "Patches the crash-loop guard keeps from being re-applied", gauge(o.blocked.len() as i64));
    let state = Family::<StateLabels, Gauge>::default();
    for s in [Summary::UpToDate, Summary::NothingApplied, Summary::UpdatesAvailable, Summary::KernelUnsupported] {
        state.get_or_create(&StateLabels { state: summary_name(s).to_owned() }).set(i64::from(s == o.summary));
    }
    r.register("state", "The state `kmend status` reports (1 for the current one)", state);
    if let Some(u) = &o.last_update {
        r.register("last_update_timestamp_seconds", "When the last update (daemon or by hand) ran", seconds(u.time.unix() as f64));
        r.register("last_update_success", "Whether the last update succeeded (0: see `kmend status`, the journal)", gauge(i64::from(u.error.is_none())));
    }
    let verified = Family::<IdLabels, Gauge>::default();
    let old_hits = Family::<IdLabels, Gauge>::default();
    let verified_at = Family::<IdLabels, Seconds>::default();
    for v in &o.verifications {
        let id = IdLabels { id: v.id.clone() };
        verified.get_or_create(&id).set(i64::from(v.proven));
        old_hits.get_or_create(&id).set(i64::try_from(v.old_body_hits).unwrap_or(i64::MAX));
        verified_at.get_or_create(&id).set(v.time.unix() as f64);
    }
    r.register("patch_verified", "Whether the last `kmend verify` of the patch proved it runs and the old code does not", verified);
    r.register("patch_verify_old_body_hits", "Entries into the old body seen by the last `kmend verify` (should be 0)", old_hits);
    r.register("patch_verified_timestamp_seconds", "When the patch was last verified", verified_at);
    let coverage = Family::<StateLabels, Gauge>::default();
    for s in [CoverageState::Covered, CoverageState::UpgradeRequired, CoverageState::EndOfLife, CoverageState::Unsupported, CoverageState::Unknown] {
        let name = serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        coverage.get_or_create(&StateLabels { state: name }).set(i64::from(s == o.coverage.state));
    }
    r.register("coverage", "The kernel's live-patch coverage as the feed says (1 for the current state)", coverage);
    r.register("cves_needing_reboot", "Known CVEs of this kernel that no live patch fixes", gauge(o.coverage.needs_reboot.len() as i64));
    if let Some(until) = o.coverage.until {
        r.register("coverage_until_timestamp_seconds", "When the feed's live patches for this kernel end", seconds(until.unix() as f64));
    }
    if let Some(c) = &o.last_check {
        r.register("last_check_timestamp_seconds", "When the feed was last checked", seconds(c.time.unix() as f64));
        r.register("last_check_success", "Whether the last feed check succeeded", gauge(i64::from(c.error.is_none())));
        if let Some(ok) = c.last_success() {
            r.register("last_successful_check_timestamp_seconds", "When the feed was last checked successfully", seconds(ok.unix() as f64));
            let age = (now.unix() - ok.unix()).max(0);
            r.register("last_successful_check_age_seconds", "Seconds since the last successful feed check", seconds(age as f64));
        }
        if let Some(expiry) = c.signed.as_ref().and_then(|s| Timestamp::parse(&s.expires).ok()) {
            r.register(
                "feed_metadata_expiry_timestamp_seconds",
                "When the feed's signed metadata trusted at the last check expires",
                seconds(expiry.unix() as f64),
            );
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    samples_in_order(&out)
}

/// `text` with each metric's samples sorted: the client keeps a family's
/// label sets in a hash map, so their order would change from one run to
/// the next, and a textfile would differ for nothing.
fn samples_in_order(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run: Vec<&str> = Vec::new();
    for line in text.lines().chain([""]) {
        if !line.starts_with('#') && !line.is_empty() {
            run.push(line);
            continue;
        }
        run.sort_unstable();
        for l in run.drain(..) {
            out.push_str(l);
            out.push('\n');
        }
        if !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_sorted_within_their_metric_only() {
        let text = "# TYPE a gauge\na{x=\"2\"} 1\na{x=\"1\"} 0\n# TYPE b gauge\nb 3\n# EOF\n";
        assert_eq!(super::samples_in_order(text), "# TYPE a gauge\na{x=\"1\"} 0\na{x=\"2\"} 1\n# TYPE b gauge\nb 3\n# EOF\n");
    }
}
