//! `get_or_load`: single flight in one process and across processes, error propagation,
//! negative caching, early refresh and TTL jitter — on memory and on the tiered cache over
//! real Redis. Stale-while-revalidate is tested in `load_refresh.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_cache::load::{LoadOptions, Loader};
use keel_cache::{Bytes, Cache, Error, MemoryCache, Ttl};
use keel_coord::{Locker, RedisStore};
use keel_testkit::redis::RedisServer;

mod common;
use common::{redis_cache, tiered_node};

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
