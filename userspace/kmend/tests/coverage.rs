//! Coverage, as the vendors report it: the feed says per kernel until when
//! live patches come, whether it reached its end of life, and which known
//! CVEs only a new kernel fixes; `status`, `cves` and `metrics` tell the
//! machine's owner when to plan a reboot.
//!
//! The kernel is kmend's test double (tests/util/mod.rs).

mod util;

use util::*;

/// `kmend feed coverage` on the test kernel, then sign.
fn set_coverage(feed: &Feed, args: &[&str]) -> Run {
    let dir = feed.root();
    let mut all = vec!["feed", "coverage", "--dir", dir.to_str().unwrap(), "--channel", "stable", "--kernel", RELEASE];
    all.extend_from_slice(args);
    let r = kmend(all);
    if r.code == 0 {
        feed.sign();
    }
    r
}

/// A machine whose feed offers kp_a (fixing CVE-2026-1) for its kernel.
fn machine() -> (Root, Feed, Server, tempfile::TempDir) {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-3600), &[artifact(work.path(), &Patch { cves: &["CVE-2026-1"], ..Patch::new("kp_a", 1) })]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    (root, feed, server, work)
}

fn coverage_state(root: &Root) -> String {
    root.run(&["status", "--json"]).json()["coverage"]["state"].as_str().unwrap().to_owned()
}

#[test]
fn covered_until_a_date_with_cves_that_need_a_reboot() {
    let (root, feed, _server, _work) = machine();
    assert_eq!(coverage_state(&root), "unknown", "before any check");
    let until = time_from_now(30 * 86400);
    let r = set_coverage(&feed, &["--until", &until, "--needs-reboot", "CVE-2026-9=7.2.14", "--needs-reboot", "CVE-2026-8"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.run(&["update"]).code, 0);
    assert_eq!(coverage_state(&root), "covered");
    let r = root.run(&["status"]);
    assert!(r.stdout.contains("coverage: covered: live patches for this kernel until"), "{r}");
    assert!(r.stdout.contains("2 known CVE(s) need a new kernel and a reboot: CVE-2026-9, CVE-2026-8"), "{r}");
    let r = root.run(&["cves"]);
    assert_eq!(r.stdout, "CVE-2026-1 kp_a\nCVE-2026-9 reboot 7.2.14\nCVE-2026-8 reboot\n", "{r}");
    let j = root.run(&["cves", "--json"]).json();
    assert_eq!(j["needs_reboot"][0]["fixed_in"], "7.2.14");
    let m = root.run(&["metrics"]).stdout;
    assert!(m.contains("kmend_coverage{state=\"covered\"} 1"), "{m}");
    assert!(m.contains("kmend_cves_needing_reboot 2"), "{m}");
}

#[test]
fn coverage_that_ended_says_upgrade_required() {
    let (root, feed, _server, _work) = machine();
    assert_eq!(set_coverage(&feed, &["--until", &time_from_now(-60)]).code, 0);
    assert_eq!(root.run(&["check"]).code, 1);
    assert_eq!(coverage_state(&root), "upgrade-required");
    let r = root.run(&["status"]);
    assert!(r.stdout.contains("upgrade required: live patches for this kernel ended"), "{r}");
    assert!(r.stdout.contains("plan a reboot into a newer kernel"), "{r}");
}

#[test]
fn end_of_life_and_unsupported_are_said_plainly() {
    let (root, feed, _server, _work) = machine();
    assert_eq!(set_coverage(&feed, &["--end-of-life"]).code, 0);
    assert_eq!(root.run(&["check"]).code, 1);
    assert_eq!(coverage_state(&root), "end-of-life");
    assert!(root.run(&["status"]).stdout.contains("coverage: end of life"));

    // A feed with nothing for this kernel.
    let other = Root::new();
    other.write("sys/kernel/notes", &notes(&"ef".repeat(20)));
    other.config(&feed.config(&_server.url, ""));
    assert_eq!(other.run(&["check"]).code, 3);
    assert_eq!(coverage_state(&other), "unsupported");
    assert!(other.run(&["status"]).stdout.contains("coverage: unsupported"));
}

#[test]
fn coverage_for_a_kernel_the_feed_does_not_list_is_refused() {
    let (_root, feed, _server, _work) = machine();
    let dir = feed.root();
    let r = kmend(["feed", "coverage", "--dir", dir.to_str().unwrap(), "--channel", "stable", "--kernel", "6.1.0-nope", "--end-of-life"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("channel 'stable' lists no kernel '6.1.0-nope'"), "{r}");
    let r = kmend(["feed", "coverage", "--dir", dir.to_str().unwrap(), "--channel", "stable", "--kernel", RELEASE, "--until", "soon"]);
    assert_eq!(r.code, 4, "{r}");
}
