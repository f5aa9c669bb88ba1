//! A two-tier cache: in-process memory (L1) in front of Redis (L2), kept coherent across
//! nodes by Redis client tracking (the server announces every change to a key under the
//! prefix, whoever made it; [`Invalidation::Tracking`], the default) and by Keel's own
//! invalidation messages over Redis pub/sub (alone with [`Invalidation::PubSub`], or where the
//! server refuses tracking).
//!
//! - Reads try L1, then L2; an L2 hit fills L1 with `min(l1_ttl, remaining L2 TTL)`.
//! - Writes and deletes drop the key from this node's L1, go to L2, drop it again whatever L2
//!   answered (a timed-out write may still be applied), and publish an invalidation so every
//!   other node drops it too (a node ignores its own messages). A dropped future does the
//!   second half from a guard; the caller always gets L2's result, never a publish error.
//!   When the write's outcome is unknown, a background task drops and announces once more
//!   after the write has run (see `TieredCache::settle`: in Cluster mode a read can overtake
//!   a delayed write).
//! - Atomic operations (`incr_by`, `set_nx`, `set_if_match`) run on L2 only, bracketed alike.
//! - When the pub/sub connection drops, invalidations may have been missed: L1 is flushed
//!   as soon as it is back (and while it is down, L1 is bypassed).
//! - `exists`, `ttl` and `expire` are answered by L2, the source of truth.
//!
//! # Layout
//! - `mod` (here): the builder, the read path (L1, then L2 with a guarded fill) and the write
//!   path (drop, write, drop again, announce, settle).
//! - `invalidation`: tracking or pub/sub subscription, the listener task, announcing writes.
//! - `generations`: the striped counters that keep a slow read from refilling L1 after an
//!   invalidation.
//! - `metrics`: the `tiered_*` families.

mod builder;
mod generations;
mod invalidation;
mod metrics;
mod stale;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

pub use crate::config::Invalidation;
use crate::contract::{Cache, CacheFuture, CacheKind};
use crate::jitter::Jitter;
use crate::memory::MemoryCache;
use crate::redis::RedisCache;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

pub use self::builder::TieredCacheBuilder;
use self::generations::Generations;
use self::metrics::TierMetrics;

/// How long an entry may stay in L1 unless [`TieredCacheBuilder::l1_ttl`] says otherwise.
pub(crate) const DEFAULT_L1_TTL: Duration = Duration::from_secs(60);

/// What one write touches: some keys, or the whole cache (`clear`).
#[derive(Clone)]
enum Touched {
    Keys(Vec<String>),
    All,
}

impl Touched {
    fn key(key: &str) -> Self {
        Touched::Keys(vec![key.to_owned()])
    }
}

/// Armed while a tiered write is in flight: if the caller drops the write's future, the
/// L2 command may still run, so this drops the keys from L1 again and spawns the message to the
/// other nodes.
struct AfterWrite {
    cache: TieredCache,
    touched: Option<Touched>,
}

impl Drop for AfterWrite {
    fn drop(&mut self) {
        let Some(touched) = self.touched.take() else {
            return;
        };
        self.cache.drop_local(&touched);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let cache = self.cache.clone();
            let announced = touched.clone();
            runtime.spawn(async move { cache.announce(&announced).await });
            self.cache.settle_later(touched);
        } else {
            // Dropped outside a runtime: nothing can be sent from here. Counted like a failed
            // publish; the other nodes' staleness stays bounded by l1_ttl.
            self.cache.inner.metrics.publish_failures.inc();
        }
    }
}

/// How many [`TieredCache::settle`] tasks may run at once.
const MAX_SETTLING: usize = 256;

/// Owned by a settle task: counts it out however it ends (and, for the stand-in whole-L1
/// flush, lets the next overflow start another).
struct Settling {
    cache: TieredCache,
    all: bool,
}

impl Drop for Settling {
    fn drop(&mut self) {
        let i = &self.cache.inner;
        i.settling.fetch_sub(1, Ordering::AcqRel);
        if self.all {
            i.settle_all.store(false, Ordering::Release);
        }
    }
}

struct Inner {
    name: String,
    generations: Generations,
    l1: MemoryCache,
    l2: RedisCache,
    l1_ttl: Duration,
    node: String,
    channel: String,
    invalidation: Invalidation,
    /// Whether the live subscription also carries the server's tracking invalidations.
    tracking: AtomicBool,
    /// The server refused client tracking once: Keel's messages alone from then on.
    tracking_refused: AtomicBool,
    /// Whether the invalidation subscription is live; L1 is bypassed while it is not.
    subscribed: AtomicBool,
    /// When the last invalidation that could not be published failed; `Some` while a task
    /// retries a flush for it (see `TieredCache::flush_later`).
    undelivered: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Settle tasks running ([`TieredCache::settle_later`]), and whether the whole-L1 flush
    /// standing in for those over the cap is pending.
    settling: std::sync::atomic::AtomicUsize,
    settle_all: AtomicBool,
    /// Why the last subscription attempt failed (for `connect`'s error).
    subscribe_error: std::sync::Mutex<Option<String>>,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
    metrics: TierMetrics,
    /// Serve L1 entries this long past their L1 expiry while L2 is unreachable (see
    /// `stale`); L1 entries are then stored for `fill + window`.
    stale_if_error: Option<Duration>,
    /// Shortens every L1 fill by a random fraction.
    jitter: Option<Jitter>,
    /// A read was answered from stale L1 since the last successful L2 read: the next one
    /// flushes L1 (invalidations may have been missed meanwhile).
    degraded: AtomicBool,
}

/// Memory in front of Redis, coherent across nodes. Cheap to clone.
#[derive(Clone)]
pub struct TieredCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("name", &self.inner.name)
            .field("l2", &self.inner.l2)
            .field("subscribed", &self.inner.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TieredCache {
    /// Whether the invalidation subscription is live (L1 is only used while it is).
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// Whether the live invalidation subscription carries Redis client-tracking
    /// invalidations (see [`Invalidation::Tracking`]); `false` with Keel's messages alone.
    pub fn is_tracking(&self) -> bool {
        self.is_subscribed() && self.inner.tracking.load(Ordering::Acquire)
    }

    /// The L1 (for inspection).
    pub fn l1(&self) -> &MemoryCache {
        &self.inner.l1
    }
}

impl TieredCache {
    /// Runs one L2 write between two invalidations of what it touches: L1 here is dropped
    /// before the write is sent (so this node never reads its own old value while the write's
    /// fate is unknown) and again after it completes, fails or times out, and then the other
    /// nodes are told (unless `changed` says the write certainly changed nothing). If the
    /// caller drops the future midway, a guard does the second half in a spawned task. The
    /// caller gets the L2 result, whatever happens to the invalidation.
    async fn write<T>(
        &self,
        touched: Touched,
        l2: impl Future<Output = Result<T>>,
        changed: impl FnOnce(&Result<T>) -> bool,
    ) -> Result<T> {
        self.drop_local(&touched);
        let mut guard = AfterWrite {
            cache: self.clone(),
            touched: Some(touched),
        };
        let result = l2.await;
        let touched = guard.touched.as_ref().map_or(&Touched::All, |t| t);
        self.drop_local(touched);
        let changed = changed(&result);
        if changed {
            self.announce(touched).await;
        }
        let touched = guard.touched.take();
        if let (true, Err(_), Some(touched)) = (changed, &result, touched) {
            // The write may still run later: drop and announce again once it has.
            self.settle_later(touched);
        }
        result
    }

    /// After a write whose outcome is unknown: [`settle`](Self::settle) in a spawned task.
    /// At most [`MAX_SETTLING`] such tasks run at once (a frozen server makes every write's
    /// outcome unknown); past that, one whole-L1 flush after twice the response timeout stands
    /// in for the rest.
    fn settle_later(&self, touched: Touched) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let i = &self.inner;
        let (touched, all) = if i.settling.fetch_add(1, Ordering::AcqRel) < MAX_SETTLING {
            (touched, false)
        } else if !i.settle_all.swap(true, Ordering::AcqRel) {
            (Touched::All, true)
        } else {
            i.settling.fetch_sub(1, Ordering::AcqRel);
            return; // the pending whole-L1 flush covers it
        };
        // Moved into the task: counts it out however it ends, even unpolled.
        let settling = Settling {
            cache: self.clone(),
            all,
        };
        runtime.spawn(async move {
            let settling = settling;
            settling.cache.settle(touched).await;
        });
    }

    /// Waits until a write whose outcome was unknown has run (or never will), then drops what
    /// it touched from this node's L1 again and tells the other nodes again. The second drop
    /// right after the write is not enough where reads and writes take different connections
    /// (Cluster): a read sent after the write timed out can reach the master before the write
    /// runs and refill L1 with the old value, and the first message may reach the other nodes
    /// before the write runs. For keys, "has run" is a fence (`EXISTS` on the write
    /// connection, answered only after the write: [`RedisCache::fence`]), re-sent until it is
    /// answered; for a whole-cache clear (its `UNLINK`s go on the read connections), twice the
    /// response timeout. Either way it gives up `l1_ttl` after the write: no L1 entry from
    /// before is left by then.
    async fn settle(&self, touched: Touched) {
        let i = &self.inner;
        let give_up = tokio::time::Instant::now() + i.l1_ttl;
        match &touched {
            Touched::All => {
                tokio::time::sleep(i.l2.response_timeout().saturating_mul(2)).await;
            }
            Touched::Keys(keys) => {
                for key in keys {
                    let mut backoff = Duration::from_millis(50);
                    // Only a fence that timed out leaves the write possibly still queued; any
                    // other answer means the connection it was sent on is gone (or it ran).
                    while let Err(Error::Timeout { .. }) = i.l2.fence(key).await {
                        if tokio::time::Instant::now() >= give_up {
                            break;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        self.drop_local(&touched);
        self.announce(&touched).await;
    }

    /// The L1 lookup, synchronous: `Some(answer)` when L1 settles it (a hit or an error).
    fn read_l1(&self, key: &str) -> Option<Result<Option<Bytes>>> {
        let i = &self.inner;
        if !self.is_subscribed() {
            return None;
        }
        if let Some(window) = i.stale_if_error {
            return self.read_l1_fresh(key, window);
        }
        match i.l1.get_uncounted(key) {
            Ok(Some(v)) => {
                i.metrics.l1_hits.inc();
                Some(Ok(Some(v)))
            }
            Ok(None) => {
                i.metrics.l1_misses.inc();
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>> {
        match self.read_l1(key) {
            Some(answer) => answer,
            None => self.read_l2(key).await,
        }
    }

    async fn read_l2(&self, key: &str) -> Result<Option<Bytes>> {
        let i = &self.inner;
        // With stale-if-error, L1 follows every L2 answer even while unsubscribed (reads
        // bypass it then, but an outage would serve it): a copy L2 has shown outdated must not
        // be served on the next transient error.
        let use_l1 = self.is_subscribed() || i.stale_if_error.is_some();
        // Read before L2: any invalidation from here on makes the fill below stand down.
        let generation = i.generations.get(key);
        let answer = match i.l2.get_with_ttl(key).await {
            Err(e) if i.stale_if_error.is_some() && e.is_transient() => {
                return self.serve_stale(key, e);
            }
            answer => answer?,
        };
        self.recovered();
        match answer {
            Some((value, ttl)) => {
                i.metrics.l2_hits.inc();
                if use_l1 {
                    let fill = match ttl {
                        KeyTtl::Expires(left) => left.min(i.l1_ttl),
                        KeyTtl::Persistent => i.l1_ttl,
                        // Expired right after the GET: do not keep it in L1.
                        KeyTtl::Missing => Duration::ZERO,
                    };
                    let fill = self.l1_lifetime(fill);
                    // Skip the fill if the key was invalidated while we read L2, and undo it
                    // if an invalidation slipped in between that check and the fill
                    // (invalidators bump the counter before they delete, so one of the two
                    // deletes always comes last).
                    if !fill.is_zero() && i.generations.get(key) == generation {
                        let _ = i.l1.set(key, value.clone(), Ttl::After(fill)).await;
                        if i.generations.get(key) != generation {
                            let _ = i.l1.delete(key).await;
                        }
                    }
                }
                Ok(Some(value))
            }
            None => {
                i.metrics.l2_misses.inc();
                if i.stale_if_error.is_some() {
                    // Gone from L2: drop the stale-tail copy too.
                    let _ = i.l1.delete(key).await;
                }
                Ok(None)
            }
        }
    }
}

impl Cache for TieredCache {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn kind(&self) -> CacheKind {
        CacheKind::Tiered
    }

    fn connect<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::boxed(async move {
            let i = &self.inner;
            i.l1.connect().await?;
            i.l2.connect().await?;
            {
                let mut listener = i
                    .listener
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if listener.is_none() {
                    *listener = Some(tokio::spawn(Self::listen(Arc::downgrade(i))));
                }
            }
            // An invalidation channel that cannot come up would leave L1 silently unused (or,
            // worse, stale): that is an error here, not a surprise later.
            let deadline = tokio::time::Instant::now() + i.l2.connect_timeout();
            while !self.is_subscribed() {
                if tokio::time::Instant::now() >= deadline {
                    let reason = i
                        .subscribe_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                        .unwrap_or_else(|| "no answer".into());
                    let _ = self.close().await;
                    return Err(Error::Unavailable {
                        cache: i.name.clone(),
                        operation: "subscribe",
                        reason: format!(
                            "the invalidation channel {:?} did not come up within {:?}: {reason}",
                            i.channel,
                            i.l2.connect_timeout()
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        })
    }

    fn close<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::boxed(async move {
            let i = &self.inner;
            if let Some(task) = i
                .listener
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                task.abort();
            }
            i.subscribed.store(false, Ordering::Release);
            i.l1.close().await?;
            i.l2.close().await
        })
    }

    fn is_connected(&self) -> bool {
        self.inner.l2.is_connected()
    }

    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<Option<Bytes>>> {
        // An L1 hit needs no allocation: only misses box the L2 round trip.
        match self.read_l1(key) {
            Some(answer) => CacheFuture::ready(answer),
            None => CacheFuture::boxed(self.read_l2(key)),
        }
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<()>> {
        CacheFuture::boxed(self.write(
            Touched::key(key),
            self.inner.l2.set(key, value, ttl),
            always,
        ))
    }

    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::boxed(self.write(Touched::key(key), self.inner.l2.delete(key), always))
    }

    fn exists<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        self.inner.l2.exists(key)
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::boxed(self.write(Touched::key(key), self.inner.l2.expire(key, ttl), always))
    }

    fn ttl<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<KeyTtl>> {
        self.inner.l2.ttl(key)
    }

    fn set_nx<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::boxed(self.write(
            Touched::key(key),
            self.inner.l2.set_nx(key, value, ttl),
            unless_refused,
        ))
    }

    fn set_if_match<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: &'a [u8],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<bool>> {
        CacheFuture::boxed(self.write(
            Touched::key(key),
            self.inner.l2.set_if_match(key, value, expected, ttl),
            unless_refused,
        ))
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64) -> CacheFuture<'a, Result<i64>> {
        CacheFuture::boxed(self.write(Touched::key(key), self.inner.l2.incr_by(key, delta), always))
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<Vec<Option<Bytes>>>> {
        CacheFuture::boxed(async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(self.read(key).await?);
            }
            Ok(out)
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<()>> {
        let keys = items.iter().map(|(key, _)| (*key).to_owned()).collect();
        CacheFuture::boxed(self.write(
            Touched::Keys(keys),
            self.inner.l2.set_many(items, ttl),
            always,
        ))
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<u64>> {
        let touched = Touched::Keys(keys.iter().map(|k| (*k).to_owned()).collect());
        CacheFuture::boxed(self.write(touched, self.inner.l2.delete_many(keys), always))
    }

    fn clear<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::boxed(self.write(Touched::All, self.inner.l2.clear(), always))
    }
}

/// A write that succeeded changed L2; so may one whose outcome is unknown (an error may be a
/// write applied after its timeout). A refusal (bad input, closed, denied) changed nothing.
fn always<T>(r: &Result<T>) -> bool {
    r.as_ref().map_or_else(Error::may_have_applied, |_| true)
}

/// As [`always`], and a definite "not stored" changed nothing either.
fn unless_refused(r: &Result<bool>) -> bool {
    !matches!(r, Ok(false)) && always(r)
}
