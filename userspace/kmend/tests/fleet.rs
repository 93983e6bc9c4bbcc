//! The agent and the fleet server together (issue #12): a real kmend-fleet
//! (its library's server, in this process, on loopback HTTP, with a real
//! SQLite file) and the real `kmend` binary on a machine whose kernel is
//! kmend's test double (tests/util/mod.rs says why). The dashboard is
//! loaded by a real browser: Debian's headless Chromium.

mod util;

use std::{
    os::unix::fs::PermissionsExt as _,
    process::Stdio,
    time::Duration,
};

use kmend_fleet::{
    api::AppState,
    db::Db,
    test_postgres::TestPostgres,
};
use util::*;

const ADMIN: &str = "admin-token-0123456789abcdef0123456789";

/// A fleet server on a loopback port, stopped on drop.
struct Fleet {
    url: String,
    db: Db,
    _dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Fleet {
    fn start() -> Self {
        Self::start_with(jiff::SignedDuration::from_hours(12))
    }

    /// With hosts silent after `silent_after` without a check-in.
    fn start_with(silent_after: jiff::SignedDuration) -> Self {
        Self::start_notifying(silent_after, kmend_fleet::notify::Notify::default())
    }

    /// With notifications to `notify`, the outbox looked at every 200 ms.
    fn start_notifying(silent_after: jiff::SignedDuration, notify: kmend_fleet::notify::Notify) -> Self {
        Self::start_full(silent_after, notify, None, None)
    }

    /// Serving HTTPS with `ca`'s certificate for 127.0.0.1.
    fn start_tls(ca: &TestCa) -> Self {
        Self::start_full(jiff::SignedDuration::from_hours(12), kmend_fleet::notify::Notify::default(), Some(ca), None)
    }

    /// With its database on `pg` when given, else in a SQLite file.
    fn start_full(
        silent_after: jiff::SignedDuration,
        notify: kmend_fleet::notify::Notify,
        tls: Option<&TestCa>,
        pg: Option<&TestPostgres>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = match pg {
            Some(pg) => Db::open_any(&pg.url).unwrap(),
            None => Db::open(&dir.path().join("fleet.sqlite")).unwrap(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let tls = tls.map(|ca| {
            let (cert, key) = (ca.dir.path().join("server.pem"), ca.dir.path().join("server.key"));
            runtime.block_on(kmend_fleet::api::tls_config(&cert, &key)).unwrap()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut state = AppState::new(db.clone(), &kmend_fleet::secret::digest(ADMIN), silent_after);
        state.notify = notify;
        state.notify_tick = Duration::from_millis(200);
        runtime.spawn(kmend_fleet::api::serve_with(listener, state, tls, async {
            let _ = stopped.await;
        }));
        Self { url, db, _dir: dir, runtime: Some(runtime), stop: Some(stop) }
    }

    /// `GET <path>` with `token`: (status, body text).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        assert!(self.url.starts_with("http:"), "the test client speaks plain HTTP");
        let mut req = agent.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut resp = req.call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    }

    /// `method path` with the admin token and a JSON body: (status, body
    /// as JSON, `null` when empty).
    fn admin(&self, method: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {ADMIN}");
        let json = body.to_string();
        let mut resp = match method {
            "PUT" => agent.put(&url).header("authorization", &auth).header("content-type", "application/json").send(&json),
            "POST" => agent.post(&url).header("authorization", &auth).header("content-type", "application/json").send(&json),
            _ => agent.get(&url).header("authorization", &auth).call(),
        }
        .unwrap();
        let text = resp.body_mut().read_to_string().unwrap();
        (resp.status().as_u16(), serde_json::from_str(&text).unwrap_or_default())
    }

    /// `GET /api/v1/hosts` with `token`: (status, body).
    fn hosts(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        let (code, body) = self.get("/api/v1/hosts", token);
        (code, serde_json::from_str(&body).unwrap())
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A dashboard user (`kmend-fleet user add`) logs in with the form: the
/// right password gets a session cookie that opens the dashboard; a wrong
/// password or an unknown name gets the form again (401) and no cookie.
/// Each try is in the audit log.
#[test]
fn a_dashboard_user_logs_in_with_a_password() {
    let fleet = Fleet::start();
    fleet.db.add_user("alice", "correct horse battery", "cli").unwrap();
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build());
    let post = |user: &str, password: &str| {
        let form = [("user", user), ("password", password), ("next", "/compliance")];
        let mut resp = agent.post(format!("{}/login", fleet.url)).send_form(form).unwrap();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (cookie, location) = (header("set-cookie"), header("location"));
        (resp.status().as_u16(), cookie, location, resp.body_mut().read_to_string().unwrap())
    };

    let (code, cookie, location, _) = post("alice", "correct horse battery");
    assert_eq!((code, location.as_deref()), (303, Some("/compliance")));
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    assert!(session.starts_with("kmend_fleet_session=kms_"), "{session}");
    let mut page = agent.get(format!("{}/", fleet.url)).header("cookie", &session).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.body_mut().read_to_string().unwrap().contains("<h1>Hosts</h1>"));

    for (user, password) in [("alice", "correct horse batter"), ("mallory", "correct horse battery")] {
        let (code, cookie, _, body) = post(user, password);
        assert_eq!((code, cookie), (401, None), "{user}: {body}");
        assert!(body.contains("Wrong user name or password.") && body.contains(r#"<form method="post" action="/login">"#), "{body}");
    }
    let (code, body) = fleet.get("/", None);
    assert!(code == 401 && body.contains(r#"<input name="password" type="password""#), "{body}");
    let actions: Vec<String> = fleet.db.audit_log().unwrap().into_iter().map(|a| a.2).collect();
    assert_eq!(actions, ["user-add", "login", "login-failed", "login-failed"]);
}

#[test]
fn a_host_registers_checks_in_and_is_listed_until_revoked() {
    let mut fleet = Fleet::start();
    let key = fleet.db.add_group("prod", "test").unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = Root::new();
    let a = artifact(work.path(), &Patch { cves: &["CVE-2026-7"], ..Patch::new("kp_a", 3) });
    assert_eq!(root.run(&["apply", a.to_str().unwrap()]).code, 0);

    // A wrong key: refused, said plainly, nothing kept.
    let r = root.run(&["register", "kmg_wrong", "--server", &fleet.url]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("registration refused (HTTP 401): unknown registration key"), "{r}");
    assert!(!root.path("var/lib/kmend/fleet.json").exists());

    let r = root.run(&["register", &key, "--server", &fleet.url, "--hostname", "web1", "--json"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.json()["checked_in"], true);
    let creds = root.path("var/lib/kmend/fleet.json");
    assert_eq!(std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!std::fs::read_to_string(&creds).unwrap().contains(&key), "the group key was stored");

    // The server lists it with what the host runs, to the admin only.
    assert_eq!(fleet.hosts(None).0, 401);
    assert_eq!(fleet.hosts(Some("not-the-admin-token-0123456789abcdef")).0, 401);
    let (code, body) = fleet.hosts(Some(ADMIN));
    assert_eq!(code, 200, "{body}");
    let host = &body["hosts"][0];
    assert_eq!((host["group"].as_str(), host["hostname"].as_str()), (Some("prod"), Some("web1")));
    let report = &host["report"];
    assert_eq!(report["kernel"]["build_id"], BUILD_ID);
    assert_eq!(report["effective_version"], format!("{RELEASE}-kmend3"));
    assert_eq!(report["patches"][0]["id"], "kp_a");
    let first = host["last_checkin"].as_str().unwrap().to_owned();

    // A later check-in replaces the report.
    assert_eq!(root.run(&["revert", "kp_a"]).code, 0);
    std::thread::sleep(Duration::from_millis(1100));
    let r = root.run(&["checkin"]);
    assert_eq!(r.code, 0, "{r}");
    let (_, body) = fleet.hosts(Some(ADMIN));
    assert_eq!(body["hosts"][0]["report"]["patches"], serde_json::json!([]));
    assert_ne!(body["hosts"][0]["last_checkin"].as_str().unwrap(), first);

    // Revoked: its check-ins are refused, and it is told what to do.
    let id = host["id"].as_i64().unwrap();
    assert!(fleet.db.revoke(id, "test").unwrap());
    let r = root.run(&["checkin"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("unknown or revoked host token: register again"), "{r}");
    let actions: Vec<String> = fleet.db.audit_log().unwrap().into_iter().map(|a| a.2).collect();
    assert_eq!(actions, ["group-add", "register", "revoke"]);

    // The server gone: the check-in fails naming it; the machine is fine.
    fleet.stop();
    let r = root.run(&["checkin"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains(&format!("fleet server {}", fleet.url)), "{r}");
    assert_eq!(root.run(&["status"]).code, 1);
}

#[test]
fn checkin_without_registration_says_how_to_register() {
    let root = Root::new();
    let r = root.run(&["checkin"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("run `kmend register <group key> --server <url>`"), "{r}");
}

#[test]
fn the_daemon_checks_in_after_each_cycle_and_an_unreachable_server_does_not_stop_patching() {
    let fleet = Fleet::start();
    let key = fleet.db.add_group("ha", "test").unwrap();
    let root = Root::new();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    root.config(&feed.config(&server.url, "interval = \"1s\"\njitter = \"0\"\nauto_update = true"));
    assert_eq!(root.run(&["register", &key, "--server", &fleet.url]).code, 0);
    let child = root.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("the daemon to apply kp_a and report it", Duration::from_secs(30), || {
        let (_, body) = fleet.hosts(Some(ADMIN));
        body["hosts"][0]["report"]["patches"][0]["id"] == "kp_a"
    });
    // Point the registration at a port nobody listens on: the daemon logs
    // the failed check-in and goes on patching.
    let creds = root.path("var/lib/kmend/fleet.json");
    let mut reg: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    reg["server"] = serde_json::json!("http://127.0.0.1:9");
    std::fs::write(&creds, serde_json::to_vec(&reg).unwrap()).unwrap();
    feed.publish("stable", &time_from_now(-60), &[artifact(work.path(), &Patch { function: "f2", ..Patch::new("kp_b", 1) })]);
    wait_for("the daemon to apply kp_b", Duration::from_secs(30), || root.applied() == ["kp_a", "kp_b"]);
    let (code, log) = stop_daemon(child);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("fleet check-in failed: fleet server http://127.0.0.1:9"), "{log}");
}

/// A host registered before its feed is configured (the role registers it,
/// the feed comes later) still reports to its fleet every cycle: the
/// admin sees it, and sees that it has no feed. Before, the daemon's cycle
/// ended at "no feed configured", before the check-in.
#[test]
fn a_registered_host_without_a_feed_still_checks_in() {
    let fleet = Fleet::start();
    let key = fleet.db.add_group("ha", "test").unwrap();
    let root = Root::new();
    root.config("interval = \"1s\"\njitter = \"0\"\n");
    assert_eq!(root.run(&["register", &key, "--server", &fleet.url]).code, 0);
    // Known only to a later check-in: the tags in the config.
    root.config("interval = \"1s\"\njitter = \"0\"\ntags = [\"nofeed\"]\n");
    let child = root.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("the daemon without a feed to check in", Duration::from_secs(30), || {
        let (_, body) = fleet.hosts(Some(ADMIN));
        body["hosts"][0]["report"]["tags"] == serde_json::json!(["nofeed"])
    });
    let (code, log) = stop_daemon(child);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("no feed"), "the log still says why nothing is fetched: {log}");
}

#[test]
fn the_host_left_behind_is_flagged_as_drift_in_the_api_and_metrics() {
    let fleet = Fleet::start();
    let key = fleet.db.add_group("db", "test").unwrap();
    let work = tempfile::tempdir().unwrap();
    let a = artifact(work.path(), &Patch::new("kp_a", 3));
    let roots: Vec<Root> = (0..3).map(|_| Root::new()).collect();
    for (i, root) in roots.iter().enumerate() {
        // db1 and db2 took the patch, db3 did not; db3 is tagged.
        if i < 2 {
            assert_eq!(root.run(&["apply", a.to_str().unwrap()]).code, 0);
        } else {
            root.config("tags = [\"role=db\", \"eu\"]\n");
        }
        let r = root.run(&["register", &key, "--server", &fleet.url, "--hostname", &format!("db{}", i + 1)]);
        assert_eq!(r.code, 0, "{r}");
    }
    let (_, body) = fleet.hosts(Some(ADMIN));
    let drift: Vec<(String, serde_json::Value)> =
        body["hosts"].as_array().unwrap().iter().map(|h| (h["hostname"].as_str().unwrap().to_owned(), h["drift"].clone())).collect();
    assert_eq!(
        drift,
        [
            ("db1".to_owned(), serde_json::json!([])),
            ("db2".to_owned(), serde_json::json!([])),
            ("db3".to_owned(), serde_json::json!(["patch level"])),
        ]
    );
    // The hosts API filters by tag, silence and check-in age.
    let names = |query: &str| {
        let (code, body) = fleet.get(&format!("/api/v1/hosts{query}"), Some(ADMIN));
        assert_eq!(code, 200, "{query}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        body["hosts"].as_array().unwrap().iter().map(|h| h["hostname"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(names("?tag=eu"), ["db3"]);
    assert_eq!(names("?group=db&silent=false&checked_in_within=1h"), ["db1", "db2", "db3"]);
    assert!(names("?silent=true").is_empty());
    assert!(names("?group=web").is_empty());
    let (code, body) = fleet.get("/api/v1/hosts?checked_in_within=soon", Some(ADMIN));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("checked_in_within: 'soon' is not a duration"), "{body}");
    let (_, body) = fleet.hosts(Some(ADMIN));
    assert_eq!(body["hosts"][2]["report"]["tags"], serde_json::json!(["role=db", "eu"]));
    assert_eq!(body["hosts"][2]["report"]["channel"], "stable");
    assert_eq!(fleet.get("/metrics", None).0, 401);
    let (code, text) = fleet.get("/metrics", Some(ADMIN));
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("kmend_fleet_hosts{group=\"db\"} 3"), "{text}");
    assert!(text.contains("kmend_fleet_hosts_drifting{group=\"db\"} 1"), "{text}");
    assert!(text.contains("kmend_fleet_host_last_checkin_age_seconds{group=\"db\",hostname=\"db3\"}"), "{text}");
    assert!(text.contains("kmend_fleet_hosts_silent{group=\"db\"} 0"), "{text}");
    let (code, line) = fleet.get("/api/v1/check?group=db", Some(ADMIN));
    assert_eq!(code, 200);
    assert_eq!(line, "KMEND-FLEET WARNING - group db: 1 drifting (db3) | hosts=3 silent=0 drifting=1\n");
    assert_eq!(fleet.get("/api/v1/check", None).0, 401);
}

#[test]
fn a_host_that_stops_checking_in_turns_the_check_critical() {
    let fleet = Fleet::start_with(jiff::SignedDuration::from_secs(3));
    let key = fleet.db.add_group("web", "test").unwrap();
    let root = Root::new();
    assert_eq!(root.run(&["register", &key, "--server", &fleet.url, "--hostname", "web1"]).code, 0);
    let (_, line) = fleet.get("/api/v1/check?group=web", Some(ADMIN));
    assert_eq!(line, "KMEND-FLEET OK - group web: 1 hosts checking in, none drifting | hosts=1 silent=0 drifting=0\n");
    std::thread::sleep(Duration::from_millis(4500));
    let (_, line) = fleet.get("/api/v1/check?group=web", Some(ADMIN));
    assert_eq!(line, "KMEND-FLEET CRITICAL - group web: 1 silent (web1), 0 drifting | hosts=1 silent=1 drifting=0\n");
    let (_, body) = fleet.hosts(Some(ADMIN));
    assert_eq!(body["hosts"][0]["silent"], true);
    // It checks in again: no longer silent.
    assert_eq!(root.run(&["checkin"]).code, 0);
    let (_, line) = fleet.get("/api/v1/check", Some(ADMIN));
    assert!(line.starts_with("KMEND-FLEET OK - all groups: 1 hosts"), "{line}");
}

/// A webhook receiver on loopback (axum, as the server): the JSON bodies
/// it was sent.
struct Webhook {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Webhook {
    fn start() -> Self {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let sink = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| async move {
                sink.lock().unwrap().push(v);
                axum::http::StatusCode::NO_CONTENT
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, got, _runtime: runtime }
    }

    /// The events received of kind `event`.
    fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().iter().filter(|v| v["event"] == event).cloned().collect()
    }
}

/// The hostnames of the hosts of `body` (`GET /api/v1/groups`) whose step
/// is in `state`, oldest first.
fn steps(groups: &serde_json::Value, state: &str) -> Vec<String> {
    let steps = groups["groups"][0]["steps"].as_array().cloned().unwrap_or_default();
    steps.iter().rev().filter(|s| s["state"] == state).map(|s| s["hostname"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_staged_rollout_goes_one_host_at_a_time_and_halts_where_verification_fails() {
    staged_rollout(None);
}

/// The same rollout with the server's database on a real PostgreSQL
/// (Debian's server, started by the test on a loopback port).
#[test]
fn a_staged_rollout_on_postgresql() {
    staged_rollout(Some(&TestPostgres::start()));
}

fn staged_rollout(pg: Option<&TestPostgres>) {
    // Notifications: a real webhook receiver, and mail through a stand-in
    // for the local MTA's sendmail (a script keeping what it is given: no
    // MTA runs in a host test).
    let hook = Webhook::start();
    let mailbox = tempfile::tempdir().unwrap();
    let sendmail = mailbox.path().join("sendmail");
    std::fs::write(&sendmail, format!("#!/bin/sh\n[ \"$*\" = \"-t -oi\" ] || exit 64\ncat >> {}/mail\n", mailbox.path().display())).unwrap();
    std::fs::set_permissions(&sendmail, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = kmend_fleet::notify::Notify { webhooks: vec![hook.url.clone()], mail_to: vec!["ops@example.com".into()], sendmail };
    let fleet = Fleet::start_full(jiff::SignedDuration::from_secs(60), notify, None, pg);
    // The group, through the API (as an admin of the packaged server does).
    let (code, body) = fleet.admin("POST", "/api/v1/groups", serde_json::json!({ "name": "ha" }));
    assert_eq!(code, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    let (code, body) = fleet.admin("POST", "/api/v1/groups", serde_json::json!({ "name": "ha" }));
    assert_eq!((code, body["error"].as_str()), (400, Some("group 'ha' already exists")));
    // The policy, through the API: a bad field is refused and named.
    let (code, body) = fleet.admin("PUT", "/api/v1/groups/ha/policy", serde_json::json!({ "rollout_max": 0 }));
    assert_eq!((code, body["error"].as_str()), (400, Some("rollout_max: at least 1 host at a time")));
    let (code, body) = fleet.admin("PUT", "/api/v1/groups/ha/policy", serde_json::json!({ "rollout_max": 1, "health_window": "2s" }));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rollout"], serde_json::json!({ "max": 1, "health_window_seconds": 2 }));

    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    // A long interval: only the rollout makes the hosts come back sooner.
    let config = feed.config(&server.url, "interval = \"1h\"\njitter = \"0\"\nauto_update = true");
    let roots: Vec<Root> = (0..5).map(|_| Root::new()).collect();
    for (i, root) in roots.iter().enumerate() {
        root.config(&config);
        let r = root.run(&["register", &key, "--server", &fleet.url, "--hostname", &format!("ha{}", i + 1)]);
        assert_eq!(r.code, 0, "{r}");
    }
    // Each daemon starts once the one before has its step, so the order is
    // known; ha3's kernel shows its old body still running.
    let mut children = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let mut cmd = root.cmd(&["daemon"]);
        if i == 2 {
            cmd.env("KMEND_FAKE_OLD_BODY_RUNS", "kp_a");
        }
        children.push(cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
        if i < 3 {
            let name = format!("ha{}", i + 1);
            wait_for(&format!("{name} to start its step"), Duration::from_secs(60), || {
                let (_, g) = fleet.admin("GET", "/api/v1/groups", serde_json::Value::Null);
                ["in_progress", "done", "failed"].iter().any(|s| steps(&g, s).contains(&name))
            });
        }
    }
    wait_for("the rollout to halt at ha3", Duration::from_secs(60), || {
        let (_, g) = fleet.admin("GET", "/api/v1/groups", serde_json::Value::Null);
        !g["groups"][0]["halted"].is_null()
    });
    // Several of the waiting hosts' rechecks (1 s each) later, still halted.
    std::thread::sleep(Duration::from_secs(4));
    let (_, g) = fleet.admin("GET", "/api/v1/groups", serde_json::Value::Null);
    assert_eq!(g["groups"][0]["halted"], "host ha3: kmend verify of kp_a@1: the old body still ran (1 hits)", "{g}");
    assert_eq!(steps(&g, "done"), ["ha1", "ha2"], "{g}");
    assert_eq!(steps(&g, "failed"), ["ha3"], "{g}");
    assert_eq!(steps(&g, "in_progress"), Vec::<String>::new(), "{g}");
    // One at a time: each step started after the one before it finished.
    let all = g["groups"][0]["steps"].as_array().unwrap();
    let (ha1, ha2, ha3) = (&all[2], &all[1], &all[0]);
    assert!(ha2["started"].as_str() >= ha1["finished"].as_str() && ha3["started"].as_str() >= ha2["finished"].as_str(), "{g}");
    assert_eq!(roots[0].applied(), ["kp_a"]);
    assert_eq!(roots[2].applied(), ["kp_a"]);
    assert!(roots[3].applied().is_empty() && roots[4].applied().is_empty(), "ha4/ha5 applied during a halt");
    // The hosts API shows ha3's failed proof as it reported it.
    let (_, hosts) = fleet.hosts(Some(ADMIN));
    let ha3_report = &hosts["hosts"][2]["report"];
    assert_eq!(ha3_report["verifications"][0]["old_body_hits"], 1, "{ha3_report}");

    // An admin resumes: ha4 and ha5 go, one after the other.
    let (code, _) = fleet.admin("POST", "/api/v1/groups/ha/rollout/resume", serde_json::Value::Null);
    assert_eq!(code, 204);
    wait_for("ha4 and ha5 to finish their steps", Duration::from_secs(60), || {
        let (_, g) = fleet.admin("GET", "/api/v1/groups", serde_json::Value::Null);
        steps(&g, "done").len() == 4
    });
    assert_eq!(roots[4].applied(), ["kp_a"]);
    let logs: Vec<String> = children.into_iter().map(|c| stop_daemon(c).1).collect();
    assert!(logs[1].contains("held back by the fleet: waiting for the rollout: ha1 applying (1 at a time)"), "{}", logs[1]);
    assert!(logs[3].contains("held back by the fleet: rollout halted: host ha3: kmend verify of kp_a@1"), "{}", logs[3]);
    assert!(logs[2].contains("patch 'kp_a' not verified: replacement 1 hits, old body 1 hits"), "{}", logs[2]);
    // Notified once each, by webhook and by mail: the halt, the failed
    // proof, the patch available to the group.
    wait_for("the notifications", Duration::from_secs(10), || !hook.events("rollout_halted").is_empty());
    let halted = hook.events("rollout_halted");
    assert_eq!(halted.len(), 1, "{halted:?}");
    assert_eq!((halted[0]["group"].as_str(), halted[0]["host"].as_str()), (Some("ha"), Some("ha3")));
    assert_eq!(halted[0]["reason"], "kmend verify of kp_a@1: the old body still ran (1 hits)");
    let failed = hook.events("verification_failed");
    assert!(!failed.is_empty() && failed.iter().all(|e| e["host"] == "ha3" && e["patch"] == "kp_a"), "{failed:?}");
    let available = hook.events("updates_available");
    assert_eq!(available.len(), 1, "{available:?}");
    assert_eq!(available[0]["patches"], "kp_a@1");
    let mail = std::fs::read_to_string(mailbox.path().join("mail")).unwrap();
    assert!(mail.contains("To: ops@example.com\nSubject: kmend-fleet: group ha: rollout halted at host ha3: kmend verify of kp_a@1"), "{mail}");
    let (_, events) = fleet.admin("GET", "/api/v1/events", serde_json::Value::Null);
    let halt = events["events"].as_array().unwrap().iter().find(|e| e["event"]["event"] == "rollout_halted").unwrap().clone();
    assert_eq!(halt["sent_to"], serde_json::json!([format!("webhook {}", hook.url), "mail ops@example.com"]), "{halt}");
    assert!(halt["delivered"].is_string(), "{halt}");
    let actions: Vec<String> = fleet.db.audit_log().unwrap().into_iter().map(|a| a.2).collect();
    for a in ["policy", "rollout-start", "rollout-done", "rollout-halt", "rollout-resume"] {
        assert!(actions.iter().any(|x| x == a), "{a} not audited: {actions:?}");
    }
}

#[test]
fn the_groups_policy_from_the_server_overrides_the_hosts_config() {
    let fleet = Fleet::start();
    let key = fleet.db.add_group("web", "test").unwrap();
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    let root = Root::new();
    root.config(&feed.config(&server.url, ""));
    assert_eq!(root.run(&["register", &key, "--server", &fleet.url]).code, 0);
    let to_apply = |root: &Root| {
        let r = root.run(&["check", "--json"]);
        r.json()["check"]["plan"]["apply"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(to_apply(&root), ["kp_a"]);
    // The group waits 48 hours after a release: the day-old patch waits.
    let (code, _) = fleet.admin("PUT", "/api/v1/groups/web/policy", serde_json::json!({ "delay": "48h" }));
    assert_eq!(code, 200);
    assert_eq!(root.run(&["checkin"]).code, 0);
    assert!(to_apply(&root).is_empty());
    let r = root.run(&["check", "--json"]);
    assert_eq!(r.json()["check"]["plan"]["held_back"][0][1]["reason"], "delay", "{r}");
    // The server unreachable: the last policy it sent still holds.
    let creds = root.path("var/lib/kmend/fleet.json");
    let mut reg: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(reg["policy"]["delay_seconds"], 172800);
    let server_url = reg["server"].clone();
    reg["server"] = serde_json::json!("http://127.0.0.1:9");
    std::fs::write(&creds, serde_json::to_vec(&reg).unwrap()).unwrap();
    assert!(to_apply(&root).is_empty());
    // Cleared on the server: the host's own config applies again.
    reg["server"] = server_url;
    std::fs::write(&creds, serde_json::to_vec(&reg).unwrap()).unwrap();
    assert_eq!(fleet.admin("PUT", "/api/v1/groups/web/policy", serde_json::json!({})).0, 200);
    assert_eq!(root.run(&["checkin"]).code, 0);
    assert_eq!(to_apply(&root), ["kp_a"]);
}

#[test]
fn a_gated_host_that_cannot_reach_its_server_holds_its_update() {
    let fleet = Fleet::start();
    let key = fleet.db.add_group("ha", "test").unwrap();
    assert_eq!(fleet.admin("PUT", "/api/v1/groups/ha/policy", serde_json::json!({ "rollout_max": 1 })).0, 200);
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch::new("kp_a", 1))]);
    let server = Server::start(&feed.root());
    let root = Root::new();
    root.config(&feed.config(&server.url, "interval = \"1h\"\njitter = \"0\"\nauto_update = true"));
    assert_eq!(root.run(&["register", &key, "--server", &fleet.url]).code, 0);
    // The registration keeps the gate; then the server goes away.
    let creds = root.path("var/lib/kmend/fleet.json");
    let mut reg: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(reg["policy"]["rollout"]["max"], 1);
    reg["server"] = serde_json::json!("http://127.0.0.1:9");
    std::fs::write(&creds, serde_json::to_vec(&reg).unwrap()).unwrap();
    let child = root.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (_, log) = stop_daemon(child);
    assert!(log.contains("held back by the fleet: the group's rollout gate could not be asked: fleet server http://127.0.0.1:9"), "{log}");
    assert!(root.applied().is_empty(), "applied without the gate");
}

/// Runs Debian's Chromium headless on `url` with `args` (`--dump-dom`,
/// `--screenshot=…`): its stdout. `cargo xtask test` installs the package.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,1000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .current_dir(profile.path())
        .output()
        .expect("chromium: install Debian's chromium package (cargo xtask test does)");
    assert!(out.status.success(), "chromium {args:?} {url}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dashboard_in_a_browser_shows_outdated_hosts_amber_and_the_halted_rollout() {
    let fleet = Fleet::start();
    let key = fleet.db.add_group("ha", "test").unwrap();
    assert_eq!(fleet.admin("PUT", "/api/v1/groups/ha/policy", serde_json::json!({ "rollout_max": 1, "health_window": "2s" })).0, 200);
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    feed.publish("stable", &time_from_now(-86400), &[artifact(work.path(), &Patch { cves: &["CVE-2026-1234"], ..Patch::new("kp_a", 1) })]);
    let server = Server::start(&feed.root());
    let config = feed.config(&server.url, "interval = \"1h\"\njitter = \"0\"\nauto_update = true");
    let roots: Vec<Root> = (0..3).map(|_| Root::new()).collect();
    for root in &roots {
        root.config(&config);
    }
    // ha1: patched by hand and proven; ha2: checked, not patched (amber);
    // ha3: its daemon applies in the gated rollout and its proof fails.
    assert_eq!(roots[0].run(&["update"]).code, 0);
    assert_eq!(roots[0].run(&["verify", "kp_a"]).code, 0);
    assert_eq!(roots[1].run(&["check"]).code, 1, "kp_a is available, not applied");
    for (i, root) in roots.iter().enumerate() {
        let r = root.run(&["register", &key, "--server", &fleet.url, "--hostname", &format!("ha{}", i + 1)]);
        assert_eq!(r.code, 0, "{r}");
    }
    let child = roots[2].cmd(&["daemon"]).env("KMEND_FAKE_OLD_BODY_RUNS", "kp_a").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("the rollout to halt at ha3", Duration::from_secs(60), || {
        let (_, g) = fleet.admin("GET", "/api/v1/groups", serde_json::Value::Null);
        !g["groups"][0]["halted"].is_null()
    });
    stop_daemon(child);

    // Without a session: the way to log in, not the fleet.
    let (code, body) = fleet.get("/", None);
    assert_eq!(code, 401);
    assert!(body.contains("Login required") && !body.contains("ha1"), "{body}");
    let link = |next: &str| {
        let (code, body) = fleet.admin("POST", "/api/v1/login-links", serde_json::Value::Null);
        assert_eq!(code, 201, "{body}");
        format!("{}{}?next={next}", fleet.url, body["path"].as_str().unwrap())
    };
    assert_eq!(fleet.get(&format!("/login/{}", "kml_0000"), None).0, 401);

    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let dom = chromium(&link("/"), &["--dump-dom"]);
    assert!(dom.contains(r#"<tr class="host amber" data-hostname="ha2" data-state="updates available">"#), "{dom}");
    assert!(dom.contains(r#"<tr class="host " data-hostname="ha1" data-state="up to date">"#), "{dom}");
    assert!(dom.contains(r#"<tr class="host red" data-hostname="ha3" data-state="verification failed">"#), "{dom}");
    assert!(
        dom.contains(r#"<p class="rollout halted" data-group="ha">Rollout halted: host ha3: kmend verify of kp_a@1: the old body still ran (1 hits)</p>"#),
        "{dom}"
    );
    let hosts_png = artifacts.join("dashboard-hosts.png");
    chromium(&link("/"), &[&format!("--screenshot={}", hosts_png.display())]);
    // The link is spent: opening it again does not log in.
    let spent = link("/");
    chromium(&spent, &["--dump-dom"]);
    assert!(chromium(&spent, &["--dump-dom"]).contains("Login link not valid"));

    let (_, hosts) = fleet.hosts(Some(ADMIN));
    let ha3 = hosts["hosts"][2]["id"].as_i64().unwrap();
    let dom = chromium(&link(&format!("/hosts/{ha3}")), &["--dump-dom"]);
    assert!(dom.contains("<h1>Host ha3</h1>"), "{dom}");
    assert!(dom.contains("NOT PROVEN: old body ran 1 times"), "{dom}");
    assert!(dom.contains("<td>daemon</td><td>apply</td><td>kp_a</td><td>ok</td>"), "the journal excerpt: {dom}");
    let host_png = artifacts.join("dashboard-host.png");
    chromium(&link(&format!("/hosts/{ha3}")), &[&format!("--screenshot={}", host_png.display())]);

    let dom = chromium(&link("/compliance"), &["--dump-dom"]);
    let row = dom.split(r#"<tr data-cve="CVE-2026-1234">"#).nth(1).unwrap_or_else(|| panic!("{dom}"));
    let row = row.split("</tr>").next().unwrap();
    assert!(row.contains("ha1 (kp_a, since") && row.contains("ha3 (kp_a, since") && row.ends_with("<td>ha2</td>"), "{row}");
    // The same as JSON, and every login audited.
    let (_, json) = fleet.admin("GET", "/api/v1/compliance", serde_json::Value::Null);
    let cve = &json["cves"][0];
    assert_eq!(cve["cve"], "CVE-2026-1234");
    let on: Vec<&str> = cve["fixed_on"].as_array().unwrap().iter().map(|f| f["host"].as_str().unwrap()).collect();
    assert_eq!((on, &cve["not_fixed_on"]), (vec!["ha1", "ha3"], &serde_json::json!(["ha2"])));
    let logins = fleet.db.audit_log().unwrap().into_iter().filter(|a| a.2 == "login").count();
    assert_eq!(logins, 6, "one per link, opened once (the spent link, opened again, did not log in)");

    for png in [hosts_png, host_png] {
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{}: {} bytes", png.display(), bytes.len());
    }
}

#[test]
fn a_host_registers_over_https_trusting_only_its_ca() {
    let ca = TestCa::new();
    let fleet = Fleet::start_tls(&ca);
    let key = fleet.db.add_group("prod", "test").unwrap();
    assert!(fleet.url.starts_with("https://127.0.0.1:"));
    // Without the fleet's CA, the public roots do not vouch for it.
    let stranger = Root::new();
    let r = stranger.run(&["register", &key, "--server", &fleet.url]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains(&format!("fleet server {}", fleet.url)), "{r}");
    assert!(!stranger.path("var/lib/kmend/fleet.json").exists());
    // With it (`ca_certs`, as for the feed): registered, checked in.
    let root = Root::new();
    root.write("etc/kmend/fleet-ca.pem", &std::fs::read(ca.ca()).unwrap());
    root.config("ca_certs = \"/etc/kmend/fleet-ca.pem\"\n");
    let r = root.run(&["register", &key, "--server", &fleet.url, "--hostname", "web1", "--json"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.json()["checked_in"], true);
    let hosts = fleet.db.hosts().unwrap();
    assert_eq!((hosts.len(), hosts[0].hostname.as_str()), (1, "web1"));
    assert!(hosts[0].report.is_some());
}
