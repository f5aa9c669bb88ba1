//! [`MemoryCacheBuilder`]: capacity, TTLs, limits and metrics of a [`MemoryCache`].

use std::sync::Arc;
use std::time::Duration;

use keel_metrics::MetricsService;

use super::MemoryCache;
use super::core::Shared;
use crate::contract::Limits;

/// What bounds the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// At most this many entries.
    Entries(u64),
    /// At most this many bytes of keys + values (+96 bytes per entry).
    Bytes(u64),
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity::Entries(100_000)
    }
}

/// Builder for [`MemoryCache`].
///
/// ```
/// use std::time::Duration;
/// use keel_cache::{Capacity, MemoryCache};
///
/// let cache = MemoryCache::builder("sessions")
///     .capacity(Capacity::Bytes(64 << 20))
///     .default_ttl(Some(Duration::from_secs(300)))
///     .build();
/// # drop(cache);
/// ```
#[derive(Debug, Clone)]
pub struct MemoryCacheBuilder {
    pub(super) name: String,
    pub(super) capacity: Capacity,
    pub(super) default_ttl: Option<Duration>,
    pub(super) max_ttl: Option<Duration>,
    pub(super) limits: Limits,
    pub(super) metrics: Option<MetricsService>,
    pub(super) count_evictions: bool,
    pub(super) time_one_in: u32,
    pub(super) coarse_expiry: bool,
}

impl MemoryCacheBuilder {
    pub(super) fn new(name: String) -> Self {
        Self {
            name,
            capacity: Capacity::default(),
            default_ttl: None,
            max_ttl: None,
            limits: Limits::default(),
            metrics: None,
            count_evictions: true,
            time_one_in: super::core::TIME_ONE_IN,
            coarse_expiry: false,
        }
    }

    /// Checks deadlines against the kernel's coarse monotonic clock instead of the CPU's
    /// time-stamp counter (default: no). Reading it costs a few memory loads instead of a
    /// counter read (~6 ns against ~20 ns on this project's KVM guests, a sixth of an L1 hit),
    /// but it moves only once a kernel tick, so an entry can be served up to two ticks (a
    /// tick is 1–10 ms, `clock_getres(CLOCK_MONOTONIC_COARSE)`) after its deadline, never
    /// before (and `ttl` may report up to two ticks more than is left). Meant for a tiered
    /// cache's L1, whose entries are bounded by `l1_ttl` anyway
    /// (the config factory turns it on there); keep the default where a TTL must hold to the millisecond. Off Linux, the
    /// precise clock is used either way.
    pub fn coarse_expiry(mut self, on: bool) -> Self {
        self.coarse_expiry = on;
        self
    }

    /// Whether to count evictions in `<ns>_cache_evictions_total` (default: yes). The count
    /// is taken in the core's eviction hook, under the shard lock the eviction already holds:
    /// one relaxed atomic add per evicted entry, nothing on reads or on writes that evict
    /// nothing.
    pub fn count_evictions(mut self, on: bool) -> Self {
        self.count_evictions = on;
        self
    }

    /// Times one call in `n` per thread and operation (the first included) for
    /// `<ns>_cache_operation_duration_seconds` (default 64; `1` times every call; `0` counts as
    /// `1`). Every call is still counted in `<ns>_cache_requests_total`, `hits_total` and
    /// `misses_total`; the histogram's count is that of the timed calls, its buckets and sum a
    /// sample of the latencies. Two clock reads per call are a large share of an in-process
    /// call (see docs/metrics.md).
    pub fn time_one_in(mut self, n: u32) -> Self {
        self.time_one_in = n.max(1);
        self
    }

    /// Bounds the cache (default: 100 000 entries). Nothing is allocated up front.
    ///
    /// The bound is split evenly over the core's shards (8 on a 2-core machine; fewer for a
    /// small bound, so that each holds at least 32 entries, and for a byte bound below 32 MiB,
    /// so that each shard holds at least 4 MiB). An entry heavier than one shard's share of a
    /// byte bound is not stored (and counted as a size eviction), as no bound could hold it.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// TTL applied by `Ttl::Default` (default: none, entries live until evicted).
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Caps every entry's lifetime at `max` (`Ttl::Never` and longer TTLs included; rounded up
    /// to whole milliseconds, at most [`MAX_TTL`](crate::MAX_TTL)); `ttl` reports the capped
    /// remainder. Meant for caches whose entries must all expire soon: the tiered cache's L1
    /// (the config factory builds it with `max_ttl = l1_ttl`, plus the `stale_if_error`
    /// window when one is set). It costs nothing on reads: the
    /// capped deadline is stored in the entry like any other.
    pub fn max_ttl(mut self, max: Duration) -> Self {
        self.max_ttl = Some(crate::ttl::round_up_to_millis(max.min(crate::ttl::MAX_TTL)));
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Registry to record into (default: [`MetricsService::global`]).
    pub fn metrics(mut self, metrics: &MetricsService) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Builds an open cache.
    pub fn build(self) -> MemoryCache {
        let service = self
            .metrics
            .clone()
            .unwrap_or_else(|| MetricsService::global().clone());
        let shared = Arc::new(Shared::new(self, &service));
        let weak = Arc::downgrade(&shared);
        service.on_render(move || {
            let Some(shared) = weak.upgrade() else {
                return false;
            };
            shared.refresh_items();
            true
        });
        let sweep: Arc<dyn super::expiry::Sweep> = shared.clone();
        super::expiry::Sweeper::register(Arc::downgrade(&sweep));
        MemoryCache { shared }
    }
}
