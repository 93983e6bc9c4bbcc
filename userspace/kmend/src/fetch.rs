//! Getting feed files: over HTTP(S) (rustls, bundled webpki roots, proxy,
//! timeouts) or from a directory (`file://` URL or plain path).
//!
//! Every way a transfer can go wrong has its own [`FetchError`] variant, so
//! a message says whether the server, the network or the clock failed.

use std::{
    fs,
    io::{
        self,
        Read as _,
        Write, //
    },
    path::PathBuf,
    time::Duration,
};

use crate::proxy;

/// Where a feed lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `http://` or `https://` base URL, without a trailing slash.
    Http { base: String, scheme: String, host: String },
    /// A directory (`file://` URL or plain path).
    Dir(PathBuf),
}

/// A transfer that failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("'{url}': server answered HTTP {code}")]
    Status { url: String, code: u16 },
    #[error("'{url}': timed out after {secs}s (set `timeout` in the config to wait longer)")]
    Timeout { url: String, secs: u64 },
    #[error("'{url}': truncated: got {got} of {expected} bytes")]
    Truncated { url: String, expected: u64, got: u64 },
    #[error("'{url}': larger than the {limit} bytes expected")]
    TooLarge { url: String, limit: u64 },
    #[error("'{url}'{via}: request failed: {source}")]
    Network {
        url: String,
        /// ` via proxy '<proxy>'` (credentials hidden) when one is used,
        /// so a proxy failure is not mistaken for the feed's.
        via: String,
        #[source]
        source: ureq::Error,
    },
    #[error("'{url}': read failed: {source}")]
    Read {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("'{path}': read failed: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("proxy '{proxy}': invalid: {source}")]
    Proxy {
        proxy: String,
        #[source]
        source: ureq::Error,
    },
    #[error("'{0}': not an http://, https:// or file:// URL, nor an absolute path")]
    BadUrl(String),
    #[error("ca_certs '{path}': {why}")]
    CaCerts { path: PathBuf, why: String },
}

impl Source {
    pub fn parse(url: &str) -> Result<Self, FetchError> {
        let url = url.trim().trim_end_matches('/');
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Self::Dir(PathBuf::from(path)));
        }
        if url.starts_with('/') {
            return Ok(Self::Dir(PathBuf::from(url)));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| FetchError::BadUrl(url.to_owned()))?;
        if scheme != "http" && scheme != "https" {
            return Err(FetchError::BadUrl(url.to_owned()));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let hostport = authority.rsplit('@').next().unwrap_or_default();
        let host = if hostport.starts_with('[') {
            hostport.split(']').next().unwrap_or_default().trim_start_matches('[').to_owned()
        } else {
            hostport.split(':').next().unwrap_or_default().to_owned()
        };
        if host.is_empty() {
            return Err(FetchError::BadUrl(url.to_owned()));
        }
        Ok(Self::Http { base: url.to_owned(), scheme: scheme.to_owned(), host })
    }
}

/// The certificates of a PEM file (e.g. a private CA, or the system
/// bundle /etc/ssl/certs/ca-certificates.crt).
fn read_certs(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>, FetchError> {
    let err = |why: String| FetchError::CaCerts { path: path.to_owned(), why };
    let pem = fs::read(path).map_err(|e| err(format!("read failed: {e}")))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A client for one feed.
pub struct Fetcher {
    source: Source,
    agent: Option<ureq::Agent>,
    timeout: Duration,
    /// The proxy requests go through, if any.
    pub proxy: Option<String>,
}

impl Fetcher {
    /// A client for the feed at `url`; `configured_proxy` is the config's
    /// `proxy`, `timeout` bounds each request, `ca_certs` (a PEM file)
    /// replaces the bundled web PKI roots.
    pub fn new(url: &str, configured_proxy: Option<&str>, timeout: Duration, ca_certs: Option<&std::path::Path>) -> Result<Self, FetchError> {
        let source = Source::parse(url)?;
        let (agent, proxy) = match &source {
            Source::Dir(_) => (None, None),
            Source::Http { scheme, host, .. } => {
                let chosen = proxy::choose(scheme, host, configured_proxy, &proxy::ProcessEnv);
                let proxy = chosen
                    .as_deref()
                    .map(|p| ureq::Proxy::new(p).map_err(|source| FetchError::Proxy { proxy: proxy::redact(p), source }))
                    .transpose()?;
                let roots = match ca_certs {
                    Some(path) => ureq::tls::RootCerts::new_with_certs(&read_certs(path)?),
                    None => ureq::tls::RootCerts::WebPki,
                };
                let config = ureq::Agent::config_builder()
                    .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
                    // An https feed stays https: a redirect to http:// is
                    // refused, not followed.
                    .https_only(scheme == "https")
                    .http_status_as_error(false)
                    .timeout_global(Some(timeout))
                    .proxy(proxy)
                    .user_agent(concat!("kmend/", env!("CARGO_PKG_VERSION")))
                    .build();
                (Some(ureq::Agent::new_with_config(config)), chosen)
            }
        };
        Ok(Self { source, agent, timeout, proxy })
    }

    /// The full URL (or path) of `rel` in the feed.
    pub fn url_of(&self, rel: &str) -> String {
        match &self.source {
            Source::Http { base, .. } => format!("{base}/{rel}"),
            Source::Dir(dir) => dir.join(rel).display().to_string(),
        }
    }

    /// Where the feed is.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Reads `rel` whole; refuses more than `limit` bytes.
    pub fn get(&self, rel: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        self.get_location(&self.url_of(rel), limit)
    }

    /// Reads a full URL (HTTP feeds) or path (directory feeds) whole, as
    /// [`Fetcher::url_of`] names them; refuses more than `limit` bytes.
    pub fn get_location(&self, location: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let mut out = Vec::new();
        self.copy(location.to_owned(), None, limit, &mut out)?;
        Ok(out)
    }

    /// POSTs `body` as JSON to `rel` (HTTP only), with `bearer` as the
    /// `Authorization` token; returns the status code and at most `limit`
    /// bytes of the answer.
    pub fn post_json(&self, rel: &str, body: &serde_json::Value, bearer: Option<&str>, limit: u64) -> Result<(u16, Vec<u8>), FetchError> {
        self.exchange(rel, Some(body), bearer, limit)
    }

    /// `GET rel` with an optional bearer token: the status and at most
    /// `limit` bytes of the answer, whatever the status (an API's errors
    /// are JSON too).
    pub fn get_json(&self, rel: &str, bearer: Option<&str>, limit: u64) -> Result<(u16, Vec<u8>), FetchError> {
        self.exchange(rel, None, bearer, limit)
    }

    fn exchange(&self, rel: &str, body: Option<&serde_json::Value>, bearer: Option<&str>, limit: u64) -> Result<(u16, Vec<u8>), FetchError> {
        let url = self.url_of(rel);
        let Some(agent) = &self.agent else { return Err(FetchError::BadUrl(url)) };
        let auth = bearer.map(|token| format!("Bearer {token}"));
        let response = match body {
            Some(body) => {
                let mut request = agent.post(&url).header("content-type", "application/json");
                if let Some(a) = &auth {
                    request = request.header("authorization", a);
                }
                request.send(&serde_json::to_vec(body).unwrap_or_default()[..])
            }
            None => {
                let mut request = agent.get(&url);
                if let Some(a) = &auth {
                    request = request.header("authorization", a);
                }
                request.call()
            }
        }
        .map_err(|e| self.network_error(&url, e))?;
        let code = response.status().as_u16();
        let mut answer = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(response.into_body().into_reader(), limit), &mut answer)
            .map_err(|source| FetchError::Read { url, source })?;
        Ok((code, answer))
    }

    /// Streams `rel`, which must be exactly `size` bytes, into `out`.
    pub fn download(&self, rel: &str, size: u64, out: &mut dyn Write) -> Result<(), FetchError> {
        self.copy(self.url_of(rel), Some(size), size, out).map(|_| ())
    }

    fn copy(&self, url: String, expected: Option<u64>, limit: u64, out: &mut dyn Write) -> Result<u64, FetchError> {
        let (mut reader, length): (Box<dyn io::Read>, Option<u64>) = match (&self.source, &self.agent) {
            (Source::Dir(_), _) => {
                let path = PathBuf::from(&url);
                let file = fs::File::open(&path).map_err(|source| FetchError::File { path: path.clone(), source })?;
                let len = file.metadata().ok().map(|m| m.len());
                (Box::new(file), len)
            }
            (Source::Http { .. }, Some(agent)) => {
                let response = agent.get(&url).call().map_err(|e| self.network_error(&url, e))?;
                let code = response.status().as_u16();
                if code != 200 {
                    return Err(FetchError::Status { url, code });
                }
                let length = response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                (Box::new(response.into_body().into_reader()), length)
            }
            (Source::Http { .. }, None) => return Err(FetchError::BadUrl(url)),
        };
        if length.is_some_and(|len| len > limit) {
            return Err(FetchError::TooLarge { url, limit });
        }
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(url, e, length.or(expected), got)),
            };
            got += n as u64;
            if got > limit {
                return Err(FetchError::TooLarge { url, limit });
            }
            out.write_all(&buf[..n]).map_err(|source| FetchError::Read { url: url.clone(), source })?;
        }
        for want in [length, expected].into_iter().flatten() {
            if got != want {
                return Err(FetchError::Truncated { url, expected: want, got });
            }
        }
        Ok(got)
    }

    fn network_error(&self, url: &str, e: ureq::Error) -> FetchError {
        match e {
            ureq::Error::Timeout(_) => FetchError::Timeout { url: url.to_owned(), secs: self.timeout.as_secs() },
            ureq::Error::Io(ref io) if io.kind() == io::ErrorKind::TimedOut => {
                FetchError::Timeout { url: url.to_owned(), secs: self.timeout.as_secs() }
            }
            source => {
                let via = self.proxy.as_deref().map(|p| format!(" via proxy '{}'", proxy::redact(p))).unwrap_or_default();
                FetchError::Network { url: url.to_owned(), via, source }
            }
        }
    }

    fn read_error(&self, url: String, e: io::Error, expected: Option<u64>, got: u64) -> FetchError {
        let text = e.to_string().to_lowercase();
        if e.kind() == io::ErrorKind::TimedOut || text.contains("timeout") || text.contains("timed out") {
            return FetchError::Timeout { url, secs: self.timeout.as_secs() };
        }
        match expected {
            Some(expected) if got < expected => FetchError::Truncated { url, expected, got },
            _ => FetchError::Read { url, source: e },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(Source::parse("/srv/feed/").unwrap(), Source::Dir("/srv/feed".into()));
        assert_eq!(Source::parse("file:///srv/feed").unwrap(), Source::Dir("/srv/feed".into()));
        let Source::Http { base, scheme, host } = Source::parse("https://u:p@feed.example:8443/kmend/").unwrap() else {
            panic!("not http")
        };
        assert_eq!((base.as_str(), scheme.as_str(), host.as_str()), ("https://u:p@feed.example:8443/kmend", "https", "feed.example"));
        assert!(matches!(Source::parse("ftp://x/y"), Err(FetchError::BadUrl(_))));
        assert!(matches!(Source::parse("feed"), Err(FetchError::BadUrl(_))));
    }

    #[test]
    fn reads_a_directory_feed_with_size_checks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        let f = Fetcher::new(&dir.path().display().to_string(), None, Duration::from_secs(5), None).unwrap();
        assert_eq!(f.get("f", 100).unwrap(), b"hello");
        assert!(matches!(f.get("f", 3), Err(FetchError::TooLarge { .. })));
        let mut out = Vec::new();
        assert!(matches!(f.download("f", 9, &mut out), Err(FetchError::Truncated { expected: 9, got: 5, .. })));
        assert!(matches!(f.get("missing", 10), Err(FetchError::File { .. })));
    }
}
