//! `cargo xtask build`: every artifact the VM needs, each step incremental.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command, //
};

use crate::{
    kernel,
    modules,
    paths,
    run::exec,
    setup, //
};

/// Everything built, by the names `vm-images/initramfs.txt` uses (`@name`).
pub struct Artifacts {
    pub bzimage: PathBuf,
    pub files: BTreeMap<String, PathBuf>,
}

/// A `cargo` command with the environment every build here uses.
///
/// `RUSTC_BOOTSTRAP=1` lets aya-build use `-Z build-std=core` on the stable
/// toolchain; it is set for every cargo run so that cargo's caches agree.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(paths::repo())
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", paths::tool_path());
    c
}

/// Static (musl) userspace binaries for the guest, with the probes embedded.
pub fn userspace() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    println!("xtask: building userspace ({})", paths::MUSL_TARGET);
    exec(cargo().args(["build", "--release", "--target", paths::MUSL_TARGET, "-p", "kmend", "-p", "kmend-guest"]))?;
    let dir = paths::repo().join("target").join(paths::MUSL_TARGET).join("release");
    Ok(["kmend", "kmend-guest"].iter().map(|b| ((*b).to_owned(), dir.join(b))).collect())
}

/// Builds everything.
pub fn all() -> anyhow::Result<Artifacts> {
    setup::run()?;
    let src = setup::kernel_source()?;
    let kernel = kernel::build(&src)?;
    let mods = modules::build(&src, &kernel)?;
    let mut files = userspace()?;
    files.insert("kmend.ko".into(), mods.kmend);
    files.insert("kmend_sample.ko".into(), mods.sample);
    Ok(Artifacts { bzimage: kernel.bzimage, files })
}
