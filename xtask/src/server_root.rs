//! A Debian server's root filesystem: minbase of [`pins::SUITE`] plus
//! [`pins::SERVER_PACKAGES`] (systemd as init, udev, kmod, ssh, python3),
//! made once with debootstrap and cached. The package test installs
//! kmend's package into throwaway overlays of it; the root itself is never
//! changed after it is made.

use std::{
    fs,
    path::PathBuf,
    time::Instant,
};

use anyhow::Context as _;

use crate::{
    chroot,
    paths,
    pins,
    run::{
        exec_logged,
        key,
        stamp_matches,
        write_stamp, //
    },
};

/// The root, made if needed (a few minutes cold: about 300 MB of packages).
pub fn ensure() -> anyhow::Result<PathBuf> {
    let stamp_key = key(&[pins::SUITE.as_bytes(), pins::SERVER_PACKAGES.join(" ").as_bytes()]);
    let dir = paths::cache().join(format!("server-root/{}-{stamp_key}", pins::SUITE));
    let root = dir.join("root");
    let stamp = dir.join("stamp");
    if stamp_matches(&stamp, &stamp_key) {
        return Ok(root);
    }
    let start = Instant::now();
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove the incomplete server root {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let log = paths::cache().join("logs/server-root.log");
    println!("xtask: creating a {} server root (debootstrap), log: {}", pins::SUITE, log.display());
    chroot::debootstrap(&root, pins::SERVER_PACKAGES, &log).context("debootstrap of the server root")?;
    // No package cache: the root is copied into every test's overlay view.
    exec_logged(std::process::Command::new("chroot").arg(&root).args(["apt-get", "clean"]), &log)?;
    write_stamp(&stamp, &stamp_key)?;
    println!("xtask: server root ready in {:.1} min", start.elapsed().as_secs_f64() / 60.0);
    Ok(root)
}
