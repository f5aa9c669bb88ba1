//! A real Prometheus server and the reference Python OpenMetrics parser.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;
use crate::process::{ServerProcess, free_port, require_program};

/// A Prometheus server on a free loopback port that scrapes one target every 500 ms.
#[derive(Debug)]
pub struct Prometheus {
    addr: SocketAddr,
    // Field order matters: kill the server before removing its data directory.
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `http://{target}/metrics`.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with(target, None)
    }

    /// Starts Prometheus scraping `http://{target}/metrics` and evaluating the rule file
    /// `rules` every 500 ms.
    pub fn start_with_rules(target: SocketAddr, rules: &std::path::Path) -> Self {
        Self::start_with(target, Some(rules))
    }

    fn start_with(target: SocketAddr, rules: Option<&std::path::Path>) -> Self {
        let binary = require_program("prometheus", "the Debian package `prometheus`");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config = dir.path().join("prometheus.yml");
        let rule_files = rules
            .map(|r| format!("rule_files: ['{}']\n", r.display()))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n  evaluation_interval: 500ms\n\
                 {rule_files}\
                 scrape_configs:\n  - job_name: keel\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut process = ServerProcess::spawn("prometheus", cmd, dir.path().join("log"));
        process.wait_for_port(addr, Duration::from_secs(30));
        Self {
            addr,
            process,
            _dir: dir,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs an instant query; returns the `data.result` array (empty on any failure).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", http::encode_query(expr));
        let Ok((200, body)) = http::get(self.addr, &path) else {
            return Vec::new();
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The rule groups (`data.groups` of `/api/v1/rules`; empty on any failure).
    pub fn rules(&self) -> Vec<serde_json::Value> {
        let Ok((200, body)) = http::get(self.addr, "/api/v1/rules") else {
            return Vec::new();
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["groups"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Polls `query(expr)` until it returns at least one sample, or panics after `timeout`
    /// with the scrape target's health and the server log.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(expr);
            if !result.is_empty() {
                return result;
            }
            if Instant::now() > deadline {
                let targets = http::get(self.addr, "/api/v1/targets")
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                panic!(
                    "prometheus returned nothing for {expr} within {timeout:?}\ntargets: {targets}\nlog:\n{}",
                    self.process.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The Python interpreter of the test venv (`$KEEL_VENV/bin/python`, made by scripts/test.sh).
pub fn venv_python() -> PathBuf {
    require_program(
        "python",
        "the test venv (scripts/test.sh creates $KEEL_VENV)",
    )
}

/// The value of one sample in a text exposition: `series` is the metric name with its labels
/// exactly as rendered (`ns_hits_total{cache="a",tier="l1"}`); `None` when no line has it.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Parses `exposition` with the reference parser (`prometheus_client.openmetrics.parser`) and
/// returns `name type sample-count` per family, or the parser's error.
pub fn parse_openmetrics(exposition: &str) -> Result<Vec<String>, String> {
    const SCRIPT: &str = concat!(
        "import sys\n",
        "from prometheus_client.openmetrics.parser import text_string_to_metric_families\n",
        "for f in text_string_to_metric_families(sys.stdin.read()):\n",
        "    print(f.name, f.type, len(f.samples))\n",
    );
    let mut child = Command::new(venv_python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run python: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
