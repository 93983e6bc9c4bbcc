//! A throwaway PostgreSQL server for tests (feature `test-postgres`):
//! Debian's own server binaries (`postgresql`, installed by `cargo xtask
//! setup`), a fresh cluster in a temporary directory, listening on a free
//! loopback port only, stopped and removed on drop. Run as root, the
//! cluster belongs to the `postgres` user (the server refuses root).
//! [`TestPostgres::start_tls`]: the same server accepting TCP connections
//! over TLS only, with a certificate for 127.0.0.1 from a throwaway CA
//! (the openssl CLI, a real X.509 chain).

use std::{
    path::{
        Path,
        PathBuf, //
    },
    process::Command,
};

/// A running test server.
pub struct TestPostgres {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// `postgres://kmend@127.0.0.1:<port>/postgres`
    pub url: String,
}

/// The newest installed server's `bin` directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server: install Debian's postgresql package (cargo xtask setup does)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| p.parent().and_then(Path::file_name).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()));
    versions.pop().expect("no /usr/lib/postgresql/<version>/bin/initdb: install Debian's postgresql package")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl TestPostgres {
    /// The server's `program`, as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}\n{}\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a new cluster.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a new cluster that takes TCP connections over TLS only
    /// (`hostssl` in pg_hba.conf); the CA that issued its certificate is
    /// [`Self::ca`].
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    /// The CA certificate (PEM) of a [`Self::start_tls`] server.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA and a server certificate for 127.0.0.1 in `dir`
    /// (`ca.pem`, `server.pem`, `server.key`).
    pub fn make_certificates(dir: &Path) {
        let sh = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (cargo xtask setup installs it)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=kmend test CA"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
        sh(&ca);
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        sh(&req);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").expect("ext.cnf");
        sh(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
    }

    fn start_with(tls: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        let dir = std::env::temp_dir().join(format!("kmend-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().expect("chown");
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        let pg = Self { bin: server_bin(), url: format!("postgres://kmend@127.0.0.1:{port}/postgres"), dir, as_postgres };
        let data = pg.dir.join("data");
        let (data, log, sock) = (data.to_string_lossy().into_owned(), pg.dir.join("server.log"), pg.dir.to_string_lossy().into_owned());
        pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "kmend", "--no-sync", "-E", "UTF8"]);
        let mut options = format!("-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off");
        if tls {
            Self::make_certificates(&pg.dir);
            // TCP only with TLS; the server's own tools use the socket.
            std::fs::write(Path::new(&data).join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").expect("pg_hba.conf");
            if as_postgres {
                let status = Command::new("chown").arg("-R").arg("postgres:postgres").arg(&pg.dir).status().expect("chown");
                assert!(status.success(), "chown -R postgres {}", pg.dir.display());
            }
            let (cert, key) = (pg.dir.join("server.pem"), pg.dir.join("server.key"));
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod server.key");
            options.push_str(&format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert.display(), key.display()));
        }
        pg.run("pg_ctl", &["-D", &data, "-o", &options, "-l", &log.to_string_lossy(), "-w", "start"]);
        pg
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.command("pg_ctl").arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
