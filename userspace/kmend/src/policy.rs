//! Which patches of a feed this machine should run (pure: no I/O).
//!
//! The rules, in order (docs/agent.md explains them to users):
//! 1. Only the configured channel's entry for this exact kernel build
//!    counts; no entry means the kernel is not supported.
//! 2. `sticky = "<patch id>"` pins to that patch: it and everything
//!    released before it are eligible, nothing after (`delay` is ignored).
//!    `sticky = "YYYY-MM-DD"` makes patches released after that day (UTC)
//!    ineligible.
//! 3. `delay` makes patches released less than `delay` ago ineligible.
//! 4. Patches blocked by the crash-loop guard are skipped unless forced.
//! 5. Of the eligible patches, the newest cumulative (`replace`) patch and
//!    every non-cumulative patch released after it form the target, in
//!    release order; without a cumulative patch, all eligible ones do.

use std::time::Duration;

use serde::Serialize;

use crate::{
    feed::index::{
        Index,
        PatchEntry, //
    },
    identity::KernelIdentity,
    timestamp::Timestamp,
};

/// A pin: stay at a patch level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// Only patches released on or before this day (`YYYY-MM-DD`, UTC).
    Date(String),
    /// Exactly this patch's level.
    Patch(String),
}

impl Sticky {
    /// A date when it looks like `YYYY-MM-DD`, else a patch id.
    pub fn parse(s: &str) -> Result<Self, String> {
        // Four digits and a dash start a date, well formed or not: a patch
        // id of that shape would be too easy to mistake for one.
        let looks_like_date = s.len() > 5 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) && s.as_bytes()[4] == b'-';
        if looks_like_date {
            if s.len() != 10 || s.as_bytes()[7] != b'-' {
                return Err(format!("'{s}' looks like a date but is not YYYY-MM-DD (e.g. 2026-01-05)"));
            }
            Timestamp::end_of_day(s).map_err(|e| e.to_string())?;
            Ok(Self::Date(s.to_owned()))
        } else if crate::sys::check_id(s).is_ok() {
            Ok(Self::Patch(s.to_owned()))
        } else {
            Err(format!("'{s}' is neither a date (YYYY-MM-DD) nor a patch id"))
        }
    }
}

/// The selection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub channel: String,
    pub delay: Duration,
    pub sticky: Option<Sticky>,
}

/// A patch named by id and version (what is applied or blocked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PatchRef {
    pub id: String,
    pub version: u32,
}

/// Why an offered patch is not in the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum HeldBack {
    /// Released less than `delay` ago; eligible from `eligible_at`.
    Delay { eligible_at: Timestamp },
    /// After the sticky pin.
    Sticky,
    /// The machine went down while applying it (crash-loop guard).
    Blocked,
    /// A newer cumulative patch already contains it.
    Superseded,
    /// A fix to the code of `module`, which is not loaded: its code does
    /// not run here. Applied by the first update after it loads.
    ModuleNotLoaded { module: String },
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Everything that should be applied, in release order.
    pub target: Vec<PatchEntry>,
    /// The part of `target` that is not applied yet, in order.
    pub apply: Vec<PatchEntry>,
    /// Applied patches that a cumulative patch of the target supersedes:
    /// reverted once it is applied.
    pub supersede: Vec<String>,
    /// Offered patches left out, and why.
    pub held_back: Vec<(PatchEntry, HeldBack)>,
}

impl Plan {
    pub fn up_to_date(&self) -> bool {
        self.apply.is_empty()
    }
}

/// A selection that cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("kernel not supported: the feed's '{channel}' channel has no patches for {kernel}")]
    Unsupported { channel: String, kernel: String },
    #[error("sticky patch '{0}' is not in the feed for this kernel and channel")]
    StickyNotFound(String),
}

fn key(p: &PatchEntry) -> (Timestamp, u32, &str) {
    (p.released, p.version, &p.id)
}

/// Plans the update of a machine running `kernel` with `applied` patches;
/// `loaded` says whether a module is loaded (a fix linked to a module that
/// is not is held back, and a cumulative patch before it stays the target).
#[allow(clippy::too_many_arguments, reason = "one pure function of everything a plan depends on")]
pub fn plan(
    index: &Index,
    kernel: &KernelIdentity,
    policy: &Policy,
    now: Timestamp,
    applied: &[PatchRef],
    blocked: &[PatchRef],
    force: bool,
    loaded: &dyn Fn(&str) -> bool,
) -> Result<Plan, PolicyError> {
    let offered = index.patches_for(&policy.channel, kernel).ok_or_else(|| PolicyError::Unsupported {
        channel: policy.channel.clone(),
        kernel: kernel.to_string(),
    })?;
    let mut offered: Vec<&PatchEntry> = offered.iter().collect();
    offered.sort_by(|a, b| key(a).cmp(&key(b)));

    let mut plan = Plan::default();
    let mut eligible = Vec::new();
    let pin = match &policy.sticky {
        Some(Sticky::Patch(id)) => {
            let p = offered.iter().find(|p| &p.id == id).ok_or_else(|| PolicyError::StickyNotFound(id.clone()))?;
            Some(key(p))
        }
        _ => None,
    };
    let day_end = match &policy.sticky {
        Some(Sticky::Date(d)) => Timestamp::end_of_day(d).ok(),
        _ => None,
    };
    let newest_allowed = now.saturating_sub(policy.delay);
    for p in offered {
        // The crash-loop guard applies whatever the pin: a pinned patch
        // that brought the machine down is not re-applied either.
        let after_pin = pin.is_some_and(|pin| key(p) > pin);
        let held = if after_pin || day_end.is_some_and(|end| p.released > end) {
            Some(HeldBack::Sticky)
        } else if pin.is_none() && p.released > newest_allowed {
            Some(HeldBack::Delay { eligible_at: p.released.saturating_add(policy.delay) })
        } else if !force && blocked.iter().any(|b| b.id == p.id && b.version == p.version) {
            Some(HeldBack::Blocked)
        } else if let Some(module) = p.links.iter().find(|m| !loaded(m)) {
            Some(HeldBack::ModuleNotLoaded { module: module.clone() })
        } else {
            None
        };
        match held {
            Some(h) => plan.held_back.push((p.clone(), h)),
            None => eligible.push(p),
        }
    }
    let start = eligible.iter().rposition(|p| p.replace).unwrap_or(0);
    for p in &eligible[..start] {
        plan.held_back.push(((*p).clone(), HeldBack::Superseded));
    }
    plan.target = eligible[start..].iter().map(|p| (*p).clone()).collect();
    let is_applied = |p: &PatchEntry| applied.iter().any(|a| a.id == p.id && a.version == p.version);
    plan.apply = plan.target.iter().filter(|p| !is_applied(p)).cloned().collect();
    if plan.target.first().is_some_and(|p| p.replace) {
        plan.supersede =
            applied.iter().filter(|a| !plan.target.iter().any(|t| t.id == a.id)).map(|a| a.id.clone()).collect();
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::index::{
        Channel,
        KernelEntry, //
    };

    fn kernel() -> KernelIdentity {
        KernelIdentity { release: "7.2.13".into(), build_id: "ab".repeat(20) }
    }

    fn t(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn entry(id: &str, released: &str, replace: bool) -> PatchEntry {
        PatchEntry {
            id: id.into(),
            version: 1,
            released: t(released),
            cves: vec![],
            size: 1,
            sha256: "0".repeat(64),
            url: format!("patches/{id}-1.kmpatch"),
            replace,
            description: String::new(),
            links: Vec::new(),
        }
    }

    fn index(stable: Vec<PatchEntry>, test: Vec<PatchEntry>) -> Index {
        let mut index = Index::new(t("2026-06-01T00:00:00Z"));
        for (name, patches) in [("stable", stable), ("test", test)] {
            let k = kernel();
            index.channels.insert(
                name.into(),
                Channel { kernels: vec![KernelEntry { release: k.release, build_id: k.build_id, patches, core: None, coverage: Default::default() }] },
            );
        }
        index
    }

    fn policy(channel: &str, delay_h: u64, sticky: Option<&str>) -> Policy {
        Policy {
            channel: channel.into(),
            delay: Duration::from_secs(delay_h * 3600),
            sticky: sticky.map(|s| Sticky::parse(s).unwrap()),
        }
    }

    fn ids(v: &[PatchEntry]) -> Vec<&str> {
        v.iter().map(|p| p.id.as_str()).collect()
    }

    const NOW: &str = "2026-06-10T12:00:00Z";

    fn feed() -> Index {
        index(
            vec![
                entry("p1", "2026-05-01T00:00:00Z", false),
                entry("c2", "2026-05-10T00:00:00Z", true),
                entry("p3", "2026-05-20T00:00:00Z", false),
                entry("p4", "2026-06-10T06:00:00Z", false),
            ],
            vec![entry("p1", "2026-05-01T00:00:00Z", false), entry("t9", "2026-06-10T11:00:00Z", false)],
        )
    }

    #[test]
    fn cumulative_patch_supersedes_older_ones() {
        let plan = plan(&feed(), &kernel(), &policy("stable", 0, None), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&plan.target), ["c2", "p3", "p4"]);
        assert_eq!(ids(&plan.apply), ["c2", "p3", "p4"]);
        assert!(plan.held_back.iter().any(|(p, h)| p.id == "p1" && *h == HeldBack::Superseded));
    }

    /// A fix linked to a module that is not loaded is held back, and a
    /// cumulative one held back so does not supersede the patches before
    /// it: they stay the target (the machine keeps their fixes).
    #[test]
    fn fixes_for_modules_not_loaded_are_held_back_without_superseding() {
        let mut feed = feed();
        for k in feed.channels.get_mut("stable").unwrap().kernels.iter_mut() {
            for p in k.patches.iter_mut().filter(|p| p.id == "c2" || p.id == "p4") {
                p.links = vec!["tcp_dctcp".into()];
            }
        }
        let unloaded = plan(&feed, &kernel(), &policy("stable", 0, None), t(NOW), &[], &[], false, &|m| m != "tcp_dctcp").unwrap();
        assert_eq!(ids(&unloaded.target), ["p1", "p3"]);
        let held: Vec<_> = unloaded.held_back.iter().map(|(p, h)| (p.id.as_str(), h.clone())).collect();
        let waiting = HeldBack::ModuleNotLoaded { module: "tcp_dctcp".into() };
        assert_eq!(held, [("c2", waiting.clone()), ("p4", waiting)]);
        assert!(unloaded.supersede.is_empty());
        let loaded = plan(&feed, &kernel(), &policy("stable", 0, None), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&loaded.target), ["c2", "p3", "p4"]);
    }

    #[test]
    fn applied_patches_are_not_applied_again_and_superseded_ones_go() {
        let applied = [PatchRef { id: "p1".into(), version: 1 }, PatchRef { id: "c2".into(), version: 1 }];
        let plan = plan(&feed(), &kernel(), &policy("stable", 0, None), t(NOW), &applied, &[], false, &|_| true).unwrap();
        assert_eq!(ids(&plan.apply), ["p3", "p4"]);
        assert_eq!(plan.supersede, ["p1"]);
    }

    #[test]
    fn delay_holds_back_recent_patches() {
        let plan = plan(&feed(), &kernel(), &policy("stable", 12, None), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&plan.target), ["c2", "p3"]);
        let (p, h) = plan.held_back.iter().find(|(p, _)| p.id == "p4").unwrap();
        assert_eq!(*h, HeldBack::Delay { eligible_at: p.released.saturating_add(Duration::from_secs(12 * 3600)) });
    }

    #[test]
    fn channel_selects_its_own_list() {
        let plan = plan(&feed(), &kernel(), &policy("test", 0, None), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&plan.target), ["p1", "t9"]);
    }

    #[test]
    fn sticky_date_and_patch_pin_the_level() {
        let by_date = plan(&feed(), &kernel(), &policy("stable", 0, Some("2026-05-15")), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&by_date.target), ["c2"]);
        // The pinned day itself is included, to its last second.
        let same_day = plan(&feed(), &kernel(), &policy("stable", 0, Some("2026-05-20")), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&same_day.target), ["c2", "p3"]);
        // A patch pin ignores the delay: p4 is 6 h old, delay 48 h.
        let by_id = plan(&feed(), &kernel(), &policy("stable", 48, Some("p4")), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&by_id.target), ["c2", "p3", "p4"]);
        let by_id = plan(&feed(), &kernel(), &policy("stable", 0, Some("p3")), t(NOW), &[], &[], false, &|_| true).unwrap();
        assert_eq!(ids(&by_id.target), ["c2", "p3"]);
        let missing = plan(&feed(), &kernel(), &policy("stable", 0, Some("nope")), t(NOW), &[], &[], false, &|_| true);
        assert_eq!(missing.unwrap_err(), PolicyError::StickyNotFound("nope".into()));
    }

    #[test]
    fn blocked_patches_are_skipped_unless_forced() {
        let blocked = [PatchRef { id: "p3".into(), version: 1 }];
        let plan1 = plan(&feed(), &kernel(), &policy("stable", 0, None), t(NOW), &[], &blocked, false, &|_| true).unwrap();
        assert_eq!(ids(&plan1.apply), ["c2", "p4"]);
        let forced = plan(&feed(), &kernel(), &policy("stable", 0, None), t(NOW), &[], &blocked, true, &|_| true).unwrap();
        assert_eq!(ids(&forced.apply), ["c2", "p3", "p4"]);
    }

    #[test]
    fn sticky_patch_does_not_bypass_the_crash_loop_guard() {
        // Pinned to p3, and p3 brought the machine down: it must be held
        // back as blocked, not re-applied on every boot.
        let blocked = [PatchRef { id: "p3".into(), version: 1 }];
        let plan1 = plan(&feed(), &kernel(), &policy("stable", 0, Some("p3")), t(NOW), &[], &blocked, false, &|_| true).unwrap();
        assert_eq!(ids(&plan1.apply), ["c2"]);
        assert!(plan1.held_back.iter().any(|(p, h)| p.id == "p3" && *h == HeldBack::Blocked));
        let by_date = plan(&feed(), &kernel(), &policy("stable", 0, Some("2026-05-25")), t(NOW), &[], &blocked, false, &|_| true).unwrap();
        assert_eq!(ids(&by_date.apply), ["c2"]);
    }

    #[test]
    fn unknown_kernel_is_unsupported() {
        let other = KernelIdentity { release: "7.2.13".into(), build_id: "cd".repeat(20) };
        let err = plan(&feed(), &other, &policy("stable", 0, None), t(NOW), &[], &[], false, &|_| true).unwrap_err();
        assert!(matches!(err, PolicyError::Unsupported { .. }));
        assert!(err.to_string().starts_with("kernel not supported"));
    }

    #[test]
    fn sticky_parses_dates_and_ids() {
        assert_eq!(Sticky::parse("2026-05-15").unwrap(), Sticky::Date("2026-05-15".into()));
        assert_eq!(Sticky::parse("kp_fix.3").unwrap(), Sticky::Patch("kp_fix.3".into()));
        assert!(Sticky::parse("2026-13-45").is_err());
        assert!(Sticky::parse("not an id").is_err());
        assert!(Sticky::parse("2026-1-5").unwrap_err().contains("YYYY-MM-DD"));
    }
}
