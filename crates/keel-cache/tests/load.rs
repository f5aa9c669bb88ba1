//! `get_or_load`: single flight in one process and across processes, error propagation,
//! negative caching and early refresh — on memory and on the tiered cache over real Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_cache::load::{LoadOptions, Loader, MAX_REFRESH_BACKOFF};
use keel_cache::{
    Bytes, Cache, Endpoint, Error, MemoryCache, RedisCache, Secret, TieredCache, Ttl,
};
use keel_coord::{Locker, RedisStore};
use keel_testkit::redis::RedisServer;

fn ttl() -> LoadOptions {
    LoadOptions::new(Ttl::After(Duration::from_secs(60)))
}

/// `n` concurrent `get_or_load(key)` calls whose loader counts its calls, waits 50 ms and
/// returns `answer()`: every call's result in task order, and how often the loader ran.
async fn concurrent_loads(
    loader: &Loader,
    key: &'static str,
    n: usize,
    answer: fn() -> Result<Option<Bytes>, std::io::Error>,
) -> (Vec<keel_cache::Result<Option<Bytes>>>, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (loader, calls) = (loader.clone(), calls.clone());
            tokio::spawn(async move {
                loader
                    .get_or_load(key, &ttl(), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        answer()
                    })
                    .await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.unwrap());
    }
    (results, calls.load(Ordering::SeqCst))
}

async fn thousand_concurrent_misses_call_the_loader_once(cache: Arc<dyn Cache>) {
    let loader = Loader::new(cache);
    let (results, calls) = concurrent_loads(&loader, "hot", 1000, || {
        Ok(Some(Bytes::from_static(b"value")))
    })
    .await;
    for r in results {
        assert_eq!(r.unwrap().as_deref(), Some(&b"value"[..]));
    }
    assert_eq!(calls, 1);
    assert_eq!(
        loader.cache().get("hot").await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
}

async fn loader_errors_reach_every_waiter_and_are_not_cached(cache: Arc<dyn Cache>) {
    let loader = Loader::new(cache);
    let (results, calls) = concurrent_loads(&loader, "broken", 100, || {
        Err(std::io::Error::other("database is down"))
    })
    .await;
    for r in results {
        let err = r.unwrap_err();
        assert!(
            matches!(&err, Error::Load { message, .. } if message == "database is down"),
            "{err:?}"
        );
    }
    assert_eq!(calls, 1);
    assert_eq!(
        loader.cache().get("broken").await.unwrap(),
        None,
        "errors are not cached"
    );
    let ok = loader
        .get_or_load("broken", &ttl(), || async {
            Ok::<_, std::io::Error>(Some("fixed".into()))
        })
        .await
        .unwrap();
    assert_eq!(
        ok.as_deref(),
        Some(&b"fixed"[..]),
        "the next call loads again"
    );
}

async fn negative_answers_are_cached_for_a_while(cache: Arc<dyn Cache>) {
    let loader = Loader::new(cache);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut options = ttl();
    options.negative_ttl = Some(Duration::from_millis(300));
    let load = || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<Bytes>, std::io::Error>(None)
        }
    };
    assert_eq!(
        loader.get_or_load("ghost", &options, load).await.unwrap(),
        None
    );
    assert_eq!(
        loader.get_or_load("ghost", &options, load).await.unwrap(),
        None
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        loader.get_or_load("ghost", &options, load).await.unwrap(),
        None
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn hot_keys_refresh_before_they_expire(cache: Arc<dyn Cache>) {
    let loader = Loader::new(cache);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut options = LoadOptions::new(Ttl::After(Duration::from_secs(1)));
    options.refresh_ahead = Some(Duration::from_millis(700));
    let load = || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, std::io::Error>(Some(Bytes::from(format!("v{n}"))))
        }
    };
    assert_eq!(
        loader
            .get_or_load("k", &options, load)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(
        loader
            .get_or_load("k", &options, load)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Less than 700 ms left: this caller reloads.
    assert_eq!(
        loader
            .get_or_load("k", &options, load)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"v2"[..])
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

macro_rules! load_suite {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn thousand_concurrent_misses_call_the_loader_once() {
                let (_server, cache) = $make;
                super::thousand_concurrent_misses_call_the_loader_once(cache).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn loader_errors_reach_every_waiter_and_are_not_cached() {
                let (_server, cache) = $make;
                super::loader_errors_reach_every_waiter_and_are_not_cached(cache).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn negative_answers_are_cached_for_a_while() {
                let (_server, cache) = $make;
                super::negative_answers_are_cached_for_a_while(cache).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hot_keys_refresh_before_they_expire() {
                let (_server, cache) = $make;
                super::hot_keys_refresh_before_they_expire(cache).await;
            }
        }
    };
}

fn memory() -> ((), Arc<dyn Cache>) {
    ((), Arc::new(MemoryCache::builder("load").build()))
}

async fn redis_cache(server: &RedisServer, name: &str) -> RedisCache {
    let cache = RedisCache::builder(name, Endpoint::Url(Secret::new(server.url())))
        .items_refresh(None)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    cache
}

async fn tiered_node(server: &RedisServer) -> TieredCache {
    let l2 = RedisCache::builder("load", Endpoint::Url(Secret::new(server.url())))
        .items_refresh(None)
        .build()
        .unwrap();
    let l1 = MemoryCache::builder("load:l1")
        .max_ttl(Duration::from_secs(60))
        .build();
    let cache = TieredCache::builder("load", l1, l2).build().unwrap();
    cache.connect().await.unwrap();
    cache
}

fn tiered() -> (RedisServer, Arc<dyn Cache>) {
    let server = RedisServer::start();
    let cache = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(tiered_node(&server))
    });
    (server, Arc::new(cache))
}

load_suite!(memory_store, memory());
load_suite!(tiered_store, tiered());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_a_lock_load_once() {
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for node in 0..2 {
        // Each "process": its own cache connection, loader and lock connection.
        let loader = Loader::new(Arc::new(redis_cache(&server, "shared").await));
        let options = ttl();
        let options = options.lock(
            Locker::new(RedisStore::from_connection(
                redis_cache(&server, "locks").await.connection(),
            )),
            Duration::from_secs(10),
        );
        for _ in 0..50 {
            let (loader, options, calls) = (loader.clone(), options.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                loader
                    .get_or_load("report", &options, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(Some(Bytes::from(format!("from node {node}"))))
                    })
                    .await
                    .unwrap()
            }));
        }
    }
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one load across both processes"
    );
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "everyone got the same value"
    );
}

/// Two "processes" (own connections, loader and lock connection) loading `key` with the lock.
async fn lock_options(server: &RedisServer, lock_ttl: Duration) -> LoadOptions {
    let options = ttl();
    let mut options = options.lock(
        Locker::new(RedisStore::from_connection(
            redis_cache(server, "locks").await.connection(),
        )),
        Duration::from_secs(30),
    );
    options.lock_ttl = lock_ttl;
    options
}

/// The cross-process lock works for hash-tagged keys (braces are not allowed in lock names;
/// the lock is named by a hash of the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_lock_works_for_hash_tagged_keys() {
    let server = RedisServer::start();
    let loader = Loader::new(Arc::new(redis_cache(&server, "shared").await));
    let options = lock_options(&server, Duration::from_secs(10)).await;
    for key in ["{user:1}:profile", "a}b{c", "plain"] {
        let v = loader
            .get_or_load(key, &options, || async {
                Ok::<_, std::io::Error>(Some(Bytes::from_static(b"loaded")))
            })
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some(&b"loaded"[..]), "{key}");
    }
}

/// A loader that runs longer than the lock's TTL keeps the lock (the watchdog renews it): a
/// second process asking meanwhile waits and then reuses the value instead of loading again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loader_keeps_the_load_lock() {
    let server = RedisServer::start();
    // The watchdog renews every third of this: a renewal would have to be late by two
    // thirds of it for the lock to lapse.
    let lock_ttl = Duration::from_secs(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let loader = Loader::new(Arc::new(redis_cache(&server, "shared").await));
        let options = lock_options(&server, lock_ttl).await;
        let calls = calls.clone();
        tokio::spawn(async move {
            loader
                .get_or_load("slow:report", &options, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    entered_tx.send(()).unwrap();
                    finish_rx.await.unwrap();
                    Ok::<_, std::io::Error>(Some(Bytes::from_static(b"first")))
                })
                .await
        })
    };
    entered_rx.await.unwrap();
    // Several TTLs pass while the first loader runs.
    tokio::time::sleep(lock_ttl * 4).await;
    let second = {
        let loader = Loader::new(Arc::new(redis_cache(&server, "shared").await));
        let options = lock_options(&server, lock_ttl).await;
        let calls = calls.clone();
        tokio::spawn(async move {
            loader
                .get_or_load("slow:report", &options, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Some(Bytes::from_static(b"second")))
                })
                .await
        })
    };
    tokio::time::sleep(lock_ttl).await;
    finish_tx.send(()).unwrap();
    assert_eq!(
        first.await.unwrap().unwrap().as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(
        second.await.unwrap().unwrap().as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load in total");
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

/// Loaded values written with a jitter get spread TTLs (read back from Redis), all within
/// `[ttl * (1 - jitter), ttl]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jittered_loads_spread_their_expiries() {
    let server = RedisServer::start();
    let loader = Loader::new(Arc::new(redis_cache(&server, "jitter").await));
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(1000)))
        .ttl_jitter(keel_cache::Jitter::parse("10%").unwrap());
    let mut ttls = Vec::new();
    for i in 0..200 {
        let key = format!("k{i}");
        loader
            .get_or_load(&key, &options, || async {
                Ok::<_, std::io::Error>(Some(Bytes::from_static(b"v")))
            })
            .await
            .unwrap();
        match loader.cache().ttl(&key).await.unwrap() {
            keel_cache::KeyTtl::Expires(left) => ttls.push(left.as_secs()),
            other => panic!("{key}: {other:?}"),
        }
    }
    let (min, max) = (*ttls.iter().min().unwrap(), *ttls.iter().max().unwrap());
    // The test runs for far less than 100 s: every TTL read back is inside the jitter range.
    assert!(min >= 800 && max <= 1000, "{min}..{max}");
    let distinct: std::collections::BTreeSet<_> = ttls.iter().map(|s| s / 10).collect();
    // 200 draws over a 100 s range, in 10 s buckets: nearly all of the 10 buckets are hit.
    assert!(distinct.len() >= 8, "expiries not spread: {distinct:?}");
    assert!(max - min >= 50, "expiries not spread: {min}..{max}");
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
    let metrics = keel_metrics::MetricsService::new("m").unwrap();
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
