//! Receivers the syslog and journald sink tests open on loopback: a Unix datagram socket in
//! a temporary directory (`/dev/log`, the journal's socket), a UDP socket, and a TCP
//! listener that splits RFC 6587 octet-counted frames; plus a parser of the journal's
//! native datagram format. Each receiver collects on its own thread; `wait_for` waits (with
//! a generous bound) until enough messages arrived.

use std::io::{BufRead, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Messages received so far, shared with the receiving threads.
#[derive(Default)]
struct Inbox {
    messages: Mutex<Vec<Vec<u8>>>,
    arrived: Condvar,
}

impl Inbox {
    fn push(&self, message: Vec<u8>) {
        self.messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(message);
        self.arrived.notify_all();
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut messages = self
            .messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while messages.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            messages = self
                .arrived
                .wait_timeout(messages, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        messages.clone()
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A Unix datagram socket bound in its own temporary directory; every datagram is kept.
pub struct UnixDatagramReceiver {
    dir: tempfile::TempDir,
    path: PathBuf,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
}

impl UnixDatagramReceiver {
    /// Binds `<tempdir>/socket` and starts receiving.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("socket");
        let mut receiver = Self {
            dir,
            path,
            inbox: Arc::default(),
            stop: Arc::default(),
        };
        receiver.bind();
        receiver
    }

    /// Binds the socket and starts the receiving thread.
    fn bind(&mut self) {
        let socket = UnixDatagram::bind(&self.path).expect("bind a Unix datagram socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let (inbox, stop) = (self.inbox.clone(), self.stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    inbox.push(buf[..n].to_vec());
                }
            }
        });
    }

    /// A receiver whose socket does not exist yet (a sink pointed at it fails until
    /// [`listen`](Self::listen)).
    pub fn unbound() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("socket");
        Self {
            dir,
            path,
            inbox: Arc::default(),
            stop: Arc::default(),
        }
    }

    /// Binds the socket of an [`unbound`](Self::unbound) receiver.
    pub fn listen(&mut self) {
        self.bind();
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until at least `n` datagrams arrived or `timeout` passed; returns all so far.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.inbox.wait_for(n, timeout)
    }

    /// The datagrams received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.inbox.snapshot()
    }
}

impl Default for UnixDatagramReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UnixDatagramReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP socket on `127.0.0.1`; every datagram is kept.
pub struct UdpReceiver {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
}

impl UdpReceiver {
    /// Binds a free port and starts receiving.
    pub fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local addr");
        let (inbox, stop) = (Arc::<Inbox>::default(), Arc::<AtomicBool>::default());
        let (i, s) = (inbox.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    i.push(buf[..n].to_vec());
                }
            }
        });
        Self { addr, inbox, stop }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until at least `n` datagrams arrived or `timeout` passed; returns all so far.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.inbox.wait_for(n, timeout)
    }
}

impl Default for UdpReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UdpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP listener on `127.0.0.1` that reads RFC 6587 octet-counted frames
/// (`<decimal length> <frame>`) from every connection. A stream that breaks the framing is
/// recorded in [`framing_errors`](Self::framing_errors).
pub struct OctetCountingServer {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    errors: Arc<Mutex<Vec<String>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl OctetCountingServer {
    /// Listens on a free port.
    pub fn new() -> Self {
        Self::on("127.0.0.1:0".parse().expect("addr"))
    }

    /// Listens on `addr` (a port a previous server used, to play a restart).
    pub fn on(addr: SocketAddr) -> Self {
        Self::start(addr, true)
    }

    /// Accepts connections and never reads from them: a receiver that stalled (the
    /// sender's writes block once the socket buffers are full).
    pub fn stalled() -> Self {
        Self::start("127.0.0.1:0".parse().expect("addr"), false)
    }

    fn start(addr: SocketAddr, read: bool) -> Self {
        let listener = TcpListener::bind(addr).expect("bind TCP");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let mut server = Self {
            addr,
            inbox: Arc::default(),
            stop: Arc::default(),
            connections: Arc::default(),
            streams: Arc::default(),
            errors: Arc::default(),
            acceptor: None,
        };
        let (inbox, stop, connections, streams, errors) = (
            server.inbox.clone(),
            server.stop.clone(),
            server.connections.clone(),
            server.streams.clone(),
            server.errors.clone(),
        );
        server.acceptor = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        connections.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        if let Ok(clone) = stream.try_clone() {
                            streams.lock().expect("streams").push(clone);
                        }
                        if read {
                            let (inbox, errors) = (inbox.clone(), errors.clone());
                            std::thread::spawn(move || read_frames(stream, &inbox, &errors));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        server
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` frames arrived or `timeout` passed; returns all so far.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.inbox.wait_for(n, timeout)
    }

    /// The frames received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.inbox.snapshot()
    }

    /// Streams whose framing was broken, with what was wrong.
    pub fn framing_errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }

    /// Stops listening and closes every connection (the port is free again for
    /// [`on`](Self::on)). Returns the frames received.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.shut();
        self.inbox.snapshot()
    }

    /// The listener first (no connection can arrive in a backlog nobody accepts), then the
    /// connections.
    fn shut(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for s in self.streams.lock().expect("streams").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for OctetCountingServer {
    fn drop(&mut self) {
        self.shut();
    }
}

impl Default for OctetCountingServer {
    fn default() -> Self {
        Self::new()
    }
}

fn read_frames(stream: TcpStream, inbox: &Inbox, errors: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut len = Vec::new();
        match reader.read_until(b' ', &mut len) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        let Some(b' ') = len.pop() else {
            // End of stream inside a length: the sender was cut off.
            return;
        };
        let parsed = std::str::from_utf8(&len)
            .ok()
            .filter(|t| {
                !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && !t.starts_with('0')
            })
            .and_then(|t| t.parse::<usize>().ok());
        let Some(n) = parsed else {
            errors.lock().expect("errors").push(format!(
                "bad frame length {:?}",
                String::from_utf8_lossy(&len)
            ));
            return;
        };
        let mut frame = vec![0u8; n];
        if reader.read_exact(&mut frame).is_err() {
            return;
        }
        inbox.push(frame);
    }
}

/// Parses one datagram of the journal's native protocol into its fields, in order:
/// `NAME=value\n`, or `NAME\n` + 64-bit little-endian length + value + `\n`.
///
/// # Errors
/// A description of the first framing error.
pub fn parse_journal_entry(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let end = data
            .iter()
            .position(|b| *b == b'\n' || *b == b'=')
            .ok_or("a field without = or newline")?;
        let name = std::str::from_utf8(&data[..end])
            .map_err(|e| format!("name not UTF-8: {e}"))?
            .to_owned();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("bad field name {name:?}"));
        }
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let stop = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or(format!("{name}: value without its newline"))?;
            fields.push((name, rest[..stop].to_vec()));
            data = &rest[stop + 1..];
        } else {
            let rest = &data[end + 1..];
            if rest.len() < 8 {
                return Err(format!("{name}: length cut short"));
            }
            let n = usize::try_from(u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")))
                .map_err(|e| e.to_string())?;
            let rest = &rest[8..];
            if rest.len() < n + 1 || rest[n] != b'\n' {
                return Err(format!(
                    "{name}: value of {n} bytes not followed by a newline"
                ));
            }
            fields.push((name, rest[..n].to_vec()));
            data = &rest[n + 1..];
        }
    }
    Ok(fields)
}
