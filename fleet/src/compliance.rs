//! The compliance view: each CVE a live patch fixes somewhere in the
//! fleet, the hosts that run the fix (which patch, since when) and the
//! live hosts that do not. `GET /api/v1/compliance` and the dashboard's
//! `/compliance` show the same.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::db::Host;

/// One host running a fix.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Fix {
    pub host: String,
    pub patch: String,
    /// When the host applied it (its clock).
    pub since: String,
}

/// Where one CVE is fixed and where not.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CveStatus {
    pub cve: String,
    pub fixed_on: Vec<Fix>,
    pub not_fixed_on: Vec<String>,
}

/// The CVEs of the patches live hosts report applied, in CVE order.
pub fn of(hosts: &[Host]) -> Vec<CveStatus> {
    let live: Vec<&Host> = hosts.iter().filter(|h| h.revoked.is_none()).collect();
    let mut fixed: BTreeMap<String, Vec<Fix>> = BTreeMap::new();
    for h in &live {
        let Some(r) = &h.report else { continue };
        for p in r["managed"].as_array().map(Vec::as_slice).unwrap_or_default() {
            for c in p["cves"].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(|c| c.as_str()) {
                fixed.entry(c.to_owned()).or_default().push(Fix {
                    host: h.hostname.clone(),
                    patch: p["id"].as_str().unwrap_or_default().to_owned(),
                    since: p["applied_at"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    fixed
        .into_iter()
        .map(|(cve, fixed_on)| {
            let not_fixed_on = live.iter().filter(|h| !fixed_on.iter().any(|f| f.host == h.hostname)).map(|h| h.hostname.clone()).collect();
            CveStatus { cve, fixed_on, not_fixed_on }
        })
        .collect()
}
