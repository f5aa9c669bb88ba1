//! Test helpers for Keel (dev-dependency only).
//!
//! - [`conformance`]: the one cache conformance suite every backend runs, expanded into
//!   separate `#[tokio::test]`s by [`cache_conformance!`].
//! - [`process`]: real servers started on free loopback ports, killed on drop.
//! - [`redis`]: `redis-server` on a free port with kill, SIGSTOP/SIGCONT and restart.
//! - [`prometheus`]: a real Prometheus server scraping a target, queried over its HTTP API,
//!   and the Python `prometheus_client` OpenMetrics parser.
//!
//! - [`osmem`]: `osmem-server` (OpenSearch-compatible, in memory) with kill/restart/pause.
//! - [`proxy`]: an HTTP(S) proxy that injects `_bulk` faults (429, 503, item failures).
//! - [`redis_proxy`]: a TCP proxy in front of Redis that cuts a connection right after
//!   forwarding a chosen command (the command runs, its reply is lost).
//! - [`writer`]: in-memory `Write` destinations for log sink tests.
//! - [`listener`]: Unix datagram, UDP and octet-counting TCP receivers and a journal
//!   datagram parser, for the syslog and journald sink tests.
//!
//! Servers are never assumed to be running: helpers start them and fail with a message that
//! names the missing program (`scripts/test.sh` installs them).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conformance;
pub mod http;
pub mod listener;
pub mod osmem;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod redis;
pub mod redis_proxy;
pub mod writer;

/// Polls the async `check` every 50 ms until it returns true, panicking with `what` after
/// `timeout` (the async twin of [`redis::wait_until`]; give generous timeouts: the test
/// machines run loaded).
pub async fn eventually(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
