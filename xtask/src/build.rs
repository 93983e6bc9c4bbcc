//! `cargo xtask build`: every artifact the VM needs, for each guest kernel,
//! each step incremental.

use anyhow::Context as _;

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::Command,
};

use crate::{
    chroot,
    debug_kernel,
    kernel::{
        Flavor,
        Kernel, //
    },
    modules,
    patch,
    paths,
    run::exec,
    setup,
    stock_kernel, //
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
    "tests/patches/modpair",
    "tests/patches/sleepy",
    "tests/patches/deep",
    "tests/patches/schedsleep",
    "tests/patches/waiter",
    "tests/patches/tailcall",
    "tests/patches/foreign",
    "tests/patches/hammer",
    "tests/patches/alias",
    "tests/patches/kernel_data",
    "tests/patches/idle",
    "tests/patches/idle_path",
    "tests/bench/patches/single",
    "tests/bench/patches/ten",
];

/// Modules of the stock kernel in its VM image (`/lib/kmend/<name>.ko`),
/// for the fixes to module code the suite applies.
const STOCK_MODULES: &[&str] = &["tcp_dctcp", "tcp_lp"];

/// Patches built from upstream C diffs (xtask/src/diff_patch), for the
/// stock kernel (the builder compiles single objects in its build tree):
/// every `tests/patches/*` whose patch.toml names a `diff`: the real
/// upstream fixes (`stable_*`) and the suite's own C-diff patches.
fn diff_patch_dirs() -> anyhow::Result<Vec<PathBuf>> {
    let dir = paths::repo().join("tests/patches");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            fs::read_to_string(p.join("patch.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.split('=').next().is_some_and(|k| k.trim() == "diff")))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Everything one kernel's VM needs, by the names `vm-images/initramfs.txt`
/// uses (`@name`).
pub struct Artifacts {
    pub kernel: Kernel,
    pub files: BTreeMap<String, PathBuf>,
    /// Files outside the manifest, by their path in the guest: the patches
    /// a `vm-test --patch` run tries ([`TRY_DIR`]).
    pub extra: Vec<(String, PathBuf)>,
}

/// Where the guest finds the patches `cargo xtask vm-test --patch` tries:
/// `<id>.kmpatch`, `<id>.trigger` (patch.toml's `trigger`, if any), and
/// `order` (the ids, one per line, as given on the command line).
pub const TRY_DIR: &str = "/lib/kmend/try";

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

/// Cargo's target directory (`$CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| paths::repo().join("target"), PathBuf::from)
}

/// Static (musl) userspace binaries for the guest, with the probes embedded.
pub fn userspace() -> anyhow::Result<BTreeMap<String, PathBuf>> {
    println!("xtask: building userspace ({})", paths::MUSL_TARGET);
    exec(cargo().args(["build", "--release", "--target", paths::MUSL_TARGET, "-p", "kmend", "-p", "kmend-guest"]))?;
    let dir = target_dir().join(paths::MUSL_TARGET).join("release");
    Ok(["kmend", "kmend-guest"].iter().map(|b| ((*b).to_owned(), dir.join(b))).collect())
}

/// The fleet server, static (musl) like the agent: `kmend-fleet`.
pub fn fleet_server() -> anyhow::Result<PathBuf> {
    println!("xtask: building the fleet server ({})", paths::MUSL_TARGET);
    exec(cargo().args(["build", "--release", "--target", paths::MUSL_TARGET, "-p", "kmend-fleet"]))?;
    Ok(target_dir().join(paths::MUSL_TARGET).join("release/kmend-fleet"))
}

/// The kernels asked for, built or prepared (setup first).
pub fn kernels(which: &[Flavor]) -> anyhow::Result<Vec<Kernel>> {
    setup::run()?;
    let src = setup::kernel_source()?;
    let chroot = chroot::ensure()?;
    which
        .iter()
        .map(|f| match f {
            Flavor::Stock => stock_kernel::prepare(&chroot, &src),
            Flavor::Debug => debug_kernel::build(&chroot, &src),
        })
        .collect()
}

/// The modules and patches of one kernel, plus the userspace binaries, and
/// the patches of `tried` (directories) under [`TRY_DIR`].
pub fn for_kernel(kernel: &Kernel, userspace: &BTreeMap<String, PathBuf>, tried: &[PathBuf]) -> anyhow::Result<Artifacts> {
    let mods = modules::build(kernel)?;
    let mut files = userspace.clone();
    let mut dirs: Vec<PathBuf> = PATCH_DIRS.iter().map(|d| paths::repo().join(d)).collect();
    if kernel.flavor == Flavor::Stock {
        dirs.extend(diff_patch_dirs()?);
    }
    for dir in dirs {
        let built = patch::build(kernel, &dir, &mods.kmend_symvers, &mods.fixtures)?;
        files.insert(format!("{}.ko", built.id), built.module);
        files.insert(format!("{}.kmpatch", built.id), built.artifact);
    }
    files.insert("kmend.ko".into(), mods.kmend);
    // The kernel's own modules that fixes to module code patch
    // (tests/patches/stable_tcp_dctcp), as its package ships them.
    if let Some(tree) = &kernel.modules {
        for name in STOCK_MODULES {
            for ko in stock_kernel::module_with_dependencies(tree, name)? {
                if let Some(file) = ko.file_name().and_then(|n| n.to_str()) {
                    files.insert(file.to_owned(), ko.clone());
                }
            }
        }
    }
    for f in &mods.fixtures {
        if let Some(name) = f.file_name().and_then(|n| n.to_str()) {
            files.insert(name.to_owned(), f.clone());
        }
    }
    let mut extra = Vec::new();
    let mut order = String::new();
    for dir in tried {
        let built = patch::build(kernel, dir, &mods.kmend_symvers, &mods.fixtures)?;
        extra.push((format!("{TRY_DIR}/{}.kmpatch", built.id), built.artifact.clone()));
        if let Some(trigger) = &built.trigger {
            let file = built.artifact.with_extension("trigger");
            fs::write(&file, trigger).with_context(|| format!("write {}", file.display()))?;
            extra.push((format!("{TRY_DIR}/{}.trigger", built.id), file));
        }
        order.push_str(&built.id);
        order.push('\n');
    }
    if !tried.is_empty() {
        let file = paths::cache().join("vm").join(format!("try-order-{}", kernel.flavor.name()));
        fs::create_dir_all(paths::cache().join("vm"))?;
        fs::write(&file, order).with_context(|| format!("write {}", file.display()))?;
        extra.push((format!("{TRY_DIR}/order"), file));
    }
    Ok(Artifacts { kernel: kernel.clone(), files, extra })
}

/// Builds everything for the kernels asked for.
pub fn all(which: &[Flavor]) -> anyhow::Result<Vec<Artifacts>> {
    trying(which, &[])
}

/// Builds everything for the kernels asked for, plus the patches of
/// `tried` (`vm-test --patch`).
pub fn trying(which: &[Flavor], tried: &[PathBuf]) -> anyhow::Result<Vec<Artifacts>> {
    let kernels = kernels(which)?;
    let bins = userspace()?;
    kernels.iter().map(|k| for_kernel(k, &bins, tried)).collect()
}

/// `cargo xtask patch build <dir>`: against one kernel.
pub fn one_patch(dir: &std::path::Path, flavor: Flavor) -> anyhow::Result<()> {
    let kernel = kernels(&[flavor])?.remove(0);
    let mods = modules::build(&kernel)?;
    let built = patch::build(&kernel, dir, &mods.kmend_symvers, &mods.fixtures)?;
    println!("{}", built.artifact.display());
    Ok(())
}
