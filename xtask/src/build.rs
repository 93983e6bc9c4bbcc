//! `cargo xtask build`: every artifact the VM needs, each step incremental.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command, //
};

use crate::{
    kernel,
    modules,
    patch,
    paths,
    run::exec,
    setup, //
};

/// Patch sources built into every VM image: the sample, the suite's test
/// patches and the benchmark's.
const PATCH_DIRS: &[&str] = &[
    "kernel-module/sample-patch",
    "tests/patches/multi",
    "tests/patches/stack_a",
    "tests/patches/stack_b",
    "tests/patches/stack_c",
    "tests/patches/cumulative",
    "tests/patches/modtarget",
    "tests/patches/sleepy",
    "tests/patches/hammer",
    "tests/bench/patches/single",
    "tests/bench/patches/ten",
];

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
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| paths::repo().join("target"), PathBuf::from);
    let dir = target.join(paths::MUSL_TARGET).join("release");
    Ok(["kmend", "kmend-guest"].iter().map(|b| ((*b).to_owned(), dir.join(b))).collect())
}

/// Builds everything.
pub fn all() -> anyhow::Result<Artifacts> {
    setup::run()?;
    let src = setup::kernel_source()?;
    let kernel = kernel::build(&src)?;
    let mods = modules::build(&src, &kernel)?;
    let mut files = userspace()?;
    for dir in PATCH_DIRS {
        let built = patch::build(&src, &kernel, &paths::repo().join(dir), &mods.kmend_symvers, &mods.fixtures)?;
        files.insert(format!("{}.ko", built.id), built.module);
        files.insert(format!("{}.kmpatch", built.id), built.artifact);
    }
    files.insert("kmend.ko".into(), mods.kmend);
    for f in mods.fixtures {
        if let Some(name) = f.file_name().and_then(|n| n.to_str()) {
            files.insert(name.to_owned(), f.clone());
        }
    }
    Ok(Artifacts { bzimage: kernel.bzimage, files })
}

/// `cargo xtask patch build <dir>`.
pub fn one_patch(dir: &std::path::Path) -> anyhow::Result<()> {
    setup::run()?;
    let src = setup::kernel_source()?;
    let kernel = kernel::build(&src)?;
    let mods = modules::build(&src, &kernel)?;
    let built = patch::build(&src, &kernel, dir, &mods.kmend_symvers, &mods.fixtures)?;
    println!("{}", built.artifact.display());
    Ok(())
}
