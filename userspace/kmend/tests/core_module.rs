//! The core module through the feed: a machine with no kmend.ko gets the
//! one built for its kernel from the feed (verified like a patch), before
//! the first patch, and again at boot from its cache; with no core module
//! in the feed its kernel is "not supported", plainly.
//!
//! The kernel is kmend's test double (tests/util/mod.rs): "kmend.ko is
//! loaded" means `<root>/dev/kmend` exists, and loading the core artifact's
//! module creates it.

mod util;

use std::fs;

use util::*;

/// A machine without kmend.ko, configured for a feed offering the core
/// module and patch kp_a for its kernel.
fn machine_without_core(work: &std::path::Path) -> (Root, Feed, Server) {
    let root = Root::new();
    fs::remove_file(root.path("dev/kmend")).unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-3600), &[core_artifact(work, 1), artifact(work, &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    (root, feed, server)
}

#[test]
fn update_loads_the_feeds_core_module_before_the_first_patch() {
    let work = tempfile::tempdir().unwrap();
    let (root, _feed, _server) = machine_without_core(work.path());
    // A check changes nothing: no core loaded, the patch is pending.
    let r = root.run(&["check"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(!root.path("dev/kmend").exists());
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(root.path("dev/kmend").exists(), "kmend.ko not loaded");
    assert_eq!(root.applied(), ["kp_a"]);
    let actions: Vec<String> = root.journal().iter().map(|e| format!("{} {}", e["action"].as_str().unwrap(), e["patch"].as_str().unwrap())).collect();
    assert_eq!(actions, ["load-core kmend", "apply kp_a"]);
    assert!(root.cache_files().contains(&"kmend-1.kmpatch".to_owned()), "{:?}", root.cache_files());
}

#[test]
fn boot_loads_the_cached_core_module_then_reapplies() {
    let work = tempfile::tempdir().unwrap();
    let (root, _feed, server) = machine_without_core(work.path());
    assert_eq!(root.run(&["update"]).code, 0);
    drop(server);
    // Reboot: nothing loaded, not even kmend.ko; no network.
    root.reboot("boot-2");
    fs::remove_file(root.path("dev/kmend")).unwrap();
    let r = root.run(&["boot"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("kmend.ko version 1 loaded from the cache"), "{r}");
    assert!(r.stdout.contains("patch 'kp_a' re-applied"), "{r}");
    assert_eq!(root.applied(), ["kp_a"]);
}

#[test]
fn boot_refuses_a_cached_core_module_changed_since() {
    let work = tempfile::tempdir().unwrap();
    let (root, _feed, _server) = machine_without_core(work.path());
    assert_eq!(root.run(&["update"]).code, 0);
    root.reboot("boot-2");
    fs::remove_file(root.path("dev/kmend")).unwrap();
    let cached = root.path("var/lib/kmend/cache/kmend-1.kmpatch");
    let mut bytes = fs::read(&cached).unwrap();
    let last = bytes.len() - 600;
    bytes[last] ^= 0xff;
    fs::write(&cached, bytes).unwrap();
    let r = root.run(&["boot"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("hash mismatch"), "{r}");
    assert!(!root.path("dev/kmend").exists(), "a changed core module was loaded");
}

#[test]
fn no_core_module_in_the_feed_and_none_loaded_is_unsupported() {
    let root = Root::new();
    fs::remove_file(root.path("dev/kmend")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-3600), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 3, "{r}");
    assert!(r.stderr.contains("is not supported: kmend.ko is not loaded and channel 'stable' of the feed has no core module"), "{r}");
    let r = root.run(&["status", "--json"]);
    assert_eq!(r.code, 3, "{r}");
}

#[test]
fn a_loaded_kmend_ko_is_used_as_it_is() {
    // kmend.ko loaded some other way (modules-load.d): the feed's core
    // module is not loaded over it.
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-3600), &[core_artifact(work.path(), 1), artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    assert_eq!(root.run(&["update"]).code, 0);
    assert_eq!(root.applied(), ["kp_a"]);
    assert!(root.journal().iter().all(|e| e["action"] != "load-core"));
}
