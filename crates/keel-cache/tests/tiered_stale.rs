//! The tiered cache through Redis trouble, on a real redis-server: stale-if-error under
//! `kill -9` and `SIGSTOP` (reads keep succeeding from L1 inside the window, fail well after
//! it, and see the new values after the server is back), and TTL jitter on L1 fills.
//!
//! Windows are seconds long and the assertions are made well inside or well after them, so
//! a loaded machine (scheduling delays of a second) does not change the outcome.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use keel_cache::{Cache, Endpoint, Jitter, KeyTtl, MemoryCache, RedisCache, Secret, TieredCache};
use keel_metrics::MetricsService;
use keel_testkit::redis::RedisServer;

/// The L2 of every node here: `app` on `server`, 500 ms response timeout, 1 s to connect.
fn l2(server: &RedisServer, metrics: &MetricsService) -> RedisCache {
    RedisCache::builder("app", Endpoint::Url(Secret::new(server.url())))
        .response_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(1))
        .items_refresh(None)
        .metrics(metrics)
        .build()
        .unwrap()
}

/// A tiered node over `server` with `l1_ttl`, a stale-if-error `window` (if any) and TTL
/// `jitter` (if any), built as the config factory builds it (L1 `max_ttl = l1_ttl + window`, coarse
/// expiry).
async fn node(
    server: &RedisServer,
    l1_ttl: Duration,
    window: Option<Duration>,
    jitter: Option<Jitter>,
    metrics: &MetricsService,
) -> TieredCache {
    let l2 = l2(server, metrics);
    let l1 = MemoryCache::builder("app:l1")
        .max_ttl(l1_ttl + window.unwrap_or_default())
        .coarse_expiry(true)
        .metrics(metrics)
        .build();
    let mut builder = TieredCache::builder("app", l1, l2)
        .l1_ttl(l1_ttl)
        .metrics(metrics);
    if let Some(window) = window {
        builder = builder.stale_if_error(window);
    }
    if let Some(jitter) = jitter {
        builder = builder.ttl_jitter(jitter);
    }
    let cache = builder.build().unwrap();
    cache.connect().await.unwrap();
    cache
}

/// Waits up to 30 s for `check`.
async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    keel_testkit::eventually(what, Duration::from_secs(30), check).await;
}

/// Writes `k = v1` through `node` and reads it until L1 holds it; returns when it was
/// filled (the start of the L1 lifetime, give or take the read).
async fn fill(node: &TieredCache) -> Instant {
    node.set("k", "v1".into(), keel_cache::Ttl::Never)
        .await
        .unwrap();
    eventually("L1 to hold k", async || {
        node.get("k").await.unwrap();
        node.l1().get("k").await.unwrap().is_some()
    })
    .await;
    Instant::now()
}

/// Reads `k` from `node` every 100 ms until `until`: every read must return `v1`.
async fn served_until(node: &TieredCache, until: Instant) -> usize {
    let mut reads = 0;
    while Instant::now() < until {
        let got = node.get("k").await;
        assert!(
            matches!(&got, Ok(Some(v)) if &v[..] == b"v1"),
            "read {reads} inside the stale window: {got:?}"
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reads
}

fn sample(metrics: &MetricsService, series: &str) -> f64 {
    keel_testkit::prometheus::sample(&metrics.render(), series).unwrap_or(0.0)
}

/// The server is killed under a node with `stale_if_error = 6s` (`l1_ttl = 2s`): reads keep
/// returning the L1 value until well inside `l1_ttl + window`, fail well after it; once the
/// server is back (empty, on the same port) and another client writes a new value, the node
/// reads the new value (L1 was flushed). A node without the window fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_l1_while_redis_is_killed() {
    let mut server = RedisServer::start();
    let metrics = MetricsService::new("t").unwrap();
    let (l1_ttl, window) = (Duration::from_secs(2), Duration::from_secs(6));
    let stale = node(&server, l1_ttl, Some(window), None, &metrics).await;
    let plain = node(
        &server,
        l1_ttl,
        None,
        None,
        &MetricsService::new("p").unwrap(),
    )
    .await;
    // Same keys: the plain node's write would drop the other's L1 copy, so it goes first.
    fill(&plain).await;
    let filled = fill(&stale).await;

    server.kill();
    // Inside the window (its end is 8 s after the fill; stop 4 s before it).
    let reads = served_until(&stale, filled + l1_ttl + window - Duration::from_secs(4)).await;
    assert!(reads > 0);
    assert!(
        sample(&metrics, "t_tiered_stale_served_total{cache=\"app\"}") >= 1.0,
        "stale serves are counted"
    );
    eventually("the node without a window to fail", async || {
        plain.get("k").await.is_err()
    })
    .await;

    // Well after the window: the L1 copy is gone, the error comes through.
    tokio::time::sleep_until((filled + l1_ttl + window + Duration::from_secs(2)).into()).await;
    let got = stale.get("k").await;
    assert!(got.is_err(), "past the window: {got:?}");
    assert!(sample(&metrics, "t_tiered_stale_unavailable_total{cache=\"app\"}") >= 1.0);

    // Back, empty, on the same port; someone else writes the new value.
    server.restart();
    server.cli(&["SET", "app:k", "v2"]);
    eventually(
        "the node to read the new value",
        async || matches!(stale.get("k").await, Ok(Some(v)) if &v[..] == b"v2"),
    )
    .await;
    // Writes work again, and L1 is used again.
    stale
        .set("k", "v3".into(), keel_cache::Ttl::Never)
        .await
        .unwrap();
    eventually("L1 to fill again", async || {
        stale.get("k").await.unwrap();
        stale.l1().get("k").await.unwrap().is_some()
    })
    .await;
}

/// The server is frozen (SIGSTOP) under a node with `stale_if_error = 6s` (`l1_ttl = 1s`):
/// reads keep returning the L1 value (past its L1 expiry, the L2 read times out and the L1
/// copy is served) until well inside the window, time out well after it; writes fail. After
/// SIGCONT, a new value written by another client is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_l1_while_redis_is_frozen() {
    let server = RedisServer::start();
    let metrics = MetricsService::new("t").unwrap();
    let (l1_ttl, window) = (Duration::from_secs(1), Duration::from_secs(6));
    let stale = node(&server, l1_ttl, Some(window), None, &metrics).await;
    let filled = fill(&stale).await;

    server.pause();
    // Inside the window (its end is 7 s after the fill; stop 3 s before it). Past 1 s, every
    // read waits for the 500 ms response timeout and is then answered from L1.
    served_until(&stale, filled + l1_ttl + window - Duration::from_secs(3)).await;
    assert!(sample(&metrics, "t_tiered_stale_served_total{cache=\"app\"}") >= 1.0);
    let write = stale.set("other", "x".into(), keel_cache::Ttl::Never).await;
    assert!(write.is_err(), "writes fail during the outage: {write:?}");

    tokio::time::sleep_until((filled + l1_ttl + window + Duration::from_secs(2)).into()).await;
    let got = stale.get("k").await;
    assert!(got.is_err(), "past the window: {got:?}");

    server.resume();
    server.cli(&["SET", "app:k", "v2"]);
    eventually(
        "the node to read the new value",
        async || matches!(stale.get("k").await, Ok(Some(v)) if &v[..] == b"v2"),
    )
    .await;
}

/// While Redis answers, an L1 entry past its L1 expiry is not served from the stale window:
/// a change made behind the node's back with no invalidation (tracking off: pub/sub mode)
/// is read once `l1_ttl` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_l2_is_read_past_the_l1_expiry() {
    let server = RedisServer::start();
    let metrics = MetricsService::new("t").unwrap();
    let l2 = RedisCache::builder("app", Endpoint::Url(Secret::new(server.url())))
        .items_refresh(None)
        .metrics(&metrics)
        .build()
        .unwrap();
    let l1 = MemoryCache::builder("app:l1")
        .max_ttl(Duration::from_secs(31))
        .metrics(&metrics)
        .build();
    let stale = TieredCache::builder("app", l1, l2)
        .l1_ttl(Duration::from_secs(1))
        .stale_if_error(Duration::from_secs(30))
        .invalidation(keel_cache::Invalidation::PubSub)
        .metrics(&metrics)
        .build()
        .unwrap();
    stale.connect().await.unwrap();
    fill(&stale).await;
    // Keel's messages do not see redis-cli: only the L1 expiry ends v1 here.
    server.cli(&["SET", "app:k", "v2"]);
    eventually(
        "the node to read v2 after l1_ttl",
        async || matches!(stale.get("k").await, Ok(Some(v)) if &v[..] == b"v2"),
    )
    .await;
    assert_eq!(
        sample(&metrics, "t_tiered_stale_served_total{cache=\"app\"}"),
        0.0
    );
}

/// L1 fills with a 20% jitter and `l1_ttl = 100s`: the L1 TTLs read back all lie in
/// `[80s, 100s]` and are spread over that range; every fill is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_l1_expiries() {
    let server = RedisServer::start();
    let metrics = MetricsService::new("t").unwrap();
    let jitter = Jitter::parse("20%").unwrap();
    let node = node(
        &server,
        Duration::from_secs(100),
        None,
        Some(jitter),
        &metrics,
    )
    .await;
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    for key in &keys {
        server.cli(&["SET", &format!("app:{key}"), "v"]);
    }
    let mut ttls = Vec::new();
    for key in &keys {
        node.get(key).await.unwrap();
        match node.l1().ttl(key).await.unwrap() {
            KeyTtl::Expires(left) => ttls.push(left.as_secs_f64()),
            other => panic!("{key} not in L1: {other:?}"),
        }
    }
    let min = ttls.iter().copied().fold(f64::MAX, f64::min);
    let max = ttls.iter().copied().fold(0.0, f64::max);
    // Each TTL is read right after its fill: all inside the jitter range (1 s of slack).
    assert!(min >= 79.0 && max <= 100.0, "{min}..{max}");
    let buckets: std::collections::BTreeSet<u64> = ttls.iter().map(|t| (*t / 2.0) as u64).collect();
    // 200 draws over 20 s in 2 s buckets: nearly all 10 buckets are hit.
    assert!(buckets.len() >= 8, "not spread: {buckets:?}");
    assert!(max - min >= 10.0, "not spread: {min}..{max}");
    assert_eq!(
        sample(&metrics, "t_tiered_l1_jittered_fills_total{cache=\"app\"}"),
        200.0
    );
}

/// While Redis answers, a key deleted behind the node's back (no invalidation: pub/sub mode)
/// reads as a miss once `l1_ttl` has passed; that miss drops the stale-tail L1 copy, so when
/// Redis then freezes, the read fails instead of serving the value Redis said was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_miss_drops_the_stale_copy() {
    let server = RedisServer::start();
    let metrics = MetricsService::new("t").unwrap();
    let stale = pubsub_node(&server, &metrics).await;
    fill(&stale).await;
    server.cli(&["DEL", "app:k"]);
    eventually("the node to read the deletion after l1_ttl", async || {
        matches!(stale.get("k").await, Ok(None))
    })
    .await;
    server.pause();
    let got = stale.get("k").await;
    server.resume();
    assert!(got.is_err(), "a value L2 had deleted was served: {got:?}");
    assert_eq!(
        sample(&metrics, "t_tiered_stale_served_total{cache=\"app\"}"),
        0.0
    );
}

/// A node over `server` in pub/sub mode (no client tracking: redis-cli's changes send no
/// invalidation), `l1_ttl = 1s`, `stale_if_error = 60s`, 500 ms response timeout.
async fn pubsub_node(server: &RedisServer, metrics: &MetricsService) -> TieredCache {
    let l2 = l2(server, metrics);
    let l1 = MemoryCache::builder("app:l1")
        .max_ttl(Duration::from_secs(61))
        .metrics(metrics)
        .build();
    let node = TieredCache::builder("app", l1, l2)
        .l1_ttl(Duration::from_secs(1))
        .stale_if_error(Duration::from_secs(60))
        .invalidation(keel_cache::Invalidation::PubSub)
        .metrics(metrics)
        .build()
        .unwrap();
    node.connect().await.unwrap();
    node
}

/// Stale serves while Redis is down, then Redis comes back: the resubscription flush covers
/// them, so the first L2 read that succeeds afterwards does not flush L1 a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resubscription_flush_covers_earlier_stale_serves() {
    let mut server = RedisServer::start();
    let metrics = MetricsService::new("t").unwrap();
    let stale = pubsub_node(&server, &metrics).await;
    let flushes = || {
        sample(
            &metrics,
            "t_tiered_l1_flushes_total{cache=\"app\",tier=\"l1\"}",
        )
    };
    fill(&stale).await;
    server.kill();
    eventually("a stale serve", async || {
        let _ = stale.get("k").await;
        sample(&metrics, "t_tiered_stale_served_total{cache=\"app\"}") >= 1.0
    })
    .await;
    let before = flushes();
    server.restart();
    eventually("the node to resubscribe", async || stale.is_subscribed()).await;
    assert_eq!(flushes(), before + 1.0, "the resubscription flushes L1");
    // The restarted server is empty: an L2 answer.
    assert_eq!(stale.get("k").await.unwrap(), None);
    assert_eq!(flushes(), before + 1.0, "L1 flushed a second time");
}
