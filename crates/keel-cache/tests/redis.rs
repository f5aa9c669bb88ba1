//! The Redis backend against the conformance suite on a real `redis-server`, plus what only a
//! networked backend has: raw storage, prefixes, timeouts, outages and recovery.
#![cfg(feature = "redis")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_cache::{Cache, CacheConfig, Endpoint, Error, RedisCache, Secret, Ttl};
use keel_metrics::MetricsService;
use keel_testkit::conformance::{Factory, Spec};
use keel_testkit::redis::RedisServer;

/// One fresh server per test; caches from it get distinct prefixes (their names).
struct Redis(RedisServer);

impl Redis {
    fn start() -> Self {
        Self(RedisServer::start())
    }

    fn builder(&self, name: &str) -> keel_cache::RedisCacheBuilder {
        RedisCache::builder(name, Endpoint::Url(Secret::new(self.0.url())))
            .response_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(2))
    }
}

impl Factory for Redis {
    fn make(&self, spec: Spec) -> Pin<Box<dyn Future<Output = Arc<dyn Cache>> + Send + '_>> {
        Box::pin(async move {
            let cache = self
                .builder(&spec.name)
                .default_ttl(spec.default_ttl)
                .build()
                .unwrap();
            cache.connect().await.unwrap();
            Arc::new(cache) as Arc<dyn Cache>
        })
    }
}

keel_testkit::cache_conformance!(Redis::start());

#[tokio::test]
async fn values_are_raw_bytes_under_the_prefix() {
    let redis = Redis::start();
    let cache = redis.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    cache
        .set(
            "greeting",
            "hello world".into(),
            Ttl::After(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(redis.0.cli(&["GET", "app:greeting"]), "hello world");
    let pttl: u64 = redis.0.cli(&["PTTL", "app:greeting"]).parse().unwrap();
    assert!(pttl > 29_000 && pttl <= 30_000, "{pttl}");
    cache.incr_by("n", 5).await.unwrap();
    assert_eq!(redis.0.cli(&["GET", "app:n"]), "5");
    redis.0.cli(&["SET", "app:external", "from-cli"]);
    assert_eq!(
        cache.get("external").await.unwrap().as_deref(),
        Some(&b"from-cli"[..])
    );
}

#[tokio::test]
async fn clear_scans_only_the_prefix_and_refuses_an_empty_one() {
    let redis = Redis::start();
    redis.0.cli(&["SET", "unrelated", "keep"]);
    redis.0.cli(&["SET", "app*:glob", "keep"]);
    let cache = redis.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    for i in 0..1200 {
        cache
            .set(&format!("k{i}"), "v".into(), Ttl::Never)
            .await
            .unwrap();
    }
    assert_eq!(cache.count_items().await.unwrap(), 1200);
    cache.clear().await.unwrap();
    assert_eq!(redis.0.cli(&["DBSIZE"]), "2");
    assert_eq!(redis.0.cli(&["GET", "unrelated"]), "keep");
    let bare = redis.builder("bare").prefix("").build().unwrap();
    bare.connect().await.unwrap();
    assert!(matches!(
        bare.clear().await,
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(redis.0.cli(&["DBSIZE"]), "2");
}

#[tokio::test]
async fn items_gauge_counts_this_caches_keys_not_dbsize() {
    let redis = Redis::start();
    redis.0.cli(&["SET", "other:1", "x"]);
    let metrics = MetricsService::new("lab").unwrap();
    let cache = redis
        .builder("app")
        .metrics(&metrics)
        .items_refresh(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    for i in 0..7 {
        cache
            .set(&format!("k{i}"), "v".into(), Ttl::Never)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics.render();
        if text.contains("lab_cache_items{cache=\"app\"} 7") {
            break;
        }
        assert!(Instant::now() < deadline, "gauge never reached 7:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unreachable_server_is_a_typed_error_within_the_timeout() {
    let port = keel_testkit::process::free_port();
    let cache = RedisCache::builder(
        "down",
        Endpoint::Url(Secret::new(format!("redis://127.0.0.1:{port}"))),
    )
    .connect_timeout(Duration::from_secs(1))
    .build()
    .unwrap();
    let start = Instant::now();
    let err = cache.connect().await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(cache.get("k").await, Err(Error::Closed { .. })),
        "never connected"
    );
    let bad = CacheConfig::from_toml("type = \"redis\"\nurl = \"http://nope\"\n").unwrap();
    assert!(matches!(
        keel_cache::open(&bad).await,
        Err(Error::InvalidConfig { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_fast_then_the_same_client_recovers() {
    let mut redis = Redis::start();
    let cache = redis.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    redis.0.kill();
    for _ in 0..5 {
        let start = Instant::now();
        let r = cache.get("k").await;
        assert!(
            matches!(r, Err(Error::Unavailable { .. } | Error::Timeout { .. })),
            "{r:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    assert!(!cache.is_connected());
    redis.0.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.set("k", "back".into(), Ttl::Never).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"back"[..]));
    assert!(cache.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_instead_of_hanging() {
    let redis = Redis::start();
    let cache = redis.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    redis.0.pause();
    let start = Instant::now();
    let r = cache.get("k").await;
    let waited = start.elapsed();
    redis.0.resume();
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.get("k").await {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some(&b"v"[..]));
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn config_with_seed_fields_authenticates_and_never_shows_the_password() {
    let redis = Redis::start();
    redis.0.cli(&["CONFIG", "SET", "requirepass", "s3cret-pw"]);
    let text = format!(
        "type: redis\nname: session-cache\nhost: 127.0.0.1\nport: {}\ndatabase: 2\npassword: s3cret-pw\nconfig:\n  defaultTTL: 5m\n",
        redis.0.addr().port()
    );
    let config = CacheConfig::from_yaml(&text).unwrap();
    let cache = keel_cache::open(&config).await.unwrap();
    cache.set("k", "v".into(), Ttl::Default).await.unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["--no-auth-warning", "-a", "s3cret-pw", "-n", "2"];
        all.extend_from_slice(args);
        redis.0.cli(&all)
    };
    assert_eq!(cli(&["GET", "session-cache:k"]), "v");
    let pttl: u64 = cli(&["PTTL", "session-cache:k"]).parse().unwrap();
    assert!(pttl > 290_000, "{pttl}");
    for shown in [format!("{config:?}"), format!("{cache:?}")] {
        assert!(!shown.contains("s3cret-pw"), "{shown}");
    }
    let mut wrong = config.clone();
    wrong.password = Some(Secret::new("nope"));
    let err = keel_cache::open(&wrong).await.unwrap_err();
    assert!(!err.to_string().contains("nope"), "{err}");
    assert!(matches!(err, Error::Denied { .. }), "{err:?}");
}

#[tokio::test]
async fn acl_user_limited_to_its_prefix() {
    let redis = Redis::start();
    redis.0.cli(&[
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-pass",
        "~app:*",
        "+@all",
    ]);
    let text = format!(
        "type = \"redis\"\nname = \"app\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"app\"\npassword = \"app-pass\"\n",
        redis.0.addr().port()
    );
    let config = CacheConfig::from_toml(&text).unwrap();
    let cache = keel_cache::open(&config).await.unwrap();
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    assert_eq!(redis.0.cli(&["GET", "app:k"]), "v");
    assert!(!format!("{config:?}").contains("app-pass"));
    // The ACL allows only keys under app:, so another prefix is refused by the server.
    let mut other = config.clone();
    other.name = "other".into();
    let denied = keel_cache::open(&other).await.unwrap();
    let err = denied.set("k", "v".into(), Ttl::Never).await.unwrap_err();
    assert!(
        matches!(&err, Error::Denied { message, .. } if message.contains("no permissions")),
        "{err:?}"
    );
    let mut wrong = config.clone();
    wrong.password = Some(Secret::new("guess"));
    let err = keel_cache::open(&wrong).await.unwrap_err();
    assert!(matches!(err, Error::Denied { .. }), "{err:?}");
    assert!(!err.to_string().contains("guess"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_under_load_gives_only_typed_errors_and_recovers() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let mut redis = Redis::start();
    let cache = Arc::new(redis.builder("load").build().unwrap());
    cache.connect().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (oks, errs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (cache, stop, oks, errs) = (cache.clone(), stop.clone(), oks.clone(), errs.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}:{}", i % 10);
                    let t = Instant::now();
                    let r = if i.is_multiple_of(2) {
                        cache.set(&key, "v".into(), Ttl::Never).await
                    } else {
                        cache.get(&key).await.map(drop)
                    };
                    slowest = slowest.max(t.elapsed());
                    match r {
                        Ok(()) => oks.fetch_add(1, Ordering::Relaxed),
                        // A write in flight when the server died: its outcome is unknown.
                        Err(
                            Error::Unavailable { .. }
                            | Error::Timeout { .. }
                            | Error::OutcomeUnknown { .. },
                        ) => errs.fetch_add(1, Ordering::Relaxed),
                        Err(other) => panic!("untyped failure under load: {other:?}"),
                    };
                    i += 1;
                    if i.is_multiple_of(50) {
                        tokio::task::yield_now().await;
                    }
                }
                slowest
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kill = oks.load(Ordering::Relaxed);
    redis.0.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let errors_while_down = errs.load(Ordering::Relaxed);
    redis.0.restart();
    let restarted = Instant::now();
    let ok_at_restart = oks.load(Ordering::Relaxed);
    while oks.load(Ordering::Relaxed) < ok_at_restart + 1000 {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "no recovery after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let slowest = w.await.unwrap();
        // Response timeout 500 ms, outer bound 1 s; the rest is slack for a loaded machine.
        assert!(slowest < Duration::from_secs(3), "a call took {slowest:?}");
    }
    assert!(before_kill > 0, "load ran before the kill");
    assert!(
        errors_while_down > 0,
        "the outage was visible as typed errors"
    );
}

/// The connection is cut right after an `INCRBY` (or a `SET NX`) reached the server, before
/// its reply came back: the server ran it once, and the client must not run it again. The
/// counter moves by exactly one, and the caller either gets the true result or an error that
/// says the outcome is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_is_lost_is_never_applied_twice() {
    let server = RedisServer::start();
    let proxy = keel_testkit::redis_proxy::RedisProxy::start(server.addr());
    let cache = RedisCache::builder("app", Endpoint::Url(Secret::new(proxy.url())))
        .response_timeout(Duration::from_secs(2))
        .items_refresh(None)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    assert_eq!(cache.incr_by("n", 1).await.unwrap(), 1);
    proxy.cut_after(b"INCRBY");
    let r = cache.incr_by("n", 1).await;
    assert_eq!(proxy.cuts(), 1, "the fault fired");
    let held: i64 = server.cli(&["GET", "app:n"]).parse().unwrap();
    assert_eq!(held, 2, "the increment ran exactly once ({r:?})");
    match r {
        Ok(n) => assert_eq!(n, held),
        Err(e) => assert!(e.is_outcome_unknown(), "{e:?}"),
    }

    proxy.cut_after(b"NX");
    let stored = loop {
        // The client reconnects on its own after the cut; a refused attempt sent nothing.
        match cache.set_nx("once", "v".into(), Ttl::Never).await {
            Err(e) if !e.is_outcome_unknown() => {
                assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    assert_eq!(proxy.cuts(), 2, "the fault fired");
    assert_eq!(server.cli(&["GET", "app:once"]), "v");
    match stored {
        Ok(won) => assert!(won, "a stored SET NX reported as not stored"),
        Err(e) => assert!(e.is_outcome_unknown(), "{e:?}"),
    }
}

/// `clear` is bounded per step, not as a whole: with a response timeout far shorter than the
/// whole walk takes, it still removes every key (before, the whole clear had 2 x the response
/// timeout and failed with `Timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_of_many_keys_is_not_bounded_by_one_response_timeout() {
    let redis = Redis::start();
    let loader = redis
        .builder("app")
        .response_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    loader.connect().await.unwrap();
    let keys: Vec<String> = (0..200_000).map(|i| format!("k{i}")).collect();
    for chunk in keys.chunks(10_000) {
        let items: Vec<(&str, keel_cache::Bytes)> =
            chunk.iter().map(|k| (k.as_str(), "v".into())).collect();
        loader.set_many(&items, Ttl::Never).await.unwrap();
    }
    let cache = redis
        .builder("app")
        .response_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    cache.clear().await.unwrap();
    assert_eq!(redis.0.cli(&["DBSIZE"]), "0");
}

/// A cache opened with the defaults never walks the keyspace for the items gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_items_gauge_scans_nothing_by_default() {
    let server = RedisServer::start();
    let cache = RedisCache::builder("app", Endpoint::Url(Secret::new(server.url())))
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    // The old default counted right after connect and then every 10 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = server.cli(&["INFO", "commandstats"]);
    assert!(!stats.contains("cmdstat_scan"), "{stats}");
}

/// `Error::is_transient` classifies what may pass by itself (a server down, a timeout) apart
/// from what never will (bad input, a denied permission).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whether_they_are_transient() {
    let server = RedisServer::start();
    let metrics = MetricsService::new("t").unwrap();
    let cache = RedisCache::builder("app", Endpoint::Url(Secret::new(server.url())))
        .response_timeout(Duration::from_millis(300))
        .items_refresh(None)
        .metrics(&metrics)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    let long = "k".repeat(10_000);
    let e = cache.get(&long).await.unwrap_err();
    assert!(!e.is_transient(), "{e:?}");
    server.cli(&["ACL", "SETUSER", "default", "-get"]);
    let e = cache.get("k").await.unwrap_err();
    assert!(
        matches!(e, Error::Denied { .. }) && !e.is_transient(),
        "{e:?}"
    );
    server.cli(&["ACL", "SETUSER", "default", "+get"]);
    drop(server);
    let e = cache.get("k").await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
}

/// By default one request in eight (per thread and operation) is timed for the duration
/// histogram; every request is counted. `time_one_in(1)` times them all.
#[tokio::test]
async fn sampled_timing_keeps_redis_request_counts_exact() {
    let redis = Redis::start();
    let metrics = MetricsService::new("lab").unwrap();
    let sampled = redis.builder("sampled").metrics(&metrics).build().unwrap();
    let every = redis
        .builder("every")
        .time_one_in(1)
        .metrics(&metrics)
        .build()
        .unwrap();
    sampled.connect().await.unwrap();
    every.connect().await.unwrap();
    sampled.set("k", "v".into(), Ttl::Never).await.unwrap();
    for _ in 0..800 {
        assert!(sampled.get("k").await.unwrap().is_some());
        assert!(every.get("missing").await.unwrap().is_none());
    }
    let text = metrics.render();
    let sample = |name: &str| {
        keel_testkit::prometheus::sample(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert_eq!(
        sample("lab_cache_requests_total{cache=\"sampled\",operation=\"get\",status=\"hit\"}"),
        800.0
    );
    assert_eq!(sample("lab_cache_hits_total{cache=\"sampled\"}"), 800.0);
    let timed =
        sample("lab_cache_operation_duration_seconds_count{cache=\"sampled\",operation=\"get\"}");
    // One in eight of this cache's gets on this thread (its countdown is its own: the other
    // cache's gets, alternating with these, do not move it).
    assert_eq!(timed, 100.0, "timed {timed}");
    assert_eq!(
        sample("lab_cache_requests_total{cache=\"every\",operation=\"get\",status=\"miss\"}"),
        800.0
    );
    assert_eq!(
        sample("lab_cache_operation_duration_seconds_count{cache=\"every\",operation=\"get\"}"),
        800.0
    );
}

/// A request's bound starts when it is first polled, not when it is made: a write made now
/// and awaited after longer than the bound is sent then and answers, instead of timing out
/// unsent (which would report an applied write as an unknown outcome).
#[tokio::test]
async fn a_request_awaited_late_is_bounded_from_its_first_poll() {
    let redis = Redis::start();
    let cache = redis
        .builder("late")
        .response_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    let incr = cache.incr_by("n", 1);
    let get = cache.get("n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(incr.await.unwrap(), 1);
    assert_eq!(get.await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(cache.incr_by("n", 0).await.unwrap(), 1);
}

/// A request made outside any runtime and awaited inside one works (its timer is made at the
/// first poll): `rt.block_on(cache.get(k))` evaluates `cache.get(k)` before entering `rt`.
#[test]
fn a_request_made_outside_a_runtime_is_awaited_inside_one() {
    let redis = Redis::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = redis.builder("app").build().unwrap();
    rt.block_on(cache.connect()).unwrap();
    rt.block_on(cache.set("k", "v".into(), Ttl::Never)).unwrap();
    assert_eq!(
        rt.block_on(cache.get("k")).unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert!(rt.block_on(cache.delete("k")).unwrap());
}
