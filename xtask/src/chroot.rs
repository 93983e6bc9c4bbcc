//! The kernel toolchain: a minbase chroot of Debian's suite with the exact
//! compilers that built the stock kernel (xtask/src/pins.rs).
//!
//! Both guest kernels, kmend.ko, the patches and the C test fixtures are
//! built in it, so one toolchain serves both kernels. Commands run in a
//! private mount namespace (`unshare --mount`) in which the build cache is
//! bound at its own path: paths are the same inside and outside, and the
//! mounts vanish with the command. Needs root (debootstrap, chroot, mount).

use std::{
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
    bail, //
};

use crate::{
    debian::{
        self,
        NO_VALID_UNTIL, //
    },
    paths,
    pins,
    run::{
        exec_logged,
        key,
        output,
        stamp_matches,
        write_stamp, //
    },
};

/// A ready chroot.
#[derive(Clone)]
pub struct Chroot {
    root: PathBuf,
    /// `lower:upper:work` when the root is an overlay (see [`ENTER`]).
    overlay: Option<String>,
}

/// Runs a command in the chroot, in a clean environment, with each
/// directory of `$KMEND_BINDS` (one a line) bound at its own path. With
/// `$KMEND_OVERLAY` (`lower:upper:work`) the root is first made an overlay
/// of a read-only `lower` root and a writable `upper` directory.
const ENTER: &str = r#"set -e
root=$1; dir=$2; shift 2
if [ -n "$KMEND_OVERLAY" ]; then
    lower=${KMEND_OVERLAY%%:*}; rest=${KMEND_OVERLAY#*:}
    upper=${rest%%:*}; work=${rest#*:}
    mkdir -p "$root" "$upper" "$work"
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
fi
binds=$KMEND_BINDS
IFS='
'
for b in $binds; do
    mkdir -p "$root$b"
    mount --bind "$b" "$root$b"
done
unset IFS
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
exec chroot "$root" /usr/bin/env -i -C "$dir" PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 HOME=/root "$@"
"#;

/// The chroot, created or completed as needed (about 5 minutes cold).
pub fn ensure() -> anyhow::Result<Chroot> {
    let versions: Vec<String> = pins::TOOLCHAIN.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    let stamp_key = key(&[pins::SUITE.as_bytes(), versions.join(" ").as_bytes(), pins::CHROOT_PACKAGES.join(" ").as_bytes()]);
    let dir = paths::cache().join(format!("chroot/{}-{stamp_key}", pins::SUITE));
    let root = dir.join("root");
    let chroot = Chroot { root, overlay: None };
    let stamp = dir.join("stamp");
    if stamp_matches(&stamp, &stamp_key) {
        return Ok(chroot);
    }
    if output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() != "0") {
        bail!("building the kernel toolchain chroot needs root (debootstrap, chroot, mount): run as root");
    }
    let start = Instant::now();
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove the incomplete chroot {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    println!("xtask: creating the {} toolchain chroot (about 5 min cold), log: {}", pins::SUITE, log("chroot").display());
    debootstrap(&chroot.root, &[], &log("chroot")).context("debootstrap of the toolchain chroot")?;
    exec_logged(chroot.command("/").args(["apt-get", NO_VALID_UNTIL, "update", "-q"]), &log("chroot-apt"))?;
    exec_logged(
        chroot
            .command("/")
            .args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", NO_VALID_UNTIL, "install", "-y", "-q", "--no-install-recommends"])
            .args(&versions)
            .args(pins::CHROOT_PACKAGES),
        &log("chroot-apt"),
    )
    .with_context(|| format!("installing the pinned toolchain ({}) in the chroot", versions.join(", ")))?;
    exec_logged(chroot.command("/").args(["apt-get", "clean"]), &log("chroot-apt"))?;
    write_stamp(&stamp, &stamp_key)?;
    println!("xtask: toolchain chroot ready in {:.1} min", start.elapsed().as_secs_f64() / 60.0);
    Ok(chroot)
}

/// A minbase Debian root of [`pins::SUITE`] in `root`, with `include`d
/// packages, from the machine's Debian archive.
pub fn debootstrap(root: &Path, include: &[&str], log: &Path) -> anyhow::Result<()> {
    let archive = debian::archive()?;
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", &format!("--keyring={}", archive.keyring)]);
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg(pins::SUITE)
        .arg(root)
        .arg(&archive.uri)
        // The host's debootstrap may predate the suite: sid's script fits every
        // current suite.
        .arg("/usr/share/debootstrap/scripts/sid");
    exec_logged(&mut cmd, log)
}

fn log(name: &str) -> PathBuf {
    paths::cache().join(format!("logs/{name}.log"))
}

impl Chroot {
    /// A throwaway copy of the root `lower`: every command sees `lower`
    /// with the changes made so far in `scratch`, and `lower` itself never
    /// changes.
    pub fn overlay(lower: &Path, scratch: &Path) -> Self {
        let overlay = format!("{}:{}:{}", lower.display(), scratch.join("upper").display(), scratch.join("work").display());
        Self { root: scratch.join("root"), overlay: Some(overlay) }
    }

    /// A command to run inside the chroot, in `dir` (a path under the cache
    /// or the repository, which are bound at their own paths, or inside the
    /// chroot); add the program and its arguments.
    pub fn command(&self, dir: impl AsRef<std::path::Path>) -> Command {
        self.command_binding(dir, &[])
    }

    /// [`Self::command`], with `extra` directories bound too (a patch
    /// source outside the repository).
    pub fn command_binding(&self, dir: impl AsRef<std::path::Path>, extra: &[PathBuf]) -> Command {
        let mut binds = vec![paths::cache(), paths::repo()];
        binds.extend(extra.iter().cloned());
        let binds: Vec<String> = binds.iter().map(|b| b.display().to_string()).collect();
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c", ENTER, "sh"])
            .arg(&self.root)
            .arg(dir.as_ref())
            .env("KMEND_BINDS", binds.join("\n"))
            .env("KMEND_OVERLAY", self.overlay.as_deref().unwrap_or(""));
        c
    }

    /// The compilers' own version lines: what a kernel build is keyed by.
    pub fn toolchain_id(&self) -> anyhow::Result<String> {
        output(self.command("/").args([
            "sh",
            "-c",
            &format!("{} --version | head -1; rustc --version; bindgen --version", pins::CC),
        ]))
    }
}
