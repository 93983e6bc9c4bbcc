//! The end-to-end test on a real Debian server: Debian's stock kernel
//! booting a forky root filesystem (xtask/src/server_root.rs) from a virtio
//! disk with systemd as PID 1, networking by systemd-networkd over QEMU's
//! user network, and a signed feed served from the host's loopback.
//!
//! First boot (`kmend_e2e=install`): tests/server/kmend-e2e installs the
//! package with dpkg, and the host runs the repository's Ansible role
//! (deploy/ansible/roles/kmend) against the server over ssh (a loopback
//! port forward) twice: the first writes the config and the feed's root,
//! registers the server (`kmend register`) with a kmend-fleet on the
//! host's loopback, in a group whose rollout gate lets one host at a time
//! apply, and restarts the daemon; the second must change nothing (its
//! registration task finds the server registered). From then on the
//! driver only watches: the daemon must fetch the feed's patch for this
//! kernel (a real stable fix), ask the gate, apply it, and prove it itself
//! with eBPF; `kmend verify` must prove it too. Then the host checks the
//! fleet: it must list the server with the real kernel's build id and the
//! applied patch, and record the rollout step done. Second boot
//! (`kmend_e2e=reboot`), the feed server stopped: kmend-boot.service must
//! have re-applied the patch from the cache before the network came up.
//!
//! kmend.ko is not in the image: the feed carries it as the core artifact
//! for the stock kernel, and the daemon loads it before the patch (and
//! kmend-boot from its cache at the second boot).

use std::{
    collections::BTreeMap,
    fs,
    io::{
        BufRead as _,
        BufReader,
    },
    path::{
        Path,
        PathBuf, //
    },
    process::{
        Child,
        Command,
        Stdio, //
    },
    time::Duration,
};

use anyhow::{
    Context as _,
    anyhow, //
};

use crate::{
    ansible,
    build::Artifacts,
    initramfs,
    package,
    paths,
    run::exec,
    server_root,
    vm::{
        self,
        GuestRun,
        VmOptions, //
    },
};

/// The patch the feed offers: a real stable fix built from its C diff.
const PATCH: &str = "kp_stable_do_wait";

/// How long the server must stay healthy, patch applied and proven, for
/// its rollout step to be done (the group's gate).
const HEALTH_WINDOW: &str = "10s";

/// Kills the feed (or fleet) server when dropped.
struct FeedServer(Child);

impl Drop for FeedServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the end-to-end test produced: both boots in order, and the
/// host's own checks (the Ansible runs) with their outcome.
pub struct ServerRuns {
    pub boots: Vec<GuestRun>,
    pub host_checks: Vec<(String, bool)>,
}

/// Both boots, and the Ansible runs during the first.
pub fn run(stock: &Artifacts, opts: &VmOptions) -> anyhow::Result<ServerRuns> {
    println!("xtask: end-to-end test on a Debian server (stock kernel, systemd, the package, a signed feed)");
    let kmend = stock.files.get("kmend").context("no kmend binary among the build outputs")?;
    let artifact = stock.files.get(&format!("{PATCH}.kmpatch")).with_context(|| format!("no {PATCH}.kmpatch among the stock kernel's patches"))?;
    let deb = package::build(None)?;
    let lower = server_root::ensure()?;
    let dir = paths::cache().join("server-vm");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let playbook = ansible::playbook()?;
    let ssh_key = dir.join("ssh/id");
    fs::create_dir_all(dir.join("ssh"))?;
    exec(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&ssh_key))?;
    let core = core_artifact(stock, kmend, &dir.join("core"))?;
    let (server, url) = feed(kmend, &[&core, artifact], &stock.kernel.release, &dir.join("feed"))?;
    let fleet = Fleet::start(&dir.join("fleet"))?;
    let root = dir.join("root");
    let feed_root = dir.join("feed/metadata/1.root.json");
    populate(stock, &lower, &root, &deb)?;
    let authorized = fs::read_to_string(ssh_key.with_extension("pub"))?;
    write(&root, "root/.ssh/authorized_keys", &authorized)?;
    let disk = dir.join("disk.img");
    exec(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "kmend-server", "-d"]).arg(&root).arg(&disk).arg("2G"))
        .context("make the server's disk image")?;
    fs::remove_dir_all(&root).ok();
    let initrd = dir.join("initramfs.cpio");
    initramfs::write_from("vm-images/server-initramfs.txt", &BTreeMap::new(), &stock.kernel.boot_modules, &[], &initrd)?;
    let ssh_port = free_port()?;
    let vars = serde_json::json!({
        "kmend_feed_url": url,
        "kmend_feed_root": feed_root,
        "kmend_package": deb,
        "kmend_jitter": "0",
        "kmend_interval": "10m",
        // The role registers the server, in a group gated one host at a
        // time: the daemon's own eBPF proof must move its rollout step on
        // (Fleet::check_rollout).
        "kmend_fleet_server": fleet.url,
        "kmend_fleet_key": fleet.key,
        "kmend_fleet_hostname": "kmend-server",
        "kmend_verify_after_apply": true,
        "kmend_verify_window": "5s",
    });
    let build_id = crate::kernel::build_id(&stock.kernel.vmlinux)?;
    let mut host_checks = Vec::new();
    let mut ansible_turn = |line: &str| {
        if line.contains("kmend-guest: waiting for the host's Ansible runs") {
            host_checks = ansible_twice(&playbook, ssh_port, &ssh_key, &vars);
            tell(ssh_port, &ssh_key, "/run/kmend-e2e-ansible-done");
        }
        if line.contains("kmend-guest: ready for the host's fleet checks") {
            host_checks.push(fleet.check_listed(&build_id));
            host_checks.push(fleet.check_rollout());
            tell(ssh_port, &ssh_key, "/run/kmend-e2e-fleet-checked");
        }
    };
    let mut boots = vec![boot(stock, &initrd, &disk, "install", Some(ssh_port), opts, &mut ansible_turn)?];
    for (step, name) in [("ansible", "ansible: the guest never asked for the Ansible runs"), ("fleet", "fleet: the guest never asked for the fleet checks")] {
        if !host_checks.iter().any(|(n, _)| n.starts_with(step)) {
            host_checks.push((name.to_owned(), false));
        }
    }
    // The second boot has no feed to reach.
    drop(server);
    boots.push(boot(stock, &initrd, &disk, "reboot", None, opts, &mut |_| {})?);
    Ok(ServerRuns { boots, host_checks })
}

/// A kmend-fleet on the host's loopback with one group, `servers`.
struct Fleet {
    bin: PathBuf,
    db: PathBuf,
    /// How the guest reaches it (QEMU's user network).
    url: String,
    key: String,
    _server: FeedServer,
}

impl Fleet {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = crate::build::fleet_server()?;
        fs::create_dir_all(dir)?;
        let db = dir.join("fleet.sqlite");
        let token = dir.join("admin.token");
        fs::write(&token, "e2e-admin-token-0123456789abcdef0123456789\n")?;
        let key = crate::run::output(Command::new(&bin).args(["group", "add", "--db"]).arg(&db).arg("servers"))?.trim().to_owned();
        // One host at a time, each proven and healthy for HEALTH_WINDOW.
        exec(Command::new(&bin).args(["group", "policy", "--db"]).arg(&db).args(["servers", "--rollout-max", "1", "--health-window", HEALTH_WINDOW]))?;
        let mut child = Command::new(&bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(&db)
            .arg("--admin-token-file")
            .arg(&token)
            .stdout(Stdio::piped())
            .spawn()
            .context("start kmend-fleet serve")?;
        let stdout = child.stdout.take().context("fleet server stdout")?;
        let server = FeedServer(child);
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let listening: serde_json::Value = serde_json::from_str(&first).with_context(|| format!("kmend-fleet serve printed '{}'", first.trim()))?;
        let port = listening["listening"].as_str().and_then(|a| a.rsplit(':').next()).context("kmend-fleet serve: no address")?.to_owned();
        println!("xtask: fleet server on 127.0.0.1:{port}");
        Ok(Self { bin, db, url: format!("http://10.0.2.2:{port}"), key, _server: server })
    }

    /// Whether the group's rollout step for the server is done: the gate
    /// let it apply, its daemon's own `kmend verify` proved the patch, and
    /// it stayed healthy for the health window. Waits for it a while: the
    /// window may still be running.
    fn check_rollout(&self) -> (String, bool) {
        let name = "fleet: the gated group's rollout step for the server is done, proven by its daemon";
        let mut last = serde_json::Value::Null;
        for _ in 0..60 {
            let listed = crate::run::output(Command::new(&self.bin).args(["group", "list", "--db"]).arg(&self.db));
            let groups: serde_json::Value = listed.as_deref().ok().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
            let group = groups["groups"].as_array().and_then(|g| g.iter().find(|g| g["group"] == "servers")).cloned().unwrap_or_default();
            let step = group["steps"].as_array().and_then(|s| s.iter().find(|s| s["hostname"] == "kmend-server")).cloned().unwrap_or_default();
            let targets_patch = step["target"].as_array().is_some_and(|t| t.iter().any(|t| t.as_str().is_some_and(|t| t.starts_with(PATCH))))
                || step["target"].as_str().is_some_and(|t| t.contains(PATCH));
            if step["state"] == "done" && !step["proven_at"].is_null() && targets_patch && group["halted"].is_null() {
                println!("{name} ... ok (target {}, proven at {}, done at {})", step["target"], step["proven_at"], step["finished"]);
                return (name.to_owned(), true);
            }
            last = group;
            std::thread::sleep(Duration::from_secs(2));
        }
        println!("{name} ... FAILED\n  {last}");
        (name.to_owned(), false)
    }

    /// Whether the fleet lists the server, registered by the role, with
    /// the running kernel's build id and the applied patch.
    fn check_listed(&self, build_id: &str) -> (String, bool) {
        let name = "fleet: the server registered and checked in with its kernel and patch";
        let listed = crate::run::output(Command::new(&self.bin).arg("hosts").arg("--db").arg(&self.db));
        let hosts: serde_json::Value = listed.as_deref().ok().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
        let host = hosts["hosts"].as_array().and_then(|h| h.iter().find(|h| h["hostname"] == "kmend-server")).cloned().unwrap_or_default();
        let report = &host["report"];
        let patched = report["patches"].as_array().is_some_and(|p| p.iter().any(|p| p["id"] == PATCH));
        let good = report["kernel"]["build_id"] == build_id && patched;
        println!(
            "{name} ... {} (build id {}, effective version {}, patches {})",
            if good { "ok" } else { "FAILED" },
            report["kernel"]["build_id"],
            report["effective_version"],
            report["patches"].as_array().map(|p| p.iter().map(|p| p["id"].to_string()).collect::<Vec<_>>().join(",")).unwrap_or_default()
        );
        if !good {
            println!("  {hosts}");
        }
        (name.to_owned(), good)
    }
}

/// A free loopback port (for QEMU's ssh forward).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Tells the guest to go on (it waits up to 5 min for `file`).
fn tell(port: u16, key: &Path, file: &str) {
    let told = Command::new("ssh")
        .args(["-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30", "-p", &port.to_string(), "-i"])
        .arg(key)
        .args(["root@127.0.0.1", &format!("touch {file}")])
        .status();
    if !told.is_ok_and(|s| s.success()) {
        println!("xtask: could not tell the server to go on ({file}; it waits 5 min)");
    }
}

/// The role, twice: the first run succeeds, the second changes nothing.
fn ansible_twice(playbook: &Path, port: u16, key: &Path, vars: &serde_json::Value) -> Vec<(String, bool)> {
    let mut checks = Vec::new();
    for (n, name) in [(1, "ansible: the role runs against the server"), (2, "ansible: a second run changes nothing")] {
        let check = match ansible::run_play(playbook, port, key, vars) {
            Ok(run) => {
                let good = run.ok && (n == 1 || run.changed == Some(0));
                let recap = run.output.lines().find(|l| l.starts_with("127.0.0.1") && l.contains("changed=")).unwrap_or("no recap").to_owned();
                println!("{name} ... {} ({})", if good { "ok" } else { "FAILED" }, recap.split_whitespace().collect::<Vec<_>>().join(" "));
                if !good {
                    let tail: Vec<&str> = run.output.lines().rev().take(30).collect();
                    println!("  {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n  "));
                }
                good
            }
            Err(e) => {
                println!("{name} ... FAILED: {e:#}");
                false
            }
        };
        checks.push((name.to_owned(), check));
    }
    checks
}

/// kmend.ko for the stock kernel as a core artifact (docs/feed-format.md).
fn core_artifact(stock: &Artifacts, kmend: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let manifest = serde_json::json!({
        "format": 1,
        "id": "kmend",
        "version": 1,
        "description": "kmend core module",
        "kernel": { "release": stock.kernel.release, "build_id": crate::kernel::build_id(&stock.kernel.vmlinux)? },
        "functions": [],
        "core": true,
    });
    let path = dir.join("core.json");
    fs::write(&path, manifest.to_string())?;
    let out = dir.join("kmend-1.kmpatch");
    let module = stock.files.get("kmend.ko").context("no kmend.ko")?;
    exec(Command::new(kmend).args(["artifact", "pack", "--manifest"]).arg(&path).arg("--module").arg(module).arg("-o").arg(&out))?;
    Ok(out)
}

/// A signed feed with the artifacts, served on a free loopback port; the
/// URL the guest reaches it by (QEMU's user network maps 10.0.2.2 to the
/// host's loopback).
fn feed(kmend: &Path, artifacts: &[&Path], release: &str, dir: &Path) -> anyhow::Result<(FeedServer, String)> {
    let keys = dir.with_file_name("keys");
    fs::create_dir_all(&keys)?;
    let key = keys.join("feed.key");
    exec(Command::new(kmend).args(["feed", "keygen", "--out"]).arg(keys.join("feed")))?;
    exec(Command::new(kmend).args(["feed", "init", "--dir"]).arg(dir).arg("--root-key").arg(&key))?;
    exec(Command::new(kmend).args(["feed", "build", "--channel", "stable", "--dir"]).arg(dir).args(artifacts))?;
    // Covered for 90 days, with one CVE (made up) that needs a reboot.
    let until = crate::run::output(Command::new("date").args(["-u", "-d", "+90 days", "+%Y-%m-%dT%H:%M:%SZ"]))?;
    exec(
        Command::new(kmend)
            .args(["feed", "coverage", "--channel", "stable", "--kernel", release, "--until", until.trim()])
            .args(["--needs-reboot", "CVE-2026-99999=7.2.13", "--dir"])
            .arg(dir),
    )?;
    exec(Command::new(kmend).args(["feed", "sign", "--dir"]).arg(dir).arg("--key").arg(&key))?;
    let mut child = Command::new(kmend)
        .args(["feed", "serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("start kmend feed serve")?;
    let stdout = child.stdout.take().context("feed server stdout")?;
    let server = FeedServer(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let port = first
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .ok_or_else(|| anyhow!("kmend feed serve printed no address: '{}'", first.trim()))?;
    println!("xtask: feed with kmend.ko and {PATCH} served on 127.0.0.1:{port}");
    Ok((server, format!("http://10.0.2.2:{port}")))
}

/// The server's root: the cached Debian root, the stock kernel's modules,
/// networking, the test driver, and in /root/e2e/ the package it installs.
fn populate(stock: &Artifacts, lower: &Path, root: &Path, deb: &Path) -> anyhow::Result<()> {
    exec(Command::new("cp").arg("-a").arg(lower).arg(root)).context("copy the server root")?;
    let release = &stock.kernel.release;
    let modules = root.join(format!("usr/lib/modules/{release}"));
    fs::create_dir_all(&modules)?;
    let stock_modules = stock.kernel.boot_modules.first().and_then(|m| m.parent()).and_then(Path::parent).map(|f| f.join("modules"));
    let stock_modules = stock_modules.filter(|m| m.is_dir()).context("the stock kernel's modules tree")?;
    exec(Command::new("cp").arg("-a").arg(&stock_modules).arg(modules.join("kernel")))?;
    exec(Command::new("chroot").arg(root).args(["depmod", "-a", release]))?;
    write(root, "etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")?;
    write(root, "etc/hostname", "kmend-server\n")?;
    write(root, "etc/systemd/network/20-wired.network", "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n")?;
    let repo = paths::repo();
    fs::create_dir_all(root.join("usr/local/sbin"))?;
    fs::copy(repo.join("tests/server/kmend-e2e"), root.join("usr/local/sbin/kmend-e2e"))?;
    fs::copy(repo.join("tests/server/kmend-e2e.service"), root.join("etc/systemd/system/kmend-e2e.service"))?;
    exec(Command::new("chroot").arg(root).args(["systemctl", "enable", "systemd-networkd.service", "kmend-e2e.service"]))?;
    // The driver writes its verdict to ttyS0; a login getty there (which
    // systemd starts for console=ttyS0) calls vhangup() as it starts, which
    // cuts off a driver that opened the tty first: a run then printed no
    // verdict. Nobody logs in on the test server's serial port.
    exec(Command::new("chroot").arg(root).args(["systemctl", "mask", "serial-getty@ttyS0.service"]))?;
    let e2e = root.join("root/e2e");
    fs::create_dir_all(&e2e)?;
    fs::copy(deb, e2e.join("kmend.deb"))?;
    Ok(())
}

fn write(root: &Path, path: &str, text: &str) -> anyhow::Result<()> {
    let p: PathBuf = root.join(path);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(&p, text).with_context(|| format!("write {}", p.display()))
}

fn boot(
    stock: &Artifacts,
    initrd: &Path,
    disk: &Path,
    mode: &str,
    ssh_port: Option<u16>,
    opts: &VmOptions,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<GuestRun> {
    let log = paths::cache().join(format!("vm/console-server-{mode}.log"));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-m", "1024", "-smp", "2"])
        .arg("-kernel")
        .arg(&stock.kernel.bzimage)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 {} kmend_e2e={mode}", vm::tsc_params()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-netdev")
        .arg(match ssh_port {
            Some(port) => format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"),
            None => "user,id=net0".to_owned(),
        })
        .args(["-device", "virtio-net-pci,netdev=net0"]);
    if opts.kvm {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // Single-threaded TCG, as for the stock kernel's suite (vm.rs).
        qemu.args(["-accel", "tcg,thread=single", "-cpu", "max"]);
    }
    println!("xtask: booting the Debian server ({mode}), console log: {}", log.display());
    vm::watch(&mut qemu, &log, Duration::from_secs(opts.timeout.max(900)), false, on_line)
}
