//! Out-of-tree kernel modules: `kmend.ko` and the test fixtures, built
//! against each guest kernel's build tree with the kernel's own toolchain
//! (in the chroot).
//!
//! Sources are mirrored into the cache (only changed files are rewritten,
//! so Kbuild stays incremental) and built there: no build output in the repo.

use std::{
    fs,
    path::{
        Path,
        PathBuf, //
    },
};

use anyhow::{
    Context as _,
    bail, //
};

use crate::{
    kernel::Kernel,
    module_signing,
    paths,
    run::exec_logged,
};

/// The built modules.
pub struct Modules {
    pub kmend: PathBuf,
    /// Module.symvers of kmend.ko (what patch modules link against).
    pub kmend_symvers: PathBuf,
    /// Test fixtures (tests/modules): patch targets and the klp comparison.
    /// All three are signed (see [`module_signing`]).
    pub fixtures: Vec<PathBuf>,
}

/// Builds kmend.ko and the test fixture modules.
pub fn build(kernel: &Kernel) -> anyhow::Result<Modules> {
    let flavor = kernel.flavor.name();
    let dir = kernel.out_dir("modules");
    mirror(&paths::repo().join("kernel-module"), &dir)?;
    kbuild(kernel, &dir, &[], &[], &format!("module-kmend-{flavor}"))?;
    let fixtures_dir = kernel.out_dir("fixtures");
    mirror(&paths::repo().join("tests/modules"), &fixtures_dir)?;
    kbuild(kernel, &fixtures_dir, &[], &[], &format!("module-fixtures-{flavor}"))?;
    let fixtures = ["kmend_testmod.ko", "klp_bench.ko"]
        .iter()
        .map(|m| module_signing::sign(kernel, &fixtures_dir.join(m)))
        .collect::<anyhow::Result<_>>()?;
    // kmend.ko refers to one kernel variable that is not exported (the
    // idle tasks, kernel-module/kmend_export.c): the module loader places
    // it by name, as for patch modules.
    let stripped = kernel.strip_debug(&dir.join("kmend.ko"))?;
    let (linked, moved) = crate::diff_patch::post_link(kernel, &fs::read(&stripped)?, &[], &[]).context("kmend.ko")?;
    if moved == 0 {
        bail!("kmend.ko: no reference for the module loader to place (kmend_export.c's idle_threads)");
    }
    let kmend = dir.join("kmend.klp.ko");
    if fs::read(&kmend).ok().as_deref() != Some(&linked[..]) {
        fs::write(&kmend, &linked)?;
    }
    Ok(Modules {
        kmend: module_signing::sign(kernel, &kmend)?,
        kmend_symvers: dir.join("Module.symvers"),
        fixtures,
    })
}

/// Copies `from` into `to`, rewriting only files whose content changed.
pub fn mirror(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            mirror(&src, &dst)?;
        } else {
            let data = fs::read(&src)?;
            if fs::read(&dst).ok().as_deref() != Some(&data[..]) {
                fs::write(&dst, &data).with_context(|| format!("write {}", dst.display()))?;
            }
        }
    }
    Ok(())
}

/// Builds one module directory with Kbuild.
/// `binds`: host directories the build reads besides the cache and the
/// repository.
pub fn kbuild(kernel: &Kernel, dir: &Path, extra_symbols: &[PathBuf], binds: &[PathBuf], log: &str) -> anyhow::Result<()> {
    kbuild_with(kernel, dir, extra_symbols, binds, &[], log)
}

/// [`kbuild`] with extra `make` arguments.
pub fn kbuild_with(kernel: &Kernel, dir: &Path, extra_symbols: &[PathBuf], binds: &[PathBuf], args: &[&str], log: &str) -> anyhow::Result<()> {
    let mut cmd = kernel.make_binding(binds);
    cmd.arg(format!("M={}", dir.display())).args(args).arg("modules");
    if !extra_symbols.is_empty() {
        let list: Vec<String> = extra_symbols.iter().map(|p| p.display().to_string()).collect();
        cmd.arg(format!("KBUILD_EXTRA_SYMBOLS={}", list.join(" ")));
    }
    exec_logged(&mut cmd, &paths::cache().join(format!("logs/{log}.log")))
}
