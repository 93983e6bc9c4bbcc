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

/// True when `host` matches a `no_proxy` list (`*`, exact names, domain
/// suffixes with or without a leading dot; ports are ignored).
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
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

/// `proxy` with any `user:password@` hidden, for logs and `doctor`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        (None, Some(at)) => format!("***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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
