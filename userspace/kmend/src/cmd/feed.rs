//! `kmend feed keygen|init|build|sign|rotate-root|verify|serve`: the
//! publisher's side.

use std::{
    io::Write as _,
    path::PathBuf, //
};

use anyhow::Context as _;
use kmend::{
    exit::Exit,
    feed::{
        build,
        index::{
            Coverage,
            RebootCve, //
        },
        keys::{
            self,
            SecretKey, //
        },
        repo,
        serve, //
    },
    timestamp::Timestamp,
};
use serde_json::json;

use crate::cli::FeedCommand;

pub fn run(command: FeedCommand, json: bool) -> anyhow::Result<Exit> {
    match command {
        FeedCommand::Build { dir, channel, released, artifacts } => {
            let released = released.as_deref().map(Timestamp::parse).transpose()?.unwrap_or_else(Timestamp::now);
            let build::Added { listed, unsigned } = build::add(&dir, &channel, released, &artifacts)?;
            for id in &unsigned {
                eprintln!(
                    "warning: '{id}': its module carries no signature: it will not load where the kernel insists on signed modules (Secure Boot). See agent.md, \"Secure Boot\""
                );
            }
            if json {
                super::print_json(&json!({ "dir": dir, "channel": channel, "patches": listed, "unsigned_modules": unsigned }))?;
            } else {
                println!("{}: channel '{channel}' lists {} patch(es); sign it with `kmend feed sign`", dir.display(), listed.len());
            }
        }
        FeedCommand::Coverage { dir, channel, kernel, until, end_of_life, needs_reboot } => {
            let until = until.as_deref().map(Timestamp::parse).transpose()?;
            let needs_reboot = needs_reboot
                .iter()
                .map(|s| {
                    let (cve, fixed_in) = s.split_once('=').unwrap_or((s, ""));
                    anyhow::ensure!(
                        !cve.is_empty() && !cve.contains(char::is_whitespace) && !cve.contains(','),
                        "--needs-reboot '{s}': expected CVE-… or CVE-…=<release>"
                    );
                    Ok(RebootCve { cve: cve.to_owned(), fixed_in: fixed_in.to_owned() })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let coverage = Coverage { until, end_of_life, needs_reboot };
            let changed = build::set_coverage(&dir, &channel, &kernel, &coverage)?;
            if json {
                super::print_json(&json!({ "dir": dir, "channel": channel, "kernel": kernel, "coverage": coverage, "builds": changed }))?;
            } else {
                println!("{}: coverage of kernel {kernel} on '{channel}' set ({changed} build(s)); sign it with `kmend feed sign`", dir.display());
            }
        }
        FeedCommand::Init { dir, root_keys, threshold, keys: online, expires } => {
            let root_keys = secret_keys(&root_keys)?;
            let online = public_keys(&online)?;
            let path = repo::init(&dir, &root_keys, threshold, &online, expires)?;
            if json {
                super::print_json(&json!({ "root": path }))?;
            } else {
                println!("{}: feed root written; install it on every machine as /etc/kmend/root.json", path.display());
            }
        }
        FeedCommand::Sign { dir, keys: key_files, expires } => {
            let published = repo::sign(&dir, &secret_keys(&key_files)?, expires)?;
            if json {
                super::print_json(&published)?;
            } else {
                println!(
                    "{}: published version {} ({} target(s)), valid until {}: sign again before then",
                    dir.display(),
                    published.version,
                    published.targets.len(),
                    published.expires
                );
            }
        }
        FeedCommand::RotateRoot { dir, old_root_keys, root_keys, threshold, keys: online, expires } => {
            let path = repo::rotate_root(
                &dir,
                &secret_keys(&old_root_keys)?,
                &secret_keys(&root_keys)?,
                threshold,
                &public_keys(&online)?,
                expires,
            )?;
            if json {
                super::print_json(&json!({ "root": path }))?;
            } else {
                println!("{}: new root written; sign the feed with its keys (`kmend feed sign`)", path.display());
            }
        }
        FeedCommand::Verify { dir, root } => {
            let n = build::verify_dir(&dir, &root)?;
            if json {
                super::print_json(&json!({ "dir": dir, "verified": true, "patches": n }))?;
            } else {
                println!("{}: signed metadata good, {n} patch(es) verified", dir.display());
            }
        }
        FeedCommand::Keygen { out } => {
            let (secret, public, id) = keys::generate(&out)?;
            if json {
                super::print_json(&json!({ "secret_key": secret, "public_key": public, "key_id": id }))?;
            } else {
                println!("secret key: {} (keep it off the machines that apply patches)", secret.display());
                println!("public key: {} (key id {id})", public.display());
            }
        }
        FeedCommand::Serve { dir, listen } => {
            let dir = serve::open_root(&dir).with_context(|| format!("feed serve: '{}'", dir.display()))?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let listener =
                    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}: bind failed"))?;
                let addr = listener.local_addr()?;
                if json {
                    super::print_json(&json!({ "listening": addr.to_string() }))?;
                } else {
                    println!("{addr}");
                }
                std::io::stdout().flush()?;
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = serve::serve(dir, listener) => r.context("feed serve")?,
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                anyhow::Ok(())
            })?;
        }
    }
    Ok(Exit::Ok)
}

fn secret_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SecretKey>> {
    Ok(paths.iter().map(|p| SecretKey::read(p)).collect::<Result<_, _>>()?)
}

fn public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<tough::schema::key::Key>> {
    Ok(paths.iter().map(|p| keys::read_public(p)).collect::<Result<_, _>>()?)
}
