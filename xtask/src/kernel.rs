//! The guest kernel: `tinyconfig` plus `vm-images/kernel.config`, built
//! out of tree into the cache, incrementally.
//!
//! The build tree is keyed by the source version; a stamp keyed by
//! everything that produced the image (source version, config fragment,
//! compilers, bindgen) lets a warm run skip `make` entirely.

use std::{
    fs,
    path::PathBuf,
    process::Command, //
};

use anyhow::{
    Context as _,
    bail, //
};

use crate::{
    paths,
    run::{
        exec_logged,
        key,
        output,
        stamp_matches,
        write_stamp, //
    },
    setup::KernelSource,
};

/// A built kernel.
pub struct Kernel {
    /// The `O=` build tree (what out-of-tree modules build against).
    pub build: PathBuf,
    pub bzimage: PathBuf,
}

/// The config fragment, relative to the repository.
const FRAGMENT: &str = "vm-images/kernel.config";

/// `make` with the kernel's toolchain settings (GCC for C, rustc, bindgen
/// with libclang 19). Modules must use exactly the same.
pub fn make(src: &KernelSource, build: &PathBuf) -> Command {
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(&src.dir)
        .arg(format!("O={}", build.display()))
        .env("PATH", paths::tool_path())
        .env("LIBCLANG_PATH", paths::LIBCLANG_PATH);
    c
}

fn jobs() -> String {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    format!("-j{}", n + 1)
}

/// Configures and builds the kernel (or finds it up to date).
pub fn build(src: &KernelSource) -> anyhow::Result<Kernel> {
    let repo = paths::repo();
    let fragment = fs::read(repo.join(FRAGMENT)).with_context(|| format!("read {FRAGMENT}"))?;
    let tools = [
        output(Command::new("rustc").arg("--version"))?,
        output(Command::new("gcc").arg("--version"))?,
        output(Command::new(paths::tools_bin().join("bindgen")).arg("--version"))?,
    ];
    let stamp_key = key(&[
        src.version.as_bytes(),
        &fragment,
        tools[0].as_bytes(),
        tools[1].as_bytes(),
        tools[2].as_bytes(),
    ]);
    let build = paths::cache().join(format!("build/linux-{}", src.version));
    let bzimage = build.join("arch/x86/boot/bzImage");
    let stamp = build.join(".kmend-stamp");
    if bzimage.exists() && stamp_matches(&stamp, &stamp_key) {
        return Ok(Kernel { build, bzimage });
    }
    fs::create_dir_all(&build)?;
    let log = paths::cache().join("logs/kernel.log");
    println!("xtask: configuring the kernel ({}), log: {}", build.display(), log.display());
    exec_logged(make(src, &build).arg("tinyconfig"), &paths::cache().join("logs/kernel-config.log"))?;
    exec_logged(
        Command::new(src.dir.join("scripts/kconfig/merge_config.sh"))
            .arg("-m")
            .arg("-O")
            .arg(&build)
            .arg(build.join(".config"))
            .arg(repo.join(FRAGMENT))
            .current_dir(&src.dir)
            .env("PATH", paths::tool_path()),
        &paths::cache().join("logs/kernel-merge.log"),
    )?;
    exec_logged(make(src, &build).arg("olddefconfig"), &paths::cache().join("logs/kernel-config.log"))?;
    check_config(&build, &String::from_utf8_lossy(&fragment))?;
    println!("xtask: building the kernel (about 20 minutes cold on 2 cores), log: {}", log.display());
    let start = std::time::Instant::now();
    exec_logged(make(src, &build).arg(jobs()).args(["bzImage", "modules"]), &log)?;
    println!("xtask: kernel built in {:.1} min", start.elapsed().as_secs_f64() / 60.0);
    write_stamp(&stamp, &stamp_key)?;
    Ok(Kernel { build, bzimage })
}

/// Fails if Kconfig dropped an option the fragment asks for (a missing
/// dependency would otherwise surface much later as a confusing failure).
fn check_config(build: &PathBuf, fragment: &str) -> anyhow::Result<()> {
    let config = fs::read_to_string(build.join(".config"))?;
    let mut wrong = Vec::new();
    for line in fragment.lines().map(str::trim).filter(|l| l.starts_with("CONFIG_")) {
        let Some((name, want)) = line.split_once('=') else { continue };
        let got = config
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("n");
        if got != want && !(want == "n" && got.is_empty()) {
            wrong.push(format!("{name}: want {want}, got {got}"));
        }
    }
    if !wrong.is_empty() {
        bail!("kernel config does not have what {FRAGMENT} asks for:\n  {}", wrong.join("\n  "));
    }
    Ok(())
}

impl Kernel {
    /// The kernel release (`uname -r` in the guest).
    pub fn release(&self) -> anyhow::Result<String> {
        let path = self.build.join("include/config/kernel.release");
        Ok(fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?.trim().to_owned())
    }
}

/// The GNU build id of an ELF file (the kernel identity patches are tied to).
pub fn build_id(elf: &std::path::Path) -> anyhow::Result<String> {
    use object::Object as _;
    let data = fs::read(elf).with_context(|| format!("read {}", elf.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("{}: not ELF", elf.display()))?;
    let id = file.build_id()?.with_context(|| format!("{}: no GNU build id", elf.display()))?;
    Ok(hex::encode(id))
}
