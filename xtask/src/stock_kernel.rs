//! Debian's stock kernel, unmodified: the image, the modules the guest needs
//! to reach its disk, and a build tree that out-of-tree modules (kmend.ko,
//! patches, test fixtures) build against, without building the kernel.
//!
//! The build tree is Debian's source with the image's own `.config` and
//! release, prepared in the toolchain chroot (xtask/src/chroot.rs), plus a
//! rebuild of `rust/` (about 5 minutes): Debian's headers package ships no
//! Rust metadata, and with the same source, config and rustc the rebuilt
//! crates have the stock kernel's crate hashes. `Module.symvers` is the
//! stock one, from the headers package.
//!
//! The image is stripped. Its code and build id come from the image itself
//! (`scripts/extract-vmlinux`); its symbols from the `System.map` of
//! Debian's `-dbg` package (see xtask/src/pins.rs for why only that file).

use std::{
    collections::BTreeMap,
    fs,
    path::{
        Path,
        PathBuf, //
    },
    process::Command,
    time::Instant,
};

use anyhow::{
    Context as _,
    anyhow,
    bail, //
};
use object::{
    Object as _,
    ObjectSection as _, //
};

use crate::{
    chroot::Chroot,
    debian::Apt,
    kernel::{
        Flavor,
        Kernel,
        jobs, //
    },
    paths,
    pins,
    run::{
        exec,
        exec_logged,
        key,
        stamp_matches,
        write_stamp, //
    },
    setup::KernelSource,
};

/// Modules the guest loads (with their dependencies) to use its disk:
/// the stock kernel has virtio PCI built in, but not the block driver or
/// ext4 (which also serves ext2).
const BOOT_MODULES: &[&str] = &["virtio_blk", "ext4"];

/// Fetches the stock kernel and prepares its build tree (or finds both done).
pub fn prepare(chroot: &Chroot, src: &KernelSource) -> anyhow::Result<Kernel> {
    let release = pins::STOCK_RELEASE;
    let dir = paths::cache().join(format!("stock/{release}_{}", pins::STOCK_IMAGE.version));
    let debs = dir.join("debs");
    let files = dir.join("files");
    let apt = std::cell::OnceCell::new();
    let apt = || -> anyhow::Result<&Apt> {
        if apt.get().is_none() {
            let _ = apt.set(Apt::new(pins::SUITE)?);
        }
        apt.get().context("apt")
    };

    // The image, its config, its modules, its symbols.
    let vmlinuz = files.join("vmlinuz");
    let config = files.join("config");
    let symvers = files.join("Module.symvers");
    let system_map = files.join("System.map");
    let modules = files.join("modules");
    if !(vmlinuz.exists() && config.exists() && symvers.exists() && system_map.exists() && modules.exists()) {
        if files.exists() {
            fs::remove_dir_all(&files)?;
        }
        let unpack = dir.join("unpack");
        if unpack.exists() {
            fs::remove_dir_all(&unpack)?;
        }
        for pkg in [pins::STOCK_IMAGE, pins::STOCK_BASE, pins::STOCK_HEADERS, pins::STOCK_MODULES] {
            let deb = apt()?.download(pkg, &debs)?;
            exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
        }
        let lib = unpack.join(format!("usr/lib/modules/{release}"));
        let headers = unpack.join(format!("usr/src/linux-headers-{release}"));
        fs::create_dir_all(&files)?;
        fs::copy(lib.join("vmlinuz"), &vmlinuz)?;
        fs::copy(headers.join(".config"), &config)?;
        fs::copy(headers.join("Module.symvers"), &symvers)?;
        fs::rename(lib.join("kernel"), &modules)?;
        // Only System.map is wanted from the 1.2 GB debug package: tar stops
        // at its first occurrence, and the package is deleted.
        let dbg_dir = dir.join("dbg");
        let dbg = apt()?.download(pins::STOCK_DEBUG, &dbg_dir)?;
        let member = format!("./usr/lib/debug/lib/modules/{release}/System.map");
        exec(Command::new("sh").args([
            "-c",
            &format!(
                "dpkg-deb --fsys-tarfile '{}' 2>/dev/null | tar -x --occurrence=1 -C '{}' '{member}'",
                dbg.display(),
                unpack.display()
            ),
        ]))
        .ok();
        let map = unpack.join(&member);
        if !fs::metadata(&map).is_ok_and(|m| m.len() > 1 << 20) {
            bail!("{} {} has no System.map at {member}", pins::STOCK_DEBUG.name, pins::STOCK_DEBUG.version);
        }
        fs::copy(&map, &system_map)?;
        fs::remove_dir_all(&dbg_dir)?;
        fs::remove_dir_all(&unpack)?;
    }

    // Code and build id from the image itself.
    let vmlinux = files.join("vmlinux");
    if !vmlinux.exists() {
        let tmp = files.join("vmlinux.tmp");
        let out = fs::File::create(&tmp)?;
        exec(Command::new(src.dir.join("scripts/extract-vmlinux")).arg(&vmlinuz).stdout(out))
            .context("extracting the ELF image from the stock vmlinuz (needs zstd)")?;
        fs::rename(&tmp, &vmlinux)?;
    }

    let build = build_tree(chroot, src, &config, &symvers)?;
    let boot_modules = boot_modules(&modules, &files.join("boot-modules"))?;
    Ok(Kernel {
        flavor: Flavor::Stock,
        chroot: chroot.clone(),
        src: src.dir.clone(),
        build,
        bzimage: vmlinuz,
        release: release.to_owned(),
        vmlinux,
        system_map: Some(system_map),
        boot_modules,
        modules: Some(modules),
    })
}

/// The prepared build tree: stock config and release, `rust/` rebuilt.
fn build_tree(chroot: &Chroot, src: &KernelSource, config: &Path, symvers: &Path) -> anyhow::Result<PathBuf> {
    let stock_config = fs::read(config)?;
    let stamp_key = key(&[src.version.as_bytes(), &stock_config, chroot.toolchain_id()?.as_bytes()]);
    let build = paths::cache().join(format!("build/stock-{}", pins::STOCK_RELEASE));
    let stamp = build.join(".kmend-stamp");
    if stamp_matches(&stamp, &stamp_key) {
        return Ok(build);
    }
    fs::create_dir_all(&build)?;
    fs::write(build.join(".config"), &stock_config)?;
    let start = Instant::now();
    let log = paths::cache().join("logs/stock-tree.log");
    println!("xtask: preparing the stock kernel's build tree (rust/ rebuilt, about 5 min cold), log: {}", log.display());
    let make = |args: &[&str]| -> anyhow::Result<()> {
        let mut c = crate::kernel::make_in(chroot, &src.dir, &build);
        exec_logged(c.arg(format!("KERNELRELEASE={}", pins::STOCK_RELEASE)).args(args), &log)
    };
    make(&["olddefconfig"])?;
    let differs = config_differences(&String::from_utf8_lossy(&stock_config), &fs::read_to_string(build.join(".config"))?);
    if !differs.is_empty() {
        bail!(
            "the toolchain chroot does not reproduce the stock kernel's config (modules would not load):\n  {}",
            differs.join("\n  ")
        );
    }
    make(&[&jobs(), "modules_prepare"])?;
    make(&[&jobs(), "rust/"])?;
    fs::copy(symvers, build.join("Module.symvers"))?;
    write_stamp(&stamp, &stamp_key)?;
    println!("xtask: stock build tree ready in {:.1} min", start.elapsed().as_secs_f64() / 60.0);
    Ok(build)
}

/// Options of the stock config whose values differ in `got` (the chroot's
/// compilers and tools decide some, e.g. `CONFIG_RUSTC_VERSION_TEXT`, or
/// what `openssl` supports); any difference can change struct layouts or
/// crate hashes, so modules would not load.
fn config_differences(want: &str, got: &str) -> Vec<String> {
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| {
                if let Some(name) = l.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
                    return Some((name.to_owned(), "n".to_owned()));
                }
                let (k, v) = l.split_once('=')?;
                k.starts_with("CONFIG_").then(|| (k.to_owned(), v.to_owned()))
            })
            .collect()
    };
    let (want, got) = (parse(want), parse(got));
    want.iter()
        .filter(|(k, v)| got.get(*k).map_or("n", String::as_str) != v.as_str())
        .map(|(k, v)| format!("{k}: stock {v}, here {}", got.get(k).map_or("n", String::as_str)))
        .collect()
}

/// Decompresses `BOOT_MODULES` and their dependencies into `out`, in load
/// order (dependencies first), from the modules package's tree.
fn boot_modules(tree: &Path, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let by_name = modules_by_name(tree)?;
    let mut order = Vec::new();
    for m in BOOT_MODULES {
        visit(m, &by_name, out, &mut order, 0)?;
    }
    Ok(order)
}

/// The modules of `tree` by name (`-` as `_`), indexed once per tree and
/// run: the tree holds thousands of files, and every module fix and suite
/// module asks.
fn modules_by_name(tree: &Path) -> anyhow::Result<std::sync::Arc<BTreeMap<String, PathBuf>>> {
    type Indexes = std::sync::Mutex<BTreeMap<PathBuf, std::sync::Arc<BTreeMap<String, PathBuf>>>>;
    static INDEXES: std::sync::OnceLock<Indexes> = std::sync::OnceLock::new();
    let indexes = INDEXES.get_or_init(Default::default);
    if let Some(by_name) = indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(tree) {
        return Ok(by_name.clone());
    }
    let mut by_name = BTreeMap::new();
    index(tree, &mut by_name)?;
    let by_name = std::sync::Arc::new(by_name);
    indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(tree.to_owned(), by_name.clone());
    Ok(by_name)
}

fn index(dir: &Path, by_name: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            index(&p, by_name)?;
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko.xz")) {
            by_name.insert(name.replace('-', "_"), p.clone());
        }
    }
    Ok(())
}

fn visit(name: &str, by_name: &BTreeMap<String, PathBuf>, out: &Path, order: &mut Vec<PathBuf>, depth: u32) -> anyhow::Result<()> {
    let target = out.join(format!("{name}.ko"));
    if order.contains(&target) {
        return Ok(());
    }
    if depth > 32 {
        bail!("module dependency loop at {name}");
    }
    let xz = by_name.get(name).ok_or_else(|| anyhow!("the stock modules package has no module '{name}'"))?;
    if !target.exists() {
        fs::create_dir_all(out)?;
        let data = Command::new("xz").arg("-dc").arg(xz).output().context("xz -dc")?;
        if !data.status.success() {
            bail!("xz -dc {} failed", xz.display());
        }
        fs::write(&target, &data.stdout)?;
    }
    for dep in depends(&fs::read(&target)?)? {
        visit(&dep, by_name, out, order, depth + 1)?;
    }
    order.push(target);
    Ok(())
}

/// Module `name` of the stock kernel, decompressed, with the modules it
/// depends on, in load order (dependencies first). `tree` is
/// [`Kernel::modules`].
pub fn module_with_dependencies(tree: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let by_name = modules_by_name(tree)?;
    let out = tree.parent().unwrap_or(tree).join("unpacked-modules");
    let mut order = Vec::new();
    visit(&name.replace('-', "_"), &by_name, &out, &mut order, 0)?;
    Ok(order)
}

/// The `depends=` field of a module's `.modinfo`.
fn depends(ko: &[u8]) -> anyhow::Result<Vec<String>> {
    let file = object::File::parse(ko)?;
    let modinfo = file.section_by_name(".modinfo").ok_or_else(|| anyhow!("module without .modinfo"))?;
    let data = modinfo.data()?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok()?.strip_prefix("depends="))
        .flat_map(|d| d.split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::config_differences;

    #[test]
    fn config_differences_name_each_changed_option() {
        let stock = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_D=m\n";
        let same = "CONFIG_A=y\nCONFIG_C=\"x\"\nCONFIG_D=m\nCONFIG_E=y\n";
        assert!(config_differences(stock, same).is_empty());
        let dropped = "CONFIG_C=\"x\"\nCONFIG_B=y\nCONFIG_D=y\n";
        assert_eq!(
            config_differences(stock, dropped),
            ["CONFIG_A: stock y, here n", "CONFIG_B: stock n, here y", "CONFIG_D: stock m, here y"]
        );
    }
}
