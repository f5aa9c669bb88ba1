//! [`TieredCacheBuilder`]: L1 TTL, invalidation mode, stale-if-error, jitter and metrics of
//! a [`TieredCache`].

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use keel_metrics::MetricsService;

use super::generations::Generations;
use super::metrics::TierMetrics;
use super::{DEFAULT_L1_TTL, Inner, Invalidation, TieredCache};
use crate::jitter::Jitter;
use crate::memory::MemoryCache;
use crate::redis::RedisCache;
use crate::{Error, Result};

impl TieredCache {
    /// A builder for a tiered cache called `name` over `l1` and `l2`.
    ///
    /// Build `l1` with [`MemoryCacheBuilder::max_ttl`](crate::MemoryCacheBuilder::max_ttl) set
    /// to the `l1_ttl` (plus the [`stale_if_error`](TieredCacheBuilder::stale_if_error)
    /// window, if any): no L1 entry lives longer anyway (the config factory does this).
    pub fn builder(name: impl Into<String>, l1: MemoryCache, l2: RedisCache) -> TieredCacheBuilder {
        TieredCacheBuilder {
            name: name.into(),
            l1,
            l2,
            l1_ttl: DEFAULT_L1_TTL,
            invalidation: Invalidation::default(),
            metrics: None,
            stale_if_error: None,
            jitter: None,
        }
    }
}

/// Builder for [`TieredCache`].
#[derive(Debug)]
pub struct TieredCacheBuilder {
    name: String,
    l1: MemoryCache,
    l2: RedisCache,
    l1_ttl: Duration,
    invalidation: Invalidation,
    metrics: Option<MetricsService>,
    stale_if_error: Option<Duration>,
    jitter: Option<Jitter>,
}

impl TieredCacheBuilder {
    /// The longest an entry stays in L1 (default 60 s): the bound on staleness if an
    /// invalidation is lost without the connection dropping.
    pub fn l1_ttl(mut self, d: Duration) -> Self {
        self.l1_ttl = d;
        self
    }

    /// Stale-if-error (default: off): while L2 is unreachable (a read fails with a
    /// [transient](Error::is_transient) error), an L1 entry is served up to `window` past its
    /// L1 expiry instead of the error (counted in `tiered_stale_served_total`). L1 entries are
    /// kept `window` longer for this (build L1 with `max_ttl` at least `l1_ttl + window`);
    /// while L2 answers, an entry past its L1 expiry is a miss as before, and every L2 answer
    /// updates L1 even while unsubscribed (a hit overwrites the copy, a miss deletes it), so
    /// an outage never serves a copy L2 has shown outdated. The first L2 read that succeeds
    /// after a stale serve flushes L1, as does a resubscription.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(crate::ttl::round_up_to_millis(window)).filter(|w| !w.is_zero());
        self
    }

    /// TTL jitter for L1 fills (default: none): each fill's L1 lifetime is shortened by a
    /// random fraction below `jitter` (counted in `tiered_l1_jittered_fills_total`), so the
    /// copies a fleet filled at once do not all expire at once.
    pub fn ttl_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// How L1 learns of changes in L2 (default [`Invalidation::Tracking`]).
    pub fn invalidation(mut self, mode: Invalidation) -> Self {
        self.invalidation = mode;
        self
    }

    /// Registry for the `tiered_*` metrics (default: [`MetricsService::global`]).
    pub fn metrics(mut self, metrics: &MetricsService) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Builds the cache (call `connect` to start it).
    ///
    /// # Errors
    /// [`Error::Backend`] if the OS has no randomness for the node id.
    pub fn build(self) -> Result<TieredCache> {
        let service = self
            .metrics
            .unwrap_or_else(|| MetricsService::global().clone());
        let channel = format!("{}__keel_invalidate", self.l2.prefix());
        Ok(TieredCache {
            inner: Arc::new(Inner {
                generations: Generations::new(),
                metrics: TierMetrics::new(&service, &self.name),
                name: self.name,
                l1: self.l1,
                l2: self.l2,
                l1_ttl: crate::ttl::round_up_to_millis(self.l1_ttl),
                node: node_id()?,
                channel,
                invalidation: self.invalidation,
                tracking: AtomicBool::new(false),
                tracking_refused: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                subscribe_error: std::sync::Mutex::new(None),
                undelivered: std::sync::Mutex::new(None),
                settling: std::sync::atomic::AtomicUsize::new(0),
                settle_all: AtomicBool::new(false),
                listener: std::sync::Mutex::new(None),
                stale_if_error: self.stale_if_error,
                jitter: self.jitter,
                degraded: AtomicBool::new(false),
            }),
        })
    }
}

/// A 128-bit random id for this node's invalidation messages, from the OS CSPRNG.
fn node_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Backend {
        cache: "tiered".into(),
        operation: "node id",
        message: format!("no randomness: {e}"),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
