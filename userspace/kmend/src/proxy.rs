//! Which proxy a feed request goes through: the config's `proxy`, else
//! `https_proxy`/`http_proxy` (by the URL's scheme) or `all_proxy`, unless
//! the host is listed in `no_proxy`. Lowercase variables win over
//! uppercase ones, as in curl.

/// The environment, as a lookup (so tests need not change the process's).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

fn either(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).or_else(|| env.var(&name.to_uppercase()))
}

/// True when `ip` lies in `cidr` (`127.0.0.0/8`, `fd00::/8`).
fn in_cidr(cidr: &str, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let Some((net, bits)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(bits)) = (net.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(h)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(h) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(h)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(h) & mask
        }
        _ => false,
    }
}

/// True when `host` matches a `no_proxy` list (`*`, exact names, domain
/// suffixes with or without a leading dot, IP ranges in CIDR notation as
/// curl takes them; ports are ignored).
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let ip = host.parse::<std::net::IpAddr>().ok();
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        if entry.contains('/') {
            return ip.is_some_and(|ip| in_cidr(entry, ip));
        }
        let entry = entry.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(entry, |(h, _)| h);
        let entry = entry.trim_start_matches('.').to_ascii_lowercase();
        host == entry || host.ends_with(&format!(".{entry}"))
    })
}

/// The proxy URL for a request to `scheme://host`, if any.
pub fn choose(scheme: &str, host: &str, configured: Option<&str>, env: &dyn Env) -> Option<String> {
    if either(env, "no_proxy").is_some_and(|list| no_proxy_matches(&list, host)) {
        return None;
    }
    if let Some(p) = configured {
        return Some(p.to_owned());
    }
    let by_scheme = if scheme == "https" { either(env, "https_proxy") } else { env.var("http_proxy").or_else(|| env.var("HTTP_PROXY")) };
    by_scheme.or_else(|| either(env, "all_proxy"))
}

/// `url` with any `user:password@` hidden, for logs and `doctor`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            // Only the authority can hold credentials: an '@' later in the
            // path is not one.
            let authority_end = url[s + 3..].find('/').map_or(url.len(), |i| s + 3 + i);
            match url[..authority_end].rfind('@') {
                Some(at) => format!("{}://***@{}", &url[..s], &url[at + 1..]),
                None => url.to_owned(),
            }
        }
        (None, Some(at)) => format!("***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// `text` with the credentials of every URL in it hidden: for any message
/// that may quote a URL (errors from libraries, state, logs).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c == '\'' || c == '"' || c.is_whitespace()).unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&tail[at + 1..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn no_proxy_takes_cidr_ranges_as_curl_does() {
        assert!(no_proxy_matches("example.com, 127.0.0.0/8", "127.0.0.1"));
        assert!(no_proxy_matches("10.0.0.0/8", "10.200.3.4"));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.0.0.1"));
        assert!(!no_proxy_matches("10.0.0.0/8", "feed.example"));
        assert!(no_proxy_matches("fd00::/8", "[fd12::1]"));
        assert!(no_proxy_matches("0.0.0.0/0", "192.0.2.1"));
    }

    #[test]
    fn credentials_are_hidden_wherever_a_url_is_quoted() {
        assert_eq!(redact("https://alice:s3cret@feed.example/a@b"), "https://***@feed.example/a@b");
        assert_eq!(
            redact_text("'https://alice:s3cret@feed.example:8443/targets/x': Hash mismatch for http://u:p@h/y"),
            "'https://***@feed.example:8443/targets/x': Hash mismatch for http://***@h/y"
        );
        assert_eq!(redact_text("no url here"), "no url here");
        assert_eq!(redact_text("file:///srv/feed/x@y"), "file:///srv/feed/x@y");
    }

    use super::*;

    struct Fake(HashMap<&'static str, &'static str>);

    impl Env for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| (*s).to_owned())
        }
    }

    #[test]
    fn picks_by_scheme_and_honours_no_proxy() {
        let env = Fake(HashMap::from([
            ("http_proxy", "http://p1:3128"),
            ("HTTPS_PROXY", "http://p2:3128"),
            ("no_proxy", "localhost, .internal:8080,10.0.0.1"),
        ]));
        assert_eq!(choose("http", "feed.example", None, &env).as_deref(), Some("http://p1:3128"));
        assert_eq!(choose("https", "feed.example", None, &env).as_deref(), Some("http://p2:3128"));
        assert_eq!(choose("https", "feed.example", Some("http://cfg:1"), &env).as_deref(), Some("http://cfg:1"));
        for direct in ["localhost", "a.internal", "internal", "10.0.0.1"] {
            assert_eq!(choose("http", direct, Some("http://cfg:1"), &env), None, "{direct}");
        }
        assert_eq!(choose("http", "notinternal", None, &env).as_deref(), Some("http://p1:3128"));
        let none = Fake(HashMap::new());
        assert_eq!(choose("https", "feed.example", None, &none), None);
        let all = Fake(HashMap::from([("ALL_PROXY", "http://all:1"), ("NO_PROXY", "*")]));
        assert_eq!(choose("https", "x", None, &all), None);
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("http://user:secret@proxy:3128"), "http://***@proxy:3128");
        assert_eq!(redact("http://proxy:3128"), "http://proxy:3128");
    }
}
