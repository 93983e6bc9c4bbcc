//! Ansible for the end-to-end test: `ansible-core` at a pinned version from
//! PyPI, in a virtual environment of Debian's python3 under the cache
//! (nothing installed system-wide), and a runner for the repository's
//! role (deploy/ansible/roles/kmend).

use std::{
    path::{
        Path,
        PathBuf, //
    },
    process::Command,
};

use anyhow::Context as _;

use crate::{
    paths,
    run::{
        exec_logged,
        key,
        stamp_matches,
        write_stamp, //
    },
};

/// The pinned version (its controller runs on bookworm's Python 3.11).
const ANSIBLE_CORE: &str = "2.19.14";

/// `ansible-playbook`, installed if needed (about a minute cold).
pub fn playbook() -> anyhow::Result<PathBuf> {
    let stamp_key = key(&[ANSIBLE_CORE.as_bytes()]);
    let venv = paths::cache().join(format!("tools/ansible-core-{ANSIBLE_CORE}"));
    let bin = venv.join("bin/ansible-playbook");
    let stamp = venv.join("stamp");
    if stamp_matches(&stamp, &stamp_key) && bin.exists() {
        return Ok(bin);
    }
    let log = paths::cache().join("logs/ansible-install.log");
    println!("xtask: installing ansible-core {ANSIBLE_CORE} in {}", venv.display());
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    // Debian's python3 (python3-venv), not whatever python3 is first on PATH.
    exec_logged(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv), &log).context("python3 -m venv (apt package python3-venv)")?;
    exec_logged(
        Command::new(venv.join("bin/pip")).args(["install", "--disable-pip-version-check", "-q", &format!("ansible-core=={ANSIBLE_CORE}")]),
        &log,
    )
    .context("pip install ansible-core")?;
    write_stamp(&stamp, &stamp_key)?;
    Ok(bin)
}

/// The outcome of one run of the test play.
pub struct PlayRun {
    pub ok: bool,
    /// `changed=N` of the host's recap line.
    pub changed: Option<u32>,
    pub output: String,
}

/// Runs tests/server/ansible-site.yml against `root@127.0.0.1:port` with
/// `key`, and the role's variables.
pub fn run_play(playbook: &Path, port: u16, key: &Path, vars: &serde_json::Value) -> anyhow::Result<PlayRun> {
    let repo = paths::repo();
    let out = Command::new(playbook)
        .arg("-i")
        .arg("127.0.0.1,")
        .arg(repo.join("tests/server/ansible-site.yml"))
        .args(["-u", "root", "-e", &format!("ansible_port={port}"), "-e", "ansible_python_interpreter=/usr/bin/python3"])
        .arg("--private-key")
        .arg(key)
        .arg("-e")
        .arg(vars.to_string())
        .env("ANSIBLE_ROLES_PATH", repo.join("deploy/ansible/roles"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_SSH_ARGS", "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=30")
        .env("ANSIBLE_NOCOLOR", "1")
        // One ssh round trip per task instead of several: the guest runs
        // under emulation, where every process start counts.
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_LOCAL_TEMP", paths::cache().join("ansible-tmp"))
        .output()
        .context("run ansible-playbook")?;
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // "127.0.0.1 : ok=7 changed=2 unreachable=0 failed=0 ..."
    let changed = output
        .lines()
        .find(|l| l.starts_with("127.0.0.1") && l.contains("changed="))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("changed=")?.parse().ok()));
    Ok(PlayRun { ok: out.status.success(), changed, output })
}
