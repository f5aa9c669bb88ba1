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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use keel_metrics::{MetricsService, StripedCounter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::task::JoinHandle;

pub use crate::config::Invalidation;
use crate::contract::{Cache, CacheFuture, CacheKind};
use crate::memory::MemoryCache;
use crate::redis::RedisCache;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

/// How long an entry may stay in L1 unless [`TieredCacheBuilder::l1_ttl`] says otherwise.
pub(crate) const DEFAULT_L1_TTL: Duration = Duration::from_secs(60);

/// Messages are `<node id>\n<kind><key>`: kind `k` drops one key, `f` drops the whole L1.
const KIND_KEY: u8 = b'k';
const KIND_FLUSH: u8 = b'f';
/// Several keys in one message: each as a 4-byte little-endian length and the key's bytes.
const KIND_KEYS: u8 = b'm';

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TierLabels {
    cache: String,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CacheLabel {
    cache: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DirectionLabels {
    cache: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct SourceLabels {
    cache: String,
    source: &'static str,
}

/// Hits and misses are on every read, from every thread: they are striped per thread (like the
/// cache operation counters), so L1 hits on different threads rarely share a cache line.
#[derive(Clone)]
struct TierMetrics {
    l1_hits: StripedCounter,
    l1_misses: StripedCounter,
    l2_hits: StripedCounter,
    l2_misses: StripedCounter,
    sent: Counter,
    received: Counter,
    /// Received by source: Keel's messages, or the server's client tracking.
    received_keel: Counter,
    received_tracking: Counter,
    flushes: Counter,
    publish_failures: Counter,
    subscribe_failures: Counter,
}

impl TierMetrics {
    fn new(service: &MetricsService, cache: &str) -> Self {
        let hits: Family<TierLabels, StripedCounter> = service
            .get_or_register("tiered_hits", "Tiered cache hits by tier", Family::default)
            .unwrap_or_default();
        let misses: Family<TierLabels, StripedCounter> = service
            .get_or_register(
                "tiered_misses",
                "Tiered cache misses by tier",
                Family::default,
            )
            .unwrap_or_default();
        let inval: Family<DirectionLabels, Counter> = service
            .get_or_register(
                "tiered_invalidations",
                "L1 invalidation messages sent and received",
                Family::default,
            )
            .unwrap_or_default();
        let flushes: Family<TierLabels, Counter> = service
            .get_or_register(
                "tiered_l1_flushes",
                "Whole-L1 flushes (clear, or pub/sub reconnects)",
                Family::default,
            )
            .unwrap_or_default();
        let failures: Family<CacheLabel, Counter> = service
            .get_or_register(
                "tiered_invalidation_failures",
                "Invalidation messages that could not be published (each is retried)",
                Family::default,
            )
            .unwrap_or_default();
        let subscribe_failures: Family<CacheLabel, Counter> = service
            .get_or_register(
                "tiered_subscribe_failures",
                "Failed attempts to subscribe to the invalidation channel (L1 is bypassed meanwhile)",
                Family::default,
            )
            .unwrap_or_default();
        let by_source: Family<SourceLabels, Counter> = service
            .get_or_register(
                "tiered_invalidations_received",
                "L1 invalidations received, by source (keel: Keel's messages; tracking: the \
                 server's client tracking, one per push, which may name several keys)",
                Family::default,
            )
            .unwrap_or_default();
        let source = |s| SourceLabels {
            cache: cache.to_owned(),
            source: s,
        };
        let tier = |t| TierLabels {
            cache: cache.to_owned(),
            tier: t,
        };
        let dir = |d| DirectionLabels {
            cache: cache.to_owned(),
            direction: d,
        };
        Self {
            l1_hits: hits.get_or_create_owned(&tier("l1")),
            l1_misses: misses.get_or_create_owned(&tier("l1")),
            l2_hits: hits.get_or_create_owned(&tier("l2")),
            l2_misses: misses.get_or_create_owned(&tier("l2")),
            sent: inval.get_or_create_owned(&dir("sent")),
            received: inval.get_or_create_owned(&dir("received")),
            received_keel: by_source.get_or_create_owned(&source("keel")),
            received_tracking: by_source.get_or_create_owned(&source("tracking")),
            flushes: flushes.get_or_create_owned(&tier("l1")),
            publish_failures: failures.get_or_create_owned(&CacheLabel {
                cache: cache.to_owned(),
            }),
            subscribe_failures: subscribe_failures.get_or_create_owned(&CacheLabel {
                cache: cache.to_owned(),
            }),
        }
    }
}

/// Invalidation counters, striped by key hash. A read remembers its key's counter before
/// going to L2 and fills L1 only if no invalidation touched that stripe meanwhile; otherwise
/// a slow read could put a value back into L1 after a newer write invalidated it.
struct Generations {
    stripes: [std::sync::atomic::AtomicU64; 64],
}

impl Generations {
    fn new() -> Self {
        Self {
            stripes: std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)),
        }
    }

    fn slot(&self, key: &str) -> &std::sync::atomic::AtomicU64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key);
        &self.stripes[(h % 64) as usize]
    }

    fn get(&self, key: &str) -> u64 {
        self.slot(key).load(Ordering::Acquire)
    }

    fn bump(&self, key: &str) {
        self.slot(key).fetch_add(1, Ordering::AcqRel);
    }

    fn bump_all(&self) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::AcqRel);
        }
    }
}

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

/// Owned by the background flush task: clears the "flush pending" mark if the task ends
/// without doing so itself (its runtime shut down, or dropped it before it ever ran), so a
/// later undelivered invalidation starts a new task instead of waiting on a dead one.
struct FlushTask {
    inner: std::sync::Weak<Inner>,
    armed: bool,
}

impl Drop for FlushTask {
    fn drop(&mut self) {
        if let (true, Some(inner)) = (self.armed, self.inner.upgrade()) {
            *inner
                .undelivered
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
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
}

impl TieredCacheBuilder {
    /// The longest an entry stays in L1 (default 60 s): the bound on staleness if an
    /// invalidation is lost without the connection dropping.
    pub fn l1_ttl(mut self, d: Duration) -> Self {
        self.l1_ttl = d;
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
            }),
        })
    }
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
    /// A builder for a tiered cache called `name` over `l1` and `l2`.
    ///
    /// Build `l1` with [`MemoryCacheBuilder::max_ttl`](crate::MemoryCacheBuilder::max_ttl) set
    /// to the `l1_ttl`: no L1 entry lives longer anyway, and L1 hits get cheaper (the config
    /// factory does this).
    pub fn builder(name: impl Into<String>, l1: MemoryCache, l2: RedisCache) -> TieredCacheBuilder {
        TieredCacheBuilder {
            name: name.into(),
            l1,
            l2,
            l1_ttl: DEFAULT_L1_TTL,
            invalidation: Invalidation::default(),
            metrics: None,
        }
    }

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

    fn message(&self, kind: u8, key: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.inner.node.len() + 2 + key.len());
        m.extend_from_slice(self.inner.node.as_bytes());
        m.push(b'\n');
        m.push(kind);
        m.extend_from_slice(key.as_bytes());
        m
    }

    /// Drops what `touched` names from this node's L1, synchronously (L1 calls are ready
    /// futures), bumping the generations first so a concurrent L2 read does not put an old
    /// value back.
    fn drop_local(&self, touched: &Touched) {
        let i = &self.inner;
        match touched {
            Touched::Keys(keys) => {
                for key in keys {
                    i.generations.bump(key);
                    let _ = i.l1.delete(key).now_or_never();
                }
            }
            Touched::All => {
                i.generations.bump_all();
                let _ = i.l1.clear().now_or_never();
                i.metrics.flushes.inc();
            }
        }
    }

    /// The invalidation message for `touched` (`None` for an empty batch).
    fn message_for(&self, touched: &Touched) -> Option<Vec<u8>> {
        match touched {
            Touched::All => Some(self.message(KIND_FLUSH, "")),
            Touched::Keys(keys) => match keys.as_slice() {
                [] => None,
                [key] => Some(self.message(KIND_KEY, key)),
                keys => {
                    let mut m = self.message(KIND_KEYS, "");
                    for key in keys {
                        let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
                        m.extend_from_slice(&len.to_le_bytes());
                        m.extend_from_slice(key.as_bytes());
                    }
                    Some(m)
                }
            },
        }
    }

    /// Tells every other node to drop what `touched` names. A failed `PUBLISH` is not the
    /// caller's error (the write's own result is what the caller gets): it is counted in
    /// `tiered_invalidation_failures_total` and made up for by a whole-L1 flush sent in the
    /// background ([`flush_later`](Self::flush_later)).
    async fn announce(&self, touched: &Touched) {
        let Some(message) = self.message_for(touched) else {
            return;
        };
        let i = &self.inner;
        i.metrics.sent.inc();
        if i.l2.publish(&i.channel, &message).await.is_ok() {
            return;
        }
        i.metrics.publish_failures.inc();
        self.flush_later();
    }

    /// After a failed publish: one background task (however many publishes fail) keeps
    /// trying to send every node a whole-L1 flush, which covers every invalidation that could
    /// not be delivered, until one goes through after the last failure, or `l1_ttl` has passed
    /// since it (by then no L1 entry from before it is left anyway).
    fn flush_later(&self) {
        let i = &self.inner;
        // Without a runtime no task can run: leave no mark that one does (the failure was
        // counted by the caller).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut pending = i.undelivered.lock().unwrap_or_else(PoisonError::into_inner);
            let running = pending.is_some();
            *pending = Some(tokio::time::Instant::now());
            if running {
                return; // the running task sees the new failure time
            }
        }
        let weak = Arc::downgrade(&self.inner);
        // Moved into the task: dropped with it however it ends, even unpolled.
        let task = FlushTask {
            inner: weak.clone(),
            armed: true,
        };
        runtime.spawn(async move {
            // The whole guard, not just the field the body touches.
            let mut task = task;
            let mut backoff = Duration::from_millis(50);
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                let Some(inner) = weak.upgrade() else { return };
                let failed_at = {
                    let mut pending = inner
                        .undelivered
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    match *pending {
                        Some(at) if at.elapsed() < inner.l1_ttl => at,
                        _ => {
                            *pending = None;
                            task.armed = false;
                            return;
                        }
                    }
                };
                let mut flush = inner.node.as_bytes().to_vec();
                flush.extend_from_slice(&[b'\n', KIND_FLUSH]);
                inner.metrics.sent.inc();
                let sent = inner.l2.publish(&inner.channel, &flush).await;
                let mut pending = inner
                    .undelivered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match sent {
                    // Delivered after the last failure: done. Closed: it can no longer
                    // publish; the other nodes' staleness stays bounded by l1_ttl.
                    Ok(()) if *pending == Some(failed_at) => {
                        *pending = None;
                        task.armed = false;
                        return;
                    }
                    Err(Error::Closed { .. }) => {
                        *pending = None;
                        task.armed = false;
                        return;
                    }
                    Ok(()) => {}
                    Err(_) => {
                        inner.metrics.publish_failures.inc();
                    }
                }
            }
        });
    }

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

    /// A pub/sub connection subscribed to Keel's channel only.
    async fn subscribe_pubsub(i: &Inner) -> Result<BoxStream<'static, Event>> {
        let unavailable = |e: redis::RedisError| Error::Unavailable {
            cache: i.name.clone(),
            operation: "subscribe",
            reason: crate::config::redact_urls(&e.to_string()),
        };
        let client = i.l2.pubsub_client().await?;
        let mut pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub.subscribe(&i.channel).await.map_err(unavailable)?;
        Ok(pubsub
            .into_on_message()
            .map(|msg| Event::Keel(msg.get_payload_bytes().to_vec()))
            .boxed())
    }

    /// RESP3 connections with client tracking on (`CLIENT TRACKING ON BCAST PREFIX
    /// <prefix>`), one per server holding keys (every master in Cluster mode; tracking is per
    /// server), the first also subscribed to Keel's channel: the servers push an invalidation
    /// for every change to a key under the prefix, whoever made it. The stream ends when any
    /// of the connections drops. `Ok(None)`: a server refused tracking (or RESP3), use Keel's
    /// messages alone.
    async fn subscribe_tracking(i: &Inner) -> Result<Option<BoxStream<'static, Event>>> {
        let clients = i.l2.tracking_clients().await?;
        let mut streams = Vec::with_capacity(clients.len());
        for (n, client) in clients.into_iter().enumerate() {
            match Self::track(i, &client, n == 0).await? {
                Some(stream) => streams.push(stream),
                None => return Ok(None),
            }
        }
        // Each stream yields `None` once, when its connection drops: the merged stream ends
        // at the first one.
        Ok(Some(
            futures_util::stream::select_all(streams)
                .take_while(|event| std::future::ready(event.is_some()))
                .filter_map(std::future::ready)
                .boxed(),
        ))
    }

    /// One tracking connection to the server `client` names (see
    /// [`subscribe_tracking`](Self::subscribe_tracking)); `subscribe`: also subscribed to
    /// Keel's channel. Yields `Some(event)`, then one `None` when the connection drops.
    async fn track(
        i: &Inner,
        client: &redis::Client,
        subscribe: bool,
    ) -> Result<Option<BoxStream<'static, Option<Event>>>> {
        let unavailable = |e: redis::RedisError| Error::Unavailable {
            cache: i.name.clone(),
            operation: "subscribe",
            reason: crate::config::redact_urls(&e.to_string()),
        };
        // A server error answer (not an I/O failure) means "not supported here".
        let refused = |e: &redis::RedisError| e.code().is_some() && !e.is_io_error();
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings)).map_err(unavailable)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
        let config = redis::AsyncConnectionConfig::new()
            .set_push_sender(tx)
            .set_connection_timeout(Some(i.l2.connect_timeout()))
            .set_response_timeout(Some(i.l2.response_timeout()));
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(e) if refused(&e) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let mut tracking = redis::cmd("CLIENT");
        tracking
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(i.l2.prefix());
        match tracking.query_async::<()>(&mut conn).await {
            Ok(()) => {}
            Err(e) if refused(&e) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        }
        if subscribe {
            conn.subscribe(&i.channel).await.map_err(unavailable)?;
        }
        let prefix = i.l2.prefix().to_owned();
        // The stream owns the connection: dropping it closes the connection.
        let pushes = futures_util::stream::poll_fn(move |cx| {
            let _owned = &conn;
            rx.poll_recv(cx)
        });
        Ok(Some(
            pushes
                .take_while(|push| std::future::ready(push.kind != redis::PushKind::Disconnection))
                .filter_map(move |push| {
                    std::future::ready(Event::from_push(push, &prefix).map(Some))
                })
                .chain(futures_util::stream::once(std::future::ready(None)))
                .boxed(),
        ))
    }

    async fn listen(inner: std::sync::Weak<Inner>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(i) = inner.upgrade() else { return };
            let track = i.invalidation == Invalidation::Tracking
                && !i.tracking_refused.load(Ordering::Acquire);
            let subscribed = if track {
                match Self::subscribe_tracking(&i).await {
                    Ok(Some(events)) => Ok((events, true)),
                    Ok(None) => {
                        i.tracking_refused.store(true, Ordering::Release);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            } else {
                Self::subscribe_pubsub(&i)
                    .await
                    .map(|events| (events, false))
            };
            let (mut events, tracking) = match subscribed {
                Ok(up) => up,
                Err(e) => {
                    i.metrics.subscribe_failures.inc();
                    *i.subscribe_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    drop(i);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            // Anything could have changed while we were not listening.
            i.generations.bump_all();
            let _ = i.l1.clear().await;
            i.metrics.flushes.inc();
            i.tracking.store(tracking, Ordering::Release);
            i.subscribed.store(true, Ordering::Release);
            let node = i.node.clone();
            drop(i);
            while let Some(event) = events.next().await {
                let Some(i) = inner.upgrade() else { return };
                match event {
                    Event::Keel(payload) => Self::on_keel_message(&i, &node, &payload).await,
                    Event::Server(None) => {
                        i.metrics.received_tracking.inc();
                        i.generations.bump_all();
                        let _ = i.l1.clear().await;
                        i.metrics.flushes.inc();
                    }
                    Event::Server(Some(keys)) => {
                        i.metrics.received_tracking.inc();
                        for key in keys {
                            i.generations.bump(&key);
                            let _ = i.l1.delete(&key).await;
                        }
                    }
                }
            }
            // The stream ended: the connection dropped. Bypass L1 until resubscribed.
            let Some(i) = inner.upgrade() else { return };
            i.subscribed.store(false, Ordering::Release);
            i.generations.bump_all();
            let _ = i.l1.clear().await;
            i.metrics.flushes.inc();
        }
    }

    /// One of Keel's own invalidation messages (see the `KIND_*` constants).
    async fn on_keel_message(i: &Inner, node: &str, payload: &[u8]) {
        let Some(split) = payload.iter().position(|&b| b == b'\n') else {
            return;
        };
        let (from, rest) = (&payload[..split], &payload[split + 1..]);
        if from == node.as_bytes() {
            return; // our own write: L1 was already dropped locally
        }
        i.metrics.received.inc();
        i.metrics.received_keel.inc();
        match rest.split_first() {
            Some((&KIND_FLUSH, _)) => {
                i.generations.bump_all();
                let _ = i.l1.clear().await;
                i.metrics.flushes.inc();
            }
            Some((&KIND_KEY, key)) => {
                let key = String::from_utf8_lossy(key);
                i.generations.bump(&key);
                let _ = i.l1.delete(&key).await;
            }
            Some((&KIND_KEYS, mut rest)) => {
                while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                    let len = u32::from_le_bytes(*len) as usize;
                    let Some((key, tail)) = tail.split_at_checked(len) else {
                        break;
                    };
                    let key = String::from_utf8_lossy(key);
                    i.generations.bump(&key);
                    let _ = i.l1.delete(&key).await;
                    rest = tail;
                }
            }
            // A kind this version does not know (a newer node): forget everything
            // rather than serve something stale.
            _ => {
                i.generations.bump_all();
                let _ = i.l1.clear().await;
                i.metrics.flushes.inc();
            }
        }
    }

    /// The L1 lookup, synchronous: `Some(answer)` when L1 settles it (a hit or an error).
    fn read_l1(&self, key: &str) -> Option<Result<Option<Bytes>>> {
        let i = &self.inner;
        if !self.is_subscribed() {
            return None;
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
        let use_l1 = self.is_subscribed();
        // Read before L2: any invalidation from here on makes the fill below stand down.
        let generation = i.generations.get(key);
        match i.l2.get_with_ttl(key).await? {
            Some((value, ttl)) => {
                i.metrics.l2_hits.inc();
                if use_l1 {
                    let fill = match ttl {
                        KeyTtl::Expires(left) => left.min(i.l1_ttl),
                        KeyTtl::Persistent => i.l1_ttl,
                        // Expired right after the GET: do not keep it in L1.
                        KeyTtl::Missing => Duration::ZERO,
                    };
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

/// What the invalidation connection delivers.
enum Event {
    /// One of Keel's messages (payload).
    Keel(Vec<u8>),
    /// A client-tracking invalidation: the cache keys (prefix removed), or `None` for "all"
    /// (`FLUSHDB`/`FLUSHALL`, or a message this version cannot read).
    Server(Option<Vec<String>>),
}

impl Event {
    /// Reads a RESP3 push: `message` on Keel's channel, or `invalidate` (an array of keys, or
    /// null for a flush). Subscription confirmations and the like are `None`.
    fn from_push(push: redis::PushInfo, prefix: &str) -> Option<Event> {
        use redis::Value;
        match push.kind {
            redis::PushKind::Message => match push.data.into_iter().nth(1) {
                Some(Value::BulkString(payload)) => Some(Event::Keel(payload)),
                _ => None,
            },
            redis::PushKind::Invalidate => match push.data.into_iter().next() {
                Some(Value::Array(keys)) => {
                    let mut out = Vec::with_capacity(keys.len());
                    for key in keys {
                        let Value::BulkString(key) = key else {
                            return Some(Event::Server(None));
                        };
                        // BCAST sends only keys under the prefix; anything else is not ours.
                        if let Some(key) = key.strip_prefix(prefix.as_bytes()) {
                            out.push(String::from_utf8_lossy(key).into_owned());
                        }
                    }
                    Some(Event::Server(Some(out)))
                }
                _ => Some(Event::Server(None)),
            },
            _ => None,
        }
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
