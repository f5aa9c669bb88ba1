//! A real `redis-server` on a free loopback port, with fault injection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{ServerProcess, free_port, require_program};

/// A standalone `redis-server` (no persistence) on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    binary: PathBuf,
    // Field order: kill the server before removing its directory.
    process: Option<ServerProcess>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        let binary = require_program("redis-server", "the Debian package `redis-server`");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = Self {
            port: free_port(),
            binary,
            process: None,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        let mut process = ServerProcess::spawn("redis-server", cmd, self.dir.path().join("log"));
        process.wait_for_port(self.addr(), Duration::from_secs(10));
        self.process = Some(process);
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server with SIGSTOP: connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused server with SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.process.as_ref().map(ServerProcess::pid);
        let Some(pid) = pid else {
            panic!("redis-server is not running");
        };
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill -{sig}: {e}"));
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Runs `redis-cli -p PORT ARGS…` and returns its stdout (trimmed).
    pub fn cli(&self, args: &[&str]) -> String {
        let cli = require_program("redis-cli", "the Debian package `redis-tools`");
        let out = Command::new(cli)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
