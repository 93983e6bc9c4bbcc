//! `kmend doctor`: a diagnostic bundle for a support ticket. Secrets and
//! proxy credentials are redacted.

use std::{
    fs,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    process::Command,
};

use anyhow::Context as _;
use kmend::{
    exit::Exit,
    identity::{
        KernelIdentity,
        Uname, //
    },
    paths::Paths,
    proxy,
    sys::Kernel,
};
use serde_json::json;

/// Journal lines included.
const JOURNAL_LINES: usize = 50;
/// Kernel log lines included.
const KMSG_LINES: usize = 100;

/// Hides credentials in URLs and values of keys that look secret.
fn redact_line(line: &str) -> String {
    let key = line.split('=').next().unwrap_or_default().trim().to_lowercase();
    if ["secret", "password", "token"].iter().any(|s| key.contains(s)) {
        return format!("{} = \"***\"", line.split('=').next().unwrap_or_default().trim());
    }
    line.split('"')
        .map(|part| if part.contains("://") && part.contains('@') { proxy::redact(part) } else { part.to_owned() })
        .collect::<Vec<_>>()
        .join("\"")
}

fn kernel_log(paths: &Paths) -> String {
    let mut text = String::new();
    let opened = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(paths.kmsg());
    if let Ok(mut f) = opened {
        // /dev/kmsg returns one record per read, and EAGAIN at the end.
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    if text.is_empty() && !paths.rooted {
        if let Ok(out) = Command::new("dmesg").output() {
            text = String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("kmend")).collect();
    let start = lines.len().saturating_sub(KMSG_LINES);
    if lines.is_empty() { "(no kmend lines in the kernel log, or it is not readable)".into() } else { lines[start..].join("\n") }
}

fn read_or(path: &Path, missing: &str) -> String {
    fs::read_to_string(path).unwrap_or_else(|_| missing.to_owned())
}

pub fn run(output: Option<&Path>, json: bool) -> anyhow::Result<Exit> {
    let paths = Paths::from_env();
    let u = Uname::get();
    let identity = KernelIdentity::running(&paths).map(|k| k.to_string()).unwrap_or_else(|e| format!("unknown: {e}"));
    let config = match fs::read_to_string(paths.config_file()) {
        Ok(t) => t.lines().map(redact_line).collect::<Vec<_>>().join("\n"),
        Err(_) => format!("(no {}: defaults)", paths.config_file().display()),
    };
    let status = Kernel::from_env(&paths).read_status().unwrap_or_else(|e| format!("unavailable: {e}"));
    let journal = read_or(&paths.journal(), "");
    let jl: Vec<&str> = journal.lines().collect();
    let journal = jl[jl.len().saturating_sub(JOURNAL_LINES)..].join("\n");
    let cache: Vec<String> = fs::read_dir(paths.cache_dir())
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let sections = [
        ("version", format!("kmend {}", env!("CARGO_PKG_VERSION"))),
        ("kernel", format!("{identity}\n{} {} {} {} {}", u.sysname, u.nodename, u.release, u.version, u.machine)),
        ("config", config),
        ("kernel-status", status),
        ("module-signatures", kmend::module_signature::Policy::read(&paths).describe()),
        ("state", read_or(&paths.state_file(), "(no state)")),
        ("applying", read_or(&paths.applying_marker(), "(no apply in progress)")),
        ("cache", cache.join("\n")),
        ("journal", journal),
        ("kernel-log", kernel_log(&paths)),
    ];
    if let Some(out) = output {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, text) in &sections {
            let mut h = tar::Header::new_ustar();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            builder.append_data(&mut h, format!("kmend-doctor/{name}.txt"), text.as_bytes())?;
        }
        let bytes = builder.into_inner()?;
        fs::write(out, bytes).with_context(|| format!("'{}': write failed", out.display()))?;
        if json {
            super::print_json(&json!({ "bundle": out }))?;
        } else {
            println!("{}: diagnostic bundle written", out.display());
        }
    } else if json {
        let map: serde_json::Map<String, serde_json::Value> =
            sections.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        super::print_json(&map)?;
    } else {
        for (name, text) in &sections {
            println!("== {name} ==\n{text}\n");
        }
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_and_secrets() {
        assert_eq!(redact_line(r#"proxy = "http://bob:hunter2@proxy:3128""#), r#"proxy = "http://***@proxy:3128""#);
        assert_eq!(redact_line(r#"api_token = "abc""#), r#"api_token = "***""#);
        assert_eq!(redact_line(r#"channel = "stable""#), r#"channel = "stable""#);
    }
}
