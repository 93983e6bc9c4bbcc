//! The fleet in Prometheus text (`GET /metrics`, admin token), encoded with
//! `prometheus-client` as the agent's metrics are.

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

use crate::db::Host;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    group: String,
    hostname: String,
}

/// The metrics of `hosts` (revoked ones left out), taken at `now`.
pub fn render(hosts: &[Host], now: jiff::Timestamp, silent_after: jiff::SignedDuration) -> String {
    let live: Vec<&Host> = hosts.iter().filter(|h| h.revoked.is_none()).collect();
    let drift = crate::drift::drift(hosts);
    let count = Family::<GroupLabels, Gauge>::default();
    let drifting = Family::<GroupLabels, Gauge>::default();
    let silent = Family::<GroupLabels, Gauge>::default();
    let checkin = Family::<HostLabels, Gauge<f64, AtomicU64>>::default();
    let age = Family::<HostLabels, Gauge<f64, AtomicU64>>::default();
    for h in &live {
        let group = GroupLabels { group: h.group.clone() };
        count.get_or_create(&group).inc();
        drifting.get_or_create(&group).inc_by(i64::from(drift.contains_key(&h.id)));
        silent.get_or_create(&group).inc_by(i64::from(crate::drift::silent(h, now, silent_after)));
        if let Some(t) = h.last_checkin.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
            let labels = HostLabels { group: h.group.clone(), hostname: h.hostname.clone() };
            checkin.get_or_create(&labels).set(t.as_second() as f64);
            age.get_or_create(&labels).set((now.as_second() - t.as_second()).max(0) as f64);
        }
    }
    let mut r = Registry::with_prefix("kmend_fleet");
    r.register("hosts", "Registered hosts with a live token, per group", count);
    r.register("hosts_drifting", "Hosts whose kernel or patch level differs from most of their group", drifting);
    r.register("hosts_silent", "Hosts that have not checked in for longer than --silent-after", silent);
    r.register("host_last_checkin_timestamp_seconds", "When each host last checked in", checkin);
    r.register("host_last_checkin_age_seconds", "Seconds since each host last checked in", age);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}
