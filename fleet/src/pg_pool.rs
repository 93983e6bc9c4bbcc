//! PostgreSQL connections: a pool of them, over TLS when the URL asks.
//!
//! The URL is libpq's: `postgres://user[:password]@host[:port]/db[?...]`,
//! with the parameters tokio-postgres knows and two of libpq's TLS ones,
//! taken out here:
//!
//! - `sslmode`: without it, or `disable`, the connection is plain (keep it
//!   on loopback or a private network); `prefer` (TLS if the server offers
//!   it), `require`, `verify-ca` and `verify-full` connect with TLS
//!   (rustls), and the server's certificate is always verified, chain and
//!   host name. That is stricter than libpq's `require`, which checks
//!   nothing without a root file: a fleet database holds every host's
//!   credentials digest and the audit log, so a connection that anyone on
//!   the path could read is not offered as "encrypted".
//! - `sslrootcert=<file>`: the PEM CA certificates the server's chain must
//!   lead to (a private CA, as a database usually has); without it, the
//!   Mozilla roots (webpki-roots).
//!
//! The pool: r2d2 with r2d2_postgres (the manager of the postgres crate's
//! author), because the database calls run on blocking threads with the
//! synchronous client; deadpool would need the async client throughout.

use std::{
    path::{
        Path,
        PathBuf, //
    },
    sync::Arc,
    time::Duration,
};

use postgres::config::SslMode;
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Connections the pool keeps at most: concurrent transactions beyond it
/// wait for one (up to [`WAIT`]).
pub const POOL_SIZE: u32 = 8;

/// How long a transaction waits for a free connection.
const WAIT: Duration = Duration::from_secs(10);

/// The pool of one database.
pub type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// Why a PostgreSQL URL or its TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum PgSetupError {
    #[error("sslrootcert '{}': {why}", path.display())]
    RootCert { path: PathBuf, why: String },
    #[error("sslmode '{0}': use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    #[error("invalid URL: {0}")]
    Url(#[source] postgres::Error),
}

/// A URL taken apart: the configuration tokio-postgres takes, and the TLS
/// client configuration for it.
pub struct Target {
    pub config: postgres::Config,
    pub tls: MakeRustlsConnect,
    /// Whether TLS is used (`sslmode` other than `disable`).
    pub encrypted: bool,
}

impl Target {
    /// Parses `url` (see the module docs).
    pub fn parse(url: &str) -> Result<Self, PgSetupError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode: Option<String> = None;
        let mut root: Option<PathBuf> = None;
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "sslmode" => mode = Some(value.into_owned()),
                "sslrootcert" => root = Some(PathBuf::from(&*value)),
                _ => {
                    rest.append_pair(&key, &value);
                }
            }
        }
        let rest = rest.finish();
        let clean = if rest.is_empty() { base.to_owned() } else { format!("{base}?{rest}") };
        let mut config: postgres::Config = clean.parse().map_err(PgSetupError::Url)?;
        let ssl = match mode.as_deref() {
            None | Some("disable") => SslMode::Disable,
            Some("prefer") => SslMode::Prefer,
            Some("require" | "verify-ca" | "verify-full") => SslMode::Require,
            Some(other) => return Err(PgSetupError::SslMode(other.to_owned())),
        };
        config.ssl_mode(ssl);
        let tls = MakeRustlsConnect::new(client_config(root.as_deref())?);
        Ok(Self { config, tls, encrypted: ssl != SslMode::Disable })
    }

    /// A pool over this target. Connections open as they are needed (the
    /// caller has proven one works).
    pub fn pool(self) -> Pool {
        let manager = PostgresConnectionManager::new(self.config, self.tls);
        r2d2::Pool::builder().max_size(POOL_SIZE).min_idle(Some(0)).connection_timeout(WAIT).build_unchecked(manager)
    }
}

/// rustls, with ring (as the rest of kmend), trusting `root`'s
/// certificates or else the Mozilla roots.
fn client_config(root: Option<&Path>) -> Result<rustls::ClientConfig, PgSetupError> {
    use rustls::pki_types::{
        CertificateDer,
        pem::PemObject as _, //
    };
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let bad = |why: String| PgSetupError::RootCert { path: path.to_owned(), why };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".to_owned()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgSetupError::RootCert { path: root.map(Path::to_owned).unwrap_or_default(), why: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_taken_out_of_the_url() {
        let t = Target::parse("postgres://kmend@db.example:5433/fleet?sslmode=verify-full&application_name=fleet").unwrap();
        assert!(t.encrypted);
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(t.config.get_application_name(), Some("fleet"), "other parameters are kept");
        assert_eq!(t.config.get_dbname(), Some("fleet"));

        let plain = Target::parse("postgres://kmend@127.0.0.1:5432/postgres").unwrap();
        assert!(!plain.encrypted, "no sslmode: plain, as before");
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);

        assert!(matches!(Target::parse("postgres://h/db?sslmode=sometimes"), Err(PgSetupError::SslMode(_))));
        let missing = Target::parse("postgres://h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem").err().map(|e| e.to_string());
        assert!(missing.as_deref().is_some_and(|m| m.starts_with("sslrootcert '/nonexistent/ca.pem'")), "{missing:?}");
    }

    /// Whether the connection a transaction runs on is encrypted, and
    /// which server process serves it.
    fn session(tx: &mut crate::sql::Tx) -> (bool, i64) {
        let row = tx.query_one("SELECT ssl::int::bigint, pid::bigint FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().unwrap();
        (row.int(0) == 1, row.int(1))
    }

    /// A real PostgreSQL server (Debian's) that takes TCP connections over
    /// TLS only, with a certificate from a private CA: kmend-fleet
    /// connects with `sslmode=verify-full&sslrootcert=<the CA>`, and the
    /// server reports the session encrypted; without sslmode (plain, as
    /// before) the server refuses it; with another CA, kmend-fleet
    /// refuses the server's certificate, saying so. Before, every
    /// connection was plain (`NoTls`).
    #[test]
    fn the_database_is_reached_over_verified_tls() {
        let pg = crate::test_postgres::TestPostgres::start_tls();
        let url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url, pg.ca().display());
        let conn = crate::sql::Conn::postgres(&url).unwrap();
        let (encrypted, _) = conn.transaction(|tx| Ok::<_, crate::sql::SqlError>(session(tx))).unwrap();
        assert!(encrypted, "the server says the session is not encrypted");

        let plain = crate::sql::Conn::postgres(&pg.url).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(plain.contains("no encryption"), "a plain connection was not refused by the server: {plain:?}");

        let other = tempfile::tempdir().unwrap();
        crate::test_postgres::TestPostgres::make_certificates(other.path());
        let wrong = format!("{}?sslmode=require&sslrootcert={}", pg.url, other.path().join("ca.pem").display());
        let refused = crate::sql::Conn::postgres(&wrong).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("invalid peer certificate"), "a certificate from another CA was accepted: {refused:?}");
        println!("plain: {plain}\nanother CA: {refused}");
    }

    /// Concurrent requests get connections of their own: four transactions
    /// are open at once, each on its own server process, and each waits
    /// inside its transaction until all four are in. With one shared
    /// connection (before the pool) the second would wait for the first
    /// to commit, and none would see the others (the test gives up after
    /// 20 s).
    #[test]
    fn concurrent_transactions_run_on_pooled_connections() {
        use std::sync::{
            Arc,
            Mutex,
            mpsc, //
        };
        const N: usize = 4;
        let pg = crate::test_postgres::TestPostgres::start();
        let conn = crate::sql::Conn::postgres(&pg.url).unwrap();
        let inside = Arc::new(Mutex::new(0usize));
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..N {
            let (conn, inside, done_tx) = (conn.clone(), inside.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let r = conn.transaction(|tx| {
                    let (_, pid) = session(tx);
                    *inside.lock().unwrap() += 1;
                    let deadline = std::time::Instant::now() + Duration::from_secs(20);
                    while *inside.lock().unwrap() < N && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok::<_, crate::sql::SqlError>((pid, *inside.lock().unwrap()))
                });
                let _ = done_tx.send(r.map_err(|e| e.to_string()));
            });
        }
        let results: Vec<(i64, usize)> = (0..N).map(|_| done_rx.recv_timeout(Duration::from_secs(60)).unwrap().unwrap()).collect();
        assert!(results.iter().all(|&(_, seen)| seen == N), "the transactions did not run at the same time: {results:?}");
        let pids: std::collections::BTreeSet<i64> = results.iter().map(|&(p, _)| p).collect();
        assert_eq!(pids.len(), N, "one server process per concurrent transaction: {results:?}");
    }
}
