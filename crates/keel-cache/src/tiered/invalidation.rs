//! How L1 learns of changes in L2: Redis client tracking (`CLIENT TRACKING ON BCAST`) or
//! Keel's own messages over pub/sub, the listener task that keeps the subscription up (and
//! flushes L1 whenever it was down), and the sending side (announce, retried flushes).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};

use super::{Inner, TieredCache, Touched};
use crate::config::Invalidation;
use crate::contract::Cache;
use crate::{Error, Result};

/// Messages are `<node id>\n<kind><key>`: kind `k` drops one key, `f` drops the whole L1.
pub(super) const KIND_KEY: u8 = b'k';
pub(super) const KIND_FLUSH: u8 = b'f';
/// Several keys in one message: each as a 4-byte little-endian length and the key's bytes.
pub(super) const KIND_KEYS: u8 = b'm';

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

impl TieredCache {
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
    pub(super) fn drop_local(&self, touched: &Touched) {
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
    pub(super) fn message_for(&self, touched: &Touched) -> Option<Vec<u8>> {
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
    pub(super) async fn announce(&self, touched: &Touched) {
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
    pub(super) fn flush_later(&self) {
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

    pub(super) async fn listen(inner: std::sync::Weak<Inner>) {
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
            // Anything could have changed while we were not listening. This flush also covers
            // any stale serve so far: the next successful L2 read need not flush again.
            i.degraded.store(false, Ordering::Release);
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
            // The stream ended: the connection dropped. Bypass L1 until resubscribed (with
            // stale-if-error, L1 is kept for reads L2 cannot answer, and flushed on
            // resubscription like always).
            let Some(i) = inner.upgrade() else { return };
            i.subscribed.store(false, Ordering::Release);
            i.generations.bump_all();
            if i.stale_if_error.is_none() {
                let _ = i.l1.clear().await;
                i.metrics.flushes.inc();
            }
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
