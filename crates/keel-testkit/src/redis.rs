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
    extra: Vec<String>,
    /// Arguments `redis-cli` needs to reach this server (TLS flags).
    cli_extra: Vec<String>,
    // Field order: kill the server before removing its directory.
    process: Option<ServerProcess>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(free_port(), &[])
    }

    /// Starts a server on `port` with extra `redis-server` arguments (e.g. `--replicaof`).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let binary = require_program("redis-server", "the Debian package `redis-server`");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = Self {
            port,
            binary,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            cli_extra: Vec::new(),
            process: None,
            dir,
        };
        server.spawn();
        server
    }

    /// Starts a TLS-only server (certificates from [`TlsFiles::generate`]); with
    /// `require_client_cert`, clients must present a certificate signed by the same CA.
    pub fn start_tls(tls: &TlsFiles, require_client_cert: bool) -> Self {
        let port = free_port();
        let path = |p: &std::path::Path| p.display().to_string();
        let (cert, key, ca) = (
            path(&tls.server_cert),
            path(&tls.server_key),
            path(&tls.ca_cert),
        );
        let auth = if require_client_cert { "yes" } else { "no" };
        let mut server = Self::start_with(
            port,
            &[
                "--tls-port",
                &port.to_string(),
                "--port",
                "0",
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                auth,
            ],
        );
        server.cli_extra = vec![
            "--tls".into(),
            "--cacert".into(),
            ca,
            "--cert".into(),
            path(&tls.client_cert),
            "--key".into(),
            path(&tls.client_key),
        ];
        server
    }

    /// The server's working directory (for config and cluster files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra);
        let mut process = ServerProcess::spawn("redis-server", cmd, self.dir.path().join("log"));
        process.wait_for_port(self.addr(), Duration::from_secs(10));
        self.process = Some(process);
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
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
        match &self.process {
            Some(p) => p.signal(sig),
            None => panic!("redis-server is not running"),
        }
    }

    /// Runs `redis-cli -p PORT ARGS…` and returns its stdout (trimmed).
    pub fn cli(&self, args: &[&str]) -> String {
        let cli = require_program("redis-cli", "the Debian package `redis-tools`");
        let out = Command::new(cli)
            .args(&self.cli_extra)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Polls `check` every 50 ms until it returns true, panicking with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free port `p` whose cluster bus port `p + 10000` is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A Redis Cluster of three masters (no replicas) made with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them and waits for `cluster_state:ok`.
    pub fn start() -> Self {
        Self::start_nodes(None)
    }

    /// Like [`start`](Self::start), TLS only (clients and the cluster bus), with the
    /// certificates of `tls` (clients need not present one). Connect with `rediss://` and
    /// `tls.ca_cert` as the CA.
    pub fn start_tls(tls: &TlsFiles) -> Self {
        Self::start_nodes(Some(tls))
    }

    fn start_nodes(tls: Option<&TlsFiles>) -> Self {
        let path = |p: &std::path::Path| p.display().to_string();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_cluster_port();
                let mut args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(String::from)
                .to_vec();
                if let Some(tls) = tls {
                    args.extend([
                        "--tls-port".into(),
                        port.to_string(),
                        "--port".into(),
                        "0".into(),
                        "--tls-cluster".into(),
                        "yes".into(),
                        "--tls-cert-file".into(),
                        path(&tls.server_cert),
                        "--tls-key-file".into(),
                        path(&tls.server_key),
                        "--tls-ca-cert-file".into(),
                        path(&tls.ca_cert),
                        "--tls-auth-clients".into(),
                        "no".into(),
                    ]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut node = RedisServer::start_with(port, &args);
                if let Some(tls) = tls {
                    node.cli_extra = vec!["--tls".into(), "--cacert".into(), path(&tls.ca_cert)];
                }
                node
            })
            .collect();
        let cli = require_program("redis-cli", "the Debian package `redis-tools`");
        let mut create = Command::new(cli);
        if let Some(tls) = tls {
            create.args(["--tls", "--cacert"]).arg(&tls.ca_cert);
        }
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        wait_until(
            "cluster_state:ok on every node",
            Duration::from_secs(20),
            || {
                cluster
                    .nodes
                    .iter()
                    .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            },
        );
        cluster
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The index in [`nodes`](Self::nodes) of the master holding `key` (which must exist):
    /// asked without `-c`, any other node answers `MOVED` instead of `1`.
    pub fn master_of(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.cli(&["EXISTS", key]) == "1")
            .unwrap_or_else(|| panic!("no master holds {key:?}"))
    }

    /// Total keys over all masters.
    pub fn dbsize(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.cli(&["DBSIZE"]).parse::<u64>().unwrap_or(0))
            .sum()
    }
}

/// One master, one replica and three sentinels monitoring them as `mymaster`.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The initial master (index 0) and replica (index 1).
    pub servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    /// The master name the sentinels monitor.
    pub const MASTER: &'static str = "mymaster";

    /// Starts the servers and sentinels and waits until every sentinel knows the replica and
    /// the other sentinels, i.e. until a failover could happen.
    pub fn start() -> Self {
        Self::start_inner(true)
    }

    /// Like [`start`](Self::start) but only waits until the sentinels answer master lookups
    /// (seconds faster; no failover possible until they discover each other).
    pub fn start_for_lookups() -> Self {
        Self::start_inner(false)
    }

    fn start_inner(failover_ready: bool) -> Self {
        let master = RedisServer::start();
        let master_port = master.port().to_string();
        let replica =
            RedisServer::start_with(free_port(), &["--replicaof", "127.0.0.1", &master_port]);
        if failover_ready {
            wait_until("the replica to sync", Duration::from_secs(20), || {
                replica
                    .cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
            });
        }
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
                let conf = dir.path().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\nprotected-mode no\n\
                         sentinel monitor {m} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {m} 1000\n\
                         sentinel failover-timeout {m} 5000\n\
                         sentinel parallel-syncs {m} 1\n",
                        m = Self::MASTER
                    ),
                )
                .unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
                let conf = conf.display().to_string();
                RedisServer::start_sentinel(port, &conf, dir)
            })
            .collect::<Vec<_>>();
        let this = Self {
            servers: vec![master, replica],
            sentinels,
        };
        if failover_ready {
            wait_until(
                "sentinels to see the replica and each other",
                Duration::from_secs(30),
                || {
                    this.sentinels.iter().all(|s| {
                        let info = s.cli(&["SENTINEL", "MASTER", Self::MASTER]);
                        info.contains("num-slaves\n1") && info.contains("num-other-sentinels\n2")
                    })
                },
            );
        } else {
            wait_until(
                "sentinels to answer master lookups",
                Duration::from_secs(10),
                || {
                    this.sentinels.iter().all(|s| {
                        !s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER])
                            .is_empty()
                    })
                },
            );
        }
        this
    }

    /// `127.0.0.1:PORT` of every sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }

    /// The port of the current master, as the first sentinel reports it.
    pub fn master_port(&self) -> u16 {
        let out = self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER]);
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl RedisServer {
    fn start_sentinel(port: u16, conf: &str, dir: tempfile::TempDir) -> Self {
        let binary = require_program("redis-server", "the Debian package `redis-server`");
        let mut cmd = Command::new(&binary);
        cmd.arg(conf).arg("--sentinel");
        let mut process = ServerProcess::spawn("redis-sentinel", cmd, dir.path().join("log"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        process.wait_for_port(addr, Duration::from_secs(10));
        Self {
            port,
            binary,
            extra: Vec::new(),
            cli_extra: Vec::new(),
            process: Some(process),
            dir,
        }
    }
}

/// A throwaway CA with a server certificate for 127.0.0.1/localhost and a client certificate,
/// made with the `openssl` command (P-256 keys, valid for one day).
#[derive(Debug)]
pub struct TlsFiles {
    /// The CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The server certificate (PEM).
    pub server_cert: PathBuf,
    /// The server key (PEM).
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (PEM).
    pub client_cert: PathBuf,
    /// The client key (PEM).
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Generates the files in a temporary directory.
    pub fn generate() -> Self {
        let openssl = require_program("openssl", "the Debian package `openssl`");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let p = |name: &str| dir.path().join(name);
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("openssl: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=keel-test-ca",
            ],
        ]
        .concat());
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap_or_else(|e| panic!("write server.ext: {e}"));
        std::fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n")
            .unwrap_or_else(|e| panic!("write client.ext: {e}"));
        for who in ["server", "client"] {
            let (key, csr, crt, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("{who}.ext"),
            );
            let subject = format!("/CN=keel-test-{who}");
            run(&[
                &["req"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", &subject],
            ]
            .concat());
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ]);
        }
        Self {
            ca_cert: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            _dir: dir,
        }
    }
}

/// A running Redis deployment of one topology and the [`Endpoint`](keel_cache::Endpoint)
/// that reaches it, for suites that run the same tests on every topology (the coordination
/// tests open one store per simulated process on it). The servers stop when this is dropped.
pub struct RedisTopology {
    endpoint: keel_cache::Endpoint,
    standalone: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
    _sentinel: Option<RedisSentinel>,
}

impl RedisTopology {
    /// One redis-server.
    pub fn standalone() -> Self {
        let server = RedisServer::start();
        Self {
            endpoint: keel_cache::Endpoint::Url(keel_cache::Secret::new(server.url())),
            standalone: Some(server),
            _cluster: None,
            _sentinel: None,
        }
    }

    /// A 3-master Cluster.
    pub fn cluster() -> Self {
        let cluster = RedisCluster::start();
        Self {
            endpoint: keel_cache::Endpoint::Cluster {
                nodes: cluster.urls(),
                username: None,
                password: None,
            },
            standalone: None,
            _cluster: Some(cluster),
            _sentinel: None,
        }
    }

    /// A master with a replica behind sentinels (ready for lookups, not for failover).
    pub fn sentinel() -> Self {
        let sentinel = RedisSentinel::start_for_lookups();
        Self {
            endpoint: keel_cache::Endpoint::Sentinel {
                sentinels: sentinel.sentinel_addrs(),
                master: RedisSentinel::MASTER.into(),
                username: None,
                password: None,
                database: 0,
            },
            standalone: None,
            _cluster: None,
            _sentinel: Some(sentinel),
        }
    }

    /// The endpoint reaching this deployment.
    pub fn endpoint(&self) -> &keel_cache::Endpoint {
        &self.endpoint
    }

    /// The server of a standalone deployment (to pause, kill or inspect it).
    pub fn server(&self) -> Option<&RedisServer> {
        self.standalone.as_ref()
    }
}
