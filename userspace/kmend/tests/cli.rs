//! The verbs around the agent: artifacts, apply/revert/unload, list, info,
//! report, doctor, config errors, and the status shape the VM suite reads.
//!
//! The kernel is kmend's test double (see tests/util/mod.rs for why).

mod util;

use std::{
    fs,
    path::Path, //
};

use util::*;

#[test]
fn status_without_patches_or_config_keeps_the_vm_suite_shape() {
    let root = Root::new();
    let r = root.run(&["status", "--json"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("\"patches\":[]"), "{r}");
    assert_eq!(r.stdout.lines().count(), 1);
    // Without kmend.ko (a machine that gets it from the feed at its first
    // update): nothing applied, said plainly, not an error.
    fs::remove_file(root.path("dev/kmend")).unwrap();
    let r = root.run(&["status"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("kmend.ko is not loaded"), "{r}");
    assert_eq!(root.run(&["status", "--json"]).json()["core_loaded"], false);
}

#[test]
fn artifacts_pack_inspect_and_refuse_tampering() {
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch { cves: &["CVE-2026-1"], ..Patch::new("kp_a", 4) });
    let root = Root::new();
    let r = root.run(&["artifact", "inspect", a.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{r}");
    let m = &r.json()["manifest"];
    assert_eq!((m["id"].as_str(), m["version"].as_u64()), (Some("kp_a"), Some(4)));
    assert_eq!(m["kernel"]["build_id"], BUILD_ID);
    assert_eq!(m["module_sha256"].as_str().unwrap().len(), 64);

    // One flipped byte inside patch.ko: the manifest no longer vouches for it.
    let mut bytes = fs::read(&a).unwrap();
    let at = bytes.len() - 1100;
    bytes[at] ^= 0x01;
    let bad = work.path().join("bad.kmpatch");
    fs::write(&bad, bytes).unwrap();
    let r = root.run(&["artifact", "inspect", bad.to_str().unwrap()]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("module hash mismatch"), "{r}");
    let r = root.run(&["apply", bad.to_str().unwrap()]);
    assert_eq!(r.code, 4, "{r}");
    assert!(root.applied().is_empty());

    // A module whose name is not the manifest id is not packed.
    let m = work.path().join("m.json");
    fs::write(&m, fs::read_to_string(work.path().join("kp_a.json")).unwrap().replace("\"kp_a\"", "\"kp_z\"")).unwrap();
    let ko = work.path().join("kp_a.ko");
    let r = kmend([Path::new("artifact"), Path::new("pack"), Path::new("--manifest"), &m, Path::new("--module"), &ko, Path::new("-o"), Path::new("/dev/null")]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("module name 'kp_a' differs from the manifest id 'kp_z'"), "{r}");
}

#[test]
fn apply_revert_unload_list_and_info() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch { cves: &["CVE-2026-11"], ..Patch::new("kp_a", 1) });
    let b = artifact(work.path(), &Patch { function: "meminfo_proc_show", ..Patch::new("kp_b", 3) });
    let r = root.run(&["apply", a.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("patch 'kp_a' version 1 applied: 1 function(s)"), "{r}");
    assert_eq!(root.run(&["apply", b.to_str().unwrap(), "--json"]).json()["artifact"]["version"], 3);
    // The same patch twice is refused, and changes nothing.
    let r = root.run(&["apply", a.to_str().unwrap()]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("patch 'kp_a' is already applied"), "{r}");
    assert_eq!(root.applied(), ["kp_a", "kp_b"]);

    let list = root.run(&["list", "--json"]).json();
    assert_eq!(list["applied"][0]["cves"][0], "CVE-2026-11");
    let info = root.run(&["info", "kp_a"]);
    assert!(info.stdout.contains("cves: CVE-2026-11") && info.stdout.contains("vmlinux:cmdline_proc_show -> kp_a_cmdline_proc_show+0x0/0x40 [kp_a] [active]"), "{info}");
    assert_eq!(root.run(&["info", "kp_nope"]).code, 4);
    let all = root.run(&["uname", "-a"]);
    assert!(all.stdout.contains(&format!(" {RELEASE}-kmend3 ")), "{all}");

    let r = root.run(&["revert", "kp_a"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_b"]);
    assert_eq!(root.cache_files(), ["kp_b-3.kmpatch"], "a reverted patch leaves the cache (not re-applied at boot)");
    assert_eq!(root.run(&["revert", "kp_a"]).code, 4, "reverting twice");
    assert!(root.run(&["revert", "bad id!"]).stderr.contains("invalid patch id"));

    assert_eq!(root.run(&["apply", a.to_str().unwrap()]).code, 0);
    let r = root.run(&["unload", "--json"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.json()["reverted"], serde_json::json!(["kp_a", "kp_b"]), "newest first");
    assert!(root.applied().is_empty());
    let actions: Vec<String> =
        root.journal().iter().map(|e| format!("{}:{}", e["action"].as_str().unwrap(), e["result"].as_str().unwrap())).collect();
    // The refused second revert is audited too.
    assert_eq!(actions, ["apply:ok", "apply:ok", "revert:ok", "revert:error", "apply:ok", "revert:ok", "revert:ok"]);
}

#[test]
fn bare_modules_still_apply_as_before() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let ko = work.path().join("kp_bare.ko");
    fs::write(&ko, fake_module("kp_bare")).unwrap();
    let r = root.run(&["apply", ko.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_bare"]);
    let r = root.run(&["apply", "/etc/hostname"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("not a kernel module"), "{r}");
}

#[test]
fn report_exports_the_journal_as_json_and_csv() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch { cves: &["CVE-2026-21", "CVE-2026-22"], ..Patch::new("kp_a", 1) });
    assert_eq!(root.run(&["apply", a.to_str().unwrap()]).code, 0);
    let j = root.run(&["report", "--format", "json"]).json();
    assert_eq!(j["effective_version"], format!("{RELEASE}-kmend1"));
    assert_eq!(j["cves"]["CVE-2026-22"], serde_json::json!(["kp_a"]));
    assert_eq!(j["events"][0]["action"], "apply");
    let csv = root.run(&["report", "--format", "csv"]);
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines[0], "time,host,kernel,effective_version,actor,action,patch,version,cves,result,error");
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].contains(&format!(",{RELEASE},{RELEASE}-kmend1,cli:")), "{csv}");
    assert!(lines[1].ends_with(",apply,kp_a,1,CVE-2026-21 CVE-2026-22,ok,"), "{csv}");
}

#[test]
fn doctor_redacts_credentials() {
    let root = Root::new();
    root.config("feed_url = \"https://alice:s3cret@feed.example/kmend\"\nproxy = \"http://bob:hunter2@proxy:3128\"\n");
    root.write("dev/kmsg", b"6,100,5,-;kmend: patch 'kp_a' enabled\n6,101,6,-;unrelated line\n");
    let r = root.run(&["doctor"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(!r.stdout.contains("s3cret") && !r.stdout.contains("hunter2"), "{r}");
    assert!(r.stdout.contains("http://***@proxy:3128") && r.stdout.contains("https://***@feed.example/kmend"), "{r}");
    assert!(r.stdout.contains("kmend: patch 'kp_a' enabled") && !r.stdout.contains("unrelated"), "{r}");
    let out = root.path("doctor.tar");
    let r = root.run(&["doctor", "-o", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r}");
    let mut archive = tar::Archive::new(fs::File::open(&out).unwrap());
    let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert!(names.contains(&"kmend-doctor/config.txt".to_owned()) && names.contains(&"kmend-doctor/kernel-log.txt".to_owned()), "{names:?}");
}

#[test]
fn a_bad_config_names_file_key_and_line() {
    let root = Root::new();
    root.config("feed_url = \"https://feed.example\"\n\ninterval = \"often\"\n");
    let r = root.run(&["check"]);
    assert_eq!(r.code, 4, "{r}");
    let want = format!("kmend: '{}' line 3: interval: invalid duration 'often'", root.path("etc/kmend/kmend.toml").display());
    assert!(r.stderr.starts_with(&want), "{r}");
    let r = root.run(&["update"]);
    assert!(r.stderr.contains("line 3: interval"), "{r}");
    root.config("channel = \"stable\"\n");
    let r = root.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("no feed configured: set feed_url in"), "{r}");
}

#[test]
fn check_without_a_feed_writes_nothing() {
    let root = Root::new();
    for verb in ["check", "update"] {
        let r = root.run(&[verb]);
        assert_eq!(r.code, 4, "{r}");
        assert!(r.stderr.contains("no feed configured"), "{r}");
    }
    assert!(!root.path("var/lib/kmend").exists(), "a read-only verb created state: {:?}", fs::read_dir(root.path("var/lib/kmend")).map(|d| d.count()));
}

#[test]
fn uname_without_the_core_module_is_the_plain_release() {
    let root = Root::new();
    fs::remove_file(root.path("dev/kmend")).unwrap();
    let r = root.run(&["uname", "-r"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout.trim(), RELEASE);
}

#[test]
fn json_failures_answer_on_stdout_too() {
    let root = Root::new();
    root.config("channel = \"stable\"\n");
    let r = root.run(&["check", "--json"]);
    assert_eq!(r.code, 4, "{r}");
    let v = r.json();
    assert_eq!(v["exit_code"], 4, "{r}");
    assert!(v["error"].as_str().unwrap().contains("no feed configured"), "{r}");
}

#[test]
fn a_closed_pipe_ends_kmend_quietly() {
    let root = Root::new();
    // stdout closed before kmend writes: no panic message, no exit 101.
    let mut c = root.cmd(&["cves"]);
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch { cves: &["CVE-2026-1", "CVE-2026-2"], ..Patch::new("kp_a", 1) });
    assert_eq!(root.run(&["apply", a.to_str().unwrap()]).code, 0);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = c.stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn a_bad_channel_is_a_usage_error() {
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    let dir = work.path().join("feed");
    let r = kmend([Path::new("feed"), Path::new("build"), Path::new("--dir"), &dir, Path::new("--channel"), Path::new("nightly"), &a]);
    assert_eq!(r.code, 64, "{r}");
    assert!(r.stderr.contains("nightly"), "{r}");
}

#[test]
fn the_journal_names_the_real_user_and_shows_tampering() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    // SUDO_USER is whatever the caller says it is.
    let r = run({
        let mut c = root.cmd(&["apply", a.to_str().unwrap()]);
        c.env("SUDO_USER", "mallory").env("USER", "mallory").env("LOGNAME", "mallory");
        c
    });
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.run(&["revert", "kp_a"]).code, 0);
    let journal = root.journal();
    assert_eq!(journal.len(), 2);
    assert!(journal.iter().all(|e| e["actor"] != "cli:mallory"), "{journal:?}");
    let r = root.run(&["report", "--verify"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("2 line(s), chain intact"), "{r}");
    // Someone turns the revert into an error after the fact.
    let path = root.path("var/lib/kmend/journal.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    fs::write(&path, text.replacen(&first, &first.replace("\"apply\"", "\"check\""), 1)).unwrap();
    let r = root.run(&["report", "--verify", "--json"]);
    assert_eq!(r.code, 4, "{r}");
    assert_eq!(r.json()["intact"], false, "{r}");
    assert!(r.stderr.contains("journal line 2: does not follow line 1"), "{r}");
}

/// A fix built against a module's internals (manifest `links`) is refused
/// while that module is not loaded, saying what to do, and nothing is
/// loaded; once the module is there, it applies. (The test double says
/// which modules are loaded; the guest suite proves the real path with
/// tcp_dctcp.)
#[test]
fn a_patch_linked_to_a_module_applies_only_while_it_is_loaded() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch { links: &["tcp_dctcp"], function: "dctcp_init", ..Patch::new("kp_dctcp", 1) });
    let mut without = root.cmd(&["apply", a.to_str().unwrap()]);
    without.env("KMEND_FAKE_UNLOADED", "tcp_dctcp");
    let r = run(without);
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr.contains("patch 'kp_dctcp' was built against the internals of module 'tcp_dctcp', which is not loaded: load it first (modprobe tcp_dctcp), then apply the patch"),
        "{r}"
    );
    assert!(root.applied().is_empty());
    let r = root.run(&["apply", a.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_dctcp"]);
}

#[test]
fn a_bare_module_is_applied_like_a_managed_patch() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    artifact(work.path(), &Patch::new("kp_bare", 1));
    let ko = work.path().join("kp_bare.ko");
    let r = root.run(&["apply", ko.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r}");
    // Journalled, counted by status and uname, taken under the lock.
    let journal = root.journal();
    assert_eq!((journal.len(), &journal[0]["action"], &journal[0]["patch"]), (1, &serde_json::json!("apply"), &serde_json::json!("kp_bare")), "{journal:?}");
    assert!(root.path("var/lib/kmend/lock").exists());
    let status = root.run(&["status", "--json"]);
    assert_eq!(status.json()["managed"][0]["id"], "kp_bare", "{status}");
    assert_eq!(root.run(&["uname", "-r"]).stdout.trim(), format!("{RELEASE}-kmend0"));
    // Not cached: a reboot does not bring it back, and says why.
    root.reboot("boot-2");
    let r = root.run(&["boot", "--json"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.json()["skipped"].to_string().contains("bare module"), "{r}");
    assert!(root.applied().is_empty());
    assert_eq!(root.run(&["uname", "-r"]).stdout.trim(), RELEASE);
}

#[test]
fn metrics_show_what_status_shows_and_write_a_textfile() {
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch { cves: &["CVE-2026-11", "CVE-2026-12"], ..Patch::new("kp_a", 1) });
    let b = artifact(work.path(), &Patch { cves: &["CVE-2026-12"], function: "meminfo_proc_show", ..Patch::new("kp_b", 3) });
    let empty = root.run(&["metrics"]);
    assert_eq!(empty.code, 0, "{empty}");
    assert!(empty.stdout.contains("\nkmend_patches_applied 0\n"), "{empty}");
    assert!(empty.stdout.contains("kmend_state{state=\"nothing_applied\"} 1"), "{empty}");
    assert!(!empty.stdout.contains("kmend_last_check_timestamp_seconds"), "never checked: no check time: {empty}");
    for f in [&a, &b] {
        assert_eq!(root.run(&["apply", f.to_str().unwrap()]).code, 0);
    }
    let r = root.run(&["metrics"]);
    assert_eq!(r.code, 0, "{r}");
    for line in [
        "# TYPE kmend_patches_applied gauge",
        "\nkmend_patches_applied 2\n",
        "kmend_patch_applied{id=\"kp_a\",version=\"1\"} 1",
        "kmend_patch_applied{id=\"kp_b\",version=\"3\"} 1",
        &format!("kmend_effective_version{{release=\"{RELEASE}\",effective=\"{RELEASE}-kmend3\"}} 1"),
        "\nkmend_cves_fixed 2\n",
        "kmend_state{state=\"nothing_applied\"} 0",
    ] {
        assert!(r.stdout.contains(line), "missing {line:?} in:\n{r}");
    }
    let current: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("kmend_state{") && l.ends_with(" 1")).collect();
    assert_eq!(current.len(), 1, "exactly one current state: {current:?}");

    // The textfile: the same text, written whole, nothing else left there.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kmend.prom");
    let w = root.run(&["metrics", "--textfile", file.to_str().unwrap()]);
    assert_eq!(w.code, 0, "{w}");
    assert_eq!(fs::read_to_string(&file).unwrap(), r.stdout);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left beside it");
    let missing = root.run(&["metrics", "--textfile", dir.path().join("no/such/dir/kmend.prom").to_str().unwrap()]);
    assert_eq!(missing.code, 4, "{missing}");
    assert!(missing.stderr.contains("no/such/dir/kmend.prom") && missing.stderr.contains("write failed"), "{missing}");
}

#[test]
fn metrics_say_whether_the_last_update_failed() {
    // What an alert on the daemon's errors watches: the last update's
    // outcome, kept until the next one.
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-3600), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, ""));
    assert!(!root.run(&["metrics"]).stdout.contains("kmend_last_update_success"), "no update yet");
    let mut update = root.cmd(&["update"]);
    update.env("KMEND_FAKE_LOAD_FAIL", "kp_a");
    let failed = run(update);
    assert_eq!(failed.code, 4, "{failed}");
    let m = root.run(&["metrics"]).stdout;
    assert!(m.contains("\nkmend_last_update_success 0\n"), "{m}");
    assert!(m.contains("kmend_last_update_timestamp_seconds "), "{m}");
    assert_eq!(root.run(&["update"]).code, 0);
    assert!(root.run(&["metrics"]).stdout.contains("\nkmend_last_update_success 1\n"));
    let status = root.run(&["status", "--json"]).json();
    assert_eq!(status["last_update"]["error"], serde_json::Value::Null);
}

/// Appends a module signature trailer as `scripts/sign-file` lays it out
/// (the bytes of the PKCS#7 message are not checked here: the kernel is the
/// judge of those, as the VM suite's signing tests show).
fn with_signature_trailer(mut ko: Vec<u8>, pkcs7: &[u8]) -> Vec<u8> {
    ko.extend_from_slice(pkcs7);
    ko.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
    ko.extend_from_slice(&(pkcs7.len() as u32).to_be_bytes());
    ko.extend_from_slice(b"~Module signature appended~\n");
    ko
}

#[test]
fn publishers_see_which_modules_carry_no_signature() {
    let work = tempfile::tempdir().unwrap();
    let unsigned = artifact(work.path(), &Patch::new("kp_u", 1));
    let plain = artifact(work.path(), &Patch::new("kp_s", 1));
    // kp_s again, its module signed, packed from the same manifest.
    let ko = work.path().join("kp_s.ko");
    fs::write(&ko, with_signature_trailer(fs::read(&ko).unwrap(), b"pkcs7")).unwrap();
    let signed = work.path().join("kp_s-signed.kmpatch");
    let m = work.path().join("kp_s.json");
    let r = kmend([Path::new("artifact"), Path::new("pack"), Path::new("--manifest"), &m, Path::new("--module"), &ko, Path::new("-o"), &signed]);
    assert_eq!(r.code, 0, "{r}");
    assert_ne!(fs::read(&plain).unwrap(), fs::read(&signed).unwrap());

    let r = kmend(["artifact", "inspect", unsigned.to_str().unwrap()]);
    assert!(r.stdout.contains("module signature: none"), "{r}");
    assert_eq!(kmend(["artifact", "inspect", unsigned.to_str().unwrap(), "--json"]).json()["module_signature"], serde_json::Value::Null);
    let r = kmend(["artifact", "inspect", signed.to_str().unwrap()]);
    assert!(r.stdout.contains("module signature: appended (PKCS#7, 5 bytes)"), "{r}");
    assert_eq!(kmend(["artifact", "inspect", signed.to_str().unwrap(), "--json"]).json()["module_signature"]["len"], 5);

    let feed = work.path().join("feed");
    let r = kmend([
        "feed", "build", "--dir", feed.to_str().unwrap(), "--channel", "stable", "--json",
        unsigned.to_str().unwrap(), signed.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.json()["unsigned_modules"], serde_json::json!(["kp_u"]));
    assert!(r.stderr.contains("warning: 'kp_u': its module carries no signature"), "{r}");
    assert!(!r.stderr.contains("'kp_s'"), "{r}");
}
