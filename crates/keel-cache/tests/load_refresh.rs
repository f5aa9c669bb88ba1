//! Stale-while-revalidate refreshes (`get_or_load` inline, `get_or_revalidate` in the
//! background). On the memory backend: a failed refresh never hands back a value past its
//! TTL, a "not found" answer removes the key, the running refreshes are bounded, a miss
//! waits for a running refresh instead of loading again, and a refresh that panics backs off.
//! Over real Redis (plain and tiered): failing refreshes keep serving the old value with
//! backoff, the lock makes one refresh across processes, hits before the refresh age do not
//! each read the TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_cache::load::{LoadOptions, Loader, MAX_REFRESH_BACKOFF, MAX_REFRESH_KEYS};
use keel_cache::{Bytes, Cache, Endpoint, Error, MemoryCache, RedisCache, Secret, Ttl};
use keel_coord::{Locker, RedisStore};
use keel_metrics::MetricsService;
use keel_testkit::redis::RedisServer;

mod common;
use common::{redis_cache, tiered_node};

/// How long any wait for something that must happen may take, on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn memory() -> Arc<dyn Cache> {
    Arc::new(MemoryCache::builder("refresh").build())
}

/// A loader over a fresh memory cache with its own metrics.
fn loader() -> (Loader, MetricsService) {
    let metrics = MetricsService::new("lab").unwrap();
    (Loader::with_metrics(memory(), &metrics), metrics)
}

/// The value of the sample `name` (labels `cache="refresh"` and `label`) in `metrics`, 0 if
/// absent.
fn sample(metrics: &MetricsService, name: &str, label: &str) -> f64 {
    let text = metrics.render();
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains("cache=\"refresh\"")
                && l.contains(label)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits until `done()` holds, panicking with `what` after [`PATIENCE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ok(
    v: &'static [u8],
) -> impl FnOnce() -> std::future::Ready<Result<Option<Bytes>, std::io::Error>> {
    move || std::future::ready(Ok(Some(Bytes::from_static(v))))
}

/// Writes `key` = `v` through `loader` and waits until it is past its refresh age.
async fn loaded_and_due(loader: &Loader, key: &str, options: &LoadOptions, v: &'static [u8]) {
    let got = loader.get_or_load(key, options, ok(v)).await.unwrap();
    assert_eq!(got.as_deref(), Some(v));
    let after = options.stale_while_revalidate.unwrap();
    tokio::time::sleep(after + Duration::from_millis(200)).await;
}

/// The inline refresh's loader fails only after the old value's TTL ended: the caller gets
/// the load error, not the expired value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_inline_refresh_never_returns_a_value_past_its_ttl() {
    let (loader, _metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(2)))
        .stale_while_revalidate(Duration::from_secs(1));
    loaded_and_due(&loader, "k", &options, b"v1").await;
    let cache = loader.cache().clone();
    let got = loader
        .get_or_load("k", &options, || async move {
            // A slow source: answer (with an error) only once the old value has expired.
            let deadline = Instant::now() + PATIENCE;
            while cache.get("k").await.unwrap().is_some() {
                assert!(Instant::now() < deadline, "the value never expired");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err::<Option<Bytes>, _>(std::io::Error::other("source down"))
        })
        .await;
    assert!(
        matches!(&got, Err(Error::Load { message, .. }) if message == "source down"),
        "an expired value was served: {got:?}"
    );
}

/// A refresh whose loader finds nothing removes the key (inline and in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_finds_nothing_removes_the_key() {
    let (loader, _metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1));
    let none = || async { Ok::<Option<Bytes>, std::io::Error>(None) };

    loaded_and_due(&loader, "inline", &options, b"v1").await;
    let got = loader.get_or_load("inline", &options, none).await.unwrap();
    assert_eq!(got, None);
    assert_eq!(loader.cache().get("inline").await.unwrap(), None);

    loaded_and_due(&loader, "background", &options, b"v1").await;
    let got = loader
        .get_or_revalidate("background", &options, none)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"v1"[..]), "served at once");
    let cache = loader.cache().clone();
    let deadline = Instant::now() + PATIENCE;
    while cache.get("background").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the deleted value stayed cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// More due keys than [`MAX_REFRESH_KEYS`] with refreshes that hang: at most that many run,
/// the rest are served without one and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_refreshes_are_bounded() {
    const EXTRA: usize = 5;
    let (loader, metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1));
    for i in 0..MAX_REFRESH_KEYS + EXTRA {
        // Written with half the loader's TTL left: already past the refresh age.
        loader
            .cache()
            .set(
                &format!("k{i}"),
                Bytes::from_static(b"old"),
                Ttl::After(Duration::from_secs(30)),
            )
            .await
            .unwrap();
    }
    let started = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    for i in 0..MAX_REFRESH_KEYS + EXTRA {
        let (started, mut released) = (started.clone(), released.clone());
        let got = loader
            .get_or_revalidate(&format!("k{i}"), &options, move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, std::io::Error>(Some(Bytes::from_static(b"new")))
            })
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"old"[..]));
    }
    assert_eq!(
        sample(&metrics, "lab_cache_loader_refreshes_skipped_total", ""),
        EXTRA as f64
    );
    until("every started refresh reaches its loader", || {
        started.load(Ordering::SeqCst) >= MAX_REFRESH_KEYS
    })
    .await;
    release.send(true).unwrap();
    until("every refresh finishes", || {
        sample(
            &metrics,
            "lab_cache_loader_refreshes_total",
            "result=\"ok\"",
        ) as usize
            >= MAX_REFRESH_KEYS
    })
    .await;
    assert_eq!(started.load(Ordering::SeqCst), MAX_REFRESH_KEYS);
}

/// The key expires (here: is deleted) while its refresh runs: a miss waits for that refresh
/// instead of running its own loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_waits_for_the_running_refresh() {
    let (loader, metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1));
    loaded_and_due(&loader, "k", &options, b"v1").await;
    let started = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let (s, mut r) = (started.clone(), released.clone());
    loader
        .get_or_revalidate("k", &options, move || async move {
            s.fetch_add(1, Ordering::SeqCst);
            let _ = r.wait_for(|r| *r).await;
            Ok::<_, std::io::Error>(Some(Bytes::from_static(b"refreshed")))
        })
        .await
        .unwrap();
    until("the refresh runs", || started.load(Ordering::SeqCst) == 1).await;
    loader.cache().delete("k").await.unwrap();
    let miss_calls = Arc::new(AtomicUsize::new(0));
    let miss = {
        let (loader, options, calls) = (loader.clone(), options.clone(), miss_calls.clone());
        tokio::spawn(async move {
            loader
                .get_or_load("k", &options, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Some(Bytes::from_static(b"loaded twice")))
                })
                .await
        })
    };
    until("the miss waits or loads", || {
        miss_calls.load(Ordering::SeqCst) > 0
            || sample(&metrics, "lab_cache_loader_waits_total", "") >= 1.0
    })
    .await;
    release.send(true).unwrap();
    let got = miss.await.unwrap().unwrap();
    assert_eq!(
        miss_calls.load(Ordering::SeqCst),
        0,
        "the key loaded twice at once"
    );
    assert_eq!(got.as_deref(), Some(&b"refreshed"[..]));
}

/// A background refresh whose loader panics backs off like a failed one: later hits do not
/// start another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_refresh_backs_off() {
    let (loader, metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1))
        .refresh_backoff(Duration::from_secs(60));
    loaded_and_due(&loader, "k", &options, b"v1").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let panicking = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            panic!("loader bug");
            #[allow(unreachable_code)]
            Ok::<Option<Bytes>, std::io::Error>(None)
        }
    };
    loader
        .get_or_revalidate("k", &options, panicking(calls.clone()))
        .await
        .unwrap();
    until("the refresh runs", || calls.load(Ordering::SeqCst) >= 1).await;
    for _ in 0..10 {
        let got = loader
            .get_or_revalidate("k", &options, panicking(calls.clone()))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"v1"[..]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a panicked refresh was retried at once"
    );
    assert_eq!(
        sample(
            &metrics,
            "lab_cache_loader_refreshes_total",
            "result=\"error\""
        ),
        1.0,
        "counted as a failed refresh"
    );
}

/// A zero refresh backoff would retry a failing refresh on every hit: rejected.
#[tokio::test]
async fn a_zero_refresh_backoff_is_rejected() {
    let (loader, _metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1))
        .refresh_backoff(Duration::ZERO);
    let err = loader
        .get_or_load("k", &options, ok(b"v"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "refresh_backoff"),
        "{err:?}"
    );
    let err = loader
        .get_or_revalidate("k", &options, ok(b"v"))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { .. }), "{err:?}");
}

/// Stale-while-revalidate options: values live 60 s, are refreshed past 1 s, a failed
/// refresh is retried after 1 s (then 2 s, 4 s, ...).
fn swr() -> LoadOptions {
    LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1))
        .refresh_backoff(Duration::from_secs(1))
}

/// Rounds of 100 concurrent `get_or_revalidate` callers with a failing loader, for `rounds`
/// rounds: every caller gets the old value, the loader never runs twice at once, and it runs
/// at most once per backoff period (attempt n+1 starts at least 2^n backoffs after the
/// first): at most `1 + log2(elapsed / backoff + 1)` calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_background_refresh_keeps_serving_the_old_value() {
    let server = RedisServer::start();
    let loader = Loader::new(Arc::new(tiered_node(&server).await));
    let options = swr();
    let v = loader
        .get_or_revalidate("policy", &options, || async {
            Ok::<_, std::io::Error>(Some(Bytes::from_static(b"old")))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"old"[..]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let overlapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = std::time::Instant::now();
    for _round in 0..20 {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (loader, options) = (loader.clone(), options.clone());
            let (calls, running, overlapped) = (calls.clone(), running.clone(), overlapped.clone());
            tasks.push(tokio::spawn(async move {
                loader
                    .get_or_revalidate("policy", &options, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        if running.fetch_add(1, Ordering::SeqCst) > 0 {
                            overlapped.store(true, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Err::<Option<Bytes>, _>(std::io::Error::other("policy db down"))
                    })
                    .await
            }));
        }
        for t in tasks {
            let v = t
                .await
                .unwrap()
                .expect("a failed refresh never reaches a caller");
            assert_eq!(v.as_deref(), Some(&b"old"[..]));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last spawned refresh finish before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let n = calls.load(Ordering::SeqCst);
    let bound = 1 + (elapsed / 1.0 + 1.0).log2().floor() as usize;
    assert!(n >= 1, "the refresh was attempted");
    assert!(
        n <= bound,
        "{n} loader calls in {elapsed:.1}s; backoff allows at most {bound}"
    );
    assert!(
        !overlapped.load(Ordering::SeqCst),
        "one refresh per key at a time"
    );
    // After the backoff a working loader replaces the value, in the background.
    tokio::time::sleep(Duration::from_secs(
        MAX_REFRESH_BACKOFF.as_secs().min(1u64 << n),
    ))
    .await;
    let load_new = || async { Ok::<_, std::io::Error>(Some(Bytes::from_static(b"new"))) };
    let v = loader
        .get_or_revalidate("policy", &options, load_new)
        .await
        .unwrap();
    assert_eq!(
        v.as_deref(),
        Some(&b"old"[..]),
        "served at once, refreshed behind"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = loader.cache().get("policy").await.unwrap();
        if v.as_deref() == Some(&b"new"[..]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `get_or_load` with stale-while-revalidate: the one caller that refreshes inline gets the
/// old value when the refresh fails (not the error), and the new value when it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_under_swr_returns_the_old_value_when_the_refresh_fails() {
    let server = RedisServer::start();
    let loader = Loader::new(Arc::new(tiered_node(&server).await));
    let options = swr().refresh_backoff(Duration::from_millis(100));
    let ok = |v: &'static [u8]| {
        move || async move { Ok::<_, std::io::Error>(Some(Bytes::from_static(v))) }
    };
    let failing = || async { Err::<Option<Bytes>, _>(std::io::Error::other("down")) };
    assert_eq!(
        loader
            .get_or_load("k", &options, ok(b"v1"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        loader
            .get_or_load("k", &options, failing)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        loader
            .get_or_load("k", &options, ok(b"v2"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v2"[..])
    );
}

/// Stale-while-revalidate with the cross-process lock: two "processes" (own connections,
/// loaders and lock connections), 50 callers each, on a value past its refresh age: every
/// caller gets a value at once, and the loader runs once across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_runs_once_across_processes() {
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let seed = Loader::new(Arc::new(redis_cache(&server, "shared").await));
    let base = swr();
    seed.get_or_load("report", &base, || async {
        Ok::<_, std::io::Error>(Some(Bytes::from_static(b"old")))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut tasks = Vec::new();
    for _node in 0..2 {
        let loader = Loader::new(Arc::new(redis_cache(&server, "shared").await));
        let options = base.clone().lock(
            Locker::new(RedisStore::from_connection(
                redis_cache(&server, "locks").await.connection(),
            )),
            Duration::from_secs(10),
        );
        for _ in 0..50 {
            let (loader, options, calls) = (loader.clone(), options.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                loader
                    .get_or_revalidate("report", &options, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::io::Error>(Some(Bytes::from_static(b"new")))
                    })
                    .await
                    .unwrap()
            }));
        }
    }
    for t in tasks {
        let v = t.await.unwrap();
        assert!(matches!(v.as_deref(), Some(b"old" | b"new")), "{v:?}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seed.cache().get("report").await.unwrap().as_deref() != Some(&b"new"[..]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a (wrong) second refresh time to run before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one refresh across both processes"
    );
}

/// Before its refresh age, a hit under stale-while-revalidate reads the key's TTL once and
/// then remembers when the value falls due: 100 hits cost one `ttl` call, not 100 (on a
/// tiered cache each is a Redis round trip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_before_the_refresh_age_do_not_each_read_the_ttl() {
    let server = RedisServer::start();
    let metrics = MetricsService::new("m").unwrap();
    let cache = RedisCache::builder("swr", Endpoint::Url(Secret::new(server.url())))
        .items_refresh(None)
        .metrics(&metrics)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    let loader = Loader::new(Arc::new(cache));
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(600)))
        .stale_while_revalidate(Duration::from_secs(300));
    let load = || async { Ok::<_, std::io::Error>(Some(Bytes::from_static(b"v"))) };
    loader.get_or_revalidate("k", &options, load).await.unwrap();
    for _ in 0..100 {
        let v = loader.get_or_revalidate("k", &options, load).await.unwrap();
        assert_eq!(v.as_deref(), Some(&b"v"[..]));
    }
    let ttl_calls = keel_testkit::prometheus::sample(
        &metrics.render(),
        "m_cache_requests_total{cache=\"swr\",operation=\"ttl\",status=\"ok\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(ttl_calls, 1.0);
}
