//! `kmend feed serve`: a small HTTP/1.1 static file server for a feed
//! directory (tests, air-gapped sites). GET and HEAD only, one request per
//! connection, no directory listings, nothing outside the directory (not
//! even through a symlink), a deadline for the request head and the whole
//! exchange, and a cap on connections at once.
//!
//! Kept in-tree rather than pulling in hyper and tower-http for a helper:
//! a production feed is served by a real web server (any static one: the
//! feed is plain files) or an object store, and this one does exactly what
//! the tests and an air-gapped site need.

use std::{
    io,
    path::{
        Path,
        PathBuf, //
    },
};

use tokio::{
    io::{
        AsyncReadExt as _,
        AsyncWriteExt as _, //
    },
    net::{
        TcpListener,
        TcpStream, //
    },
};

const MAX_HEAD: usize = 16 * 1024;
/// A client must send its request head within this.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// And be done (response sent) within this.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;

/// Maps a request target to a file under `root`, refusing anything that
/// could leave it.
pub fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let rel = path.strip_prefix('/')?;
    let mut out = root.to_path_buf();
    for part in rel.split('/') {
        if part.is_empty() || part.starts_with('.') || part.contains('\\') {
            return None;
        }
        out.push(part);
    }
    Some(out)
}

/// The directory to serve, checked: it must exist (a typo must not give a
/// server that answers 404 to everything).
pub fn open_root(dir: &Path) -> io::Result<PathBuf> {
    let root = std::fs::canonicalize(dir)?;
    if !root.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
    }
    Ok(root)
}

/// Serves `root` (from [`open_root`]) on `listener` until the future is
/// dropped.
pub async fn serve(root: PathBuf, listener: TcpListener) -> io::Result<()> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.map_err(io::Error::other)?;
        let (stream, peer) = listener.accept().await?;
        let root = root.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(EXCHANGE_TIMEOUT, handle(&root, stream)).await {
                Ok(Err(e)) => tracing::debug!("feed serve: {peer}: {e}"),
                Err(_) => tracing::debug!("feed serve: {peer}: too slow, dropped"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(head))
}

async fn handle(root: &Path, mut stream: TcpStream) -> io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    tracing::info!("feed serve: {method} {target}");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", b"method not allowed\n", true).await;
    }
    // After symlinks, the file must still be inside the root.
    let file = match resolve(root, target).and_then(|f| std::fs::canonicalize(f).ok()) {
        Some(f) if f.starts_with(root) => f,
        _ => return respond(&mut stream, "404 Not Found", b"not found\n", true).await,
    };
    match tokio::fs::read(&file).await {
        Ok(body) => respond(&mut stream, "200 OK", &body, method == "GET").await,
        Err(_) => respond(&mut stream, "404 Not Found", b"not found\n", method == "GET").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &[u8], with_body: bool) -> io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_inside_the_root() {
        let root = Path::new("/srv/feed");
        assert_eq!(resolve(root, "/index.json"), Some(root.join("index.json")));
        assert_eq!(resolve(root, "/patches/a-1.kmpatch?x=1"), Some(root.join("patches/a-1.kmpatch")));
        for bad in ["/../etc/passwd", "/patches/../../x", "index.json", "/", "/patches//a", "/.git/config"] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }
}
