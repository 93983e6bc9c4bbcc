//! `kmend update`/`check`/`status` against real signed feeds served over
//! loopback HTTP: selection by channel, delay and sticky pins, and the
//! refusals (signature, hash, identity, unsupported kernel), each with its
//! own message and nothing applied.
//!
//! The kernel is kmend's test double (see tests/util/mod.rs for why).

mod util;

use std::{
    fs,
    path::PathBuf,
};

use util::*;

/// A feed with `p1` (3 days old) and cumulative `c2` (2 days old) on
/// stable, and the same plus `t3` (1 hour old) on test.
fn standard_feed(work: &std::path::Path) -> (Feed, Vec<PathBuf>) {
    let feed = Feed::new();
    let p1 = artifact(work, &Patch { cves: &["CVE-2026-1001"], ..Patch::new("kp_p1", 1) });
    let c2 = artifact(work, &Patch { replace: true, cves: &["CVE-2026-1001", "CVE-2026-1002"], ..Patch::new("kp_c2", 2) });
    let t3 = artifact(work, &Patch { cves: &["CVE-2026-1003"], function: "meminfo_proc_show", ..Patch::new("kp_t3", 3) });
    feed.publish("stable", &time_from_now(-3 * 86400), &[p1.clone()]);
    feed.publish("stable", &time_from_now(-2 * 86400), &[c2.clone()]);
    feed.publish("test", &time_from_now(-3 * 86400), &[p1.clone()]);
    feed.publish("test", &time_from_now(-2 * 86400), &[c2.clone()]);
    feed.publish("test", &time_from_now(-3600), &[t3.clone()]);
    (feed, vec![p1, c2, t3])
}

#[test]
fn update_applies_the_newest_cumulative_patch_and_reports_it() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let (feed, _) = standard_feed(work.path());
    let server = Server::start(&feed.root());
    // The key as a file, as a sysadmin would install it (under KMEND_ROOT).
    root.write("etc/kmend/feed.pub", &fs::read(&feed.public).unwrap());
    let key = fs::read_to_string(&feed.public).unwrap();
    root.config(&feed.config(&server.url, "").replace(key.trim(), "/etc/kmend/feed.pub"));

    let before = root.run(&["status"]);
    assert_eq!(before.code, 1, "nothing applied yet: {before}");

    let check = root.run(&["check"]);
    assert_eq!(check.code, 1, "check before update: {check}");
    let status = root.run(&["status", "--json"]);
    assert_eq!(status.code, 2, "updates available after a check: {status}");
    assert_eq!(status.json()["pending"][0]["id"], "kp_c2");

    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "update: {r}");
    // The cumulative patch supersedes p1, which is never applied.
    assert_eq!(root.applied(), ["kp_c2"]);
    let status = root.run(&["status", "--json"]);
    assert_eq!(status.code, 0, "{status}");
    let v = status.json();
    assert_eq!(v["patches"][0]["functions"][0]["name"], "cmdline_proc_show");
    assert_eq!(v["patches"][0]["functions"][0]["state"], "active");
    assert_eq!(v["effective_version"], format!("{RELEASE}-kmend2"));
    assert_eq!(root.run(&["check"]).code, 0, "check after update");
    assert_eq!(root.run(&["uname", "-r"]).stdout.trim(), format!("{RELEASE}-kmend2"));
    let cves = root.run(&["cves"]);
    assert_eq!(cves.stdout, "CVE-2026-1001 kp_c2\nCVE-2026-1002 kp_c2\n", "{cves}");
    assert_eq!(root.cache_files(), ["kp_c2-2.kmpatch"]);
    let journal = root.journal();
    let applies: Vec<_> = journal.iter().filter(|e| e["action"] == "apply").collect();
    assert_eq!(applies.len(), 1, "{journal:?}");
    assert_eq!(applies[0]["patch"], "kp_c2");
    assert_eq!(applies[0]["result"], "ok");
    assert!(applies[0]["actor"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(applies[0]["functions"][0], "vmlinux:cmdline_proc_show");
    // A second update has nothing to do.
    let again = root.run(&["update", "--json"]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.json()["applied"].as_array().unwrap().len(), 0);
}

#[test]
fn cumulative_patch_supersedes_what_was_applied_before() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let p1 = artifact(work.path(), &Patch::new("kp_p1", 1));
    feed.publish("stable", &time_from_now(-3 * 86400), &[p1]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    assert_eq!(root.run(&["update"]).code, 0);
    assert_eq!(root.applied(), ["kp_p1"]);
    let c2 = artifact(work.path(), &Patch { replace: true, ..Patch::new("kp_c2", 2) });
    feed.publish("stable", &time_from_now(-86400), &[c2]);
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("patch 'kp_p1' reverted: superseded"), "{r}");
    assert_eq!(root.applied(), ["kp_c2"]);
    assert_eq!(root.cache_files(), ["kp_c2-2.kmpatch"], "the superseded artifact leaves the cache");
}

#[test]
fn channel_and_delay_choose_what_is_eligible() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let (feed, _) = standard_feed(work.path());
    let server = Server::start(&feed.root());

    // test channel, 24 h delay: t3 (1 h old) is held back.
    root.config(&feed.config(&server.url, "channel = \"test\"\ndelay = \"24h\""));
    let check = root.run(&["check"]);
    assert_eq!(check.code, 1, "{check}");
    assert!(check.stdout.contains("held back: 'kp_t3' version 3: delayed until"), "{check}");
    assert_eq!(root.run(&["update"]).code, 0);
    assert_eq!(root.applied(), ["kp_c2"]);
    assert_eq!(root.run(&["check"]).code, 0, "up to date within the delay");

    // No delay: t3 is eligible on test...
    root.config(&feed.config(&server.url, "channel = \"test\"\ndelay = \"0\""));
    assert_eq!(root.run(&["check"]).code, 1);
    assert_eq!(root.run(&["update"]).code, 0);
    assert_eq!(root.applied(), ["kp_c2", "kp_t3"]);

    // ...but never on stable, which does not list it.
    let other = Root::new();
    other.config(&feed.config(&server.url, "channel = \"stable\""));
    assert_eq!(other.run(&["update"]).code, 0);
    assert_eq!(other.applied(), ["kp_c2"]);
}

#[test]
fn sticky_pins_by_date_and_by_patch() {
    let work = tempfile::tempdir().unwrap();
    let (feed, _) = standard_feed(work.path());
    let server = Server::start(&feed.root());

    // By date: only what was released on or before the day p1 came out.
    let by_date = Root::new();
    let p1_day = &time_from_now(-3 * 86400)[..10];
    by_date.config(&feed.config(&server.url, &format!("channel = \"test\"\nsticky = \"{p1_day}\"")));
    let r = by_date.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(by_date.applied(), ["kp_p1"]);

    // By patch: stay exactly at c2's level, although t3 is newer.
    let by_id = Root::new();
    by_id.config(&feed.config(&server.url, "channel = \"test\"\nsticky = \"kp_c2\""));
    assert_eq!(by_id.run(&["update"]).code, 0);
    assert_eq!(by_id.applied(), ["kp_c2"]);
    assert_eq!(by_id.run(&["check"]).code, 0, "pinned level reached");

    let missing = Root::new();
    missing.config(&feed.config(&server.url, "sticky = \"kp_nope\""));
    let r = missing.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("sticky patch 'kp_nope' is not in the feed"), "{r}");
}

/// Asserts a refused update: exit 4, the message, and nothing applied or
/// cached.
fn assert_refused(root: &Root, needle: &str) {
    let r = root.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.starts_with("kmend: ") && r.stderr.contains(needle), "want {needle:?}: {r}");
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {r}");
    assert!(root.applied().is_empty(), "something was applied");
    assert!(root.cache_files().iter().all(|f| !f.ends_with(".kmpatch")), "cache: {:?}", root.cache_files());
    assert!(!root.path("var/lib/kmend/applying").exists());
}

#[test]
fn a_feed_signed_by_another_key_is_refused() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let (feed, _) = standard_feed(work.path());
    let stranger = Feed::new();
    let server = Server::start(&feed.root());
    root.config(&stranger.config(&server.url, ""));
    assert_refused(&root, "the feed's signed metadata does not verify (timestamp role)");
    // Changing one byte of the published index is refused by its signed hash.
    let root = Root::new();
    root.config(&feed.config(&server.url, ""));
    for index in feed.published("index.json") {
        let text = fs::read_to_string(&index).unwrap();
        fs::write(&index, text + " ").unwrap();
    }
    assert_refused(&root, "'index.json': does not match its signed length and hash");
    let status = root.run(&["status"]);
    assert!(status.stdout.contains("last check:") && status.stdout.contains("failed: feed"), "{status}");
}

#[test]
fn a_tampered_artifact_is_refused_and_nothing_is_applied() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    let b = artifact(work.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_b", 1) });
    feed.publish("stable", &time_from_now(-86400), &[a, b]);
    // Same size, one byte changed: only the hash can tell.
    let victim = feed.published("kp_b-1.kmpatch").pop().unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let last = bytes.len() - 600;
    bytes[last] ^= 0xff;
    fs::write(&victim, bytes).unwrap();
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    // kp_a downloads fine but must not be applied either: all or nothing.
    assert_refused(&root, "'kp_b-1.kmpatch': does not match its signed length and hash");
}

#[test]
fn an_artifact_for_another_kernel_build_is_refused() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    // Built for another build of the same release...
    let foreign = artifact(work.path(), &Patch { build_id: OTHER_BUILD_ID, ..Patch::new("kp_x", 1) });
    feed.publish("stable", &time_from_now(-86400), &[foreign.clone()]);
    // ...but listed (and signed) under this kernel's build id.
    let index = feed.root().join("index.json");
    let text = fs::read_to_string(&index).unwrap().replace(OTHER_BUILD_ID, BUILD_ID);
    fs::write(&index, text).unwrap();
    feed.sign();
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    assert_refused(&root, &format!("patch 'kp_x' version 1: identity mismatch: built for kernel {RELEASE} (build id {OTHER_BUILD_ID})"));

    // `kmend apply` checks the same before touching anything.
    let r = root.run(&["apply", foreign.to_str().unwrap()]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("identity mismatch"), "{r}");
    assert!(root.applied().is_empty());
    assert!(root.journal().is_empty(), "nothing was attempted");
}

#[test]
fn an_unknown_kernel_is_unsupported() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let foreign = artifact(work.path(), &Patch { build_id: OTHER_BUILD_ID, ..Patch::new("kp_x", 1) });
    feed.publish("stable", &time_from_now(-86400), &[foreign]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    let check = root.run(&["check"]);
    assert_eq!(check.code, 3, "{check}");
    assert!(check.stderr.contains("kernel not supported"), "{check}");
    let update = root.run(&["update"]);
    assert_eq!(update.code, 3, "{update}");
    let status = root.run(&["status"]);
    assert_eq!(status.code, 3, "{status}");
    assert!(status.stdout.contains("state: kernel not supported by the feed"), "{status}");
}

#[test]
fn a_feed_in_a_plain_directory_works_too() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let (feed, _) = standard_feed(work.path());
    root.config(&feed.config(&format!("file://{}", feed.root().display()), ""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_c2"]);
    let verify = kmend([std::path::Path::new("feed"), "verify".as_ref(), "--dir".as_ref(), &feed.root(), "--root".as_ref(), &feed.trusted_root()]);
    assert_eq!(verify.code, 0, "{verify}");
    assert!(verify.stdout.contains("5 patch(es) verified"), "{verify}");
}

#[test]
fn an_update_is_all_or_nothing_when_a_later_load_fails() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    let b = artifact(work.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_b", 1) });
    feed.publish("stable", &time_from_now(-2 * 86400), &[a]);
    feed.publish("stable", &time_from_now(-86400), &[b]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    // The kernel refuses the second module: the first must not stay.
    let r = run({
        let mut c = root.cmd(&["update"]);
        c.env("KMEND_FAKE_LOAD_FAIL", "kp_b");
        c
    });
    assert_eq!(r.code, 4, "{r}");
    assert!(root.applied().is_empty(), "kp_a left applied by a failed update: {:?}", root.applied());
    let journal = root.journal();
    assert!(journal.iter().any(|e| e["action"] == "rollback" && e["patch"] == "kp_a"), "{journal:?}");
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_a", "kp_b"]);
}

/// A feed with a fix for module code (linked to `tcp_dctcp`) and a fix to
/// the kernel image, on a host where tcp_dctcp is not loaded (most hosts
/// never load most modules): the kernel fix applies and the module fix
/// waits, reported as waiting for its module, with no failed update; once
/// the module is loaded, the next update applies it.
#[test]
fn a_fix_for_a_module_that_is_not_loaded_waits_without_blocking_the_others() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let module_fix = artifact(work.path(), &Patch { links: &["tcp_dctcp"], function: "dctcp_init", cves: &["CVE-2026-2001"], ..Patch::new("kp_dctcp", 1) });
    let kernel_fix = artifact(work.path(), &Patch { cves: &["CVE-2026-2002"], ..Patch::new("kp_kernel", 2) });
    feed.publish("stable", &time_from_now(-3 * 86400), &[module_fix, kernel_fix]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));

    let mut update = root.cmd(&["update", "--json"]);
    update.env("KMEND_FAKE_UNLOADED", "tcp_dctcp");
    let r = run(update);
    assert_eq!(r.code, 0, "a module fix for an unloaded module failed the update: {r}");
    assert_eq!(root.applied(), ["kp_kernel"], "{r}");
    let held = &r.json()["check"]["plan"]["held_back"];
    assert_eq!(held[0][0]["id"], "kp_dctcp", "{r}");
    assert_eq!(held[0][1], serde_json::json!({ "reason": "module_not_loaded", "module": "tcp_dctcp" }), "{r}");
    // Not an update waiting to be made: status says up to date.
    let mut status = root.cmd(&["status", "--json"]);
    status.env("KMEND_FAKE_UNLOADED", "tcp_dctcp");
    let s = run(status);
    assert_eq!(s.code, 0, "{s}");
    assert!(s.json()["last_update"]["time"].is_string() && s.json()["last_update"]["error"].is_null(), "{s}");

    // Loaded now: the next update applies it.
    let r = root.run(&["update", "--json"]);
    assert_eq!(r.code, 0, "{r}");
    let mut applied = root.applied();
    applied.sort();
    assert_eq!(applied, ["kp_dctcp", "kp_kernel"], "{r}");
}
