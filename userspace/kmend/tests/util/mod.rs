//! Helpers for the host tests: a fake machine tree (`KMEND_ROOT`), patch
//! artifacts, signed feeds, and HTTP servers on loopback.
//!
//! The tests run the real `kmend` binary. The kernel behind it is kmend's
//! test double (`KMEND_FAKE_KERNEL=1`, see src/sys/fake.rs) because a host
//! cannot load kernel modules; the real kernel path is proven by the VM
//! suite (tests/guest).

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    fs,
    io::{
        BufRead as _,
        BufReader,
        Write as _, //
    },
    net::{
        TcpListener,
        TcpStream, //
    },
    path::{
        Path,
        PathBuf, //
    },
    process::{
        Child,
        Command,
        Output,
        Stdio, //
    },
    sync::{
        Arc,
        atomic::{
            AtomicBool,
            Ordering, //
        },
    },
    thread,
    time::{
        Duration,
        Instant, //
    },
};

pub const RELEASE: &str = "7.2.13-test";
pub const BUILD_ID: &str = "0123456789abcdef0123456789abcdef01234567";
pub const OTHER_BUILD_ID: &str = "fedcba9876543210fedcba9876543210fedcba98";

pub fn kmend_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kmend")
}

/// A fake machine: kernel notes, release, boot id, config, state dirs.
pub struct Root {
    pub dir: tempfile::TempDir,
}

/// What a finished kmend run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

pub fn notes(build_id: &str) -> Vec<u8> {
    kmend::identity::fake_notes(&hex_decode(build_id))
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

impl Root {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = Self { dir };
        root.write("sys/kernel/notes", &notes(BUILD_ID));
        root.write("proc/sys/kernel/osrelease", format!("{RELEASE}\n").as_bytes());
        root.write("proc/sys/kernel/random/boot_id", b"boot-1\n");
        root.write("proc/cmdline", b"console=ttyS0 quiet\n");
        // The fake kernel's "kmend.ko is loaded".
        root.write("dev/kmend", b"");
        root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    /// Writes the config; a `# trusted root: <path>` line (from
    /// [`Feed::config`]) installs that file as /etc/kmend/root.json, as a
    /// sysadmin would.
    pub fn config(&self, text: &str) {
        if let Some(path) = text.lines().find_map(|l| l.strip_prefix("# trusted root: ")) {
            self.write("etc/kmend/root.json", &fs::read(path.trim()).unwrap());
        }
        self.write("etc/kmend/kmend.toml", text.as_bytes());
    }

    /// A kmend command under this root (proxy variables cleared).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kmend_bin());
        c.args(args).env("KMEND_ROOT", self.dir.path()).env("KMEND_FAKE_KERNEL", "1");
        for v in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY", "KMEND_LOG"] {
            c.env_remove(v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.cmd(args))
    }

    /// Simulates a reboot: a new boot id and a fresh kernel with no patch.
    pub fn reboot(&self, boot_id: &str) {
        self.write("proc/sys/kernel/random/boot_id", format!("{boot_id}\n").as_bytes());
        let _ = fs::remove_dir_all(self.path("fake-kernel"));
    }

    pub fn cache_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path("var/lib/kmend/cache"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn journal(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.path("var/lib/kmend/journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Ids of the patches the (fake) kernel runs.
    pub fn applied(&self) -> Vec<String> {
        let r = self.run(&["status", "--json"]);
        r.json()["patches"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect()
    }
}

/// Runs kmend outside any root (the publisher's verbs: artifact, feed).
pub fn kmend<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
    let mut c = Command::new(kmend_bin());
    c.args(args);
    run(c)
}

pub fn run(mut c: Command) -> Run {
    let out: Output = c.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A minimal ELF relocatable with `.modinfo` `name=<name>`: what the
/// artifact checks and the fake kernel read from a patch module.
pub fn fake_module(name: &str) -> Vec<u8> {
    use object::write;
    let mut obj = write::Object::new(object::BinaryFormat::Elf, object::Architecture::X86_64, object::Endianness::Little);
    let sec = obj.add_section(Vec::new(), b".modinfo".to_vec(), object::SectionKind::ReadOnlyData);
    obj.append_section_data(sec, format!("license=GPL\0name={name}\0").as_bytes(), 1);
    obj.write().unwrap()
}

/// A patch to build.
pub struct Patch<'a> {
    pub id: &'a str,
    pub version: u32,
    pub build_id: &'a str,
    pub replace: bool,
    pub cves: &'a [&'a str],
    pub function: &'a str,
    /// Modules whose internals the patch was linked against (`links`).
    pub links: &'a [&'a str],
}

impl<'a> Patch<'a> {
    pub fn new(id: &'a str, version: u32) -> Self {
        Self { id, version, build_id: BUILD_ID, replace: false, cves: &[], function: "cmdline_proc_show", links: &[] }
    }
}

/// Packs an artifact with `kmend artifact pack`; returns its path.
pub fn artifact(dir: &Path, p: &Patch) -> PathBuf {
    let manifest = serde_json::json!({
        "format": 1,
        "id": p.id,
        "version": p.version,
        "description": format!("test patch {}", p.id),
        "kernel": { "release": RELEASE, "build_id": p.build_id },
        "cves": p.cves,
        "replace": p.replace,
        "links": p.links,
        "functions": [{ "object": "vmlinux", "name": p.function, "sympos": 0, "replacement": format!("{}_{}", p.id, p.function), "fingerprint": "" }],
    });
    fs::create_dir_all(dir).unwrap();
    let m = dir.join(format!("{}.json", p.id));
    let ko = dir.join(format!("{}.ko", p.id));
    let out = dir.join(format!("{}-{}.kmpatch", p.id, p.version));
    fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    fs::write(&ko, fake_module(p.id)).unwrap();
    let r = kmend([Path::new("artifact"), Path::new("pack"), Path::new("--manifest"), &m, Path::new("--module"), &ko, Path::new("-o"), &out]);
    assert_eq!(r.code, 0, "artifact pack: {r}");
    out
}

/// Packs the core artifact: kmend.ko (a stand-in module named `kmend`)
/// for the test kernel, version `version`.
pub fn core_artifact(dir: &Path, version: u32) -> PathBuf {
    let manifest = serde_json::json!({
        "format": 1,
        "id": "kmend",
        "version": version,
        "description": "kmend core module",
        "kernel": { "release": RELEASE, "build_id": BUILD_ID },
        "functions": [],
        "core": true,
    });
    fs::create_dir_all(dir).unwrap();
    let m = dir.join("kmend-core.json");
    let ko = dir.join("kmend.ko");
    let out = dir.join(format!("kmend-{version}.kmpatch"));
    fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    fs::write(&ko, fake_module("kmend")).unwrap();
    let r = kmend([Path::new("artifact"), Path::new("pack"), Path::new("--manifest"), &m, Path::new("--module"), &ko, Path::new("-o"), &out]);
    assert_eq!(r.code, 0, "artifact pack: {r}");
    out
}

/// A feed directory with its signing keys.
pub struct Feed {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub public: PathBuf,
}

impl Feed {
    /// Keys from `kmend feed keygen` and a root from `kmend feed init`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("keys/feed");
        fs::create_dir_all(prefix.parent().unwrap()).unwrap();
        let r = kmend([Path::new("feed"), Path::new("keygen"), Path::new("--out"), &prefix]);
        assert_eq!(r.code, 0, "keygen: {r}");
        let feed = Self { key: prefix.with_extension("key"), public: prefix.with_extension("pub"), dir };
        let r = kmend([Path::new("feed"), Path::new("init"), Path::new("--dir"), &feed.root(), Path::new("--root-key"), &feed.key]);
        assert_eq!(r.code, 0, "feed init: {r}");
        feed
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("feed")
    }

    /// The trust anchor machines are given.
    pub fn trusted_root(&self) -> PathBuf {
        self.root().join("metadata/1.root.json")
    }

    /// `kmend feed build` then `kmend feed sign`.
    pub fn publish(&self, channel: &str, released: &str, artifacts: &[PathBuf]) {
        let mut args = vec!["feed".into(), "build".into(), "--dir".into(), self.root(), "--channel".into(), channel.into()];
        args.extend(["--released".into(), released.into()]);
        args.extend(artifacts.iter().cloned());
        let r = kmend::<PathBuf>(args);
        assert_eq!(r.code, 0, "feed build: {r}");
        self.sign();
    }

    pub fn sign(&self) {
        self.sign_with(&["--key".as_ref(), self.key.as_ref()]);
    }

    /// `kmend feed sign --dir <feed>` with `args`.
    pub fn sign_with(&self, args: &[&std::ffi::OsStr]) {
        let dir = self.root();
        let mut all: Vec<&std::ffi::OsStr> = vec!["feed".as_ref(), "sign".as_ref(), "--dir".as_ref(), dir.as_os_str()];
        all.extend_from_slice(args);
        let r = kmend(all);
        assert_eq!(r.code, 0, "feed sign: {r}");
    }

    /// The published copies of target `name` (`targets/<sha256>.<name>`).
    pub fn published(&self, name: &str) -> Vec<PathBuf> {
        let suffix = format!(".{name}");
        let mut v: Vec<PathBuf> = fs::read_dir(self.root().join("targets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().ends_with(&suffix))
            .collect();
        v.sort();
        v
    }

    /// Copies of every metadata file as published now, to replay later.
    pub fn snapshot_metadata(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fs::read_dir(self.root().join("metadata"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let b = fs::read(&p).unwrap();
                (p, b)
            })
            .collect()
    }

    /// A config using this feed at `url`. The trusted root is installed by
    /// [`Root::config`], which reads the `# trusted root:` line.
    pub fn config(&self, url: &str, extra: &str) -> String {
        format!(
            "# trusted root: {}\nfeed_url = \"{url}\"\nroot = \"/etc/kmend/root.json\"\ntimeout = \"20s\"\n{extra}\n",
            self.trusted_root().display()
        )
    }
}

/// `kmend feed serve` on a free loopback port; killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub fn start(dir: &Path) -> Self {
        let mut child = Command::new(kmend_bin())
            .args(["feed", "serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("127.0.0.1:"), "feed serve printed {line:?}");
        Self { child, url: format!("http://{}", line.trim()) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a misbehaving server does with one request path.
pub type Handler = dyn Fn(&str, &mut TcpStream) + Send + Sync;

/// An in-test HTTP server on loopback, for misbehaviour a real server
/// would not show (errors, stalls, short bodies).
pub struct RawServer {
    pub url: String,
    stop: Arc<AtomicBool>,
}

impl RawServer {
    pub fn start(handler: Arc<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        accept_each(listener, stop.clone(), move |mut stream| {
            let path = request_path(&mut stream).unwrap_or_else(|| "/".to_owned());
            handler(&path, &mut stream);
        });
        Self { url, stop }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Serves each connection of `listener` on its own thread until `stop`
/// (set, then woken by one more connection, by the server's `Drop`).
fn accept_each(listener: TcpListener, stop: Arc<AtomicBool>, serve: impl Fn(TcpStream) + Send + Sync + 'static) {
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let serve = serve.clone();
            thread::spawn(move || serve(stream));
        }
    });
}

/// Reads a request head and returns its path (an absolute-form target, as
/// sent to a proxy, reduced to its path); `None` when the client sent
/// nothing.
fn request_path(r: &mut impl std::io::Read) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && r.read(&mut b).map(|n| n == 1).unwrap_or(false) {
        head.push(b[0]);
    }
    if head.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let target = text.split(' ').nth(1).unwrap_or("/");
    Some(target.rsplit("://").next().map(|t| t.find('/').map_or(t, |i| &t[i..])).unwrap_or("/").to_owned())
}

/// Writes a complete 200 response.
pub fn respond(stream: &mut TcpStream, body: &[u8]) {
    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(body);
}

/// Serves files of `dir` (a complete, honest response).
pub fn respond_file(dir: &Path, path: &str, stream: &mut TcpStream) {
    respond_file_to(dir, path, stream);
}

/// Polls `cond` until it holds or `limit` passes (a generous timeout,
/// not a timing assertion).
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// RFC 3339 for `secs` seconds from now (negative: in the past).
pub fn time_from_now(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A CA and a server certificate for 127.0.0.1, made by the openssl CLI
/// (a real X.509 chain, as a private CA would issue; the fleet crate's
/// test helper, which its PostgreSQL-over-TLS test uses too).
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        kmend_fleet::test_postgres::TestPostgres::make_certificates(dir.path());
        Self { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// An HTTPS server on loopback (rustls, the CA's server certificate):
/// `handler` answers each request, as for [`RawServer`].
pub struct TlsServer {
    pub url: String,
    stop: Arc<AtomicBool>,
}

impl TlsServer {
    pub fn start(ca: &TestCa, handler: Arc<dyn Fn(&str, &mut dyn std::io::Write) + Send + Sync>) -> Self {
        use rustls::pki_types::{
            CertificateDer,
            PrivateKeyDer,
            pem::PemObject as _, //
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(ca.dir.path().join("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(ca.dir.path().join("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        accept_each(listener, stop.clone(), move |tcp| {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else { return };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            if let Some(path) = request_path(&mut tls) {
                handler(&path, &mut tls);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        Self { url, stop }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("https://"));
    }
}

/// Serves files of `dir` on any writer (a complete, honest response).
pub fn respond_file_to(dir: &Path, path: &str, out: &mut dyn std::io::Write) {
    match fs::read(dir.join(path.trim_start_matches('/'))) {
        Ok(body) => {
            let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = out.write_all(&body);
        }
        Err(_) => {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
}

/// Stops a spawned `kmend daemon` with SIGTERM and waits for it; returns
/// its exit code and what it logged (its stderr must be piped).
pub fn stop_daemon(mut child: std::process::Child) -> (Option<i32>, String) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    (status.code(), log)
}
