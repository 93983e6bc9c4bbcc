//! Attacks on the feed, each tried the way a hostile mirror or network
//! would, against real TUF metadata written by `kmend feed` and served over
//! loopback HTTP: rollback, freeze, mix-and-match, revoked and
//! below-threshold keys, swapped key files. Each is refused, with its own
//! message, and nothing already applied changes.
//!
//! The kernel is kmend's test double (see tests/util/mod.rs for why).

mod util;

use std::{
    fs,
    path::Path,
    time::Duration,
};

use util::*;

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// `kmend feed build --dir <dir> --channel stable <artifact>`.
fn stage(dir: &std::ffi::OsStr, artifact: &std::ffi::OsStr) -> Run {
    feed_cmd(&["build".as_ref(), "--dir".as_ref(), dir, "--channel".as_ref(), "stable".as_ref(), artifact])
}

fn feed_cmd(args: &[&std::ffi::OsStr]) -> Run {
    let mut all: Vec<&std::ffi::OsStr> = vec!["feed".as_ref()];
    all.extend_from_slice(args);
    kmend(all)
}

fn assert_failed_check(root: &Root, r: &Run, needle: &str) {
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains(needle), "want {needle:?}: {r}");
    let status = root.run(&["status"]);
    assert!(status.stdout.contains("failed: feed"), "status must show the refused check: {status}");
}

#[test]
fn rollback_to_an_older_signed_feed_is_refused() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let c1 = artifact(work.path(), &Patch { replace: true, ..Patch::new("kp_c1", 1) });
    let c2 = artifact(work.path(), &Patch { replace: true, ..Patch::new("kp_c2", 2) });
    feed.publish("stable", &time_from_now(-2 * 86400), &[c1]);
    // The attacker keeps a copy of this feed, validly signed.
    let old = tempfile::tempdir().unwrap();
    copy_dir(&feed.root(), old.path());
    feed.publish("stable", &time_from_now(-86400), &[c2]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_c2"]);
    // status says which publish it trusts, and until when.
    let status = root.run(&["status", "--json"]);
    assert_eq!(status.json()["last_check"]["signed"]["version"], 2, "{status}");
    assert!(root.run(&["status"]).stdout.contains("feed: signed publish version 2 (root version 1), valid until "));

    // A mirror now serves the older feed, whose signatures are all good.
    let mirror = Server::start(old.path());
    root.config(&feed.config(&mirror.url, ""));
    let r = root.run(&["update"]);
    assert_failed_check(&root, &r, "rollback refused: the feed offers timestamp version 1, older than version 2");
    assert_eq!(root.applied(), ["kp_c2"], "the newer cumulative patch must stay");
    // And across a daemon restart or reboot: the versions seen are on disk.
    let r = root.run(&["check"]);
    assert!(r.stderr.contains("rollback refused"), "{r}");
}

#[test]
fn a_frozen_feed_is_refused_once_its_metadata_expires() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    let r = stage(feed.root().as_os_str(), a.as_os_str());
    assert_eq!(r.code, 0, "{r}");
    // A publish valid for 2 seconds, then never re-signed: what a mirror
    // that freezes the feed (or a dead publisher) looks like.
    feed.sign_with(&["--key".as_ref(), feed.key.as_os_str(), "--expires".as_ref(), "2s".as_ref()]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    let r = root.run(&["check"]);
    assert_eq!(r.code, 1, "fresh metadata is accepted: {r}");
    std::thread::sleep(Duration::from_millis(2500));
    let r = root.run(&["check"]);
    assert_failed_check(&root, &r, "feed metadata expired (timestamp role)");
    assert!(r.stderr.contains("kmend feed sign"), "says what to do: {r}");
}

#[test]
fn mixing_metadata_of_two_publishes_is_refused() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    let b = artifact(work.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_b", 1) });
    feed.publish("stable", &time_from_now(-86400), &[a]);
    let old_snapshot = fs::read(feed.root().join("metadata/1.snapshot.json")).unwrap();
    feed.publish("stable", &time_from_now(-3600), &[b]);
    // The new timestamp, with the old snapshot in the new one's place.
    fs::write(feed.root().join("metadata/2.snapshot.json"), old_snapshot).unwrap();
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("Hash mismatch for") && r.stderr.contains("/metadata/2.snapshot.json"), "{r}");
    assert!(root.applied().is_empty());
}

#[test]
fn a_revoked_key_cannot_sign_after_a_root_rotation() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    feed.publish("stable", &time_from_now(-86400), &[a]);
    // The attacker will hold the old key and a copy of the feed as it was.
    let before = tempfile::tempdir().unwrap();
    copy_dir(&feed.root(), before.path());
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    assert_eq!(root.run(&["update"]).code, 0);

    // The publisher rotates to a new key (old key suspected compromised).
    let new_key = work.path().join("new");
    assert_eq!(feed_cmd(&["keygen".as_ref(), "--out".as_ref(), new_key.as_os_str()]).code, 0);
    let new_secret = new_key.with_extension("key");
    let r = feed_cmd(&[
        "rotate-root".as_ref(),
        "--dir".as_ref(),
        feed.root().as_os_str(),
        "--old-root-key".as_ref(),
        feed.key.as_os_str(),
        "--root-key".as_ref(),
        new_secret.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r}");
    // The old key can no longer publish on the real feed...
    let r = feed_cmd(&["sign".as_ref(), "--dir".as_ref(), feed.root().as_os_str(), "--key".as_ref(), feed.key.as_os_str()]);
    assert_ne!(r.code, 0, "signing with a revoked key: {r}");
    feed.sign_with(&["--key".as_ref(), new_secret.as_os_str()]);
    // ...and the machine, still shipped with root version 1, follows.
    let r = root.run(&["check"]);
    assert_eq!(r.code, 0, "rotation followed: {r}");

    // The attacker signs a newer publish of the old feed with the old key,
    // served where the new root files are not.
    let evil = artifact(work.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_evil", 9) });
    let r = stage(before.path().as_os_str(), evil.as_os_str());
    assert_eq!(r.code, 0, "{r}");
    for _ in 0..3 {
        // Versions above anything the machine saw.
        let r = feed_cmd(&["sign".as_ref(), "--dir".as_ref(), before.path().as_os_str(), "--key".as_ref(), feed.key.as_os_str()]);
        assert_eq!(r.code, 0, "{r}");
    }
    let mirror = Server::start(before.path());
    root.config(&feed.config(&mirror.url, ""));
    let r = root.run(&["update"]);
    assert_failed_check(&root, &r, "the feed's signed metadata does not verify (timestamp role)");
    assert_eq!(root.applied(), ["kp_a"]);
}

#[test]
fn a_root_change_below_the_threshold_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let keys: Vec<_> = ["r1", "r2", "online"]
        .iter()
        .map(|n| {
            let out = work.path().join(n);
            assert_eq!(feed_cmd(&["keygen".as_ref(), "--out".as_ref(), out.as_os_str()]).code, 0);
            (out.with_extension("key"), out.with_extension("pub"))
        })
        .collect();
    let dir = work.path().join("feed");
    let r = feed_cmd(&[
        "init".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
        "--root-key".as_ref(),
        keys[0].0.as_os_str(),
        "--root-key".as_ref(),
        keys[1].0.as_os_str(),
        "--threshold".as_ref(),
        "2".as_ref(),
        "--key".as_ref(),
        keys[2].1.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r}");
    // One stolen root key is not enough to hand the feed to the thief.
    let r = feed_cmd(&[
        "rotate-root".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
        "--old-root-key".as_ref(),
        keys[0].0.as_os_str(),
        "--root-key".as_ref(),
        keys[0].0.as_os_str(),
    ]);
    assert_ne!(r.code, 0, "{r}");
    assert!(!dir.join("metadata/2.root.json").exists(), "{r}");
    // The online key publishes; a root key alone does not.
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    let r = stage(dir.as_os_str(), a.as_os_str());
    assert_eq!(r.code, 0, "{r}");
    let r = feed_cmd(&["sign".as_ref(), "--dir".as_ref(), dir.as_os_str(), "--key".as_ref(), keys[0].0.as_os_str()]);
    assert_ne!(r.code, 0, "{r}");
    let r = feed_cmd(&["sign".as_ref(), "--dir".as_ref(), dir.as_os_str(), "--key".as_ref(), keys[2].0.as_os_str()]);
    assert_eq!(r.code, 0, "{r}");
    let r = feed_cmd(&["verify".as_ref(), "--dir".as_ref(), dir.as_os_str(), "--root".as_ref(), dir.join("metadata/1.root.json").as_os_str()]);
    assert_eq!(r.code, 0, "{r}");
}

#[test]
fn key_files_cannot_be_swapped_or_overwritten() {
    let feed = Feed::new();
    let before = fs::read(&feed.key).unwrap();
    // A public key passed where the secret one belongs is named as such.
    let r = feed_cmd(&["sign".as_ref(), "--dir".as_ref(), feed.root().as_os_str(), "--key".as_ref(), feed.public.as_os_str()]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("is a public key: signing needs the secret key"), "{r}");
    // keygen never replaces a key.
    let prefix = feed.key.with_extension("");
    let r = feed_cmd(&["keygen".as_ref(), "--out".as_ref(), prefix.as_os_str()]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("already exists"), "{r}");
    assert_eq!(fs::read(&feed.key).unwrap(), before);
    // A bare name is a file in the current directory; a missing directory
    // is an error, not created.
    let cwd = tempfile::tempdir().unwrap();
    let r = run({
        let mut c = std::process::Command::new(kmend_bin());
        c.args(["feed", "keygen", "--out", "feed2"]).current_dir(cwd.path());
        c
    });
    assert_eq!(r.code, 0, "{r}");
    assert!(cwd.path().join("feed2.key").exists() && cwd.path().join("feed2.pub").exists());
    let r = feed_cmd(&["keygen".as_ref(), "--out".as_ref(), cwd.path().join("no/such/dir/x").as_os_str()]);
    assert_ne!(r.code, 0, "{r}");
    assert!(!cwd.path().join("no").exists());
}

#[test]
fn published_feed_files_are_world_readable() {
    use std::os::unix::fs::PermissionsExt as _;
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    feed.publish("stable", &time_from_now(-86400), &[a]);
    let mut seen = 0;
    for sub in ["", "metadata", "targets", "patches"] {
        for e in fs::read_dir(feed.root().join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode & 0o444, 0o444, "{} is {mode:o}", e.path().display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 7, "{seen} files");
}

#[test]
fn credentials_in_the_feed_url_never_reach_state_status_logs_or_doctor() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    feed.publish("stable", &time_from_now(-86400), &[a]);
    let server = Server::start(&feed.root());
    let with_creds = server.url.replace("http://", "http://alice:s3cret@");
    root.config(&feed.config(&with_creds, ""));
    let mut seen = Vec::new();
    for args in [&["check"][..], &["update"], &["status"], &["status", "--json"], &["doctor"], &["list", "--json"]] {
        seen.push(root.run(args));
    }
    // A failing check: its error quotes URLs.
    fs::remove_dir_all(feed.root().join("targets")).unwrap();
    root.run(&["revert", "kp_a"]);
    for args in [&["update"][..], &["update", "--json"], &["status"]] {
        seen.push(root.run(args));
    }
    assert!(seen.iter().any(|r| r.stderr.contains("http://***@127.0.0.1")), "failures name the redacted feed");
    for r in &seen {
        assert!(!format!("{}{}", r.stdout, r.stderr).contains("s3cret"), "credentials shown: {r}");
    }
    for file in ["var/lib/kmend/state.json", "var/lib/kmend/journal.jsonl"] {
        let text = fs::read_to_string(root.path(file)).unwrap_or_default();
        assert!(!text.contains("s3cret"), "{file}: {text}");
    }
}
