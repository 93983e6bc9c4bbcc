//! `kmend list`, `info`, `uname` and `cves`: read-only views (no network).

use anyhow::bail;
use kmend::{
    exit::Exit,
    identity::Uname,
    paths::Paths,
    report::Overview,
    sys::Kernel, //
};
use serde_json::json;

fn overview() -> anyhow::Result<Overview> {
    let paths = Paths::from_env();
    Ok(Overview::gather(&paths, &Kernel::from_env(&paths))?)
}

pub fn list(json: bool) -> anyhow::Result<Exit> {
    let o = overview()?;
    let applied: Vec<_> = o
        .patches
        .iter()
        .map(|p| {
            let m = o.managed.iter().find(|m| m.id == p.id);
            json!({
                "id": p.id,
                "version": m.map(|m| m.version),
                "managed": m.is_some(),
                "replace": p.replace,
                "functions": p.functions.len(),
                "cves": m.map(|m| m.cves.clone()).unwrap_or_default(),
            })
        })
        .collect();
    if json {
        super::print_json(&json!({
            "applied": applied,
            "available": o.pending,
            "blocked": o.blocked,
            "last_check": o.last_check.as_ref().map(|c| c.time),
        }))?;
        return Ok(Exit::Ok);
    }
    println!("applied:");
    if o.patches.is_empty() {
        println!("  (none)");
    }
    for a in &applied {
        let version = a["version"].as_u64().map(|v| format!(" version {v}")).unwrap_or_else(|| " (bare module)".into());
        println!("  {}{version}: {} function(s)", a["id"].as_str().unwrap_or_default(), a["functions"]);
    }
    match &o.last_check {
        Some(c) => println!("available (as of the last check, {}):", c.time),
        None => println!("available: unknown (no feed check yet: run `kmend check`)"),
    }
    for p in &o.pending {
        println!("  {} released {}: {}", p.label(), p.released, p.description);
    }
    for b in &o.blocked {
        println!("blocked: '{}' version {} (the machine went down while applying it at {})", b.id, b.version, b.since);
    }
    Ok(Exit::Ok)
}

pub fn info(id: &str, json: bool) -> anyhow::Result<Exit> {
    let o = overview()?;
    let kernel = o.patches.iter().find(|p| p.id == id);
    let managed = o.managed.iter().find(|m| m.id == id);
    let offered = o.last_check.as_ref().and_then(|c| c.target.iter().find(|p| p.id == id));
    if kernel.is_none() && managed.is_none() && offered.is_none() {
        bail!("patch '{id}': unknown: not applied and not offered at the last feed check");
    }
    if json {
        super::print_json(&json!({ "id": id, "kernel": kernel, "artifact": managed, "feed": offered }))?;
        return Ok(Exit::Ok);
    }
    println!("patch: {id}");
    if let Some(m) = managed {
        println!("version: {}", m.version);
        println!("description: {}", m.description);
        println!("cves: {}", m.cves.join(", "));
        println!("released: {}", m.released.map(|t| t.to_string()).unwrap_or_else(|| "unknown (applied from a file)".into()));
        println!("applied: {}", m.applied_at);
        println!("cumulative: {}", if m.replace { "yes" } else { "no" });
    } else if let Some(p) = offered {
        println!("version: {} (available, not applied)", p.version);
        println!("description: {}", p.description);
        println!("cves: {}", p.cves.join(", "));
        println!("released: {}", p.released);
    }
    match kernel {
        Some(k) => {
            println!("functions:");
            for f in &k.functions {
                println!("  {}:{} -> {} [{}]", f.object, f.name, f.replacement, f.state);
            }
        }
        None => {
            if let Some(m) = managed {
                println!("functions (not applied):");
                for f in &m.functions {
                    println!("  {}:{} -> {}", f.object, f.name, f.replacement);
                }
            }
        }
    }
    Ok(Exit::Ok)
}

pub fn uname(all: bool, json: bool) -> anyhow::Result<Exit> {
    // Scanners call this on every machine: without kmend.ko nothing is
    // patched, and the answer is the plain release, not an error.
    let paths = Paths::from_env();
    let effective_version = match Overview::gather(&paths, &Kernel::from_env(&paths)) {
        Ok(o) => o.effective_version,
        Err(kmend::agent::AgentError::Sys(kmend::sys::SysError::CoreNotLoaded(_))) => kmend::identity::release(&paths)?,
        Err(e) => return Err(e.into()),
    };
    let u = Uname::get();
    if json {
        super::print_json(&json!({ "effective_version": effective_version, "uname": u }))?;
    } else if all {
        println!("{} {} {} {} {} GNU/Linux", u.sysname, u.nodename, effective_version, u.version, u.machine);
    } else {
        println!("{effective_version}");
    }
    Ok(Exit::Ok)
}

/// CVEs fixed live (`CVE-… <patch ids>`, one a line, as KernelCare's
/// cvelist), then the known CVEs of this kernel that only a new kernel
/// and a reboot fix (`CVE-… reboot [<fixed-in release>]`, from the feed's
/// coverage at the last check).
pub fn cves(json: bool) -> anyhow::Result<Exit> {
    let o = overview()?;
    let cves = o.cves();
    let reboot = &o.coverage.needs_reboot;
    if json {
        let list: Vec<_> = cves.iter().map(|(c, p)| json!({ "cve": c, "patches": p })).collect();
        super::print_json(&json!({ "cves": list, "needs_reboot": reboot }))?;
    } else {
        for (cve, patches) in &cves {
            println!("{cve} {}", patches.join(","));
        }
        for r in reboot {
            println!("{} reboot{}", r.cve, if r.fixed_in.is_empty() { String::new() } else { format!(" {}", r.fixed_in) });
        }
    }
    Ok(Exit::Ok)
}
