//! `osmem-server`, an in-memory OpenSearch-compatible server (from PyPI), on a free loopback
//! port, with kill, restart (empty: nothing is persisted) and SIGSTOP/SIGCONT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::http;
use crate::process::{ServerProcess, free_port, require_program};

/// Finds the `osmem-server` binary: `$OSMEM_SERVER_BIN`, then the binary bundled inside the
/// `osmem_server` Python package of `$KEEL_VENV` (default `target/keel-venv`), then `PATH`.
pub fn osmem_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("OSMEM_SERVER_BIN") {
        return bin.into();
    }
    // scripts/test.sh sets KEEL_VENV; a plain `cargo test` uses the venv it made by default.
    let venv = std::env::var_os("KEEL_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/keel-venv");
            dir.is_dir().then_some(dir)
        });
    if let Some(venv) = venv {
        let python = venv.join("bin").join("python");
        if let Ok(out) = Command::new(&python)
            .args([
                "-c",
                "import osmem_server; print(osmem_server.resolve_binary())",
            ])
            .output()
            && out.status.success()
        {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if path.is_file() {
                return path;
            }
        }
    }
    require_program(
        "osmem-server",
        "osmem-server (pip install osmem-server into $KEEL_VENV)",
    )
}

/// A running `osmem-server`, killed on drop.
#[derive(Debug)]
pub struct OsmemServer {
    port: u16,
    bin: PathBuf,
    process: Option<ServerProcess>,
    dir: tempfile::TempDir,
}

impl OsmemServer {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Self {
        let bin = osmem_binary();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = Self {
            port: free_port(),
            bin,
            process: None,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--addr", &format!("127.0.0.1:{}", self.port)])
            .args(["--no-stdin-watch", "--no-ja"])
            .args(["--parent-pid", &std::process::id().to_string()]);
        let mut process =
            ServerProcess::spawn("osmem-server", cmd, self.dir.path().join("osmem.log"));
        process.wait_for_port(self.addr(), Duration::from_secs(30));
        self.process = Some(process);
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): its documents are gone.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server with SIGSTOP: connections are accepted by the kernel, nothing is
    /// answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused server with SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        match &self.process {
            Some(p) => p.signal(sig),
            None => panic!("osmem-server is not running"),
        }
    }

    /// Sends a request and returns `(status, parsed JSON body)`.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (status, text) = http::request(self.addr(), method, path, body.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("osmem {method} {path}: {e}"));
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// Refreshes `index` (a name or pattern) and returns its document count (0 when no index
    /// matches).
    pub fn count(&self, index: &str) -> u64 {
        let _ = self.call("POST", &format!("/{index}/_refresh"), None);
        let (status, body) = self.call("GET", &format!("/{index}/_count"), None);
        match status {
            200 => body["count"]
                .as_u64()
                .unwrap_or_else(|| panic!("no count in {body}")),
            404 => 0,
            _ => panic!("_count on {index}: HTTP {status}: {body}"),
        }
    }

    /// Refreshes `index` and returns up to `size` documents' `_source`, each with its `_id`
    /// added as `"_id"`.
    pub fn documents(&self, index: &str, size: usize) -> Vec<serde_json::Value> {
        let _ = self.call("POST", &format!("/{index}/_refresh"), None);
        let query = format!(r#"{{"size":{size},"query":{{"match_all":{{}}}}}}"#);
        let (status, body) = self.call("POST", &format!("/{index}/_search"), Some(&query));
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "_search on {index}: {body}");
        body["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|hit| {
                let mut source = hit["_source"].clone();
                source["_id"] = hit["_id"].clone();
                source
            })
            .collect()
    }
}
