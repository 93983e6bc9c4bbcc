//! Drift: within a group, the hosts whose kernel or patch level differs
//! from what most of the group runs (an HA cluster may run mixed releases
//! only for a while, so the odd ones out are flagged).
//!
//! The reference of a group is its most common (kernel release and build
//! id) and its most common effective version, among hosts with a live
//! token that reported; ties go to the newer last check-in's value, so a
//! group converging on an update flags the hosts left behind.

use std::collections::HashMap;

use crate::db::Host;

/// Whether `host` (live) has not checked in for longer than `after` at
/// `now` (never checking in after registering counts from registration).
pub fn silent(host: &Host, now: jiff::Timestamp, after: jiff::SignedDuration) -> bool {
    let last = host.last_checkin.as_deref().unwrap_or(&host.registered);
    host.revoked.is_none() && last.parse::<jiff::Timestamp>().is_ok_and(|t| now.duration_since(t) > after)
}

/// What differs from the group's reference, per host id.
pub fn drift(hosts: &[Host]) -> HashMap<i64, Vec<&'static str>> {
    let mut by_group: HashMap<&str, Vec<&Host>> = HashMap::new();
    for h in hosts.iter().filter(|h| h.revoked.is_none() && h.report.is_some()) {
        by_group.entry(&h.group).or_default().push(h);
    }
    let mut out = HashMap::new();
    for members in by_group.values() {
        let kernel = reference(members, kernel_of);
        let level = reference(members, |h| field(h, "effective_version"));
        for h in members {
            let mut what = Vec::new();
            if kernel_of(h) != kernel {
                what.push("kernel");
            }
            if field(h, "effective_version") != level {
                what.push("patch level");
            }
            if !what.is_empty() {
                out.insert(h.id, what);
            }
        }
    }
    out
}

fn field(h: &Host, name: &str) -> String {
    h.report.as_ref().and_then(|r| r[name].as_str()).unwrap_or_default().to_owned()
}

fn kernel_of(h: &Host) -> String {
    let k = h.report.as_ref().map(|r| &r["kernel"]);
    let s = |f: &str| k.and_then(|k| k[f].as_str()).unwrap_or_default().to_owned();
    format!("{} {}", s("release"), s("build_id"))
}

/// The most common value of `key` among `members` (ties: the value of the
/// most recent check-in among the tied).
fn reference(members: &[&Host], key: impl Fn(&Host) -> String) -> String {
    let mut counts: HashMap<String, (usize, String)> = HashMap::new();
    for h in members {
        let e = counts.entry(key(h)).or_insert((0, String::new()));
        e.0 += 1;
        e.1 = e.1.clone().max(h.last_checkin.clone().unwrap_or_default());
    }
    counts.into_iter().max_by(|a, b| (a.1.0, &a.1.1).cmp(&(b.1.0, &b.1.1))).map(|(k, _)| k).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: i64, group: &str, release: &str, level: &str, at: &str) -> Host {
        Host {
            id,
            group: group.into(),
            hostname: format!("h{id}"),
            registered: String::new(),
            revoked: None,
            last_checkin: Some(at.into()),
            report: Some(serde_json::json!({ "kernel": { "release": release, "build_id": "b" }, "effective_version": level })),
        }
    }

    #[test]
    fn the_odd_ones_out_of_each_group_are_flagged() {
        let hosts = vec![
            host(1, "db", "7.2.12", "7.2.12-kmend3", "2026-01-01T00:00:01Z"),
            host(2, "db", "7.2.12", "7.2.12-kmend3", "2026-01-01T00:00:02Z"),
            host(3, "db", "7.2.12", "7.2.12-kmend2", "2026-01-01T00:00:03Z"),
            host(4, "db", "7.2.13", "7.2.13", "2026-01-01T00:00:04Z"),
            // Another group runs something else: not drift.
            host(5, "web", "7.2.13", "7.2.13", "2026-01-01T00:00:05Z"),
        ];
        let d = drift(&hosts);
        assert_eq!(d.get(&3), Some(&vec!["patch level"]));
        assert_eq!(d.get(&4), Some(&vec!["kernel", "patch level"]));
        assert!(!d.contains_key(&1) && !d.contains_key(&2) && !d.contains_key(&5));
        // Two hosts, one each way: the newer check-in is the reference.
        let pair = vec![host(1, "ha", "7.2.12", "7.2.12-kmend2", "2026-01-01T00:00:01Z"), host(2, "ha", "7.2.12", "7.2.12-kmend3", "2026-01-01T00:00:09Z")];
        assert_eq!(drift(&pair).keys().collect::<Vec<_>>(), [&1]);
    }
}
