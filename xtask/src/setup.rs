//! `cargo xtask setup`: everything the build needs, idempotent.
//!
//! Host packages come from apt; pinned tools from `cargo install` into the
//! cache; the kernel source (xtask/src/pins.rs) from Debian's archive with a
//! throwaway apt configuration (xtask/src/debian.rs); the kernel toolchain
//! is a chroot (xtask/src/chroot.rs).

use std::{
    fs,
    path::PathBuf,
    process::Command,
};

use crate::{
    debian,
    paths,
    pins,
    run::{
        exec,
        exec_logged,
        output, //
    },
};

/// Debian packages of the host (the kernel toolchain lives in the chroot).
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86", // the test VM
    "build-essential", // C code in userspace crates
    "debootstrap",     // the kernel toolchain chroot
    "zstd",            // the stock image is zstd-compressed
    "xz-utils",        // the stock modules are xz-compressed
    "busybox-static",  // the guest's userland
    "cpio",
    "kmod",
    "rsync",
    "musl-tools", // C code in static (musl) userspace crates
    "tinyproxy",  // a real HTTP proxy for the agent's proxy tests
    "openssl",    // a real TLS server and CA for the agent's TLS tests
    "python3-venv",   // ansible-core for the end-to-end test, in a venv
    "openssh-client", // Ansible reaches the test server over ssh
    "chromium",          // the fleet dashboard's browser test (headless)
    "fonts-dejavu-core", // so its screenshots show text
    "postgresql",        // the fleet server's tests on a real PostgreSQL
];

/// Tools installed with `cargo install`, pinned.
const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    // (crate, version, binary)
    // 0.10.3 links the Rust toolchain's own LLVM: no system LLVM needed.
    ("bpf-linker", "0.10.3", "bpf-linker"),
    // The agent's Debian package (`cargo xtask package`).
    ("cargo-deb", "3.8.0", "cargo-deb"),
];

/// Runs every setup step.
pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    rust_components()?;
    cargo_tools()?;
    let src = kernel_source()?;
    crate::chroot::ensure()?;
    println!("xtask: setup done (kernel source {} in {})", src.version, src.dir.display());
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

/// A command run as root (through sudo when we are not root).
fn root_cmd(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing host packages: {}", missing.join(" "));
    let log = paths::cache().join("logs/apt.log");
    exec_logged(root_cmd("apt-get").arg("update"), &log)?;
    exec_logged(
        root_cmd("env")
            .args(["DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "--no-install-recommends"])
            .args(&missing),
        &log,
    )
}

fn rust_components() -> anyhow::Result<()> {
    let components = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        exec(Command::new("rustup").args(["component", "add", "rust-src"]))?;
    }
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|l| l.trim() == paths::MUSL_TARGET) {
        exec(Command::new("rustup").args(["target", "add", paths::MUSL_TARGET]))?;
    }
    Ok(())
}

pub fn cargo_tools() -> anyhow::Result<()> {
    let root = paths::cache().join("tools");
    for (krate, version, bin) in CARGO_TOOLS {
        let path = root.join("bin").join(bin);
        let installed = output(Command::new(&path).arg("--version")).is_ok_and(|v| v.contains(version));
        if installed {
            continue;
        }
        println!("xtask: cargo install {krate}@{version}");
        exec_logged(
            Command::new("cargo")
                .args(["install", "--locked", "--force", &format!("{krate}@{version}"), "--root"])
                .arg(&root),
            &paths::cache().join(format!("logs/cargo-install-{krate}.log")),
        )?;
    }
    Ok(())
}

/// An extracted kernel source tree.
pub struct KernelSource {
    pub dir: PathBuf,
    /// Debian version of the source package, e.g. `7.2.13-1`.
    pub version: String,
}

/// The kernel source of both kernels (xtask/src/pins.rs), extracted once.
pub fn kernel_source() -> anyhow::Result<KernelSource> {
    source_package(pins::KERNEL_SOURCE, pins::SUITE)
}

/// A `linux-source-*` package of `suite`, unpacked once into the cache.
pub fn source_package(pkg: crate::pins::Pkg, suite: &str) -> anyhow::Result<KernelSource> {
    let src = paths::cache().join("src");
    let dir = src.join(format!("{}_{}", pkg.name, pkg.version));
    let stamp = src.join(format!("{}_{}.done", pkg.name, pkg.version));
    if !(dir.join("Makefile").exists() && stamp.exists()) {
        let deb = debian::Apt::new(suite)?.download(pkg, &src)?;
        println!("xtask: extracting {}", deb.display());
        for d in [&dir, &src.join("unpack")] {
            if d.exists() {
                fs::remove_dir_all(d)?;
            }
        }
        let unpack = src.join("unpack");
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
        let tarball = unpack.join(format!("usr/src/{}.tar.xz", pkg.name));
        exec(Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(&unpack))?;
        fs::rename(unpack.join(pkg.name), &dir)?;
        fs::remove_dir_all(&unpack)?;
        fs::write(&stamp, pkg.version)?;
    }
    Ok(KernelSource { dir, version: pkg.version.to_owned() })
}
