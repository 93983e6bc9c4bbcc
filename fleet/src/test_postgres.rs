//! A throwaway PostgreSQL server for tests (feature `test-postgres`):
//! Debian's own server binaries (`postgresql`, installed by `cargo xtask
//! setup`), a fresh cluster in a temporary directory, listening on a free
//! loopback port only, stopped and removed on drop. Run as root, the
//! cluster belongs to the `postgres` user (the server refuses root).

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
        let options = format!("-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off");
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
