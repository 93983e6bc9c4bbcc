//! `/etc/kmend/kmend.toml`: the agent's settings (every key is documented
//! in docs/agent.md). A missing file means the defaults, with no feed.

use std::{
    fs,
    io,
    path::{
        Path,
        PathBuf, //
    },
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    duration,
    policy::{
        Policy,
        Sticky, //
    },
};

/// Where the feed's trusted root metadata is by default.
pub const DEFAULT_ROOT: &str = "/etc/kmend/root.json";

/// The settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the feed is: `https://`, `http://`, `file://` or a path.
    pub feed_url: Option<String>,
    pub policy: Policy,
    /// Time between two feed checks of the daemon.
    pub interval: Duration,
    /// Random extra wait, up to this, added to each interval.
    pub jitter: Duration,
    /// The feed's trusted TUF root metadata (`root.json`), the trust anchor.
    pub root: String,
    /// Proxy for feed requests; overrides `https_proxy`/`http_proxy`.
    pub proxy: Option<String>,
    /// PEM file of the CA certificates trusted for https feeds (replaces
    /// the bundled web PKI roots).
    pub ca_certs: Option<String>,
    /// Re-apply the cached patches at boot (`kmend boot`).
    pub install_on_reboot: bool,
    /// The daemon applies what the feed offers (else it only checks).
    pub auto_update: bool,
    /// Longest time one feed request may take.
    pub timeout: Duration,
    /// The daemon writes `kmend metrics` here after each check (an absolute
    /// path, e.g. in node_exporter's textfile directory).
    pub metrics_textfile: Option<String>,
    /// The daemon runs `kmend verify` on each patch it applied, until one
    /// run proves it (always in a fleet group with a rollout gate).
    pub verify_after_apply: bool,
    /// How long such a verification watches the patched functions.
    pub verify_window: Duration,
    /// Labels the fleet server shows and filters by (`role=db`, `eu`).
    pub tags: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            feed_url: None,
            policy: Policy { channel: "stable".into(), delay: Duration::ZERO, sticky: None },
            interval: Duration::from_secs(4 * 3600),
            jitter: Duration::from_secs(15 * 60),
            root: DEFAULT_ROOT.to_owned(),
            proxy: None,
            ca_certs: None,
            install_on_reboot: true,
            auto_update: true,
            timeout: Duration::from_secs(60),
            metrics_textfile: None,
            verify_after_apply: false,
            verify_window: Duration::from_secs(10),
            tags: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    feed_url: Option<Spanned<String>>,
    channel: Option<Spanned<String>>,
    delay: Option<Spanned<String>>,
    sticky: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    trusted_keys: Option<Spanned<toml::Value>>,
    root: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    ca_certs: Option<Spanned<String>>,
    install_on_reboot: Option<bool>,
    auto_update: Option<bool>,
    timeout: Option<Spanned<String>>,
    metrics_textfile: Option<Spanned<String>>,
    verify_after_apply: Option<bool>,
    verify_window: Option<Spanned<String>>,
    tags: Option<Spanned<Vec<String>>>,
}

/// A config file kmend cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("'{path}': read failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{path}': {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("'{path}' line {line}: {key}: {message}")]
    Value { path: PathBuf, line: usize, key: &'static str, message: String },
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_owned(), source }),
        }
    }

    /// Parses a config text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            // toml's message spans several lines (it quotes the source);
            // keep the first, which has the line number and the cause.
            message: format!(
                "{}: {}",
                e.to_string().lines().next().unwrap_or("TOML parse error").to_lowercase(),
                e.message().trim()
            ),
        })?;
        let line_of = |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
        let value_err = |key: &'static str, s: &Spanned<String>, message: String| ConfigError::Value {
            path: path.to_owned(),
            line: line_of(s.span()),
            key,
            message,
        };
        let dur = |key: &'static str, s: &Option<Spanned<String>>, default: Duration, zero_words: bool| match s {
            None => Ok(default),
            Some(v) if zero_words && matches!(v.get_ref().as_str(), "0" | "none" | "any") => Ok(Duration::ZERO),
            Some(v) => duration::parse(v.get_ref()).map_err(|e| value_err(key, v, e.to_string())),
        };
        let mut c = Self::default();
        if let Some(url) = &raw.feed_url {
            let u = url.get_ref().trim();
            let scheme_ok = ["http://", "https://", "file://", "/"].iter().any(|p| u.starts_with(p));
            if !scheme_ok {
                return Err(value_err("feed_url", url, format!("'{u}' is not an http://, https://, file:// URL or an absolute path")));
            }
            c.feed_url = Some(u.trim_end_matches('/').to_owned());
        }
        if let Some(ch) = &raw.channel {
            if !crate::feed::index::CHANNELS.contains(&ch.get_ref().as_str()) {
                return Err(value_err("channel", ch, format!("unknown channel '{}': use stable or test", ch.get_ref())));
            }
            c.policy.channel = ch.get_ref().clone();
        }
        c.policy.delay = dur("delay", &raw.delay, Duration::ZERO, true)?;
        if let Some(s) = &raw.sticky {
            if !s.get_ref().is_empty() {
                c.policy.sticky = Some(Sticky::parse(s.get_ref()).map_err(|m| value_err("sticky", s, m))?);
            }
        }
        c.interval = dur("interval", &raw.interval, c.interval, false)?;
        if c.interval < Duration::from_secs(1) {
            if let Some(v) = &raw.interval {
                return Err(value_err("interval", v, "must be at least 1s".into()));
            }
        }
        c.jitter = dur("jitter", &raw.jitter, c.jitter, true)?;
        c.timeout = dur("timeout", &raw.timeout, c.timeout, false)?;
        if let Some(v) = raw.timeout.as_ref().filter(|_| c.timeout < Duration::from_secs(1)) {
            return Err(value_err("timeout", v, "must be at least 1s (a request cannot finish in no time)".into()));
        }
        if let Some(keys) = &raw.trusted_keys {
            return Err(ConfigError::Value {
                path: path.to_owned(),
                line: line_of(keys.span()),
                key: "trusted_keys",
                message: "replaced by `root` (the feed's TUF root.json, which names its keys): \
                          see docs/feed-format.md"
                    .into(),
            });
        }
        if let Some(root) = &raw.root {
            if !root.get_ref().starts_with('/') {
                return Err(value_err("root", root, format!("'{}' is not an absolute path", root.get_ref())));
            }
            c.root = root.get_ref().clone();
        }
        c.proxy = raw.proxy.map(Spanned::into_inner).filter(|p| !p.is_empty());
        if let Some(ca) = &raw.ca_certs {
            if !ca.get_ref().starts_with('/') {
                return Err(value_err("ca_certs", ca, format!("'{}' is not an absolute path", ca.get_ref())));
            }
            c.ca_certs = Some(ca.get_ref().clone());
        }
        if let Some(m) = &raw.metrics_textfile {
            if !m.get_ref().starts_with('/') {
                return Err(value_err("metrics_textfile", m, format!("'{}' is not an absolute path", m.get_ref())));
            }
            c.metrics_textfile = Some(m.get_ref().clone());
        }
        c.install_on_reboot = raw.install_on_reboot.unwrap_or(c.install_on_reboot);
        c.auto_update = raw.auto_update.unwrap_or(c.auto_update);
        if let Some(tags) = &raw.tags {
            let ok = |t: &String| (1..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-=:".contains(&b));
            if let Some(bad) = tags.get_ref().iter().find(|t| !ok(t)) {
                return Err(ConfigError::Value {
                    path: path.to_owned(),
                    line: line_of(tags.span()),
                    key: "tags",
                    message: format!("'{bad}': a tag is 1 to 64 characters of [A-Za-z0-9_.-=:]"),
                });
            }
            c.tags = tags.get_ref().clone();
        }
        c.verify_after_apply = raw.verify_after_apply.unwrap_or(c.verify_after_apply);
        c.verify_window = dur("verify_window", &raw.verify_window, c.verify_window, false)?;
        if let Some(v) = raw.verify_window.as_ref().filter(|_| c.verify_window < Duration::from_secs(1)) {
            return Err(value_err("verify_window", v, "must be at least 1s".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/kmend/kmend.toml"))
    }

    /// The package's /etc/kmend/kmend.toml (dist/kmend.toml): as shipped it
    /// configures nothing, and every example it shows, uncommented, is a
    /// valid setting of a key kmend knows.
    #[test]
    fn the_shipped_config_and_its_examples_are_valid() {
        let shipped = include_str!("../dist/kmend.toml");
        let c = parse(shipped).unwrap();
        assert_eq!(c.feed_url, None);
        let examples: Vec<&str> = shipped.lines().filter_map(|l| l.strip_prefix('#')).filter(|l| l.contains(" = ")).collect();
        assert!(examples.len() >= 12, "{examples:?}");
        for line in &examples {
            parse(line).unwrap_or_else(|e| panic!("example '{line}': {e}"));
        }
        let all = parse(&examples.join("\n")).unwrap();
        assert_eq!(all.feed_url.as_deref(), Some("https://patches.example.com/kmend"));
    }

    #[test]
    fn reads_every_key() {
        let c = parse(
            r#"
feed_url = "https://patches.example/feed/"
channel = "test"
delay = "24h"
sticky = "2026-05-01"
interval = "30m"
jitter = "0"
root = "/etc/kmend/feed-root.json"
proxy = "http://proxy:3128"
install_on_reboot = false
auto_update = false
timeout = "10s"
verify_after_apply = true
verify_window = "30s"
tags = ["role=db", "eu"]
"#,
        )
        .unwrap();
        assert_eq!(c.feed_url.as_deref(), Some("https://patches.example/feed"));
        assert_eq!(c.policy.channel, "test");
        assert_eq!(c.policy.delay, Duration::from_secs(86400));
        assert_eq!(c.policy.sticky, Some(Sticky::Date("2026-05-01".into())));
        assert_eq!((c.interval, c.jitter, c.timeout), (Duration::from_secs(1800), Duration::ZERO, Duration::from_secs(10)));
        assert_eq!(c.root, "/etc/kmend/feed-root.json");
        assert_eq!(c.proxy.as_deref(), Some("http://proxy:3128"));
        assert!(!c.install_on_reboot && !c.auto_update);
        assert!(c.verify_after_apply);
        assert_eq!(c.verify_window, Duration::from_secs(30));
        assert_eq!(c.tags, ["role=db", "eu"]);
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.interval, Duration::from_secs(4 * 3600));
        assert!(c.install_on_reboot && c.auto_update);
        assert_eq!(c.policy.channel, "stable");
    }

    #[test]
    fn bad_values_are_refused_at_load_not_later() {
        let err = parse("timeout = \"0s\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1: timeout: must be at least 1s"), "{err}");
        let err = parse("sticky = \"2026-1-5\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1: sticky") && err.contains("YYYY-MM-DD"), "{err}");
        let err = parse("trusted_keys = [\"/etc/kmend/feed.pub\"]\n").unwrap_err().to_string();
        assert!(err.contains("line 1: trusted_keys: replaced by `root`"), "{err}");
        let err = parse("tags = [\"ok\", \"not ok\"]\n").unwrap_err().to_string();
        assert!(err.contains("line 1: tags: 'not ok'"), "{err}");
        let err = parse("root = \"root.json\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1: root"), "{err}");
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let err = parse("channel = \"stable\"\n\ndelay = \"soon\"\n").unwrap_err().to_string();
        assert!(err.starts_with("'/etc/kmend/kmend.toml' line 3: delay: invalid duration 'soon'"), "{err}");
        let err = parse("channel = \"nightly\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1: channel: unknown channel 'nightly'"), "{err}");
        let err = parse("feed_url = \"ftp://x\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1: feed_url"), "{err}");
        let err = parse("\nauto_updat = true\n").unwrap_err().to_string();
        assert!(err.contains("kmend.toml") && err.contains("line 2") && err.contains("auto_updat"), "{err}");
        let err = parse("auto_update = \"yes\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
