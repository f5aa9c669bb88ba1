//! The in-process backend, on moka.
//!
//! Bounded by entry count or by bytes (key + value + a fixed per-entry overhead), with a
//! per-entry TTL. Every write to a key (`set`, `delete`, the batches, `expire`, `incr_by`,
//! `set_nx`, `set_if_match`) runs under one of 1024 mutexes chosen by a hash of the key, so
//! the writes and read-modify-writes on one key are linearizable: each takes effect at one
//! instant between its call and its return, in one order everyone observes. Entries the cache
//! drops on its own are counted in `<ns>_cache_evictions_total{cause="size"|"expired"}`; the
//! `<ns>_cache_items` gauge is brought up to date (pending maintenance run first) on every
//! render of the metrics registry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_metrics::{CacheInstruments, MetricsService, Operation, Status};
use moka::Expiry;
use moka::notification::RemovalCause;
// A TSC clock: two reads per operation (start, elapsed) cost ~10 ns instead of ~45 ns with
// `std::time::Instant` on a KVM guest.
use quanta::Instant;

use crate::contract::{Cache, CacheFuture, CacheKind, Limits, parse_counter};
use crate::error::key_for_error;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

/// Bytes charged per entry on top of key and value in byte-bounded mode (moka's bookkeeping,
/// the `String` and `Bytes` headers), so many tiny entries cannot exceed the budget by far.
const ENTRY_OVERHEAD: usize = 96;

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

#[derive(Clone)]
struct Stored {
    data: Bytes,
    expires_at: Option<Instant>,
}

impl Stored {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

struct PerEntryExpiry;

impl PerEntryExpiry {
    fn remaining(v: &Stored) -> Option<Duration> {
        v.expires_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

impl Expiry<String, Stored> for PerEntryExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        v: &Stored,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Self::remaining(v)
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Stored,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(v)
    }
}

type Store = moka::sync::Cache<String, Stored>;

/// Mutexes ordering the writes to each key: a key's writes all take the same stripe (chosen
/// by a hash of the key), so a read-modify-write (`incr_by`, `expire`, …) can never interleave
/// with a plain `set` or `delete` of the same key. moka's own compute path orders only against
/// other computes, not against `insert`/`remove`, which is why every path goes through here.
/// `close` takes every stripe, so a write that passed the open check lands before `close`
/// empties the cache, never after.
///
/// Cost: one uncontended mutex per write (a batch takes its keys' stripes one at a time, never
/// two at once, so there is no lock order to get wrong). Reads take no stripe.
struct Stripes {
    locks: Box<[std::sync::Mutex<()>]>,
}

/// Enough that two hot keys rarely share a stripe on a many-core machine.
const STRIPES: usize = 1024;

impl Stripes {
    fn new() -> Self {
        Self {
            locks: (0..STRIPES).map(|_| std::sync::Mutex::new(())).collect(),
        }
    }

    /// The stripe of `key`, locked. A panic while holding it (there is none on these paths)
    /// would leave no broken invariant behind, so a poisoned stripe is simply taken.
    #[inline]
    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        // FNV-1a: a few cycles for a short key, and spreads keys well enough for 1024 stripes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let i = (h ^ (h >> 32)) as usize % STRIPES;
        self.locks[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every stripe, in index order (writers hold at most one, so this cannot deadlock).
    fn lock_all(&self) -> Vec<std::sync::MutexGuard<'_, ()>> {
        self.locks
            .iter()
            .map(|l| l.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect()
    }
}

/// In-process locks: owner token and expiry per name, and the per-name fence counters.
#[derive(Default)]
struct LockTable {
    held: std::collections::HashMap<String, (String, std::time::Instant)>,
    fences: std::collections::HashMap<String, u64>,
}

struct Shared {
    name: String,
    store: Store,
    stripes: Stripes,
    locks: std::sync::Mutex<LockTable>,
    default_ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    limits: Limits,
    open: AtomicBool,
    metrics: CacheInstruments,
}

/// Builder for [`MemoryCache`].
#[derive(Debug, Clone)]
pub struct MemoryCacheBuilder {
    name: String,
    capacity: Capacity,
    default_ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    limits: Limits,
    metrics: Option<MetricsService>,
    count_evictions: bool,
}

impl MemoryCacheBuilder {
    /// Whether to count evictions in `<ns>_cache_evictions_total` (default: yes). Counting
    /// needs a moka eviction listener, which makes moka take a per-key lock on every write;
    /// turning it off makes write-heavy workloads markedly faster (see BENCHMARKS.md).
    pub fn count_evictions(mut self, on: bool) -> Self {
        self.count_evictions = on;
        self
    }

    /// Bounds the cache (default: 100 000 entries).
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
    /// remainder. moka then expires entries by this one cache-wide TTL instead of a per-entry
    /// timer, which makes every hit cheaper (no per-entry expiry bookkeeping on reads). An
    /// entry with a shorter TTL is still never served after it expires (every read checks),
    /// but its memory is reclaimed only `max` after its last write, or on eviction. Meant for
    /// caches whose entries all expire soon anyway: the tiered cache's L1 (the config factory
    /// builds it with `max_ttl = l1_ttl`).
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
            .unwrap_or_else(|| MetricsService::global().clone());
        let metrics = service.cache_metrics().for_cache(&self.name);
        let mut builder = match self.max_ttl {
            // One TTL for the whole cache, counted from each entry's last write; never earlier
            // than the entry's own (capped) expiry.
            Some(max) => Store::builder().time_to_live(max),
            None => Store::builder().expire_after(PerEntryExpiry),
        };
        if self.count_evictions {
            let listener_metrics = metrics.clone();
            builder = builder.eviction_listener(move |_, _, cause| match cause {
                RemovalCause::Size => listener_metrics.record_size_eviction(),
                RemovalCause::Expired => listener_metrics.record_expiry_eviction(),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            });
        }
        let store = match self.capacity {
            Capacity::Entries(n) => builder.max_capacity(n).build(),
            Capacity::Bytes(n) => builder
                .max_capacity(n)
                .weigher(|k: &String, v: &Stored| {
                    u32::try_from(k.len() + v.data.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build(),
        };
        let shared = Arc::new(Shared {
            name: self.name,
            store,
            stripes: Stripes::new(),
            locks: std::sync::Mutex::default(),
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            limits: self.limits,
            open: AtomicBool::new(true),
            metrics,
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        service.on_render(move || {
            let Some(shared) = weak.upgrade() else {
                return false;
            };
            shared.refresh_items();
            true
        });
        MemoryCache { shared }
    }
}

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
        MemoryCacheBuilder {
            name: name.into(),
            capacity: Capacity::default(),
            default_ttl: None,
            max_ttl: None,
            limits: Limits::default(),
            metrics: None,
            count_evictions: true,
        }
    }

    /// Number of live entries (exact when no writer is active). O(entries): it runs pending
    /// maintenance and skips entries that have expired but not been swept yet.
    pub fn len(&self) -> u64 {
        self.shared.live_count()
    }

    /// `get` without the future and without this cache's own operation metrics: the tiered
    /// cache reads its L1 this way and counts the hit or miss itself
    /// (`tiered_hits_total{tier="l1"}`), so an L1 read is neither counted twice nor timed.
    /// Errors (a bad key, a closed L1) are still counted, as `get` errors of this cache.
    pub(crate) fn get_uncounted(&self, key: &str) -> Result<Option<Bytes>> {
        let s = &self.shared;
        if let Err(e) = s.limits.check_key(key).and_then(|()| s.ensure_open()) {
            // Not timed: the checks take nanoseconds, and a hit is not timed either.
            s.metrics
                .record(Operation::Get, Status::Error, Duration::ZERO);
            return Err(e);
        }
        Ok(s.live(key, Instant::now()).map(|v| v.data))
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shared {
    /// moka sweeps expired entries on a timer wheel with ~1 s buckets, so `entry_count` can
    /// include the dead for a while; counting with our own expiry check is exact.
    fn live_count(&self) -> u64 {
        self.store.run_pending_tasks();
        let now = Instant::now();
        self.store.iter().filter(|(_, v)| v.is_live(now)).count() as u64
    }

    fn refresh_items(&self) {
        let items = if self.open.load(Ordering::Acquire) {
            i64::try_from(self.live_count()).unwrap_or(i64::MAX)
        } else {
            0
        };
        self.metrics.set_items(items);
    }

    #[inline]
    fn ensure_open(&self) -> Result<()> {
        if self.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::Closed {
                cache: self.name.clone(),
            })
        }
    }

    fn expiry(&self, key: &str, ttl: Ttl, now: Instant) -> Result<Option<Instant>> {
        let ttl = ttl.resolve(self.default_ttl, key)?;
        let ttl = match self.max_ttl {
            Some(max) => Some(ttl.map_or(max, |d| d.min(max))),
            None => ttl,
        };
        Ok(ttl.map(|d| now + d))
    }

    /// A live entry or `None`.
    #[inline]
    fn live(&self, key: &str, now: Instant) -> Option<Stored> {
        self.store.get(key).filter(|s| s.is_live(now))
    }

    /// Runs `f` under the key's stripe with the entry live at that moment (if any); `f`
    /// returns the new entry to store (or `None` to leave it) and the call's result. The open
    /// check is made under the stripe, so nothing is written after `close` has emptied the
    /// cache.
    fn compute<T>(
        &self,
        key: &str,
        f: impl FnOnce(Option<Stored>) -> Result<(Option<Stored>, T)>,
    ) -> Result<T> {
        let _stripe = self.stripes.lock(key);
        self.ensure_open()?;
        // Liveness as of now, not as of the call: the stripe may have been waited for.
        let (next, out) = f(self.live(key, Instant::now()))?;
        if let Some(next) = next {
            self.store.insert(key.to_owned(), next);
        }
        Ok(out)
    }

    /// Stores `value` under the key's stripe (after the open check, made under it).
    fn put(&self, key: &str, value: Stored) -> Result<()> {
        let _stripe = self.stripes.lock(key);
        self.ensure_open()?;
        self.store.insert(key.to_owned(), value);
        Ok(())
    }

    /// Removes `key` under its stripe; whether a live entry was there.
    fn remove(&self, key: &str) -> Result<bool> {
        let _stripe = self.stripes.lock(key);
        self.ensure_open()?;
        let now = Instant::now();
        Ok(self.store.remove(key).is_some_and(|v| v.is_live(now)))
    }

    /// Records `op` with its outcome and passes the result through.
    #[inline]
    fn finish<T>(&self, op: Operation, start: Instant, result: Result<T>) -> Result<T> {
        let status = if result.is_ok() {
            Status::Ok
        } else {
            Status::Error
        };
        self.metrics.record(op, status, start.elapsed());
        result
    }
}

/// The operations themselves: synchronous, wrapped in ready futures by the `Cache` impl.
impl Shared {
    fn connect(&self) -> Result<()> {
        self.open.store(true, Ordering::Release);
        Ok(())
    }

    fn close(&self) -> Result<()> {
        // Drop the entries: a closed cache should not pin memory.
        // Under every stripe: a write that already passed its open check finishes first, and
        // none starts until the cache is marked closed.
        let _all = self.stripes.lock_all();
        if self.open.swap(false, Ordering::AcqRel) {
            self.store.invalidate_all();
            self.store.run_pending_tasks();
            self.metrics.set_items(0);
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let s = self;
        let start = Instant::now();
        let checked = s.limits.check_key(key).and_then(|()| s.ensure_open());
        if let Err(e) = checked {
            s.metrics
                .record(Operation::Get, Status::Error, start.elapsed());
            return Err(e);
        }
        match s.live(key, start) {
            Some(v) => {
                s.metrics.record_hit(start.elapsed());
                Ok(Some(v.data))
            }
            None => {
                s.metrics.record_miss(start.elapsed());
                Ok(None)
            }
        }
    }

    fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<()> {
        let s = self;
        let start = Instant::now();
        let result = (|| {
            s.limits.check_entry(key, &value)?;
            s.ensure_open()?;
            let expires_at = s.expiry(key, ttl, start)?;
            s.put(
                key,
                Stored {
                    data: value,
                    expires_at,
                },
            )
        })();
        s.finish(Operation::Set, start, result)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let s = self;
        let start = Instant::now();
        let result = s.limits.check_key(key).and_then(|()| {
            s.ensure_open()?;
            s.remove(key)
        });
        s.finish(Operation::Delete, start, result)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let s = self;
        let start = Instant::now();
        let result = s.limits.check_key(key).and_then(|()| {
            s.ensure_open()?;
            Ok(s.live(key, start).is_some())
        });
        s.finish(Operation::Exists, start, result)
    }

    fn expire(&self, key: &str, ttl: Ttl) -> Result<bool> {
        let s = self;
        let start = Instant::now();
        let result = (|| {
            s.limits.check_key(key)?;
            s.ensure_open()?;
            let expires_at = s.expiry(key, ttl, start)?;
            s.compute(key, |current| {
                Ok(match current {
                    Some(v) => (
                        Some(Stored {
                            data: v.data,
                            expires_at,
                        }),
                        true,
                    ),
                    None => (None, false),
                })
            })
        })();
        s.finish(Operation::Expire, start, result)
    }

    fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let s = self;
        let start = Instant::now();
        let result = s.limits.check_key(key).and_then(|()| {
            s.ensure_open()?;
            Ok(match s.live(key, start) {
                None => KeyTtl::Missing,
                Some(Stored {
                    expires_at: None, ..
                }) => KeyTtl::Persistent,
                Some(Stored {
                    expires_at: Some(t),
                    ..
                }) => KeyTtl::Expires(t.saturating_duration_since(start)),
            })
        });
        s.finish(Operation::Ttl, start, result)
    }

    fn set_nx(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<bool> {
        let s = self;
        let start = Instant::now();
        let result = (|| {
            s.limits.check_entry(key, &value)?;
            s.ensure_open()?;
            let expires_at = s.expiry(key, ttl, start)?;
            s.compute(key, |current| {
                Ok(match current {
                    Some(_) => (None, false),
                    None => (
                        Some(Stored {
                            data: value,
                            expires_at,
                        }),
                        true,
                    ),
                })
            })
        })();
        s.finish(Operation::SetNx, start, result)
    }

    fn set_if_match(&self, key: &str, value: Bytes, expected: &[u8], ttl: Ttl) -> Result<bool> {
        let s = self;
        let start = Instant::now();
        let result = (|| {
            s.limits.check_entry(key, &value)?;
            s.ensure_open()?;
            let expires_at = s.expiry(key, ttl, start)?;
            s.compute(key, |current| {
                Ok(match current {
                    Some(v) if v.data == expected => (
                        Some(Stored {
                            data: value,
                            expires_at,
                        }),
                        true,
                    ),
                    _ => (None, false),
                })
            })
        })();
        s.finish(Operation::Cas, start, result)
    }

    fn incr_by(&self, key: &str, delta: i64) -> Result<i64> {
        let s = self;
        let start = Instant::now();
        let result = s.limits.check_key(key).and_then(|()| {
            s.ensure_open()?;
            s.compute(key, |current| {
                let (old, expires_at) = match current {
                    None => (0, None),
                    Some(v) => match parse_counter(&v.data) {
                        Some(n) => (n, v.expires_at),
                        None => {
                            return Err(Error::NotAnInteger {
                                key: key_for_error(key),
                            });
                        }
                    },
                };
                let new = old.checked_add(delta).ok_or_else(|| Error::Overflow {
                    key: key_for_error(key),
                    delta,
                })?;
                let data = Bytes::from(new.to_string());
                Ok((Some(Stored { data, expires_at }), new))
            })
        });
        s.finish(Operation::Incr, start, result)
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let s = self;
        let start = Instant::now();
        let result = (|| {
            s.limits.check_keys(keys)?;
            s.ensure_open()?;
            Ok(keys
                .iter()
                .map(|k| s.live(k, start).map(|v| v.data))
                .collect::<Vec<_>>())
        })();
        if let Ok(values) = &result {
            let hits = values.iter().filter(|v| v.is_some()).count() as u64;
            s.metrics.record_lookups(hits, values.len() as u64 - hits);
        }
        s.finish(Operation::GetMany, start, result)
    }

    fn set_many(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()> {
        let s = self;
        let start = Instant::now();
        let result = (|| {
            s.limits.check_entries(items)?;
            s.ensure_open()?;
            let first = items.first().map_or("", |(k, _)| *k);
            let expires_at = s.expiry(first, ttl, start)?;
            for (key, value) in items {
                s.put(
                    key,
                    Stored {
                        data: value.clone(),
                        expires_at,
                    },
                )?;
            }
            Ok(())
        })();
        s.finish(Operation::SetMany, start, result)
    }

    fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let s = self;
        let start = Instant::now();
        let result = (|| {
            s.limits.check_keys(keys)?;
            s.ensure_open()?;
            let mut removed = 0;
            for key in keys {
                removed += u64::from(s.remove(key)?);
            }
            Ok(removed)
        })();
        s.finish(Operation::DeleteMany, start, result)
    }

    fn clear(&self) -> Result<()> {
        let s = self;
        let start = Instant::now();
        let result = s.ensure_open().map(|()| {
            s.store.invalidate_all();
            s.store.run_pending_tasks();
        });
        s.finish(Operation::Clear, start, result)
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

impl Shared {
    fn lock_table(&self) -> Result<std::sync::MutexGuard<'_, LockTable>> {
        self.ensure_open()?;
        Ok(self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The holder of `name` if its lock has not expired (expired entries are dropped).
    fn live_holder<'t>(table: &'t mut LockTable, name: &str) -> Option<&'t String> {
        let now = std::time::Instant::now();
        if table.held.get(name).is_some_and(|(_, until)| *until <= now) {
            table.held.remove(name);
        }
        table.held.get(name).map(|(token, _)| token)
    }
}

/// Same semantics as the Redis locks, in-process: one mutex orders every lock operation, so
/// acquire-and-increment, check-and-release and check-and-extend are each atomic.
impl crate::lock::LockStore for MemoryCache {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CacheFuture<'a, Result<Option<u64>>> {
        CacheFuture::ready(self.shared.lock_table().map(|mut t| {
            if Shared::live_holder(&mut t, name).is_some() {
                return None;
            }
            let until = std::time::Instant::now() + ttl;
            t.held.insert(name.to_owned(), (token.to_owned(), until));
            let fence = t.fences.entry(name.to_owned()).or_insert(0);
            *fence += 1;
            Some(*fence)
        }))
    }

    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::ready(self.shared.lock_table().map(|mut t| {
            if Shared::live_holder(&mut t, name).is_some_and(|h| h == token) {
                t.held.remove(name);
                true
            } else {
                false
            }
        }))
    }

    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::ready(self.shared.lock_table().map(|mut t| {
            if Shared::live_holder(&mut t, name).is_some_and(|h| h == token) {
                let until = std::time::Instant::now() + ttl;
                t.held.insert(name.to_owned(), (token.to_owned(), until));
                true
            } else {
                false
            }
        }))
    }

    fn holder<'a>(&'a self, name: &'a str) -> CacheFuture<'a, Result<Option<String>>> {
        CacheFuture::ready(
            self.shared
                .lock_table()
                .map(|mut t| Shared::live_holder(&mut t, name).cloned()),
        )
    }
}
