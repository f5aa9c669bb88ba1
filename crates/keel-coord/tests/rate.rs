//! GCRA rate limits on every store (memory, Redis standalone, Cluster, Sentinel): four concurrent
//! clients on separate connections admit exactly `burst + rate × elapsed` (±1), with the
//! elapsed time read from the store's own clock; `retry_after` is honest; idle Redis keys
//! expire; bad input and an unreachable store get typed errors, and the failure policies
//! decide as documented.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_cache::redis::Script;
use keel_cache::{Endpoint, Secret};
use keel_coord::rate::{Decision, FailurePolicy, Limit, Rate, RateLimiter};
use keel_coord::{Error, MemoryStore, RedisStore};
use keel_metrics::MetricsService;
use keel_testkit::redis::{RedisCluster, RedisSentinel, RedisServer};

/// A backend: opens a limiter on a new connection (a separate process), and reads the
/// clock the store judges by, in µs.
#[allow(async_fn_in_trait)]
trait Backend: Send + Sync {
    /// A limiter on a new connection, connected.
    async fn limiter(&self) -> RateLimiter;
    async fn now_us(&self, key: &str) -> u64;
    /// The remaining life of `key`'s stored state, if it has any (Redis only).
    async fn pttl(&self, key: &str) -> Option<i64>;
}

struct Memory {
    store: MemoryStore,
    epoch: std::time::Instant,
}

impl Memory {
    fn new() -> Self {
        Self {
            store: MemoryStore::new(),
            epoch: std::time::Instant::now(),
        }
    }
}

impl Backend for Memory {
    async fn limiter(&self) -> RateLimiter {
        RateLimiter::new(self.store.clone())
    }
    async fn now_us(&self, _key: &str) -> u64 {
        // The memory store judges by the monotonic clock: any fixed epoch gives the same
        // differences.
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap()
    }
    async fn pttl(&self, _key: &str) -> Option<i64> {
        None
    }
}

struct Redis {
    endpoint: Endpoint,
    probe: RedisStore,
    _servers: Box<dyn std::any::Any + Send + Sync>,
}

impl Redis {
    fn with(endpoint: Endpoint, servers: Box<dyn std::any::Any + Send + Sync>) -> Self {
        Self {
            probe: Self::store(&endpoint),
            endpoint,
            _servers: servers,
        }
    }

    fn standalone() -> Self {
        let server = RedisServer::start();
        Self::with(Endpoint::Url(Secret::new(server.url())), Box::new(server))
    }

    fn cluster() -> Self {
        let cluster = RedisCluster::start();
        Self::with(
            Endpoint::Cluster {
                nodes: cluster.urls(),
                username: None,
                password: None,
            },
            Box::new(cluster),
        )
    }

    fn sentinel() -> Self {
        let sentinel = RedisSentinel::start_for_lookups();
        Self::with(
            Endpoint::Sentinel {
                sentinels: sentinel.sentinel_addrs(),
                master: RedisSentinel::MASTER.into(),
                username: None,
                password: None,
                database: 0,
            },
            Box::new(sentinel),
        )
    }

    fn store(endpoint: &Endpoint) -> RedisStore {
        RedisStore::builder(endpoint.clone())
            .namespace("t:")
            .response_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    /// The key the store uses for `key` (so a probe script lands on the same node).
    fn key(key: &str) -> String {
        format!("__keel_rate:t:{{{key}}}")
    }
}

impl Backend for Redis {
    async fn limiter(&self) -> RateLimiter {
        let store = Self::store(&self.endpoint);
        store.connect().await.unwrap();
        RateLimiter::new(store)
    }
    async fn now_us(&self, key: &str) -> u64 {
        let script = Script::new("local t = redis.call('TIME') return {t[1], t[2]}");
        self.probe.connect().await.unwrap();
        let (s, us): (u64, u64) = self
            .probe
            .connection()
            .invoke("probe", &script, &[&Self::key(key)], &[])
            .await
            .unwrap();
        s * 1_000_000 + us
    }
    async fn pttl(&self, key: &str) -> Option<i64> {
        let script = Script::new("return redis.call('PTTL', KEYS[1])");
        self.probe.connect().await.unwrap();
        let ttl: i64 = self
            .probe
            .connection()
            .invoke("probe", &script, &[&Self::key(key)], &[])
            .await
            .unwrap();
        Some(ttl)
    }
}

/// Four clients hammer one key of a 20/s limit with burst 40 for about two seconds. GCRA
/// admits at most `burst + rate × (t - first)` by any time `t`; and while the key stays
/// saturated (its arrival time ahead of the clock: the first request takes the whole burst,
/// which leaves two seconds of slack, and four clients keep asking), a denial at `t` means at
/// least `burst + rate × (t - first) - 1` were admitted. So with `T0 <= first <= T0'` read
/// from the store's clock around the first request, and `T1' <= last denial <= T1` around the
/// last one, the count lies in `[burst + rate × (T1' - T0') - 1, burst + rate × (T1 - T0) + 1]`:
/// no timing threshold, and the two bounds differ only by two round trips.
async fn admits_burst_plus_rate_times_elapsed(b: &impl Backend) {
    let key = "hammer";
    let limit = Limit::new("20/s".parse().unwrap(), 40).unwrap();
    let e_us = limit.rate().emission_interval().as_micros() as u64;
    let main = b.limiter().await;
    let mut limiters = Vec::new();
    for _ in 0..4 {
        limiters.push(b.limiter().await);
    }
    let t0 = b.now_us(key).await;
    assert!(
        main.allow(key, &limit, limit.burst())
            .await
            .unwrap()
            .allowed
    );
    let t0_after = b.now_us(key).await;
    let admitted = Arc::new(AtomicU64::new(u64::from(limit.burst())));
    let stop = tokio::time::Instant::now() + Duration::from_secs(2);
    let clients: Vec<_> = limiters
        .into_iter()
        .map(|limiter| {
            let admitted = admitted.clone();
            tokio::spawn(async move {
                let mut denied = 0u64;
                while tokio::time::Instant::now() < stop {
                    let d = limiter.allow(key, &limit, 1).await.unwrap();
                    if d.allowed {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    } else {
                        denied += 1;
                        assert!(
                            d.retry_after > Duration::ZERO
                                && d.retry_after <= limit.rate().emission_interval()
                        );
                        assert_eq!(d.remaining, 0);
                        // Short pauses: the key stays saturated (it has two seconds of slack).
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                denied
            })
        })
        .collect();
    let mut denied = 0;
    for c in clients {
        denied += c.await.unwrap();
    }
    assert!(denied > 0, "the clients asked for more than the limit");
    // End on a denial: requests until one is denied (allowed ones count too).
    let (t1_before, t1) = loop {
        let before = b.now_us(key).await;
        let d = main.allow(key, &limit, 1).await.unwrap();
        let after = b.now_us(key).await;
        if d.allowed {
            admitted.fetch_add(1, Ordering::SeqCst);
        } else {
            break (before, after);
        }
    };
    let admitted = admitted.load(Ordering::SeqCst);
    let burst = u64::from(limit.burst());
    let low = burst + (t1_before - t0_after) / e_us - 1;
    let high = burst + (t1 - t0) / e_us + 1;
    assert!(
        (low..=high).contains(&admitted),
        "admitted {admitted}, expected burst + rate x elapsed = {low}..={high}"
    );
    assert!(
        admitted >= 40,
        "about two seconds at 20/s after a burst of 20: {admitted}"
    );
}

/// A denied request is allowed once its `retry_after` has passed; `remaining` counts down.
async fn retry_after_is_honest(b: &impl Backend) {
    let limiter = b.limiter().await;
    let limit = Limit::new(Rate::per_second(5).unwrap(), 3).unwrap();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let d = limiter.allow("retry", &limit, 1).await.unwrap();
        assert!(d.allowed && !d.degraded);
        remaining.push(d.remaining);
    }
    // Time may pass between calls (one interval is 200 ms): never more left than a fresh
    // count-down allows, and never increasing faster than time.
    assert!(
        remaining[0] <= 2 && remaining.iter().all(|r| *r <= 2),
        "{remaining:?}"
    );
    let mut d = limiter.allow("retry", &limit, 2).await.unwrap();
    while d.allowed {
        d = limiter.allow("retry", &limit, 2).await.unwrap();
    }
    assert!(d.retry_after > Duration::ZERO && d.retry_after <= Duration::from_millis(400));
    assert!(d.reset_after >= d.retry_after);
    tokio::time::sleep(d.retry_after + Duration::from_millis(2)).await;
    assert!(limiter.allow("retry", &limit, 2).await.unwrap().allowed);
}

/// Keys are independent, bad input gets typed errors before the store is asked.
async fn bad_input_is_typed(b: &impl Backend) {
    let limiter = b.limiter().await;
    let limit = Limit::new(Rate::per_minute(600).unwrap(), 2).unwrap();
    assert!(limiter.allow("a", &limit, 2).await.unwrap().allowed);
    assert!(
        limiter.allow("b", &limit, 2).await.unwrap().allowed,
        "keys are independent"
    );
    for key in ["", "x{y}", "{", "}"] {
        let err = limiter.allow(key, &limit, 1).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{key:?}: {err:?}");
    }
    for cost in [0, 3] {
        let err = limiter.allow("c", &limit, cost).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidCost { cost: c, burst: 2, .. } if c == cost),
            "{err:?}"
        );
    }
}

macro_rules! rate_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn admits_burst_plus_rate_times_elapsed() {
                super::admits_burst_plus_rate_times_elapsed(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retry_after_is_honest() {
                super::retry_after_is_honest(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_input_is_typed() {
                super::bad_input_is_typed(&$make).await;
            }
        }
    };
}

rate_suite!(memory, Memory::new());
rate_suite!(redis, Redis::standalone());
rate_suite!(redis_cluster, Redis::cluster());
rate_suite!(redis_sentinel, Redis::sentinel());

/// An idle key's state expires on Redis once it would count as fresh again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_redis_keys_expire() {
    let b = Redis::standalone();
    let limiter = b.limiter().await;
    let limit = Limit::new(Rate::per_second(10).unwrap(), 5).unwrap();
    let d = limiter.allow("idle", &limit, 3).await.unwrap();
    assert!(d.allowed);
    assert_eq!(
        d.reset_after,
        Duration::from_millis(300),
        "three intervals of 100 ms"
    );
    let pttl = b.pttl("idle").await.unwrap();
    assert!(
        pttl > 0 && pttl <= 300,
        "expiry at the arrival time: {pttl} ms"
    );
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while b.pttl("idle").await.unwrap() != -2 {
        assert!(tokio::time::Instant::now() < until, "the key never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the key is fresh: the whole burst again.
    assert!(limiter.allow("idle", &limit, 5).await.unwrap().allowed);
}

#[test]
fn rates_parse_with_typed_errors() {
    let r: Rate = "10/s".parse().unwrap();
    assert_eq!((r.count(), r.period()), (10, Duration::from_secs(1)));
    assert_eq!(r.emission_interval(), Duration::from_millis(100));
    let r: Rate = "600/m".parse().unwrap();
    assert_eq!(r.emission_interval(), Duration::from_millis(100));
    let r: Rate = "1000/h".parse().unwrap();
    assert_eq!(r.emission_interval(), Duration::from_millis(3600));
    assert_eq!(r.to_string(), "1000/h");
    for bad in ["0/s", "10", "10/x", "-1/s", "ten/s", "", "10/", "2000000/s"] {
        let err = bad.parse::<Rate>().unwrap_err();
        assert!(matches!(err, Error::InvalidRate { .. }), "{bad:?}: {err:?}");
    }
    assert!(matches!(
        Rate::new(1, Duration::ZERO),
        Err(Error::InvalidRate { .. })
    ));
    assert!(matches!(
        Limit::new(Rate::per_second(1).unwrap(), 0),
        Err(Error::InvalidRate { .. })
    ));
    assert!(matches!(
        Limit::new(Rate::per_hour(1).unwrap(), 1_000_000),
        Err(Error::InvalidRate { .. })
    ));
    assert!(Limit::new(Rate::per_hour(1).unwrap(), 80_000).is_ok());
}

fn unreachable(policy: FailurePolicy, metrics: &MetricsService) -> RateLimiter {
    let port = keel_testkit::process::free_port();
    let store = RedisStore::builder(Endpoint::Url(Secret::new(format!(
        "redis://127.0.0.1:{port}"
    ))))
    .connect_timeout(Duration::from_millis(500))
    .response_timeout(Duration::from_millis(500))
    .build()
    .unwrap();
    RateLimiter::builder(store)
        .name("api")
        .on_store_failure(policy)
        .metrics(metrics)
        .build()
}

async fn bounded(limiter: &RateLimiter, limit: &Limit) -> Result<Decision, Error> {
    tokio::time::timeout(Duration::from_secs(30), limiter.allow("k", limit, 1))
        .await
        .expect("bounded by the store's timeouts")
}

/// An unreachable store: a typed transient error by default, or the policy's answer
/// (marked degraded), each counted under its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_follows_the_failure_policy() {
    let metrics = MetricsService::new("t").unwrap();
    let limit = Limit::new(Rate::per_second(1).unwrap(), 2).unwrap();

    let err = bounded(&unreachable(FailurePolicy::Error, &metrics), &limit)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(_)) && err.is_transient(),
        "{err:?}"
    );

    let d = bounded(&unreachable(FailurePolicy::FailOpen, &metrics), &limit)
        .await
        .unwrap();
    assert!(d.allowed && d.degraded);

    let d = bounded(&unreachable(FailurePolicy::FailClosed, &metrics), &limit)
        .await
        .unwrap();
    assert!(!d.allowed && d.degraded);
    assert_eq!(d.retry_after, Duration::from_secs(1));

    // The local fallback enforces the limit in this process: the burst, then a denial.
    let local = unreachable(FailurePolicy::Local, &metrics);
    let decisions = [
        bounded(&local, &limit).await.unwrap(),
        bounded(&local, &limit).await.unwrap(),
        bounded(&local, &limit).await.unwrap(),
    ];
    assert!(decisions.iter().all(|d| d.degraded));
    assert_eq!(
        decisions.map(|d| d.allowed),
        [true, true, false],
        "burst 2 at 1/s"
    );

    let text = metrics.render();
    for (result, n) in [
        ("error", 1),
        ("failed_open", 1),
        ("failed_closed", 1),
        ("fallback_allowed", 2),
        ("fallback_limited", 1),
        ("allowed", 0),
    ] {
        let line =
            format!("t_rate_limit_decisions_total{{limiter=\"api\",result=\"{result}\"}} {n}");
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
}

/// Decisions on a live store are counted as allowed / limited, labelled by limiter name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_counted_by_result() {
    let metrics = MetricsService::new("t").unwrap();
    let limiter = RateLimiter::builder(MemoryStore::new())
        .name("login")
        .metrics(&metrics)
        .build();
    let limit = Limit::new(Rate::per_hour(1).unwrap(), 3).unwrap();
    for _ in 0..5 {
        limiter.allow("user:1", &limit, 1).await.unwrap();
    }
    let text = metrics.render();
    for (result, n) in [("allowed", 3), ("limited", 2)] {
        let line =
            format!("t_rate_limit_decisions_total{{limiter=\"login\",result=\"{result}\"}} {n}");
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
    assert!(!text.contains("user:1"), "keys never become labels");
}
