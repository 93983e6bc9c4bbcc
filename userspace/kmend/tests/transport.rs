//! Feed transfers that go wrong (server error, timeout, short body, wrong
//! content), each refused with its own message and nothing applied; and
//! feed requests through a real proxy (tinyproxy) on loopback.

mod util;

use std::{
    fs,
    io::Write as _,
    net::TcpListener,
    process::{
        Command,
        Stdio, //
    },
    sync::Arc,
    thread,
    time::Duration,
};

use util::*;

fn one_patch_feed() -> (Feed, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let feed = Feed::new();
    let a = artifact(work.path(), &Patch::new("kp_a", 1));
    feed.publish("stable", &time_from_now(-86400), &[a]);
    (feed, work)
}

/// Runs `update` against a server that serves the feed honestly except
/// for `bad_path`, where `misbehave` answers (given the honest body);
/// returns stderr.
fn update_with(timeout: &str, bad_path: &'static str, misbehave: fn(&mut std::net::TcpStream, &[u8])) -> String {
    let root = Root::new();
    let (feed, _work) = one_patch_feed();
    let dir = feed.root();
    let server = RawServer::start(Arc::new(move |path: &str, stream: &mut std::net::TcpStream| {
        if path.ends_with(bad_path) {
            let body = fs::read(dir.join(path.trim_start_matches('/'))).unwrap_or_default();
            misbehave(stream, &body);
        } else {
            respond_file(&dir, path, stream);
        }
    }));
    root.config(&feed.config(&server.url, "").replace("timeout = \"20s\"", &format!("timeout = \"{timeout}\"")));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {r}");
    assert!(root.applied().is_empty(), "applied despite: {r}");
    assert!(root.cache_files().is_empty(), "cache after a failed transfer: {:?}", root.cache_files());
    r.stderr
}

#[test]
fn server_error_is_reported_as_such() {
    let err = update_with("20s", ".index.json", |s, _| {
        let _ = s.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops");
    });
    assert!(err.contains(".index.json': server answered HTTP 500"), "{err}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    let err = update_with("2s", ".index.json", |_s, _| thread::sleep(Duration::from_secs(30)));
    assert!(err.contains(".index.json': timed out after 2s"), "{err}");
}

#[test]
fn a_short_body_is_truncated_not_accepted() {
    // The right Content-Length, then the connection drops after 100 bytes.
    let err = update_with("20s", ".kp_a-1.kmpatch", |s, body| {
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        let _ = s.write_all(&body[..100]);
    });
    assert!(err.contains(".kp_a-1.kmpatch': truncated: got 100 of "), "{err}");
}

#[test]
fn a_page_that_is_not_a_feed_is_refused() {
    // A captive portal answers every request with the same HTML page.
    let root = Root::new();
    let (feed, _work) = one_patch_feed();
    let server = RawServer::start(Arc::new(|_: &str, stream: &mut std::net::TcpStream| {
        respond(stream, b"<html>log in to continue</html>\n");
    }));
    root.config(&feed.config(&server.url, ""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("feed metadata: Failed to parse root metadata"), "{r}");
    assert!(root.applied().is_empty());
}

#[test]
fn a_missing_feed_is_a_network_error() {
    let root = Root::new();
    let (feed, _work) = one_patch_feed();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    root.config(&feed.config(&format!("http://127.0.0.1:{port}"), ""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains(&format!("'http://127.0.0.1:{port}/metadata/timestamp.json': request failed")), "{r}");
}

/// tinyproxy on a free loopback port, logging to a file; killed on drop.
struct Tinyproxy {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start() -> Self {
        let bin = "/usr/bin/tinyproxy";
        assert!(std::path::Path::new(bin).exists(), "{bin} is missing: run `cargo xtask setup` (it installs tinyproxy)");
        let dir = tempfile::tempdir().unwrap();
        // tinyproxy cannot take port 0: pick a free port and release it.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 10\nAllow 127.0.0.1\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new(bin).arg("-d").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        wait_for("tinyproxy to listen", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Self { child, port, log, _dir: dir }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn feed_requests_go_through_the_proxy() {
    let proxy = Tinyproxy::start();
    let (feed, _work) = one_patch_feed();
    let server = Server::start(&feed.root());
    let tunnel = format!("CONNECT {} HTTP/1.1", server.url.trim_start_matches("http://"));

    // From the environment, as curl reads it.
    let root = Root::new();
    root.config(&feed.config(&server.url, ""));
    let r = run({
        let mut c = root.cmd(&["update"]);
        c.env("http_proxy", format!("http://127.0.0.1:{}", proxy.port));
        c
    });
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_a"]);
    // ureq tunnels every request (CONNECT), also for http:// targets:
    // 2.root.json (absent), timestamp, snapshot, targets, index.json and
    // the artifact make six.
    let log = proxy.log();
    assert_eq!(log.matches(&tunnel).count(), 6, "requests not seen by tinyproxy ({tunnel}):\n{log}");

    // From the config, with no_proxy not matching.
    let root2 = Root::new();
    root2.config(&feed.config(&server.url, &format!("proxy = \"http://127.0.0.1:{}\"", proxy.port)));
    let before = proxy.log().matches(&tunnel).count();
    let r = run({
        let mut c = root2.cmd(&["check"]);
        c.env("no_proxy", "example.invalid");
        c
    });
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(proxy.log().matches(&tunnel).count(), before + 5, "config proxy not used (root, timestamp, snapshot, targets, index)");

    // no_proxy naming the feed host bypasses the proxy.
    let r = run({
        let mut c = root2.cmd(&["check"]);
        c.env("no_proxy", "127.0.0.1");
        c
    });
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(proxy.log().matches(&tunnel).count(), before + 5, "no_proxy ignored");
}

#[test]
fn feed_serve_stays_inside_its_directory_and_refuses_a_missing_one() {
    let r = kmend(["feed", "serve", "--dir", "/nonexistent/feed", "--listen", "127.0.0.1:0"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("/nonexistent/feed"), "{r}");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("feed");
    fs::create_dir_all(&dir).unwrap();
    fs::write(work.path().join("secret"), "s3cret").unwrap();
    fs::write(dir.join("inside"), "ok").unwrap();
    std::os::unix::fs::symlink(work.path().join("secret"), dir.join("link")).unwrap();
    let server = Server::start(&dir);
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    assert!(get("/inside").starts_with("HTTP/1.1 200"), "the plain file is served");
    let through_link = get("/link");
    assert!(through_link.starts_with("HTTP/1.1 404") && !through_link.contains("s3cret"), "{through_link}");
    // A client that never finishes its request head is dropped, not kept.
    let mut idle = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    idle.write_all(b"GET /inside HTTP/1.1\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut idle, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server should close an idle connection");
}

#[test]
fn an_https_feed_is_trusted_through_the_configured_ca_only() {
    let ca = TestCa::new();
    let (feed, _work) = one_patch_feed();
    let dir = feed.root();
    let server = TlsServer::start(&ca, Arc::new(move |path: &str, out: &mut dyn std::io::Write| respond_file_to(&dir, path, out)));
    let root = Root::new();
    // The bundled web PKI roots do not know a private CA.
    root.config(&feed.config(&server.url, ""));
    let r = root.run(&["check"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.to_lowercase().contains("certificate") || r.stderr.contains("UnknownIssuer"), "{r}");
    // ca_certs names the CA (a file under the machine's root, like the
    // system bundle /etc/ssl/certs/ca-certificates.crt would be).
    root.write("etc/kmend/ca.pem", &fs::read(ca.ca()).unwrap());
    root.config(&feed.config(&server.url, "ca_certs = \"/etc/kmend/ca.pem\""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(root.applied(), ["kp_a"]);
}

#[test]
fn an_https_feed_is_never_redirected_to_http() {
    let ca = TestCa::new();
    let (feed, _work) = one_patch_feed();
    // The plain-http copy an attacker would like the machine to read.
    let plain_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = plain_hits.clone();
    let dir = feed.root();
    let plain = RawServer::start(Arc::new(move |path: &str, stream: &mut std::net::TcpStream| {
        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        respond_file(&dir, path, stream);
    }));
    let to = plain.url.clone();
    let server = TlsServer::start(
        &ca,
        Arc::new(move |path: &str, out: &mut dyn std::io::Write| {
            let _ = write!(out, "HTTP/1.1 302 Found\r\nLocation: {to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }),
    );
    let root = Root::new();
    root.write("etc/kmend/ca.pem", &fs::read(ca.ca()).unwrap());
    root.config(&feed.config(&server.url, "ca_certs = \"/etc/kmend/ca.pem\""));
    let r = root.run(&["update"]);
    assert_eq!(r.code, 4, "{r}");
    assert_eq!(plain_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "followed https -> http: {r}");
    assert!(root.applied().is_empty());
}

#[test]
fn a_dead_proxy_is_named_in_the_error() {
    let (feed, _work) = one_patch_feed();
    let server = Server::start(&feed.root());
    // A port nobody listens on, as the configured proxy.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = Root::new();
    root.config(&feed.config(&server.url, &format!("proxy = \"http://bob:hunter2@127.0.0.1:{port}\"")));
    let r = root.run(&["check"]);
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains(&format!("via proxy 'http://***@127.0.0.1:{port}': request failed")), "{r}");
    assert!(!r.stderr.contains("hunter2"), "{r}");
}
