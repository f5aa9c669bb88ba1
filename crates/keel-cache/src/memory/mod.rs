//! The in-process backend.
//!
//! # Layout
//! - [`builder`](MemoryCacheBuilder): capacity (entries or bytes), default and maximum TTL,
//!   limits, metrics.
//! - `core`: the store — a sharded [quick_cache](https://docs.rs/quick_cache) holding each
//!   value with its deadline, per-key stripes ordering the writes, and the operations.
//! - `expiry`: deadlines on a TSC clock, checked on every read, and the background sweep.
//!
//! # Guarantees
//! Bounded by entry count or by bytes (key + value + a fixed per-entry overhead), with a
//! per-entry TTL. Every write to a key (`set`, `delete`, the batches, `expire`, `incr_by`,
//! `set_nx`, `set_if_match`) runs under one of 1024 mutexes chosen by a hash of the key, and
//! `clear` and `close` under all of them, so the writes and read-modify-writes on one key are
//! linearizable: each takes effect at one instant between its call and its return, in one
//! order everyone observes. Reads take no stripe, only the shard's read lock.
//!
//! An expired entry is never served: every read checks its deadline (an entry without one is
//! recognised without reading the clock; with
//! [`coarse_expiry`](MemoryCacheBuilder::coarse_expiry), as a tiered L1 has, against a clock
//! that moves once a kernel tick, so up to two ticks late, never early). It is removed by
//! the read that finds it, by a process-wide background sweep every second (`keel-memory-sweep`, one shard lock at a time)
//! or by eviction. Entries the cache drops on its own are counted in
//! `<ns>_cache_evictions_total{cause="size"|"expired"}`, each exactly once (an expired entry
//! that a `delete` or a read-modify-write finds is counted by it; one that a plain `set`
//! overwrites first is replaced, not evicted, and not counted). The
//! `<ns>_cache_items` gauge is brought up to date (expired entries swept first) on every
//! render of the metrics registry.
//!
//! Metrics: every call is counted in `<ns>_cache_requests_total`; one call in 64 per
//! thread and operation (the first included) is timed for
//! `<ns>_cache_operation_duration_seconds` (see docs/metrics.md).

mod builder;
mod core;
mod expiry;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

pub use self::builder::{Capacity, MemoryCacheBuilder};
use self::core::Shared;
use crate::Result;
use crate::contract::{Cache, CacheFuture, CacheKind};
use crate::ttl::{KeyTtl, Ttl};

/// The in-process cache. Cheap to clone: clones share the same entries.
#[derive(Clone)]
pub struct MemoryCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("name", &self.shared.name)
            .field("default_ttl", &self.shared.default_ttl)
            .field("open", &self.shared.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MemoryCache {
    /// A builder for a cache called `name`.
    pub fn builder(name: impl Into<String>) -> MemoryCacheBuilder {
        MemoryCacheBuilder::new(name.into())
    }

    /// Number of live entries (exact when no writer is active). O(entries): expired entries
    /// are swept (and counted as expiry evictions) first.
    pub fn len(&self) -> u64 {
        self.shared.live_count()
    }

    /// `get` without the future and without this cache's own operation metrics: the tiered
    /// cache reads its L1 this way and counts the hit or miss itself
    /// (`tiered_hits_total{tier="l1"}`), so an L1 read is neither counted twice nor timed.
    /// Errors (a bad key, a closed L1) are still counted, as `get` errors of this cache.
    #[inline]
    pub(crate) fn get_uncounted(&self, key: &str) -> Result<Option<Bytes>> {
        self.shared.get_uncounted(key)
    }

    /// [`get_uncounted`](Self::get_uncounted) that also says whether the entry has more than
    /// `margin` left: the tiered cache's stale-if-error tells fresh L1 entries from those kept
    /// only for an outage this way.
    #[inline]
    pub(crate) fn get_fresh_uncounted(
        &self,
        key: &str,
        margin: Duration,
    ) -> Result<Option<(Bytes, bool)>> {
        self.shared.get_fresh_uncounted(key, margin)
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Cache for MemoryCache {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> CacheKind {
        CacheKind::Memory
    }

    fn connect<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::ready(self.shared.connect())
    }

    fn close<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::ready(self.shared.close())
    }

    fn is_connected(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<Option<Bytes>>> {
        CacheFuture::ready(self.shared.get(key))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<()>> {
        CacheFuture::ready(self.shared.set(key, value, ttl))
    }

    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::ready(self.shared.delete(key))
    }

    fn exists<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::ready(self.shared.exists(key))
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::ready(self.shared.expire(key, ttl))
    }

    fn ttl<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<KeyTtl>> {
        CacheFuture::ready(self.shared.ttl(key))
    }

    fn set_nx<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::ready(self.shared.set_nx(key, value, ttl))
    }

    fn set_if_match<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: &'a [u8],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::ready(self.shared.set_if_match(key, value, expected, ttl))
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64) -> CacheFuture<'a, Result<i64>> {
        CacheFuture::ready(self.shared.incr_by(key, delta))
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<Vec<Option<Bytes>>>> {
        CacheFuture::ready(self.shared.get_many(keys))
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<()>> {
        CacheFuture::ready(self.shared.set_many(items, ttl))
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<u64>> {
        CacheFuture::ready(self.shared.delete_many(keys))
    }

    fn clear<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::ready(self.shared.clear())
    }
}
