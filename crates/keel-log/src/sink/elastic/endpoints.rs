//! Several endpoints of one cluster (`urls = [...]`): requests go round-robin to the
//! endpoints that are up; one whose request fails at the connection or with a server error
//! is taken out, and health-checked (`GET /`, any answer below 500 is alive) back in after
//! 1 s, then 2 s, 4 s … up to 30 s while it keeps failing. When every endpoint is out, the
//! one due soonest gets the next request (the request is its health check), so one endpoint
//! behaves exactly like a single `url`.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::metrics::EsMetrics;
use super::options::{Auth, bulk_url, redact_url};
use crate::error::Error;

/// The first delay before a failed endpoint is checked; doubles up to [`MAX_DOWN`].
const FIRST_DOWN: Duration = Duration::from_secs(1);
const MAX_DOWN: Duration = Duration::from_secs(30);
/// Timeout of one health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

struct Endpoint {
    bulk: reqwest::Url,
    root: reqwest::Url,
    /// Out of rotation until then (`None`: up).
    down_until: Option<Instant>,
    /// Failed checks in a row (drives the delay).
    strikes: u32,
    up: Gauge,
    ok: Counter,
    failed: Counter,
}

/// The endpoints and the round-robin cursor.
pub(super) struct Endpoints {
    list: Vec<Endpoint>,
    next: usize,
}

impl Endpoints {
    /// Checks every URL; labels the metrics with each URL (credentials are never in it).
    pub(super) fn new(urls: &[String], metrics: &EsMetrics) -> Result<Self, Error> {
        let mut list = Vec::with_capacity(urls.len());
        for url in urls {
            let bulk = bulk_url(url)?;
            let mut root = bulk.clone();
            root.set_query(None);
            let path = root.path().trim_end_matches("_bulk").to_owned();
            root.set_path(&path);
            let (up, ok, failed) = metrics.endpoint(&redact_url(url));
            up.set(1);
            list.push(Endpoint {
                bulk,
                root,
                down_until: None,
                strikes: 0,
                up,
                ok,
                failed,
            });
        }
        Ok(Self { list, next: 0 })
    }

    /// The endpoint for the next request: the next one up in turn, or when none is up the
    /// one due soonest.
    pub(super) fn pick(&mut self) -> usize {
        let n = self.list.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.list[i].down_until.is_none() {
                self.next = (i + 1) % n;
                return i;
            }
        }
        (0..n).min_by_key(|&i| self.list[i].down_until).unwrap_or(0)
    }

    /// The `_bulk` URL of endpoint `i`.
    pub(super) fn bulk(&self, i: usize) -> reqwest::Url {
        self.list[i].bulk.clone()
    }

    /// Whether any endpoint is in rotation.
    pub(super) fn any_up(&self) -> bool {
        self.list.iter().any(|e| e.down_until.is_none())
    }

    /// A request to `i` was answered (whatever the items said).
    pub(super) fn succeeded(&mut self, i: usize) {
        let e = &mut self.list[i];
        e.ok.inc();
        e.down_until = None;
        e.strikes = 0;
        e.up.set(1);
    }

    /// A request to (or a check of) `i` failed: out of rotation for a while.
    pub(super) fn failed(&mut self, i: usize) {
        let e = &mut self.list[i];
        e.failed.inc();
        let delay = FIRST_DOWN
            .saturating_mul(1 << e.strikes.min(5))
            .min(MAX_DOWN);
        e.strikes = e.strikes.saturating_add(1);
        e.down_until = Some(Instant::now() + delay);
        e.up.set(0);
    }

    /// Health-checks the endpoints out of rotation whose delay has passed (only with more
    /// than one endpoint: a single one is checked by the next request).
    pub(super) async fn check(&mut self, client: &reqwest::Client, auth: &Auth) {
        if self.list.len() < 2 {
            return;
        }
        let now = Instant::now();
        for i in 0..self.list.len() {
            if self.list[i].down_until.is_none_or(|t| t > now) {
                continue;
            }
            let request = authorize(
                client.get(self.list[i].root.clone()).timeout(CHECK_TIMEOUT),
                auth,
            );
            match request.send().await {
                Ok(r) if r.status().as_u16() < 500 => self.succeeded(i),
                _ => self.failed(i),
            }
        }
    }
}

/// Adds the configured credentials to a request.
pub(super) fn authorize(request: reqwest::RequestBuilder, auth: &Auth) -> reqwest::RequestBuilder {
    match auth {
        Auth::None => request,
        Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
        Auth::ApiKey(key) => {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("ApiKey {key}"))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
            value.set_sensitive(true);
            request.header(reqwest::header::AUTHORIZATION, value)
        }
    }
}
