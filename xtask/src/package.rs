//! `cargo xtask package`: the Debian packages of the agent and of the fleet
//! server, built by cargo-deb from `[package.metadata.deb]` in
//! userspace/kmend/Cargo.toml and fleet/Cargo.toml.
//!
//! The package holds the static (musl) `kmend` binary, the two systemd
//! units (enabled on install, kmend.service started), /etc/kmend/kmend.toml
//! as a conffile, man pages and shell completions. The man pages and
//! completions are generated here by the binary itself (`kmend manpages`,
//! `kmend completions`), so they always match its command line.

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
    build,
    paths,
    run::{
        exec,
        output, //
    },
};

/// Where the package lands.
pub fn out_dir() -> PathBuf {
    // Not target/debian: cargo-deb clears that on every run.
    build::target_dir().join("packages")
}

/// Builds the package; `revision` overrides the Debian revision (`1`),
/// e.g. to make an upgrade of the same upstream version in a test.
/// Returns the `.deb`.
pub fn build(revision: Option<&str>) -> anyhow::Result<PathBuf> {
    crate::setup::cargo_tools()?;
    let binaries = build::userspace()?;
    let kmend = &binaries["kmend"];
    // cargo-deb rewrites `target/release/` in asset paths to the --target
    // release directory: the generated files live there.
    let dist = kmend.parent().context("kmend binary has no directory")?.join("kmend-dist");
    generate_docs(kmend, &dist)?;
    // cargo-deb may clear its output directory: another revision gets its own.
    let out = revision.map_or_else(out_dir, |r| out_dir().join(format!("revision-{r}")));
    cargo_deb("kmend", &out, revision)
}

/// The fleet server's package (its own output directory).
pub fn build_fleet() -> anyhow::Result<PathBuf> {
    crate::setup::cargo_tools()?;
    build::fleet_server()?;
    cargo_deb("kmend-fleet", &out_dir().join("fleet"), None)
}

/// `cargo deb` of workspace package `package`, built already for the musl
/// target, into `out`: the `.deb`.
fn cargo_deb(package: &str, out: &Path, revision: Option<&str>) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(out)?;
    let mut deb = build::cargo();
    deb.args(["deb", "-p", package, "--no-build", "--target", paths::MUSL_TARGET, "--output"]).arg(out);
    if let Some(r) = revision {
        deb.args(["--deb-revision", r]);
    }
    let printed = output(&mut deb).context("cargo deb (cargo-deb, installed by cargo xtask setup)")?;
    let path = PathBuf::from(printed.lines().last().context("cargo deb printed no package path")?.trim());
    let size = fs::metadata(&path).with_context(|| format!("the package {}", path.display()))?.len();
    println!("xtask: package {} ({:.1} MB)", path.display(), size as f64 / 1e6);
    Ok(path)
}

/// Man pages (gzipped, as Debian policy wants) and completion scripts.
fn generate_docs(kmend: &Path, dist: &Path) -> anyhow::Result<()> {
    if dist.exists() {
        fs::remove_dir_all(dist).with_context(|| format!("remove {}", dist.display()))?;
    }
    let man = dist.join("man");
    exec(Command::new(kmend).arg("manpages").arg(&man))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?.filter_map(|e| Some(e.ok()?.path())).collect();
    pages.sort();
    // -n: no name or time stamp inside, so the package is reproducible.
    exec(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    let completions = dist.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [("bash", "kmend.bash"), ("zsh", "_kmend"), ("fish", "kmend.fish")] {
        let script = output(Command::new(kmend).args(["completions", shell]))?;
        fs::write(completions.join(file), script).with_context(|| format!("write the {shell} completions"))?;
    }
    Ok(())
}
