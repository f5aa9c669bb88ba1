//! The network side of the syslog and journald sinks: a [`RecordWriter`] that sends each
//! formatted record as one datagram (Unix or UDP) or as one octet-counted frame on a TCP
//! stream (RFC 6587 3.4.1: `<length> <frame>`), and reconnects with backoff.
//!
//! Everything here runs on the sink's writer thread; callers only meet the queue. A send or
//! connect is bounded by the configured timeout, so a stalled receiver fills the queue (and
//! the overflow policy decides) instead of hanging the writer. While a reconnect waits for
//! its backoff, records fail at once (counted in `failed` and `log_write_errors_total`);
//! every failed connect is counted in `<ns>_log_connect_errors_total{sink}`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::sink::RecordWriter;

/// Where a transport sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A Unix datagram socket (`/dev/log`, the journal's socket): one record per datagram.
    UnixDatagram(PathBuf),
    /// UDP: one record per datagram.
    Udp(SocketAddr),
    /// TCP with octet counting.
    Tcp(SocketAddr),
}

/// Timeouts and backoff of a transport.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Bound of one connect and of one send.
    pub timeout: Duration,
    /// First delay before a reconnect after a failure; doubles per failure.
    pub backoff: Duration,
    /// Longest delay between reconnects.
    pub max_backoff: Duration,
}

enum Conn {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// Bytes a TCP transport buffers before it writes them out between flushes.
const TCP_CHUNK: usize = 64 << 10;

/// A [`RecordWriter`] over a [`Target`].
pub(crate) struct TransportWriter {
    target: Target,
    timing: Timing,
    conn: Option<Conn>,
    /// No connect before this instant (after a failure).
    retry_at: Option<Instant>,
    /// The delay after the next failure.
    delay: Duration,
    /// TCP: frames accepted since the last flush.
    pending: Vec<u8>,
    /// TCP: a write-out between flushes failed; the next flush reports it.
    broken: Option<std::io::Error>,
    connect_errors: Counter,
}

impl TransportWriter {
    /// A writer for `target`; connects at the first record.
    pub(crate) fn new(sink: &str, target: Target, timing: Timing) -> Self {
        Self {
            target,
            timing,
            conn: None,
            retry_at: None,
            delay: timing.backoff,
            pending: Vec::new(),
            broken: None,
            connect_errors: crate::sink::sink_counter(
                "log_connect_errors",
                "Failed connects of syslog and journald sinks",
                sink,
            ),
        }
    }

    fn connect(&self) -> std::io::Result<Conn> {
        let timeout = Some(self.timing.timeout.max(Duration::from_millis(1)));
        Ok(match &self.target {
            Target::UnixDatagram(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.set_write_timeout(timeout)?;
                socket.connect(path)?;
                Conn::Unix(socket)
            }
            Target::Udp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local)?;
                socket.set_write_timeout(timeout)?;
                socket.connect(addr)?;
                Conn::Udp(socket)
            }
            Target::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, self.timing.timeout)?;
                stream.set_write_timeout(timeout)?;
                stream.set_nodelay(true)?;
                Conn::Tcp(stream)
            }
        })
    }

    /// The connection, connecting when there is none and no backoff is running.
    fn conn(&mut self) -> std::io::Result<&mut Conn> {
        if self.conn.is_none() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!(
                        "not connected to {:?}; reconnecting with backoff",
                        self.target
                    ),
                ));
            }
            match self.connect() {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.retry_at = None;
                    self.delay = self.timing.backoff;
                }
                Err(e) => {
                    self.connect_errors.inc();
                    self.retry_at = Some(Instant::now() + self.delay);
                    self.delay = (self.delay * 2).min(self.timing.max_backoff);
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// A failed send: the connection is dropped and rebuilt at the next record.
    fn lost(&mut self, e: std::io::Error) -> std::io::Error {
        self.conn = None;
        e
    }

    /// TCP: writes out the pending frames. On failure they are discarded (the caller counts
    /// them as failed) and the connection is dropped.
    fn write_out(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        let result = match self.conn() {
            Err(e) => Err(e),
            Ok(Conn::Tcp(stream)) => {
                // A receiver that closed its end (a restart) is seen here rather than after
                // the kernel accepted bytes nobody will read.
                if peer_closed(stream) {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the receiver closed the connection",
                    ))
                } else {
                    stream.write_all(&pending)
                }
            }
            Ok(_) => Ok(()),
        };
        pending.clear();
        // Keeps the allocation for the next frames.
        self.pending = pending;
        result.map_err(|e| self.lost(e))
    }
}

/// Whether the peer of `stream` has closed it (a read would return end of file now).
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let closed = matches!(stream.peek(&mut byte), Ok(0));
    let _ = stream.set_nonblocking(false);
    closed
}

impl RecordWriter for TransportWriter {
    fn write_record(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if matches!(self.target, Target::Tcp(_)) {
            if self.broken.is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the connection broke before this record",
                ));
            }
            // Connect now, so a record is refused while the receiver is unreachable.
            self.conn()?;
            let _ = write!(self.pending, "{} ", bytes.len());
            self.pending.extend_from_slice(bytes);
            if self.pending.len() >= TCP_CHUNK
                && let Err(e) = self.write_out()
            {
                // This record and those before it fail at the next flush.
                self.broken = Some(e);
            }
            return Ok(());
        }
        let sent = match self.conn()? {
            Conn::Unix(socket) => socket.send(bytes),
            Conn::Udp(socket) => socket.send(bytes),
            Conn::Tcp(_) => unreachable!("TCP is handled above"),
        };
        match sent {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("datagram cut: {n} of {} bytes sent", bytes.len()),
            )),
            Err(e) => Err(self.lost(e)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.broken.take() {
            self.pending.clear();
            return Err(e);
        }
        self.write_out()
    }
}
