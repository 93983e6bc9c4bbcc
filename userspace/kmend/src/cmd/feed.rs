//! `kmend feed build|sign|verify|keygen|serve`: the publisher's side.

use std::{
    io::Write as _,
    path::PathBuf, //
};

use anyhow::Context as _;
use kmend::{
    exit::Exit,
    feed::{
        build,
        serve,
        sign, //
    },
    fsutil,
    timestamp::Timestamp,
};
use serde_json::json;

use crate::cli::FeedCommand;

pub fn run(command: FeedCommand, json: bool) -> anyhow::Result<Exit> {
    match command {
        FeedCommand::Build { dir, channel, released, artifacts } => {
            let released = released.as_deref().map(Timestamp::parse).transpose()?.unwrap_or_else(Timestamp::now);
            let listed = build::add(&dir, &channel, released, &artifacts)?;
            if json {
                super::print_json(&json!({ "dir": dir, "channel": channel, "patches": listed }))?;
            } else {
                println!("{}: channel '{channel}' lists {} patch(es); sign it with `kmend feed sign`", dir.display(), listed.len());
            }
        }
        FeedCommand::Sign { dir, key } => {
            let sig = build::sign_dir(&dir, &key)?;
            if json {
                super::print_json(&json!({ "signature": sig }))?;
            } else {
                println!("{}: signed", sig.display());
            }
        }
        FeedCommand::Verify { dir, key } => {
            let key = sign::trusted_key(&key, |p: &str| PathBuf::from(p))?;
            let n = build::verify_dir(&dir, &[key])?;
            if json {
                super::print_json(&json!({ "dir": dir, "verified": true, "patches": n }))?;
            } else {
                println!("{}: signature good, {n} patch(es) verified", dir.display());
            }
        }
        FeedCommand::Keygen { out } => {
            let (secret, public) = sign::generate();
            let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let key = out.with_file_name(format!("{name}.key"));
            let pubf = out.with_file_name(format!("{name}.pub"));
            fsutil::write_atomic(&key, format!("{secret}\n").as_bytes())
                .with_context(|| format!("'{}': write failed", key.display()))?;
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("'{}': chmod failed", key.display()))?;
            fsutil::write_atomic(&pubf, format!("{public}\n").as_bytes())
                .with_context(|| format!("'{}': write failed", pubf.display()))?;
            if json {
                super::print_json(&json!({ "secret_key": key, "public_key": pubf, "public": public }))?;
            } else {
                println!("secret key: {} (keep it off the machines that apply patches)", key.display());
                println!("public key: {} ({public})", pubf.display());
            }
        }
        FeedCommand::Serve { dir, listen } => {
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
