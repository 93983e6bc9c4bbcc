//! Surviving the worst moments: `kill -9` during a download and during an
//! apply, a machine that goes down while applying (crash-loop guard), the
//! boot-time re-apply from the cache and its off switches, and the daemon.
//!
//! The kernel is kmend's test double (see tests/util/mod.rs for why); a
//! "reboot" gives it a new boot id and an empty patch list.

mod util;

use std::{
    io::Write as _,
    net::TcpStream,
    process::Stdio,
    sync::{
        Arc,
        atomic::{
            AtomicBool,
            Ordering, //
        },
    },
    thread,
    time::Duration,
};

use util::*;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn kill_during_download_leaves_no_partial_artifact() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    feed.publish("stable", &time_from_now(-86400), &[a]);
    let dir = feed.root();
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    // Sends half the artifact, then stalls forever.
    let server = RawServer::start(Arc::new(move |path: &str, s: &mut TcpStream| {
        if path.starts_with("/targets/") && path.ends_with(".kmpatch") {
            let body = std::fs::read(dir.join(path.trim_start_matches('/'))).unwrap();
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(&body[..body.len() / 2]);
            let _ = s.flush();
            flag.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_secs(120));
        } else {
            respond_file(&dir, path, s);
        }
    }));
    root.config(&feed.config(&server.url, "").replace("timeout = \"20s\"", "timeout = \"300s\""));
    let mut child = root.cmd(&["update"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the download to stall half way", LIMIT, || stalled.load(Ordering::SeqCst));
    // The download is held in memory until its signed hash checks, so
    // the half-received artifact never reaches the disk.
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert!(root.cache_files().iter().all(|f| !f.ends_with(".kmpatch")), "{:?}", root.cache_files());
    assert!(root.applied().is_empty());
    assert!(!root.path("var/lib/kmend/applying").exists(), "no apply had started");

    // The next run cleans up and completes from an honest server.
    let good = Server::start(&feed.root());
    root.config(&feed.config(&good.url, ""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_a"]);
    assert_eq!(root.cache_files(), ["kp_a-1.kmpatch"], "temporary files left");
}

/// Starts `update` with the fake kernel sleeping inside the load, and
/// kills it (SIGKILL) once the crash-loop marker is on disk.
fn kill_during_apply(root: &Root) {
    let mut child = root
        .cmd(&["update"])
        .env("KMEND_FAKE_LOAD_DELAY", "120s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the apply to start", LIMIT, || root.path("var/lib/kmend/applying").exists());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn kill_during_apply_is_recovered_in_the_same_boot() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    kill_during_apply(&root);
    assert!(root.applied().is_empty());

    // Same boot: kmend was stopped, not the machine. The next update notes
    // the interruption and applies normally.
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_a"]);
    assert!(!root.path("var/lib/kmend/applying").exists());
    let actions: Vec<String> = root.journal().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(actions, ["interrupted", "apply"]);
}

#[test]
fn crash_while_applying_blocks_the_patch_at_boot() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-2 * 86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    assert_eq!(root.run(&["update"]).code, 0);
    assert_eq!(root.applied(), ["kp_a"]);

    // A second patch; the machine goes down while it loads.
    let b = artifact(work.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_b", 1) });
    feed.publish("stable", &time_from_now(-86400), &[b]);
    kill_during_apply(&root);
    root.reboot("boot-2");

    let boot = root.run(&["boot"]);
    assert_eq!(boot.code, 0, "{boot}");
    assert!(boot.stdout.contains("patch 'kp_a' re-applied"), "{boot}");
    assert!(boot.stdout.contains("patch 'kp_b' not re-applied"), "{boot}");
    assert_eq!(root.applied(), ["kp_a"]);
    let status = root.run(&["status"]);
    assert!(
        status.stdout.contains("patch kp_b not re-applied: the machine went down while applying it at ")
            && status.stdout.contains("run `kmend apply` or `kmend update --force` to retry"),
        "{status}"
    );
    let actions: Vec<String> = root.journal().iter().map(|e| format!("{}:{}", e["action"].as_str().unwrap(), e["actor"].as_str().unwrap())).collect();
    assert!(actions.contains(&"block:boot".to_owned()) && actions.contains(&"reapply:boot".to_owned()), "{actions:?}");

    // update skips the blocked patch...
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("held back: 'kp_b' version 1: blocked"), "{r}");
    assert_eq!(root.applied(), ["kp_a"]);
    // ...unless forced.
    let r = root.run(&["update", "--force"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_a", "kp_b"]);
    assert!(!root.run(&["status"]).stdout.contains("not re-applied"), "block lifted");
}

#[test]
fn boot_reapplies_from_the_cache_without_the_network() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch { cves: &["CVE-2026-7"], ..Patch::new("kp_a", 1) });
    let b = artifact(work.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_b", 2) });
    feed.publish("stable", &time_from_now(-86400), &[a, b]);
    {
        let server = Server::start(&feed.root());
        root.config(&feed.config(&server.url, ""));
        assert_eq!(root.run(&["update"]).code, 0);
    } // The feed server is gone: boot must not need it.
    root.reboot("boot-2");
    assert!(root.applied().is_empty());
    let r = root.run(&["boot", "--json"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.json()["reapplied"], serde_json::json!(["kp_a", "kp_b"]));
    assert_eq!(root.applied(), ["kp_a", "kp_b"]);
    assert_eq!(root.run(&["uname"]).stdout.trim(), format!("{RELEASE}-kmend2"));
    // Running it again changes nothing.
    let again = root.run(&["boot", "--json"]);
    assert_eq!(again.json()["reapplied"], serde_json::json!([]));

    // A new kernel build: the cached patches are not for it.
    root.reboot("boot-3");
    let other_notes = {
        let mut n = std::fs::read(root.path("sys/kernel/notes")).unwrap();
        let last = n.len() - 1;
        n[last] ^= 0xff;
        n
    };
    root.write("sys/kernel/notes", &other_notes);
    let r = root.run(&["boot"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("patch 'kp_a' skipped: built for another kernel"), "{r}");
    assert!(root.applied().is_empty());
}

#[test]
fn boot_reapply_can_be_switched_off() {
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    for (how, setup) in [
        ("config", Box::new(|r: &Root, f: &Feed, url: &str| r.config(&f.config(url, "install_on_reboot = false"))) as Box<dyn Fn(&Root, &Feed, &str)>),
        ("file", Box::new(|r: &Root, _: &Feed, _: &str| r.write("etc/kmend/disable", b""))),
        ("cmdline", Box::new(|r: &Root, _: &Feed, _: &str| r.write("proc/cmdline", b"quiet nokmend\n"))),
        ("cmdline2", Box::new(|r: &Root, _: &Feed, _: &str| r.write("proc/cmdline", b"kmend.disable ro\n"))),
    ] {
        let root = Root::new();
        root.config(&feed.config(&server.url, ""));
        assert_eq!(root.run(&["update"]).code, 0);
        root.reboot("boot-2");
        setup(&root, &feed, &server.url);
        let r = root.run(&["boot"]);
        assert_eq!(r.code, 0, "{how}: {r}");
        assert!(r.stdout.contains("boot re-apply disabled"), "{how}: {r}");
        assert!(root.applied().is_empty(), "{how}: applied anyway");
    }
}

#[test]
fn daemon_applies_updates_and_stops_cleanly_on_sigterm() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, "interval = \"1s\"\njitter = \"0\"\nauto_update = true"));
    let mut child = root.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("the daemon to apply kp_a", LIMIT, || root.applied() == ["kp_a"]);
    // A patch published while it runs is picked up at a later cycle.
    feed.publish("stable", &time_from_now(-60), &[artifact(work.path(), &Patch { function: "f2", ..Patch::new("kp_b", 1) })]);
    wait_for("the daemon to apply kp_b", LIMIT, || root.applied() == ["kp_a", "kp_b"]);
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut exited = None;
    wait_for("the daemon to exit after SIGTERM", LIMIT, || {
        exited = child.try_wait().unwrap();
        exited.is_some()
    });
    assert_eq!(exited.unwrap().code(), Some(0));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("kmend daemon stopped"), "{log}");
    assert!(root.journal().iter().all(|e| e["actor"] == "daemon"));
}

#[test]
fn daemon_started_before_its_config_picks_it_up() {
    // The package starts kmend.service on install, before the admin has
    // written /etc/kmend/kmend.toml: writing it must be all it takes, with
    // no restart and no wait of a default jitter (up to 15 min) or of the
    // failure backoff.
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    let child = root.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    thread::sleep(Duration::from_secs(1));
    root.config(&feed.config(&server.url, "jitter = \"0\""));
    wait_for("the daemon to apply kp_a once configured", Duration::from_secs(25), || root.applied() == ["kp_a"]);
    let (_, log) = stop_daemon(child);
    assert!(log.contains("no feed configured"), "{log}");
}

#[test]
fn boot_refuses_a_cached_artifact_changed_since_it_was_applied() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    feed.publish("stable", &time_from_now(-86400), &[a]);
    {
        let server = Server::start(&feed.root());
        root.config(&feed.config(&server.url, ""));
        assert_eq!(root.run(&["update"]).code, 0);
    }
    // Someone swaps the cached file for another artifact that is valid on
    // its own (same id and version, another function): not what was
    // verified against the feed.
    let other = tempfile::tempdir().unwrap();
    let swapped = artifact(other.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_a", 1) });
    std::fs::copy(&swapped, root.path("var/lib/kmend/cache/kp_a-1.kmpatch")).unwrap();
    root.reboot("boot-2");
    let r = root.run(&["boot", "--json"]);
    assert_eq!(r.code, 4, "{r}");
    let failed = r.json()["failed"].to_string();
    assert!(failed.contains("kp_a") && failed.contains("hash mismatch"), "{r}");
    assert!(root.applied().is_empty(), "a changed artifact was loaded");
}

#[test]
fn daemon_logs_never_show_feed_credentials() {
    let root = Root::new();
    let feed = Feed::new();
    // A feed URL with credentials on a port nobody listens on: every cycle
    // fails and is logged.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    root.config(&feed.config(&format!("http://alice:s3cret@127.0.0.1:{port}"), "interval = \"1s\"\njitter = \"0\""));
    let child = root.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // The first cycle fails at once; its state is written right after.
    wait_for("the daemon's first failed check", LIMIT, || {
        std::fs::read_to_string(root.path("var/lib/kmend/state.json")).is_ok_and(|s| s.contains("request failed"))
    });
    let (_, log) = stop_daemon(child);
    assert!(log.contains("update failed") && log.contains("http://***@127.0.0.1"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

#[test]
fn daemon_writes_metrics_and_remembers_the_last_success() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let metrics = tempfile::tempdir().unwrap();
    let file = metrics.path().join("kmend.prom");
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    let extra = format!("interval = \"1s\"\njitter = \"0\"\nauto_update = true\nmetrics_textfile = \"{}\"", file.display());
    root.config(&feed.config(&server.url, &extra));
    let mut child = root.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let text = || std::fs::read_to_string(&file).unwrap_or_default();
    let value = |t: &str, name: &str| t.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map(str::to_owned);
    wait_for("metrics after the first cycle", LIMIT, || text().contains("\nkmend_patches_applied 1\n"));
    let first = text();
    assert_eq!(value(&first, "kmend_last_check_success").as_deref(), Some("1"), "{first}");
    let success = value(&first, "kmend_last_successful_check_timestamp_seconds").expect("a success time");
    // The feed goes away: the next cycle fails, and says when it last worked.
    drop(server);
    wait_for("metrics after a failed cycle", LIMIT, || value(&text(), "kmend_last_check_success").as_deref() == Some("0"));
    let failed = text();
    assert_eq!(value(&failed, "kmend_last_successful_check_timestamp_seconds"), Some(success), "{failed}");
    assert!(value(&failed, "kmend_last_successful_check_age_seconds").is_some(), "{failed}");
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut exited = None;
    wait_for("the daemon to exit after SIGTERM", LIMIT, || {
        exited = child.try_wait().unwrap();
        exited.is_some()
    });
}
