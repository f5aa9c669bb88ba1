//! The tiered cache on a real redis-server: the conformance suite, two nodes kept coherent by
//! invalidations, and an L1 flush after the pub/sub connection is killed.
#![cfg(feature = "redis")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_cache::{Cache, Endpoint, MemoryCache, RedisCache, Secret, TieredCache, Ttl};
use keel_metrics::MetricsService;
use keel_testkit::conformance::{Factory, Spec};
use keel_testkit::redis::RedisServer;

struct Tiered(RedisServer);

impl Tiered {
    async fn node(
        &self,
        name: &str,
        default_ttl: Option<Duration>,
        metrics: &MetricsService,
    ) -> TieredCache {
        self.node_at(&self.0.url(), name, default_ttl, metrics)
            .await
    }

    /// A node connecting with `url` (another user, say).
    async fn node_at(
        &self,
        url: &str,
        name: &str,
        default_ttl: Option<Duration>,
        metrics: &MetricsService,
    ) -> TieredCache {
        let l2 = RedisCache::builder(name, Endpoint::Url(Secret::new(url.to_owned())))
            .default_ttl(default_ttl)
            .response_timeout(Duration::from_millis(500))
            .items_refresh(None)
            .metrics(metrics)
            .build()
            .unwrap();
        // As the config factory builds it: no L1 entry outlives l1_ttl (default 60 s), on the
        // coarse clock.
        let l1 = MemoryCache::builder(format!("{name}:l1"))
            .default_ttl(default_ttl)
            .max_ttl(Duration::from_secs(60))
            .coarse_expiry(true)
            .metrics(metrics)
            .build();
        let cache = TieredCache::builder(name, l1, l2)
            .metrics(metrics)
            .build()
            .unwrap();
        cache.connect().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cache.is_subscribed() {
            assert!(Instant::now() < deadline, "never subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cache
    }
}

impl Factory for Tiered {
    fn make(&self, spec: Spec) -> Pin<Box<dyn Future<Output = Arc<dyn Cache>> + Send + '_>> {
        Box::pin(async move {
            let metrics = MetricsService::new("t").unwrap();
            Arc::new(self.node(&spec.name, spec.default_ttl, &metrics).await) as Arc<dyn Cache>
        })
    }
}

keel_testkit::cache_conformance!(Tiered(RedisServer::start()));

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_is_not_served_stale_by_another() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let (a, b) = (
        t.node("app", None, &metrics).await,
        t.node("app", None, &metrics).await,
    );
    a.set("k", "v1".into(), Ttl::Never).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    // A's invalidation for its own write may still be on its way and make B skip the fill
    // (the fill stands down on any invalidation during its L2 read): read until B caches it.
    eventually("B to cache v1 in L1", async || {
        b.get("k").await.unwrap();
        b.l1().get("k").await.unwrap().as_deref() == Some(&b"v1"[..])
    })
    .await;
    a.set("k", "v2".into(), Ttl::Never).await.unwrap();
    eventually("B's L1 to drop the key", async || {
        b.l1().get("k").await.unwrap().is_none()
    })
    .await;
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    a.delete("k").await.unwrap();
    eventually("B to see the delete", async || {
        b.get("k").await.unwrap().is_none()
    })
    .await;
    assert_eq!(a.incr_by("n", 1).await.unwrap(), 1);
    assert_eq!(b.get("n").await.unwrap().as_deref(), Some(&b"1"[..]));
    a.incr_by("n", 1).await.unwrap();
    eventually("B to see the increment", async || {
        b.get("n").await.unwrap().as_deref() == Some(&b"2"[..])
    })
    .await;
    let text = metrics.render();
    assert!(
        text.contains("t_tiered_invalidations_total{cache=\"app\",direction=\"received\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_write_invalidates_every_key_elsewhere_with_one_message() {
    let t = Tiered(RedisServer::start());
    let (ma, mb) = (
        MetricsService::new("a").unwrap(),
        MetricsService::new("b").unwrap(),
    );
    let (a, b) = (
        t.node("app", None, &ma).await,
        t.node("app", None, &mb).await,
    );
    let keys = ["k1", "k2", "k\u{0}odd", "k\u{e9}"];
    let items: Vec<(&str, bytes::Bytes)> = keys.iter().map(|k| (*k, "v1".into())).collect();
    a.set_many(&items, Ttl::Never).await.unwrap();
    eventually("B to cache every key in L1", async || {
        let mut all = true;
        for k in keys {
            b.get(k).await.unwrap();
            all &= b.l1().get(k).await.unwrap().is_some();
        }
        all
    })
    .await;
    let sent = |m: &MetricsService| {
        series(
            &m.render(),
            "a_tiered_invalidations_total{cache=\"app\",direction=\"sent\"}",
        )
    };
    let before = sent(&ma);
    let items: Vec<(&str, bytes::Bytes)> = keys.iter().map(|k| (*k, "v2".into())).collect();
    a.set_many(&items, Ttl::Never).await.unwrap();
    assert_eq!(sent(&ma) - before, 1.0, "one message for the whole batch");
    eventually("B's L1 to drop every key", async || {
        let mut none = true;
        for k in keys {
            none &= b.l1().get(k).await.unwrap().is_none();
        }
        none
    })
    .await;
    for k in keys {
        assert_eq!(
            b.get(k).await.unwrap().as_deref(),
            Some(&b"v2"[..]),
            "{k:?}"
        );
    }
    a.delete_many(&keys).await.unwrap();
    assert_eq!(sent(&ma) - before, 2.0);
    eventually("B to see the deletes", async || {
        let mut none = true;
        for k in keys {
            none &= b.get(k).await.unwrap().is_none();
        }
        none
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_fill_respects_the_remaining_l2_ttl() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let a = t.node("app", None, &metrics).await;
    a.set("short", "v".into(), Ttl::After(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(a.get("short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.l1().get("short").await.unwrap(),
        None,
        "L1 copy expired with L2's TTL"
    );
    assert_eq!(a.get("short").await.unwrap(), None);
}

/// The value of `series` (name and labels as rendered), or 0 when it is absent.
fn series(text: &str, series: &str) -> f64 {
    keel_testkit::prometheus::sample(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_counted_once_per_tier() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let a = t.node("app", None, &metrics).await;
    a.set("k", "v".into(), Ttl::Never).await.unwrap();
    for _ in 0..3 {
        assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(a.get("absent").await.unwrap(), None);
    assert!(a.get("").await.is_err(), "empty keys are rejected");
    let text = metrics.render();
    let tier = |name: &str, tier: &str| {
        series(
            &text,
            &format!("t_tiered_{name}_total{{cache=\"app\",tier=\"{tier}\"}}"),
        )
    };
    // First read of k: L1 miss, L2 hit (fills L1); then two L1 hits; "absent" misses both.
    assert_eq!(
        (tier("hits", "l1"), tier("misses", "l1")),
        (2.0, 2.0),
        "{text}"
    );
    assert_eq!(
        (tier("hits", "l2"), tier("misses", "l2")),
        (1.0, 1.0),
        "{text}"
    );
    // The L1's own series do not count the reads a second time (its fill is a set).
    let l1 = |status: &str| {
        series(
            &text,
            &format!(
                "t_cache_requests_total{{cache=\"app:l1\",operation=\"get\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!((l1("hit"), l1("miss")), (0.0, 0.0), "{text}");
    assert_eq!(
        l1("error"),
        1.0,
        "a failed L1 read is still counted: {text}"
    );
    assert_eq!(
        series(
            &text,
            "t_cache_requests_total{cache=\"app:l1\",operation=\"set\",status=\"ok\"}"
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connection_flushes_l1() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let b = t.node("app", None, &metrics).await;
    b.set("k", "old".into(), Ttl::Never).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert!(b.l1().get("k").await.unwrap().is_some());
    // Kill the subscription and change the value behind B's back: the invalidation that
    // would have told B is never sent.
    t.0.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    t.0.cli(&["SET", "app:k", "new"]);
    eventually("B to resubscribe", async || {
        b.is_subscribed() && b.l1().get("k").await.unwrap().is_none()
    })
    .await;
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"new"[..]));
    assert!(metrics.render().contains("t_tiered_l1_flushes_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_config_with_l1_and_l2_sections() {
    let server = RedisServer::start();
    let text = format!(
        "type = \"tiered\"\nname = \"sessions\"\n[options]\ndefaultTTL = \"5m\"\nl1_ttl = \"10s\"\n\
         [l1]\ntype = \"memory\"\n[l1.options]\nmax_entries = 1000\n\
         [l2]\ntype = \"redis\"\nurl = \"{}\"\n",
        server.url()
    );
    let config = keel_cache::CacheConfig::from_toml(&text).unwrap();
    let cache = keel_cache::open(&config).await.unwrap();
    assert_eq!(cache.kind(), keel_cache::CacheKind::Tiered);
    cache.set("k", "v".into(), Ttl::Default).await.unwrap();
    assert_eq!(server.cli(&["GET", "sessions:k"]), "v");
    let pttl: u64 = server.cli(&["PTTL", "sessions:k"]).parse().unwrap();
    assert!(pttl > 290_000, "default TTL reaches L2: {pttl}");
    // The factory's L1 (max_ttl = l1_ttl): the first read fills it, the second is an L1 hit.
    for _ in 0..2 {
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    // The resilience options parse and build (their behaviour: tests/tiered_stale.rs).
    let text = format!(
        "type = \"tiered\"\nname = \"policies\"\n[options]\nl1_ttl = \"10s\"\n\
         stale_if_error = \"30s\"\nttl_jitter = \"10%\"\n[l2]\ntype = \"redis\"\nurl = \"{}\"\n",
        server.url()
    );
    let resilient = keel_cache::open(&keel_cache::CacheConfig::from_toml(&text).unwrap())
        .await
        .unwrap();
    resilient.set("k", "v".into(), Ttl::Default).await.unwrap();
    assert_eq!(
        resilient.get("k").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    let mut no_l2 = config.clone();
    no_l2.l2 = None;
    assert!(matches!(
        keel_cache::open(&no_l2).await,
        Err(keel_cache::Error::InvalidConfig { field, .. }) if field == "l2"
    ));
}

/// Two nodes with `k = v1` in both L1s.
async fn two_nodes_caching_v1(t: &Tiered, metrics: &MetricsService) -> (TieredCache, TieredCache) {
    let (a, b) = (
        t.node("app", None, metrics).await,
        t.node("app", None, metrics).await,
    );
    a.set("k", "v1".into(), Ttl::Never).await.unwrap();
    for node in [&a, &b] {
        eventually("the node to cache v1 in L1", async || {
            node.get("k").await.unwrap();
            node.l1().get("k").await.unwrap().is_some()
        })
        .await;
    }
    (a, b)
}

/// What Redis itself holds for `app:k`, read with redis-cli.
fn l2_value(t: &Tiered) -> Option<bytes::Bytes> {
    let v = t.0.cli(&["GET", "app:k"]);
    (!v.is_empty()).then(|| bytes::Bytes::from(v))
}

/// After a write whose outcome the writer cannot know (the server froze, the request timed
/// out, the server then ran it), neither the writer's nor another node's L1 may keep serving
/// the value from before: the writer's next read and, once the invalidation arrives, the
/// other node's reads return what Redis holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_leaves_no_l1_serving_the_old_value() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let (a, b) = two_nodes_caching_v1(&t, &metrics).await;
    t.0.pause();
    let r = a.set("k", "v2".into(), Ttl::Never).await;
    assert!(
        r.is_err(),
        "a write to a frozen server cannot succeed: {r:?}"
    );
    t.0.resume();
    // The writer's own next read: on the same connection, after the write.
    let mine = a.get("k").await.unwrap();
    let held = l2_value(&t);
    assert_eq!(mine, held, "the writer read its own old value from L1");
    eventually("the other node to read what Redis holds", async || {
        b.get("k").await.unwrap() == held
    })
    .await;
}

/// A write whose caller gave up (the future was dropped while the server was frozen) still
/// invalidates both L1s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_still_invalidates_every_l1() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let (a, b) = two_nodes_caching_v1(&t, &metrics).await;
    t.0.pause();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        a.set("k", "v2".into(), Ttl::Never),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the write cannot finish on a frozen server"
    );
    t.0.resume();
    let mine = a.get("k").await.unwrap();
    let held = l2_value(&t);
    assert_eq!(mine, held, "the writer read its own old value from L1");
    eventually("the other node to read what Redis holds", async || {
        b.get("k").await.unwrap() == held
    })
    .await;
}

/// The caller gets L2's result: a counter incremented in Redis is reported as incremented even
/// when the invalidation cannot be published (here the ACL denies PUBLISH), so a caller never
/// retries an increment that happened. The failure is counted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_does_not_turn_an_applied_write_into_an_error() {
    let t = Tiered(RedisServer::start());
    t.0.cli(&[
        "ACL", "SETUSER", "nopub", "on", ">pw", "~*", "&*", "+@all", "-publish",
    ]);
    let metrics = MetricsService::new("t").unwrap();
    let url = format!("redis://nopub:pw@127.0.0.1:{}", t.0.port());
    let a = t.node_at(&url, "app", None, &metrics).await;
    let n = a.incr_by("n", 1).await;
    assert_eq!(t.0.cli(&["GET", "app:n"]), "1");
    assert_eq!(n.unwrap(), 1, "the increment was applied");
    assert!(
        series(
            &metrics.render(),
            "t_tiered_invalidation_failures_total{cache=\"app\"}"
        ) >= 1.0
    );
}

/// A tiered cache over a Cluster that needs a password: the invalidation subscription uses the
/// data path's credentials and is up when `connect` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_over_a_password_protected_cluster_comes_up() {
    let cluster = keel_testkit::redis::RedisCluster::start();
    let urls = cluster.urls();
    for node in cluster.nodes() {
        node.cli(&["CONFIG", "SET", "requirepass", "cluster-pass"]);
    }
    let metrics = MetricsService::new("t").unwrap();
    let l2 = RedisCache::builder(
        "app",
        Endpoint::Cluster {
            nodes: urls,
            username: None,
            password: Some(Secret::new("cluster-pass")),
        },
    )
    .items_refresh(None)
    .metrics(&metrics)
    .build()
    .unwrap();
    let l1 = MemoryCache::builder("app:l1")
        .max_ttl(Duration::from_secs(60))
        .metrics(&metrics)
        .build();
    let cache = TieredCache::builder("app", l1, l2)
        .metrics(&metrics)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    assert!(cache.is_subscribed(), "L1 would never be used");
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// An invalidation channel that cannot come up (here the ACL forbids every channel) is an
/// error at `connect`, not an L1 that is silently never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_channel_that_cannot_come_up_fails_connect() {
    let t = Tiered(RedisServer::start());
    t.0.cli(&[
        "ACL",
        "SETUSER",
        "nosub",
        "on",
        ">pw",
        "~*",
        "resetchannels",
        "+@all",
    ]);
    let metrics = MetricsService::new("t").unwrap();
    let url = format!("redis://nosub:pw@127.0.0.1:{}", t.0.port());
    let l2 = RedisCache::builder("app", Endpoint::Url(Secret::new(url)))
        .connect_timeout(Duration::from_millis(500))
        .items_refresh(None)
        .metrics(&metrics)
        .build()
        .unwrap();
    let l1 = MemoryCache::builder("app:l1").metrics(&metrics).build();
    let cache = TieredCache::builder("app", l1, l2)
        .metrics(&metrics)
        .build()
        .unwrap();
    let r = cache.connect().await;
    assert!(
        matches!(&r, Err(keel_cache::Error::Unavailable { operation, .. }) if *operation == "subscribe"),
        "{r:?}"
    );
    assert!(
        series(
            &metrics.render(),
            "t_tiered_subscribe_failures_total{cache=\"app\"}"
        ) >= 1.0
    );
}

/// A `clear` whose outcome is unknown (Redis frozen, the clear timing out) still tells every
/// node to flush its L1: whatever part of the clear ran, no node keeps serving what it held
/// before. (The value is changed behind the nodes' backs after the clear, standing in for the
/// part of the clear that ran: only a flush makes B see it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_that_timed_out_still_flushes_every_l1() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let (a, b) = two_nodes_caching_v1(&t, &metrics).await;
    t.0.pause();
    let r = a.clear().await;
    assert!(
        r.is_err(),
        "a clear on a frozen server cannot succeed: {r:?}"
    );
    t.0.resume();
    t.0.cli(&["SET", "app:k", "after"]);
    eventually("B to drop its L1 and read what Redis holds", async || {
        b.get("k").await.unwrap() == l2_value(&t)
    })
    .await;
}

/// Node A as the ACL user `writer` (whose PUBLISH a test can deny), node B as the default
/// user, with `k = v1` in B's L1.
async fn writer_and_observer(t: &Tiered, metrics: &MetricsService) -> (TieredCache, TieredCache) {
    t.0.cli(&["ACL", "SETUSER", "writer", "on", ">pw", "~*", "&*", "+@all"]);
    let url = format!("redis://writer:pw@127.0.0.1:{}", t.0.port());
    let a = t.node_at(&url, "app", None, metrics).await;
    let b = t.node("app", None, metrics).await;
    a.set("k", "v1".into(), Ttl::Never).await.unwrap();
    eventually("B to cache v1 in L1", async || {
        b.get("k").await.unwrap();
        b.l1().get("k").await.unwrap().is_some()
    })
    .await;
    (a, b)
}

/// An invalidation that could not be published is made up for once publishing works again:
/// the other node's L1 is flushed and it reads the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_invalidation_is_made_up_for_when_publishing_works_again() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let (a, b) = writer_and_observer(&t, &metrics).await;
    t.0.cli(&["ACL", "SETUSER", "writer", "-publish"]);
    // Applied, though its invalidation cannot be published (before: Err(Denied)).
    a.set("k", "v2".into(), Ttl::Never).await.unwrap();
    t.0.cli(&["ACL", "SETUSER", "writer", "+publish"]);
    eventually("B to get the flush and read v2", async || {
        b.get("k").await.unwrap().as_deref() == Some(&b"v2"[..])
    })
    .await;
}

/// A tiered cache over a TLS-only Cluster with its own CA: data and invalidation subscription
/// both use TLS with that CA (the subscription used to be a plain client without the CA, and
/// never came up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_over_a_tls_cluster_comes_up() {
    let tls = keel_testkit::redis::TlsFiles::generate();
    let cluster = keel_testkit::redis::RedisCluster::start_tls(&tls);
    let nodes = cluster
        .nodes()
        .iter()
        .map(|n| format!("rediss://127.0.0.1:{}", n.port()))
        .collect();
    let metrics = MetricsService::new("t").unwrap();
    let l2 = RedisCache::builder(
        "app",
        Endpoint::Cluster {
            nodes,
            username: None,
            password: None,
        },
    )
    .tls(keel_cache::TlsOptions {
        enabled: true,
        ca_file: Some(tls.ca_cert.clone()),
        cert_file: None,
        key_file: None,
    })
    .metrics(&metrics)
    .build()
    .unwrap();
    let l1 = MemoryCache::builder("app:l1")
        .max_ttl(Duration::from_secs(60))
        .metrics(&metrics)
        .build();
    let cache = TieredCache::builder("app", l1, l2)
        .metrics(&metrics)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    assert!(cache.is_subscribed(), "L1 would never be used");
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// In Cluster mode reads and writes use separate connections, so a read sent after a write
/// timed out can reach the master before the write runs and refill L1 with the old value
/// (here the master holds writes with `CLIENT PAUSE WRITE` while it answers reads). Once the
/// write has run, the writer's L1 must not keep serving the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_write_applied_after_its_timeout_leaves_no_stale_l1() {
    let cluster = keel_testkit::redis::RedisCluster::start();
    let metrics = MetricsService::new("t").unwrap();
    let l2 = RedisCache::builder(
        "app",
        Endpoint::Cluster {
            nodes: cluster.urls(),
            username: None,
            password: None,
        },
    )
    .response_timeout(Duration::from_millis(300))
    .items_refresh(None)
    .metrics(&metrics)
    .build()
    .unwrap();
    let l1 = MemoryCache::builder("app:l1")
        .max_ttl(Duration::from_secs(60))
        .metrics(&metrics)
        .build();
    let a = TieredCache::builder("app", l1, l2)
        .metrics(&metrics)
        .build()
        .unwrap();
    a.connect().await.unwrap();
    a.set("k", "v1".into(), Ttl::Never).await.unwrap();
    let master = &cluster.nodes()[cluster.master_of("app:k")];
    assert_eq!(master.cli(&["CLIENT", "PAUSE", "30000", "WRITE"]), "OK");
    let r = a.set("k", "v2".into(), Ttl::Never).await;
    assert!(r.is_err(), "a held write cannot succeed in time: {r:?}");
    // The read overtakes the held write and refills L1 with the old value.
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(master.cli(&["CLIENT", "UNPAUSE"]), "OK");
    eventually("the write to run", async || {
        master.cli(&["GET", "app:k"]) == "v2"
    })
    .await;
    eventually("the writer's L1 to drop the old value", async || {
        a.get("k").await.unwrap().as_deref() == Some(&b"v2"[..])
    })
    .await;
}

/// The background task that makes up for undelivered invalidations can be lost with the
/// runtime it ran on (here a short-lived runtime is dropped while the task waits). That must
/// not leave it marked as running: the next undelivered invalidation starts a new one, and the
/// other node gets its flush once publishing works again.
#[test]
fn a_flush_task_lost_with_its_runtime_does_not_stop_later_flushes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let (a, b) = rt.block_on(writer_and_observer(&t, &metrics));
    t.0.cli(&["ACL", "SETUSER", "writer", "-publish"]);
    {
        let short = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The publish fails: a flush task starts on this runtime, which then goes away.
        short.block_on(a.set("k", "v2".into(), Ttl::Never)).unwrap();
    }
    rt.block_on(async {
        a.set("k", "v3".into(), Ttl::Never).await.unwrap();
        t.0.cli(&["ACL", "SETUSER", "writer", "+publish"]);
        eventually("B to get a flush and read v3", async || {
            b.get("k").await.unwrap().as_deref() == Some(&b"v3"[..])
        })
        .await;
    });
}

/// A write future dropped outside any Tokio runtime cannot spawn its invalidation message:
/// that is counted as a failed invalidation, not skipped silently.
#[test]
fn a_write_dropped_outside_a_runtime_counts_its_skipped_invalidation() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let a = rt.block_on(t.node("app", None, &metrics));
    t.0.pause();
    let pending = rt.block_on(async {
        let mut write = Box::pin(a.set("k", "v".into(), Ttl::Never));
        let polled = tokio::time::timeout(Duration::from_millis(50), &mut write).await;
        assert!(
            polled.is_err(),
            "the write cannot finish on a frozen server"
        );
        // Handed out of the runtime (in an Option: it is to be dropped, not awaited).
        Some(write)
    });
    drop(pending);
    t.0.resume();
    assert!(
        series(
            &metrics.render(),
            "t_tiered_invalidation_failures_total{cache=\"app\"}"
        ) >= 1.0,
        "{}",
        metrics.render()
    );
}

/// Every write to a frozen server has an unknown outcome; past 256 of them waiting to settle,
/// one whole-L1 flush stands in for the rest instead of one more task each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_writes_past_the_cap_fall_back_to_one_flush() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let a = t.node("app", None, &metrics).await;
    let flushes = || {
        series(
            &metrics.render(),
            "t_tiered_l1_flushes_total{cache=\"app\",tier=\"l1\"}",
        )
    };
    let before = flushes();
    t.0.pause();
    let writes: Vec<_> = (0..300)
        .map(|n| {
            let a = a.clone();
            tokio::spawn(async move { a.set(&format!("k{n}"), "v".into(), Ttl::Never).await })
        })
        .collect();
    for write in writes {
        assert!(write.await.unwrap().is_err(), "the server is frozen");
    }
    eventually("the stand-in whole-L1 flush", async || flushes() > before).await;
    t.0.resume();
}

/// A tiered cache `app` over `l2` (not connected), L1 as the config factory builds it.
fn tiered_over(
    l2: RedisCache,
    mode: keel_cache::Invalidation,
    metrics: &MetricsService,
) -> TieredCache {
    let l1 = MemoryCache::builder("app:l1")
        .max_ttl(Duration::from_secs(60))
        .metrics(metrics)
        .build();
    TieredCache::builder("app", l1, l2)
        .invalidation(mode)
        .metrics(metrics)
        .build()
        .unwrap()
}

/// Caches `k = old` in `node`'s L1 (written through the node, read until L1 holds it).
async fn cached_in_l1(node: &TieredCache, key: &str) {
    node.set(key, "old".into(), Ttl::Never).await.unwrap();
    eventually("the node to cache the value in L1", async || {
        node.get(key).await.unwrap();
        node.l1().get(key).await.unwrap().is_some()
    })
    .await;
}

/// Waits until `node` serves `want` for `key`, and returns how long that took (printed: the
/// invalidation delay; only liveness is asserted, within `eventually`'s 5 s).
async fn served_after(node: &TieredCache, key: &str, want: Option<&[u8]>) -> Duration {
    let start = Instant::now();
    eventually("the node to serve the server's value", async || {
        node.get(key).await.unwrap().as_deref() == want
    })
    .await;
    start.elapsed()
}

/// With client tracking (the default), changes made on the server by anyone but Keel — a
/// redis-cli `SET`, `DEL`, `EXPIRE`, a Lua script, a key expiring — reach the node's L1.
/// With Keel's messages alone (`Invalidation::PubSub`), the same `SET` is served stale from L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_behind_keels_back_reach_l1_through_client_tracking() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let node = t.node("app", None, &metrics).await;
    assert!(node.is_tracking(), "tracking is the default on Redis 6+");

    cached_in_l1(&node, "k").await;
    t.0.cli(&["SET", "app:k", "new"]);
    let d = served_after(&node, "k", Some(b"new")).await;
    eprintln!("redis-cli SET reached L1 after {d:?}");

    cached_in_l1(&node, "k").await;
    t.0.cli(&["DEL", "app:k"]);
    let d = served_after(&node, "k", None).await;
    eprintln!("redis-cli DEL reached L1 after {d:?}");

    cached_in_l1(&node, "k").await;
    t.0.cli(&["EVAL", "redis.call('SET', KEYS[1], 'lua')", "1", "app:k"]);
    let d = served_after(&node, "k", Some(b"lua")).await;
    eprintln!("a Lua script's SET reached L1 after {d:?}");

    // EXPIRE changes the key: L1 drops it, and the next fill respects the new TTL.
    cached_in_l1(&node, "k").await;
    t.0.cli(&["PEXPIRE", "app:k", "300"]);
    eventually("EXPIRE to drop the key from L1", async || {
        node.l1().get("k").await.unwrap().is_none()
    })
    .await;
    let d = served_after(&node, "k", None).await;
    eprintln!("redis-cli PEXPIRE 300 ms: the key gone from the node after {d:?}");

    // A key that expires on the server (its TTL set when Keel wrote it, longer than the first
    // read) is dropped from L1 when Redis expires it.
    node.set("e", "v".into(), Ttl::After(Duration::from_millis(400)))
        .await
        .unwrap();
    assert_eq!(node.get("e").await.unwrap().as_deref(), Some(&b"v"[..]));
    let tracked = || {
        series(
            &metrics.render(),
            "t_tiered_invalidations_received_total{cache=\"app\",source=\"tracking\"}",
        )
    };
    let before = tracked();
    let d = served_after(&node, "e", None).await;
    eprintln!("a server-side expiry (TTL 400 ms) reached the node after {d:?}");
    // (L1 held it for its remaining TTL anyway:) the server announced the expiry too.
    eventually("the server to announce the expiry", async || {
        tracked() > before
    })
    .await;

    let text = metrics.render();
    assert!(
        series(
            &text,
            "t_tiered_invalidations_received_total{cache=\"app\",source=\"tracking\"}"
        ) >= 4.0,
        "{text}"
    );

    // Keel's messages alone: a redis-cli SET is not seen (bounded by l1_ttl only).
    let l2 = RedisCache::builder("app", Endpoint::Url(Secret::new(t.0.url())))
        .items_refresh(None)
        .metrics(&metrics)
        .build()
        .unwrap();
    let pubsub = tiered_over(l2, keel_cache::Invalidation::PubSub, &metrics);
    pubsub.connect().await.unwrap();
    assert!(pubsub.is_subscribed() && !pubsub.is_tracking());
    cached_in_l1(&pubsub, "p").await;
    t.0.cli(&["SET", "app:p", "new"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pubsub.get("p").await.unwrap().as_deref(), Some(&b"old"[..]));
}

/// The id of the client whose `CLIENT LIST` flags include tracking (`t`).
fn tracking_client_id(server: &RedisServer) -> String {
    let list = server.cli(&["CLIENT", "LIST"]);
    list.lines()
        .find(|line| {
            line.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        })
        .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("no tracking client in {list}"))
        .to_owned()
}

/// Killing the tracking connection (`CLIENT KILL ID`) flushes L1 when it is back: a change
/// made while it was down is not served stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_flushes_l1() {
    let t = Tiered(RedisServer::start());
    let metrics = MetricsService::new("t").unwrap();
    let node = t.node("app", None, &metrics).await;
    assert!(node.is_tracking());
    cached_in_l1(&node, "k").await;
    let id = tracking_client_id(&t.0);
    let flushes = || {
        series(
            &metrics.render(),
            "t_tiered_l1_flushes_total{cache=\"app\",tier=\"l1\"}",
        )
    };
    let before = flushes();
    t.0.cli(&["CLIENT", "KILL", "ID", &id]);
    eventually(
        "the node to reconnect with tracking and flush L1",
        async || node.is_tracking() && flushes() >= before + 2.0,
    )
    .await;
    assert!(node.l1().get("k").await.unwrap().is_none());
    assert_ne!(tracking_client_id(&t.0), id);
    t.0.cli(&["SET", "app:k", "new"]);
    served_after(&node, "k", Some(b"new")).await;
}

/// A server that refuses client tracking (here an ACL without `CLIENT`, as on managed services
/// that disable it) leaves Keel's messages: the cache connects, L1 is used, and writes through
/// Keel still invalidate other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_tracking_falls_back_to_keels_messages() {
    let t = Tiered(RedisServer::start());
    t.0.cli(&[
        "ACL", "SETUSER", "notrack", "on", ">pw", "~*", "&*", "+@all", "-client",
    ]);
    let metrics = MetricsService::new("t").unwrap();
    let url = format!("redis://notrack:pw@127.0.0.1:{}", t.0.port());
    let (a, b) = (
        t.node_at(&url, "app", None, &metrics).await,
        t.node_at(&url, "app", None, &metrics).await,
    );
    assert!(!a.is_tracking() && !b.is_tracking());
    cached_in_l1(&b, "k").await;
    a.set("k", "new".into(), Ttl::Never).await.unwrap();
    served_after(&b, "k", Some(b"new")).await;
}

/// `options.invalidation` in a config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invalidation_mode_is_configurable() {
    for (mode, tracking) in [("tracking", true), ("pubsub", false)] {
        let server = RedisServer::start();
        let text = format!(
            "type = \"tiered\"\nname = \"sessions\"\n[options]\ninvalidation = \"{mode}\"\n\
             [l2]\ntype = \"redis\"\nurl = \"{}\"\n",
            server.url()
        );
        let config = keel_cache::CacheConfig::from_toml(&text).unwrap();
        let metrics = MetricsService::new("t").unwrap();
        let cache = keel_cache::open_with_metrics(&config, &metrics)
            .await
            .unwrap();
        cache.set("k", "v".into(), Ttl::Never).await.unwrap();
        // Tracking shows in CLIENT LIST (flag `t`) only in tracking mode.
        let list = server.cli(&["CLIENT", "LIST"]);
        let tracked = list.lines().any(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
        });
        assert_eq!(tracked, tracking, "{mode}: {list}");
        cache.close().await.unwrap();
    }
    let bad = "type = \"tiered\"\nname = \"s\"\n[options]\ninvalidation = \"psychic\"\n\
               [l2]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n";
    assert!(keel_cache::CacheConfig::from_toml(bad).is_err());
}

/// On a 3-master Cluster, tracking runs on every master: a redis-cli `SET`, `DEL` and
/// `PEXPIRE` on whichever master holds the key reach the node's L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_changes_made_behind_keels_back_reach_l1_through_client_tracking() {
    let cluster = keel_testkit::redis::RedisCluster::start();
    let metrics = MetricsService::new("t").unwrap();
    let l2 = RedisCache::builder(
        "app",
        Endpoint::Cluster {
            nodes: cluster.urls(),
            username: None,
            password: None,
        },
    )
    .items_refresh(None)
    .metrics(&metrics)
    .build()
    .unwrap();
    let node = tiered_over(l2, keel_cache::Invalidation::Tracking, &metrics);
    node.connect().await.unwrap();
    assert!(node.is_tracking());
    // Keys spread over the masters: every master must announce its own keys.
    let mut masters = std::collections::BTreeSet::new();
    for n in 0..12 {
        let key = format!("k{n}");
        let full = format!("app:{key}");
        cached_in_l1(&node, &key).await;
        let master = &cluster.nodes()[cluster.master_of(&full)];
        masters.insert(master.port());
        match n % 3 {
            0 => {
                master.cli(&["SET", &full, "new"]);
                let d = served_after(&node, &key, Some(b"new")).await;
                eprintln!(
                    "Cluster: redis-cli SET on port {} reached L1 after {d:?}",
                    master.port()
                );
            }
            1 => {
                master.cli(&["DEL", &full]);
                let d = served_after(&node, &key, None).await;
                eprintln!(
                    "Cluster: redis-cli DEL on port {} reached L1 after {d:?}",
                    master.port()
                );
            }
            _ => {
                master.cli(&["PEXPIRE", &full, "200"]);
                eventually("PEXPIRE to drop the key from L1", async || {
                    node.l1().get(&key).await.unwrap().is_none()
                })
                .await;
                let d = served_after(&node, &key, None).await;
                eprintln!(
                    "Cluster: redis-cli PEXPIRE 200 ms on port {}: gone after {d:?}",
                    master.port()
                );
            }
        }
    }
    assert_eq!(masters.len(), 3, "the keys should cover every master");
}

/// Through Sentinel, tracking runs on the master: a redis-cli `SET` there reaches L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_changes_made_behind_keels_back_reach_l1_through_client_tracking() {
    let s = keel_testkit::redis::RedisSentinel::start();
    let text = format!(
        "type = \"redis\"\nname = \"app\"\nmode = \"sentinel\"\nmaster_name = \"{}\"\nsentinels = [{}]\n",
        keel_testkit::redis::RedisSentinel::MASTER,
        s.sentinel_addrs()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let metrics = MetricsService::new("t").unwrap();
    let config = keel_cache::CacheConfig::from_toml(&text).unwrap();
    let l2 = keel_cache::redis_from_config(&config, &metrics).unwrap();
    let node = tiered_over(l2, keel_cache::Invalidation::Tracking, &metrics);
    node.connect().await.unwrap();
    assert!(node.is_tracking());
    cached_in_l1(&node, "k").await;
    s.servers[0].cli(&["SET", "app:k", "new"]);
    let d = served_after(&node, "k", Some(b"new")).await;
    eprintln!("Sentinel: redis-cli SET on the master reached L1 after {d:?}");
    s.servers[0].cli(&["DEL", "app:k"]);
    let d = served_after(&node, "k", None).await;
    eprintln!("Sentinel: redis-cli DEL on the master reached L1 after {d:?}");
}
