//! Out-of-tree kernel modules: `kmend.ko` and the test fixtures, built
//! against the guest kernel's build tree with the kernel's own toolchain.
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

use anyhow::Context as _;

use crate::{
    kernel::{
        Kernel,
        make, //
    },
    paths,
    run::exec_logged,
    setup::KernelSource,
};

/// The built modules.
pub struct Modules {
    pub kmend: PathBuf,
    /// Module.symvers of kmend.ko (what patch modules link against).
    pub kmend_symvers: PathBuf,
    /// Test fixtures (tests/modules): patch targets and the klp comparison.
    pub fixtures: Vec<PathBuf>,
}

/// Builds kmend.ko and the test fixture modules.
pub fn build(src: &KernelSource, kernel: &Kernel) -> anyhow::Result<Modules> {
    let dir = paths::cache().join(format!("build/modules-{}", src.version));
    mirror(&paths::repo().join("kernel-module"), &dir)?;
    kbuild(src, kernel, &dir, &[], "module-kmend")?;
    let fixtures_dir = paths::cache().join(format!("build/fixtures-{}", src.version));
    mirror(&paths::repo().join("tests/modules"), &fixtures_dir)?;
    kbuild(src, kernel, &fixtures_dir, &[], "module-fixtures")?;
    Ok(Modules {
        kmend: dir.join("kmend.ko"),
        kmend_symvers: dir.join("Module.symvers"),
        fixtures: ["kmend_testmod.ko", "klp_bench.ko"].iter().map(|m| fixtures_dir.join(m)).collect(),
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
pub fn kbuild(src: &KernelSource, kernel: &Kernel, dir: &Path, extra_symbols: &[PathBuf], log: &str) -> anyhow::Result<()> {
    let mut cmd = make(src, &kernel.build);
    cmd.arg(format!("M={}", dir.display())).arg("modules");
    if !extra_symbols.is_empty() {
        let list: Vec<String> = extra_symbols.iter().map(|p| p.display().to_string()).collect();
        cmd.arg(format!("KBUILD_EXTRA_SYMBOLS={}", list.join(" ")));
    }
    exec_logged(&mut cmd, &paths::cache().join(format!("logs/{log}.log")))
}
