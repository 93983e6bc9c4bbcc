//! kmend's debug kernel: `tinyconfig` plus `vm-images/kernel.config`, built
//! out of tree in the toolchain chroot, incrementally.
//!
//! Small, so it builds in minutes, but with the hardening of the kernels
//! servers run (IBT, retpolines, return thunks, call padding and depth
//! tracking, KASLR, a preemption model) and the checkers that catch kmend's
//! bugs (lockdep, PROVE_RCU, DEBUG_ATOMIC_SLEEP, KFENCE). A stamp keyed by
//! everything that produced the image lets a warm run skip `make` entirely.

use std::{
    fs,
    path::Path,
    time::Instant,
};

use anyhow::{
    Context as _,
    bail, //
};

use crate::{
    chroot::Chroot,
    kernel::{
        Flavor,
        Kernel,
        jobs,
        make_in, //
    },
    module_signing,
    paths,
    run::{
        exec_logged,
        key,
        stamp_matches,
        write_stamp, //
    },
    setup::KernelSource,
};

/// The config fragment, relative to the repository.
const FRAGMENT: &str = "vm-images/kernel.config";

/// Configures and builds the debug kernel (or finds it up to date).
pub fn build(chroot: &Chroot, src: &KernelSource) -> anyhow::Result<Kernel> {
    let repo = paths::repo();
    let mut fragment = fs::read_to_string(repo.join(FRAGMENT)).with_context(|| format!("read {FRAGMENT}"))?;
    // The kernel trusts the feed's module-signing certificate, as a
    // machine that enrolled it does.
    let cert = module_signing::certificate(&module_signing::key(chroot)?)?;
    fragment.push_str(&format!("CONFIG_SYSTEM_TRUSTED_KEYS=\"{}\"\n", cert.display()));
    let fragment = fragment.into_bytes();
    // Keyed by the options, not the comments around them.
    let options: Vec<&str> = std::str::from_utf8(&fragment)?.lines().map(str::trim).filter(|l| l.starts_with("CONFIG_")).collect();
    let stamp_key = key(&[
        src.version.as_bytes(),
        options.join("\n").as_bytes(),
        &fs::read(&cert)?,
        chroot.toolchain_id()?.as_bytes(),
    ]);
    let build = paths::cache().join(format!("build/debug-{}", src.version));
    let bzimage = build.join("arch/x86/boot/bzImage");
    let stamp = build.join(".kmend-stamp");
    let kernel = |release: String| Kernel {
        flavor: Flavor::Debug,
        chroot: chroot.clone(),
        src: src.dir.clone(),
        build: build.clone(),
        bzimage: bzimage.clone(),
        release,
        vmlinux: build.join("vmlinux"),
        system_map: None,
        boot_modules: Vec::new(),
        modules: None,
    };
    if bzimage.exists() && stamp_matches(&stamp, &stamp_key) {
        return Ok(kernel(release(&build)?));
    }
    fs::create_dir_all(&build)?;
    let log = paths::cache().join("logs/kernel.log");
    let config_log = paths::cache().join("logs/kernel-config.log");
    println!("xtask: configuring the debug kernel ({}), log: {}", build.display(), config_log.display());
    exec_logged(make_in(chroot, &src.dir, &build).arg("tinyconfig"), &config_log)?;
    // The chroot sees the cache, not the repository.
    let merge = build.join("kmend-fragment.config");
    fs::write(&merge, &fragment)?;
    exec_logged(
        chroot
            .command(&src.dir)
            .arg("scripts/kconfig/merge_config.sh")
            .args(["-m", "-O"])
            .arg(&build)
            .arg(build.join(".config"))
            .arg(&merge),
        &config_log,
    )?;
    exec_logged(make_in(chroot, &src.dir, &build).arg("olddefconfig"), &config_log)?;
    check_config(&build, &String::from_utf8_lossy(&fragment))?;
    println!("xtask: building the debug kernel (about 20 minutes cold on 2 cores), log: {}", log.display());
    let start = Instant::now();
    exec_logged(make_in(chroot, &src.dir, &build).arg(jobs()).args(["bzImage", "modules"]), &log)?;
    println!("xtask: debug kernel built in {:.1} min", start.elapsed().as_secs_f64() / 60.0);
    write_stamp(&stamp, &stamp_key)?;
    Ok(kernel(release(&build)?))
}

fn release(build: &Path) -> anyhow::Result<String> {
    let path = build.join("include/config/kernel.release");
    Ok(fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?.trim().to_owned())
}

/// Fails if Kconfig dropped an option the fragment asks for (a missing
/// dependency would otherwise surface much later as a confusing failure).
fn check_config(build: &Path, fragment: &str) -> anyhow::Result<()> {
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
