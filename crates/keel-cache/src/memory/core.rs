//! The store under [`MemoryCache`](super::MemoryCache): a sharded quick_cache (S3-FIFO-like
//! admission, per-shard locks) holding each value with its deadline, per-key stripes that
//! order the writes to a key, and the operations themselves.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel_metrics::MetricsService;
use keel_metrics::striped::Slot;

use crate::metrics::{CacheInstruments, CacheMetrics, Operation, Status};
use quick_cache::sync::Cache as QuickCache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::builder::{Capacity, MemoryCacheBuilder};
use super::expiry::{self, DeadlineClock, NEVER};
use crate::contract::{Limits, parse_counter};
use crate::error::key_for_error;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

/// Bytes charged per entry on top of key and value in byte-bounded mode (the core's
/// bookkeeping, the key's and the `Bytes` headers), so many tiny entries cannot exceed the
/// budget by far.
pub(super) const ENTRY_OVERHEAD: usize = 96;

/// A byte bound gets one shard per this many bytes (up to the core's default shard count):
/// an entry heavier than a shard's share cannot be stored.
const MIN_SHARD_BYTES: u64 = 4 << 20;

/// A stored value and its deadline (see [`expiry`]).
#[derive(Clone)]
pub(super) struct Stored {
    pub(super) data: Bytes,
    pub(super) expires_at: u64,
}

impl Stored {
    #[inline]
    fn is_live_at(&self, now: u64) -> bool {
        !expiry::passed(self.expires_at, now)
    }

    /// Live now on `clock`? Reads the clock only for an entry with a deadline.
    #[inline]
    fn is_live(&self, clock: DeadlineClock) -> bool {
        self.expires_at == NEVER || self.is_live_at(clock.now())
    }
}

type Key = Box<str>;

/// Weight of an entry: 1 when bounded by entries, its bytes when bounded by bytes.
#[derive(Clone)]
struct Weigh {
    bytes: bool,
}

impl Weighter<Key, Stored> for Weigh {
    #[inline]
    fn weight(&self, k: &Key, v: &Stored) -> u64 {
        if self.bytes {
            (k.len() + v.data.len() + ENTRY_OVERHEAD) as u64
        } else {
            1
        }
    }
}

/// The eviction hook: counts what the core evicts to stay within its bound, by cause (an
/// entry evicted after its deadline counts as expired). It runs under the shard lock that the
/// eviction holds anyway, so each evicted entry is counted exactly once.
#[derive(Clone)]
struct Evictions {
    metrics: Option<CacheInstruments>,
    clock: DeadlineClock,
}

impl Lifecycle<Key, Stored> for Evictions {
    type RequestState = ();

    #[inline]
    fn on_evict(&self, _: &mut (), _: Key, v: Stored) {
        if let Some(m) = &self.metrics {
            if v.is_live(self.clock) {
                m.record_size_eviction();
            } else {
                m.record_expiry_eviction();
            }
        }
    }
}

type Store = QuickCache<Key, Stored, Weigh, DefaultHashBuilder, Evictions>;

/// Mutexes ordering the writes to each key: a key's writes all take the same stripe (chosen
/// by a hash of the key), so a read-modify-write (`incr_by`, `expire`, …) can never interleave
/// with a plain `set` or `delete` of the same key. `clear` and `close` take every stripe, so a
/// read-modify-write that read before them cannot write its result back after them.
///
/// Cost: one uncontended mutex per write (a batch takes its keys' stripes one at a time, never
/// two at once, so there is no lock order to get wrong). Reads take no stripe.
struct Stripes {
    locks: Box<[std::sync::Mutex<()>]>,
    /// Picks a key's stripe (the core's own hash: a few word-sized steps for a short key).
    hasher: DefaultHashBuilder,
}

/// Enough that two hot keys rarely share a stripe on a many-core machine.
const STRIPES: usize = 1024;

impl Stripes {
    fn new() -> Self {
        Self {
            locks: (0..STRIPES).map(|_| std::sync::Mutex::new(())).collect(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// The stripe of `key`, locked. A panic while holding it (there is none on these paths)
    /// would leave no broken invariant behind, so a poisoned stripe is simply taken.
    #[inline]
    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        let h = self.hasher.hash_one(key);
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

/// By default one call in this many (per thread) is timed for the duration histogram; the
/// request counts stay exact. See docs/metrics.md.
pub(super) const TIME_ONE_IN: u32 = 64;

/// The start of a call: a clock reading (in [`expiry`] ticks) for the sampled calls, and the
/// calling thread's metrics [`Slot`].
#[derive(Clone, Copy)]
struct Timer {
    start: Option<u64>,
    slot: Slot,
}

impl Timer {
    #[inline(always)]
    fn start(metrics: &CacheInstruments, one_in: u32, op: Operation) -> Self {
        let slot = keel_metrics::striped::slot();
        Timer {
            start: metrics.sampled(slot, one_in, op).then(expiry::now),
            slot,
        }
    }
}

/// Everything a [`MemoryCache`](super::MemoryCache) and its clones share.
pub(super) struct Shared {
    pub(super) name: String,
    store: Store,
    stripes: Stripes,
    pub(super) default_ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    limits: Limits,
    pub(super) open: AtomicBool,
    metrics: CacheInstruments,
    /// Set by the first write with a deadline: until then the sweep has nothing to do.
    may_expire: AtomicBool,
    /// Time one call in this many (see [`MemoryCacheBuilder::time_one_in`]).
    time_one_in: u32,
    /// What deadlines are written and checked on (see
    /// [`MemoryCacheBuilder::coarse_expiry`]).
    clock: DeadlineClock,
}

impl Shared {
    pub(super) fn new(b: MemoryCacheBuilder, service: &MetricsService) -> Self {
        let metrics = CacheMetrics::of(service).for_cache(&b.name);
        let (estimated_items, weight, bytes) = match b.capacity {
            Capacity::Entries(n) => (n, n, false),
            // A guess at the entry count (used only to size the core's record of recently
            // evicted keys, which decides admission): ~256-byte entries.
            Capacity::Bytes(n) => (n / 256, n, true),
        };
        let mut options = OptionsBuilder::new();
        options
            .estimated_items_capacity(usize::try_from(estimated_items.max(1)).unwrap_or(usize::MAX))
            .weight_capacity(weight.max(1));
        if bytes {
            let default_shards = std::thread::available_parallelism().map_or(4, |n| n.get()) * 4;
            let by_size = usize::try_from(weight / MIN_SHARD_BYTES).unwrap_or(usize::MAX);
            options.shards(by_size.clamp(1, default_shards));
        }
        let options = options
            .build()
            .expect("estimated items and weight capacity are both set");
        let clock = if b.coarse_expiry {
            DeadlineClock::Coarse
        } else {
            DeadlineClock::Precise
        };
        let lifecycle = Evictions {
            metrics: b.count_evictions.then(|| metrics.clone()),
            clock,
        };
        let store = Store::with_options(
            options,
            Weigh { bytes },
            DefaultHashBuilder::default(),
            lifecycle,
        );
        Self {
            name: b.name,
            store,
            stripes: Stripes::new(),
            default_ttl: b.default_ttl,
            max_ttl: b.max_ttl,
            clock,
            limits: b.limits,
            open: AtomicBool::new(true),
            metrics,
            may_expire: AtomicBool::new(false),
            time_one_in: b.time_one_in.max(1),
        }
    }

    /// Removes every expired entry, counting each once; one shard's write lock at a time.
    fn sweep_expired(&self) {
        let now = self.clock.now();
        let removed = Cell::new(0u64);
        self.store.retain(|_, v| {
            let live = v.is_live_at(now);
            if !live {
                removed.set(removed.get() + 1);
            }
            live
        });
        for _ in 0..removed.get() {
            self.metrics.record_expiry_eviction();
        }
    }

    /// Live entries: the expired are swept first, so none is counted. O(entries).
    pub(super) fn live_count(&self) -> u64 {
        if self.may_expire.load(Ordering::Relaxed) {
            self.sweep_expired();
        }
        self.store.len() as u64
    }

    pub(super) fn refresh_items(&self) {
        let items = if self.open.load(Ordering::Acquire) {
            i64::try_from(self.live_count()).unwrap_or(i64::MAX)
        } else {
            0
        };
        self.metrics.set_items(items);
    }

    #[inline]
    pub(super) fn ensure_open(&self) -> Result<()> {
        if self.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::Closed {
                cache: self.name.clone(),
            })
        }
    }

    /// The deadline of a write at `now` with `ttl`, capped by `max_ttl`.
    #[inline]
    fn deadline(&self, key: &str, ttl: Ttl, now: u64) -> Result<u64> {
        let ttl = ttl.resolve(self.default_ttl, key)?;
        let ttl = match self.max_ttl {
            Some(max) => Some(ttl.map_or(max, |d| d.min(max))),
            None => ttl,
        };
        if ttl.is_some() && !self.may_expire.load(Ordering::Relaxed) {
            self.may_expire.store(true, Ordering::Relaxed);
        }
        Ok(self.clock.deadline(now, ttl))
    }

    /// A live entry or `None`. An expired entry found here is removed (unless a write replaced
    /// it meanwhile) and counted as an expiry eviction by whichever call removed it.
    #[inline(always)]
    fn live(&self, key: &str) -> Option<Stored> {
        let v = self.store.get(key)?;
        if v.expires_at == NEVER {
            return Some(v);
        }
        let now = self.clock.now();
        if v.is_live_at(now) {
            return Some(v);
        }
        self.remove_expired(key, now);
        None
    }

    #[cold]
    fn remove_expired(&self, key: &str, now: u64) {
        if self.store.remove_if(key, |v| !v.is_live_at(now)).is_some() {
            self.metrics.record_expiry_eviction();
        }
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
        let (next, out) = f(self.live(key))?;
        if let Some(next) = next {
            self.store.insert(key.into(), next);
        }
        Ok(out)
    }

    /// Stores `value` under the key's stripe (after the open check, made under it).
    fn put(&self, key: &str, value: Stored) -> Result<()> {
        // The key's copy is made before the stripe is taken: less time holding it.
        let owned: Key = key.into();
        let _stripe = self.stripes.lock(key);
        self.ensure_open()?;
        self.store.insert(owned, value);
        Ok(())
    }

    /// Removes `key` under its stripe; whether a live entry was there.
    fn remove(&self, key: &str) -> Result<bool> {
        let _stripe = self.stripes.lock(key);
        self.ensure_open()?;
        Ok(match self.store.remove(key) {
            None => false,
            Some((_, v)) if v.is_live(self.clock) => true,
            Some(_) => {
                // It had expired: removed here, so counted here.
                self.metrics.record_expiry_eviction();
                false
            }
        })
    }

    /// Records `op` with its outcome and passes the result through.
    #[inline(always)]
    fn finish<T>(&self, op: Operation, timer: Timer, result: Result<T>) -> Result<T> {
        let status = if result.is_ok() {
            Status::Ok
        } else {
            Status::Error
        };
        self.record(op, status, timer);
        result
    }

    /// Counts one call; the sampled ones also go into the duration histogram.
    #[inline(always)]
    fn record(&self, op: Operation, status: Status, timer: Timer) {
        match timer.start {
            Some(start) => {
                let elapsed = expiry::between(start, expiry::now());
                self.metrics.record_in(timer.slot, op, status, elapsed);
            }
            None => self.metrics.count_in(timer.slot, op, status),
        }
    }

    /// `get` without this cache's own operation metrics (see
    /// [`MemoryCache::get_uncounted`](super::MemoryCache::get_uncounted)).
    #[inline]
    pub(super) fn get_uncounted(&self, key: &str) -> Result<Option<Bytes>> {
        if let Err(e) = self.limits.check_key(key).and_then(|()| self.ensure_open()) {
            self.metrics
                .record(Operation::Get, Status::Error, Duration::ZERO);
            return Err(e);
        }
        Ok(self.live(key).map(|v| v.data))
    }

    /// [`get_uncounted`](Self::get_uncounted) that also says whether the entry has more
    /// than `margin` left (one clock read for both checks).
    #[inline]
    pub(super) fn get_fresh_uncounted(
        &self,
        key: &str,
        margin: Duration,
    ) -> Result<Option<(Bytes, bool)>> {
        if let Err(e) = self.limits.check_key(key).and_then(|()| self.ensure_open()) {
            self.metrics
                .record(Operation::Get, Status::Error, Duration::ZERO);
            return Err(e);
        }
        let Some(v) = self.store.get(key) else {
            return Ok(None);
        };
        if v.expires_at == NEVER {
            return Ok(Some((v.data, true)));
        }
        let now = self.clock.now();
        if !v.is_live_at(now) {
            self.remove_expired(key, now);
            return Ok(None);
        }
        Ok(Some((
            v.data,
            v.expires_at - now > self.clock.ticks(margin),
        )))
    }
}

impl super::expiry::Sweep for Shared {
    fn sweep(&self) {
        if self.may_expire.load(Ordering::Relaxed) && self.open.load(Ordering::Acquire) {
            self.sweep_expired();
        }
    }
}

/// The operations themselves: synchronous, wrapped in ready futures by the `Cache` impl.
impl Shared {
    pub(super) fn connect(&self) -> Result<()> {
        self.open.store(true, Ordering::Release);
        Ok(())
    }

    pub(super) fn close(&self) -> Result<()> {
        // Drop the entries: a closed cache should not pin memory.
        // Under every stripe: a write that already passed its open check finishes first, and
        // none starts until the cache is marked closed.
        let _all = self.stripes.lock_all();
        if self.open.swap(false, Ordering::AcqRel) {
            self.store.clear();
            self.metrics.set_items(0);
        }
        Ok(())
    }

    #[inline]
    pub(super) fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Get);
        let checked = self.limits.check_key(key).and_then(|()| self.ensure_open());
        if let Err(e) = checked {
            self.record(Operation::Get, Status::Error, timer);
            return Err(e);
        }
        match self.live(key) {
            Some(v) => {
                self.record(Operation::Get, Status::Hit, timer);
                Ok(Some(v.data))
            }
            None => {
                self.record(Operation::Get, Status::Miss, timer);
                Ok(None)
            }
        }
    }

    #[inline]
    pub(super) fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<()> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Set);
        let result = (|| {
            self.limits.check_entry(key, &value)?;
            self.ensure_open()?;
            let expires_at = match (ttl, self.default_ttl, self.max_ttl) {
                // The common case reads no clock.
                (Ttl::Never, _, None) | (Ttl::Default, None, None) => NEVER,
                _ => self.deadline(key, ttl, self.clock.now())?,
            };
            self.put(
                key,
                Stored {
                    data: value,
                    expires_at,
                },
            )
        })();
        self.finish(Operation::Set, timer, result)
    }

    pub(super) fn delete(&self, key: &str) -> Result<bool> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Delete);
        let result = self.limits.check_key(key).and_then(|()| {
            self.ensure_open()?;
            self.remove(key)
        });
        self.finish(Operation::Delete, timer, result)
    }

    pub(super) fn exists(&self, key: &str) -> Result<bool> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Exists);
        let result = self.limits.check_key(key).and_then(|()| {
            self.ensure_open()?;
            Ok(self.live(key).is_some())
        });
        self.finish(Operation::Exists, timer, result)
    }

    pub(super) fn expire(&self, key: &str, ttl: Ttl) -> Result<bool> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Expire);
        let result = (|| {
            self.limits.check_key(key)?;
            self.ensure_open()?;
            let expires_at = self.deadline(key, ttl, self.clock.now())?;
            self.compute(key, |current| {
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
        self.finish(Operation::Expire, timer, result)
    }

    pub(super) fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Ttl);
        let result = self.limits.check_key(key).and_then(|()| {
            self.ensure_open()?;
            Ok(match self.live(key) {
                None => KeyTtl::Missing,
                Some(Stored {
                    expires_at: NEVER, ..
                }) => KeyTtl::Persistent,
                Some(Stored { expires_at, .. }) => {
                    KeyTtl::Expires(self.clock.between(self.clock.now(), expires_at))
                }
            })
        });
        self.finish(Operation::Ttl, timer, result)
    }

    pub(super) fn set_nx(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<bool> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::SetNx);
        let result = (|| {
            self.limits.check_entry(key, &value)?;
            self.ensure_open()?;
            let expires_at = self.deadline(key, ttl, self.clock.now())?;
            self.compute(key, |current| {
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
        self.finish(Operation::SetNx, timer, result)
    }

    pub(super) fn set_if_match(
        &self,
        key: &str,
        value: Bytes,
        expected: &[u8],
        ttl: Ttl,
    ) -> Result<bool> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Cas);
        let result = (|| {
            self.limits.check_entry(key, &value)?;
            self.ensure_open()?;
            let expires_at = self.deadline(key, ttl, self.clock.now())?;
            self.compute(key, |current| {
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
        self.finish(Operation::Cas, timer, result)
    }

    pub(super) fn incr_by(&self, key: &str, delta: i64) -> Result<i64> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Incr);
        let result = self.limits.check_key(key).and_then(|()| {
            self.ensure_open()?;
            self.compute(key, |current| {
                let (old, expires_at) = match current {
                    None => (0, NEVER),
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
        self.finish(Operation::Incr, timer, result)
    }

    pub(super) fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::GetMany);
        let result = (|| {
            self.limits.check_keys(keys)?;
            self.ensure_open()?;
            Ok(keys
                .iter()
                .map(|k| self.live(k).map(|v| v.data))
                .collect::<Vec<_>>())
        })();
        if let Ok(values) = &result {
            let hits = values.iter().filter(|v| v.is_some()).count() as u64;
            self.metrics
                .record_lookups(hits, values.len() as u64 - hits);
        }
        self.finish(Operation::GetMany, timer, result)
    }

    pub(super) fn set_many(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::SetMany);
        let result = (|| {
            self.limits.check_entries(items)?;
            self.ensure_open()?;
            let first = items.first().map_or("", |(k, _)| *k);
            let expires_at = self.deadline(first, ttl, self.clock.now())?;
            for (key, value) in items {
                self.put(
                    key,
                    Stored {
                        data: value.clone(),
                        expires_at,
                    },
                )?;
            }
            Ok(())
        })();
        self.finish(Operation::SetMany, timer, result)
    }

    pub(super) fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::DeleteMany);
        let result = (|| {
            self.limits.check_keys(keys)?;
            self.ensure_open()?;
            let mut removed = 0;
            for key in keys {
                removed += u64::from(self.remove(key)?);
            }
            Ok(removed)
        })();
        self.finish(Operation::DeleteMany, timer, result)
    }

    pub(super) fn clear(&self) -> Result<()> {
        let timer = Timer::start(&self.metrics, self.time_one_in, Operation::Clear);
        let result = {
            // Under every stripe, like `close`: a read-modify-write that read a key before
            // the clear cannot write its result back after it.
            let _all = self.stripes.lock_all();
            self.ensure_open().map(|()| self.store.clear())
        };
        self.finish(Operation::Clear, timer, result)
    }
}
