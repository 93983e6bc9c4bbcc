//! `cargo xtask setup`: everything the build needs, idempotent.
//!
//! Host packages come from apt; pinned tools from `cargo install` into the
//! cache; the kernel source is Debian's `linux-source-7.2` from the sid
//! suite, fetched with `apt-get download` under a throwaway apt
//! configuration derived from this machine's own sources (the machine's apt
//! configuration is never changed, and no archive host is written here).

use std::{
    fs,
    path::{
        Path,
        PathBuf, //
    },
    process::Command,
};

use anyhow::{
    Context as _,
    anyhow,
    bail, //
};

use crate::{
    paths,
    run::{
        exec,
        exec_logged,
        output, //
    },
};

/// Debian packages the build and the VM need.
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86", // the test VM
    "build-essential", // the kernel's C side
    "flex",
    "bison",
    "bc",
    "libelf-dev", // objtool
    "libssl-dev",
    "clang-19", // bindgen's libclang must be >= 17; bookworm has 19
    "libclang-19-dev",
    "llvm-19",
    "lld-19",
    "busybox-static", // the guest's userland
    "cpio",
    "kmod",
    "xz-utils",
    "rsync",
    "musl-tools", // C code in static (musl) userspace crates
    "tinyproxy", // a real HTTP proxy for the agent's proxy tests
];

/// Tools installed with `cargo install`, pinned (see issue #2 for why these).
const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    // (crate, version, binary)
    ("bindgen-cli", "0.73.2", "bindgen"),
    // 0.10.3 links the Rust toolchain's own LLVM: no system LLVM needed.
    ("bpf-linker", "0.10.3", "bpf-linker"),
];

/// The kernel source package, from the sid suite.
pub const KERNEL_PACKAGE: &str = "linux-source-7.2";

/// Runs every setup step.
pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    rust_components()?;
    cargo_tools()?;
    let src = kernel_source()?;
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

fn cargo_tools() -> anyhow::Result<()> {
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

/// The kernel source: cached package if any, else downloaded from sid.
pub fn kernel_source() -> anyhow::Result<KernelSource> {
    let src = paths::cache().join("src");
    fs::create_dir_all(&src)?;
    let deb = match cached_deb(&src)? {
        Some(deb) => deb,
        None => download_deb(&src)?,
    };
    let version = deb_version(&deb)?;
    let dir = src.join(KERNEL_PACKAGE);
    let stamp = src.join(format!("{KERNEL_PACKAGE}.version"));
    if !(dir.join("Makefile").exists() && crate::run::stamp_matches(&stamp, &version)) {
        println!("xtask: extracting {}", deb.display());
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let unpack = src.join("unpack");
        if unpack.exists() {
            fs::remove_dir_all(&unpack)?;
        }
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
        let tarball = unpack.join(format!("usr/src/{KERNEL_PACKAGE}.tar.xz"));
        exec(Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(&src))?;
        fs::remove_dir_all(&unpack)?;
        crate::run::write_stamp(&stamp, &version)?;
    }
    Ok(KernelSource { dir, version })
}

fn cached_deb(src: &Path) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{KERNEL_PACKAGE}_");
    let mut debs: Vec<PathBuf> = fs::read_dir(src)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort();
    Ok(debs.pop())
}

fn deb_version(deb: &Path) -> anyhow::Result<String> {
    let v = output(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg("Version"))?;
    Ok(v.trim().to_owned())
}

/// The machine's Debian archive (URI and keyring), read from its apt sources.
fn debian_archive() -> anyhow::Result<(String, String)> {
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "sources") {
                    texts.push(fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
    }
    // deb822 stanzas: the first one with a suite that is a plain codename
    // (not -security/-updates/-backports) and the main component.
    for text in &texts {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
            let plain = suites.split_whitespace().any(|s| !s.contains('-'));
            let main = field("Components:").is_some_and(|c| c.split_whitespace().any(|c| c == "main"));
            if plain && main && !uris.contains("security") {
                let uri = uris.split_whitespace().next().unwrap_or_default().to_owned();
                let keyring = field("Signed-By:")
                    .unwrap_or_else(|| "/usr/share/keyrings/debian-archive-keyring.gpg".to_owned());
                return Ok((uri, keyring));
            }
        }
    }
    // One-line format.
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"deb") && f.len() >= 4 && !f[1].starts_with('[') && !f[2].contains('-') {
            return Ok((f[1].to_owned(), "/usr/share/keyrings/debian-archive-keyring.gpg".to_owned()));
        }
    }
    bail!("no Debian archive found in this machine's apt sources (/etc/apt/sources.list[.d])")
}

fn download_deb(src: &Path) -> anyhow::Result<PathBuf> {
    let (uri, keyring) = debian_archive()?;
    println!("xtask: downloading {KERNEL_PACKAGE} from the sid suite of the machine's Debian archive");
    let tmp = paths::cache().join("apt-sid");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    for d in ["lists/partial", "cache/archives/partial", "parts"] {
        fs::create_dir_all(tmp.join(d))?;
    }
    let list = tmp.join("sources.list");
    fs::write(&list, format!("deb [signed-by={keyring}] {uri} sid main\n"))?;
    let opts = |c: &mut Command| {
        c.arg(format!("-oDir::Etc::SourceList={}", list.display()))
            .arg(format!("-oDir::Etc::SourceParts={}", tmp.join("parts").display()))
            .arg(format!("-oDir::Etc::PreferencesParts={}", tmp.join("parts").display()))
            .arg(format!("-oDir::State::Lists={}", tmp.join("lists").display()))
            .arg(format!("-oDir::Cache={}", tmp.join("cache").display()))
            .arg("-oAPT::Sandbox::User=root")
            .arg("-oDebug::NoLocking=1");
    };
    let log = paths::cache().join("logs/apt-sid.log");
    let mut update = Command::new("apt-get");
    opts(&mut update);
    exec_logged(update.arg("update"), &log)?;
    let mut download = Command::new("apt-get");
    opts(&mut download);
    exec_logged(download.current_dir(src).args(["download", KERNEL_PACKAGE]), &log)?;
    fs::remove_dir_all(&tmp).ok();
    cached_deb(src)?.ok_or_else(|| anyhow!("apt-get download left no {KERNEL_PACKAGE} package in {}", src.display()))
        .context("downloading the kernel source")
}
