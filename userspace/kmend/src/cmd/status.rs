//! `kmend status`: what is applied, the effective version, blocked and
//! pending patches, the last feed check. No network.

use kmend::{
    exit::Exit,
    paths::Paths,
    report::{
        CoverageReport,
        CoverageState,
        Overview,
        Summary, //
    },
    sys::Kernel, //
};

pub fn exit_of(summary: Summary) -> Exit {
    match summary {
        Summary::UpToDate => Exit::Ok,
        Summary::NothingApplied => Exit::NotApplied,
        Summary::UpdatesAvailable => Exit::UpdatesAvailable,
        Summary::KernelUnsupported => Exit::Unsupported,
    }
}

pub fn run(json: bool) -> anyhow::Result<Exit> {
    let paths = Paths::from_env();
    let o = Overview::gather(&paths, &Kernel::from_env(&paths))?;
    if json {
        super::print_json(&o)?;
        return Ok(exit_of(o.summary));
    }
    match &o.kernel {
        Some(k) => println!("kernel: {k}"),
        None => println!("kernel: {} ({})", o.effective_version, o.kernel_error.as_deref().unwrap_or("unknown")),
    }
    println!("effective version: {}", o.effective_version);
    if !o.core_loaded {
        println!("kmend.ko is not loaded: `kmend update` (or the daemon) loads the feed's core module for this kernel");
    }
    println!("coverage: {}", coverage_line(&o.coverage));
    if o.module_signatures.insists() {
        println!("{}: the feed's modules must be signed by a key this kernel trusts", o.module_signatures.describe());
    }
    if !o.coverage.needs_reboot.is_empty() {
        let cves: Vec<&str> = o.coverage.needs_reboot.iter().map(|c| c.cve.as_str()).collect();
        println!("  {} known CVE(s) need a new kernel and a reboot: {} (`kmend cves`)", cves.len(), cves.join(", "));
    }
    if o.patches.is_empty() {
        println!("no patches applied");
    } else {
        println!("{} patch(es) applied", o.patches.len());
        for p in &o.patches {
            let flags = if p.replace { " (replace)" } else { "" };
            let meta = o.managed.iter().find(|m| m.id == p.id);
            let version = meta.map(|m| format!(" version {}", m.version)).unwrap_or_default();
            let cves = meta.filter(|m| !m.cves.is_empty()).map(|m| format!(" fixes {}", m.cves.join(", "))).unwrap_or_default();
            println!("  {}{version}{flags}: enabled={} transition={}{cves}", p.id, u8::from(p.enabled), u8::from(p.transition));
            for f in &p.functions {
                println!("    {}:{} -> {} [{}]", f.object, f.name, f.replacement, f.state);
            }
        }
    }
    for b in &o.blocked {
        println!(
            "patch {} not re-applied: the machine went down while applying it at {}; run `kmend apply` or `kmend update --force` to retry",
            b.id, b.since
        );
    }
    match &o.last_check {
        None => println!("last check: never (run `kmend check`)"),
        Some(c) => match &c.error {
            Some(e) => println!("last check: {} ({}): failed: {e}", c.time, c.feed),
            None => println!("last check: {} ({}): ok", c.time, c.feed),
        },
    }
    if let Some(signed) = o.last_check.as_ref().and_then(|c| c.signed.as_ref()) {
        println!(
            "feed: signed publish version {} (root version {}), valid until {}",
            signed.version, signed.root_version, signed.expires
        );
    }
    if !o.pending.is_empty() {
        let names: Vec<String> = o.pending.iter().map(|p| format!("{} (version {})", p.id, p.version)).collect();
        println!("{} update(s) available: {} (run `kmend update`)", o.pending.len(), names.join(", "));
    }
    let summary = match o.summary {
        Summary::UpToDate => "up to date",
        Summary::NothingApplied => "no patches applied",
        Summary::UpdatesAvailable => "updates available",
        Summary::KernelUnsupported => "kernel not supported by the feed",
    };
    println!("state: {summary}");
    Ok(exit_of(o.summary))
}

/// The coverage state in words, with what to do about it.
fn coverage_line(c: &CoverageReport) -> String {
    let until = c.until.map(|u| u.to_string()).unwrap_or_default();
    match c.state {
        CoverageState::Covered if c.until.is_some() => format!("covered: live patches for this kernel until {until}"),
        CoverageState::Covered => "covered: live patches for this kernel".into(),
        CoverageState::UpgradeRequired => {
            format!("upgrade required: live patches for this kernel ended {until}; plan a reboot into a newer kernel")
        }
        CoverageState::EndOfLife => "end of life: no more live patches for this kernel; plan a reboot into a newer kernel".into(),
        CoverageState::Unsupported => "unsupported: the feed has no live patches for this kernel".into(),
        CoverageState::Unknown => "unknown (no successful check yet: `kmend check`)".into(),
    }
}
