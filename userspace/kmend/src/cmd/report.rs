//! `kmend report`: compliance export of the applied patches, their CVEs
//! and the journal.

use kmend::{
    exit::Exit,
    identity::Uname,
    journal,
    paths::Paths,
    report::{
        Overview,
        csv_field, //
    },
    sys::Kernel,
    timestamp::Timestamp,
};
use serde_json::json;

use crate::cli::ReportFormat;

/// `kmend report --verify`: the journal's hash chain, intact or where not.
pub fn verify(json: bool) -> anyhow::Result<Exit> {
    let paths = Paths::from_env();
    let result = journal::verify(&paths)?;
    if json {
        match &result {
            Ok(lines) => super::print_json(&json!({ "journal": paths.journal(), "intact": true, "lines": lines }))?,
            Err(e) => super::print_json(&json!({ "journal": paths.journal(), "intact": false, "error": e.to_string() }))?,
        }
    }
    match result {
        Ok(lines) => {
            if !json {
                println!("{}: {lines} line(s), chain intact", paths.journal().display());
            }
            Ok(Exit::Ok)
        }
        Err(e) => {
            eprintln!("kmend: {}: {e}", paths.journal().display());
            Ok(Exit::Failure)
        }
    }
}

pub fn run(format: ReportFormat, json: bool) -> anyhow::Result<Exit> {
    let paths = Paths::from_env();
    let o = Overview::gather(&paths, &Kernel::from_env(&paths))?;
    let events = journal::read_all(&paths)?;
    let host = Uname::get().nodename;
    let kernel = o.kernel.as_ref().map(|k| k.release.clone()).unwrap_or_default();
    match (format, json) {
        (ReportFormat::Json, _) | (_, true) => super::print_json(&json!({
            "generated": Timestamp::now(),
            "host": host,
            "kernel": o.kernel,
            "effective_version": o.effective_version,
            "applied": o.managed,
            "cves": o.cves(),
            "blocked": o.blocked,
            "events": events,
        }))?,
        (ReportFormat::Csv, false) => {
            println!("time,host,kernel,effective_version,actor,action,patch,version,cves,result,error");
            for e in &events {
                let fields = [
                    e.time.to_string(),
                    host.clone(),
                    kernel.clone(),
                    o.effective_version.clone(),
                    e.actor.clone(),
                    e.action.clone(),
                    e.patch.clone().unwrap_or_default(),
                    e.version.map(|v| v.to_string()).unwrap_or_default(),
                    e.cves.join(" "),
                    e.result.clone(),
                    e.error.clone().unwrap_or_default(),
                ];
                println!("{}", fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
            }
        }
    }
    Ok(Exit::Ok)
}
