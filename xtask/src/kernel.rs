//! A guest kernel: what the VM boots and what modules build against.
//!
//! Two flavors, both proven by every suite: Debian's stock kernel,
//! unmodified (xtask/src/stock_kernel.rs), and kmend's debug kernel, small
//! and full of checkers (xtask/src/debug_kernel.rs). Both are built with
//! the toolchain chroot's compilers (xtask/src/chroot.rs).

use std::{
    fs,
    path::{
        Path,
        PathBuf, //
    },
    process::Command,
};

use anyhow::Context as _;

use crate::{
    chroot::Chroot,
    pins, //
};

/// Which kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// kmend's debug kernel: lockdep, KFENCE, hardening, KASLR, 4 vCPUs.
    Debug,
    /// Debian's stock kernel image, unmodified.
    Stock,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Stock => "stock",
        }
    }
}

/// A kernel ready to boot and to build modules against.
#[derive(Clone)]
pub struct Kernel {
    pub flavor: Flavor,
    pub chroot: Chroot,
    /// The source tree.
    pub src: PathBuf,
    /// The `O=` build tree (what out-of-tree modules build against).
    pub build: PathBuf,
    /// What QEMU boots.
    pub bzimage: PathBuf,
    /// `uname -r`.
    pub release: String,
    /// An ELF image of the kernel's code with its build-id note.
    pub vmlinux: PathBuf,
    /// The symbols, when `vmlinux` has none (the stock image is stripped).
    pub system_map: Option<PathBuf>,
    /// Modules the guest loads first to reach its disk, in load order.
    pub boot_modules: Vec<PathBuf>,
    /// The kernel's own modules as its package ships them (`*.ko.xz`), for
    /// patches to code built into one (the stock kernel; `None` for the
    /// debug kernel, which builds what it needs into its image).
    pub modules: Option<PathBuf>,
}

impl Kernel {
    /// `make` against this kernel's build tree, in the chroot, which also
    /// sees the host directories `binds`.
    pub fn make_binding(&self, binds: &[PathBuf]) -> Command {
        let mut c = make_in_binding(&self.chroot, &self.src, &self.build, binds);
        if self.flavor == Flavor::Stock {
            c.arg(format!("KERNELRELEASE={}", pins::STOCK_RELEASE));
        }
        c
    }

    /// A copy of module `ko` without debug information, as distributions
    /// install modules (`INSTALL_MOD_STRIP`): what the VM loads and what an
    /// artifact ships. Symbols and relocations stay.
    pub fn strip_debug(&self, ko: &Path) -> anyhow::Result<PathBuf> {
        let out = ko.with_extension("stripped.ko");
        let newer = |a: &Path, b: &Path| -> bool {
            let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
            matches!((m(a), m(b)), (Some(x), Some(y)) if x >= y)
        };
        if !newer(&out, ko) {
            let dir = ko.parent().unwrap_or(Path::new("/"));
            crate::run::exec(
                self.chroot
                    .command(dir)
                    .arg(format!("{}strip", pins::CROSS_COMPILE))
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(&out)
                    .arg(ko),
            )
            .with_context(|| format!("strip {}", ko.display()))?;
        }
        Ok(out)
    }

    /// Where this kernel's modules and patches are built.
    pub fn out_dir(&self, what: &str) -> PathBuf {
        crate::paths::cache().join(format!("build/{what}-{}-{}", self.flavor.name(), self.release))
    }
}

/// `make -C <src> O=<build>` in the chroot, with the stock kernel's compiler
/// names (so `CONFIG_CC_VERSION_TEXT` comes out as Debian's).
pub fn make_in(chroot: &Chroot, src: &Path, build: &Path) -> Command {
    make_in_binding(chroot, src, build, &[])
}

fn make_in_binding(chroot: &Chroot, src: &Path, build: &Path, binds: &[PathBuf]) -> Command {
    let mut c = chroot.command_binding(build, binds);
    c.arg("make")
        .arg("-C")
        .arg(src)
        .arg(format!("O={}", build.display()))
        .arg(format!("CROSS_COMPILE={}", pins::CROSS_COMPILE))
        .arg(format!("CC={}", pins::CC))
        .arg(format!("HOSTCC={}", pins::HOSTCC));
    c
}

/// `-jN` for this machine.
pub fn jobs() -> String {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    format!("-j{}", n + 1)
}

/// The GNU build id of an ELF file (the kernel identity patches are tied to).
pub fn build_id(elf: &Path) -> anyhow::Result<String> {
    use object::Object as _;
    let data = fs::read(elf).with_context(|| format!("read {}", elf.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("{}: not ELF", elf.display()))?;
    let id = file.build_id()?.with_context(|| format!("{}: no GNU build id", elf.display()))?;
    Ok(hex::encode(id))
}
