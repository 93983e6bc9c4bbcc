//! The fleet server under load, SQLite and PostgreSQL side by side in one
//! run (`cargo xtask bench-fleet`): hosts register, then check in from
//! several client threads at once, bounded in count; then the hosts API
//! and the dashboard are read with all of them listed, and again once the
//! fleet has grown to 10,000 hosts (each registered and checked in once).
//! Loopback only. A table to read, not an assertion: the machines are
//! shared and noisy.

use std::{
    sync::Arc,
    time::{
        Duration,
        Instant, //
    },
};

use kmend_fleet::{
    api::AppState,
    db::Db,
    test_postgres::TestPostgres,
};

const HOSTS: usize = 200;
/// The fleet the dashboard is read with at the end.
const LARGE_FLEET: usize = 10_000;
const CHECKINS_PER_HOST: usize = 5;
const CLIENTS: usize = 8;
const ADMIN: &str = "bench-admin-token-0123456789abcdef0123";

/// A check-in about the size of a real one (a few patches, proofs and the
/// journal excerpt: about 4 KiB).
fn report(host: usize, round: usize) -> serde_json::Value {
    let patches: Vec<serde_json::Value> = (0..3)
        .map(|p| serde_json::json!({ "id": format!("kp_fix{p}"), "version": 3, "cves": ["CVE-2026-1234"], "applied_at": "2026-11-24T10:00:00Z" }))
        .collect();
    let journal: Vec<serde_json::Value> = (0..20)
        .map(|j| serde_json::json!({ "time": "2026-11-24T10:00:00Z", "actor": "daemon", "action": "apply", "patch": format!("kp_fix{}", j % 3), "result": "ok" }))
        .collect();
    serde_json::json!({
        "kernel": { "release": "7.2.12+deb14-amd64", "build_id": "472aa7e76c6b62024ce19758542351c79d674e2d" },
        "effective_version": format!("7.2.12+deb14-amd64-kmend{}", 3 + (host + round) % 2),
        "summary": "up_to_date", "managed": patches,
        "verifications": [{ "id": "kp_fix0", "time": "2026-11-24T10:00:01Z", "proven": true, "old_body_hits": 0, "replacement_hits": 12 }],
        "journal": journal, "tags": ["role=db"], "channel": "stable",
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Registers host `h` in the group with key `key`; returns its token.
fn register(url: &str, key: &str, h: usize) -> String {
    let mut r = agent()
        .post(format!("{url}/api/v1/register"))
        .header("content-type", "application/json")
        .send(serde_json::json!({ "key": key, "hostname": format!("h{h:05}") }).to_string().as_bytes())
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// (check-ins per second, p50 ms, p99 ms, hosts API ms, dashboard ms,
/// hosts API ms and dashboard ms with [`LARGE_FLEET`] hosts)
fn measure(db: Db) -> (f64, f64, f64, f64, f64, f64, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(db.clone(), &kmend_fleet::secret::digest(ADMIN), jiff::SignedDuration::from_hours(12));
    runtime.spawn(kmend_fleet::api::serve(listener, state, std::future::pending()));
    let key = db.add_group("bench", "bench").unwrap();
    let tokens: Vec<String> = (0..HOSTS).map(|h| register(&url, &key, h)).collect();
    let tokens = Arc::new(tokens);
    let start = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (tokens, url) = (tokens.clone(), url.clone());
            std::thread::spawn(move || {
                let client = agent();
                let mut latencies = Vec::new();
                for i in (c..HOSTS * CHECKINS_PER_HOST).step_by(CLIENTS) {
                    let (host, round) = (i % HOSTS, i / HOSTS);
                    let body = report(host, round).to_string();
                    let t = Instant::now();
                    let r = client
                        .post(format!("{url}/api/v1/checkin"))
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {}", tokens[host]))
                        .send(body.as_bytes())
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let total = start.elapsed();
    latencies.sort();
    let pct = |p: usize| ms(latencies[(latencies.len() * p / 100).min(latencies.len() - 1)]);
    let timed = |path: &str| {
        let t = Instant::now();
        let mut r = agent().get(format!("{url}{path}")).header("authorization", format!("Bearer {ADMIN}")).call().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let _ = r.body_mut().read_to_string();
        ms(t.elapsed())
    };
    let (hosts_api, dashboard) = (timed("/api/v1/hosts"), timed("/"));
    // The fleet grows to LARGE_FLEET hosts, each checked in once.
    let growers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, key) = (url.clone(), key.clone());
            std::thread::spawn(move || {
                for h in (HOSTS + c..LARGE_FLEET).step_by(CLIENTS) {
                    let token = register(&url, &key, h);
                    let r = agent()
                        .post(format!("{url}/api/v1/checkin"))
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {token}"))
                        .send(report(h, 0).to_string().as_bytes())
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                }
            })
        })
        .collect();
    growers.into_iter().for_each(|g| g.join().unwrap());
    let (large_api, large_dashboard) = (timed("/api/v1/hosts"), timed("/"));
    runtime.shutdown_timeout(Duration::from_secs(2));
    (latencies.len() as f64 / total.as_secs_f64(), pct(50), pct(99), hosts_api, dashboard, large_api, large_dashboard)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = measure(Db::open(&dir.path().join("fleet.sqlite")).unwrap());
    let pg = TestPostgres::start();
    let postgres = measure(Db::open_any(&pg.url).unwrap());
    println!("fleet server: {HOSTS} hosts x {CHECKINS_PER_HOST} check-ins (~4 KiB each) from {CLIENTS} clients, loopback");
    println!(
        "{:<11} {:>14} {:>12} {:>12} {:>18} {:>16} {:>22} {:>20}",
        "database", "check-ins/s", "p50 ms", "p99 ms", "hosts API ms", "dashboard ms", "10k hosts: API ms", "10k: dashboard ms"
    );
    for (name, (rate, p50, p99, api, page, large_api, large_page)) in [("SQLite", sqlite), ("PostgreSQL", postgres)] {
        println!("{name:<11} {rate:>14.0} {p50:>12.2} {p99:>12.2} {api:>18.1} {page:>16.1} {large_api:>22.1} {large_page:>20.1}");
    }
    println!("ratio PostgreSQL / SQLite, check-ins/s: {:.2}", postgres.0 / sqlite.0);
}
