//! `kmend feed serve`: a small HTTP/1.1 static file server for a feed
//! directory (tests, air-gapped sites). GET and HEAD only, one request per
//! connection, no directory listings, nothing outside the directory.

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

/// Serves `root` on `listener` until the future is dropped.
pub async fn serve(root: PathBuf, listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let root = root.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(&root, stream).await {
                tracing::debug!("feed serve: {peer}: {e}");
            }
        });
    }
}

async fn handle(root: &Path, mut stream: TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    tracing::info!("feed serve: {method} {target}");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", b"method not allowed\n", true).await;
    }
    let file = match resolve(root, target) {
        Some(f) => f,
        None => return respond(&mut stream, "404 Not Found", b"not found\n", true).await,
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
