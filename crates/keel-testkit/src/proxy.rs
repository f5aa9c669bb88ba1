//! A small HTTP/1.1 proxy in front of a real server that injects `_bulk` faults: whole-request
//! statuses, answers after forwarding, hang-ups and per-item failures. Optionally TLS (rustls)
//! on the listening side, with a certificate from [`TlsFiles`](crate::redis::TlsFiles).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::http;

/// Which items of a `_bulk` request an [`Fault::Items`] fault answers itself.
#[derive(Debug, Clone)]
pub enum Select {
    /// Items at positions n, 2n, 3n, … (1-based) of each request.
    Every(usize),
    /// Items whose document contains this text.
    Containing(String),
}

/// What the proxy does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answers with this status and an error body; the server never sees the request.
    Status(u16),
    /// Forwards the request, then answers with this status anyway (the server has the data).
    ForwardThenStatus(u16),
    /// Closes the connection without answering; the server never sees the request.
    Hangup,
    /// Answers the selected items with `status` (an error item); forwards the others and
    /// merges the server's item results in request order.
    Items {
        /// Which items fail.
        select: Select,
        /// Their status (429 and 5xx are retriable, other 4xx are not).
        status: u16,
    },
}

struct Inner {
    upstream: SocketAddr,
    plan: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
    requests: AtomicUsize,
    items: AtomicUsize,
    headers: Mutex<Vec<(String, String)>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: AtomicBool,
}

/// The running proxy; stops on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.inner.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// A plain-HTTP proxy on a free loopback port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        Self::start_inner(upstream, None)
    }

    /// An HTTPS proxy (server certificate for 127.0.0.1 from `tls`) forwarding to `upstream`.
    pub fn start_tls(upstream: SocketAddr, tls: &crate::redis::TlsFiles) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.server_cert)
            .and_then(Iterator::collect)
            .unwrap_or_else(|e| panic!("server certificate: {e}"));
        let key = PrivateKeyDer::from_pem_file(&tls.server_key)
            .unwrap_or_else(|e| panic!("server key: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .unwrap_or_else(|e| panic!("TLS server config: {e}"));
        Self::start_inner(upstream, Some(Arc::new(config)))
    }

    fn start_inner(upstream: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let inner = Arc::new(Inner {
            upstream,
            plan: Mutex::new(VecDeque::new()),
            always: Mutex::new(None),
            requests: AtomicUsize::new(0),
            items: AtomicUsize::new(0),
            headers: Mutex::new(Vec::new()),
            tls,
            stop: AtomicBool::new(false),
        });
        let accept_inner = inner.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_inner.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let inner = accept_inner.clone();
                std::thread::spawn(move || serve(&inner, stream));
            }
        });
        Self { addr, inner }
    }

    /// `http://` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// Queues a fault for the next request that has none (one fault per request, in order).
    pub fn push(&self, fault: Fault) {
        self.inner
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(fault);
    }

    /// A fault for every request once the queue is empty (`None`: forward unchanged).
    pub fn set_always(&self, fault: Option<Fault>) {
        *self
            .inner
            .always
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::Acquire)
    }

    /// `_bulk` items received so far (retries included).
    pub fn items(&self) -> usize {
        self.inner.items.load(Ordering::Acquire)
    }

    /// The headers of the last request (names lowercase).
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.inner
            .headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn serve(inner: &Inner, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn Stream> = match &inner.tls {
        Some(config) => match rustls::ServerConnection::new(config.clone()) {
            Ok(conn) => Box::new(rustls::StreamOwned::new(conn, tcp)),
            Err(_) => return,
        },
        None => Box::new(tcp),
    };
    let mut buf: Vec<u8> = Vec::new();
    while !inner.stop.load(Ordering::Acquire) {
        let Some((head, body)) = read_request(&mut *stream, &mut buf) else {
            return;
        };
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_owned();
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        *inner.headers.lock().unwrap_or_else(PoisonError::into_inner) = headers;
        inner.requests.fetch_add(1, Ordering::AcqRel);
        let Some(body) = decoded_body(&head, body) else {
            let _ = respond(&mut *stream, 400, r#"{"error":"bad gzip"}"#);
            return;
        };
        let fault = inner
            .plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .or_else(|| {
                inner
                    .always
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            });
        let bulk = path
            .split('?')
            .next()
            .unwrap_or_default()
            .ends_with("/_bulk");
        if bulk {
            inner
                .items
                .fetch_add(ndjson_lines(&body).len() / 2, Ordering::AcqRel);
        }
        let (status, answer) = match fault {
            Some(Fault::Status(status)) => (
                status,
                format!(
                    r#"{{"error":{{"type":"injected","reason":"HTTP {status} from the test proxy"}},"status":{status}}}"#
                ),
            ),
            Some(Fault::Hangup) => return,
            Some(Fault::ForwardThenStatus(status)) => {
                let _ = forward(inner, &path, &body);
                (status, format!(r#"{{"status":{status}}}"#))
            }
            Some(Fault::Items { select, status }) if bulk => {
                items_fault(inner, &path, &body, &select, status)
            }
            _ => forward(inner, &path, &body),
        };
        if respond(&mut *stream, status, &answer).is_err() {
            return;
        }
    }
}

fn forward(inner: &Inner, path: &str, body: &[u8]) -> (u16, String) {
    match http::request(inner.upstream, "POST", path, Some(body)) {
        Ok(answer) => answer,
        Err(e) => (502, format!(r#"{{"error":"upstream: {e}"}}"#)),
    }
}

fn items_fault(
    inner: &Inner,
    path: &str,
    body: &[u8],
    select: &Select,
    status: u16,
) -> (u16, String) {
    let lines = ndjson_lines(body);
    let pairs: Vec<(&[u8], &[u8])> = lines
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or_default()))
        .collect();
    let failing: Vec<bool> = pairs
        .iter()
        .enumerate()
        .map(|(i, (_, doc))| match select {
            Select::Every(n) => (i + 1) % (*n).max(1) == 0,
            Select::Containing(text) => String::from_utf8_lossy(doc).contains(text.as_str()),
        })
        .collect();
    let mut forwarded = Vec::new();
    for ((action, doc), fail) in pairs.iter().zip(&failing) {
        if !fail {
            forwarded.extend_from_slice(action);
            forwarded.push(b'\n');
            forwarded.extend_from_slice(doc);
            forwarded.push(b'\n');
        }
    }
    let mut upstream_items: VecDeque<serde_json::Value> = VecDeque::new();
    if !forwarded.is_empty() {
        let (code, text) = forward(inner, path, &forwarded);
        if code != 200 {
            return (code, text);
        }
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        upstream_items = parsed["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into();
    }
    let kind = if status == 429 {
        "es_rejected_execution_exception"
    } else if status >= 500 {
        "unavailable_shards_exception"
    } else {
        "mapper_parsing_exception"
    };
    let items: Vec<serde_json::Value> = pairs
        .iter()
        .zip(&failing)
        .map(|((action, _), fail)| {
            if *fail {
                let action: serde_json::Value = serde_json::from_slice(action).unwrap_or_default();
                let (name, meta) = action
                    .as_object()
                    .and_then(|o| o.iter().next())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .unwrap_or_else(|| ("index".into(), serde_json::Value::Null));
                serde_json::json!({ name: {
                    "_index": meta["_index"], "_id": meta["_id"], "status": status,
                    "error": {"type": kind, "reason": "injected by the test proxy"}
                }})
            } else {
                upstream_items.pop_front().unwrap_or_default()
            }
        })
        .collect();
    (
        200,
        serde_json::json!({"took": 1, "errors": true, "items": items}).to_string(),
    )
}

/// The request body as the client meant it: gunzipped when the head says
/// `Content-Encoding: gzip`; `None` when that body is not valid gzip.
fn decoded_body(head: &str, body: Vec<u8>) -> Option<Vec<u8>> {
    let gzip = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("content-encoding")
                && v.trim().eq_ignore_ascii_case("gzip")
        });
    if !gzip {
        return Some(body);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// The non-empty lines of an NDJSON body (a `_bulk` body has two per document).
fn ndjson_lines(body: &[u8]) -> Vec<&[u8]> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

/// Reads one request (head text, body bytes); `None` at end of stream or on a bad request.
fn read_request(stream: &mut dyn Stream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let start = head_end + 4;
    while buf.len() < start + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[start..start + length].to_vec();
    buf.drain(..start + length);
    Some((head, body))
}

fn respond(stream: &mut dyn Stream, status: u16, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// A `_bulk` endpoint that accepts every document without storing it (for throughput
/// benches): it answers each request with one `201` item per action line.
pub struct AcceptAll {
    addr: SocketAddr,
    items: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for AcceptAll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptAll")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AcceptAll {
    /// Starts the endpoint on a free loopback port.
    pub fn start() -> Self {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("endpoint bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("endpoint addr: {e}"));
        let items = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (items.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    while let Some((head, body)) = read_request(&mut stream, &mut buf) {
                        let body = decoded_body(&head, body).unwrap_or_default();
                        let n = ndjson_lines(&body).len() / 2;
                        count.fetch_add(n, Ordering::AcqRel);
                        let mut answer = String::with_capacity(40 + n * 28);
                        answer.push_str(r#"{"took":0,"errors":false,"items":["#);
                        for i in 0..n {
                            if i > 0 {
                                answer.push(',');
                            }
                            answer.push_str(r#"{"index":{"status":201}}"#);
                        }
                        answer.push_str("]}");
                        if respond(&mut stream, 200, &answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, items, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// Documents accepted so far.
    pub fn items(&self) -> usize {
        self.items.load(Ordering::Acquire)
    }
}

impl Drop for AcceptAll {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}
