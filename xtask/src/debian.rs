//! Debian's archive, reached through the machine's own apt sources.
//!
//! A throwaway apt configuration (lists and cache under the build cache)
//! names one suite of the archive this machine already uses; the machine's
//! apt configuration is never changed and no archive host is written in the
//! repository. The archive is a snapshot whose Release files may be past
//! their `Valid-Until`, so that check is off; signatures are still checked.

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
    bail, //
};

use crate::{
    paths,
    pins::Pkg,
    run::{
        exec_logged,
        output, //
    },
};

/// The machine's Debian archive: its URI and keyring.
pub struct Archive {
    pub uri: String,
    pub keyring: String,
}

/// Reads the machine's apt sources for its Debian archive.
pub fn archive() -> anyhow::Result<Archive> {
    let mut texts = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources") {
                texts.push(fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    // deb822 stanzas: the first one with a plain codename suite (not
    // -security/-updates/-backports) and the main component.
    for text in &texts {
        for stanza in text.split("\n\n") {
            let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
            let plain = suites.split_whitespace().any(|s| !s.contains('-'));
            let main = field("Components:").is_some_and(|c| c.split_whitespace().any(|c| c == "main"));
            if plain && main && !uris.contains("security") {
                return Ok(Archive {
                    uri: uris.split_whitespace().next().unwrap_or_default().to_owned(),
                    keyring: field("Signed-By:")
                        .unwrap_or_else(|| "/usr/share/keyrings/debian-archive-keyring.gpg".to_owned()),
                });
            }
        }
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"deb") && f.len() >= 4 && !f[1].starts_with('[') && !f[2].contains('-') {
            return Ok(Archive {
                uri: f[1].to_owned(),
                keyring: "/usr/share/keyrings/debian-archive-keyring.gpg".to_owned(),
            });
        }
    }
    bail!("no Debian archive found in this machine's apt sources (/etc/apt/sources.list[.d])")
}

/// apt options that keep the machine's own configuration and lists untouched.
pub const NO_VALID_UNTIL: &str = "-oAcquire::Check-Valid-Until=false";

/// A throwaway apt configuration for one suite.
pub struct Apt {
    dir: PathBuf,
    suite: String,
}

impl Apt {
    /// Sets up (once) and updates the lists of `suite`.
    pub fn new(suite: &str) -> anyhow::Result<Self> {
        let archive = archive()?;
        let dir = paths::cache().join(format!("apt/{suite}"));
        for d in ["lists/partial", "cache/archives/partial", "parts"] {
            fs::create_dir_all(dir.join(d))?;
        }
        fs::write(
            dir.join("sources.list"),
            format!("deb [signed-by={}] {} {suite} main\n", archive.keyring, archive.uri),
        )?;
        let apt = Self { dir, suite: suite.to_owned() };
        exec_logged(apt.command("apt-get").arg("update"), &paths::cache().join(format!("logs/apt-{suite}.log")))
            .with_context(|| format!("apt-get update of the '{suite}' suite"))?;
        Ok(apt)
    }

    /// `apt-get`/`apt-cache` with this configuration.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = &self.dir;
        c.arg(format!("-oDir::Etc::SourceList={}", d.join("sources.list").display()))
            .arg(format!("-oDir::Etc::SourceParts={}", d.join("parts").display()))
            .arg(format!("-oDir::Etc::PreferencesParts={}", d.join("parts").display()))
            .arg(format!("-oDir::State::Lists={}", d.join("lists").display()))
            .arg(format!("-oDir::Cache={}", d.join("cache").display()))
            .arg("-oAPT::Sandbox::User=root")
            .arg("-oDebug::NoLocking=1")
            .arg(NO_VALID_UNTIL);
        c
    }

    /// Downloads `pkg` at its pinned version into `dir` (kept: a second call
    /// finds it there); fails naming the package when the suite lacks it.
    pub fn download(&self, pkg: Pkg, dir: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dir)?;
        if let Some(deb) = cached(pkg, dir) {
            return Ok(deb);
        }
        let known = output(self.command("apt-cache").args(["madison", pkg.name])).unwrap_or_default();
        check_offered(&known, pkg, &self.suite)?;
        println!("xtask: downloading {} {}", pkg.name, pkg.version);
        exec_logged(
            self.command("apt-get").current_dir(dir).args(["download", &format!("{}={}", pkg.name, pkg.version)]),
            &paths::cache().join(format!("logs/download-{}.log", pkg.name)),
        )?;
        cached(pkg, dir).with_context(|| format!("apt-get download left no {} {} in {}", pkg.name, pkg.version, dir.display()))
    }
}

/// Fails, naming the package, the pinned version and what the suite has,
/// unless `apt-cache madison` output `madison` offers `pkg` at its version.
fn check_offered(madison: &str, pkg: Pkg, suite: &str) -> anyhow::Result<()> {
    let offered: Vec<&str> = madison.lines().filter_map(|l| l.split('|').nth(1).map(str::trim)).collect();
    if offered.contains(&pkg.version) {
        return Ok(());
    }
    bail!(
        "Debian's '{suite}' suite no longer has {} {} (it has: {}); update xtask/src/pins.rs",
        pkg.name,
        pkg.version,
        if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
    )
}

/// The downloaded `.deb` of `pkg` in `dir`, if there.
fn cached(pkg: Pkg, dir: &Path) -> Option<PathBuf> {
    // apt names files <name>_<version with ':' as %3a>_<arch>.deb.
    let prefix = format!("{}_{}_", pkg.name, pkg.version.replace(':', "%3a"));
    fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
    })
}

#[cfg(test)]
mod tests {
    use super::check_offered;
    use crate::pins::Pkg;

    #[test]
    fn a_version_the_archive_dropped_is_named() {
        let pkg = Pkg { name: "linux-source-7.2", version: "7.2.12-1" };
        let madison = "linux-source-7.2 |   7.2.13-1 | http://archive sid/main amd64 Packages\n\
                       linux-source-7.2 |   7.2.12-1 | http://archive forky/main amd64 Packages\n";
        assert!(check_offered(madison, pkg, "forky").is_ok());
        let gone = "linux-source-7.2 |   7.2.14-1 | http://archive forky/main amd64 Packages\n";
        let e = check_offered(gone, pkg, "forky").unwrap_err().to_string();
        assert!(e.contains("no longer has linux-source-7.2 7.2.12-1 (it has: 7.2.14-1)"), "{e}");
        assert!(check_offered("", pkg, "forky").unwrap_err().to_string().contains("(it has: none)"));
    }
}
