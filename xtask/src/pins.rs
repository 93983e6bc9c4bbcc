//! Every version taken from Debian's archive, pinned in one place.
//!
//! Both guest kernels are built from one source: the Debian-patched
//! `linux-source-7.2` that Debian's stock 7.2.12 kernel was built from. The
//! toolchain is the one that built that kernel (its `.config` records
//! `CONFIG_CC_VERSION_TEXT` and `CONFIG_RUSTC_VERSION_TEXT`): Rust modules
//! load into the stock kernel only if their crate hashes match its `rust/`
//! crates, and the hash covers rustc's full version string, so an upstream
//! rustup toolchain of the same number does not do. When the archive drops
//! one of these versions, `cargo xtask setup` fails naming it; change it here.

/// A Debian binary package at an exact version.
#[derive(Clone, Copy, Debug)]
pub struct Pkg {
    pub name: &'static str,
    pub version: &'static str,
}

/// The suite everything below comes from (a throwaway apt configuration
/// names it; the machine's own apt sources are never changed).
pub const SUITE: &str = "forky";

/// The kernel source of both guest kernels.
pub const KERNEL_SOURCE: Pkg = Pkg { name: "linux-source-7.2", version: "7.2.12-1" };

/// The next stable update of [`KERNEL_SOURCE`] (in sid): the difference
/// between the two is upstream stable fixes, which `cargo xtask fixes`
/// turns into live patches for the stock kernel.
pub const FIXES_SOURCE: Pkg = Pkg { name: "linux-source-7.2", version: "7.2.13-1" };
pub const FIXES_SUITE: &str = "sid";

/// `uname -r` of Debian's stock kernel.
pub const STOCK_RELEASE: &str = "7.2.12+deb14-amd64";

/// The stock kernel: image, modules, `.config` (base) and build tree
/// (headers: `Module.symvers`), all of one version.
pub const STOCK_IMAGE: Pkg = Pkg { name: "linux-binary-7.2.12+deb14-amd64", version: "7.2.12-1" };
pub const STOCK_MODULES: Pkg = Pkg { name: "linux-modules-7.2.12+deb14-amd64", version: "7.2.12-1" };
pub const STOCK_BASE: Pkg = Pkg { name: "linux-base-7.2.12+deb14-amd64", version: "7.2.12-1" };
pub const STOCK_HEADERS: Pkg = Pkg { name: "linux-headers-7.2.12+deb14-amd64", version: "7.2.12-1" };
/// Only its `System.map` is read: the image itself has no symbol table.
/// The map is near the start of the package's data, so nothing past it is
/// decompressed, and the 1.2 GB download is deleted once the map is out.
pub const STOCK_DEBUG: Pkg = Pkg { name: "linux-image-7.2.12+deb14-amd64-dbg", version: "7.2.12-1" };

/// The kernel toolchain, installed in a minbase chroot of [`SUITE`].
pub const TOOLCHAIN: &[Pkg] = &[
    Pkg { name: "rustc", version: "1.97.1+dfsg1-1" },
    Pkg { name: "rust-src", version: "1.97.1+dfsg1-1" },
    Pkg { name: "gcc-16", version: "16.2.0-3" },
];

/// Unversioned build dependencies of the chroot (whatever the suite has).
pub const CHROOT_PACKAGES: &[&str] = &[
    "bindgen",
    "libclang-dev",
    "libc6-dev",
    "make",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "openssl", // Kconfig asks `openssl` which key types it supports
    "dwarves",
    "python3",
    "perl",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
];

/// What a Debian server of [`SUITE`] is made of, on top of minbase: the
/// root that the package test installs kmend's package into (systemd as
/// init, udev, kmod, networking, ssh and python3 and python3-apt for Ansible).
pub const SERVER_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "init-system-helpers",
    "openssh-server",
    "python3",
    "python3-apt", // Ansible's apt module
];

/// The C compiler as the stock kernel's build names it.
pub const CROSS_COMPILE: &str = "x86_64-linux-gnu-";
pub const CC: &str = "x86_64-linux-gnu-gcc-16";
pub const HOSTCC: &str = "gcc-16";
