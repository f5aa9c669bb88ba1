//! A minimal `/metrics` HTTP/1.1 listener (feature `http`).
//!
//! It answers `GET /metrics` (and `HEAD`) with [`MetricsService::render`] and closes the
//! connection; anything else gets 404 or 405. Requests are read with a size cap and a deadline,
//! so a slow or hostile client cannot pin a task forever. It is meant for a scraper on a trusted
//! network, not as a general web server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::service::{CONTENT_TYPE, MetricsService};
use crate::{Error, Result};

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// A running `/metrics` listener; stops when dropped or on [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsService {
    /// Serves `GET /metrics` on `addr` (e.g. `"127.0.0.1:9100"`, port 0 picks a free one) on the
    /// current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Listen`] when the address cannot be bound.
    pub async fn serve(&self, addr: &str) -> Result<MetricsServer> {
        let listen_err = |source| Error::Listen {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
        let bound = listener.local_addr().map_err(listen_err)?;
        let service = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Accept errors (e.g. EMFILE) are transient; back off briefly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READ_DEADLINE, handle(stream, &service)).await;
                });
            }
        });
        Ok(MetricsServer { addr: bound, task })
    }
}

async fn handle(mut stream: TcpStream, service: &MetricsService) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            )
            .await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = service.render();
            respond(&mut stream, "200 OK", CONTENT_TYPE, body.as_bytes()).await
        }
        (b"HEAD", b"/metrics") => respond(&mut stream, "200 OK", CONTENT_TYPE, b"").await,
        (_, b"/metrics") => respond(&mut stream, "405 Method Not Allowed", "text/plain", b"").await,
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fetch(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_404s_the_rest() {
        let m = MetricsService::new("lab").unwrap();
        let hits: crate::StripedCounter = m
            .get_or_register("hits", "Hits", crate::StripedCounter::default)
            .unwrap();
        hits.inc();
        let server = m.serve("127.0.0.1:0").await.unwrap();
        let ok = fetch(
            server.local_addr(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE));
        assert!(ok.contains("lab_hits_total 1"), "{ok}");
        assert!(ok.ends_with("# EOF\n"));
        let missing = fetch(server.local_addr(), "GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = fetch(server.local_addr(), "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    }

    #[tokio::test]
    async fn bind_failure_is_typed() {
        let m = MetricsService::new("lab").unwrap();
        let first = m.serve("127.0.0.1:0").await.unwrap();
        let taken = first.local_addr().to_string();
        assert!(matches!(m.serve(&taken).await, Err(Error::Listen { .. })));
    }
}
