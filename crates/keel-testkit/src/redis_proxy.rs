//! A TCP proxy in front of a Redis server that can cut a connection at the worst moment:
//! right after forwarding a chosen command, before its reply reaches the client. The server
//! has run the command; the client only sees its connection drop. This is how a network fault
//! makes a write's outcome unknown.
//!
//! ```no_run
//! let server = keel_testkit::redis::RedisServer::start();
//! let proxy = keel_testkit::redis_proxy::RedisProxy::start(server.addr());
//! proxy.cut_after(b"INCRBY"); // the next INCRBY runs, its reply is dropped, the link cut
//! // connect the client to proxy.url()
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The proxy; it stops accepting when dropped (open connections end with their peers).
pub struct RedisProxy {
    addr: SocketAddr,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RedisProxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let armed: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, c, st) = (armed.clone(), cuts.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pump(client, server, a.clone(), c.clone());
            }
        });
        Self {
            addr,
            armed,
            cuts,
            stop,
        }
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Arms a one-shot fault: the next client request containing `command` (ASCII,
    /// case-insensitive) is forwarded, and the connection is cut instead of forwarding the
    /// server's reply.
    pub fn cut_after(&self, command: &[u8]) {
        *self.armed.lock().unwrap() = Some(command.to_ascii_uppercase());
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Acquire)
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .to_ascii_uppercase()
            .windows(needle.len())
            .any(|w| w == needle)
}

/// Two threads per connection; `cut` tells the reply side to drop the next reply and close.
fn pump(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<AtomicUsize>,
) {
    let cut = Arc::new(AtomicBool::new(false));
    let (mut c_read, mut s_write) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let cut_req = cut.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut a = armed.lock().unwrap();
                if a.as_deref().is_some_and(|cmd| contains(&buf[..n], cmd)) {
                    *a = None;
                    // Before forwarding: the reply side must not let the answer through.
                    cut_req.store(true, Ordering::Release);
                }
            }
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Both);
    });
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if cut.load(Ordering::Acquire) {
                cuts.fetch_add(1, Ordering::AcqRel);
                break;
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Both);
        let _ = s_read.shutdown(Shutdown::Both);
    });
}
