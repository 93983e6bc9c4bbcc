//! `kmend-fleet`: the fleet server's command line (docs/fleet.md).
//!
//! Exit codes: 0 success, 1 failure (the message says what and why), 2 bad
//! command line.

use std::{
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{
    Parser,
    Subcommand, //
};
use kmend_fleet::{
    api::AppState,
    db::Db,
    secret,
};

#[derive(Parser)]
#[command(name = "kmend-fleet", version, about = "kmend's fleet server: hosts register, check in, and are listed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API until SIGTERM or SIGINT.
    Serve {
        /// The database: a SQLite file (created if missing) or a
        /// `postgres://user@host/db` URL.
        #[arg(long)]
        db: String,
        /// Address to listen on (loopback by default; put TLS in front).
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: String,
        /// File holding the admin token (at least 32 characters), e.g.
        /// `openssl rand -hex 32`.
        #[arg(long)]
        admin_token_file: PathBuf,
        /// A host that has not checked in for this long is silent
        /// (critical in the check endpoint), e.g. `12h`, `30m`.
        #[arg(long, default_value = "12h")]
        silent_after: jiff::SignedDuration,
        /// POST each event (rollout halted, verification failed, host
        /// silent, updates available) as JSON to this URL; repeatable.
        #[arg(long = "notify-webhook", value_name = "URL")]
        notify_webhooks: Vec<String>,
        /// Mail each event to this address through the local MTA;
        /// repeatable.
        #[arg(long = "notify-mail", value_name = "ADDRESS")]
        notify_mail: Vec<String>,
        /// The local MTA's sendmail.
        #[arg(long, default_value = "/usr/sbin/sendmail")]
        sendmail: PathBuf,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's PEM private key.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage dashboard users (name and password; the admin token works
    /// too).
    #[command(subcommand)]
    User(UserCommand),
    /// Print every host as JSON, as `GET /api/v1/hosts` does.
    Hosts {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
        /// A host that has not checked in for this long is silent.
        #[arg(long, default_value = "12h")]
        silent_after: jiff::SignedDuration,
    },
    /// Print the audit log.
    Audit {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from standard input (one line, at
    /// least 12 characters), so it is in no process list or shell history.
    Add {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
        name: String,
    },
    /// Remove a user (its open sessions end at the server's restart or
    /// within 12 hours).
    Remove {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
        name: String,
    },
    /// List the users' names.
    List {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group and print its registration key (shown once).
    Add {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
        name: String,
    },
    /// Set a group's policy (replaces it: an option left out is cleared,
    /// and the hosts' own config applies for it).
    Policy {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
        name: String,
        /// The feed channel its hosts follow.
        #[arg(long)]
        channel: Option<String>,
        /// Hold patches back for this long after their release, e.g. `24h`.
        #[arg(long)]
        delay: Option<String>,
        /// Pin: `YYYY-MM-DD` or a patch id; nothing newer is applied.
        #[arg(long)]
        sticky: Option<String>,
        /// The rollout gate: at most this many hosts apply at once.
        #[arg(long)]
        rollout_max: Option<u32>,
        /// How long a host must stay healthy, patch applied and proven,
        /// before the next starts (default 10m).
        #[arg(long)]
        health_window: Option<String>,
    },
    /// Print every group with its policy and rollout (steps, halt) as
    /// JSON, as `GET /api/v1/groups` does.
    List {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
        /// A host that has not checked in for this long is silent.
        #[arg(long, default_value = "12h")]
        silent_after: jiff::SignedDuration,
    },
    /// Let a halted rollout go on (its failed steps are acknowledged).
    Resume {
        /// The database (a SQLite file or a postgres:// URL).
        #[arg(long)]
        db: String,
        name: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmend-fleet: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { db, listen, admin_token_file, silent_after, notify_webhooks, notify_mail, sendmail, tls_cert, tls_key } => {
            let token = std::fs::read_to_string(&admin_token_file)
                .with_context(|| format!("'{}': read the admin token", admin_token_file.display()))?;
            let token = token.trim();
            anyhow::ensure!(token.len() >= 32, "'{}': the admin token must have at least 32 characters", admin_token_file.display());
            for w in &notify_webhooks {
                anyhow::ensure!(w.starts_with("http://") || w.starts_with("https://"), "--notify-webhook '{w}': not an http:// or https:// URL");
            }
            let mut state = AppState::new(Db::open_any(&db)?, &secret::digest(token), silent_after);
            state.notify = kmend_fleet::notify::Notify { webhooks: notify_webhooks, mail_to: notify_mail, sendmail };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let tls = match (&tls_cert, &tls_key) {
                    (Some(c), Some(k)) => Some(kmend_fleet::api::tls_config(c, k).await?),
                    _ => None,
                };
                let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listen on {listen}"))?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                println!("{}", serde_json::json!({ "listening": listener.local_addr()?.to_string(), "scheme": scheme }));
                let shutdown = async {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                    }
                };
                kmend_fleet::api::serve_with(listener, state, tls, shutdown).await.context("serve")
            })
        }
        Command::Group(GroupCommand::Add { db, name }) => {
            let key = Db::open_any(&db)?.add_group(&name, "cli")?;
            println!("{key}");
            Ok(())
        }
        Command::Group(GroupCommand::Policy { db, name, channel, delay, sticky, rollout_max, health_window }) => {
            let input = kmend_fleet::policy::PolicyInput { channel, delay, sticky, rollout_max, health_window };
            let policy = input.validate().map_err(|e| anyhow::anyhow!(e))?;
            anyhow::ensure!(Db::open_any(&db)?.set_policy(&name, &policy, "cli")?, "no group '{name}' (kmend-fleet group add)");
            println!("{}", serde_json::to_string(&policy)?);
            Ok(())
        }
        Command::Group(GroupCommand::List { db, silent_after }) => {
            let groups = Db::open_any(&db)?.rollouts(silent_after)?;
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "groups": groups }))?);
            Ok(())
        }
        Command::Group(GroupCommand::Resume { db, name }) => {
            anyhow::ensure!(Db::open_any(&db)?.resume(&name, "cli")?, "no group '{name}'");
            println!("rollout of group {name} resumed");
            Ok(())
        }
        Command::User(UserCommand::Add { db, name }) => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("read the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']);
            Db::open_any(&db)?.add_user(&name, password, "cli")?;
            println!("user {name} added");
            Ok(())
        }
        Command::User(UserCommand::Remove { db, name }) => {
            anyhow::ensure!(Db::open_any(&db)?.remove_user(&name, "cli")?, "no user '{name}'");
            println!("user {name} removed");
            Ok(())
        }
        Command::User(UserCommand::List { db }) => {
            for name in Db::open_any(&db)?.users()? {
                println!("{name}");
            }
            Ok(())
        }
        Command::Hosts { db, silent_after } => {
            let hosts = Db::open_any(&db)?.hosts()?;
            let drift = kmend_fleet::drift::drift(&hosts);
            let views = kmend_fleet::api::host_views(&hosts, &drift, jiff::Timestamp::now(), silent_after);
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "hosts": views }))?);
            Ok(())
        }
        Command::Audit { db } => {
            for (time, actor, action, detail) in Db::open_any(&db)?.audit_log()? {
                println!("{time} {actor} {action} {detail}");
            }
            Ok(())
        }
    }
}
